"""What ``parallel-r1 rl`` adds to TRL's ``GRPOTrainer`` (pinned: trl 1.16).

* :class:`ParallelGRPOTrainer` — one subclass of small overrides:
  - ``_get_per_token_logps_and_entropies``: for the Unseen variant the policy forward gets the
    path-isolating 4-D mask and shared-start ``position_ids`` of
    :func:`parallel_r1.structure.build_unseen_layout` (only completion tokens count as tags, so
    the tags quoted by the v3 prompt are ignored). TRL's own loss, clipping, token-mean
    aggregation and importance ratios are used unchanged.
  - ``_generate_and_score_completions``: after TRL scored a batch, append one row per completion
    to ``rollouts.jsonl`` and compute the parallel-thinking metrics of the RL step; first set
    ``epsilon_high`` from ``clip_ratio_high_schedule``.
  - ``_compute_loss`` / ``_get_per_token_logps_and_entropies`` also measure the gap between
    the trainer's and the sampler's log-probs (``logprob_gap_max``, ``logprob_gap_mean``; with
    the share of trained tokens after a block's ``</Parallel>``, ``after_block_token_share``, and
    their gap, ``logprob_gap_mean_after_block``: where the vLLM loop is off-policy by
    construction).
  - ``log``: put those metrics next to TRL's in every log (one log = one RL step).
  - ``_get_train_sampler``: TRL's ``RepeatSampler`` with ``set_epoch``, so a run resumed in a
    later epoch sees the same data order as an uninterrupted one.
* :func:`make_rollout_func` — TRL's ``rollout_func`` backed by the decoding engine
  (Unseen orchestrated or Seen free generation), with the staged response budget; with
  ``backend="vllm"`` by the paper's separate-request loop on TRL's own vLLM
  (:func:`vllm_samples`: TRL syncs the weights into it before every generation).
* :class:`ScheduledReward` — the reward schedule as a TRL reward function, stepping by RL step
  (one generation), not by optimiser step, and keeping per-completion details for the log.
* :class:`MetricsWriter` — callback writing ``metrics.jsonl`` (one row per RL step).

Step convention: RL step ``s`` (1-based, as the paper's ``global_steps``) is the s-th generation;
it spans ``opt_steps_per_rl`` optimiser steps of the trainer (2 in the paper). The step is always
``RLConfig.rl_step(global_step)`` (:func:`parallel_r1.train.rl.rl_step_of`).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate.utils import gather_object
from transformers import TrainerCallback
from trl import GRPOTrainer
from trl.trainer.utils import RepeatSampler, shuffle_sequence_dict, split_tensor_dict

from .. import metrics as M
from ..format import analyze
from ..io import JsonlAppender
from . import curation as C


def budget_at(schedule: dict, step: int):
    """A step schedule's value at RL step ``step``: that of the largest key <= ``step``
    (staged max response length, clip-high by stage)."""
    keys = [k for k in sorted(schedule) if k <= step]
    return schedule[keys[-1] if keys else min(schedule)]


def decode_keep_tags(tokenizer, ids: list[int], keep: set[int]) -> str:
    """Decode with the six tags kept and every other special token (EOS, pad, chat markers) dropped."""
    special = set(tokenizer.all_special_ids) - keep
    return tokenizer.decode([t for t in ids if t not in special], skip_special_tokens=False)


class UnseenForward:
    """Calls ``model`` with the Unseen layout built from the batch TRL hands to it.

    TRL's log-prob routine calls ``model(input_ids=[B,P+C], attention_mask=[B,P+C], labels=..., ...)``
    with prompts left-padded and completions right-padded; the last ``logits_to_keep`` columns are
    the completion. The 2-D mask is replaced by the bool ``[B,1,L,L]`` layout and shared-start
    positions; TRL's labels (built from the 2-D mask) are left as they are.
    """

    def __init__(self, model, tags, logits_to_keep: int):
        self.model, self.tags, self.logits_to_keep = model, tags, logits_to_keep

    def __call__(self, input_ids, attention_mask, **kwargs):
        from ..structure import build_unseen_layout

        structure = torch.zeros_like(attention_mask, dtype=torch.bool)
        structure[:, -self.logits_to_keep :] = attention_mask[:, -self.logits_to_keep :].bool()
        layout = build_unseen_layout(input_ids, self.tags, attention_mask=attention_mask, structure_mask=structure)
        return self.model(
            input_ids=input_ids, attention_mask=layout.attention_mask, position_ids=layout.position_ids, **kwargs
        )


class EpochRepeatSampler(RepeatSampler):
    """TRL's ``RepeatSampler`` reseeded per epoch (seed + epoch): the order no longer depends on
    how many epochs this process has iterated, so resuming reproduces it."""

    def set_epoch(self, epoch: int) -> None:
        if self.shuffle:
            self.generator.manual_seed((self.seed or 0) + epoch)


class ScheduledReward:
    """A :class:`parallel_r1.rewards.RewardSchedule` as a TRL reward function.

    Called by TRL as ``fn(prompts, completions, completion_ids, trainer_state=..., <dataset
    columns>...)``. The step is the RL step, ``step_fn(global_step)`` (TRL's ``global_step``
    counts optimiser steps, 2 per RL step in the paper), and the completion keeps its tags (TRL
    decodes with special tokens skipped; the rollout's ``completion_text`` field, or
    ``completion_ids`` decoded here, keeps them).
    ``.last`` holds the last call's per-completion details for the rollout log.
    """

    def __init__(
        self,
        schedule,
        step_fn: Callable[[int], int],
        tokenizer,
        keep_ids: set[int],
        answer_key: str = "answer",
        grader: str | None = None,
    ):
        self.schedule, self.step_fn, self.tokenizer, self.keep_ids = schedule, step_fn, tokenizer, keep_ids
        self.answer_key, self.grader = answer_key, grader
        self.__name__ = schedule.name
        self.last: list[dict] = []

    def __call__(self, prompts, completions, completion_ids=None, **kwargs) -> list[float]:
        step = self.step_fn(kwargs["trainer_state"].global_step)
        texts = kwargs.get("completion_text") or [
            decode_keep_tags(self.tokenizer, ids, self.keep_ids) for ids in completion_ids
        ]
        golds = [str(g) for g in kwargs[self.answer_key]]
        details = self.schedule.details(texts, golds, step, self.grader)
        self.last = [
            dict(
                step=step,
                reward_mode=d["mode"],
                completion=t,
                answer=g,
                reward=float(d["reward"]),
                correct=bool(d["correct"]),
                ids=list(ids),
            )
            for d, t, g, ids in zip(details, texts, golds, completion_ids, strict=True)
        ]
        return [x["reward"] for x in self.last]


def make_rollout_func(engine_config, tag_ids, length_schedule: dict[int, int], step_fn: Callable[[int], int],
                      train_injected: bool = True, backend: str = "engine"):  # fmt: skip
    """TRL ``rollout_func``: the per-process prompt slice (each prompt repeated per rollout) -> engine samples.

    ``backend``: ``engine`` (:class:`~parallel_r1.decoding.ParallelEngine` on the policy itself,
    exact log-probs) or ``vllm`` (:func:`vllm_samples`; the log-probs are vLLM's, which TRL keeps
    as ``sampling_per_token_logps`` next to the trainer's own).

    Returns prompt/completion ids and the engine's per-token log-probs (TRL's required keys), and
    extra per-completion fields that TRL forwards to the reward function: ``completion_text``
    (tags kept), ``finish_reason``, ``budget``; with ``train_injected=False`` an ``env_mask`` that
    keeps the injected tags out of the loss (the paper trains on them: response_mask all 1).
    """
    from dataclasses import replace

    from ..decoding import ParallelEngine

    keep = set(tag_ids.as_tuple()) if tag_ids else set()

    def rollout(prompts: list[str], trainer) -> dict:
        step = step_fn(trainer.state.global_step)
        budget = budget_at(length_schedule, step)
        cfg = replace(
            engine_config,
            max_new_tokens=budget,
            seed=None
            if engine_config.seed is None
            else engine_config.seed
            + step * 1000
            + trainer.accelerator.process_index
            + 10**6 * getattr(trainer, "_generation_round", 0),  # dynamic sampling's later rounds draw afresh
            **engine_settings(trainer.args, zero_stage(trainer)),
        )
        tok = trainer.processing_class
        if backend == "vllm":
            samples = vllm_samples(trainer, cfg, list(prompts))
        else:
            with _model_for_generation(trainer) as model:
                samples = ParallelEngine(model, tok, cfg).generate(list(prompts), n=1)
        samples = sorted(samples, key=lambda s: s.prompt_index)
        out = {
            "prompt_ids": [list(s.prompt_ids) for s in samples],
            "completion_ids": [list(s.completion_ids) for s in samples],
            "logprobs": [[float(x) for x in s.logprobs] for s in samples],
            "completion_text": [decode_keep_tags(tok, list(s.completion_ids), keep) for s in samples],
            "finish_reason": [s.finish_reason for s in samples],
            "budget": [budget] * len(samples),
        }
        if not train_injected:
            out["env_mask"] = [[0 if inj else 1 for inj in s.injected] for s in samples]
        return out

    return rollout


def vllm_samples(trainer, cfg, prompts: list[str]) -> list:
    """This process's prompts through the paper's loop on TRL's vLLM (``trainer.vllm_generation``).

    Colocate: every process drives its own ``LLM`` (a tensor-parallel group gathers its prompts,
    all its ranks generate the same requests, each keeps its share, as TRL does). Server: the
    prompts of all processes go to the server from the main process and come back by slice.
    """
    from accelerate.utils import broadcast_object_list

    from ..decoding.vllm_backend import ServerLLM, VLLMEngine

    vg, acc, tok = trainer.vllm_generation, trainer.accelerator, trainer.processing_class
    eos = getattr(trainer, "eos_token_ids", None)
    eos = [eos] if isinstance(eos, int) else list(eos or [])

    if vg.mode == "colocate":
        from trl.generation import vllm_generation

        engine = VLLMEngine(vg.llm, cfg, tokenizer=tok, sampling_params=vllm_generation.SamplingParams, eos_ids=eos)
        with vllm_awake(vg):
            if vg.tensor_parallel_size == 1:
                return engine.generate(prompts, n=1)
            group = [None] * vg.tensor_parallel_size
            torch.distributed.all_gather_object(group, prompts, group=vg.tp_group)
            rank = torch.distributed.get_rank(group=vg.tp_group)
            samples = engine.generate([p for ps in group for p in ps], n=1)
        return _rebase(samples[rank * len(prompts) : (rank + 1) * len(prompts)], rank * len(prompts))
    everyone = gather_object(prompts)
    samples = None
    if acc.is_main_process:
        llm = ServerLLM(vg.vllm_client, tok)
        samples = VLLMEngine(llm, cfg, tokenizer=tok, sampling_params=dict, eos_ids=eos).generate(everyone, n=1)
    box = [samples]
    broadcast_object_list(box, from_process=0)
    start = acc.process_index * len(prompts)
    return _rebase(box[0][start : start + len(prompts)], start)


@contextlib.contextmanager
def vllm_awake(vg):
    """The colocated vLLM with its KV cache awake while we generate, and asleep again after, as
    TRL's own ``VLLMGeneration.generate`` does (trl 1.16 ``generation/vllm_generation.py``:
    re-sync weights discarded by level-2 sleep ~589, ``wake_up(tags=["kv_cache"])`` ~705,
    ``sleep(level=2)`` ~751). TRL's weight sync wakes only the weights (~491), and vLLM 0.30 keeps
    its scheduler paused while any part sleeps (``v1/engine/core.py`` ~928): without this every
    request would queue for ever under ``vllm_enable_sleep_mode``."""
    if vg.mode != "colocate" or not vg.enable_sleep_mode:
        yield
        return
    if vg._llm_weights_sleeping:
        vg.sync_weights()
    vg.llm.wake_up(tags=["kv_cache"])
    try:
        yield
    finally:
        vg.llm.sleep(level=2)
        vg._llm_weights_sleeping = True


def _rebase(samples: list, start: int) -> list:
    for s in samples:
        s.prompt_index -= start
    return samples


def engine_settings(args, zero: int | None = None) -> dict:
    """Engine fields that follow the trainer: the rollout batch size, and the trainer's compute
    precision (its forwards run under bf16/fp16 autocast, so the rollout's do too: the log-probs
    then match the trainer's). Lockstep under sharded parameters is the engine's own decision,
    except under ZeRO-3 with TRL's gathering for generation (``ds3_gather_for_generation``, its
    default): the weights are then whole on every rank while the engine decodes, but still carry
    ``ds_id``, so the engine would add an all-reduce and dummy forwards per step that nothing needs."""
    dtype = "bfloat16" if getattr(args, "bf16", False) else "float16" if getattr(args, "fp16", False) else None
    out = {"batch_size": getattr(args, "rollout_batch_size", 64), "dtype": dtype}
    if zero == 3 and getattr(args, "ds3_gather_for_generation", True):
        out["lockstep"] = False
    return out


def zero_stage(trainer) -> int | None:
    """The DeepSpeed ZeRO stage of the trainer's accelerator (None without DeepSpeed)."""
    plugin = getattr(getattr(trainer.accelerator, "state", None), "deepspeed_plugin", None)
    return getattr(plugin, "zero_stage", None) if plugin is not None else None


