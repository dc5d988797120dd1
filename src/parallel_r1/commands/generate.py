"""``parallel-r1 generate``: sample completions with the parallel decoding engine (docs/decoding.md).

    parallel-r1 generate --model runs/demo/sft --problem "Tom has 3 apples ..." --n 2
    parallel-r1 generate --model M --problems gsm8k --limit 20 --output samples.jsonl
    parallel-r1 generate --model M --problems aime24 --backend vllm --n 16 --output s.jsonl   # GPU, not exact

Prompts go through the chosen template (``parallel_v3`` by default) and the model's chat
template. With ``--output`` every sample is appended to a jsonl as it is produced; otherwise the
completions are printed. A checkpoint without the six tag tokens (``smollm2`` straight from
its package) gets them in memory, as ``eval`` does; ``--logprobs`` adds the per-token log-probs.
Re-running with the same ``--output`` continues it: a (problem_id, sample_index) pair already
there is not written again, so a killed run loses nothing and duplicates nothing.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..decoding.config import DecodingConfig

HELP = "sample completions with the parallel decoding engine"


@dataclass
class GenerateConfig:
    """What to sample from which model; how the engine samples is ``decoding.DecodingConfig``
    (its flags follow these). ``--dtype auto``: bfloat16 on a GPU, float32 on the CPU for the
    engine; the model's own dtype for vLLM."""

    model: str = field(metadata={"help": "Checkpoint folder, hub id or alias (smollm2)."})
    problem: list[str] | None = field(
        default=None,
        metadata={
            "help": "Problem texts: --problem A B or --problem A --problem B (or use --problems).",
            "action": "extend",
        },
    )
    problems: str | None = field(
        default=None, metadata={"help": "A problem set name (gsm8k, synthetic_hard, ...) or a jsonl/parquet file."}
    )
    split: str | None = field(default=None, metadata={"help": "Split of --problems (default: the set's test split)."})
    limit: int | None = field(default=None, metadata={"help": "First N problems of --problems."})
    template: str = field(default="parallel_v3", metadata={"help": "Prompt template (parallel_r1.prompts.TEMPLATES)."})
    n: int = field(default=1, metadata={"help": "Samples per problem."})
    output: str | None = field(
        default=None, metadata={"help": "Append samples to this jsonl instead of printing them."}
    )
    data_dir: str | None = field(
        default=None, metadata={"help": "Folder of the local data sets (default: ../shared/data)."}
    )
    device: str = field(
        default="auto", metadata={"help": "auto (the first GPU when there is one, else the CPU), cpu, cuda, cuda:N."}
    )
    backend: str = field(
        default="transformers",
        metadata={
            "help": "transformers: the exact engine (CPU/GPU); vllm: the paper's separate-request loop on vLLM (GPU, fast, not exact: decoding/vllm_backend.py)."
        },
    )
    logprobs: bool = field(
        default=False,
        metadata={
            "help": "Also write each sample's completion tokens (`tokens`) and their log-probs (`logprobs`, the sampling distribution's, as the trainer computes them)."
        },
    )

    def __post_init__(self):
        if (self.problem is None) == (self.problems is None):
            raise ValueError("give exactly one of --problem (texts) and --problems (a set name or file)")
        from ..devices import resolve_device
        from ..prompts import TEMPLATES
        from ..validate import one_of, positive

        resolve_device(self.device)  # a device this machine lacks fails here, before any model loads
        one_of(self, "backend", ("transformers", "vllm"))
        one_of(self, "template", TEMPLATES)
        positive(self, "n", "limit")


CONFIG = (GenerateConfig, DecodingConfig)


def run(cfg: GenerateConfig, dcfg: DecodingConfig | None = None) -> int:
    from ..decoding import ParallelEngine
    from ..devices import resolve_device
    from ..io import JsonlAppender, read_jsonl
    from ..models import load_with_tags
    from ..prompts import build_prompt

    dcfg = dcfg or DecodingConfig()
    device = resolve_device(cfg.device)
    asked = dcfg.dtype if dcfg.dtype not in (None, "auto") else None
    if cfg.backend == "vllm":
        from ..decoding.vllm_backend import check_sampling

        check_sampling(dcfg.temperature, dcfg.path_temperature, where="generate")  # before the model loads
    else:
        dcfg = dataclasses.replace(dcfg, dtype=asked or ("bfloat16" if device.type == "cuda" else "float32"))
    if cfg.problem:
        problems = [(f"problem-{i}", text) for i, text in enumerate(cfg.problem)]
    else:
        from ..data.registry import load_problems

        loaded = load_problems(cfg.problems, split=cfg.split, data_dir=cfg.data_dir, limit=cfg.limit)
        problems = [(p.id, p.problem) for p in loaded]
    if cfg.backend == "vllm":
        from ..decoding.vllm_backend import VLLMEngine

        engine = VLLMEngine(cfg.model, dcfg, llm_kwargs=dict(dtype=asked or "auto"))  # auto: the model's own dtype
        tok = engine.tokenizer
    else:
        model, tok, added = load_with_tags(cfg.model)  # float32 weights; the engine autocasts to `dtype`
        model = model.to(device)
        if added:
            print(
                f"generate: {cfg.model} has no tag tokens; added them in memory (as prepare-model does)",
                file=sys.stderr,
            )
        engine = ParallelEngine(model, tok, dcfg)
    done: set[tuple[str, int]] = set()
    if cfg.output and Path(cfg.output).exists():
        done = {
            (str(r.get("problem_id")), int(r.get("sample_index", -1))) for r in read_jsonl(cfg.output, skip_bad=True)
        }
        # a problem with every sample there is not decoded again; one with some gets the missing ones
        problems = [p for p in problems if any((p[0], k) not in done for k in range(cfg.n))]
    prompts = [build_prompt(text, tok, cfg.template) for _, text in problems]
    log = JsonlAppender(cfg.output) if cfg.output else None
    written = 0
    for start in range(0, len(prompts), dcfg.batch_size):
        index: dict[int, int] = {}  # prompt -> samples seen: the k-th sample of a problem is sample_index k
        for s in engine.generate(prompts[start : start + dcfg.batch_size], n=cfg.n):
            pid = problems[start + s.prompt_index][0]
            k = index[s.prompt_index] = index.get(s.prompt_index, -1) + 1
            if (pid, k) in done:
                continue
            row = dict(
                problem_id=pid,
                sample_index=k,
                completion=s.text,
                finish_reason=s.finish_reason,
                num_blocks=s.num_blocks,
                length=len(s.completion_ids),
                backend=s.backend,
                exact=s.exact,
            )
            if cfg.logprobs:
                row.update(
                    tokens=tok.convert_ids_to_tokens(list(s.completion_ids)), logprobs=[float(x) for x in s.logprobs]
                )
            if log:
                log.write(row)
                written += 1
            else:
                print(f"--- {pid} ({s.finish_reason}, {s.num_blocks} blocks, {len(s.completion_ids)} tokens)\n{s.text}")
    if log:
        print(f"wrote {written} samples to {cfg.output} ({len(done)} there already)")
    return 0
