"""Run one CPU experiment of docs/experiments.md from its recipe: SFT model -> RL -> held-out eval.

    PYTHONPATH=src python scripts/experiment.py recipes/experiments/e1_alternating.yaml
    PYTHONPATH=src python scripts/experiment.py --plots runs/exp/e1_alternating runs/exp/e2_accuracy

A recipe (``recipes/experiments/*.yaml``) has four parts:

* ``out``: the run folder (RL run, ``eval/{sft,rl}/``, ``summary.json``, ``report.html``);
* ``sft``: ``parallel-r1 demo`` fields for the cold-start model (``output_dir`` + sizes); the demo's
  ``base`` and ``sft`` stages are run when ``<sft.output_dir>/sft/DONE.json`` is missing, so every
  experiment that names the same ``sft.output_dir`` starts from the same SFT model;
* ``rl``: ``parallel-r1 rl`` fields (``model`` and ``output_dir`` are filled in);
* ``eval``: held-out ``benchmark`` (test split), ``problems``, ``samples`` per problem,
  sampler ``seed``, ``temperature`` or ``temperatures`` (0 = greedy; each gets its own SFT and
  RL evaluation and interval), and the paired bootstrap's ``resamples`` / ``seed``;
* ``headroom`` (optional): ``problems`` and ``k``: the starting model's mean@k / pass@k on
  held-out problems of the RL distribution, measured before RL and kept in ``summary.json``.

Every stage is resumable: the RL run continues from its last checkpoint, an evaluation from its
completions file. ``summary.json`` holds accuracy before / after with the 95 % paired bootstrap
interval of the difference (resampling problems, each problem's sft and rl outcomes together).
``--plots`` draws the docs figures (docs/img/exp_*.png) from finished run folders.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import sys
import time
from pathlib import Path

import yaml

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def load_recipe(path: str) -> dict:
    recipe = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if recipe.get("kind") == "readiness":
        need = ("out", "branches", "worked_data", "midtrain", "readiness")
        for key in need:
            if key not in recipe:
                raise ValueError(f"{path}: missing top-level field {key!r} ({', '.join(need)})")
        return recipe
    for key in ("out", "sft", "rl"):
        if key not in recipe:
            raise ValueError(f"{path}: missing top-level field {key!r} (out, sft, rl; eval and headroom optional)")
    for key in ("benchmark", "problems"):
        if recipe.get("eval") is not None and key not in recipe["eval"]:
            raise ValueError(f"{path}: eval.{key} is required")
    return recipe


def ensure_sft(sft: dict) -> Path:
    """The cold-start model of the demo's ``base`` + ``sft`` stages under ``sft['output_dir']``."""
    from parallel_r1.demo import DemoConfig, run_demo

    cfg = DemoConfig(stages="base,sft", gsm8k=False, **sft)
    model = cfg.dirs()["sft"]
    if not (model / "DONE.json").exists():
        run_demo(cfg)
    return model


def run_rl(rl: dict, model: Path, out: Path) -> Path:
    """``parallel-r1 rl`` (``rl.train``: resumes, and a run killed after its last checkpoint only
    saves its final model) with every RL step timed into ``timing.jsonl``."""
    from parallel_r1.cli import parse_command
    from parallel_r1.io import atomic_write_text
    from parallel_r1.train.rl import train

    # next to the run folder, not in it: `rl` refuses a non-empty folder that is not its own run
    # (its config.yaml, written by `rl`, is the complete record of the run)
    recipe = out.parent / f"{out.name}.rl.yaml"
    recipe.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(recipe, yaml.safe_dump(dict(rl, model=str(model), output_dir=str(out)), sort_keys=False))
    (cfg,) = parse_command("rl", ["--config", str(recipe)])
    train(cfg, setup=lambda trainer: time_steps(trainer, out / "timing.jsonl"))
    return out


