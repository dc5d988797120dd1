"""GRPO with parallel-thinking rewards and schedules, on TRL's GRPOTrainer (docs/rl.md).

Library entry point: :func:`train` (``parallel-r1 rl --config recipes/rl_tiny_unseen.yaml
[--field value ...]`` calls it; so do the demo and ``rl-readiness``). Everything of GRPO itself (advantages, PPO-clip with clip-higher, token-mean
loss, no KL, optimiser, accelerate/DeepSpeed/FSDP, vLLM) is TRL's; :class:`RLConfig` adds the
Parallel-R1 fields below. Trainer pieces live in :mod:`parallel_r1.train.rl_trainer`.

Run folder (``output_dir``): ``config.yaml``, ``rollouts.jsonl``, ``metrics.jsonl``,
``checkpoint-N/`` (docs/INTERFACES.md). Re-running the same command resumes from the last
checkpoint: the reward schedule continues at the same RL step, the data order is the same, and
rows written after that checkpoint are dropped before new ones are appended.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from transformers.trainer_utils import SaveStrategy
from trl import GRPOConfig

from ..format import VARIANTS

BACKENDS = ("engine", "trl", "vllm")


@dataclass
class RLConfig(GRPOConfig):
    """GRPO settings (all of TRL's ``GRPOConfig``) plus the Parallel-R1 ones.

    Batch arithmetic (TRL): completions per RL step = ``generation_batch_size`` =
    prompts per step × ``num_generations``; completions per optimiser step =
    ``per_device_train_batch_size`` × processes × ``gradient_accumulation_steps``. Their ratio
    (× ``num_iterations``) is the number of optimiser steps per RL step (2 in the paper:
    256 prompts × 8 = 2048 completions, mini-batch 128 prompts = 1024).

    As TRL's configs do, the config checks itself and derives its dependent fields when it is
    made (``__post_init__``): a bad recipe fails before anything loads, and the ``config.yaml``
    of a run is the config it ran with. A new field: a ``field(...)`` with its help below, its
    check in :meth:`_check`.
    """

    model: str = field(
        default="smollm2",
        metadata={
            "help": "Policy: local folder, hub id, or alias (`smollm2`). Must have the six tag tokens for the parallel variants."
        },
    )
    dataset: str = field(
        default="synthetic_easy",
        metadata={
            "help": "Training problems: a name known to parallel_r1.data.registry (gsm8k, dapo_math_17k, synthetic_easy, ...) or a file path."
        },
    )
    dataset_split: str | None = field(
        default=None, metadata={"help": "Split of `dataset` (registry default when unset)."}
    )
    dataset_limit: int | None = field(default=None, metadata={"help": "Use only the first N problems."})
    template: str = field(
        default="parallel_v3",
        metadata={"help": "Prompt template (parallel_r1.prompts.TEMPLATES): parallel_v3, baseline, orz, ..."},
    )
    reward: str = field(
        default="accuracy",
        metadata={
            "help": "Reward schedule (rewards.SCHEDULES: accuracy = S1, alternating = S2, scaffold, ...) or any single reward name in rewards.REWARDS (e.g. boxed_pm1)."
        },
    )
    grader: str | None = field(
        default=None,
        metadata={
            "help": "Correctness judge (parallel_r1.grading.GRADERS); None = the reward's own (the paper's minerva_exact; math_verify for boxed_pm1)."
        },
    )
    alternating_window: int = field(
        default=10, metadata={"help": "Alternating schedule: window length in RL steps (paper 10)."}
    )
    accuracy_steps: int = field(
        default=8,
        metadata={
            "help": "Alternating schedule: accuracy-only steps at the start of each window (paper 8); the rest use the parallel-aware reward."
        },
    )
    scaffold_steps: int = field(
        default=200,
        metadata={"help": "Scaffold schedule: RL steps of alternating reward before accuracy-only (paper 200)."},
    )
    step_offset: int = field(
        default=0,
        metadata={
            "help": "RL steps already done before this run's model (when continuing from another run's checkpoint, e.g. the scaffold's second stage); schedules see step_offset + local step."
        },
    )
    rl_steps: int = field(
        default=30,
        metadata={
            "help": "RL steps (generations) to run in this run; max_steps = rl_steps × optimiser steps per RL step."
        },
    )
    save_every: int = field(default=10, metadata={"help": "Checkpoint every N RL steps (paper save_freq 10)."})
    auto_resume: bool = field(
        default=True, metadata={"help": "Resume from the last checkpoint-N in output_dir when there is one."}
    )
    force: bool = field(
        default=False,
        metadata={
            "help": "Write into output_dir although it holds a run of another recipe (continue it with this one) or is not an rl run folder."
        },
    )
    variant: str = field(
        default="unseen",
        metadata={
            "help": "`unseen`: orchestrated rollouts, path-isolating mask and shared-start positions in the loss. `seen`: free generation, causal."
        },
    )
    rollout_backend: str = field(
        default="engine",
        metadata={
            "help": "`engine`: parallel_r1.decoding.ParallelEngine through TRL's rollout_func (exact log-probs, both variants). `vllm`: the paper's separate-request loop (Unseen) or plain sampling (Seen) on TRL's vLLM (vllm_mode colocate or server; GPU, needs the [vllm] extra; rollout log-probs are vLLM's, see vllm_importance_sampling_*). `trl`: TRL's own generation (transformers or vLLM with use_vllm), seen variant only."
        },
    )
    vllm_importance_sampling_mode: str = field(
        default="token_truncate",
        metadata={
            "help": "TRL's correction of the rollout/trainer mismatch with rollout_backend: vllm (on unless vllm_importance_sampling_correction: false): token_truncate (truncated IS, per token, ratios capped at vllm_importance_sampling_clip_max) | token_mask | sequence_truncate | sequence_mask. TRL's default is sequence_mask; token_truncate here because the Unseen loop's tokens after a block are off-policy by construction, and a sequence-level mask would drop most sequences that use a block."
        },
    )
    num_paths: int = field(default=2, metadata={"help": "Paths per parallel block (Unseen rollouts)."})
    max_blocks: int = field(
        default=4,
        metadata={
            "help": "Max parallel blocks per completion; generation stops after the last block's summary (paper 4)."
        },
    )
    max_path_tokens: int = field(
        default=4096, metadata={"help": "Max tokens per path (paper max_path_response_length 4096)."}
    )
    path_temperature: float | None = field(
        default=1.0, metadata={"help": "Temperature forced on paths (paper 1.0); None = use `temperature`."}
    )
    max_response_schedule: dict | str | None = field(
        default=None,
        metadata={
            "help": "Staged max response length, RL step -> tokens, e.g. {0: 2048, 100: 4096, 160: 8192} (OctoThinker). Unset = max_completion_length throughout."
        },
    )
    clip_ratio_high_schedule: dict | str | None = field(
        default=None,
        metadata={
            "help": "epsilon_high (clip-higher) by RL step, e.g. {0: 0.28, 201: 0.2} for the scaffold run that keeps going after its alternating stage (paper: 0.28 in S2, back to 0.2 for the accuracy stage). Unset = epsilon_high throughout."
        },
    )
    train_injected: bool = field(
        default=True,
        metadata={
            "help": "Train on the tags the Unseen engine injects (<Path>, </Parallel>, <Summary>, ...), as the paper does (response_mask all 1)."
        },
    )
    rollout_batch_size: int = field(
        default=64,
        metadata={
            "help": "Completions the rollout engine decodes together per process (one batch row each; a block's paths share their row). Larger is faster on accelerators until the key/value cache runs out of memory."
        },
    )
    rollout_max_cache_bytes: int | None = field(
        default=None,
        metadata={
            "help": 'Memory budget of the rollout engine\'s key/value cache in bytes per process: a rollout batch whose estimated cache exceeds it is decoded in smaller chunks (docs/rl.md, "Capacity"). None = rollout_batch_size only.'
        },
    )
    rollout_seed: int | None = field(
        default=None,
        metadata={"help": "Seed of the rollout sampler (per RL step and rank); None = not seeded, as the paper."},
    )

    drop_zero_advantage_groups: bool = field(
        default=False,
        metadata={
            "help": "Leave the groups whose rewards are all equal (zero advantage, zero policy gradient) out of the loss forward/backward; the token-mean normaliser then counts the trained tokens only (DAPO's; docs/rl.md). On in the CPU recipes."
        },
    )
    num_informative_groups: int | None = field(
        default=None,
        metadata={
            "help": "Dynamic sampling (DAPO's filter_groups, OctoThinker's dynamic_remove_easy_sample): keep generating rounds of fresh prompt groups until an RL step holds this many groups with unequal rewards (at most max_generation_rounds rounds), then train on exactly those. Implies drop_zero_advantage_groups. None = one round."
        },
    )
    max_generation_rounds: int = field(
        default=4,
        metadata={
            "help": "Dynamic sampling: generation rounds per RL step at most (each of generation_batch_size completions); a step that still lacks informative groups trains on those it has."
        },
    )
    rollout_logprobs_as_old: bool = field(
        default=True,
        metadata={
            "help": "Engine rollouts: use the rollout's log-probs as the old policy's instead of TRL's separate no-grad forward over the batch (verl's rollout-log-prob mode), while the measured rollout/trainer gap stays within rollout_logprob_tolerance; the first step and any step after a larger gap run the forward. Logged as old_logprobs (rollout | forward | loss)."
        },
    )
    rollout_logprob_tolerance: float = field(
        default=1e-3,
        metadata={
            "help": "Largest |rollout - trainer| log-prob gap (max over the step's measured tokens) at which rollout_logprobs_as_old trusts the rollout's log-probs (fp32 engine: ~1e-5; bf16 and vLLM are above it and fall back to the forward)."
        },
    )
    data_dir: str | None = field(
        default=None,
        metadata={
            "help": "Folder of the shipped data sets for a known `dataset` name (default: the registry's, ../shared/data)."
        },
    )
    # Derived in __post_init__ (not settable): optimiser steps per RL step.
    opt_steps_per_rl: int = field(default=0, init=False, metadata={"help": "Optimiser steps per RL step (derived)."})

    def __post_init__(self):
        for name in ("max_response_schedule", "clip_ratio_high_schedule"):
            if isinstance(getattr(self, name), str):
                setattr(self, name, yaml.safe_load(getattr(self, name)))
        if self.rollout_backend == "vllm":
            self.use_vllm = True  # TRL then builds its vLLM (colocate or server) and syncs weights into it each step
        if self.num_informative_groups is not None:
            self.drop_zero_advantage_groups = True  # dynamic sampling trains on informative groups only
        self._check()
        super().__post_init__()  # TRL derives steps_per_generation from the batch sizes
        self._check_dynamic_sampling()
        # The trainer counts optimiser steps; the recipe counts RL steps (generations). Deriving
        # the optimiser-step fields here (not when the trainer is built) makes the config.yaml
        # written to the run folder the exact config the run used.
        self.opt_steps_per_rl = opt_steps_per_rl(self)
        self.max_steps = self.rl_steps * self.opt_steps_per_rl
        self.logging_steps = self.opt_steps_per_rl  # one log (= one metrics.jsonl row) per RL step
        self.save_strategy = SaveStrategy.STEPS
        self.save_steps = self.save_every * self.opt_steps_per_rl  # checkpoints only at RL-step boundaries
        if self.rollout_backend in ("engine", "vllm"):
            # TRL pads completions to max_completion_length: the longest stage of the schedule
            self.max_completion_length = max(length_schedule(self).values())

    def _check(self) -> None:
        """Every recipe error that needs no model: raised when the config is made."""
        from .. import grading, rewards
        from ..prompts import get_template

        if self.grader is not None and self.grader not in grading.GRADERS:
            raise ValueError(f"grader: unknown {self.grader!r}; known: {', '.join(grading.GRADERS)}")
        if self.reward not in rewards.SCHEDULES and self.reward not in rewards.REWARDS:
            raise ValueError(
                f"reward: unknown name {self.reward!r}; schedules: {', '.join(sorted(rewards.SCHEDULES))}; "
                f"rewards: {', '.join(sorted(rewards.REWARDS))}"
            )
        for name in ("rl_steps", "save_every", "alternating_window"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be a positive number of RL steps, got {getattr(self, name)}")
        for name in ("scaffold_steps", "step_offset", "accuracy_steps", "max_blocks", "max_path_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if self.accuracy_steps > self.alternating_window:
            raise ValueError(
                f"accuracy_steps: {self.accuracy_steps} is more than alternating_window {self.alternating_window}"
            )
        if self.variant not in VARIANTS:
            raise ValueError(f"variant: {self.variant!r} is not one of {', '.join(VARIANTS)}")
        if self.rollout_backend not in BACKENDS:
            raise ValueError(f"rollout_backend: {self.rollout_backend!r} is not one of {', '.join(BACKENDS)}")
        if self.rollout_backend == "trl" and self.variant == "unseen":
            raise ValueError(
                "rollout_backend: `trl` generates freely; the unseen variant needs the orchestrated engine (rollout_backend: engine)"
            )
        if self.rollout_backend == "trl" and self.max_response_schedule:
            raise ValueError("max_response_schedule: needs rollout_backend: engine")
        if self.rollout_backend == "vllm":
            self._check_vllm()
        elif self.use_vllm and self.rollout_backend == "engine":
            raise ValueError("use_vllm: the engine backend does not generate on vLLM; set rollout_backend: vllm")
        if self.num_paths < 2:
            raise ValueError(f"num_paths: a block needs at least 2 paths, got {self.num_paths}")
        if self.rollout_batch_size <= 0:
            raise ValueError(f"rollout_batch_size: must be > 0 completions, got {self.rollout_batch_size}")
        if self.rollout_max_cache_bytes is not None and self.rollout_max_cache_bytes <= 0:
            raise ValueError(f"rollout_max_cache_bytes: must be > 0 bytes, got {self.rollout_max_cache_bytes}")
        try:
            self.max_response_schedule = _int_keys(self.max_response_schedule, int)
            self.clip_ratio_high_schedule = _int_keys(self.clip_ratio_high_schedule, float)
        except (TypeError, ValueError, AttributeError):
            raise ValueError(
                "max_response_schedule / clip_ratio_high_schedule: expected a mapping RL step -> value, "
                f"got {self.max_response_schedule!r} / {self.clip_ratio_high_schedule!r}"
            ) from None
        for k, v in length_schedule(self).items():
            if k < 0 or v <= 0:
                raise ValueError(f"max_response_schedule: step {k} -> {v}: steps must be >= 0 and lengths > 0")
        for k, v in (self.clip_ratio_high_schedule or {}).items():
            if k < 0 or not 0 <= v < 10:
                raise ValueError(f"clip_ratio_high_schedule: step {k} -> {v}: steps must be >= 0 and values in [0, 10)")
        get_template(self.template)

    def _check_dynamic_sampling(self) -> None:
        """Needs TRL's derived batch sizes: an extra round gives each process whole groups."""
        if self.max_generation_rounds < 1:
            raise ValueError(f"max_generation_rounds: must be >= 1, got {self.max_generation_rounds}")
        if not 0 <= self.rollout_logprob_tolerance:
            raise ValueError(f"rollout_logprob_tolerance: must be >= 0, got {self.rollout_logprob_tolerance}")
        if self.num_informative_groups is None:
            return
        groups = self.generation_batch_size // self.num_generations
        if not 1 <= self.num_informative_groups <= groups:
            raise ValueError(
                f"num_informative_groups: must be between 1 and the {groups} prompt groups a generation round makes "
                f"(generation_batch_size {self.generation_batch_size} / num_generations {self.num_generations}), "
                f"got {self.num_informative_groups}"
            )
        local = self.per_device_train_batch_size * self.steps_per_generation
        if local % self.num_generations:
            raise ValueError(
                f"num_informative_groups: each process's generation batch ({local} completions = "
                f"per_device_train_batch_size × steps_per_generation) must be whole groups of num_generations "
                f"{self.num_generations} for dynamic sampling's extra rounds"
            )

    def _check_vllm(self) -> None:
        from ..decoding.vllm_backend import check_sampling, vllm_installed

        if self.vllm_mode not in ("colocate", "server"):
            raise ValueError(f"vllm_mode: {self.vllm_mode!r} is not one of colocate, server")
        check_sampling(self.temperature, self.path_temperature if self.variant == "unseen" else None, where="rl")
        if not vllm_installed():
            raise ValueError(
                "rollout_backend: `vllm` needs vLLM in a version TRL supports (pip install 'parallel-r1[vllm]', "
                "GPU machines); rollout_backend: engine works without it"
            )

    def rl_step(self, global_step: int) -> int:
        """The RL step (1-based) generated when the trainer is at optimiser step ``global_step``."""
        return rl_step_of(global_step, self.opt_steps_per_rl, self.step_offset)


def _int_keys(schedule: dict | None, kind) -> dict | None:
    return None if not schedule else {int(k): kind(v) for k, v in schedule.items()}


def rl_step_of(global_step: int, opt_steps_per_rl: int, step_offset: int = 0) -> int:
    """RL step (1-based, as verl's ``global_steps``) of the generation made at optimiser step ``global_step``.

    The one place the RL step is worked out: the reward schedule, the response-length and
    clip-high schedules, the rollout seed, the logs and resuming all use it. TRL's ``global_step``
    counts optimiser steps already taken (``opt_steps_per_rl`` per RL step, 2 in the paper).
    """
    return step_offset + global_step // opt_steps_per_rl + 1


def length_schedule(cfg: RLConfig) -> dict[int, int]:
    """RL step -> completion budget (``max_response_schedule``, else ``max_completion_length`` throughout)."""
    sched = cfg.max_response_schedule or {0: cfg.max_completion_length}
    return {int(k): int(v) for k, v in sched.items()}


def opt_steps_per_rl(cfg: RLConfig) -> int:
    """Optimiser steps per generation: steps_per_generation × num_iterations ÷ gradient_accumulation_steps."""
    micro = cfg.steps_per_generation * cfg.num_iterations
    if micro % cfg.gradient_accumulation_steps:
        raise ValueError(
            f"gradient_accumulation_steps: steps_per_generation ({cfg.steps_per_generation}) × num_iterations "
            f"({cfg.num_iterations}) must be a multiple of it ({cfg.gradient_accumulation_steps}), so that an RL step "
            "is a whole number of optimiser steps"
        )
    return micro // cfg.gradient_accumulation_steps


def load_checked_problems(cfg: RLConfig) -> list:
    """The training problems; every one must have a gold answer."""
    from ..data.registry import load_problems

    problems = load_problems(cfg.dataset, split=cfg.dataset_split, data_dir=cfg.data_dir, limit=cfg.dataset_limit)
    if not problems:
        raise ValueError(f"dataset {cfg.dataset!r}: no problems")
    for i, p in enumerate(problems):
        if p.answer is None or str(p.answer).strip() == "":
            raise ValueError(
                f"dataset {cfg.dataset!r}: row {i} (id {p.id}) has no 'answer' field; RL needs a gold answer per problem"
            )
    return problems


def dataset_rows(cfg: RLConfig, problems: list, tokenizer) -> list[dict]:
    """Problems -> TRL rows {prompt (template + chat template applied), answer, prompt_id}."""
    from ..prompts import build_prompt

    return [
        {"prompt": build_prompt(p.problem, tokenizer, cfg.template), "answer": str(p.answer), "prompt_id": str(p.id)}
        for p in problems
    ]


def make_schedule(cfg: RLConfig):
    """The reward schedule for ``cfg.reward`` (a schedule name, or a single reward held constant)."""
    from ..rewards import get_schedule

    return get_schedule(
        cfg.reward,
        window=cfg.alternating_window,
        accuracy_steps=cfg.accuracy_steps,
        switch_step=cfg.scaffold_steps if cfg.reward == "scaffold" else None,
    )


# config.yaml fields that may differ when a run is re-run: where it is and how it logs / saves.
FREE_FIELDS = (
    "output_dir",
    "logging_dir",
    "resume_from_checkpoint",
    "auto_resume",
    "force",
    "report_to",
    "run_name",
    "disable_tqdm",
    "save_every",
    "save_steps",
    "save_total_limit",
    "data_dir",
    "rollout_batch_size",
    "rollout_max_cache_bytes",
    "dataloader_num_workers",
    "dataloader_pin_memory",
    "log_level",
    "log_level_replica",
)
SUMMARY = "rl_summary.json"  # written last, once the final model is saved: the run is finished


def run_state(cfg: RLConfig) -> str:
    """``"new"``, ``"resume"`` or ``"finished"`` (:func:`parallel_r1.train.checkpoints.open_run`):
    a changed recipe is refused unless ``force``; more ``rl_steps`` train a run further."""
    from .checkpoints import open_run

    return open_run(
        cfg.output_dir,
        "config.yaml",
        config_dict(cfg),
        stage="rl",
        force=cfg.force,
        finished=SUMMARY,
        free=FREE_FIELDS,
        budget=("rl_steps", "max_steps"),
    )


def resume_point(cfg: RLConfig) -> tuple[str | None, int]:
    """(checkpoint to resume from or None, last RL step whose rows are kept).

    Resuming by itself (``auto_resume`` / ``true``), the checkpoint is the newest whose RL steps
    all have their whole rows in ``rollouts.jsonl`` and ``metrics.jsonl``: a step with a torn or
    missing row is dropped and generated again."""
    from .checkpoints import LAST, NONE, complete_checkpoints, resume_checkpoint

    ckpt = resume_checkpoint(cfg.output_dir, cfg.resume_from_checkpoint, auto=cfg.auto_resume)
    if ckpt is None:
        return None, cfg.step_offset
    if str(cfg.resume_from_checkpoint or "").strip().lower() in LAST + NONE:  # not a checkpoint named by the user
        whole = last_whole_step(cfg)
        ckpts = [c for c in complete_checkpoints(cfg.output_dir) if _done_steps(cfg, c) <= whole]
        if not ckpts:
            return None, cfg.step_offset
        ckpt = str(ckpts[-1])
    return ckpt, _done_steps(cfg, ckpt)


def _done_steps(cfg: RLConfig, ckpt) -> int:
    """The last RL step trained into checkpoint ``ckpt``."""
    from .checkpoints import checkpoint_step

    return cfg.rl_step(checkpoint_step(ckpt)) - 1


def last_whole_step(cfg: RLConfig) -> int:
    """The last RL step up to which every step has its metrics row and the rollout rows that row
    counts (``rollouts``: more than ``generation_batch_size`` under dynamic sampling; a torn last
    line is not a row)."""
    from collections import Counter

    from ..io import read_jsonl

    run = Path(cfg.output_dir)
    rows = lambda name: read_jsonl(run / name, skip_bad=True) if (run / name).exists() else []  # noqa: E731
    rollouts = Counter(int(r.get("step", 0)) for r in rows("rollouts.jsonl"))
    metrics = {int(r.get("step", 0)): r for r in rows("metrics.jsonl")}
    step = cfg.step_offset
    while step + 1 in metrics and rollouts.get(step + 1) == metrics[step + 1].get(
        "rollouts", cfg.generation_batch_size
    ):
        step += 1
    return step


def config_dict(cfg: RLConfig) -> dict:
    """``config.yaml``: every field, loadable again as the same config. ``steps_per_generation``
    is left out: TRL derives it from ``generation_batch_size`` and refuses a config that sets both."""
    from .checkpoints import config_dict as plain

    return plain(cfg, drop=("steps_per_generation",))


def build_trainer(cfg: RLConfig):
    """Load and wire up the trainer. Returns (trainer, checkpoint to resume from or None)."""
    from datasets import Dataset

    from ..io import atomic_write_text
    from ..models import load_model, load_tokenizer
    from ..structure import TagIds
    from . import rl_trainer as T
    from .checkpoints import checkpoint_step, completion_marker, drop_checkpoints_after, truncate_after

    run_state(cfg)  # a changed recipe or a foreign folder fails here, before anything loads
    schedule = make_schedule(cfg)
    problems = load_checked_problems(cfg)
    tok = load_tokenizer(cfg.model)
    rows = dataset_rows(cfg, problems, tok)
    tags = TagIds.from_tokenizer(tok) if cfg.variant == "unseen" else _maybe_tags(tok)

    ckpt, done = resume_point(cfg)
    run_dir = Path(cfg.output_dir)
    if cfg.process_index == 0:
        for name in ("rollouts.jsonl", "metrics.jsonl"):
            truncate_after(run_dir / name, done)
        if ckpt is None or Path(ckpt).parent == run_dir:
            drop_checkpoints_after(run_dir, checkpoint_step(ckpt) if ckpt else 0)
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(config_dict(cfg), sort_keys=False))

    if cfg.rollout_backend == "vllm" and cfg.vllm_mode == "server":
        check_vllm_server(cfg)
    model = load_model(cfg.model)  # float32 master weights; bf16 runs under TRL autocast (paper: fp32 actor)
    reward = T.ScheduledReward(schedule, cfg.rl_step, tok, set(tags.as_tuple()) if tags else set(), grader=cfg.grader)
    rollout = None
    if cfg.rollout_backend in ("engine", "vllm"):
        from ..decoding import DecodingConfig

        engine_cfg = DecodingConfig(
            variant=cfg.variant,
            num_paths=cfg.num_paths,
            max_blocks=cfg.max_blocks,
            max_new_tokens=cfg.max_completion_length,
            max_path_tokens=cfg.max_path_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=cfg.top_k or 0,
            path_temperature=cfg.path_temperature,
            seed=cfg.rollout_seed,
            max_cache_bytes=cfg.rollout_max_cache_bytes,
        )
        rollout = T.make_rollout_func(
            engine_cfg, tags, length_schedule(cfg), cfg.rl_step, cfg.train_injected, backend=cfg.rollout_backend
        )
    trainer = T.ParallelGRPOTrainer(
        model=model,
        reward_funcs=[reward],
        args=cfg,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        rollout_func=rollout,
        callbacks=[T.MetricsWriter(run_dir / "metrics.jsonl"), completion_marker()],
        tag_ids=tags,
        scheduled_reward=reward,
        run_dir=run_dir,
    )
    return trainer, ckpt


