"""Metrics against brute force and hand-made cases."""

from __future__ import annotations

import itertools
from collections import defaultdict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parallel_r1 import metrics as M


def brute_pass_at_k(row: list[bool], k: int) -> float:
    """Share of all k-subsets of the samples that hold at least one correct sample."""
    subsets = list(itertools.combinations(range(len(row)), k))
    return sum(any(row[i] for i in s) for s in subsets) / len(subsets)


@given(st.lists(st.booleans(), min_size=1, max_size=9), st.data())
@settings(max_examples=150, deadline=None)
def test_pass_at_k_equals_enumeration_over_all_subsets(row, data):
    k = data.draw(st.integers(1, len(row)))
    assert M.pass_at_k(len(row), sum(row), k) == pytest.approx(brute_pass_at_k(row, k), abs=1e-12)


def test_pass_at_k_mean_over_problems_and_edge_cases():
    rows = [[True, False, False, False], [False] * 4, [True] * 4, [False, True, True, False]]
    want = np.mean([brute_pass_at_k(r, 2) for r in rows])
    assert M.pass_at_k_mean(rows, 2) == pytest.approx(want)
    assert M.pass_at_k(16, 0, 16) == 0.0 and M.pass_at_k(16, 1, 16) == 1.0
    assert M.pass_at_k(1000, 3, 1) == pytest.approx(0.003)  # pass@1 is plain accuracy
    assert M.pass_at_k(200, 100, 50) == pytest.approx(brute_formula(200, 100, 50), rel=1e-9)


def brute_formula(n, c, k):
    from math import comb

    return 1 - comb(n - c, k) / comb(n, k)


def test_k_larger_than_samples_is_a_clear_error():
    with pytest.raises(ValueError, match="k=5 is larger than the 4 samples"):
        M.pass_at_k_mean([[True] * 4], 5)
    with pytest.raises(ValueError, match="larger than"):
        M.best_at_k([[True, False]], 3)
    with pytest.raises(ValueError, match="larger than"):
        M.maj_at_k([["1"]], [[True]], 2)
    with pytest.raises(ValueError, match="k must be >= 1"):
        M.pass_at_k(4, 1, 0)


def test_mean_at_k_averages_per_problem_first():
    # 2 problems with different sample counts: per-problem means 0.75 and 0.0 -> 0.375,
    # not the pooled 3/6 = 0.5.
    assert M.mean_at_k([[True, True, True, False], [False, False]]) == 0.375
    assert M.mean_at_k([[True, False, False, False]], k=1) == 1.0
    assert M.mean_at_k([[False, True, True, True]], k=2) == 0.5


def verl_bootstrap_best(values, n, seed=42, n_bootstrap=1000):
    """verl's metric_utils.bootstrap_metric with reduce_fn=np.max, written out as it does it."""
    np.random.seed(seed)
    out = []
    for _ in range(n_bootstrap):
        idx = np.random.choice(len(values), size=n, replace=True)
        out.append(np.max([values[i] for i in idx]))
    return np.mean(out)


def test_best_at_k_matches_verl_and_is_near_its_expectation():
    row = [True, False, False, False, False, False, False, False]
    got = M.bootstrap_best_at_k(row, 4)
    assert got == verl_bootstrap_best([float(x) for x in row], 4)
    # Resampling with replacement: E[max] = 1 - (1 - c/n)^k, below the unbiased pass@k.
    assert got == pytest.approx(1 - (7 / 8) ** 4, abs=0.05)
    assert got < M.pass_at_k(8, 1, 4)
    assert M.best_at_k([[True] * 3, [False] * 3], 3) == 0.5


def test_majority_vote_hand_made():
    assert M.majority_correct(["5", "7", "5"], [True, False, True])
    assert not M.majority_correct(["5", "7", "7"], [True, False, False])
    assert M.majority_correct(["5", "7"], [True, False])  # tie -> first seen
    assert not M.majority_correct([None, None, "3"], [False, False, False])
    assert M.majority_correct([None, None, " 3"], [False, False, True])  # missing answers do not vote
    assert not M.majority_correct([None, ""], [False, False])
    preds = [["1", "2", "2", "1"], ["9", "9", "4", "4"]]
    corr = [[True, False, False, True], [False, False, True, True]]
    assert M.maj_at_k(preds, corr, 3) == 0.0  # "2" wins on the first 3; "9" wins
    assert M.maj_at_k(preds, corr, 1) == 0.5


def test_behaviour_metrics():
    assert M.parallel_ratio([True, False, False, True]) == 0.5
    assert M.mean_blocks([0, 1, 2, 3]) == 1.5
    assert M.mean_length([10, 20]) == 15
    assert M.format_error_rate([True, True, False, True]) == 0.25
    assert M.clipped_ratio([True, False]) == 0.5
    # Over all blocks, not per response: (0.1 + 0.5 + 0.9) / 3, with the empty row ignored.
    assert M.mean_parallel_position([[0.1], [], [0.5, 0.9]]) == pytest.approx(0.5)
    assert M.mean_parallel_position([[], []]) is None
    assert M.parallel_ratio([]) is None


