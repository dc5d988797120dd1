"""How sure an accuracy is: 95 % bootstrap intervals over problems (docs/experiments.md).

A problem is the unit that is resampled: its samples' outcomes stay together, and in a paired
comparison so do its two models' outcomes, so the interval of ``rl - sft`` is far narrower
than the two accuracies' intervals suggest (the same problems are easy or hard for both).
Percentile intervals, ``resamples`` draws from a seeded ``random.Random``: the same inputs give
the same interval on every machine.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

RESAMPLES = 10_000
SEED = 0


def per_problem(path: str | Path, benchmark: str) -> dict[str, float]:
    """``{problem id: share of its samples that are correct}`` from an eval's ``completions.jsonl``."""
    from .io import read_jsonl

    hits: dict[str, list[bool]] = {}
    for r in read_jsonl(Path(path), skip_bad=True):
        if r["benchmark"] == benchmark:
            hits.setdefault(str(r["problem_id"]), []).append(bool(r["correct"]))
    return {pid: sum(v) / len(v) for pid, v in hits.items()}


def bootstrap_mean(values: Sequence[float], resamples: int = RESAMPLES, seed: int = SEED) -> dict:
    """Mean of ``values`` ([P], one per problem) and its 95 % percentile interval."""
    if not values:
        raise ValueError("bootstrap_mean: need a non-empty list")
    n = len(values)
    rng = random.Random(seed)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    return {"mean": sum(values) / n, "lo": means[int(0.025 * resamples)], "hi": means[int(0.975 * resamples) - 1],
            "n_problems": n, "resamples": resamples, "seed": seed}  # fmt: skip


def paired_bootstrap(
    before: Sequence[float], after: Sequence[float], resamples: int = RESAMPLES, seed: int = SEED
) -> dict:
    """Mean of ``after - before`` ([P] each, problem by problem) and its 95 % percentile interval,
    resampling problems: ``{"diff", "lo", "hi", "n_problems", "resamples", "seed"}``."""
    if len(before) != len(after) or not before:
        raise ValueError("paired_bootstrap: need two equally long, non-empty lists")
    b = bootstrap_mean([a - x for a, x in zip(after, before)], resamples, seed)
    return {"diff": b.pop("mean"), **b}


def compare(
    before_path: str | Path, after_path: str | Path, benchmark: str, resamples: int = RESAMPLES, seed: int = SEED
) -> dict:
    """Paired interval of two evaluations' accuracy on the problems both answered."""
    before, after = per_problem(before_path, benchmark), per_problem(after_path, benchmark)
    ids = sorted(before.keys() & after.keys())
    if not ids:
        raise ValueError(f"compare: {before_path} and {after_path} share no {benchmark} problem")
    return paired_bootstrap([before[i] for i in ids], [after[i] for i in ids], resamples, seed)
