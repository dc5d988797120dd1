"""The time-limited worker pool (docs/rewards.md, "Time limit").

Bad input must give a bool, never a hang or a crashed batch. A hang would stall the suite, so
the adversarial batches run in a thread joined with a generous bound: that bound detects a
hang, it is not a speed claim (bench/grading.py measures speed).
"""

from __future__ import annotations

import os
import signal
import threading

import pytest

from parallel_r1 import grading, grading_pool
from parallel_r1.grading_pool import grade, grade_answers, grade_many, is_correct

HANG = 240.0  # seconds after which a call counts as hung (the real figures are seconds)


def no_hang(fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, failing the test if it has not returned after :data:`HANG`."""
    box = {}

    def target():
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as e:  # re-raised in the test thread
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(HANG)
    assert not t.is_alive(), f"{fn.__name__} hung"
    if "error" in box:
        raise box["error"]
    return box["value"]


# ----------------------------------------------------------------------------- bad input and the pool

NESTED = "1"
for _ in range(500):
    NESTED = "\\frac{" + NESTED + "}{2}"
ADVERSARIAL = {
    "1MB digits": "1" * 1_000_000,
    "1MB latex": "\\frac{1}{2}+" * 90_000,
    "500 nested fracs": NESTED,
    "power tower": "10^{10^{10^{10}}}",
    "garbage": "}{\\\\}}{{$$^_&%\\frac{\\left(",
    "unbalanced": "\\frac{{{{{{{",
    "empty": "",
    "nul and unicode": "\x00\ud7ff∑∫√ é",
}


@pytest.mark.parametrize("grader", list(grading.GRADERS))
def test_adversarial_batch_gives_a_bool_per_item(grader):
    # each adversarial string as prediction, as gold, and inside a completion
    preds = list(ADVERSARIAL.values()) + ["5"] * len(ADVERSARIAL) + ["5", "5"]
    golds = ["5"] * len(ADVERSARIAL) + list(ADVERSARIAL.values()) + ["5", "6"]
    out = no_hang(grade_answers, preds, golds, grader, workers=2, timeout=1.0)
    assert len(out) == len(preds) and all(type(v) is bool for v in out)
    assert out[-2:] == [True, False]  # the healthy answers at the end still get their verdict
    assert not any(out[:-2])

    completions = [f"Final Answer: {p}" for p in ADVERSARIAL.values()] + ["Final Answer: 5"]
    out = no_hang(grade_many, completions, ["5"] * len(completions), grader, workers=2, timeout=1.0)
    assert out == [False] * len(ADVERSARIAL) + [True]


def test_power_tower_against_itself_never_hangs():
    tower = "10^{10^{10^{10}}}"
    for pred, gold in [(tower, tower + "+1"), (tower + "+1", tower), ("10^{10^{10}}", tower)]:
        assert type(no_hang(grade, pred, gold, "math_verify", timeout=1.0)) is bool


def test_grade_many_equals_a_loop_of_grade():
    golds = ["25", "27", "0.5", "1/2", "(1, 2]", "\\left( 3, \\frac{\\pi}{2} \\right)", "#### 1,234", "7", "", "3"]
    completions = [
        "Final Answer: 025",
        "Final Answer: 27.0",
        "Final Answer: \\boxed{\\frac12}",
        "Final Answer: 2/4",
        "Final Answer: [1, 2]",
        "Final Answer: (3, \\frac{\\pi}{2})",
        "Final Answer: 1,234",
        "no answer here",
        "Final Answer: 1",
        "\\boxed{3}",
    ]
    for grader in grading.GRADERS:
        for extractor in grading.EXTRACTORS:
            batch = grade_many(completions, golds, grader, extractor, workers=2, timeout=30.0)
            loop = [is_correct(c, g, grader, extractor) for c, g in zip(completions, golds)]
            assert batch == loop, (grader, extractor)
    assert grade_many(completions, golds) == [True, True, True, True, False, True, True, False, False, False]
    assert grade_many(completions, golds, extractor="auto")[-1] is True
    assert grade_many([], []) == []
    with pytest.raises(ValueError, match="2 completions for 1"):
        grade_many(["a", "b"], ["1"])


def test_minerva_inline_and_in_workers_agree():
    # long inputs go to the worker pool, short ones run in-process: same verdicts
    pad = " " * grading_pool.INLINE_LIMIT
    pairs = [("\\frac12", "\\frac{1}{2}"), ("5 dollars", "5"), ("0.5", "\\frac{1}{2}"), ("x = 3", "3")]
    inline = [grade(p, g, "minerva_exact") for p, g in pairs]
    pooled = [grade(p + pad, g, "minerva_exact", timeout=30.0) for p, g in pairs]
    assert inline == pooled == [True, True, False, True]


def test_pool_replaces_a_killed_worker():
    pool = grading_pool.get_pool(1)
    assert pool.map("math_verify", [("1/2", "0.5")], timeout=30.0) == [True]
    victim = pool._workers[0].process
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert pool.map("math_verify", [("1/2", "0.5"), ("3", "4")], timeout=30.0) == [True, False]
    assert pool._workers[0].process.pid != victim.pid
