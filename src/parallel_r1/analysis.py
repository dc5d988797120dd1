"""Parallel-thinking behaviour over a training run (``parallel-r1 analyze``).

Reads the run folder of ``parallel-r1 rl`` (docs/INTERFACES.md): ``rollouts.jsonl`` (one row
per completion), ``metrics.jsonl`` (one row per RL step), ``config.yaml`` and
``eval/<tag>/results.json``, and writes ``RUN_DIR/analysis.json``:

* per RL step: parallel ratio and opens-``<Parallel>`` share (:func:`parallel_r1.metrics.behaviour`), mean blocks, mean relative ``<Parallel>`` position (the paper's
  figure 3: blocks move from the start, exploration, towards the end, verification), accuracy,
  mean reward and the reward mode of the step, completion length (mean, max), share of
  completions clipped by the budget, format-error rate;
* accuracy and reward per reward mode (the alternating schedule's accuracy / parallel steps
  are separate series, so the reward scale change between modes is visible);
* the OctoThinker length pathology (docs/eval.md): a run is flagged when more than
  ``clip_threshold`` (default 50 %) of the completions of its last steps hit the budget;
* the early/late shift of the mean ``<Parallel>`` position (first vs last third of the steps);
* every evaluated checkpoint's results table.

The rollouts are the source of truth; a step that is only in ``metrics.jsonl`` (rollouts
not kept) is taken from there.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter, defaultdict
from pathlib import Path

from . import metrics as M
from .io import read_jsonl
from .tables import format_summary_markdown, summary_rows

CLIP_THRESHOLD = 0.5
STEP_KEYS = (
    "parallel_ratio",
    "opens_parallel",
    "mean_blocks",
    "mean_parallel_position",
    "format_error_rate",
    "accuracy",
    "reward",
    "mean_length",
    "max_length",
    "clipped_ratio",
)


def _num(x) -> float | None:
    if x is None:
        return None
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def load_config(run_dir: Path) -> dict:
    path = run_dir / "config.yaml"
    if not path.exists():
        return {}
    from .io import load_yaml

    return load_yaml(path)


def budget_of(config: dict) -> int | None:
    """The run's completion budget in tokens, when its config records one."""
    for key in ("max_completion_length", "max_new_tokens", "max_response_length"):
        if isinstance(config.get(key), int):
            return config[key]
    return None


def steps_from_rollouts(rows: list[dict], budget: int | None = None) -> list[dict]:
    """One summary per RL step from its rollout rows."""
    by_step: dict[int, list[dict]] = defaultdict(list)
    for r in rows:
        by_step[int(r["step"])].append(r)
    out = []
    for step in sorted(by_step):
        g = by_step[step]
        lengths = [int(r.get("length", 0)) for r in g]
        clipped = [
            bool(r["clipped"]) if "clipped" in r else (budget is not None and n >= budget) for r, n in zip(g, lengths)
        ]
        rewards = [_num(r.get("reward")) for r in g]
        rewards = [x for x in rewards if x is not None]
        out.append(
            {
                "step": step,
                "n": len(g),
                "reward_mode": Counter(str(r.get("reward_mode", "")) for r in g).most_common(1)[0][0] or None,
                **M.behaviour([r.get("completion") or "" for r in g]),
                "mean_blocks": M.mean_blocks([int(r.get("num_blocks", 0)) for r in g]),
                "mean_parallel_position": M.mean_parallel_position([r.get("positions") or [] for r in g]),
                "format_error_rate": M.format_error_rate([bool(r.get("format_ok", True)) for r in g]),
                "accuracy": M.mean_at_k([[bool(r.get("correct"))] for r in g]),
                "reward": sum(rewards) / len(rewards) if rewards else None,
                "mean_length": M.mean_length(lengths),
                "mean_critical_path_tokens": M.mean_critical_path([r.get("critical_path_tokens") for r in g]),
                "max_length": max(lengths),
                "clipped_ratio": M.clipped_ratio(clipped),
            }
        )
    return out


def steps_from_metrics(rows: list[dict]) -> list[dict]:
    """Step summaries from ``metrics.jsonl`` rows (what the trainer logged)."""
    out = []
    for r in rows:
        if "step" not in r:
            continue
        d = {
            "step": int(r["step"]),
            "n": None,
            "reward_mode": r.get("reward_mode_name") or _mode_name(r.get("reward_mode")),
        }
        for key in STEP_KEYS:
            d[key] = _num(r.get(key))
        out.append(d)
    return out


