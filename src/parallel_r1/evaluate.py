"""Benchmark evaluation: the paper's main table (docs/eval.md), behind ``parallel-r1 eval``.

    parallel-r1 eval --model PATH --benchmarks aime24 aime25 amc23 math500 --output_dir OUT

For each benchmark, every problem gets ``n`` samples (default ``n = k``; paper: AIME/AMC 16,
MATH 1) from the decoding engine (:class:`parallel_r1.decoding.ParallelEngine`, Seen or Unseen).
Each sample is graded as soon as its batch finishes and appended to ``OUT/completions.jsonl``;
``OUT/results.json`` holds mean@k, unbiased pass@k, maj@k, verl's bootstrap best@k and the
parallel-thinking metrics (:mod:`parallel_r1.metrics`), and the table is printed in the layout
of the paper's main table (benchmarks as columns).

Resuming. ``OUT/run.json`` records the model and every setting that changes what a sample is
(template, variant, sampling, budget, grader, ...). Re-running with the same ones continues:
samples already in ``completions.jsonl`` are kept, only the missing (problem, sample_index)
pairs are generated. Different ones are an error naming the fields, so two runs never mix in
one folder. ``limit``, ``k`` and ``benchmarks`` may change between runs (more samples
or problems are just more of the same distribution).

Choices where the papers are silent:

* A model without the six tag tokens (a base or instruct model straight from the hub, e.g.
  ``smollm2``) gets them added in memory (``models.add_tag_tokens``, the same mean-of-pieces
  rows as ``prepare-model``); nothing is written to the model folder. ``run.json`` records it.
* Few-shot prompts (``template: fewshot``) are for base models: no chat template; the
  completion is cut at the first stop string (``\\nQ:``, ``\\nProblem:``) after generation,
  as OctoThinker's extraction cuts at the next question; ``length`` stays the generated tokens.
* Relative ``<Parallel>`` positions are in tokens when the engine gives token ids, else in
  characters.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import metrics as M
from .format import VARIANTS, analyze
from .io import JsonlAppender, atomic_write_json, read_jsonl
from .prompts import TEMPLATES

# prompts.TEMPLATES plus OctoThinker's few-shot prompts (data/fewshot.py), which are per benchmark
TEMPLATE_CHOICES = (*TEMPLATES, "fewshot")
# Settings that change what a sample is: a results folder only continues under the same ones.
IDENTITY = (
    "model",
    "template",
    "variant",
    "grader",
    "extractor",
    "temperature",
    "top_p",
    "top_k",
    "max_new_tokens",
    "num_paths",
    "max_blocks",
    "max_path_tokens",
    "path_temperature",
    "protocol",
    "decoding",
    "backend",
)
# What a run.json written before a field existed means by its absence.
IDENTITY_DEFAULTS = {"protocol": "custom", "decoding": "engine", "backend": "engine"}
DECODINGS = ("engine", "paper")
BACKENDS = ("engine", "vllm")


@dataclass
class EvalConfig:
    """Settings of one evaluation (``parallel-r1 eval``, a ``--config`` YAML, or Python).

    ``k`` and ``samples`` are given as text (``"aime24=16,math500=1"`` or ``"4"``), a number or a
    mapping, and hold ``{benchmark: int}`` after construction.
    """

    model: str = field(metadata={"help": "Model: local folder, hub id, or alias (`smollm2`)."})
    output_dir: str = field(
        metadata={"help": "Results folder: results.json, completions.jsonl, run.json. Re-running continues it."}
    )
    protocol: str = field(
        default="custom",
        metadata={
            "help": "Evaluation protocol (parallel_r1.protocols): custom (the defaults below), parallel_r1 (the paper's grader, benchmarks, sampling), octothinker (few-shot base / zero-shot RL models). It fills every setting not given explicitly; explicit flags win (docs/eval.md)."
        },
    )
    model_kind: str | None = field(
        default=None,
        metadata={
            "help": "base | rl: which OctoThinker setting applies (few-shot base models, zero-shot RL models); unset = read from the model folder."
        },
    )
    benchmarks: list[str] | None = field(
        default=None,
        metadata={
            "help": "Benchmark names (parallel_r1.data.registry.KNOWN), hub ids or files; space- or comma-separated. Default: the protocol's (custom: aime24 aime25 amc23 math500)."
        },
    )
    k: str = field(
        default="",
        metadata={
            "help": "k per benchmark, e.g. `aime24=16,amc23=16,math500=1` or one number for all; unset ones use the protocol's table (custom: AIME/AMC 16, MATH/GSM8K 1)."
        },
    )
    samples: str = field(
        default="",
        metadata={
            "help": "Samples per problem when more than k are wanted (better pass@k estimates), same syntax as k; default n = k."
        },
    )
    template: str | None = field(
        default=None,
        metadata={
            "help": "Prompt: parallel_v3 (the paper's final prompt), baseline, fewshot (OctoThinker few-shot, base models), no_prompt, parallel_v2 (pilot SFT data), orz (OctoThinker RL template, \\boxed{} answers). Default: the protocol's (custom: parallel_v3)."
        },
    )
    variant: str = field(
        default="unseen",
        metadata={
            "help": "Generation: `unseen` (paths isolated, engine-orchestrated) or `seen` (free causal generation)."
        },
    )
    decoding: str | None = field(
        default=None,
        metadata={
            "help": "`engine` (the exact decoding engine, tag-constrained) or `paper` (the paper's separate-request loop on plain `generate`, or on vLLM with --backend vllm: paths from the shared prefix, summary re-reading the flat text, stray tags let through; docs/eval.md). Default: the protocol's (custom and octothinker engine, parallel_r1 paper); paper with --backend vllm."
        },
    )
    grader: str | None = field(
        default=None,
        metadata={
            "help": "Answer checker: math_verify or minerva_exact. Default: the protocol's (custom: math_verify)."
        },
    )
    extractor: str | None = field(
        default=None,
        metadata={
            "help": "Answer extraction: final_answer, boxed, auto (Final Answer: line, else last \\boxed{}), paper (last Final Answer: in the last 300 tag-stripped characters), octothinker. Default: the protocol's (custom: auto)."
        },
    )
    temperature: float | None = field(
        default=None,
        metadata={
            "help": "Sampling temperature; 0 = greedy. Default: the protocol's (custom and parallel_r1 1.0, octothinker 0)."
        },
    )
    top_p: float | None = field(default=None, metadata={"help": "Nucleus sampling. Default: the protocol's (1.0)."})
    top_k: int | None = field(default=None, metadata={"help": "Top-k sampling (paper: off)."})
    max_new_tokens: int | None = field(
        default=None,
        metadata={
            "help": "Completion budget in tokens. Default: the protocol's (custom and parallel_r1 3000, octothinker 1024 base / 4096 RL)."
        },
    )
    num_paths: int = field(default=2, metadata={"help": "Paths per parallel block (Unseen)."})
    max_blocks: int = field(default=4, metadata={"help": "Max parallel blocks per completion (Unseen)."})
    max_path_tokens: int | None = field(
        default=None, metadata={"help": "Max tokens per path (Unseen); unset = the completion budget."}
    )
    path_temperature: float | None = field(
        default=1.0, metadata={"help": "Temperature of paths (paper 1.0); unset = --temperature."}
    )
    limit: int | None = field(default=None, metadata={"help": "Only the first N problems of each benchmark."})
    data_dir: str | None = field(
        default=None, metadata={"help": "Folder of the shipped data sets (default: the registry's)."}
    )
    batch_size: int = field(
        default=8, metadata={"help": "Samples generated per engine call (per process under data-parallel eval)."}
    )
    device: str = field(
        default="auto",
        metadata={
            "help": "auto (the first GPU when there is one, else the CPU), cpu, cuda, cuda:N. Under `accelerate launch` / `torchrun` each process takes its local GPU."
        },
    )
    dtype: str = field(
        default="auto",
        metadata={
            "help": "Compute dtype of the engine: auto (bfloat16 on a GPU, float32 on the CPU), float32, bfloat16, float16. Weights stay float32; the forwards autocast, as a bf16 trainer's do."
        },
    )
    seed: int | None = field(
        default=None,
        metadata={
            "help": "Seed of the sampler; each batch gets seed + batch number (unset: not seeded, as the paper)."
        },
    )
    grading_workers: int | None = field(default=None, metadata={"help": "Grader processes (default: CPUs)."})
    backend: str = field(
        default="engine",
        metadata={
            "help": "Generation: `engine` (parallel_r1.decoding.ParallelEngine, exact, CPU/GPU) or `vllm` (the paper's separate-request loop on vLLM, as the paper's own numbers were made; GPU, not exact, docs/decoding.md)."
        },
    )
    tensor_parallel_size: int = field(
        default=1, metadata={"help": "vLLM backend: GPUs per model copy (vllm.LLM tensor_parallel_size)."}
    )
    data_parallel_size: int = field(
        default=1,
        metadata={
            "help": "vLLM backend: must be 1. vLLM's offline LLM refuses more copies in one process; launch one process per copy instead (torchrun --nproc_per_node N -m parallel_r1.cli eval --backend vllm ...: each rank gets its own GPUs and shard, docs/eval.md)."
        },
    )
    vllm_kwargs: dict | str | None = field(
        default=None,
        metadata={
            "help": "vLLM backend: more vllm.LLM engine arguments, a mapping (YAML/JSON), e.g. `{gpu_memory_utilization: 0.85, max_model_len: 8192}`."
        },
    )

    def __post_init__(self):
        from .protocols import get_protocol, resolve_model_kind

        proto = get_protocol(self.protocol)
        self.model_kind = resolve_model_kind(proto, self.model, self.model_kind) if self.model else self.model_kind
        if self.backend == "vllm" and self.decoding == "engine":
            raise ValueError(
                "eval: --backend vllm runs the paper's separate-request loop; the exact engine (--decoding engine) "
                "runs on transformers only (--backend engine)"
            )
        if self.backend == "vllm":
            self.decoding = "paper"  # the one loop vLLM can run, whatever the protocol decodes with
        # Explicit values win over the protocol's; which ones did is recorded (run.json, results.json).
        self.overrides = []
        self.explicit = set()
        for name, value in proto.values(self.model_kind).items():
            if getattr(self, name) is None:
                setattr(self, name, value)
                continue
            self.explicit.add(name)
            if self.protocol != "custom" and getattr(self, name) != value:
                self.overrides.append(name)
        names = [self.benchmarks] if isinstance(self.benchmarks, str) else self.benchmarks
        self.benchmarks = _expand(list(dict.fromkeys(b.strip() for n in names for b in str(n).split(",") if b.strip())))
        explicit_k = _per_benchmark(self.k, self.benchmarks, "k")
        if explicit_k and self.protocol != "custom":
            self.overrides.append("k")
        self.k = {**{b: v for b, v in proto.k.items() if b in self.benchmarks}, **explicit_k}
        self.samples = _per_benchmark(self.samples, self.benchmarks, "samples")
        if not self.model:
            raise ValueError("eval: model is required")
        if not self.output_dir:
            raise ValueError("eval: output_dir is required")
        if not self.benchmarks:
            raise ValueError("eval: no benchmark given")
        if self.template not in TEMPLATE_CHOICES:
            raise KeyError(f"unknown template {self.template!r}; known: {', '.join(TEMPLATE_CHOICES)}")
        if self.variant not in VARIANTS:
            raise KeyError(f"unknown variant {self.variant!r}; known: {', '.join(VARIANTS)}")
        if self.decoding not in DECODINGS:
            raise KeyError(f"unknown decoding {self.decoding!r}; known: {', '.join(DECODINGS)}")
        self._check_backend()
        from .devices import resolve_device, resolve_dtype

        resolve_device(self.device)  # a device this machine lacks fails here, before any model loads
        resolve_dtype(self.dtype)
        from .grading import GRADERS
        from .protocols import EXTRACTORS

        if self.grader not in GRADERS:
            raise KeyError(f"unknown grader {self.grader!r}; known: {', '.join(GRADERS)}")
        if self.extractor not in EXTRACTORS:
            raise KeyError(f"unknown extractor {self.extractor!r}; known: {', '.join(EXTRACTORS)}")
        from .validate import positive

        positive(self, "limit", "grading_workers")
        # the decoding fields are checked by DecodingConfig itself, the one that uses them, so that a
        # setting it refuses (--num_paths 1, --top_p 0, --max_blocks 0) fails here, before any model loads
        _decoding_config(self, self.seed)
        for name in self.benchmarks:
            k, n = self.k_of(name), self.n_of(name)
            if k < 1:
                raise ValueError(f"eval: k for {name} must be >= 1, got {k}")
            if k > n:
                raise ValueError(
                    f"eval: k={k} for {name} is larger than the {n} samples per problem (samples {name}={n})"
                )

    def _check_backend(self) -> None:
        if self.backend not in BACKENDS:
            raise KeyError(f"unknown backend {self.backend!r}; known: {', '.join(BACKENDS)}")
        if isinstance(self.vllm_kwargs, str):
            import yaml

            self.vllm_kwargs = yaml.safe_load(self.vllm_kwargs)
        if self.vllm_kwargs is not None and not isinstance(self.vllm_kwargs, dict):
            raise ValueError(f"eval: vllm_kwargs must be a mapping of vllm.LLM arguments, got {self.vllm_kwargs!r}")
        if self.tensor_parallel_size < 1 or self.data_parallel_size < 1:
            raise ValueError("eval: tensor_parallel_size and data_parallel_size must be >= 1")
        if self.data_parallel_size > 1:  # vllm 0.30 entrypoints/llm.py ~284 raises the same, after the model loads
            raise ValueError(
                f"eval: --data_parallel_size {self.data_parallel_size}: vLLM's offline LLM does not support data "
                "parallelism in one process; run one process per model copy instead: torchrun --nproc_per_node "
                f"{self.data_parallel_size} -m parallel_r1.cli eval --backend vllm ... (each rank shards the problems)"
            )
        if self.backend == "vllm":
            from .decoding.vllm_backend import check_sampling

            check_sampling(self.temperature, self.path_temperature, where="eval")

    def scoring_of(self, name: str):
        """The :class:`~parallel_r1.protocols.Scoring` of one benchmark: the protocol's own for
        it (OctoThinker's per-benchmark rules), unless ``--extractor`` / ``--grader`` was given,
        else ``extractor`` and ``grader``."""
        from .protocols import Scoring, get_protocol

        own = get_protocol(self.protocol).scoring.get(name)
        if own is None or {"extractor", "grader"} & self.explicit:
            return Scoring(self.extractor, self.grader)
        return own

    def k_of(self, name: str) -> int:
        from .protocols import get_protocol

        # a benchmark outside the protocol's table: the toolkit's own k (16 for AIME/AMC, else 1)
        return self.k.get(name, get_protocol("custom").k.get(name, 1))

    def n_of(self, name: str) -> int:
        return self.samples.get(name, self.k_of(name))

    def identity(self) -> dict:
        """What a results folder must agree on to be continued."""
        d = {f: getattr(self, f) for f in IDENTITY}
        d["model"] = _model_id(self.model)
        return d


def _per_benchmark(value, benchmarks: Sequence[str], what: str) -> dict[str, int]:
    """``"aime24=16,math500=1"``, ``"4"`` (all) or a dict -> {benchmark: int}."""
    if isinstance(value, int):
        return {b: value for b in benchmarks}
    if isinstance(value, dict):
        return {str(b): int(v) for b, v in value.items()}
    value = str(value).strip()
    if not value:
        return {}
    if "=" not in value:
        try:
            return {b: int(value) for b in benchmarks}
        except ValueError:
            raise ValueError(f"eval: {what} {value!r}: expected a number or name=N pairs") from None
    out = {}
    for part in value.split(","):
        name, _, num = part.partition("=")
        try:
            out[name.strip()] = int(num)
        except ValueError:
            raise ValueError(f"eval: {what} {part!r}: expected name=N with an integer N") from None
    unknown = sorted(set(out) - set(benchmarks))
    if unknown:
        raise ValueError(
            f"eval: {what} names {', '.join(unknown)}, which are not in benchmarks ({', '.join(benchmarks)})"
        )
    return out


def _expand(benchmarks: list[str]) -> list[str]:
    """``apo_eval`` is several benchmarks in one file: it is scored as each of them (a table row each)."""
    from .data.registry import APO_SOURCES

    out = []
    for b in benchmarks:
        out += list(APO_SOURCES) if b == "apo_eval" else [b]
    return list(dict.fromkeys(out))


def _model_id(model: str) -> str:
    p = Path(model).expanduser()
    return str(p.resolve()) if p.exists() else model


# ----------------------------------------------------------------------------- generation


@dataclass
class Completion:
    """One generated completion, as the evaluator needs it."""

    text: str  # tags kept, no EOS/pad
    length: int  # completion tokens generated
    finish_reason: str = "eos"  # eos | length | max_blocks
    positions: list[float] | None = None  # relative <Parallel> positions in tokens; None = from the text
    critical_path: int | None = None  # metrics.critical_path_tokens of its ids; None = unknown


# prompts (one per sample wanted; repeats allowed), batch seed -> one Completion per prompt, in order
GenerateFn = Callable[[list[str], int | None], list[Completion]]


def engine_generate_fn(model, tokenizer, cfg: EvalConfig, make_engine=None, dtype: str | None = None) -> GenerateFn:
    """Generation through :class:`parallel_r1.decoding.ParallelEngine` (Seen or Unseen) on the
    model's device, its forwards in ``dtype`` (None: the model's own), or through
    ``make_engine(DecodingConfig)`` (an engine with the same ``generate``)."""
    from .decoding import ParallelEngine
    from .structure import TagIds

    tags = TagIds.from_tokenizer(tokenizer)
    ends = [t for t in {tokenizer.eos_token, tokenizer.pad_token} if t]

    def generate(prompts: list[str], seed: int | None) -> list[Completion]:
        dcfg = _decoding_config(cfg, seed, dtype)
        engine = make_engine(dcfg) if make_engine is not None else ParallelEngine(model, tokenizer, dcfg)
        return _completions(engine.generate(prompts, n=1), tags, ends)

    return generate


def _decoding_config(cfg: EvalConfig, seed: int | None, dtype: str | None = None):
    from .decoding import DecodingConfig

    return DecodingConfig(
        variant=cfg.variant,
        num_paths=cfg.num_paths,
        max_blocks=cfg.max_blocks,
        max_new_tokens=cfg.max_new_tokens,
        max_path_tokens=cfg.max_path_tokens or cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        top_k=cfg.top_k,
        path_temperature=cfg.path_temperature,
        seed=seed,
        batch_size=cfg.batch_size,
        dtype=dtype,
    )


def _completions(samples, tags, ends: Sequence[str]) -> list[Completion]:
    """Engine samples as completions; ``tags`` (``TagIds`` or None) locate blocks in the ids."""
    out = []
    for s in sorted(samples, key=lambda s: s.prompt_index):
        ids = list(s.completion_ids)
        n = len(ids)
        if tags is None:
            out.append(Completion(strip_end(s.text, ends), n, s.finish_reason, [], n))
            continue
        positions = [i / n for i, t in enumerate(ids) if t == tags.parallel_open] if n else []
        critical = M.critical_path_tokens(ids, tags.path_open, tags.path_close)
        out.append(Completion(strip_end(s.text, ends), n, s.finish_reason, positions, critical))
    return out


def vllm_generate_fn(cfg: EvalConfig) -> tuple[GenerateFn, object]:
    """Generation on vLLM with the paper's loop (:class:`parallel_r1.decoding.vllm_backend.VLLMEngine`):
    one ``vllm.LLM`` (prefix caching, ``tensor_parallel_size`` / ``data_parallel_size`` /
    ``vllm_kwargs``) for the whole evaluation. vLLM cannot add the tag tokens in memory as the
    engine backend does: an Unseen evaluation needs a model that has them (``prepare-model``)."""
    from .decoding.vllm_backend import VLLMEngine, generation_eos_ids, load_llm
    from .models import check_model_source, has_tag_tokens, load_tokenizer
    from .structure import TagIds

    check_model_source(cfg.model)
    tokenizer = load_tokenizer(cfg.model)
    if cfg.variant == "unseen" and not has_tag_tokens(tokenizer):
        raise ValueError(f"eval: {cfg.model} has no tag tokens; the vllm backend cannot add them in memory "
                         "(run `parallel-r1 prepare-model` first, or use --backend engine)")  # fmt: skip
    tags = TagIds.from_tokenizer(tokenizer) if has_tag_tokens(tokenizer) else None
    visible_devices_for_rank(cfg.tensor_parallel_size)
    llm, params = load_llm(cfg.model, tensor_parallel_size=cfg.tensor_parallel_size, **(cfg.vllm_kwargs or {}))
    eos = generation_eos_ids(cfg.model)
    ends = [t for t in {tokenizer.eos_token, tokenizer.pad_token} if t]

    def generate(prompts: list[str], seed: int | None) -> list[Completion]:
        engine = VLLMEngine(llm, _decoding_config(cfg, seed), tokenizer=tokenizer, sampling_params=params, eos_ids=eos)
        return _completions(engine.generate(prompts, n=1), tags, ends)

    return generate, tokenizer


def visible_devices_for_rank(tensor_parallel_size: int) -> None:
    """Under a multi-process launch, give this rank's vLLM its own GPUs: vLLM's single-process
    executor puts its worker on the first visible device (vllm 0.30
    ``v1/executor/uniproc_executor.py`` ~86), so without this every rank's engine would land on
    cuda:0. Local rank r takes devices ``r*tp .. (r+1)*tp - 1`` of those visible to the launch;
    vLLM's engine process, started after this, inherits the narrowed ``CUDA_VISIBLE_DEVICES``."""
    world, local = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0"))
    if world == 1:
        return
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = visible.split(",") if visible else [str(i) for i in range(_cuda_count())]
    mine = devices[local * tensor_parallel_size : (local + 1) * tensor_parallel_size]
    if len(mine) < tensor_parallel_size:
        raise ValueError(
            f"eval: local rank {local} needs GPUs {local * tensor_parallel_size}..{(local + 1) * tensor_parallel_size - 1} "
            f"for tensor_parallel_size {tensor_parallel_size}, but only {len(devices)} are visible"
        )
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(mine)


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def strip_end(text: str, ends: Sequence[str]) -> str:
    """``text`` without the end-of-text tokens it ends on (EOS, pad), as vLLM returns a completion."""
    changed = True
    while changed:
        changed = False
        for e in ends:
            if text.endswith(e):
                text, changed = text[: -len(e)], True
    return text


