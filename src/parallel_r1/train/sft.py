"""Cold-start SFT on parallel traces, Seen or Unseen (README "Cold start", docs/coldstart.md).

Built on TRL's ``SFTTrainer``. The prompt is the final v3 parallel prompt, through the chat
template when the model has one (:func:`parallel_r1.prompts.build_prompt`); the completion is
the whitespace-normalised trace, to which TRL appends EOS. TRL tokenizes the prompt/completion
pairs and sets prompt labels to -100, so the loss is the token-mean cross-entropy over response
tokens only, as in the paper (its "last token masked" is the usual shift).

Variants: ``seen`` trains with TRL's own causal batch; ``unseen`` swaps the padding mask for the
path-isolating 4-D mask and the shared-start ``position_ids`` (:mod:`parallel_r1.train.collators`).
SFTTrainer's forward hands ``attention_mask`` and ``position_ids`` straight to the backbone, so
a 4-D bool mask goes through with ``attn_implementation="sdpa"`` (eager adds it to the scores); flash-attention
and padding-free / packing would drop it and are refused for ``unseen``.

Run as ``parallel-r1 sft --config recipes/sft_smollm2_cpu.yaml [--field value ...]`` or, for
several processes, ``accelerate launch -m parallel_r1.cli sft --config ...``. Every field of
:class:`ParallelSFTConfig` (and of TRL's ``SFTConfig`` / transformers' ``TrainingArguments``) is
a YAML key and a ``--field`` override (docs/coldstart.md). Library entry point: :func:`train`.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import TrainerCallback
from trl import SFTConfig, SFTTrainer

from ..format import VARIANTS, normalize
from ..io import JsonlAppender, atomic_write_json, atomic_write_text, read_jsonl
from ..prompts import build_prompt
from ..structure import TagIds
from .checkpoints import completion_marker
from .collators import ParallelSFTCollator

SYNTHETIC = ("synthetic_easy", "synthetic_medium", "synthetic_hard")
# the same problems, every other one with a plain step-by-step trace instead of a parallel one: a
# model that may choose not to open a block (the reward ablation of docs/experiments.md, E2)
SYNTHETIC_MIXED = tuple(f"{s}_mixed" for s in SYNTHETIC)


LOSS_NORMALIZERS = ("batch", "micro_batch")


@dataclass
class ParallelSFTConfig(SFTConfig):
    """Cold-start SFT settings: ours below, plus every ``SFTConfig`` / ``TrainingArguments`` field.

    Defaults that differ from TRL's: ``bf16`` is on only when a CUDA device supports it (TRL
    turns it on everywhere), ``activation_checkpointing`` is off (on a CPU it costs a third more
    time for memory we do not need; the GPU recipes turn it on), ``report_to`` is ``none``.
    """

    model: str = field(
        default="smollm2",
        metadata={"help": "Model to fine-tune: a local folder, a hub id, or an alias (`smollm2`)."},
    )
    variant: str = field(
        default="unseen",
        metadata={"help": "`unseen`: paths cannot see each other (4-D mask + shared-start positions); `seen`: causal."},
    )
    train_data: list[str] = field(
        default_factory=lambda: ["synthetic_easy"],
        metadata={
            "help": "Training traces, one or more sources: an SFT jsonl from `coldstart filter` (fields problem, "
            "response), a generate jsonl or the pilot parquet (read like `coldstart filter` does), or "
            "`synthetic_easy` / `synthetic_medium` / `synthetic_hard` (programmatic teacher traces; with `_mixed`, "
            "every other problem gets a plain step-by-step trace instead)."
        },
    )
    train_size: int | None = field(
        default=None,
        metadata={"help": "Rows taken from each source (synthetic sources: how many problems to make; default 1000)."},
    )
    eval_data: list[str] | None = field(
        default=None, metadata={"help": "Held-out traces for eval loss (same kinds of source as train_data)."}
    )
    eval_size: int | None = field(default=None, metadata={"help": "Rows taken from each eval source."})
    template: str = field(
        default="parallel_v3", metadata={"help": "Prompt template name (parallel_r1.prompts.TEMPLATES)."}
    )
    use_chat_template: bool | None = field(
        default=None, metadata={"help": "Wrap the prompt in the chat template; None = when the tokenizer has one."}
    )
    add_tags: bool = field(
        default=True,
        metadata={"help": "Add the six tag tokens (and grow the embeddings) when the tokenizer lacks them."},
    )
    attn_implementation: str = field(
        default="sdpa",
        metadata={
            "help": "Attention kernel; unseen needs `sdpa` (the only one that takes its bool 4-D mask as a mask)."
        },
    )
    loss_normalizer: str = field(
        default="batch",
        metadata={
            "help": "batch: TRL's token mean over the whole accumulated batch on every process (long traces weigh more). micro_batch: verl's SFT (each micro-batch's token mean, divided by the accumulation steps): with per_device_train_batch_size 1 every trace weighs the same, as the official cold start (docs/coldstart.md)."
        },
    )
    use_peft: bool = field(default=False, metadata={"help": "Train LoRA adapters (PEFT) instead of all weights."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA branch."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["all-linear"], metadata={"help": "Modules that get adapters (PEFT names)."}
    )
    format_check_size: int = field(
        default=0,
        metadata={
            "help": "After training, evaluate this many held-out GSM8K test problems with the prompt (an eval "
            "folder `format_check/`) and report the share of completions with valid parallel blocks "
            "(format_check.json). 0 = skip."
        },
    )
    format_check_max_new_tokens: int = field(
        default=384, metadata={"help": "Token budget of each format-check sample."}
    )
    format_check_temperature: float = field(default=0.7, metadata={"help": "Sampling temperature of the format check."})
    format_check_batch_size: int = field(default=16, metadata={"help": "Samples decoded together in the format check."})
    format_check_variant: str = field(
        default="seen",
        metadata={
            "help": "Decoding of the format check: `seen` (plain causal sampling, the model writes every tag) or `unseen`."
        },
    )
    data_dir: str | None = field(
        default=None,
        metadata={"help": "Folder of the shipped data sets (the format check's GSM8K); default: the registry's."},
    )
    activation_checkpointing: bool | None = field(
        default=False, metadata={"help": "Recompute activations in backward."}
    )
    gradient_checkpointing: bool | None = field(
        default=None, metadata={"help": "Deprecated alias of activation_checkpointing."}
    )
    bf16: bool | None = field(default=None, metadata={"help": "bf16 autocast; None = on when CUDA supports bf16."})
    report_to: str | list[str] = field(
        default="none", metadata={"help": "Where to log: `none`, `tensorboard`, `wandb`, ... (transformers)."}
    )
    force: bool = field(
        default=False,
        metadata={
            "help": "Write into output_dir although it holds a run of another recipe (continue it with this one) or is not an sft run folder."
        },
    )

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        if self.loss_normalizer not in LOSS_NORMALIZERS:
            raise ValueError(
                f"loss_normalizer must be one of {', '.join(LOSS_NORMALIZERS)}, got {self.loss_normalizer!r}"
            )
        if self.bf16 is None:
            self.bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
        if self.report_to in (None, [None], []):  # a recipe without report_to: the documented default
            self.report_to = "none"
        if isinstance(self.train_data, str):
            self.train_data = [self.train_data]
        if isinstance(self.eval_data, str):
            self.eval_data = [self.eval_data]
        super().__post_init__()
        from ..devices import check_attention_available, check_unseen_attention

        check_attention_available(self.attn_implementation)
        if self.variant == "unseen":
            if self.packing or self.padding_free:
                raise ValueError(
                    "unseen SFT needs padded batches with a 4-D mask: set packing and padding_free to false"
                )
            check_unseen_attention(self.attn_implementation)


# --------------------------------------------------------------------------------------------- data


def load_traces(source: str, size: int | None = None, data_dir: str | None = None) -> list[dict]:
    """Rows ``{id, source, problem, response}`` from one training source (see ``train_data``)."""
    if source in SYNTHETIC + SYNTHETIC_MIXED:
        from ..data.synthetic import make_problems, plain_trace, teacher_trace

        mixed = source in SYNTHETIC_MIXED
        problems = make_problems(size or 1000, source.split("_")[1], seed=0)
        return [
            dict(
                id=p.id,
                source=source,
                problem=p.problem,
                response=(plain_trace if mixed and i % 2 else teacher_trace)(p),
            )
            for i, p in enumerate(problems)
        ]
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(
            f"training data not found: {source} (a file, or one of {', '.join(SYNTHETIC + SYNTHETIC_MIXED)})"
        )
    if path.suffix == ".jsonl":
        rows = []
        for n, r in enumerate(read_jsonl(path), 1):
            if "status" in r or "problem_id" in r:  # a `coldstart generate` file: filter it first
                raise ValueError(
                    f"{path}:{n}: looks like `coldstart generate` output; run `coldstart filter` on it first"
                )
            for key in ("problem", "response"):
                if not isinstance(r.get(key), str) or not r[key].strip():
                    raise ValueError(f"{path}:{n}: missing or empty field {key!r}")
            rows.append(
                dict(
                    id=r.get("id", f"{path.stem}-{n}"),
                    source=r.get("source", path.stem),
                    problem=r["problem"],
                    response=r["response"],
                )
            )
            if size is not None and len(rows) >= size:
                break
        return rows
    from ..coldstart.filter import read_traces

    rows = [r for r in read_traces(path) if r.get("response")]
    return rows[:size] if size is not None else rows


def build_dataset(rows: list[dict], tokenizer, cfg: ParallelSFTConfig):
    """A prompt/completion ``datasets.Dataset``; rows over ``max_length`` tokens are dropped.

    Dropping (not truncating) follows the paper (truncation="error"): a cut trace would end inside
    a block, which the Unseen layout can only treat as malformed.
    """
    from datasets import Dataset

    prompts = [build_prompt(r["problem"], tokenizer, cfg.template, cfg.use_chat_template) for r in rows]
    completions = [normalize(r["response"]) for r in rows]
    keep = list(range(len(rows)))
    if cfg.max_length is not None and rows:
        texts = [p + c + tokenizer.eos_token for p, c in zip(prompts, completions)]
        lengths = [len(x) for x in tokenizer(texts, add_special_tokens=False)["input_ids"]]
        keep = [i for i, n in enumerate(lengths) if n <= cfg.max_length]
        if len(keep) < len(rows):
            print(f"sft: dropped {len(rows) - len(keep)} of {len(rows)} rows longer than max_length={cfg.max_length}")
    if not keep:
        raise ValueError("no training row fits max_length (or the training data is empty)")
    return Dataset.from_dict(
        {
            "prompt": [prompts[i] for i in keep],
            "completion": [completions[i] for i in keep],
            "id": [str(rows[i]["id"]) for i in keep],
        }
    )


# ------------------------------------------------------------------------------------------ trainer


class ParallelSFTTrainer(SFTTrainer):
    """SFTTrainer whose token count survives a 4-D ``attention_mask``.

    SFTTrainer counts trained tokens as ``attention_mask.sum()``, which for a ``[B,1,L,L]`` mask
    counts visible pairs, not tokens; the collator's ``token_mask`` carries the real count.
    Everything else (fused LM head, token-mean loss over ``num_items_in_batch``, metrics) is TRL's.

    ``loss_normalizer: micro_batch`` makes the model look as if it took no loss kwargs: then
    transformers counts no ``num_items_in_batch``, TRL divides each micro-batch's token sum by its
    own tokens (``sft_trainer.py`` ~1616) and ``Trainer.training_step`` divides by the
    accumulation steps (``trainer.py`` ~2103-2111): verl's SFT loss.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.args.loss_normalizer == "micro_batch":
            self.model_accepts_loss_kwargs = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        token_mask = inputs.pop("token_mask", None)
        before = self._total_train_tokens
        out = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        if token_mask is not None and self.model.training:
            self._total_train_tokens = before + self.accelerator.gather_for_metrics(token_mask.sum()).sum().item()
            self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
        return out