def time_steps(trainer, path: Path) -> None:
    """Profile of every RL step into ``timing.jsonl``: generation seconds, step seconds (the rest
    is the old-log-prob and loss forward/backward over prompt + completion tokens, the optimiser,
    logging, checkpoint writes), and the prompt / completion tokens the loss forward reads. A step
    runs from one generation to the next (the last one to the end of training)."""
    from transformers import TrainerCallback

    from parallel_r1.io import JsonlAppender

    sink, pending = JsonlAppender(path), []
    inner = trainer._generate

    def flush(now: float) -> None:
        if pending:
            row = pending.pop()
            sink.write(dict(row, step_s=round(now - row.pop("t0"), 2)))

    def timed(prompts):
        now = time.perf_counter()
        flush(now)
        out = inner(prompts)
        pending.append(dict(rl_step=trainer.rl_step(), t0=now, gen_s=round(time.perf_counter() - now, 2), rollouts=len(out[1]),
                            prompt_tokens=sum(map(len, out[0])), completion_tokens=sum(map(len, out[1]))))  # fmt: skip
        return out

    class LastStep(TrainerCallback):
        def on_train_end(self, *args, **kwargs):
            flush(time.perf_counter())

    trainer._generate = timed
    trainer.add_callback(LastStep())


def run_eval(ev: dict, rl: dict, tag: str, model: Path, out: Path, temperature: float | None = None,
             benchmark: str | None = None, problems: int | None = None, k: int = 1) -> dict:  # fmt: skip
    """``model`` on the held-out problems into ``out/eval/<tag>``: ``k`` samples per problem at
    ``temperature`` (0 = greedy, paths too)."""
    from parallel_r1.evaluate import EvalConfig, evaluate

    name = benchmark or ev["benchmark"]
    t = float(ev.get("temperature", 1.0) if temperature is None else temperature)
    cfg = EvalConfig(
        model=str(model), output_dir=str(out / "eval" / tag), benchmarks=[name], k={name: k},
        samples={name: max(k, int(ev.get("samples", 1)))}, template=rl.get("template", "no_prompt"),
        variant=rl.get("variant", "unseen"), max_new_tokens=rl["max_completion_length"],
        num_paths=rl.get("num_paths", 2), max_blocks=rl.get("max_blocks", 2), max_path_tokens=rl.get("max_path_tokens"),
        temperature=t, path_temperature=t if t == 0 else 1.0, limit=int(problems or ev["problems"]),
        batch_size=int(ev.get("batch_size", 16)), seed=int(ev.get("seed", 0)),
    )  # fmt: skip
    print(f"\n== eval {tag}: {model} (T {t}, {cfg.limit} problems x {k})", flush=True)
    return evaluate(cfg)


def temperatures(ev: dict) -> list[float]:
    """The evaluation temperatures: ``temperatures: [1.0, 0.0]`` or the single ``temperature``."""
    return [float(t) for t in ev.get("temperatures", [ev.get("temperature", 1.0)])]


def eval_tag(model: str, t: float, ev: dict) -> str:
    """``sft`` / ``rl`` for the first temperature (as before), ``sft-T0`` ... for the others."""
    return model if t == temperatures(ev)[0] else f"{model}-T{t:g}"


def headroom(recipe: dict, sft_model: Path, out: Path) -> dict | None:
    """The starting model's mean@k / pass@k on held-out problems of the RL distribution (the
    recipe's ``headroom: {problems, k}``): how much a GRPO group of k has to reinforce."""
    spec = recipe.get("headroom")
    if not spec:
        return None
    rl = recipe["rl"]
    name, k = spec.get("benchmark", rl["dataset"]), int(spec.get("k", 8))
    # beside the run folder, not in it: `rl` writes only into an empty folder or its own run
    where = out.parent / f"{out.name}.headroom"
    res = run_eval(recipe.get("eval") or {}, rl, "start", sft_model, where, 1.0, name, int(spec["problems"]), k)
    r = res["benchmarks"][name] if "benchmarks" in res else res[name]
    return {"benchmark": name, "problems": int(spec["problems"]), "k": k, "mean@k": r["mean@k"], "pass@k": r["pass@k"]}


