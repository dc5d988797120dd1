"""OctoThinker's stable-then-decay mid-training (``parallel-r1 midtrain``; docs/midtrain.md).

A recipe has one stable stage and any number of decay branches:

* **stable**: a token budget at constant learning rate on a math-heavy mixture (paper: 200B
  tokens, lr 2e-5 for 3B, no warmup);
* **decay** branches (paper: Long, Short, Hybrid; 20B tokens each): each starts from the stable
  stage's final weights (and its AdamW moments, ``carry_optimizer``) with its own mixture and
  decays the learning rate from the stable value to ``min_lr_ratio`` of it (cosine to 10 % in the
  paper; linear as an option) over its own budget. Each is saved under ``OUT/<branch>/final``.

Everything is the transformers ``Trainer``: its ``warmup_stable_decay`` schedule
(``get_wsd_schedule``) gives both shapes (stable: no decay steps; decay: all steps decay, so step
0 runs at the stable learning rate), its checkpoints give resume. Budgets are in tokens and become
``max_steps = tokens // (seq_len * batch_size)``; every row is a full packed ``seq_len`` row, so
tokens seen = steps x seq_len x batch_size exactly. Mixing and streaming are ``datasets``
(mixture.py), packing with document-isolating ``position_ids`` is packing.py.

Resume: re-run the same command. A finished stage (``report.json`` present) is skipped; a stage
killed mid-way restarts from its last ``checkpoint-N`` (model, optimizer, scheduler, step) and the
data position saved beside it (``data_state.json``), so it continues at the same token.

Each stage ends with ``report.json`` and a printed summary: tokens per source against the target
weights, the loss curve, throughput in tokens/s. Library entry point: :func:`train`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..io import atomic_write_json
from .checkpoints import completion_marker, dump_record, last_checkpoint, open_run, save_final_model
from .mixture import SourceConfig

DECAY_TYPES = ("none", "cosine", "linear")
# config.json fields that may differ when a run is re-run (where it is, how it logs and saves)
FREE_FIELDS = ("output_dir", "force", "logging_steps", "save_tokens", "save_total_limit")
# The data position saved beside each checkpoint; a checkpoint without it is not resumed from.
DATA_STATE = "data_state.json"
_SUFFIX = {"k": 10**3, "m": 10**6, "b": 10**9, "t": 10**12}


def parse_tokens(value, what: str = "tokens") -> int:
    """``200B``, ``20b``, ``300k``, ``1.5M``, ``2e5`` or an int -> a token count."""
    if isinstance(value, bool):
        raise ValueError(f"{what}: expected a token count, got {value!r}")
    if isinstance(value, (int, float)):
        return int(value)
    m = re.fullmatch(r"\s*([0-9.eE+-]+)\s*([kKmMbBtT]?)\s*", str(value))
    try:
        return int(float(m.group(1)) * _SUFFIX.get(m.group(2).lower(), 1))
    except (AttributeError, ValueError):
        raise ValueError(f"{what}: cannot read {value!r} as a token count (e.g. 200B, 300k, 2e5)") from None


@dataclass
class StageConfig:
    """One mid-training stage: a token budget, a mixture and a learning-rate shape."""

    name: str = field(metadata={"help": "Stage name; the stage is saved under OUTPUT_DIR/<name>/final."})
    tokens: int = field(metadata={"help": "Token budget (e.g. `200B`, `300k`); rounded down to whole optimizer steps."})
    mixture: list[SourceConfig] = field(metadata={"help": "Sources with token weights (see SourceConfig)."})
    decay: str = field(
        default="none",
        metadata={
            "help": "`none` = constant lr (stable stage); `cosine` (paper) or `linear` decay over the whole budget."
        },
    )
    min_lr_ratio: float = field(
        default=0.1, metadata={"help": "Final lr as a fraction of the stage's starting lr (paper: 10 %)."}
    )
    warmup_tokens: int = field(
        default=0, metadata={"help": "Linear warmup at the start of the stage, in tokens (paper: 0)."}
    )
    learning_rate: float | None = field(
        default=None,
        metadata={"help": "Starting lr of this stage; default the recipe's `learning_rate` (the stable lr)."},
    )
    init_from: str | None = field(
        default=None,
        metadata={
            "help": "Weights to start from. Default: the base model for the stable stage, the stable stage's final checkpoint for a decay stage."
        },
    )

    def __post_init__(self):
        self.tokens = parse_tokens(self.tokens, f"stage {self.name!r}: tokens")
        self.warmup_tokens = parse_tokens(self.warmup_tokens, f"stage {self.name!r}: warmup_tokens")
        if self.decay not in DECAY_TYPES:
            raise ValueError(f"stage {self.name!r}: decay must be one of {DECAY_TYPES}, got {self.decay!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"stage {self.name!r}: min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        self.mixture = [
            s if isinstance(s, SourceConfig) else _build(SourceConfig, s, f"stage {self.name!r} source")
            for s in self.mixture
        ]


@dataclass
class MidtrainConfig:
    """A stable-then-decay recipe (docs/midtrain.md). Shared optimisation settings apply to all stages."""

    model: str = field(metadata={"help": "Base model: hub id, local folder or alias (`smollm2`)."})
    output_dir: str = field(metadata={"help": "Run folder; stages go to OUTPUT_DIR/<stage name>/."})
    stable: StageConfig | None = field(
        default=None,
        metadata={
            "help": "The constant-lr stage (omit to decay from an existing checkpoint given as each branch's `init_from`)."
        },
    )
    decay: list[StageConfig] = field(
        default_factory=list,
        metadata={"help": "Decay branches, each from the stable checkpoint (paper: long, short, hybrid)."},
    )
    seq_len: int = field(default=2048, metadata={"help": "Packed row length in tokens (paper: 8192)."})
    batch_size: int = field(
        default=8, metadata={"help": "Rows per optimizer step over all devices (paper: 512, i.e. 4.19M tokens)."}
    )
    micro_batch_size: int = field(
        default=8, metadata={"help": "Rows per device per forward pass; gradient accumulation makes up the rest."}
    )
    learning_rate: float = field(
        default=2e-5,
        metadata={"help": "Stable lr and the start of every decay (paper: 5e-5 / 2e-5 / 1e-5 for 1B / 3B / 8B)."},
    )
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay (paper: 0.1)."})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1."})
    adam_beta2: float = field(
        default=0.95, metadata={"help": "AdamW beta2 (the paper gives none; 0.95 is the usual LLM pre-training value)."}
    )
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping."})
    carry_optimizer: bool = field(
        default=True,
        metadata={"help": "Start each decay branch with the stable stage's AdamW state, as a continued run would."},
    )
    bf16: bool = field(default=False, metadata={"help": "bfloat16 mixed precision (GPU recipes)."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Trade compute for memory."})
    attn_implementation: str = field(
        default="sdpa",
        metadata={
            "help": "`sdpa`, `eager`, `flash_attention_2` (needs the `flash-attn` extra and a CUDA GPU), ...; all honour packed position_ids."
        },
    )
    save_tokens: int | None = field(
        default=None, metadata={"help": "Checkpoint interval in tokens (default: about 10 checkpoints per stage)."}
    )
    save_total_limit: int = field(
        default=2, metadata={"help": "Checkpoints kept per stage (the last one carries the data position)."}
    )
    logging_steps: int = field(default=10, metadata={"help": "Log loss and lr every N optimizer steps."})
    estimate_docs: int = field(
        default=64,
        metadata={
            "help": "Documents per source used to measure its mean length (token weights -> document probabilities)."
        },
    )
    seed: int = field(default=0, metadata={"help": "Seeds shuffling, mixture sampling and training."})
    token_scale: float = field(
        default=1.0,
        metadata={
            "help": "Multiply every token budget (stage tokens, warmup, save interval) by this; e.g. 0.05 for a quick look at a recipe on a slow machine. Recorded in config.json."
        },
    )
    force: bool = field(
        default=False,
        metadata={
            "help": "Write into output_dir although it holds a run of another recipe (continue it with this one) or is not a midtrain run folder."
        },
    )

    def __post_init__(self):
        if isinstance(self.stable, dict):
            self.stable = _build(StageConfig, self.stable, "stable stage")
        self.decay = [d if isinstance(d, StageConfig) else _build(StageConfig, d, "decay stage") for d in self.decay]
        if self.save_tokens is not None:
            self.save_tokens = parse_tokens(self.save_tokens, "save_tokens")
        if not (isinstance(self.token_scale, (int, float)) and self.token_scale > 0):
            raise ValueError(f"token_scale must be a positive number, got {self.token_scale!r}")
        if self.token_scale != 1:
            for s in self.stages:
                s.tokens, s.warmup_tokens = int(s.tokens * self.token_scale), int(s.warmup_tokens * self.token_scale)
            if self.save_tokens is not None:
                self.save_tokens = max(1, int(self.save_tokens * self.token_scale))
        from ..devices import check_attention_available

        check_attention_available(self.attn_implementation)
        names = [s.name for s in self.stages]
        if not names:
            raise ValueError("the recipe has no stages (give `stable` and/or `decay`)")
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        if self.stable is not None and self.stable.decay != "none":
            raise ValueError(
                f"the stable stage must have decay: none (got {self.stable.decay!r}); put decays under `decay`"
            )
        if self.batch_size % self.micro_batch_size:
            raise ValueError(
                f"batch_size {self.batch_size} is not a multiple of micro_batch_size {self.micro_batch_size}"
            )

    @property
    def stages(self) -> list[StageConfig]:
        return ([self.stable] if self.stable else []) + list(self.decay)

    @property
    def tokens_per_step(self) -> int:
        return self.seq_len * self.batch_size


def _build(cls, data, what: str):
    if not isinstance(data, dict):
        raise ValueError(f"{what}: expected a mapping, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise KeyError(f"{what}: unknown field(s) {unknown}; known: {sorted(known)}")
    try:
        return cls(**data)
    except TypeError as e:
        raise ValueError(f"{what}: {e}") from None


def load_config(path: str | os.PathLike, **overrides) -> MidtrainConfig:
    """The recipe at ``path``; ``overrides`` (top-level fields; None = keep the recipe's) win."""
    from ..io import load_yaml

    data = load_yaml(path)
    data.update({k: v for k, v in overrides.items() if v is not None})
    return _build(MidtrainConfig, data, str(path))


def stage_steps(cfg: MidtrainConfig, stage: StageConfig) -> tuple[int, int]:
    """(optimizer steps, warmup steps) of a stage; a budget below one batch names the stage."""
    steps = stage.tokens // cfg.tokens_per_step
    if steps < 1:
        raise ValueError(
            f"stage {stage.name!r}: token budget {stage.tokens:,} is smaller than one batch "
            f"(batch_size {cfg.batch_size} x seq_len {cfg.seq_len} = {cfg.tokens_per_step:,} tokens)"
        )
    warmup = stage.warmup_tokens // cfg.tokens_per_step
    if warmup > steps:
        raise ValueError(
            f"stage {stage.name!r}: warmup_tokens {stage.warmup_tokens:,} exceed the budget {stage.tokens:,}"
        )
    return steps, warmup


def scheduler_kwargs(stage: StageConfig, steps: int, warmup: int) -> dict:
    """``lr_scheduler_kwargs`` for transformers' ``warmup_stable_decay``: a stable stage has no
    decay steps (constant after warmup); a decay stage decays over every step after warmup."""
    if stage.decay == "none":
        return {"num_decay_steps": 0, "min_lr_ratio": stage.min_lr_ratio}
    return {"num_decay_steps": steps - warmup, "decay_type": stage.decay, "min_lr_ratio": stage.min_lr_ratio}


def _training_callback():
    from transformers import TrainerCallback

    class MidtrainCallback(TrainerCallback):
        """Saves the data position with each checkpoint, records the lr of every optimizer
        step, and (for a fresh decay branch) loads the stable stage's optimizer state."""

        def __init__(self, stream, rows_per_step: int, optimizer_from: Path | None):
            self.stream = stream
            self.rows_per_step = rows_per_step
            self.optimizer_from = optimizer_from
            self.lrs: dict[int, float] = {}

        def on_train_begin(self, args, state, control, optimizer=None, **kw):
            if self.optimizer_from is None or state.global_step > 0:
                return  # a resumed stage already has its own optimizer state
            import torch

            path = self.optimizer_from / "optimizer.pt"
            if not path.exists():
                raise FileNotFoundError(f"carry_optimizer: no optimizer state at {path}")
            keep = [(g["lr"], g.get("initial_lr", g["lr"])) for g in optimizer.param_groups]
            optimizer.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            for g, (lr, initial) in zip(optimizer.param_groups, keep):  # this stage's lr, not the stable one
                g["lr"], g["initial_lr"] = lr, initial

        def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kw):
            self.lrs[state.global_step + 1] = optimizer.param_groups[0]["lr"]

        def on_save(self, args, state, control, **kw):
            if state.is_world_process_zero:
                ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                atomic_write_json(ckpt / DATA_STATE, self.stream.state_at(state.global_step * self.rows_per_step))

    return MidtrainCallback


