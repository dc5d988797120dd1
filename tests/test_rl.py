"""`parallel-r1 rl`: a few real GRPO steps per variant and schedule on a tiny model, resume, 2-process DDP.

The tiny Llama is first taught (5 s of plain LM training) to write the parallel format on the
training additions (a, b < 4; about a third right at temperature 1), so rollouts hold real
blocks, most groups mix right and wrong answers (non-zero advantages), and the Unseen log-prob
check is not vacuous.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

from conftest import GEN_BATCH, addition_trace, rl_recipe
from parallel_r1 import metrics as M
from parallel_r1.cli import main as cli_main
from parallel_r1.cli import parse_command
from parallel_r1.rewards import alternating_mode

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def _recipe(tmp_path: Path, model: Path, data: Path, **over) -> Path:
    return rl_recipe(tmp_path, model, data, **over)


def parse_config(argv: list[str]):
    """The RLConfig `parallel-r1 rl ARGV` runs with."""
    (cfg,) = parse_command("rl", argv)
    return cfg


def _train(recipe: Path, *overrides: str):
    from parallel_r1.train.rl import build_trainer

    cfg = parse_config(["--config", str(recipe), *overrides])
    trainer, ckpt = build_trainer(cfg)
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    trainer.train(resume_from_checkpoint=ckpt)
    changed = sum(not torch.equal(before[k], v) for k, v in trainer.model.named_parameters())
    return trainer, changed


def _rows(run: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (run / name).read_text().splitlines()]


def _expected_mode(reward: str, step: int, window: int, acc: int, switch: int) -> str:
    if reward == "accuracy" or (reward == "scaffold" and step > switch):
        return "accuracy"
    return alternating_mode(step, window, acc)


@pytest.mark.parametrize(
    "variant,reward",
    [(v, r) for v in ("unseen", "seen") for r in ("accuracy", "alternating", "scaffold")],
)
def test_rl_steps(tmp_path, taught_model, additions, variant, reward):
    steps, window, acc, switch = 4, 2, 1, 2
    recipe = _recipe(
        tmp_path,
        taught_model,
        additions,
        variant=variant,
        reward=reward,
        rl_steps=steps,
        alternating_window=window,
        accuracy_steps=acc,
        scaffold_steps=switch,
    )
    trainer, changed = _train(recipe)
    run = tmp_path / "run"
    assert changed > 0, "no parameter moved"

    rollouts = _rows(run, "rollouts.jsonl")
    assert Counter(r["step"] for r in rollouts) == {s: GEN_BATCH for s in range(1, steps + 1)}
    for r in rollouts:  # one row per completion, schema of docs/INTERFACES.md
        assert {
            "prompt_id",
            "sample_index",
            "prompt",
            "completion",
            "answer",
            "reward",
            "correct",
            "reward_mode",
            "uses_parallel",
            "format_ok",
            "num_blocks",
            "paths_per_block",
            "positions",
            "length",
            "clipped",
        } <= set(r)
    assert sorted(Counter((r["step"], r["prompt_id"]) for r in rollouts).values()) == [4] * (2 * steps)
    assert any(r["num_blocks"] > 0 for r in rollouts), "the taught model wrote no parallel block"
    assert len({r["reward"] for r in rollouts}) > 1

    metrics = _rows(run, "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(1, steps + 1))
    for m in metrics:
        want = _expected_mode(reward, m["step"], window, acc, switch)
        assert m["reward_mode"] == want
        assert {r["reward_mode"] for r in rollouts if r["step"] == m["step"]} == {want}
        assert m["logprob_gap_max"] <= 1e-4  # the engine's log-probs are the trainer's (float32)
        for k in (
            "parallel_ratio",
            "mean_blocks",
            "format_error_rate",
            "accuracy",
            "mean_length",
            "max_length",
            "clipped_ratio",
            "reward",
            "loss",
        ):
            assert k in m
        step_rows = [r for r in rollouts if r["step"] == m["step"]]
        # the one definition (metrics.has_parallel_block: a closed block of >= 2 paths), not num_blocks > 0
        assert m["parallel_ratio"] == pytest.approx(
            sum(M.has_parallel_block(r["completion"]) for r in step_rows) / GEN_BATCH
        )
        assert all(1 <= r["critical_path_tokens"] <= r["length"] for r in step_rows)
        assert m["mean_critical_path_tokens"] == pytest.approx(
            sum(r["critical_path_tokens"] for r in step_rows) / GEN_BATCH
        )
        assert m["accuracy"] == pytest.approx(sum(r["correct"] for r in step_rows) / GEN_BATCH)
    assert (run / "config.yaml").exists() and (run / "checkpoint-4").is_dir()
    # config.yaml is the config the run used, derived fields included: it loads back as the same
    from parallel_r1.train.rl import config_dict

    used = trainer.args
    again = parse_config(["--config", str(run / "config.yaml")])
    assert config_dict(again) == config_dict(used) and again.max_steps == steps * used.opt_steps_per_rl
    assert (again.steps_per_generation, again.opt_steps_per_rl) == (used.steps_per_generation, used.opt_steps_per_rl)


def test_unseen_logps_use_the_layout(tmp_path, taught_model, additions):
    """TRL's log-prob routine in our trainer == a brute-force forward under build_unseen_layout, and
    differs from the plain causal one on rows with blocks; tags inside the prompt are ignored."""
    from parallel_r1.structure import TagIds, build_unseen_layout
    from parallel_r1.train.rl import build_trainer

    trainer, _ = build_trainer(parse_config(["--config", str(_recipe(tmp_path, taught_model, additions))]))
    tok, model = trainer.processing_class, trainer.model
    tags = TagIds.from_tokenizer(tok)
    prompt = tok("Use <Path> tags. What is 2 + 3?", add_special_tokens=False).input_ids
    comps = [
        tok(addition_trace(2, 3, tok.eos_token), add_special_tokens=False).input_ids,
        tok("Final Answer: 5", add_special_tokens=False).input_ids,
    ]
    c_len = max(map(len, comps))
    ids = torch.tensor([prompt + c + [tok.pad_token_id] * (c_len - len(c)) for c in comps])
    mask = torch.tensor([[1] * len(prompt) + [1] * len(c) + [0] * (c_len - len(c)) for c in comps])
    with torch.no_grad():
        got, _, _ = trainer._get_per_token_logps_and_entropies(model, ids, mask, c_len)
        structure = torch.zeros_like(mask, dtype=torch.bool)
        structure[:, len(prompt) :] = mask[:, len(prompt) :].bool()
        layout = build_unseen_layout(ids, tags, attention_mask=mask, structure_mask=structure)
        logits = model(input_ids=ids, attention_mask=layout.attention_mask, position_ids=layout.position_ids).logits
        ref = torch.log_softmax(logits[:, len(prompt) - 1 : -1].float(), -1).gather(-1, ids[:, len(prompt) :, None])[
            ..., 0
        ]
        causal = torch.log_softmax(
            model(input_ids=ids, attention_mask=mask).logits[:, len(prompt) - 1 : -1].float(), -1
        )
        causal = causal.gather(-1, ids[:, len(prompt) :, None])[..., 0]
    real = mask[:, len(prompt) :].bool()
    assert torch.allclose(got[real], ref[real], atol=1e-5)
    assert (got[0] - causal[0]).abs().max() > 1e-3  # row 0 has a block: the layout matters
    assert torch.allclose(got[1][real[1]], causal[1][real[1]], atol=1e-5)  # no block in the completion: causal


def test_resume_same_schedule_same_data_no_duplicates(tmp_path, taught_model, additions):
    over = dict(reward="alternating", alternating_window=2, accuracy_steps=1, rl_steps=5, save_every=2, dataset_limit=4)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    full = _recipe(tmp_path / "a", taught_model, additions, **over)
    _train(full)
    ref = _rows(tmp_path / "a" / "run", "rollouts.jsonl")

    killed = _recipe(tmp_path / "b", taught_model, additions, **over)
    _train(killed, "--rl_steps", "4")  # checkpoints at RL steps 2 and 4
    run = tmp_path / "b" / "run"
    shutil.rmtree(run / "checkpoint-8")  # as if killed after writing step 3 and 4 rows, before checkpoint-8
    with open(run / "rollouts.jsonl", "a") as f:
        f.write('{"step": 4, "torn')  # and mid-write
    _train(killed)  # rl_steps 5: resumes from checkpoint-4 (RL step 2)
    got = _rows(run, "rollouts.jsonl")
    assert Counter(r["step"] for r in got) == {s: GEN_BATCH for s in range(1, 6)}
    # same data order across the resume and across an epoch boundary (4 problems = 2 RL steps per epoch)
    order = lambda rows: [(r["step"], r["prompt_id"]) for r in rows]  # noqa: E731
    assert order(got) == order(ref)
    metrics = _rows(run, "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5]
    assert [m["reward_mode"] for m in metrics] == [alternating_mode(s, 2, 1) for s in range(1, 6)]


def _snapshot(run: Path) -> dict:
    """Every file of a run folder (checkpoints by name) with its bytes."""
    return {
        p.relative_to(run).as_posix(): p.read_bytes() if p.is_file() else None
        for p in sorted(run.rglob("*"))
        if "checkpoint-" not in p.parent.name
    }


def test_finished_run_stays_finished_and_a_changed_recipe_is_refused(tmp_path, taught_model, additions, capsys):
    recipe = _recipe(
        tmp_path,
        taught_model,
        additions,
        reward="alternating",
        alternating_window=2,
        accuracy_steps=1,
        rl_steps=2,
        save_every=1,
        dataset_limit=4,
    )
    run = tmp_path / "run"
    assert cli_main(["rl", "--config", str(recipe)]) == 0
    done = _snapshot(run)
    assert [m["step"] for m in _rows(run, "metrics.jsonl")] == [1, 2]
    capsys.readouterr()
    assert cli_main(["rl", "--config", str(recipe)]) == 0  # finished: says so, trains nothing, writes nothing
    assert "finished" in capsys.readouterr().err
    assert _snapshot(run) == done
    assert cli_main(["rl", "--config", str(recipe), "--reward", "accuracy"]) == 2  # another recipe: refused
    err = capsys.readouterr().err
    assert "reward: 'alternating' there, 'accuracy' now" in err and "--force" in err
    assert _snapshot(run) == done
    # a folder that is not an rl run is not written into
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "notes.txt").write_text("mine")
    assert cli_main(["rl", "--config", str(recipe), "--output_dir", str(tmp_path / "notes")]) == 2
    assert "not a run folder of `rl`" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "notes").iterdir()] == ["notes.txt"]


WORKER = """
import hashlib, sys, torch
from parallel_r1.cli import parse_command
from parallel_r1.train.rl import build_trainer
trainer, ckpt = build_trainer(*parse_command("rl", ["--config", sys.argv[1]]))
digest = lambda: hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in trainer.model.parameters())).hexdigest()
start = digest()
trainer.train(resume_from_checkpoint=ckpt)
open(sys.argv[2] + f".{trainer.accelerator.process_index}", "w").write(start + " " + digest())
"""


def test_two_cpu_processes_agree(tmp_path, taught_model, additions):
    recipe = _recipe(tmp_path, taught_model, additions, rl_steps=2, save_every=2, per_device_train_batch_size=4)
    (tmp_path / "worker.py").write_text(WORKER)
    env = dict(os.environ, OMP_NUM_THREADS="1", TRL_EXPERIMENTAL_SILENCE="1")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29531",
            str(tmp_path / "worker.py"),
            str(recipe),
            str(tmp_path / "digest"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    d0, d1 = ((tmp_path / f"digest.{r}").read_text().split() for r in (0, 1))
    assert d0 == d1, "ranks disagree on the weights"
    assert d0[0] != d0[1], "weights did not move"
    rows = _rows(tmp_path / "run", "rollouts.jsonl")
    assert Counter(r["step"] for r in rows) == {1: GEN_BATCH, 2: GEN_BATCH}  # both ranks' completions, once


@pytest.mark.parametrize(
    "over,field",
    [
        ({"reward": "no_such_reward"}, "reward"),
        ({"scaffold_steps": -5}, "scaffold_steps"),
        ({"rl_steps": -1}, "rl_steps"),
        ({"dataset": "NOANSWER"}, "answer"),
    ],
)
def test_bad_recipe_fails_before_loading_the_model(tmp_path, additions, capsys, over, field):
    if over.get("dataset") == "NOANSWER":
        bad = tmp_path / "noanswer.jsonl"
        bad.write_text(json.dumps({"id": "1", "problem": "What is 1 + 1?"}) + "\n")
        over = {"dataset": str(bad)}
    recipe = _recipe(tmp_path, tmp_path / "no-such-model", additions, **over)  # loading it would fail differently
    assert cli_main(["rl", "--config", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert field in err and "no-such-model" not in err, err


def test_command_line_fields_override_the_recipe(tmp_path, additions, capsys):
    recipe = _recipe(tmp_path, tmp_path / "no-such-model", additions)
    assert cli_main(["rl", "--config", str(recipe), "--rl_steps", "-2"]) == 2
    assert "rl_steps" in capsys.readouterr().err
    assert (
        cli_main(["rl", "--config", str(recipe), "--reward", "scaffold", "--rl_steps", "3"]) == 2
    )  # valid: now the model
    assert "no-such-model" in capsys.readouterr().err


def test_length_schedule_and_clip_high_schedule():
    from parallel_r1.train.rl import rl_step_of
    from parallel_r1.train.rl_trainer import budget_at

    sched = {0: 2048, 100: 4096, 160: 8192}
    assert [budget_at(sched, s) for s in (1, 99, 100, 159, 160, 400)] == [2048, 2048, 4096, 4096, 8192, 8192]
    assert [rl_step_of(g, 2) for g in (0, 1, 2, 3, 4)] == [1, 1, 2, 2, 3]
    assert rl_step_of(0, 2, step_offset=200) == 201
    assert [budget_at({0: 0.28, 201: 0.2}, s) for s in (200, 201)] == [0.28, 0.2]


@pytest.mark.parametrize("recipe", sorted(Path(__file__).parents[1].glob("recipes/rl_*.yaml")), ids=lambda p: p.stem)
def test_shipped_recipes_parse_and_pass_the_checks(recipe):
    """Every shipped recipe is a valid RLConfig (TrlParser) and passes the pre-model checks (RLConfig
    makes them when it is built); the GPU recipes hold the papers' batch arithmetic on 8 processes."""
    gpu = not yaml.safe_load(recipe.read_text()).get("use_cpu")
    cfg = parse_config(["--config", str(recipe), *(["--bf16", "false"] if gpu else [])])  # bf16 needs a GPU here
    assert (
        cfg.max_steps == cfg.rl_steps * cfg.opt_steps_per_rl and cfg.save_steps == cfg.save_every * cfg.opt_steps_per_rl
    )
    assert cfg.generation_batch_size % cfg.num_generations == 0
    if not gpu:
        return
    opt_steps_on_8 = cfg.generation_batch_size / (cfg.per_device_train_batch_size * 8 * cfg.gradient_accumulation_steps)
    assert (opt_steps_on_8, cfg.learning_rate, cfg.beta, cfg.lr_scheduler_type) == (2, 1e-6, 0.0, "constant")
    if recipe.stem.startswith("rl_octothinker"):  # OctoThinker: 128 prompts x 16, mini-batch 64 prompts
        assert (cfg.generation_batch_size // cfg.num_generations, cfg.num_generations) == (128, 16)
        assert cfg.reward == "boxed_pm1" and cfg.template == "orz" and cfg.dataset == "math8k"
        if recipe.stem.endswith("_staged"):  # staged length
            assert len(cfg.max_response_schedule) >= 2
        else:  # the comparison setting's fixed cap
            assert cfg.max_response_schedule is None and cfg.max_completion_length == 4096
    else:  # Parallel-R1 (docs/rl.md): 256 prompts x 8, max response 3000, temperature 1
        assert (cfg.generation_batch_size // cfg.num_generations, cfg.num_generations) == (256, 8)
        assert (cfg.max_completion_length, cfg.temperature, cfg.epsilon) == (3000, 1.0, 0.2)


PARALLEL_R1_RECIPES = ["rl_parallel_r1_seen", "rl_parallel_r1_unseen_s1", "rl_parallel_r1_unseen_s2", "rl_scaffold",
                       "vllm/rl_parallel_r1_unseen_s1", "vllm/rl_parallel_r1_unseen_s2", "vllm/rl_scaffold"]  # fmt: skip


@pytest.mark.parametrize("name", PARALLEL_R1_RECIPES)
def test_parallel_r1_recipes_aggregate_the_loss_as_verl(name):
    """The conditions under which TRL's bnpo is verl's loss (docs/rl.md, "Loss aggregation"):
    micro-batch = verl's 2, accumulation 64, one PPO epoch, every micro-batch full (no group drop)."""
    cfg = yaml.safe_load((Path(__file__).parents[1] / "recipes" / f"{name}.yaml").read_text())
    assert cfg["loss_type"] == "bnpo"
    assert (cfg["per_device_train_batch_size"], cfg["gradient_accumulation_steps"], cfg.get("num_iterations", 1)) == (
        2,
        64,
        1,
    )
    assert not cfg.get("drop_zero_advantage_groups") and cfg.get("num_informative_groups") is None


@pytest.mark.parametrize("loss_type", ["bnpo", "dapo"])
def test_bnpo_is_verls_token_mean_per_micro_batch(tmp_path, taught_model, additions, loss_type):
    """verl's actor (dp_actor.update_policy: ``agg_loss(token-mean)`` per micro-batch, then
    ``loss / gradient_accumulation``) against TRL's loss through our trainer, on two micro-batches
    with unequal token counts: ``bnpo`` gives verl's gradient, ``dapo`` (a token mean over the generation batch)
    does not. The Parallel-R1 recipes therefore use ``bnpo``."""
    from parallel_r1.train.rl import build_trainer

    recipe = _recipe(tmp_path, taught_model, additions, loss_type=loss_type, per_device_train_batch_size=2,
                     gradient_accumulation_steps=2)  # fmt: skip
    trainer, _ = build_trainer(parse_config(["--config", str(recipe)]))
    tok, model = trainer.processing_class, trainer.model.train()
    prompt = tok("What is 2 + 3?", add_special_tokens=False).input_ids
    lengths = [[3, 9], [5, 5]]  # completion tokens per row: 12 and 10 tokens in the two micro-batches
    gen = torch.Generator().manual_seed(0)
    micro = []
    for rows in lengths:
        width = max(rows)
        ids = torch.randint(10, 200, (len(rows), width), generator=gen)
        mask = torch.tensor([[1] * n + [0] * (width - n) for n in rows])
        micro.append({
            "prompt_ids": torch.tensor([prompt] * len(rows)), "prompt_mask": torch.ones(len(rows), len(prompt), dtype=torch.long),
            "completion_ids": ids, "completion_mask": mask, "advantages": torch.randn(len(rows), generator=gen),
            "num_items_in_batch": torch.tensor(float(sum(map(sum, lengths)))),
        })  # fmt: skip
    trainer.current_gradient_accumulation_steps = accumulation = len(micro)

    def grads(loss_of):
        model.zero_grad()
        for mb in micro:
            loss_of(mb).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    def verl(mb):  # core_algos.compute_policy_loss + agg_loss("token-mean"), / gradient_accumulation
        ids = torch.cat([mb["prompt_ids"], mb["completion_ids"]], 1)
        attn = torch.cat([mb["prompt_mask"], mb["completion_mask"]], 1)
        logp, _, _ = trainer._get_per_token_logps_and_entropies(model, ids, attn, mb["completion_ids"].size(1))
        ratio = torch.exp(logp - logp.detach())  # on-policy: the old policy is the current one
        pg = -mb["advantages"][:, None] * ratio
        m = mb["completion_mask"].float()
        return (pg * m).sum() / (m.sum() + 1e-8) / accumulation

    ours, ref = grads(lambda mb: trainer._compute_loss(model, mb)), grads(verl)
    same = torch.allclose(ours, ref, rtol=1e-4, atol=1e-7)
    assert same is (loss_type == "bnpo"), (loss_type, (ours - ref).abs().max())