class MetricsLogger(TrainerCallback):
    """Every log line (loss, lr, grad norm, ...) appended to ``output_dir/metrics.jsonl`` as it comes."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            with JsonlAppender(self.path) as f:
                f.write({"step": state.global_step, "epoch": state.epoch, "time": time.time(), **logs})


def prepare_model_and_tokenizer(cfg: ParallelSFTConfig):
    """Load the model in float32 (bf16 is autocast, as the paper's fp32 master weights), add tags if asked."""
    from ..models import add_tag_tokens, has_tag_tokens, load_model, load_tokenizer

    tok = load_tokenizer(cfg.model)
    model = load_model(cfg.model, dtype=torch.float32, attn_implementation=cfg.attn_implementation)
    if not has_tag_tokens(tok):
        if not cfg.add_tags:
            raise ValueError(f"{cfg.model}: the tokenizer lacks the tag tokens and add_tags is false")
        n = add_tag_tokens(model, tok)
        print(f"sft: added {n} tag tokens to {cfg.model}")
    return model, tok


def build_trainer(
    cfg: ParallelSFTConfig, model=None, tokenizer=None, train_rows=None, eval_rows=None
) -> ParallelSFTTrainer:
    """Everything ready to ``.train()``; pass ``model``/``tokenizer``/rows to skip loading them."""
    # Data first: a bad file should fail before minutes of model loading.
    if train_rows is None:
        train_rows = [r for s in cfg.train_data for r in load_traces(s, cfg.train_size)]
    if eval_rows is None and cfg.eval_data:
        eval_rows = [r for s in cfg.eval_data for r in load_traces(s, cfg.eval_size)]
    if model is None or tokenizer is None:
        model, tokenizer = prepare_model_and_tokenizer(cfg)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tags = TagIds.from_tokenizer(tokenizer)
    if cfg.variant == "unseen":  # a model passed in may carry another attention implementation
        from ..devices import check_unseen_attention

        check_unseen_attention(model)
    train_ds = build_dataset(train_rows, tokenizer, cfg)
    eval_ds = build_dataset(eval_rows, tokenizer, cfg) if eval_rows else None
    collator = ParallelSFTCollator(
        pad_token_id=tokenizer.pad_token_id,
        variant=cfg.variant,
        tags=tags if cfg.variant == "unseen" else None,
        pad_to_multiple_of=cfg.pad_to_multiple_of,
    )
    peft_config = None
    if cfg.use_peft:
        from peft import LoraConfig

        target = cfg.lora_target_modules
        peft_config = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=target[0] if target == ["all-linear"] else target,
            task_type="CAUSAL_LM",
            # The six new tag rows must learn even though the embeddings are frozen under LoRA.
            trainable_token_indices=list(tags.as_tuple()),
        )
    trainer = ParallelSFTTrainer(
        model=model,
        args=cfg,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        data_collator=collator,
        peft_config=peft_config,
    )
    trainer.add_callback(MetricsLogger(Path(cfg.output_dir) / "metrics.jsonl"))
    trainer.add_callback(completion_marker())  # last: after every other callback's checkpoint files
    return trainer


