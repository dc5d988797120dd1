"""``parallel-r1 generate``: sample completions with the decoding engine.

    parallel-r1 generate --model runs/demo/sft --problem "Tom has 3 apples ..." --n 2
    parallel-r1 generate --model M --problems gsm8k --limit 20 --out samples.jsonl
    parallel-r1 generate --model M --problems aime24 --backend vllm --n 16 --out s.jsonl   # GPU, not exact

Prompts go through the chosen template (``parallel_v3`` by default) and the model's chat
template. With ``--out`` every sample is appended to a jsonl as it is produced; otherwise the
completions are printed.
"""

from __future__ import annotations

import argparse
import dataclasses

from ..io import JsonlAppender
from .engine import DecodingConfig, ParallelEngine


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, help="checkpoint folder, hub id or alias (smollm2)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--problem", action="append", help="a problem text (repeatable)")
    src.add_argument("--problems", help="a problem set name (gsm8k, synthetic_hard, ...) or a jsonl/parquet file")
    p.add_argument("--split", default=None, help="split of --problems (default: the set's test split)")
    p.add_argument("--limit", type=int, default=None, help="first N problems of --problems")
    p.add_argument("--template", default="parallel_v3", help="prompt template (parallel_r1.prompts.TEMPLATES)")
    p.add_argument("--n", type=int, default=1, help="samples per problem")
    p.add_argument("--out", default=None, help="append samples to this jsonl instead of printing them")
    p.add_argument("--data-dir", default=None, help="folder of the local data sets (default: ../shared/data)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--backend", default="transformers", choices=("transformers", "vllm"),
                   help="transformers: the exact engine (CPU/GPU); vllm: the paper's separate-request loop on vLLM "
                        "(GPU, fast, not exact: decoding/vllm_backend.py)")  # fmt: skip
    for f in dataclasses.fields(DecodingConfig):  # every engine setting as a flag
        name = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            p.add_argument(name, action=argparse.BooleanOptionalAction, default=f.default, help=f.metadata["help"])
        else:
            kind = {"max_path_tokens": int, "seed": int}.get(f.name, type(f.default))
            p.add_argument(name, type=kind, default=f.default, help=f.metadata["help"])


def run(args) -> int:
    import torch

    from ..models import load_model, load_tokenizer
    from ..prompts import build_prompt

    cfg = DecodingConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(DecodingConfig)})
    if args.problem:
        problems = [(f"problem-{i}", text) for i, text in enumerate(args.problem)]
    else:
        from ..data.registry import load_problems

        problems = [(p.id, p.problem) for p in load_problems(args.problems, split=args.split, data_dir=args.data_dir, limit=args.limit)]
    if args.backend == "vllm":
        from .vllm_backend import VLLMEngine

        engine = VLLMEngine(args.model, cfg, llm_kwargs=dict(dtype=args.dtype))
        tok = engine.tokenizer
    else:
        tok = load_tokenizer(args.model)
        model = load_model(args.model, dtype=getattr(torch, args.dtype))
        engine = ParallelEngine(model, tok, cfg)  # refuses a model without the tag tokens before decoding
    prompts = [build_prompt(text, tok, args.template) for _, text in problems]
    log = JsonlAppender(args.out) if args.out else None
    for start in range(0, len(prompts), cfg.batch_size):
        for s in engine.generate(prompts[start : start + cfg.batch_size], n=args.n):
            pid = problems[start + s.prompt_index][0]
            row = dict(problem_id=pid, completion=s.text, finish_reason=s.finish_reason, num_blocks=s.num_blocks, length=len(s.completion_ids),
                       backend=s.backend, exact=s.exact)  # fmt: skip
            if log:
                log.write(row)
            else:
                print(f"--- {pid} ({s.finish_reason}, {s.num_blocks} blocks, {len(s.completion_ids)} tokens)\n{s.text}")
    if log:
        print(f"wrote {len(prompts) * args.n} samples to {args.out}")
    return 0
