"""intervals: per-problem scores, the bootstrap of one accuracy and of a paired difference."""

import json
import math
import random

import pytest

from parallel_r1 import intervals


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_per_problem_averages_samples_of_one_benchmark(tmp_path):
    rows = [
        {"benchmark": "a", "problem_id": "p1", "sample_index": 0, "correct": True},
        {"benchmark": "a", "problem_id": "p1", "sample_index": 1, "correct": False},
        {"benchmark": "a", "problem_id": "p2", "sample_index": 0, "correct": True},
        {"benchmark": "b", "problem_id": "p1", "sample_index": 0, "correct": False},
    ]
    assert intervals.per_problem(_write(tmp_path / "c.jsonl", rows), "a") == {"p1": 0.5, "p2": 1.0}


def _normal_half_width(values):
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((d - mean) ** 2 for d in values) / (len(values) - 1))
    return mean, 1.96 * sd / math.sqrt(len(values))


def test_paired_bootstrap_degenerate_and_against_the_normal_approximation():
    same = intervals.paired_bootstrap([0, 1, 1, 0], [0, 1, 1, 0], resamples=500)
    assert (same["diff"], same["lo"], same["hi"]) == (0, 0, 0)
    better = intervals.paired_bootstrap([0] * 10, [1] * 10, resamples=500)
    assert (better["lo"], better["hi"]) == (1, 1)

    rng = random.Random(1)
    before = [float(rng.random() < 0.3) for _ in range(400)]
    after = [float(b or rng.random() < 0.2) for b in before]  # paired: after >= before
    r = intervals.paired_bootstrap(before, after, resamples=4000, seed=3)
    mean, half = _normal_half_width([a - b for a, b in zip(after, before)])
    assert r["diff"] == pytest.approx(mean)
    assert r["lo"] == pytest.approx(mean - half, abs=0.25 * half)
    assert r["hi"] == pytest.approx(mean + half, abs=0.25 * half)
    # pairing: the same gain measured on unpaired accuracies would have a wider interval
    lone = [intervals.bootstrap_mean(v, resamples=4000, seed=3) for v in (before, after)]
    assert r["hi"] - r["lo"] < (lone[0]["hi"] - lone[0]["lo"]) + (lone[1]["hi"] - lone[1]["lo"])
    with pytest.raises(ValueError):
        intervals.paired_bootstrap([1.0], [])


def test_bootstrap_mean_matches_the_normal_approximation_and_is_seeded():
    rng = random.Random(2)
    values = [float(rng.random() < 0.4) for _ in range(300)]
    r = intervals.bootstrap_mean(values, resamples=4000, seed=5)
    mean, half = _normal_half_width(values)
    assert r["mean"] == pytest.approx(mean) and r["lo"] < mean < r["hi"]
    assert r["hi"] - r["lo"] == pytest.approx(2 * half, rel=0.25)
    assert r == intervals.bootstrap_mean(values, resamples=4000, seed=5)
    with pytest.raises(ValueError):
        intervals.bootstrap_mean([])


def test_compare_pairs_problems_by_id_and_refuses_disjoint_files(tmp_path):
    def rows(bench, outcomes):
        return [{"benchmark": bench, "problem_id": pid, "correct": c} for pid, c in outcomes]

    before = _write(tmp_path / "b.jsonl", rows("x", [("1", False), ("2", False), ("3", True)]))
    after = _write(tmp_path / "a.jsonl", rows("x", [("3", True), ("2", True), ("9", True)]))
    r = intervals.compare(before, after, "x", resamples=200)
    assert r["n_problems"] == 2 and r["diff"] == pytest.approx(0.5)  # problems 2 and 3 only
    with pytest.raises(ValueError, match="share no y problem"):
        intervals.compare(before, after, "y")
