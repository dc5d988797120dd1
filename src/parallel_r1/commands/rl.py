"""``parallel-r1 rl --config recipes/rl_*.yaml [--field value ...]``: GRPO with parallel-thinking
rewards and schedules on TRL (docs/rl.md). Library entry point: :func:`parallel_r1.train.rl.train`."""

from __future__ import annotations

NAME = "rl"
HELP = "GRPO with parallel-thinking rewards and schedules (TRL)"


def config_types() -> tuple[type, ...]:
    from ..train.rl import RLConfig  # imports TRL and torch: only once the command really runs

    return (RLConfig,)


def parse(argv: list[str]) -> tuple:
    from . import _help

    return _help.parse(NAME, HELP, config_types, argv)  # --help: the stored page (see commands/_help.py for why)


def run(cfg) -> int:
    import json

    from ..train.rl import train

    summary = train(cfg)
    print(json.dumps(summary, indent=2, default=str))
    return 0