def run_readiness_experiment(recipe: dict) -> dict:
    """E4: worked-solution data -> ``parallel-r1 midtrain`` (stable + decay branches) ->
    ``parallel-r1 rl-readiness`` on the named branches. Each step resumes or reuses its outputs."""
    from parallel_r1.cli import main as cli
    from parallel_r1.data.synthetic import make_problems, worked_solution
    from parallel_r1.io import atomic_write_text, write_jsonl
    from parallel_r1.report import build_report

    out, spec = Path(recipe["out"]), recipe["worked_data"]
    data = Path(spec["path"])
    if not data.exists():
        problems = make_problems(int(spec["problems"]), "easy", seed=int(spec.get("seed", 0)), split="train")
        data.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(data, [{"problem": p.problem, "solution": worked_solution(p)} for p in problems])
    steps = {
        "midtrain": (dict(recipe["midtrain"], output_dir=str(out / "mt")), []),
        "rl-readiness": (
            dict(recipe["readiness"], output_dir=str(out / "readiness")),
            ["--branches", *(f"{b}={out / 'mt' / b / 'final'}" for b in recipe["branches"])],
        ),
    }
    for command, (config, extra) in steps.items():
        config_path = out / f"{command}.yaml"
        atomic_write_text(config_path, yaml.safe_dump(config, sort_keys=False))
        if cli([command, "--config", str(config_path), *extra]) != 0:
            raise RuntimeError(f"parallel-r1 {command} failed (config {config_path})")
    for branch in recipe["branches"]:  # each branch's RL run gets the report page the other experiments get
        branch_dir = out / "readiness" / branch
        atomic_write_text(branch_dir / "report.html", build_report(branch_dir / "rl"))
    return json.loads((out / "readiness" / "readiness.json").read_text())


def run_experiment(path: str) -> dict:
    from parallel_r1.intervals import compare
    from parallel_r1.io import atomic_write_json, atomic_write_text
    from parallel_r1.report import build_report

    recipe = load_recipe(path)
    if recipe.get("kind") == "readiness":
        return run_readiness_experiment(recipe)
    out = Path(recipe["out"])
    ev, rl = recipe.get("eval"), recipe["rl"]
    sft_model = ensure_sft(recipe["sft"])
    room = headroom(recipe, sft_model, out)
    if room:
        print(
            f"starting model on {room['benchmark']}: mean@{room['k']} {room['mean@k']:.3f}, pass@{room['k']} {room['pass@k']:.3f}"
        )
    run_rl(rl, sft_model, out)
    if ev is None:  # a training-curve experiment (E2): the run folder and its report
        summary = {"recipe": path, "headroom": room}
        atomic_write_json(out / "summary.json", summary)
        atomic_write_text(out / "report.html", build_report(out))
        return summary
    name = ev["benchmark"]
    summary = {"recipe": path, "benchmark": name, "headroom": room, "evaluations": {}}
    for t in temperatures(ev):
        sft_tag, rl_tag = eval_tag("sft", t, ev), eval_tag("rl", t, ev)
        # The SFT model's evaluation is shared by every experiment with the same SFT model and eval
        # settings; a lock lets experiments run side by side (the second one waits, then reuses it).
        shared = (
            sft_model.parent
            / "sft_eval"
            / f"{name}-{ev['problems']}x{ev.get('samples', 1)}-seed{ev.get('seed', 0)}-T{t}-L{rl['max_completion_length']}"
        )
        shared.mkdir(parents=True, exist_ok=True)
        with open(shared / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            run_eval(ev, rl, "sft", sft_model, shared, t)
        if not (out / "eval" / sft_tag).exists():
            shutil.copytree(shared / "eval" / "sft", out / "eval" / sft_tag)
        run_eval(ev, rl, rl_tag, out, out, t)
        boot = compare(*(out / "eval" / tag / "completions.jsonl" for tag in (sft_tag, rl_tag)), name,
                       int(ev.get("resamples", 10_000)), int(ev.get("bootstrap_seed", 0)))  # fmt: skip
        results = {
            tag: json.loads((out / "eval" / tag / "results.json").read_text())["benchmarks"][name]
            for tag in (sft_tag, rl_tag)
        }
        summary["evaluations"][f"T{t:g}"] = {
            "temperature": t,
            "accuracy": {m: results[tag]["mean@k"] for m, tag in (("sft", sft_tag), ("rl", rl_tag))},
            "parallel_ratio": {m: results[tag]["parallel_ratio"] for m, tag in (("sft", sft_tag), ("rl", rl_tag))},
            "mean_length": {m: results[tag]["mean_length"] for m, tag in (("sft", sft_tag), ("rl", rl_tag))},
            "difference": boot,
        }
    first = summary["evaluations"][f"T{temperatures(ev)[0]:g}"]
    summary.update({k: first[k] for k in ("accuracy", "parallel_ratio", "mean_length")}, difference=first["difference"])
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "report.html", build_report(out))
    for key, e in summary["evaluations"].items():
        b = e["difference"]
        print(f"\n{name} held-out accuracy at {key} ({b['n_problems']} problems): sft {e['accuracy']['sft']:.3f} -> rl {e['accuracy']['rl']:.3f}; "
              f"difference {b['diff']:+.3f}, 95 % paired bootstrap interval [{b['lo']:+.3f}, {b['hi']:+.3f}]")  # fmt: skip
    return summary


