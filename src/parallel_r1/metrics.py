"""Benchmark and behaviour metrics as pure functions (docs/eval.md).

Accuracy over ``n`` samples per problem, the way the paper and its baselines report it:

* ``mean@k``: mean accuracy of each problem's samples, averaged over problems (verl's
  ``mean@N``; the paper's AIME/AMC mean@16 and MATH mean@1).
* ``pass@k``: the *unbiased* estimator of Chen et al. 2021 (Codex paper, eq. 1),
  ``1 - C(n-c, k) / C(n, k)`` per problem, computed as a stable product.
* ``best@k``: verl's bootstrap proxy for pass@k (``process_validation_metrics``): 1,000
  resamples *with replacement* of size k, seed 42, mean of the max. It is biased low against
  pass@k and is here only to compare with numbers logged by verl.
* ``maj@k``: majority vote over the first k samples' extracted answers; the vote's answer is
  graded by the correctness of its first sample (as verl's ``calc_maj_val``). Answers are
  compared as stripped strings; missing answers do not vote. The papers are silent on both.

Behaviour of the responses (no code in the paper's repo; one definition, :func:`behaviour`,
used by eval, the RL metrics, ``analyze``, the SFT format check, ``rl-readiness``, the demo and
the report, under the labels of :data:`LABELS`):

* parallel ratio: share of responses with at least one *valid closed block*, a ``</Parallel>``
  closing at least two closed paths (:func:`has_parallel_block`);
* opens ``<Parallel>``: share of responses that write ``<Parallel>`` at all (the paper's reward
  condition ``n_par >= 1``), closed or not;
* mean relative position: mean over *all blocks* of all responses of
  offset(``<Parallel>``) / response length (``format.block_positions``);
* format-error rate: share of responses failing the format checker (a response without
  tags is well formed).

Every function takes plain lists; shapes are given as ``[P][n]`` (P problems, n samples).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 42


def _check_k(n: int, k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if k > n:
        raise ValueError(f"k={k} is larger than the {n} samples available")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem: ``n`` samples of which ``c`` are correct.

    Probability that a uniformly drawn k-subset (without replacement) holds a correct sample.
    """
    _check_k(n, k)
    if not 0 <= c <= n:
        raise ValueError(f"c={c} correct samples out of n={n}")
    if n - c < k:
        return 1.0
    # 1 - prod_{i=n-c+1}^{n} (1 - k/i): no big binomials, no overflow.
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def _rows(correct: Sequence[Sequence[bool]], k: int | None = None) -> list[list[float]]:
    rows = [[float(x) for x in row] for row in correct]
    if not rows:
        raise ValueError("no problems to score")
    for i, row in enumerate(rows):
        if k is None:
            if not row:
                raise ValueError(f"problem {i} has no samples")
        else:
            _check_k(len(row), k)
    return rows


def mean_at_k(correct: Sequence[Sequence[bool]], k: int | None = None) -> float:
    """Mean accuracy. ``correct``: [P][n] booleans; ``k`` uses each problem's first k samples."""
    rows = _rows(correct, k)
    return float(np.mean([np.mean(r[:k] if k else r) for r in rows]))


def pass_at_k_mean(correct: Sequence[Sequence[bool]], k: int) -> float:
    """Unbiased pass@k averaged over problems. ``correct``: [P][n] with n >= k everywhere."""
    rows = _rows(correct, k)
    return float(np.mean([pass_at_k(len(r), int(sum(r)), k) for r in rows]))