@contextlib.contextmanager
def _model_for_generation(trainer):
    """The full, unwrapped policy in eval mode without grad (DDP/FSDP/DeepSpeed-3 aware, like TRL)."""
    from trl.models.utils import unwrap_model_for_generation

    with (
        unwrap_model_for_generation(
            trainer.model_wrapped, trainer.accelerator, gather_deepspeed3_params=trainer.args.ds3_gather_for_generation
        ) as model,
        torch.no_grad(),
        trainer._dist.summon_full_params(trainer.model_wrapped, recurse=False),
    ):
        was_training = model.training
        model.eval()
        try:
            yield model
        finally:
            model.train(was_training)


class ParallelGRPOTrainer(GRPOTrainer):
    """GRPOTrainer + Unseen log-prob layout + rollout log + parallel-thinking metrics (module doc)."""

    def __init__(self, *args, tag_ids, scheduled_reward: ScheduledReward, run_dir: str | os.PathLike, **kwargs):
        super().__init__(*args, **kwargs)  # args: an RLConfig (variant, step and clip-high schedule)
        if self.args.variant == "unseen":  # the loss forward takes the path-isolating 4-D mask
            from ..devices import check_unseen_attention

            check_unseen_attention(self.model)
        self.tag_ids, self.scheduled_reward, self.run_dir = tag_ids, scheduled_reward, Path(run_dir)
        self._gap_ref = None  # (sampling logps, mask, completion ids) of the micro-batch whose loss is being computed
        self._gap = _GapStats()
        self._last_gap_max: float | None = None  # the last RL step's measured rollout/trainer gap (None: not measured)
        self._old_placeholder = False  # the next no-grad policy forward is TRL's old-log-prob one: skip it
        self._old_source = "loss"  # where this step's old log-probs come from: rollout | forward | loss
        self._generation_round = 0  # dynamic sampling: round of the current generation in its RL step
        self._round_rows: list[dict] = []  # the last generation's rows, every process's, in TRL's order
        self._step_rows: list[dict] = []  # this RL step's rollout rows, every round
        self._seen: dict = {}  # prompt id -> samples so far this RL step (sample_index)
        self._curation: dict[str, float] = {}
        self._rl_metrics: dict[str, float] = {}
        self._rollouts = JsonlAppender(self.run_dir / "rollouts.jsonl") if self.accelerator.is_main_process else None

    def rl_step(self) -> int:
        return self.args.rl_step(self.state.global_step)

    # -- Unseen layout in the policy forward -------------------------------------------------
    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        if self._old_placeholder and not torch.is_grad_enabled():
            # TRL's no-grad old-policy forward (its first in _generate_and_score_completions, before
            # the reference model's): the rollout's log-probs replace its result there
            self._old_placeholder = False
            return input_ids.new_zeros(input_ids.size(0), logits_to_keep, dtype=torch.float32), None, None
        fwd = UnseenForward(model, self.tag_ids, logits_to_keep) if self.args.variant == "unseen" else model
        out = super()._get_per_token_logps_and_entropies(
            fwd, input_ids, attention_mask, logits_to_keep, *args, **kwargs
        )
        if self._gap_ref is not None:
            self._note_gap(out[0].detach(), *self._gap_ref)
            self._gap_ref = None
        return out

    def _compute_loss(self, model, inputs):
        # A micro-batch trained before this generation's first optimiser step runs at the rollout's
        # weights, so its loss forward is the trainer's log-prob of the rollout policy: the gap is
        # measured there for free (unless TRL's old-log-prob forward already measured it).
        if self._at_rollout_weights() and self._old_source != "forward" and "sampling_per_token_logps" in inputs:
            self._gap_ref = (inputs["sampling_per_token_logps"], _loss_mask(inputs), inputs["completion_ids"])
        return super()._compute_loss(model, inputs)

    def _generation_aligned(self) -> bool:
        """Generations start at optimiser-step boundaries (the batch arithmetic of every recipe)."""
        every, accum = self.args.steps_per_generation * self.num_iterations, self.args.gradient_accumulation_steps
        return every % accum == 0 or accum % every == 0

    def _at_rollout_weights(self) -> bool:
        every = self.args.steps_per_generation * self.num_iterations
        return self._generation_aligned() and self._step % every < self.args.gradient_accumulation_steps

    def _rollout_logprobs_as_old(self) -> bool:
        """Skip TRL's old-log-prob forward and use the rollout's log-probs: only where TRL would run
        that forward, the engine made the rollouts, and the last measured gap is within tolerance."""
        a = self.args
        every = a.steps_per_generation * self.num_iterations
        trl_forwards = a.gradient_accumulation_steps % every != 0 and not (
            self.use_vllm and self.vllm_importance_sampling_correction
        )
        return (
            a.rollout_logprobs_as_old
            and a.rollout_backend == "engine"
            and trl_forwards
            and self._generation_aligned()
            and self._last_gap_max is not None
            and self._last_gap_max <= a.rollout_logprob_tolerance
        )

    def _note_gap(self, trainer_logps, sampling_logps, mask, completion_ids) -> None:
        close = self.tag_ids.parallel_close if self.tag_ids else None
        local = gap_stats(trainer_logps, sampling_logps, mask, completion_ids, close)
        self._gap.add(self.accelerator.gather(local.reshape(1, -1)))

    # -- which rollouts are trained, rollout log and per-step metrics -------------------------
    def _prepare_inputs(self, generation_batch):
        """TRL's, with the generation of an RL step in :meth:`_generate_step` (rounds, selection)."""
        if not self.model.training:
            return super()._prepare_inputs(generation_batch)
        every = self.args.steps_per_generation * self.num_iterations
        if self._step % every == 0 or self._buffered_inputs is None:
            batch = shuffle_sequence_dict(self._generate_step(generation_batch))
            self._buffered_inputs = split_tensor_dict(batch, self.args.steps_per_generation)
        return self._buffered_inputs[self._step % self.args.steps_per_generation]

    def _generate_step(self, first: list[dict]) -> dict:
        """One RL step's training batch (docs/rl.md, "Every rollout counts").

        Round 0 is TRL's generation batch; with ``num_informative_groups`` further rounds of fresh
        prompts follow until that many groups have unequal rewards. With
        ``drop_zero_advantage_groups`` only those groups reach the loss (zero-weight filler rows
        keep the micro-batch split whole) and ``num_items_in_batch``, the token-mean normaliser,
        counts their tokens. Every generated rollout is logged, with ``trained`` saying which.
        """
        a, G = self.args, self.num_generations
        drop, target = a.drop_zero_advantage_groups, a.num_informative_groups
        self._step_rows, self._seen = [], {}
        kept, first_out, chosen_total, generated, informative = [], None, 0, 0, 0
        for r in range(a.max_generation_rounds if target else 1):
            self._generation_round = r
            out = self._generate_and_score_completions(first if r == 0 else self._extra_round(r, len(first)))
            first_out = first_out or out
            rows = self._round_rows
            info = C.informative_groups(torch.tensor([x["reward"] for x in rows]), G)
            chosen = info.clone()
            if target:
                chosen &= info.cumsum(0) <= target - chosen_total  # the first groups that fill the step
            generated, informative, chosen_total = (
                generated + info.numel(),
                informative + int(info.sum()),
                chosen_total + int(chosen.sum()),
            )
            trained = chosen.repeat_interleave(G) if drop else torch.ones(len(rows), dtype=torch.bool)
            self._write_rows(rows, r, trained)
            if drop:
                n = len(first)
                local = trained[self.accelerator.process_index * n : (self.accelerator.process_index + 1) * n]
                if local.any():
                    kept.append(C.take_rows(out, local.nonzero().squeeze(1), trim=self.pad_to_multiple_of is None))
            else:
                kept.append(out)
            if not target or chosen_total >= target:
                break
        self._curation = {
            "generated_groups": generated,
            "informative_groups": informative,
            "trained_groups": chosen_total if drop else generated,
            "generation_rounds": r + 1,
            "groups_per_informative": generated / informative if informative else math.nan,
        }
        self._rl_metrics = self._step_metrics()
        if not drop:
            return kept[0]
        if kept:
            batch = C.concat_generations(kept, self._tokenizer.pad_token_id)
        else:  # no informative group on this process: one zero-weight row keeps it in step with the others
            batch = C.zero_weight(C.take_rows(first_out, torch.zeros(1, dtype=torch.long)))
        batch = C.pad_rows(batch, self.args.steps_per_generation)
        batch["num_items_in_batch"] = self.accelerator.gather(C.loss_mask(batch).sum()).sum()
        return batch

    def _extra_round(self, round_: int, local_rows: int) -> list[dict]:
        """Fresh prompts for dynamic sampling's round ``round_`` (>= 1), each repeated per rollout:
        drawn from the training set by (seed, RL step, round), so a resumed run draws the same,
        and split across processes as TRL splits its own generation batch."""
        G, world, rank = self.num_generations, self.accelerator.num_processes, self.accelerator.process_index
        per_process = local_rows // G
        gen = torch.Generator().manual_seed((self.args.seed + 1) * 1_000_003 + self.rl_step() * 1009 + round_)
        size, need = len(self.train_dataset), per_process * world
        idx = (
            torch.randperm(size, generator=gen)[:need] if size >= need else torch.randint(size, (need,), generator=gen)
        )
        mine = idx[rank * per_process : (rank + 1) * per_process].tolist()
        return [dict(self.train_dataset[i]) for i in mine for _ in range(G)]

    def _generate_and_score_completions(self, inputs):
        if self.model.training and self.args.clip_ratio_high_schedule:
            # TRL reads self.epsilon_high in the loss; the batch generated now is trained with this value
            self.epsilon_high = budget_at(self.args.clip_ratio_high_schedule, self.rl_step())
        from_rollout = self.model.training and self._rollout_logprobs_as_old()
        self._old_placeholder = from_rollout
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            self._old_placeholder = False
        if not self.model.training:
            return output
        if from_rollout:
            output["old_per_token_logps"] = output["sampling_per_token_logps"]
            self._old_source = "rollout"
        elif output.get("old_per_token_logps") is not None:
            self._old_source = "forward"
            if "sampling_per_token_logps" in output:
                self._note_gap(
                    output["old_per_token_logps"],
                    output["sampling_per_token_logps"],
                    _loss_mask(output),
                    output["completion_ids"],
                )
        else:
            self._old_source = "loss"
        rows = [
            dict(
                d,
                prompt=x["prompt"],
                prompt_id=x.get("prompt_id"),
                length=len(d["ids"]),
                clipped=_clipped(x, len(d["ids"]), self.args.max_completion_length),
            )
            for x, d in zip(inputs, self.scheduled_reward.last, strict=True)
        ]
        self._round_rows = gather_object(rows)
        return output

    def _write_rows(self, rows: list[dict], round_: int, trained: torch.Tensor) -> None:
        """Parse every completion of a generation round, write its rollout row (rank 0)."""
        out = []
        for r, t in zip(rows, trained.tolist(), strict=True):
            rep = analyze(r["completion"], *((r["ids"], self.tag_ids.parallel_open) if self.tag_ids else ()))
            k = self._seen[r["prompt_id"]] = self._seen.get(r["prompt_id"], -1) + 1
            out.append(
                {
                    "step": r["step"],
                    "prompt_id": r["prompt_id"],
                    "sample_index": k,
                    "prompt": r["prompt"],
                    "completion": r["completion"],
                    "answer": r["answer"],
                    "reward": r["reward"],
                    "correct": r["correct"],
                    "reward_mode": r["reward_mode"],
                    "uses_parallel": rep.uses_parallel,
                    "format_ok": rep.format_ok,
                    "num_blocks": rep.num_blocks,
                    "paths_per_block": rep.paths_per_block,
                    "positions": rep.positions,
                    "length": r["length"],
                    "critical_path_tokens": M.critical_path_tokens(
                        r["ids"], self.tag_ids.path_open, self.tag_ids.path_close
                    )
                    if self.tag_ids
                    else r["length"],
                    "clipped": r["clipped"],
                    "round": round_,
                    "trained": bool(t),
                }
            )
        if self._rollouts is not None:
            self._rollouts.write_many(out)
        self._step_rows += out

    def _step_metrics(self) -> dict:
        """The RL step's metrics over every rollout it generated (all rounds)."""
        out = self._step_rows
        n = max(len(out), 1)
        positions_all = [p for o in out for p in o["positions"]]
        return {
            **{
                k: v or 0.0 for k, v in M.behaviour([o["completion"] for o in out]).items()
            },  # the one definition (metrics.py)
            "mean_blocks": sum(o["num_blocks"] for o in out) / n,
            "mean_parallel_position": sum(positions_all) / len(positions_all) if positions_all else math.nan,
            "format_error_rate": sum(not o["format_ok"] for o in out) / n,
            "accuracy": sum(o["correct"] for o in out) / n,
            "mean_length": sum(o["length"] for o in out) / n,
            "max_length": max((o["length"] for o in out), default=0),
            "mean_critical_path_tokens": sum(o["critical_path_tokens"] for o in out) / n,
            "clipped_ratio": sum(o["clipped"] for o in out) / n,
            "reward_mode": out[0]["reward_mode"] if out else "accuracy",  # by name; TRL and metrics.jsonl take strings
            "rl_step": out[0]["step"] if out else self.rl_step(),
            "rollouts": len(out),
            **self._curation,
        }

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.model.training and self._rl_metrics:
            gap = self._gap.metrics()
            # the next step trusts the rollout's log-probs only on this step's evidence
            self._last_gap_max = gap["logprob_gap_max"] if self._gap.total[1] > 0 else None
            logs.update(self._rl_metrics, old_logprobs=self._old_source, **gap)
            self._rl_metrics, self._gap = {}, _GapStats()
        super().log(logs, start_time)

    def _get_train_sampler(self, dataset=None):
        dataset = self.train_dataset if dataset is None else dataset
        return EpochRepeatSampler(
            data_source=dataset,
            mini_repeat_count=self.num_generations,
            batch_size=self.args.generation_batch_size // self.num_generations,
            repeat_count=self.num_iterations * self.args.steps_per_generation,
            shuffle=self.shuffle_dataset,
            seed=self.args.seed,
        )