# ----------------------------------------------------------------------------- prompts


@dataclass
class BenchmarkPrompts:
    problems: list  # [P] registry.Problem
    prompts: list[str]  # [P]
    stop: list[str]  # cut the completion at the first of these (few-shot)


def load_benchmark(name: str, cfg: EvalConfig):
    from .data.registry import load_problems

    problems = load_problems(name, split=_split(name), data_dir=cfg.data_dir, limit=cfg.limit)
    if not problems:
        raise ValueError(f"eval: benchmark {name} has no problems")
    return problems


def _split(name: str) -> str | None:
    # The training sets ship a train split too; evaluation is always on test.
    return "test" if name in ("gsm8k", "math") else None


def build_prompts(
    name: str,
    problems,
    tokenizer,
    template: str,
    data_dir: str | os.PathLike | None = None,
    use_chat_template: bool | None = None,
) -> BenchmarkPrompts:
    """Prompts of one benchmark; few-shot exemplars come from ``data_dir`` too.
    ``use_chat_template``: ``None`` = when the tokenizer has one (``prompts.build_prompt``).
    A prompt that is not chat-templated starts with the tokenizer's BOS where its encoder adds
    one (``prompts.bos_prefix``), as vLLM encodes a text prompt."""
    from .prompts import bos_prefix, build_prompt

    if template == "fewshot":
        from .data.fewshot import fewshot_prompt, fewshot_stop

        bos = bos_prefix(tokenizer)
        prompts = [bos + fewshot_prompt(name, p.problem, data_dir) for p in problems]
        return BenchmarkPrompts(problems, prompts, list(fewshot_stop(name, data_dir)))
    return BenchmarkPrompts(
        problems, [build_prompt(p.problem, tokenizer, template, use_chat_template, raw_bos=True) for p in problems], []
    )


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to the first of the (non-empty) stop strings, as vLLM's ``stop``."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return text if cut < 0 else text[:cut]