# ------------------------------------------------------------------------------------- format check


def format_check(model, tokenizer, cfg: ParallelSFTConfig, out_dir: Path) -> dict:
    """Evaluate held-out GSM8K test problems with the prompt; measure how often the format holds.

    This is :func:`parallel_r1.evaluate.evaluate` on the trained model in memory, into the eval
    folder ``out_dir/format_check`` (``completions.jsonl``, ``results.json``). With
    ``format_check_variant: seen`` (default) it is plain causal sampling, so the model must write
    every tag itself: the strict test of what SFT taught. ``unseen`` runs the orchestrated
    decoding (paths isolated, tags constrained). A completion counts as "valid parallel" when it
    has at least one block and passes the checker.
    """
    from ..evaluate import EvalConfig, engine_generate_fn, evaluate

    ecfg = EvalConfig(
        model=str(out_dir),
        output_dir=str(out_dir / "format_check"),
        benchmarks=["gsm8k"],
        k=1,
        limit=cfg.format_check_size,
        template=cfg.template,
        variant=cfg.format_check_variant,
        max_new_tokens=cfg.format_check_max_new_tokens,
        temperature=cfg.format_check_temperature,
        batch_size=cfg.format_check_batch_size,
        seed=cfg.seed,
        data_dir=cfg.data_dir,
    )
    model.eval()
    res = evaluate(ecfg, engine_generate_fn(model, tokenizer, ecfg), tokenizer, progress=False)["benchmarks"]["gsm8k"]
    rows = list(read_jsonl(Path(ecfg.output_dir) / "completions.jsonl"))
    n = max(len(rows), 1)
    summary = dict(
        n=len(rows),
        valid_parallel_ratio=sum(r["format_ok"] and r["uses_parallel"] for r in rows) / n,
        parallel_ratio=res["parallel_ratio"],  # metrics.behaviour, as every other report
        opens_parallel=res["opens_parallel"],
        format_ok_ratio=1 - res["format_error_rate"],
        accuracy=res["mean@k"],
        finished_ratio=1 - res["clipped_ratio"],
        mean_blocks=res["mean_blocks"],
        mean_length=res["mean_length"],
        variant=cfg.format_check_variant,
        temperature=cfg.format_check_temperature,
        max_new_tokens=cfg.format_check_max_new_tokens,
    )
    atomic_write_json(out_dir / "format_check.json", summary)
    return summary