def _mode_name(code) -> str | None:
    if isinstance(code, str):
        return code
    return {0: "accuracy", 1: "parallel"}.get(int(code)) if _num(code) is not None else None


def by_reward_mode(steps: list[dict]) -> dict[str, dict[str, list]]:
    """{mode: {"step": [...], "accuracy": [...], "reward": [...]}} in step order."""
    out: dict[str, dict[str, list]] = {}
    for s in steps:
        d = out.setdefault(s.get("reward_mode") or "unknown", {"step": [], "accuracy": [], "reward": []})
        for key in d:
            d[key].append(s.get(key))
    return out


def length_pathology(
    steps: list[dict], budget: int | None, threshold: float = CLIP_THRESHOLD, last: int | None = None
) -> dict:
    """Do completion lengths pin at the budget over the last steps? (docs/eval.md)

    ``last`` steps default to the last quarter of the run (at least 1, at most 10).
    """
    ratios = [(s["step"], s.get("clipped_ratio")) for s in steps if s.get("clipped_ratio") is not None]
    if not ratios:
        return {"flagged": False, "reason": "no length information", "budget": budget}
    last = last or min(10, max(1, math.ceil(len(ratios) / 4)))
    tail = ratios[-last:]
    share = sum(r for _, r in tail) / len(tail)
    tail_len = [s["mean_length"] for s in steps[-last:] if s.get("mean_length") is not None]
    return {
        "flagged": share > threshold,
        "clipped_share_last_steps": share,
        "last_steps": [s for s, _ in tail],
        "threshold": threshold,
        "budget": budget,
        "mean_length_last_steps": sum(tail_len) / len(tail_len) if tail_len else None,
    }


def position_trend(steps: list[dict]) -> dict:
    """Mean ``<Parallel>`` position over the first and the last third of the steps that have blocks."""
    pts = [(s["step"], s["mean_parallel_position"]) for s in steps if s.get("mean_parallel_position") is not None]
    if not pts:
        return {"early": None, "late": None, "shift": None}
    third = max(1, len(pts) // 3)
    early = sum(p for _, p in pts[:third]) / third
    late = sum(p for _, p in pts[-third:]) / third
    return {"early": early, "late": late, "shift": late - early, "steps_per_third": third}


# Model tags of the demo's curriculum, in curriculum order; numbered checkpoints sit between the
# cold start and the final RL model, other tags follow alphabetically.
STAGE_ORDER = {"base": 0, "midtrain": 1, "sft": 2, "rl": 4, "final": 4}


def _tag_key(tag: str):
    if tag in STAGE_ORDER:
        return (STAGE_ORDER[tag], 0, tag)
    m = re.search(r"(\d+)$", tag)
    return (3, int(m.group(1)), tag) if m else (5, 0, tag)


def load_evals(run_dir: Path) -> dict[str, dict]:
    """{tag: results.json} for every ``eval/<tag>/results.json``: base, sft, checkpoints in step order, rl, others."""
    out = {}
    paths = sorted((run_dir / "eval").glob("*/results.json"), key=lambda p: _tag_key(p.parent.name))
    for p in paths:
        try:
            out[p.parent.name] = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}: not valid JSON ({e.msg})") from None
    return out


def eval_intervals(run_dir: Path, evals: dict[str, dict], resamples: int = 2000) -> dict[str, dict]:
    """``{tag: {benchmark: intervals.bootstrap_mean(...)}}``: each evaluation's accuracy with its
    95 % interval over problems, from ``eval/<tag>/completions.jsonl`` (2,000 resamples: error bars)."""
    from .intervals import bootstrap_mean, per_problem

    out: dict[str, dict] = {}
    for tag, res in evals.items():
        path = run_dir / "eval" / tag / "completions.jsonl"
        if not path.exists():
            continue
        for name in res.get("benchmarks") or {}:
            scores = list(per_problem(path, name).values())
            if scores:
                out.setdefault(tag, {})[name] = bootstrap_mean(scores, resamples)
    return out


