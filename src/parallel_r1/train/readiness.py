"""OctoThinker's comparison of mid-training branches in one command (``parallel-r1 rl-readiness``).

    parallel-r1 rl-readiness --config recipes/readiness_smollm2_cpu.yaml --midtrain-dir runs/mt_smollm2
    parallel-r1 rl-readiness --config R.yaml --branches long=runs/mt/long/final short=runs/mt/short/final

For every branch checkpoint the *same* short RL recipe (:mod:`parallel_r1.train.rl`, GRPO on TRL)
and the *same* evaluation (:func:`parallel_r1.evaluate.evaluate`) run, the evaluation before and
after RL, and one table comes out: branch x (accuracy before RL, accuracy after RL, mean
completion length, share of completions that stopped at the length budget). The paper's point
(docs/midtrain.md) is that these columns separate RL-ready bases from ones that collapse into
budget-length repetition. Library entry point: :func:`run_readiness`.

Recipe (YAML): ``output_dir``; ``rl``: RLConfig fields (a mapping, or the path of an RL recipe,
with ``rl_overrides`` on top); ``eval``: EvalConfig fields (mapping or path, ``eval_overrides``);
optionally ``branches`` (name -> checkpoint) or ``midtrain_dir``. ``model``/``output_dir`` of
the RL recipe and ``model``/``output_dir`` of the eval are set per branch.

Folder (``output_dir``)::

    <branch>/eval_before/   results.json, completions.jsonl, run.json   (parallel-r1 eval folder)
    <branch>/rl/            the RL run (checkpoints, rollouts.jsonl, metrics.jsonl, final weights)
    <branch>/rl_done.json   written once the RL run finished; records the RL fields it ran with
    <branch>/eval_after/    eval of <branch>/rl
    readiness.json, readiness.md   the table (rewritten atomically after every branch)

Resuming: re-run the same command. A finished eval (``results.json`` with the same settings) and a
finished RL run (``rl_done.json`` with the same fields) are reused without loading a model;
an interrupted RL run resumes from its last checkpoint, an interrupted eval from its
completions (both are those commands' own resume). A folder made with a different RL recipe is an
error naming the fields, so two recipes never mix.

Table values are computed from the eval folders' ``completions.jsonl`` (the rows of the
configured problems x samples): accuracy = share of correct samples over all benchmarks
(sample-weighted), mean length = mean generated tokens, at budget = share with
``finish_reason == "length"`` (the generation hit ``max_new_tokens``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import metrics as M
from ..io import atomic_write_json, atomic_write_text, read_jsonl

# Fields readiness sets per branch: a recipe must not set them.
_RL_OWNED = ("model", "output_dir")
_EVAL_OWNED = ("model", "output_dir")


@dataclass
class ReadinessConfig:
    """One readiness comparison: the branches, the shared RL recipe and the shared evaluation."""

    output_dir: str = field(
        metadata={"help": "Results folder: one sub-folder per branch plus readiness.json / readiness.md."}
    )
    rl: dict | str = field(
        metadata={"help": "RLConfig fields (mapping) or the path of an RL recipe YAML; the same for every branch."}
    )
    eval: dict | str = field(
        metadata={"help": "EvalConfig fields (mapping) or the path of an eval YAML; run before and after RL."}
    )
    rl_overrides: dict = field(
        default_factory=dict, metadata={"help": "RLConfig fields applied on top of `rl` (e.g. rl_steps)."}
    )
    eval_overrides: dict = field(default_factory=dict, metadata={"help": "EvalConfig fields applied on top of `eval`."})
    branches: dict[str, str] = field(
        default_factory=dict, metadata={"help": "Branch name -> checkpoint (folder, alias or hub id)."}
    )
    midtrain_dir: str | None = field(
        default=None, metadata={"help": "A `parallel-r1 midtrain` run folder: every stage's `final` becomes a branch."}
    )

    def __post_init__(self):
        self.rl = {**_fields_of(self.rl, "rl"), **(self.rl_overrides or {})}
        self.eval = {**_fields_of(self.eval, "eval"), **(self.eval_overrides or {})}
        for owned, part in ((_RL_OWNED, self.rl), (_EVAL_OWNED, self.eval)):
            for f in owned:
                part.pop(f, None)  # set per branch; a value from a reused recipe is ignored
        self.branches = dict(self.branches or {})
        if self.midtrain_dir:
            for name, path in find_midtrain_branches(self.midtrain_dir).items():
                self.branches.setdefault(name, path)
        if not self.branches:
            raise ValueError("rl-readiness: no branches; give --branches name=checkpoint ... or --midtrain-dir RUN")


def _fields_of(value, what: str) -> dict:
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, (str, os.PathLike)):
        from ..io import load_yaml

        if not Path(value).exists():
            raise FileNotFoundError(f"rl-readiness: {what} recipe not found: {value}")
        return load_yaml(value)
    raise ValueError(f"rl-readiness: `{what}` must be a mapping of fields or a recipe path, got {type(value).__name__}")


def find_midtrain_branches(run_dir: str | os.PathLike) -> dict[str, str]:
    """Every stage of a midtrain run that has a ``final`` checkpoint, in the recipe's order."""
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"rl-readiness: --midtrain-dir {run} does not exist")
    order: list[str] = []
    cfg_path = run / "config.json"
    if cfg_path.exists():
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        order = [s["name"] for s in ([cfg.get("stable")] if cfg.get("stable") else []) + list(cfg.get("decay") or [])]
    found = {p.parent.name for p in run.glob("*/final") if (p / "config.json").exists()}
    names = [n for n in order if n in found] + sorted(found - set(order))
    if not names:
        raise FileNotFoundError(f"rl-readiness: no finished stage in {run} (expected <stage>/final/config.json)")
    return {n: str(run / n / "final") for n in names}


