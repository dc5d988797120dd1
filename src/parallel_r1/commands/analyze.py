"""``parallel-r1 analyze``: parallel-thinking behaviour over a training run (docs/eval.md)."""

from __future__ import annotations

from dataclasses import dataclass, field

HELP = "parallel-thinking behaviour over a training run"
ON_INTERRUPT = "interrupted; analysis.json is written only at the end, so nothing changed: run it again"


@dataclass
class AnalyzeConfig:
    run_dir: str = field(
        metadata={"help": "Run folder written by `parallel-r1 rl` (or one holding eval/<tag>/results.json)."}
    )
    clip_threshold: float = field(
        default=0.5,
        metadata={
            "help": "Flag the length pathology when more than this share of the last steps' completions hit the budget."
        },
    )
    last_steps: int | None = field(
        default=None,
        metadata={"help": "How many final steps the length check looks at (default: the last quarter, 1-10)."},
    )

    def __post_init__(self):
        from ..validate import fraction, positive

        fraction(self, "clip_threshold")
        positive(self, "last_steps")


CONFIG = (AnalyzeConfig,)


def run(cfg: AnalyzeConfig) -> int:
    from pathlib import Path

    from ..analysis import analyze_run, format_summary
    from ..io import atomic_write_json

    a = analyze_run(cfg.run_dir, cfg.clip_threshold, cfg.last_steps)
    out = Path(cfg.run_dir) / "analysis.json"
    atomic_write_json(out, a)
    print(format_summary(a))
    print(f"wrote {out}")
    return 0