def bootstrap_best_at_k(
    correct: Sequence[bool],
    k: int,
    n_bootstrap: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> float:
    """verl's ``best@k/mean`` for one problem: mean max over ``n_bootstrap`` resamples of size k.

    Draws with replacement from a fresh ``RandomState(seed)`` per call, as verl's
    ``bootstrap_metric`` reseeds numpy's global state per call, so the numbers match.
    """
    values = np.asarray(correct, dtype=float)
    _check_k(len(values), k)
    rng = np.random.RandomState(seed)
    maxima = [values[rng.choice(len(values), size=k, replace=True)].max() for _ in range(n_bootstrap)]
    return float(np.mean(maxima))


def best_at_k(
    correct: Sequence[Sequence[bool]], k: int, n_bootstrap: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> float:
    """:func:`bootstrap_best_at_k` averaged over problems. ``correct``: [P][n]."""
    rows = _rows(correct, k)
    return float(np.mean([bootstrap_best_at_k(r, k, n_bootstrap, seed) for r in rows]))


def majority_correct(preds: Sequence[str | None], correct: Sequence[bool]) -> bool:
    """Is the majority answer right? ``preds``/``correct``: [n] for one problem.

    Ties go to the answer seen first; with no answer at all the vote is wrong.
    """
    if len(preds) != len(correct):
        raise ValueError(f"{len(preds)} answers for {len(correct)} correctness flags")
    keys = [None if p is None or not str(p).strip() else str(p).strip() for p in preds]
    counts = Counter(k for k in keys if k is not None)
    if not counts:
        return False
    winner = max(counts, key=counts.get)  # max keeps the first of equal counts (insertion order)
    return bool(correct[keys.index(winner)])


def maj_at_k(preds: Sequence[Sequence[str | None]], correct: Sequence[Sequence[bool]], k: int) -> float:
    """Majority-vote accuracy over each problem's first k samples. Both args: [P][n]."""
    rows = _rows(correct, k)
    if len(preds) != len(rows):
        raise ValueError(f"{len(preds)} answer lists for {len(rows)} problems")
    return float(np.mean([majority_correct(p[:k], c[:k]) for p, c in zip(preds, correct)]))


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


# How every table, plot and log labels the two behaviour shares.
LABELS = {"parallel_ratio": "parallel ratio", "opens_parallel": "opens <Parallel>"}


def has_parallel_block(text: str) -> bool:
    """Does a response hold a valid closed block: a ``</Parallel>`` closing >= 2 closed paths?"""
    from .format import parse

    return any(len(b.paths) >= 2 for b in parse(text).blocks)


def opens_parallel(text: str) -> bool:
    """Does a response write ``<Parallel>`` at all (closed or not)?"""
    from .format import PARALLEL_OPEN

    return PARALLEL_OPEN in text


def behaviour(completions: Sequence[str]) -> dict[str, float | None]:
    """The behaviour shares of a set of responses (tags kept). ``completions``: [N].

    Returns ``{"parallel_ratio": share with a valid closed block, "opens_parallel": share that
    writes <Parallel>}``, ``None`` for an empty set.
    """
    return {
        "parallel_ratio": parallel_ratio([has_parallel_block(t) for t in completions]),
        "opens_parallel": parallel_ratio([opens_parallel(t) for t in completions]),
    }


def parallel_ratio(flags: Sequence[bool]) -> float | None:
    """Share of true flags, [N] -> float (``None`` when empty): the parallel ratio of
    :func:`has_parallel_block` flags; :func:`behaviour` computes both shares from the texts."""
    return _mean([float(x) for x in flags])


def mean_blocks(num_blocks: Sequence[int]) -> float | None:
    """Mean number of closed blocks per response. ``num_blocks``: [N]."""
    return _mean(num_blocks)


def mean_length(lengths: Sequence[int]) -> float | None:
    """Mean completion length in tokens. ``lengths``: [N]."""
    return _mean(lengths)


def mean_critical_path(tokens: Sequence[int | None]) -> float | None:
    """Mean :func:`critical_path_tokens` per response, over the responses whose tokens are known
    (a scored file of plain texts has none). ``tokens``: [N]. Beside :func:`mean_length` it shows
    the latency that side-by-side paths save."""
    return _mean([t for t in tokens if t is not None])


def critical_path_tokens(ids: Sequence[int], path_open: int, path_close: int) -> int:
    """Tokens a reader waits for when a block's paths decode side by side: every token outside
    the paths (trunk, tags, summaries) plus, per run of sibling paths, the longest one (its two
    tags included). ``ids``: one completion's token ids. A path never closed counts to the end;
    on a completion without paths this is its length."""
    total, block, path, inside = 0, 0, 0, False
    for t in ids:
        if t == path_open and not inside:
            inside, path = True, 1
        elif inside:
            path += 1
            if t == path_close:
                inside, block = False, max(block, path)
        else:
            total += block + 1  # a token after a run of paths ends the run
            block = 0
    return total + max(block, path if inside else 0)


def clipped_ratio(clipped: Sequence[bool]) -> float | None:
    """Share of responses cut by the token budget. ``clipped``: [N]."""
    return _mean([float(x) for x in clipped])


def format_error_rate(format_ok: Sequence[bool]) -> float | None:
    """Share of responses that fail the format checker. ``format_ok``: [N]."""
    return _mean([0.0 if ok else 1.0 for ok in format_ok])


def mean_parallel_position(positions: Sequence[Sequence[float]]) -> float | None:
    """Mean relative position of ``<Parallel>`` over every block of every response.

    ``positions``: [N][blocks of that response], each in [0, 1). ``None`` when no response
    has a block (a position of a sequential-only batch is undefined, not 0).
    """
    return _mean([p for row in positions for p in row])


__all__ = [
    "BOOTSTRAP_RESAMPLES",
    "BOOTSTRAP_SEED",
    "LABELS",
    "behaviour",
    "best_at_k",
    "bootstrap_best_at_k",
    "clipped_ratio",
    "format_error_rate",
    "has_parallel_block",
    "maj_at_k",
    "majority_correct",
    "mean_at_k",
    "mean_blocks",
    "mean_critical_path",
    "mean_length",
    "mean_parallel_position",
    "opens_parallel",
    "parallel_ratio",
    "pass_at_k",
    "pass_at_k_mean",
]
