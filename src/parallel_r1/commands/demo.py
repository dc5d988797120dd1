"""``parallel-r1 demo [--quick] [--stages ...] [--field value ...]``: the whole curriculum on
SmolLM2-135M on a CPU (README "The demo"). Library entry point: :func:`parallel_r1.demo.run_demo`."""

from __future__ import annotations

from ..demo import DemoConfig

HELP = "the whole curriculum on SmolLM2-135M on a CPU in minutes"
CONFIG = (DemoConfig,)


def run(cfg: DemoConfig) -> int:
    from ..demo import run_demo

    try:
        run_demo(cfg)
    except OSError as e:  # a full disk: one clean error line (FileNotFoundError already is one)
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(str(e)) from None
    return 0