# ----------------------------------------------------------------------------- results folder


def check_run_folder(out: Path, cfg: EvalConfig) -> None:
    """Fail when ``out`` holds results of another run (other model or sample-changing settings).

    Called before the model loads, so a wrong ``output_dir`` costs nothing. A ``run.json`` beside
    no completion (a run that failed before its first sample) records nothing to protect: it is
    rewritten, so the corrected re-run goes ahead.
    """
    from .validate import output_folder

    output_folder(out)
    path = out / "run.json"
    if path.exists() and done_samples(out / "completions.jsonl"):
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"eval: {path} is not valid JSON ({e.msg}); use another output_dir") from None
        old_ident, ident = old.get("identity", {}), cfg.identity()
        diff = [f for f in IDENTITY if old_ident.get(f, IDENTITY_DEFAULTS.get(f)) != ident.get(f)]
        if diff:
            detail = "; ".join(f"{f}: {old_ident.get(f)!r} there, {ident.get(f)!r} now" for f in diff)
            raise ValueError(f"eval: {out} holds results of another run ({detail}); use another output_dir")
    elif not path.exists() and ((out / "completions.jsonl").exists() or (out / "results.json").exists()):
        raise ValueError(
            f"eval: {out} has results but no run.json; it is not an eval folder of this tool, use another output_dir"
        )