def gap_stats(trainer_logps, sampling_logps, mask, completion_ids, parallel_close: int | None) -> torch.Tensor:
    """Rollout-vs-trainer log-prob gap of one batch, as sums that add up across batches and processes.

    ``trainer_logps``, ``sampling_logps``, ``mask``, ``completion_ids``: ``[B, T]`` (tokens the
    sampler did not score, the tags the vLLM loop injects, are ``nan`` and left out). Returns
    ``[7]``: (sum |gap|, scored tokens, max |gap|, trained tokens, trained tokens after a block,
    sum |gap| after a block, scored tokens after a block). "After a block": after the first ``</Parallel>`` of the completion
    (the summary on): the tokens the paper's vLLM loop decodes on the flat text, off-policy for an
    Unseen trainer by construction.
    """
    mask = mask.bool()
    delta = (trainer_logps.float() - sampling_logps.float()).abs()
    scored = mask & ~torch.isnan(delta)
    delta = torch.where(scored, delta, torch.zeros_like(delta))
    if parallel_close is None:
        after = torch.zeros_like(mask)
    else:
        close = completion_ids == parallel_close
        after = (close.cumsum(-1) - close.long()) > 0  # strictly after the first </Parallel>
    zero = torch.zeros((), device=delta.device)
    return torch.stack([
        delta.sum(), scored.sum().float(), delta.max() if delta.numel() else zero,
        mask.sum().float(), (mask & after).sum().float(), delta[after & scored].sum() if after.any() else zero,
        (after & scored).sum().float(),
    ])  # fmt: skip