def train(cfg: RLConfig, setup=None) -> dict:
    """Build the trainer, train (resuming when a checkpoint is there), save the final model.

    ``setup``: called with the trainer before training (callbacks, profiling; scripts/experiment.py).
    Returns TRL's train metrics and where the model went.
    """
    import os
    import sys

    from ..io import atomic_write_json
    from .checkpoints import checkpoint_step

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is TRL's documented extension point
    if run_state(cfg) == "finished":
        print(f"rl: {cfg.output_dir} is finished ({cfg.rl_steps} RL steps); nothing to do", file=sys.stderr)
        return json.loads((Path(cfg.output_dir) / SUMMARY).read_text())
    trainer, ckpt = build_trainer(cfg)
    if setup is not None:
        setup(trainer)
    if ckpt is not None and checkpoint_step(ckpt) >= cfg.max_steps:
        # killed after its last checkpoint: every step is trained, and Trainer.train would still run
        # one more optimiser step from there; only the final model is missing
        trainer._load_from_checkpoint(ckpt)
        metrics = {}
    else:
        metrics = trainer.train(resume_from_checkpoint=ckpt).metrics
    from .checkpoints import save_final_model

    save_final_model(trainer, cfg.output_dir)  # a full checkpoint even under sharded FSDP
    summary = {"train": metrics, "resumed_from": ckpt, "output_dir": cfg.output_dir}
    if trainer.is_world_process_zero():
        atomic_write_json(Path(cfg.output_dir) / SUMMARY, summary)
    return summary


def check_vllm_server(cfg: RLConfig) -> None:
    """A ``vllm_mode: server`` run needs a ``trl vllm-serve`` that answers; asked before the model loads,
    as TRL asks (``/health``, retried for ``vllm_server_timeout`` seconds)."""
    import time

    import requests

    base = cfg.vllm_server_base_url or f"http://{cfg.vllm_server_host}:{cfg.vllm_server_port}"
    deadline = time.monotonic() + cfg.vllm_server_timeout
    while True:
        try:
            if requests.get(f"{base}/health", timeout=10).status_code == 200:
                return
            problem = "answers /health with an error"
        except requests.RequestException as e:
            problem = f"does not answer ({type(e).__name__})"
        if time.monotonic() >= deadline:
            raise ValueError(
                f"vllm_server_base_url: the vLLM server at {base} {problem} after {cfg.vllm_server_timeout:g} s; "
                f"start it first (trl vllm-serve --model {cfg.model}) or use vllm_mode: colocate"
            )
        time.sleep(2)


def _maybe_tags(tok):
    from ..models import has_tag_tokens
    from ..structure import TagIds

    return TagIds.from_tokenizer(tok) if has_tag_tokens(tok) else None
