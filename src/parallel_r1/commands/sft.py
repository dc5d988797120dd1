"""``parallel-r1 sft --config recipes/sft_*.yaml [--field value ...]``: cold-start SFT, Seen or
Unseen (docs/coldstart.md). Library entry point: :func:`parallel_r1.train.sft.train`."""

from __future__ import annotations

NAME = "sft"
HELP = "cold-start SFT, Seen (causal) or Unseen (path-isolating attention)"


def config_types() -> tuple[type, ...]:
    from ..train.sft import ParallelSFTConfig  # imports TRL and torch: only once the command really runs

    return (ParallelSFTConfig,)


def parse(argv: list[str]) -> tuple:
    from . import _help

    return _help.parse(NAME, HELP, config_types, argv)  # --help: the stored page (see commands/_help.py for why)


def run(cfg) -> int:
    import json

    from ..metrics import LABELS
    from ..train.sft import train

    summary = train(cfg)
    print(json.dumps(summary, indent=2, default=str))
    fc = summary.get("format_check")
    if fc:
        print(
            f"format check: {LABELS['parallel_ratio']} {fc['parallel_ratio']:.1%} of {fc['n']} held-out completions "
            f"({fc['valid_parallel_ratio']:.1%} also well formed throughout)"
        )
    return 0