# ---------------------------------------------------------------------------------------------- run


def save_loss_curve(trainer, out_dir: Path) -> None:
    """``loss_curve.json`` (step, loss) and ``loss_curve.png`` from the trainer's log history."""
    points = [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h]
    atomic_write_json(out_dir / "loss_curve.json", [{"step": step, "loss": loss} for step, loss in points])
    if not points:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(*zip(*points), marker=".")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("train loss (response tokens)")
    ax.set_title(Path(trainer.args.output_dir).name)
    fig.tight_layout()
    fig.savefig(out_dir / "loss_curve.png", dpi=100)
    plt.close(fig)


# config.yaml fields that may differ when a run is re-run (where it is, how it logs and saves)
FREE_FIELDS = (
    "output_dir",
    "logging_dir",
    "resume_from_checkpoint",
    "force",
    "report_to",
    "run_name",
    "disable_tqdm",
    "save_steps",
    "save_total_limit",
    "data_dir",
    "dataloader_num_workers",
    "dataloader_pin_memory",
    "log_level",
    "log_level_replica",
)


def train(cfg: ParallelSFTConfig) -> dict:
    """Train (resuming per ``resume_from_checkpoint``; by default from the newest checkpoint of an
    unfinished run of the same recipe), save the final model + tokenizer, ``config.yaml``, the loss
    curve and (optionally) the format check. Returns ``sft_summary.json``, written last. A finished
    run is left as it is; a changed recipe is refused unless ``force`` (more ``max_steps`` or
    epochs train it further)."""
    import yaml

    from .checkpoints import (
        checkpoint_step,
        config_dict,
        drop_checkpoints_after,
        open_run,
        resume_checkpoint,
        save_final_model,
        truncate_after,
    )

    out_dir = Path(cfg.output_dir)
    state = open_run(
        out_dir,
        "config.yaml",
        config_dict(cfg),
        stage="sft",
        force=cfg.force,
        finished="sft_summary.json",
        free=FREE_FIELDS,
        budget=("max_steps", "num_train_epochs"),
    )
    if state == "finished":
        print(f"sft: {out_dir} is finished; nothing to do", file=sys.stderr)
        return json.loads((out_dir / "sft_summary.json").read_text())
    ckpt = resume_checkpoint(out_dir, cfg.resume_from_checkpoint, auto=True)  # a wrong path fails before any loading
    if cfg.process_index == 0:  # what comes after the checkpoint is logged and saved again by this run
        truncate_after(out_dir / "metrics.jsonl", checkpoint_step(ckpt) if ckpt else 0)
        if ckpt is None or Path(ckpt).parent == out_dir:
            drop_checkpoints_after(out_dir, checkpoint_step(ckpt) if ckpt else 0)
    trainer = build_trainer(cfg)
    if trainer.is_world_process_zero():
        atomic_write_text(out_dir / "config.yaml", yaml.safe_dump(config_dict(cfg), sort_keys=False))
    result = trainer.train(resume_from_checkpoint=ckpt)
    save_final_model(trainer, cfg.output_dir)  # a full checkpoint even under sharded FSDP
    summary = {"train": result.metrics, "num_train_rows": len(trainer.train_dataset), "resumed_from": ckpt}
    if trainer.is_world_process_zero():
        save_loss_curve(trainer, out_dir)
        if cfg.format_check_size > 0:
            model = trainer.model.merge_and_unload() if cfg.use_peft else trainer.model
            summary["format_check"] = format_check(model, trainer.processing_class, cfg, out_dir)
        atomic_write_json(out_dir / "sft_summary.json", summary)
    return summary