def analyze_run(run_dir: str | Path, clip_threshold: float = CLIP_THRESHOLD, last_steps: int | None = None) -> dict:
    """Everything ``analysis.json`` holds, computed from the run folder."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"analyze: no such run folder: {run_dir}")
    rollouts_path, metrics_path = run_dir / "rollouts.jsonl", run_dir / "metrics.jsonl"
    evals = load_evals(run_dir)  # a folder of evaluations only (no training) is analysed too
    if not rollouts_path.exists() and not metrics_path.exists() and not evals:
        raise FileNotFoundError(
            f"analyze: {run_dir} has neither rollouts.jsonl, metrics.jsonl nor eval/<tag>/results.json; is it an `rl` run folder?"
        )
    config = load_config(run_dir)
    budget = budget_of(config)
    rollouts = list(read_jsonl(rollouts_path, skip_bad=True)) if rollouts_path.exists() else []
    for i, r in enumerate(rollouts, 1):
        if "step" not in r:
            raise ValueError(f"{rollouts_path}: row {i} has no 'step'")
    logged = list(read_jsonl(metrics_path, skip_bad=True)) if metrics_path.exists() else []
    steps = steps_from_rollouts(rollouts, budget)
    have = {s["step"] for s in steps}
    steps += [s for s in steps_from_metrics(logged) if s["step"] not in have]
    steps.sort(key=lambda s: s["step"])
    return {
        "run_dir": str(run_dir),
        "budget": budget,
        "n_steps": len(steps),
        "n_rollouts": len(rollouts),
        "steps": steps,
        "by_reward_mode": by_reward_mode(steps),
        "length_pathology": length_pathology(steps, budget, clip_threshold, last_steps),
        "position_trend": position_trend(steps),
        "evals": evals,
        "eval_intervals": eval_intervals(run_dir, evals),
    }


def _f(x, pct=False, digits=2) -> str:
    if x is None:
        return "-"
    return f"{100 * x:.1f}%" if pct else f"{x:.{digits}f}"


def format_summary(a: dict) -> str:
    steps = a["steps"]
    lines = [
        f"run {a['run_dir']}: {a['n_steps']} RL steps, {a['n_rollouts']} rollouts, {len(a['evals'])} evaluated models, budget {a['budget'] or 'unknown'} tokens"
    ]
    if steps:
        first, last = steps[0], steps[-1]
        lines.append(f"{'':22}{'step ' + str(first['step']):>12}{'step ' + str(last['step']):>12}")
        for label, key, pct in (
            (M.LABELS["parallel_ratio"], "parallel_ratio", True),
            (M.LABELS["opens_parallel"], "opens_parallel", True),
            ("<Parallel> position", "mean_parallel_position", False),
            ("accuracy", "accuracy", True),
            ("reward", "reward", False),
            ("mean length", "mean_length", False),
            ("critical path", "mean_critical_path_tokens", False),
            ("clipped", "clipped_ratio", True),
            ("format errors", "format_error_rate", True),
        ):
            lines.append(f"{label:22}{_f(first.get(key), pct):>12}{_f(last.get(key), pct):>12}")
    t = a["position_trend"]
    if t["shift"] is not None:
        lines.append(
            f"<Parallel> position: {t['early']:.2f} early -> {t['late']:.2f} late (shift {t['shift']:+.2f}; >0 = towards verification)"
        )
    for mode, d in a["by_reward_mode"].items():
        acc = [x for x in d["accuracy"] if x is not None]
        lines.append(
            f"reward mode {mode}: {len(d['step'])} steps, mean accuracy {_f(sum(acc) / len(acc) if acc else None, True)}"
        )
    lp = a["length_pathology"]
    if lp.get("flagged"):
        lines.append(
            f"LENGTH PATHOLOGY: {lp['clipped_share_last_steps']:.0%} of completions hit the {lp['budget'] or ''} token budget over steps {lp['last_steps'][0]}-{lp['last_steps'][-1]} (threshold {lp['threshold']:.0%})"
        )
    elif "clipped_share_last_steps" in lp:
        lines.append(
            f"lengths ok: {lp['clipped_share_last_steps']:.0%} clipped over the last {len(lp['last_steps'])} steps"
        )
    if a["evals"]:
        lines += ["", "evaluations (eval/<tag>/results.json):", format_summary_markdown(summary_rows(a["evals"]))]
    return "\n".join(lines)


def eval_summary(run_dir: str | Path) -> str:
    """The combined markdown table of every ``RUN_DIR/eval/<tag>/results.json`` (for printing)."""
    return format_summary_markdown(summary_rows(load_evals(Path(run_dir))))
