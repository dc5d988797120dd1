"""``parallel-r1 rl-readiness --config recipes/readiness_*.yaml [--branches NAME=CKPT ...]``:
the same short RL and evaluation for each mid-training branch (docs/midtrain.md). Library entry
point: :func:`parallel_r1.train.readiness.run_readiness`.

    parallel-r1 rl-readiness --config recipes/readiness_smollm2_cpu.yaml --midtrain-dir runs/mt_smollm2
    parallel-r1 rl-readiness --config R.yaml --branches long=runs/mt/long/final short=runs/mt/short/final

The recipe is nested (``rl`` and ``eval`` sections), so it is read with
:func:`parallel_r1.io.load_yaml`; the flags below override it and take both
``--field_name`` and ``--field-name``.
"""

from __future__ import annotations

HELP = "the OctoThinker comparison: same short RL + eval for each mid-training branch"


def _branches(items: list[str] | None) -> dict[str, str] | None:
    if not items:
        return None
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"rl-readiness: --branches {item!r}: expected NAME=CHECKPOINT")
        out[name] = path
    return out


def parse(argv: list[str]) -> tuple:
    import argparse

    p = argparse.ArgumentParser(prog="parallel-r1 rl-readiness", description=HELP)
    p.add_argument(
        "--config",
        metavar="YAML",
        default=None,
        help="readiness recipe (recipes/readiness_*.yaml): output_dir, rl, eval, branches / midtrain_dir",
    )
    p.add_argument(
        "--branches",
        nargs="+",
        default=None,
        metavar="NAME=CHECKPOINT",
        help="branch checkpoints, e.g. long=runs/mt/long/final short=runs/mt/short/final",
    )
    p.add_argument(
        "--midtrain_dir",
        "--midtrain-dir",
        default=None,
        help="a midtrain run folder: every stage's final checkpoint is a branch",
    )
    p.add_argument("--output_dir", "--output-dir", default=None, help="override the recipe's output_dir")
    p.add_argument("--rl_steps", "--rl-steps", type=int, default=None, help="override the RL recipe's rl_steps")
    p.add_argument(
        "--data_dir", "--data-dir", default=None, help="folder of the shipped data sets, for both the RL and the eval"
    )
    p.add_argument(
        "--device",
        default=None,
        help="device of the evaluations: auto (default: the first GPU when there is one), cpu, cuda, cuda:N (RL places its model itself, through accelerate)",
    )
    p.add_argument(
        "--dtype",
        default=None,
        help="compute dtype of the evaluations: auto (bfloat16 on a GPU, float32 on the CPU), float32, bfloat16, float16",
    )
    p.add_argument("--progress", action="store_true", help="show eval progress bars")
    args = p.parse_args(argv)

    from ..train.readiness import load_config

    both = {k: v for k, v in (("rl_steps", args.rl_steps), ("data_dir", args.data_dir)) if v is not None}
    ev = {
        k: v for k, v in (("data_dir", args.data_dir), ("device", args.device), ("dtype", args.dtype)) if v is not None
    }
    cfg = load_config(
        args.config,
        output_dir=args.output_dir,
        branches=_branches(args.branches),
        midtrain_dir=args.midtrain_dir,
        rl_overrides=both or None,
        eval_overrides=ev or None,
    )
    return cfg, args.progress


def run(cfg, progress: bool) -> int:
    import os
    from pathlib import Path

    from ..train.readiness import run_readiness, write_table

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    rows = run_readiness(cfg, progress=progress)
    print(write_table(cfg, rows))
    print(f"\nwrote {Path(cfg.output_dir) / 'readiness.json'} and {Path(cfg.output_dir) / 'readiness.md'}")
    return 0