def load_config(path: str | os.PathLike | None, **overrides) -> ReadinessConfig:
    """The recipe at ``path`` with ``overrides`` on top (None = keep; mappings are added to the recipe's)."""
    data = {}
    if path:
        from ..io import load_yaml

        if not Path(path).exists():
            raise FileNotFoundError(f"rl-readiness: recipe not found: {path}")
        data = load_yaml(path)
    for k, v in overrides.items():
        if v is None:
            continue
        if k in ("branches", "rl_overrides", "eval_overrides"):  # mappings: added to the recipe's
            data[k] = {**(data.get(k) or {}), **v}
        else:
            data[k] = v
    known = {f.name for f in dataclasses.fields(ReadinessConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise KeyError(f"rl-readiness: {path}: unknown field(s) {unknown}; known: {sorted(known)}")
    missing = [f for f in ("output_dir", "rl", "eval") if f not in data]
    if missing:
        raise ValueError(f"rl-readiness: {path or 'recipe'}: missing field(s) {missing}")
    return ReadinessConfig(**data)


# ----------------------------------------------------------------------------- per-branch configs


def rl_config(cfg: ReadinessConfig, model: str, out: Path):
    from .rl import RLConfig

    known = {f.name for f in dataclasses.fields(RLConfig) if f.init}
    unknown = sorted(set(cfg.rl) - known)
    if unknown:
        raise KeyError(f"rl-readiness: rl recipe: unknown RLConfig field(s) {unknown}")
    try:
        return RLConfig(**{**cfg.rl, "model": model, "output_dir": str(out)})
    except (TypeError, ValueError) as e:
        raise ValueError(f"rl-readiness: rl recipe: {e}") from None


def eval_config(cfg: ReadinessConfig, model: str, out: Path, model_kind: str | None = None):
    """The EvalConfig of one evaluation. ``model_kind`` (``base`` before RL, ``rl`` after) picks the
    protocol's setting where it has one per kind (``octothinker``: few-shot before, zero-shot after);
    a ``model_kind`` in the eval recipe wins."""
    from ..evaluate import EvalConfig
    from ..protocols import get_protocol

    known = {f.name for f in dataclasses.fields(EvalConfig)}
    unknown = sorted(set(cfg.eval) - known)
    if unknown:
        raise KeyError(f"rl-readiness: eval recipe: unknown EvalConfig field(s) {unknown}")
    try:
        kind = (
            {"model_kind": model_kind}
            if model_kind and get_protocol(cfg.eval.get("protocol", "custom")).by_kind
            else {}
        )
        return EvalConfig(**{**kind, **cfg.eval, "model": model, "output_dir": str(out)})
    except (TypeError, ValueError) as e:  # e.g. a device this machine lacks: before any model loads
        raise ValueError(f"rl-readiness: eval recipe: {e}") from None


def check_branch(name: str, model: str) -> None:
    from ..models import ALIASES, check_model_source

    if not name or any(c in name for c in "/\\ ") or name.startswith("."):
        raise ValueError(f"rl-readiness: branch name {name!r} must be a plain folder name")
    p = Path(model).expanduser()
    if p.exists():
        if not (p / "config.json").exists():
            raise FileNotFoundError(f"rl-readiness: branch {name!r}: {p} has no config.json (not a model checkpoint)")
        return
    if model in ALIASES:
        return
    try:
        check_model_source(model)
    except FileNotFoundError:
        raise FileNotFoundError(f"rl-readiness: branch {name!r}: checkpoint folder {model} does not exist") from None


def validate(cfg: ReadinessConfig) -> None:
    """Every input error that needs no model, for every branch, before the first model loads."""
    from ..evaluate import load_benchmark
    from .rl import load_checked_problems

    for name, model in cfg.branches.items():
        check_branch(name, model)
    first_model = next(iter(cfg.branches.values()))
    rl = rl_config(cfg, first_model, Path(cfg.output_dir) / "_check")  # RLConfig checks itself
    load_checked_problems(rl)
    ev = eval_config(cfg, first_model, Path(cfg.output_dir) / "_check", "base")
    for b in ev.benchmarks:
        load_benchmark(b, ev)
    if ev.template != "fewshot" and rl.template != ev.template:
        print(f"rl-readiness: note: RL uses template {rl.template!r}, eval uses {ev.template!r}", file=sys.stderr)


# ----------------------------------------------------------------------------- stages


def _eval_done(ecfg) -> bool:
    """results.json of these exact settings (evaluate() would only reload the model to rewrite it)."""
    from ..evaluate import run_identity

    path = Path(ecfg.output_dir) / "results.json"
    if not path.exists():
        return False
    old = json.loads(path.read_text(encoding="utf-8"))
    now = json.loads(json.dumps(run_identity(ecfg), default=str))
    return old.get("settings") == now and old.get("model") == ecfg.identity()["model"]


def run_eval(ecfg, progress: bool = False) -> float:
    """Run (or reuse) one evaluation; returns its wall-clock seconds (0 when reused)."""
    from ..evaluate import evaluate

    if _eval_done(ecfg):
        return 0.0
    t0 = time.time()
    evaluate(ecfg, progress=progress)
    return time.time() - t0


def _rl_identity(cfg: ReadinessConfig) -> dict:
    return json.loads(json.dumps(cfg.rl, sort_keys=True, default=str))


def run_rl(cfg: ReadinessConfig, model: str, branch_dir: Path) -> float:
    """Run (or reuse / resume) the branch's RL; returns wall-clock seconds (0 when reused)."""
    marker = branch_dir / "rl_done.json"
    ident = _rl_identity(cfg)
    if marker.exists():
        old = json.loads(marker.read_text(encoding="utf-8"))
        if old.get("rl") != ident:
            diff = sorted(k for k in set(ident) | set(old.get("rl", {})) if ident.get(k) != old.get("rl", {}).get(k))
            raise ValueError(
                f"rl-readiness: {branch_dir} holds an RL run of another recipe (fields {diff} differ); use another --output-dir"
            )
        return 0.0
    from .rl import train

    rcfg = rl_config(cfg, model, branch_dir / "rl")
    t0 = time.time()
    train(rcfg)
    seconds = time.time() - t0
    atomic_write_json(marker, {"rl": ident, "model": model, "seconds": round(seconds, 2)})
    return seconds


# ----------------------------------------------------------------------------- table


def eval_summary(ecfg) -> dict:
    """Accuracy, mean length and share at the budget from the eval folder's completions.jsonl."""
    from ..evaluate import load_benchmark

    done = {}
    for r in read_jsonl(Path(ecfg.output_dir) / "completions.jsonl", skip_bad=True):
        done[(r["benchmark"], str(r["problem_id"]), int(r["sample_index"]))] = r
    rows = []
    for b in ecfg.benchmarks:
        for p in load_benchmark(b, ecfg):
            for s in range(ecfg.n_of(b)):
                key = (b, str(p.id), s)
                if key not in done:
                    raise ValueError(
                        f"rl-readiness: {ecfg.output_dir}: sample {key} missing from completions.jsonl; re-run to finish it"
                    )
                rows.append(done[key])
    n = len(rows)
    return {
        **M.behaviour([r["completion"] for r in rows]),
        "accuracy": sum(bool(r["correct"]) for r in rows) / n,
        "mean_length": sum(int(r["length"]) for r in rows) / n,
        "at_budget": sum(r.get("finish_reason") == "length" for r in rows) / n,
        "samples": n,
    }


def _rl_metrics(run_dir: Path) -> dict:
    path = run_dir / "metrics.jsonl"
    rows = [r for r in read_jsonl(path, skip_bad=True)] if path.exists() else []
    rewards = [r.get("reward") for r in rows if r.get("reward") is not None]
    return {
        "rl_steps": len(rows),
        "reward_first": rewards[0] if rewards else None,
        "reward_last": rewards[-1] if rewards else None,
    }


HEADER = [
    "branch",
    "acc before RL %",
    "acc after RL %",
    "Δ",
    "mean len before",
    "mean len after",
    "at budget before %",
    "at budget after %",
    "RL reward first→last",
    "samples",
]


def _cell(x, spec: str = "{:.1f}") -> str:
    return "-" if x is None else spec.format(x)


def _pct(summary: dict, key: str) -> float | None:
    return 100 * summary[key] if summary else None


def format_table(rows: list[dict], budget: int | None = None) -> str:
    """Markdown table: one row per branch."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join("---" for _ in HEADER) + "|"]
    for r in rows:
        b, a = r.get("before") or {}, r.get("after") or {}
        delta = None if not (a and b) else 100 * (a["accuracy"] - b["accuracy"])
        reward = None if r.get("reward_first") is None else f"{r['reward_first']:.2f}→{r['reward_last']:.2f}"
        cells = [
            r["branch"],
            _cell(_pct(b, "accuracy")),
            _cell(_pct(a, "accuracy")),
            _cell(delta, "{:+.1f}"),
            _cell(b.get("mean_length")),
            _cell(a.get("mean_length")),
            _cell(_pct(b, "at_budget")),
            _cell(_pct(a, "at_budget")),
            _cell(reward, "{}"),
            str(a.get("samples") or b.get("samples") or "-"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if budget:
        lines.append(f"\nlength budget: {budget} tokens per completion")
    return "\n".join(lines)


def write_table(cfg: ReadinessConfig, rows: list[dict]) -> str:
    out = Path(cfg.output_dir)
    budget = cfg.eval.get("max_new_tokens")
    table = format_table(rows, budget)
    atomic_write_json(out / "readiness.json", {"branches": rows, "rl": cfg.rl, "eval": cfg.eval})
    atomic_write_text(
        out / "readiness.md", f"# RL readiness\n\nRL recipe and eval settings: readiness.json\n\n{table}\n"
    )
    return table


# ----------------------------------------------------------------------------- driver


def run_readiness(cfg: ReadinessConfig, progress: bool = False) -> list[dict]:
    validate(cfg)  # bad input of any branch fails before a model is loaded
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, model in cfg.branches.items():
        bdir = out / name
        before = eval_config(cfg, model, bdir / "eval_before", "base")
        after = eval_config(cfg, str(bdir / "rl"), bdir / "eval_after", "rl")
        print(f"[rl-readiness] {name}: {model}", file=sys.stderr)
        t_before = run_eval(before, progress)
        t_rl = run_rl(cfg, model, bdir)
        t_after = run_eval(after, progress)
        row = {
            "branch": name,
            "model": model,
            "before": eval_summary(before),
            "after": eval_summary(after),
            **_rl_metrics(bdir / "rl"),
            "seconds": {"eval_before": round(t_before, 2), "rl": round(t_rl, 2), "eval_after": round(t_after, 2)},
        }
        rows.append(row)
        write_table(cfg, rows)  # a partial table survives an interruption
    return rows