def open_run_folder(out: Path, cfg: EvalConfig, extra: dict | None = None) -> None:
    """Create ``out/run.json`` or check that it records the same settings."""
    check_run_folder(out, cfg)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "run.json"
    if not path.exists() or not done_samples(out / "completions.jsonl"):
        atomic_write_json(path, {"identity": cfg.identity(), **(extra or {})})


def done_samples(path: Path) -> dict[tuple[str, str, int], dict]:
    """Samples already generated: ``completions.jsonl`` plus the per-process files a data-parallel
    run left next to it (``completions.rank<R>.jsonl``, not merged yet when it was interrupted)."""
    done = {}
    for p in [*sorted(path.parent.glob(RANK_FILES.format(rank="*"))), path]:  # the merged file wins
        if p.exists():
            done.update({_key(r): r for r in read_jsonl(p, skip_bad=True)})
    return done


def _key(row: dict) -> tuple[str, str, int]:
    return row["benchmark"], str(row["problem_id"]), int(row["sample_index"])


# ----------------------------------------------------------------------------- devices, data parallel

# Where each process of a data-parallel run appends its samples; rank 0 merges them at the end.
RANK_FILES = "completions.rank{rank}.jsonl"


def eval_device(cfg: EvalConfig):
    """The device of this process: ``cfg.device``, with ``auto``/``cuda`` meaning the process's own
    GPU (``LOCAL_RANK``) when ``accelerate launch`` / ``torchrun`` started several."""
    from .devices import resolve_device

    dev = resolve_device(cfg.device)
    if dev.type == "cuda" and dev.index is None:
        return resolve_device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return dev


