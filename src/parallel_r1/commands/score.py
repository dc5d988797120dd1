"""``parallel-r1 score --input IN.jsonl [--output OUT.jsonl] [--rewards NAME ...] [--step N] [--grader NAME]``.

Grade and reward saved completions: each input row ``{"completion": ..., "answer": ...}``
(extra fields kept; ``answer`` may be a GSM8K worked solution ending ``#### N``) becomes one
output row, in order, with ``correct``, ``pred``, ``uses_parallel``, ``format_ok``,
``num_blocks``, ``positions`` and one field per reward named in ``--rewards`` (default: every
reward in :data:`parallel_r1.rewards.REWARDS`; schedule names such as ``alternating`` work too),
evaluated at training step ``--step``.

``correct`` uses ``--grader`` (default ``math_verify``) on the answer found by ``--extractor``
(default ``auto``: the ``Final Answer:`` line, else the last ``\\boxed{}``). Each reward uses its
family's extraction and, unless ``--grader`` is given, the paper's grader
(see :mod:`parallel_r1.rewards`).
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from dataclasses import dataclass, field

HELP = "grade and reward saved completions (jsonl in, jsonl out)"

# score writes its output in one pass and keeps no state: a stopped run starts again from the top.
ON_INTERRUPT = "interrupted; score has nothing to resume: run it again (the output file is rewritten from the start)"

CHUNK = 256  # rows graded together; output is written chunk by chunk


@dataclass
class ScoreConfig:
    input: str = field(metadata={"help": 'jsonl of rows {"completion": ..., "answer": ...}; other fields are kept.'})
    output: str | None = field(default=None, metadata={"help": "Output jsonl (default: stdout)."})
    rewards: list[str] | None = field(
        default=None,
        metadata={"help": "Rewards or schedules to evaluate (default: every reward); see docs/rewards.md."},
    )
    step: int = field(default=1, metadata={"help": "Training step the rewards are evaluated at (starts at 1)."})
    grader: str | None = field(
        default=None,
        metadata={"help": "math_verify | minerva_exact (default: math_verify for `correct`, the paper's per reward)."},
    )
    extractor: str = field(
        default="auto", metadata={"help": "Answer extraction for `correct`: final_answer | boxed | auto."}
    )
    workers: int | None = field(default=None, metadata={"help": "Grading processes (default: all CPUs)."})
    timeout: float = field(default=5.0, metadata={"help": "Seconds per answer before it is graded wrong."})

    def __post_init__(self):
        from ..validate import positive

        positive(self, "workers", "timeout")
        if self.step < 1:
            raise ValueError(f"--step must be >= 1 (the paper's steps start at 1), got {self.step}")


CONFIG = (ScoreConfig,)


def _load(path: str) -> list[dict]:
    from ..io import read_jsonl

    rows = list(read_jsonl(path))
    for k, row in enumerate(rows, 1):
        for key in ("completion", "answer"):
            if key not in row:
                raise ValueError(f"{path}: row {k}: missing field {key!r}")
        if not isinstance(row["completion"], str):
            raise ValueError(f"{path}: row {k}: 'completion' must be a string, got {type(row['completion']).__name__}")
        if row["answer"] is None or isinstance(row["answer"], (dict, list)):
            raise ValueError(f"{path}: row {k}: 'answer' must be a string or a number")
    return rows


def score_rows(
    rows: list[dict],
    rewards: list[str],
    step: int = 1,
    grader: str | None = None,
    extractor: str = "auto",
    workers: int | None = None,
    timeout: float = 5.0,
) -> list[dict]:
    """The output rows for ``rows`` (see the module docstring)."""
    from .. import grading, grading_pool
    from ..format import analyze
    from ..rewards import get_schedule, measure

    schedules = {name: get_schedule(name) for name in rewards}
    completions = [r["completion"] for r in rows]
    golds = [grading.gold_answer(str(r["answer"])) for r in rows]
    extract = grading.EXTRACTORS[extractor]
    preds = [extract(c) for c in completions]
    correct = grading_pool.grade_answers(preds, golds, grader or "math_verify", workers, timeout)

    # Rewards of one family share extraction and grader: grade each group once.
    groups: dict[tuple, list[str]] = defaultdict(list)
    for name, sched in schedules.items():
        active = sched.active(step)
        groups[(active.extract, grader or active.grader)].append(name)
    values: dict[str, list[float]] = {}
    for (extract_fn, group_grader), names in groups.items():
        group_preds = [extract_fn(c) for c in completions]
        ok = grading_pool.grade_answers(group_preds, golds, group_grader, workers, timeout)
        facts = [measure(c, p, o) for c, p, o in zip(completions, group_preds, ok)]
        for name in names:
            active = schedules[name].active(step)
            values[name] = [active.score(x, step) for x in facts]

    out = []
    for i, row in enumerate(rows):
        report = analyze(completions[i])
        new = dict(row)
        new.update(
            correct=correct[i],
            pred=preds[i],
            uses_parallel=report.uses_parallel,
            format_ok=report.format_ok,
            num_blocks=report.num_blocks,
            positions=report.positions,
        )
        new.update({name: values[name][i] for name in rewards})
        out.append(new)
    return out


def run(cfg: ScoreConfig) -> int:
    from .. import grading
    from ..rewards import REWARDS, get_schedule

    if cfg.grader is not None and cfg.grader not in grading.GRADERS:
        raise KeyError(f"unknown grader {cfg.grader!r}; known: {', '.join(grading.GRADERS)}")
    if cfg.extractor not in grading.EXTRACTORS:
        raise KeyError(f"unknown extractor {cfg.extractor!r}; known: {', '.join(grading.EXTRACTORS)}")
    rewards = cfg.rewards or list(REWARDS)
    for name in rewards:
        get_schedule(name)  # unknown names fail before any work
    rows = _load(cfg.input)

    out = open(cfg.output, "w", encoding="utf-8") if cfg.output else sys.stdout
    try:
        for start in range(0, len(rows), CHUNK):
            chunk = rows[start : start + CHUNK]
            scored = score_rows(chunk, rewards, cfg.step, cfg.grader, cfg.extractor, cfg.workers, cfg.timeout)
            out.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in scored))
            out.flush()
    finally:
        if cfg.output:
            out.close()
    if cfg.output:
        print(f"scored {len(rows)} rows -> {cfg.output}", file=sys.stderr)
    return 0
