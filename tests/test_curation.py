"""Every rollout counts: zero-advantage groups leave the loss, dynamic sampling, rollout log-probs as the old policy.

Pure functions against loop references, then real GRPO steps on the taught tiny model (conftest).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest
import torch

from conftest import GEN_BATCH, rl_recipe
from parallel_r1.cli import parse_command
from parallel_r1.train import curation as C

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


# ----------------------------------------------------------------------------- pure functions


def test_informative_groups_matches_a_loop_reference():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        G = int(torch.randint(2, 6, (1,), generator=g))
        rewards = torch.randint(0, 3, (4 * G,), generator=g).float() * 0.6 - 0.2  # 1.2 / 1.0 / -1 style ties
        rewards[torch.rand(4 * G, generator=g) < 0.1] = float("nan")
        ref = []
        for k in range(4):
            vals = [float(x) for x in rewards[k * G : (k + 1) * G] if not torch.isnan(x)]
            ref.append(len(set(vals)) > 1)
        assert C.informative_groups(rewards, G).tolist() == ref
    # equal rewards that TRL's normalisation leaves a rounding residue on are still not informative
    assert C.informative_groups(torch.full((8,), 1.2), 8).tolist() == [False]
    with pytest.raises(ValueError, match="whole groups"):
        C.informative_groups(torch.zeros(7), 4)


def _batch(prompt_lens, completion_lens, pad=0):
    P, L = max(prompt_lens), max(completion_lens)
    B = len(prompt_lens)
    pid = torch.full((B, P), pad)
    pm = torch.zeros(B, P, dtype=torch.long)
    cid = torch.full((B, L), pad)
    cm = torch.zeros(B, L, dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompt_lens, completion_lens)):
        pid[i, P - p :] = torch.arange(1, p + 1) + 100 * i
        pm[i, P - p :] = 1
        cid[i, :c] = torch.arange(1, c + 1) + 100 * i + 50
        cm[i, :c] = 1
    return {
        "prompt_ids": pid,
        "prompt_mask": pm,
        "completion_ids": cid,
        "completion_mask": cm,
        "sampling_per_token_logps": -cm.float() * 0.5,
        "advantages": torch.arange(B).float() + 1,
        "num_items_in_batch": cm.sum(),
    }


def _tokens(batch, i):
    """Row i's real prompt and completion tokens (what a forward reads)."""
    p = batch["prompt_ids"][i][batch["prompt_mask"][i].bool()].tolist()
    c = batch["completion_ids"][i][batch["completion_mask"][i].bool()].tolist()
    return p, c


def test_take_rows_keeps_the_rows_and_trims_only_padding():
    b = _batch([3, 5, 2, 4], [6, 2, 3, 1])
    got = C.take_rows(b, torch.tensor([0, 2]))
    assert got["prompt_ids"].shape == (2, 3) and got["completion_ids"].shape == (2, 6)
    for new, old in ((0, 0), (1, 2)):
        assert _tokens(got, new) == _tokens(b, old)
        assert got["advantages"][new] == b["advantages"][old]
    got = C.take_rows(b, torch.tensor([1, 3]))
    assert got["completion_ids"].shape[1] == 2 and got["sampling_per_token_logps"].shape == (2, 2)
    assert got["prompt_ids"].shape[1] == 5


def test_concat_generations_pads_each_side_and_keeps_every_token():
    a, b = _batch([3, 2], [4, 1]), _batch([5], [7])
    got = C.concat_generations([a, b], pad_token_id=0)
    assert got["prompt_ids"].shape == (3, 5) and got["completion_ids"].shape == (3, 7)
    assert "num_items_in_batch" not in got
    assert [_tokens(got, i) for i in range(3)] == [_tokens(a, 0), _tokens(a, 1), _tokens(b, 0)]
    assert (
        got["sampling_per_token_logps"].sum()
        == a["sampling_per_token_logps"].sum() + b["sampling_per_token_logps"].sum()
    )