def eval_dtype(cfg: EvalConfig, device) -> str:
    """``auto``: bfloat16 on a GPU (the precision the recipes train in), float32 elsewhere."""
    if cfg.dtype != "auto":
        return cfg.dtype
    return "bfloat16" if device.type == "cuda" else "float32"


class Ranks:
    """The processes of one evaluation: 1 (plain run) or ``WORLD_SIZE`` under ``accelerate launch`` /
    ``torchrun``. Each takes every ``world``-th missing (problem, sample) pair and appends to its own
    file; rank 0 merges the files into ``completions.jsonl`` (each pair once) and writes
    ``results.json``. Coordination goes through a gloo group: only small Python objects travel."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        if self.world > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("gloo")
            self.dist = dist
            # a caller's NCCL group would need one current GPU per rank for object collectives
            self.group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            self.dist.barrier(group=self.group)

    def from_main(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        self.dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def sink(self, out: Path) -> Path:
        return out / ("completions.jsonl" if self.world == 1 else RANK_FILES.format(rank=self.rank))


def merge_rank_files(out: Path) -> int:
    """Append the rows of ``completions.rank*.jsonl`` that ``completions.jsonl`` lacks, then delete
    those files; returns the rows added. Crash-safe: until a file is deleted its rows are also
    read by :func:`done_samples`, and a re-run appends only the keys still missing."""
    main = out / "completions.jsonl"
    have = {_key(r) for r in read_jsonl(main, skip_bad=True)} if main.exists() else set()
    parts = sorted(out.glob(RANK_FILES.format(rank="*")))
    added = 0
    with JsonlAppender(main) as sink:
        for part in parts:
            rows = [r for r in read_jsonl(part, skip_bad=True) if _key(r) not in have]
            have.update(_key(r) for r in rows)
            sink.write_many(rows)
            added += len(rows)
    for part in parts:
        part.unlink()
    return added


# ----------------------------------------------------------------------------- scoring


def summarize(rows: Sequence[dict], k: int, n: int) -> dict:
    """One benchmark's results from its completion rows (each problem has n >= k samples).

    Rows with a ``group`` (the apo sets: copies of one problem) are scored per group: c copies of
    k samples each are one problem with c*k samples, so k=1 on the 16 copies gives mean@16 and
    pass@16. ``c`` is the fewest copies any group has (``--limit`` may cut the last round short).
    """
    by_problem: dict[str, list[dict]] = defaultdict(list)
    grouped = bool(rows) and all("group" in r for r in rows)
    for r in rows:
        by_problem[str(r["group"] if grouped else r["problem_id"])].append(r)
    copies = 1
    if grouped:
        copies = min(len({r["problem_id"] for r in g}) for g in by_problem.values())
        # rows arrive copy by copy; keep the first `copies` copies of every group
        groups = [[r for r in g if r["problem_id"] in _first(g, copies)] for g in by_problem.values()]
        groups = [sorted(g, key=lambda r: r["sample_index"])[: n * copies] for g in groups]
        k, n = k * copies, n * copies
    else:
        groups = [sorted(g, key=lambda r: r["sample_index"])[:n] for g in by_problem.values()]
    short = [pid for pid, g in zip(by_problem, groups) if len(g) < k]
    if short:
        raise ValueError(f"eval: problems {', '.join(short[:5])} have fewer than k={k} samples")
    correct = [[bool(r["correct"]) for r in g] for g in groups]
    preds = [[r["pred"] for r in g] for g in groups]
    flat = [r for g in groups for r in g]
    return {
        "n_problems": len(groups),
        "k": k,
        "n_samples": n,
        **({"copies": copies} if grouped else {}),
        "mean@k": M.mean_at_k(correct),
        "pass@k": M.pass_at_k_mean(correct, k),
        "maj@k": M.maj_at_k(preds, correct, k),
        "best@k": M.best_at_k(correct, k),
        **M.behaviour([r["completion"] for r in flat]),
        "mean_blocks": M.mean_blocks([r["num_blocks"] for r in flat]),
        "mean_length": M.mean_length([r["length"] for r in flat]),
        "mean_critical_path_tokens": M.mean_critical_path([r.get("critical_path_tokens") for r in flat]),
        "format_error_rate": M.format_error_rate([r["format_ok"] for r in flat]),
        "mean_parallel_position": M.mean_parallel_position([r["positions"] for r in flat]),
        "clipped_ratio": M.clipped_ratio([r.get("finish_reason") == "length" for r in flat]),
    }


def _first(rows: Sequence[dict], copies: int) -> set[str]:
    """The problem ids of the first ``copies`` copies among ``rows`` (in row order)."""
    return set(list(dict.fromkeys(r["problem_id"] for r in rows))[:copies])


# ----------------------------------------------------------------------------- driver


def evaluate(cfg: EvalConfig, generate_fn: GenerateFn | None = None, tokenizer=None, progress: bool = True) -> dict:
    """Run (or continue) an evaluation; returns the ``results.json`` content.

    ``generate_fn`` replaces the engine (tests script it); ``tokenizer`` is then used for
    chat templates (``None``: templates applied as plain text).
    """
    from .grading import gold_answer
    from .grading_pool import grade_answers
    from .protocols import EXTRACTORS, get_protocol

    out = Path(cfg.output_dir)
    ranks = Ranks()
    # Everything that can be wrong with the input fails here, before the model loads.
    benches = {name: load_benchmark(name, cfg) for name in cfg.benchmarks}
    if cfg.template == "fewshot":
        from .data.fewshot import prompt_set

        for name in benches:
            prompt_set(name, cfg.data_dir)
    check_run_folder(out, cfg)
    extra = {"protocol": protocol_record(cfg)}
    if generate_fn is None and cfg.backend == "vllm":
        generate_fn, tokenizer = vllm_generate_fn(cfg)
    elif generate_fn is None:
        device = eval_device(cfg)
        model, tokenizer, added = load_for_eval(cfg.model, device)
        extra["tags_added_in_memory"] = added
        if cfg.decoding == "paper":
            from .decoding.paper_loop import PaperLoopEngine

            generate_fn = engine_generate_fn(
                model, tokenizer, cfg, make_engine=lambda dcfg: PaperLoopEngine(model, tokenizer, dcfg, cfg.batch_size)
            )
        else:
            generate_fn = engine_generate_fn(model, tokenizer, cfg, dtype=eval_dtype(cfg, device))
    if ranks.main:
        open_run_folder(out, cfg, extra)
    ranks.barrier()
    done = done_samples(out / "completions.jsonl")
    ranks.barrier()  # every rank has read the same files before any rank appends to its own
    chat = None if get_protocol(cfg.protocol).chat_template else False
    progress = progress and ranks.main

    from tqdm.auto import tqdm

    batch_no = 0
    with JsonlAppender(ranks.sink(out)) as sink:
        for name, problems in benches.items():
            bp = build_prompts(name, problems, tokenizer, cfg.template, cfg.data_dir, use_chat_template=chat)
            scoring = cfg.scoring_of(name)
            extract = EXTRACTORS[scoring.extractor]

            def gold_of(problem, key=scoring.gold):
                return problem.extra.get(key, problem.answer) if key else problem.answer

            n = cfg.n_of(name)
            todo = [(i, s) for i, p in enumerate(problems) for s in range(n) if (name, str(p.id), s) not in done]
            bar = tqdm(
                total=len(problems) * n,
                initial=len(problems) * n - len(todo),
                desc=f"{name}",
                unit="sample",
                disable=not progress,
            )
            todo = todo[ranks.rank :: ranks.world]  # this process's shard (all of it in a plain run)
            for start in range(0, len(todo), cfg.batch_size):
                batch = todo[start : start + cfg.batch_size]
                seed = None if cfg.seed is None else cfg.seed + batch_no * ranks.world + ranks.rank
                batch_no += 1
                comps = generate_fn([bp.prompts[i] for i, _ in batch], seed)
                if len(comps) != len(batch):
                    raise RuntimeError(f"generator returned {len(comps)} completions for {len(batch)} prompts")
                texts = [cut_at_stop(c.text, bp.stop) for c in comps]
                preds = [extract(t, problems[i].problem) for t, (i, _) in zip(texts, batch)]
                golds = [gold_answer(str(gold_of(problems[i]))) for i, _ in batch]
                oks = grade_answers(preds, golds, scoring.grader, cfg.grading_workers)
                rows = []
                for (i, s), c, text, pred, gold, ok in zip(batch, comps, texts, preds, golds, oks):
                    rep = analyze(text)
                    rows.append(
                        {
                            "benchmark": name,
                            "problem_id": str(problems[i].id),
                            "sample_index": s,
                            "prompt": bp.prompts[i],
                            "completion": text,
                            "answer": gold,
                            "pred": pred,
                            "correct": bool(ok),
                            "uses_parallel": rep.uses_parallel,
                            "format_ok": rep.format_ok,
                            "num_blocks": rep.num_blocks,
                            "positions": rep.positions if c.positions is None else c.positions,
                            "length": c.length,
                            "critical_path_tokens": c.critical_path,
                            "finish_reason": c.finish_reason,
                            **(
                                {"group": problems[i].extra["problem_index"]}
                                if "problem_index" in problems[i].extra
                                else {}
                            ),
                        }
                    )
                sink.write_many(rows)
                for r in rows:
                    done[(name, r["problem_id"], r["sample_index"])] = r
                bar.update(len(batch) * ranks.world)
            bar.close()

    ranks.barrier()  # every shard is on disk
    if not ranks.main:
        return ranks.from_main(None)
    merge_rank_files(out)
    done = done_samples(out / "completions.jsonl")
    results = {
        "model": cfg.identity()["model"],
        "protocol": protocol_record(cfg),
        "settings": run_identity(cfg),
        "benchmarks": {},
    }
    for name, problems in benches.items():
        n = cfg.n_of(name)
        rows = [done[(name, str(p.id), s)] for p in problems for s in range(n)]
        scoring = cfg.scoring_of(name)
        results["benchmarks"][name] = {
            **summarize(rows, cfg.k_of(name), n),
            "extractor": scoring.extractor,
            "grader": scoring.grader,
        }
    # Benchmarks evaluated into this folder by an earlier call (other benchmarks) stay in it.
    old = _read_results(out / "results.json")
    for name, res in old.get("benchmarks", {}).items():
        results["benchmarks"].setdefault(name, res)
    atomic_write_json(out / "results.json", results)
    return ranks.from_main(results)


def _read_results(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return {}  # a torn write of ours: it is rebuilt from completions.jsonl


def protocol_record(cfg: EvalConfig) -> dict:
    """Which protocol produced a result, for ``run.json`` and ``results.json``: its name, the model
    kind it was applied for, and the settings given explicitly over it."""
    from .protocols import get_protocol

    return {
        "name": cfg.protocol,
        "model_kind": cfg.model_kind,
        "overrides": list(cfg.overrides),
        "reproduces": get_protocol(cfg.protocol).reproduces,
    }


def run_identity(cfg: EvalConfig) -> dict:
    """The settings ``results.json`` records: every field but where the model and the results are
    and how many grading processes and GPUs ran, with ``k`` and ``samples`` resolved per benchmark.
    Two evaluations are comparable when their identities are equal (``rl-readiness`` checks it)."""
    d = dataclasses.asdict(cfg)
    for f in ("model", "output_dir", "grading_workers", "device", "tensor_parallel_size", "data_parallel_size"):
        d.pop(f)
    d["k"] = {b: cfg.k_of(b) for b in cfg.benchmarks}
    d["samples"] = {b: cfg.n_of(b) for b in cfg.benchmarks}
    return d


def load_for_eval(model_path: str, device=None):
    """Model (on ``device``; None: the CPU) and tokenizer, with the tag tokens added in memory when
    the checkpoint lacks them."""
    from .models import load_with_tags

    model, tok, added = load_with_tags(model_path)
    if added:
        print(f"eval: {model_path} has no tag tokens; added them in memory (as prepare-model does)", file=sys.stderr)
    if device is not None:
        model.to(device)
    return model, tok, added