def test_verl_maj_reference_agrees_on_full_sample():
    """maj@k on all n samples equals verl's calc_maj_val on the same samples (no resampling)."""
    preds = ["a", "b", "b", "c", "a", "b"]
    vals = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    vote2vals = defaultdict(list)
    for p, v in zip(preds, vals):
        vote2vals[p].append(v)
    maj = max({k: len(v) for k, v in vote2vals.items()}, key=lambda k: len(vote2vals[k]))
    assert M.majority_correct(preds, [bool(v) for v in vals]) == bool(vote2vals[maj][0])


# ----------------------------------------------------------------------------- one behaviour definition

TRACES = [
    "<Parallel><Path>a</Path><Path>b</Path></Parallel>\n<Summary>s</Summary>Final Answer: 1",  # valid block
    "<Parallel><Path>only one</Path></Parallel>\n<Summary>s</Summary>Final Answer: 1",  # closed, 1 path: not valid
    "<Parallel><Path>a</Path><Path>b",  # opened, never closed
    "3 + 4 = 7\nFinal Answer: 7",  # sequential
    "x <Parallel><Path>a</Path><Path>b</Path></Parallel>\n<Summary>s</Summary> <Parallel><Path>c",  # one valid, one open
]


def test_behaviour_definition_on_hand_made_traces():
    assert [M.has_parallel_block(t) for t in TRACES] == [True, False, False, False, True]
    assert [M.opens_parallel(t) for t in TRACES] == [True, True, True, False, True]
    assert M.behaviour(TRACES) == {"parallel_ratio": 0.4, "opens_parallel": 0.8}
    assert M.behaviour([]) == {"parallel_ratio": None, "opens_parallel": None}


def test_rl_metrics_and_analysis_agree_on_the_same_rollouts(tmp_path):
    """The trainer's logged metrics and ``analyze`` of the rollouts it wrote: one definition, one number."""
    from types import SimpleNamespace

    from parallel_r1 import analysis
    from parallel_r1.io import JsonlAppender, read_jsonl
    from parallel_r1.train.rl_trainer import ParallelGRPOTrainer

    rows = [
        {"step": 3, "prompt_id": f"p{i % 2}", "prompt": "q", "completion": t, "answer": "1", "reward": 1.0, "correct": i % 2 == 0,
         "reward_mode": "accuracy", "length": 10 + i, "clipped": False, "ids": []}
        for i, t in enumerate(TRACES * 2)
    ]  # fmt: skip
    import torch

    with JsonlAppender(tmp_path / "rollouts.jsonl") as sink:
        trainer = SimpleNamespace(
            tag_ids=None, _rollouts=sink, rl_step=lambda: 3, _seen={}, _step_rows=[], _curation={}
        )
        ParallelGRPOTrainer._write_rows(trainer, rows, 0, torch.ones(len(rows), dtype=torch.bool))
        logged = ParallelGRPOTrainer._step_metrics(trainer)
    (step,) = analysis.steps_from_rollouts(list(read_jsonl(tmp_path / "rollouts.jsonl")))
    for key in ("parallel_ratio", "opens_parallel"):
        assert logged[key] == pytest.approx(step[key])
    assert (logged["parallel_ratio"], logged["opens_parallel"]) == (0.4, 0.8)


def _critical_reference(ids, o, c):
    """Brute force: split into maximal runs of sibling paths (tags included) and the rest."""
    segments, i = [], 0
    while i < len(ids):
        if ids[i] == o:
            run = []
            while i < len(ids) and ids[i] == o:
                j = i + 1
                while j < len(ids) and ids[j] != c:
                    j += 1
                run.append(min(j, len(ids) - 1) - i + 1)
                i = j + 1
            segments.append(max(run))
        else:
            segments.append(1)
            i += 1
    return sum(segments)


def test_critical_path_tokens_against_brute_force():
    from parallel_r1.metrics import critical_path_tokens

    o, c, P, Q = 1, 2, 3, 4  # <Path>, </Path>, <Parallel>, </Parallel>
    trace = [9, 9, P, o, 5, 5, 5, c, o, 5, c, Q, 7, 7, 8]  # trunk 2, paths 5 and 3, tail 4
    assert critical_path_tokens(trace, o, c) == 2 + 1 + 5 + 4 == _critical_reference(trace, o, c)
    assert critical_path_tokens([9, 9, 9], o, c) == 3  # no block: the length
    rng = np.random.default_rng(0)
    for _ in range(300):
        ids = list(rng.choice([o, c, 5, 6, P, Q], size=int(rng.integers(0, 40)), p=[0.15, 0.15, 0.3, 0.3, 0.05, 0.05]))
        assert critical_path_tokens(ids, o, c) == _critical_reference(ids, o, c), ids
        assert critical_path_tokens(ids, o, c) <= len(ids)