def _record_callback(path: Path, text: str):
    """A ``TrainerCallback`` writing the run record ``path`` when training begins (main process)."""
    from transformers import TrainerCallback

    from ..io import atomic_write_text

    class WriteRecord(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            if state.is_world_process_zero:
                atomic_write_text(path, text)

    return WriteRecord()


def run_stage(
    cfg: MidtrainConfig, stage: StageConfig, init: str, out: Path, optimizer_from: Path | None = None, callbacks=()
) -> dict:
    """Train one stage to its token budget (resuming if it was interrupted); return its report."""
    import torch
    from transformers import Trainer, TrainingArguments, default_data_collator

    from ..models import load_model, load_tokenizer
    from .mixture import build_mixture
    from .packing import PackedStream, prepare_for_packing

    out = Path(out)
    if (out / "report.json").exists():
        print(f"[midtrain] stage {stage.name!r} already finished: {out / 'report.json'}")
        return json.loads((out / "report.json").read_text())
    steps, warmup = stage_steps(cfg, stage)
    world = max(1, int(os.environ.get("WORLD_SIZE", 1)))
    if cfg.batch_size % (cfg.micro_batch_size * world):
        raise ValueError(
            f"batch_size {cfg.batch_size} is not divisible by micro_batch_size x devices = {cfg.micro_batch_size * world}"
        )
    accum = cfg.batch_size // (cfg.micro_batch_size * world)
    lr = stage.learning_rate if stage.learning_rate is not None else cfg.learning_rate

    tokenizer = load_tokenizer(init)
    model = load_model(init, attn_implementation=cfg.attn_implementation)
    prepare_for_packing(model)
    mix = build_mixture(
        stage.mixture, tokenizer, seed=cfg.seed, estimate_docs=cfg.estimate_docs, stage=f"stage {stage.name!r}"
    )
    stream = PackedStream(mix.docs, cfg.seq_len, len(mix.names), history=4 * cfg.batch_size + 64)
    resume = last_checkpoint(out, needs=DATA_STATE)
    if resume is not None:
        stream.load_state_dict(json.loads((resume / DATA_STATE).read_text()))
        step = int(resume.name.split("-")[1])
        print(f"[midtrain] stage {stage.name!r}: resuming from {resume.name} at {step * cfg.tokens_per_step:,} tokens")
    save_steps = max(1, (cfg.save_tokens // cfg.tokens_per_step) if cfg.save_tokens else math.ceil(steps / 10))
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=cfg.micro_batch_size,
        gradient_accumulation_steps=accum,
        learning_rate=lr,
        weight_decay=cfg.weight_decay,
        adam_beta1=cfg.adam_beta1,
        adam_beta2=cfg.adam_beta2,
        max_grad_norm=cfg.max_grad_norm,
        lr_scheduler_type="warmup_stable_decay",
        lr_scheduler_kwargs=scheduler_kwargs(stage, steps, warmup),
        warmup_steps=warmup,
        bf16=cfg.bf16,
        activation_checkpointing=cfg.gradient_checkpointing,
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=cfg.save_total_limit,
        ignore_data_skip=True,  # the stream restores its own position (data_state.json)
        dataloader_num_workers=0,  # the stream's position lives in this process
        dataloader_pin_memory=torch.cuda.is_available(),
        report_to="none",
        seed=cfg.seed,
        disable_tqdm=True,
        # no accelerator: processes of a launch join over gloo (else accelerate sees one process each)
        use_cpu=not torch.accelerator.is_available(),
    )
    cb_cls = _training_callback()
    cb = cb_cls(stream, cfg.batch_size, optimizer_from if resume is None else None)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=stream,
        data_collator=default_data_collator,
        processing_class=tokenizer,
        callbacks=[cb, *callbacks, completion_marker()],
    )
    start_step = trainer.state.global_step if resume is None else int(resume.name.split("-")[1])
    t0 = time.time()
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    runtime = result.metrics.get("train_runtime", time.time() - t0)

    # Several processes: every rank takes part in the save (a collective under FSDP), but only
    # rank 0 touches the folders, between barriers (two ranks renaming final.tmp race and crash).
    final = out / "final"
    tmp = out / "final.tmp"
    main = trainer.is_world_process_zero()
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    model.config.use_cache = True  # the saved checkpoint is for generation again
    save_final_model(trainer, tmp)
    trainer.accelerator.wait_for_everyone()

    if main:  # the main process reads the stream and dispatches the batches: it knows the position
        seen = stream.state_at(trainer.state.global_step * cfg.batch_size)["tokens_per_source"]
        report = stage_report(
            cfg,
            stage,
            init,
            steps,
            lr,
            mix,
            seen,
            trainer.state.log_history,
            cb.lrs,
            (trainer.state.global_step - start_step) * cfg.tokens_per_step,
            runtime,
        )
        report["checkpoint"] = str(final)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        atomic_write_json(out / "report.json", report)
        print(format_report(report))
    trainer.accelerator.wait_for_everyone()  # the next stage, on every rank, reads final/
    report = json.loads((out / "report.json").read_text())
    del trainer, model
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return report


def stage_report(
    cfg, stage, init, steps, lr, mix, tokens_per_source, log_history, lrs, tokens_this_run, runtime
) -> dict:
    total = sum(tokens_per_source) or 1
    curve = [
        {"step": h["step"], "tokens": h["step"] * cfg.tokens_per_step, "loss": h["loss"], "lr": h.get("learning_rate")}
        for h in log_history
        if "loss" in h and "step" in h
    ]
    return {
        "stage": stage.name,
        "init_from": str(init),
        "decay": stage.decay,
        "min_lr_ratio": stage.min_lr_ratio,
        "learning_rate": lr,
        "steps": steps,
        "seq_len": cfg.seq_len,
        "batch_size": cfg.batch_size,
        "tokens_target": stage.tokens,
        "tokens_seen": steps * cfg.tokens_per_step,
        "sources": [
            {
                "name": name,
                "path": src.path,
                "target_weight": round(w, 6),
                "tokens": n,
                "share": round(n / total, 6),
                "doc_probability": round(p, 6),
                "mean_doc_tokens": round(m, 2),
            }
            for name, src, w, n, p, m in zip(
                mix.names, stage.mixture, mix.weights, tokens_per_source, mix.probabilities, mix.mean_doc_tokens
            )
        ],
        "loss_curve": curve,
        "final_loss": curve[-1]["loss"] if curve else None,
        "lr_per_step": {str(k): v for k, v in sorted(lrs.items())},
        "train_runtime_s": round(runtime, 2),
        "throughput_tokens_per_s": round(tokens_this_run / runtime, 1) if runtime > 0 else None,
    }


def format_report(r: dict) -> str:
    lines = [
        f"== stage {r['stage']}: {r['tokens_seen']:,} tokens in {r['steps']} steps "
        f"(target {r['tokens_target']:,}), lr {r['learning_rate']:g} decay={r['decay']}, "
        f"{r['throughput_tokens_per_s']} tokens/s",
        f"{'source':<24} {'target':>8} {'seen':>8} {'tokens':>12}",
    ]
    for s in r["sources"]:
        lines.append(f"{s['name']:<24} {s['target_weight']:>8.3f} {s['share']:>8.3f} {s['tokens']:>12,}")
    curve = r["loss_curve"]
    if curve:
        pick = curve if len(curve) <= 8 else [curve[round(i * (len(curve) - 1) / 7)] for i in range(8)]
        lines.append("loss: " + "  ".join(f"{c['tokens']:,}:{c['loss']:.3f}" for c in pick))
    return "\n".join(lines)


def train(cfg: MidtrainConfig, only: list[str] | None = None) -> dict[str, dict]:
    """Stable stage, then every decay branch from its final checkpoint. Returns reports by stage."""
    out = Path(cfg.output_dir)
    names = [s.name for s in cfg.stages]
    for n in only or []:
        if n not in names:
            raise KeyError(f"--stages: no stage {n!r} in the recipe (stages: {names})")
    record = dataclasses.asdict(cfg)
    open_run(out, "config.json", record, stage="midtrain", force=cfg.force, free=FREE_FIELDS)
    # config.json is written once a stage starts training: a run that fails before leaves nothing
    write_record = _record_callback(out / "config.json", dump_record(out / "config.json", record))
    reports = {}
    stable_dir = out / cfg.stable.name if cfg.stable else None
    if cfg.stable and (not only or cfg.stable.name in only):
        reports[cfg.stable.name] = run_stage(
            cfg, cfg.stable, cfg.stable.init_from or cfg.model, stable_dir, callbacks=[write_record]
        )
    for stage in cfg.decay:
        if only and stage.name not in only:
            continue
        if stage.init_from:
            init, opt = stage.init_from, None
        elif stable_dir is not None:
            init = stable_dir / "final"
            if not (init / "config.json").exists():
                raise FileNotFoundError(
                    f"decay stage {stage.name!r} needs the stable checkpoint {init}; run the stable stage first"
                )
            opt = last_checkpoint(stable_dir, needs=DATA_STATE) if cfg.carry_optimizer else None
        else:
            raise ValueError(f"decay stage {stage.name!r}: no stable stage in the recipe, so give it `init_from`")
        reports[stage.name] = run_stage(
            cfg, stage, str(init), out / stage.name, optimizer_from=opt, callbacks=[write_record]
        )
    return reports