# ----------------------------------------------------------------------------- docs figures


def plots(run_dirs: list[str], img: Path) -> None:
    """E2 (parallel ratio and accuracy per RL step, runs side by side) and E3 (<Parallel> position)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from parallel_r1.analysis import analyze_run

    runs = {Path(d).name: analyze_run(d) for d in run_dirs}
    img.mkdir(parents=True, exist_ok=True)

    def smooth(ys, w=3):
        return [sum(ys[max(0, i - w + 1) : i + 1]) / len(ys[max(0, i - w + 1) : i + 1]) for i in range(len(ys))]

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for name, a in runs.items():
        steps = [s["step"] for s in a["steps"]]
        for ax, key in zip(axes, ("accuracy", "parallel_ratio")):
            ys = [s[key] if s[key] is not None else float("nan") for s in a["steps"]]
            (line,) = ax.plot(steps, ys, alpha=0.3)
            ax.plot(steps, smooth(ys), color=line.get_color(), label=f"{name} (3-step mean)")
    for ax, title in zip(axes, ("rollout accuracy", "parallel ratio (valid block)")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
        ax.set_ylim(-0.03, 1.03)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(img / "exp_e2_curves.png", dpi=80)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3))
    for name, a in runs.items():
        steps = [s["step"] for s in a["steps"]]
        ys = [
            s["mean_parallel_position"] if s["mean_parallel_position"] is not None else float("nan") for s in a["steps"]
        ]
        ax.plot(steps, ys, marker="o", ms=2, label=name)
    ax.set_title("mean relative position of <Parallel> (0 = start)", fontsize=10)
    ax.set_xlabel("RL step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(img / "exp_e3_position.png", dpi=80)
    plt.close(fig)
    for name, a in runs.items():
        t = a["position_trend"]
        print(f"{name}: <Parallel> position first third {t['early']}, last third {t['late']}, shift {t['shift']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe", nargs="*", help="recipes/experiments/*.yaml (run in order)")
    ap.add_argument(
        "--plots",
        nargs="+",
        metavar="RUN_DIR",
        help="draw docs/img/exp_e2_curves.png and exp_e3_position.png from these runs",
    )
    ap.add_argument("--img", default="docs/img")
    a = ap.parse_args(argv)
    for path in a.recipe:
        load_recipe(path)  # every recipe error before any model loads
    for path in a.recipe:
        run_experiment(path)
    if a.plots:
        plots(a.plots, Path(a.img))
    return 0


if __name__ == "__main__":
    sys.exit(main())