def test_pad_rows_adds_zero_weight_rows_to_a_whole_split():
    b = _batch([3, 2, 4], [4, 1, 2])
    got = C.pad_rows(b, 2)
    assert got["completion_ids"].size(0) == 4
    assert got["advantages"][3] == 0 and got["tool_mask"][3].sum() == 0
    assert C.loss_mask(got).sum() == b["completion_mask"].sum()  # filler tokens are out of the normaliser
    assert C.pad_rows(b, 3)["completion_ids"].size(0) == 3  # already whole: unchanged
    one = C.zero_weight(C.take_rows(b, torch.tensor([0])))
    assert C.loss_mask(C.pad_rows(one, 2)).sum() == 0


# ----------------------------------------------------------------------------- real GRPO steps


def _trainer(tmp_path: Path, taught_model, additions, **over):
    from parallel_r1.train.rl import build_trainer

    recipe = rl_recipe(tmp_path, taught_model, additions, **over)
    (cfg,) = parse_command("rl", ["--config", str(recipe)])
    return build_trainer(cfg)[0]


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _spy_loss_inputs(trainer) -> list[dict]:
    seen = []
    inner = trainer._compute_loss

    def spy(model, inputs):
        seen.append({k: (v.detach().clone() if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()})
        return inner(model, inputs)

    trainer._compute_loss = spy
    return seen


def _group_key(row) -> tuple:
    return row["step"], row["round"], row["prompt_id"]


@pytest.mark.parametrize("drop", [True, False])
def test_the_loss_forward_sees_only_informative_groups(tmp_path, taught_model, additions, drop):
    trainer = _trainer(tmp_path, taught_model, additions, rl_steps=4, drop_zero_advantage_groups=drop)
    seen = _spy_loss_inputs(trainer)
    trainer.train()
    rows = _rows(tmp_path / "run" / "rollouts.jsonl")
    rewards: dict = {}
    for r in rows:
        rewards.setdefault(_group_key(r), set()).add(r["reward"])
    informative = {k for k, v in rewards.items() if len(v) > 1}
    assert 0 < len(informative) < len(rewards), "the taught model should give both kinds of group"
    # the rows that reach the loss with weight: their completions, by text of ids
    trained_ids = Counter()
    for inputs in seen:
        mask = C.loss_mask(inputs)
        for i in range(mask.size(0)):
            if mask[i].any():
                ids = inputs["completion_ids"][i][inputs["completion_mask"][i].bool()].tolist()
                trained_ids[tuple(ids)] += 1
    by_group = Counter()
    for r in rows:
        if _group_key(r) in informative:
            by_group["informative"] += 1
    n_trained = sum(trained_ids.values())
    if drop:
        assert n_trained == by_group["informative"]  # exactly the informative groups' rollouts
        assert all(r["trained"] == (_group_key(r) in informative) for r in rows)
        total_rows = sum(x["completion_ids"].size(0) for x in seen)
        assert total_rows < len(rows)  # the dead groups cost no forward
    else:
        assert n_trained == len(rows)  # TRL's default: every rollout reaches the loss forward
    metrics = _rows(tmp_path / "run" / "metrics.jsonl")
    assert sum(m["informative_groups"] for m in metrics) == len(informative)
    assert sum(m["generated_groups"] for m in metrics) == len(rewards)


def test_dropping_dead_groups_changes_only_the_normaliser(tmp_path, taught_model, additions):
    """The gradient of the informative rows alone, normalised by their tokens, equals the gradient
    of the whole batch (zero-advantage rows included) rescaled from all tokens to theirs."""
    trainer = _trainer(tmp_path, taught_model, additions, drop_zero_advantage_groups=False, rl_steps=1)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train's loop
    for generation in trainer.get_train_dataloader():  # until a batch holds both kinds of group
        batch = trainer._generate_step(list(generation))
        rewards = torch.tensor([r["reward"] for r in trainer._round_rows])
        info = C.informative_groups(rewards, trainer.num_generations)
        if 0 < info.sum() < info.numel():
            break
    else:
        pytest.fail("no generation mixed informative and dead groups")
    rows = info.repeat_interleave(trainer.num_generations).nonzero().squeeze(1)
    kept = C.take_rows(batch, rows)
    kept["num_items_in_batch"] = C.loss_mask(kept).sum()

    def grads(inputs):
        trainer.model.zero_grad()
        trainer.args.steps_per_generation, spg = 1, trainer.args.steps_per_generation  # the whole batch at once
        try:
            trainer._compute_loss(trainer.model, inputs).backward()
        finally:
            trainer.args.steps_per_generation = spg
        return torch.cat([p.grad.flatten() for p in trainer.model.parameters() if p.grad is not None])

    full, part = grads(batch), grads(kept)
    scale = float(batch["num_items_in_batch"]) / float(kept["num_items_in_batch"])
    assert full.abs().max() > 0
    torch.testing.assert_close(part, full * scale, rtol=1e-4, atol=1e-7)


def test_dynamic_sampling_fills_the_step_with_informative_groups(tmp_path, taught_model, additions):
    over = dict(rl_steps=3, save_every=1, num_informative_groups=2, max_generation_rounds=4)
    trainer = _trainer(tmp_path, taught_model, additions, **over)
    seen = _spy_loss_inputs(trainer)
    trainer.train()
    run = tmp_path / "run"
    rows, metrics = _rows(run / "rollouts.jsonl"), _rows(run / "metrics.jsonl")
    assert trainer.args.drop_zero_advantage_groups  # implied
    for m in metrics:
        step = [r for r in rows if r["step"] == m["step"]]
        assert m["rollouts"] == len(step) == 4 * m["generated_groups"]
        assert m["generation_rounds"] == len({r["round"] for r in step}) <= 4
        assert m["trained_groups"] == min(2, m["informative_groups"])
        trained = [r for r in step if r["trained"]]
        assert len(trained) == 4 * m["trained_groups"]
        groups = {}
        for r in trained:
            groups.setdefault((r["round"], r["prompt_id"]), set()).add(r["reward"])
        assert all(len(v) > 1 for v in groups.values())
        if m["generation_rounds"] > 1:  # it only went on because round 0 lacked informative groups
            assert len({(r["round"], r["prompt_id"]) for r in step if r["round"] == 0 and r["trained"]}) < 2
    assert any(m["generation_rounds"] > 1 for m in metrics) or all(m["trained_groups"] == 2 for m in metrics)
    assert len(seen) == 3 * trainer.args.steps_per_generation
    # a resumed run counts a step's rows from its metrics row, not generation_batch_size
    from parallel_r1.train.rl import last_whole_step

    assert last_whole_step(trainer.args) == 3


def test_extra_rounds_draw_the_same_prompts_again(tmp_path, taught_model, additions):
    trainer = _trainer(tmp_path, taught_model, additions, num_informative_groups=1)
    a, b = trainer._extra_round(1, GEN_BATCH), trainer._extra_round(1, GEN_BATCH)
    assert [x["prompt_id"] for x in a] == [x["prompt_id"] for x in b]
    assert [x["prompt_id"] for x in a] != [x["prompt_id"] for x in trainer._extra_round(2, GEN_BATCH)]
    assert len(a) == GEN_BATCH and all(len(set(x["prompt_id"] for x in a[i : i + 4])) == 1 for i in (0, 4))


@pytest.mark.parametrize(
    "over,message",
    [
        (dict(num_informative_groups=3), "between 1 and the 2 prompt groups"),
        (dict(num_informative_groups=0), "between 1"),
        (dict(max_generation_rounds=0), "max_generation_rounds"),
    ],
)
def test_dynamic_sampling_settings_are_checked(tmp_path, taught_model, additions, over, message):
    recipe = rl_recipe(tmp_path, taught_model, additions, **over)
    with pytest.raises(ValueError, match=message):
        parse_command("rl", ["--config", str(recipe)])
    ok = rl_recipe(tmp_path, taught_model, additions, num_informative_groups=2, max_generation_rounds=2)
    (cfg,) = parse_command("rl", ["--config", str(ok)])
    assert cfg.num_informative_groups == 2 and cfg.drop_zero_advantage_groups


def _final_weights(tmp_path, taught_model, additions, **over):
    from parallel_r1.train.rl import build_trainer

    recipe = rl_recipe(tmp_path, taught_model, additions, rl_steps=3, **over)
    (cfg,) = parse_command("rl", ["--config", str(recipe)])
    trainer, _ = build_trainer(cfg)
    forwards = []
    inner = trainer._get_per_token_logps_and_entropies

    def count(model, input_ids, *args, **kwargs):
        if not torch.is_grad_enabled() and not trainer._old_placeholder:
            forwards.append(input_ids.size(0))  # TRL's old-log-prob forward (no reference model here)
        return inner(model, input_ids, *args, **kwargs)

    trainer._get_per_token_logps_and_entropies = count
    trainer.train()
    metrics = _rows(tmp_path / "run" / "metrics.jsonl")
    weights = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    return weights, [m["old_logprobs"] for m in metrics], forwards, metrics


def test_rollout_logprobs_as_old_give_the_same_update_without_the_forward(tmp_path, taught_model, additions):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    # 2 optimiser steps per generation: TRL runs a no-grad old-policy forward over each batch
    w_fwd, src_fwd, n_fwd, _ = _final_weights(tmp_path / "a", taught_model, additions, rollout_logprobs_as_old=False)
    w_roll, src_roll, n_roll, metrics = _final_weights(tmp_path / "b", taught_model, additions)
    assert src_fwd == ["forward"] * 3 and len(n_fwd) == 3
    assert src_roll == ["forward", "rollout", "rollout"]  # step 1 measures the gap, then it is trusted
    assert len(n_roll) == 1
    assert all(m["logprob_gap_max"] <= 1e-4 for m in metrics)  # measured on the loss forward at rollout weights
    moved = max((w_fwd[k] - w_roll[k]).abs().max() for k in w_fwd)
    assert moved < 1e-4, f"the two runs' weights differ by {moved}"


def test_rollout_logprobs_are_not_trusted_above_the_tolerance(tmp_path, taught_model, additions):
    trainer = _trainer(tmp_path, taught_model, additions, rollout_logprob_tolerance=1e-3)
    assert not trainer._rollout_logprobs_as_old()  # nothing measured yet: the forward runs
    trainer._last_gap_max = 5e-4
    assert trainer._rollout_logprobs_as_old()
    trainer._last_gap_max = 2e-3  # e.g. bf16 rollouts: back to the forward
    assert not trainer._rollout_logprobs_as_old()


def test_zero3_gathered_for_generation_needs_no_lockstep():
    from types import SimpleNamespace

    from parallel_r1.train.rl_trainer import engine_settings, zero_stage

    args = SimpleNamespace(rollout_batch_size=8, bf16=True, ds3_gather_for_generation=True)
    assert engine_settings(args, 3) == {"batch_size": 8, "dtype": "bfloat16", "lockstep": False}
    assert "lockstep" not in engine_settings(args, 2)  # ZeRO-2: whole weights anyway, the engine decides
    args.ds3_gather_for_generation = False  # sharded while decoding: every forward is a collective
    assert "lockstep" not in engine_settings(args, 3)
    plugin = SimpleNamespace(zero_stage=3)
    trainer = SimpleNamespace(accelerator=SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=plugin)))
    assert zero_stage(trainer) == 3
    trainer.accelerator.state.deepspeed_plugin = None
    assert zero_stage(trainer) is None
