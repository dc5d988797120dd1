"""``parallel-r1 report``: one self-contained HTML page about a run (docs/eval.md)."""

from __future__ import annotations

from dataclasses import dataclass, field

HELP = "one self-contained HTML report of a run"
ON_INTERRUPT = "interrupted; the report is written only at the end, so nothing changed: run it again"


@dataclass
class ReportConfig:
    run_dir: str = field(
        metadata={"help": "Run folder written by `parallel-r1 rl` (or one holding eval/<tag>/results.json)."}
    )
    output: str | None = field(default=None, metadata={"help": "HTML file to write (default: RUN_DIR/report.html)."})
    traces: int = field(
        default=6, metadata={"help": "Completions shown from the rollouts and from the last evaluation (each)."}
    )

    def __post_init__(self):
        from ..validate import non_negative

        non_negative(self, "traces")


CONFIG = (ReportConfig,)


def run(cfg: ReportConfig) -> int:
    from ..report import write_report

    out = write_report(cfg.run_dir, cfg.output, cfg.traces)
    print(f"wrote {out} ({out.stat().st_size // 1024} KiB)")
    return 0
