"""Grading throughput on typical answers and the worst case on adversarial ones, in one run.

    .venv/bin/python bench/grading.py [--n 400] [--workers 2] [--timeout 5] [--data-dir ../shared/data]

Typical answers: the gold answers of MATH500 and GSM8K test (``025``, ``\\frac{\\pi}{2}``,
tuples, worked solutions ending ``#### N``), each in a completion ending ``Final Answer: X``,
half right (the gold itself) and half wrong (a different benchmark answer). Per grader it
prints answers per second for

* ``inline``: the raw grader in this process, no time limit (the floor the others pay on top of);
* ``grade``: one :func:`parallel_r1.grading_pool.grade` call per answer (one worker, time-limited);
* ``grade_many``: one batch over ``--workers`` processes;

and the ratios ``grade / inline`` and ``grade_many / grade``. The adversarial set (1 MB strings,
500 nested ``\\frac``, ``10^{10^{10^{10}}}``, tag soups, garbage) is graded one answer at a time
with ``grade``; the worst-case time must stay near ``--timeout`` (plus a worker restart).
Worker start-up is measured apart and never counted in a rate.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from parallel_r1 import grading, grading_pool

REPO = Path(__file__).resolve().parents[1]


def typical(data_dir: Path, n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    golds = [json.loads(line)["answer"] for line in open(data_dir / "math500" / "test.jsonl")]
    golds += [json.loads(line)["answer"] for line in open(data_dir / "gsm8k" / "test.jsonl")][:200]
    rng = random.Random(seed)
    rng.shuffle(golds)
    golds = golds[:n]
    completions = []
    for i, gold in enumerate(golds):
        answer = grading.gold_answer(gold)
        if i % 2:  # wrong: another problem's answer
            other = grading.gold_answer(golds[(i + 7) % len(golds)])
            answer = other if other != answer else answer + "1"
        completions.append(f"Let me work through it step by step.\nSo we get {answer}.\nFinal Answer: {answer}")
    return completions, golds


def adversarial() -> dict[str, tuple[str, str]]:
    nested = "1"
    for _ in range(500):
        nested = "\\frac{" + nested + "}{2}"
    tower = "10^{10^{10^{10}}}"
    return {
        "1 MB of digits": ("9" * 1_000_000, "9"),
        "1 MB of LaTeX": ("\\frac{1}{2}+" * 90_000, "1"),
        "500 nested \\frac": (nested, "1"),
        "nested \\frac as gold": ("1", nested),
        "power tower": (tower, tower + "+1"),
        "power tower vs 10^{10^{10}}": ("10^{10^{10}}", tower),
        "factorial tower": ("(10^{10})!", "1"),
        "tag soup": ("<Parallel><Path>" * 50_000, "1"),
        "unbalanced braces": ("\\frac{" * 10_000, "1"),
        "garbage": ("}{\\\\}}{{$$^_&%\\left(" * 1000, "1"),
        "empty gold": ("5", ""),
    }


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:8.1f} answers/s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=400, help="typical answers per measurement")
    ap.add_argument("--workers", type=int, default=grading_pool.default_workers())
    ap.add_argument("--timeout", type=float, default=grading_pool.DEFAULT_TIMEOUT)
    ap.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    args = ap.parse_args()

    completions, golds = typical(args.data_dir, args.n)
    preds = [grading.extract_final_answer(c) for c in completions]
    gold_answers = [grading.gold_answer(g) for g in golds]

    t = time.perf_counter()
    grading_pool.get_pool(args.workers).map("math_verify", [("1", "1")] * args.workers, timeout=60)
    print(f"{args.workers} worker(s) started in {time.perf_counter() - t:.2f}s (not counted below)")
    # the inline baseline gets the same warm-up (imports, math-verify's caches) as the workers
    import math_verify.grader
    import math_verify.parser

    math_verify.grader.TIMEOUT_WARNING_SHOWN = math_verify.parser.TIMEOUT_WARNING_SHOWN = True
    for grader, fn in grading.GRADERS.items():
        for p, g in zip(preds[:20], gold_answers[:20]):
            fn(p, g)
            grading_pool.grade(p, g, grader, 60)
    print(f"{len(completions)} typical answers (MATH500 + GSM8K golds, half right), timeout {args.timeout}s\n")

    for grader in grading.GRADERS:
        fn = grading.GRADERS[grader]
        t = time.perf_counter()
        inline = [fn(p, g) for p, g in zip(preds, gold_answers)]
        t_inline = time.perf_counter() - t

        t = time.perf_counter()
        looped = [grading_pool.grade(p, g, grader, args.timeout) for p, g in zip(preds, gold_answers)]
        t_grade = time.perf_counter() - t

        t = time.perf_counter()
        batch = grading_pool.grade_many(completions, golds, grader, workers=args.workers, timeout=args.timeout)
        t_many = time.perf_counter() - t

        assert inline == looped == batch, f"{grader}: the three paths disagree"
        print(f"{grader}: {sum(batch)}/{len(batch)} graded correct")
        print(f"  inline (no time limit)       {rate(len(preds), t_inline)}")
        print(
            f"  grade() one by one           {rate(len(preds), t_grade)}   grade / inline time = {t_grade / t_inline:.2f}"
        )
        print(f"  grade_many ({args.workers} workers)       {rate(len(preds), t_many)}   "
              f"grade_many / grade time = {t_many / t_grade:.2f}")  # fmt: skip

    print(f"\nadversarial set, grade() one at a time, timeout {args.timeout}s")
    worst = (0.0, "")
    for grader in grading.GRADERS:
        for name, (pred, gold) in adversarial().items():
            t = time.perf_counter()
            ok = grading_pool.grade(pred, gold, grader, args.timeout)
            dt = time.perf_counter() - t
            worst = max(worst, (dt, f"{grader} / {name}"))
            print(f"  {grader:13s} {name:28s} {dt:6.2f}s  -> {ok}")
    print(f"worst case: {worst[0]:.2f}s ({worst[1]}); timeout {args.timeout}s")

    items = list(adversarial().values())
    t = time.perf_counter()
    out = grading_pool.grade_many([f"Final Answer: {p}" for p, _ in items], [g for _, g in items],
                             workers=args.workers, timeout=args.timeout)  # fmt: skip
    print(f"adversarial batch through grade_many (math_verify, {args.workers} workers): "
          f"{time.perf_counter() - t:.2f}s for {len(out)} answers, {sum(out)} graded correct")  # fmt: skip


if __name__ == "__main__":
    main()