class _GapStats:
    """``gap_stats`` rows summed over an RL step's batches; ``metrics()`` for its log row."""

    def __init__(self):
        self.total = torch.zeros(7, dtype=torch.float64)

    def add(self, rows: torch.Tensor) -> None:  # [processes, 7]
        rows = rows.detach().double().cpu()
        gap_max = max(float(self.total[2]), float(rows[:, 2].max()))
        self.total += rows.sum(0)
        self.total[2] = gap_max

    def metrics(self) -> dict[str, float]:
        gap, scored, gap_max, trained, after, gap_after, scored_after = self.total.tolist()
        return {
            "logprob_gap_max": gap_max,
            "logprob_gap_mean": gap / scored if scored else math.nan,
            "after_block_token_share": after / trained if trained else math.nan,
            "logprob_gap_mean_after_block": gap_after / scored_after if scored_after else math.nan,
        }


def _loss_mask(inputs) -> torch.Tensor:
    mask = inputs["completion_mask"]
    return mask if "tool_mask" not in inputs else mask * inputs["tool_mask"]


def _clipped(x: dict, length: int, default_budget: int) -> bool:
    """Hit the length budget (the engine's finish_reason when there is one)."""
    if "finish_reason" in x:
        return x["finish_reason"] == "length"
    return length >= x.get("budget", default_budget)


class MetricsWriter(TrainerCallback):
    """Append one ``metrics.jsonl`` row per RL step (rank 0): TRL's logged metrics + ours."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or "rl_step" not in logs:
            return
        row = {"step": int(logs["rl_step"]), "global_step": state.global_step}
        for k, v in logs.items():
            if k == "rl_step":
                continue
            row[k] = None if isinstance(v, float) and math.isnan(v) else v
        with JsonlAppender(self.path) as f:
            f.write(row)
