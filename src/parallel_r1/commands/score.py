"""``parallel-r1 score IN.jsonl [-o OUT.jsonl] [--reward NAME ...] [--step N] [--grader NAME]``.

Grade and reward saved completions: each input row ``{"completion": ..., "answer": ...}``
(extra fields kept; ``answer`` may be a GSM8K worked solution ending ``#### N``) becomes one
output row, in order, with ``correct``, ``pred``, ``uses_parallel``, ``format_ok``,
``num_blocks``, ``positions`` and one field per reward named with ``--reward`` (default: every
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

CHUNK = 256  # rows graded together; output is written chunk by chunk


def add_arguments(p) -> None:
    p.add_argument("input", metavar="IN.jsonl", help='rows {"completion": ..., "answer": ...}; other fields are kept')
    p.add_argument("-o", "--out", metavar="OUT.jsonl", help="output file (default: stdout)")
    p.add_argument(
        "--reward",
        nargs="+",
        metavar="NAME",
        help="rewards or schedules to evaluate (default: every reward); see docs/rewards.md",
    )
    p.add_argument("--step", type=int, default=1, help="training step the rewards are evaluated at (starts at 1)")
    p.add_argument("--grader", help="math_verify | minerva_exact (default: math_verify for `correct`, the paper's per reward)")
    p.add_argument("--extractor", default="auto", help="answer extraction for `correct`: final_answer | boxed | auto")
    p.add_argument("--workers", type=int, help="grading processes (default: all CPUs)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per answer before it is graded wrong")


def _load(path: str) -> list[dict]:
    from ..io import read_jsonl

    rows = list(read_jsonl(path))
    for k, row in enumerate(rows, 1):
        for field in ("completion", "answer"):
            if field not in row:
                raise ValueError(f"{path}: row {k}: missing field {field!r}")
        if not isinstance(row["completion"], str):
            raise ValueError(f"{path}: row {k}: 'completion' must be a string, got {type(row['completion']).__name__}")
        if row["answer"] is None or isinstance(row["answer"], (dict, list)):
            raise ValueError(f"{path}: row {k}: 'answer' must be a string or a number")
    return rows


def score_rows(rows: list[dict], rewards: list[str], step: int = 1, grader: str | None = None,
               extractor: str = "auto", workers: int | None = None, timeout: float = 5.0) -> list[dict]:  # fmt: skip
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


def run(args) -> int:
    from .. import grading
    from ..rewards import REWARDS, get_schedule

    if args.grader is not None and args.grader not in grading.GRADERS:
        raise KeyError(f"unknown grader {args.grader!r}; known: {', '.join(grading.GRADERS)}")
    if args.extractor not in grading.EXTRACTORS:
        raise KeyError(f"unknown extractor {args.extractor!r}; known: {', '.join(grading.EXTRACTORS)}")
    if args.step < 1:
        raise ValueError(f"--step must be >= 1 (the paper's steps start at 1), got {args.step}")
    rewards = args.reward or list(REWARDS)
    for name in rewards:
        get_schedule(name)  # unknown names fail before any work
    rows = _load(args.input)

    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
    try:
        for start in range(0, len(rows), CHUNK):
            chunk = score_rows(rows[start : start + CHUNK], rewards, args.step, args.grader, args.extractor,
                               args.workers, args.timeout)  # fmt: skip
            out.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in chunk))
            out.flush()
    finally:
        if args.out:
            out.close()
    if args.out:
        print(f"scored {len(rows)} rows -> {args.out}", file=sys.stderr)
    return 0
