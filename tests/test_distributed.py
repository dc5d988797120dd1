"""Training on 2 CPU processes (gloo): the decoding engine under FSDP2, and the stages as users
launch them (``accelerate launch --config_file recipes/accelerate/...``).

Every forward of an FSDP2 model all-gathers its parameters, so two ranks whose rollouts need
different numbers of forwards hang unless the engine runs in lockstep (docs/decoding.md). The
workers below are this file run under ``torch.distributed.run`` / ``accelerate launch``; the
subprocess timeouts only guard against a hang, the assertions are on what each rank wrote.
"""

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from parallel_r1.devices import params_sharded

HERE = Path(__file__).resolve().parent


def run_workers(tmp_path, *args) -> list[dict]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent / "src"), str(HERE)]), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           str(Path(__file__).resolve()), str(tmp_path), *args]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)  # hang guard only
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]


def test_fsdp2_ranks_with_10x_different_budgets_finish_exact(tmp_path):
    ranks = run_workers(tmp_path)
    short, long = ranks
    assert short["sharded"] and long["sharded"] and short["lockstep"] and long["lockstep"]
    # rank 1 decodes much longer; rank 0 matched its forwards with dummy ones
    assert long["tokens"] > 3 * short["tokens"]
    assert short["dummy_forwards"] > 0 and long["dummy_forwards"] == 0
    assert short["forwards"] + short["dummy_forwards"] == long["forwards"] + long["dummy_forwards"]
    assert short["blocks"] >= 1 and long["blocks"] >= 1
    # the rollout log-probs equal a training forward of the sharded model (fp32), dummy steps included
    assert max(short["gap"], long["gap"]) <= 1e-4
    assert short["after"] == long["after"] == 2.0  # a collective after the rollout still pairs up


def test_unsharded_models_keep_the_fast_path():
    from parallel_r1.models import build_tiny_model

    model, tok = build_tiny_model("llama")
    assert not params_sharded(model)  # what DDP wraps: full parameters, no collective in a forward
    from parallel_r1.decoding import DecodingConfig, ParallelEngine

    assert ParallelEngine(model, tok, DecodingConfig()).lockstep is None


def worker(out: Path) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from conftest import max_gap, with_tag_bias
    from parallel_r1.decoding import DecodingConfig, ParallelEngine
    from parallel_r1.models import build_tiny_model
    from parallel_r1.structure import TagIds

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model, tok = build_tiny_model("llama")  # same seed: same weights on both ranks
    tags = TagIds.from_tokenizer(tok)
    # no bias on </Path>: paths run to their budget, so the ranks' forward counts differ ~10x
    model = with_tag_bias(model, tags, {tags.parallel_open: 6.0, tags.summary_close: 4.0})
    mesh = init_device_mesh("cpu", (2,))
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    budget = 1 if rank == 0 else 10
    cfg = DecodingConfig(max_new_tokens=30 * budget, max_path_tokens=4 * budget, max_blocks=4, seed=rank, batch_size=2)
    engine = ParallelEngine(model, tok, cfg)
    samples = engine.generate(["hello there", "x y"], n=1)
    gap = max_gap(model, tags, samples, "unseen")  # two training forwards per rank: collectives in step
    flag = torch.ones(1)
    dist.all_reduce(flag)
    (out / f"rank{rank}.json").write_text(json.dumps(dict(
        sharded=params_sharded(model), lockstep=engine.lockstep is not None, gap=gap, after=float(flag),
        tokens=sum(len(s.completion_ids) for s in samples), blocks=sum(s.num_blocks for s in samples),
        forwards=engine.stats["forwards"], dummy_forwards=engine.stats["dummy_forwards"],
    )))  # fmt: skip
    dist.destroy_process_group()


# ------------------------------------------------------------------ the stages under accelerate launch

REPO = HERE.parent
FSDP = REPO / "recipes" / "accelerate" / "fsdp_cpu_2proc.yaml"
DDP = REPO / "recipes" / "accelerate" / "cpu_2proc.yaml"


def launch(config: Path, *args: str) -> None:
    """``accelerate launch --config_file CONFIG ARGS`` with this worktree's code; fails on a crash."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(HERE)]), OMP_NUM_THREADS="1",
               TRL_EXPERIMENTAL_SILENCE="1")  # fmt: skip
    with socket.socket() as s:  # a free port: other test runs on this machine may hold the default one
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(config),
        "--main_process_port",
        str(port),
        *args,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=REPO)  # hang guard only
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


def digest(state_dict: dict) -> dict[str, str]:
    return {
        k: hashlib.sha256(v.detach().float().contiguous().numpy().tobytes()).hexdigest() for k, v in state_dict.items()
    }


def saved_weights(path: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).state_dict()


def test_launch_configs_start_two_processes():
    for config in (FSDP, DDP):
        assert yaml.safe_load(config.read_text())["num_processes"] == 2
        # accelerate's single-process launcher is what MULTI_CPU gets: only MULTI_GPU / FSDP start torchrun
        assert yaml.safe_load(config.read_text())["distributed_type"] in ("MULTI_GPU", "FSDP")


@pytest.fixture(scope="module")
def fsdp_sft(tmp_path_factory) -> tuple[Path, Path]:
    """(tiny base model, its Unseen SFT run under the FSDP2 launch, sharded checkpoints)."""
    from parallel_r1.models import save_tiny_model

    tmp = tmp_path_factory.mktemp("fsdp-sft")
    base = save_tiny_model(tmp / "tiny")
    launch(FSDP, "-m", "parallel_r1.cli", "sft", "--config", str(REPO / "recipes" / "sft_tiny.yaml"),
           "--model", str(base), "--output_dir", str(tmp / "sft"), "--train_size", "16",
           "--max_steps", "2", "--save_steps", "2")  # fmt: skip
    return base, tmp / "sft"


def test_sft_under_fsdp_saves_a_model_that_rl_loads_and_trains(fsdp_sft, tmp_path):
    from parallel_r1.cli import main

    base, sft = fsdp_sft
    assert (sft / "checkpoint-2" / "pytorch_model_fsdp_0").is_dir()  # training checkpoints stay sharded
    trained, before = saved_weights(sft), saved_weights(base)
    assert trained.keys() == before.keys()
    assert sum(not torch.equal(trained[k], before[k]) for k in trained) >= len(trained) // 2  # the full model, trained
    recipe = yaml.safe_load((REPO / "recipes" / "rl_tiny_unseen.yaml").read_text())
    recipe.update(model=str(sft), output_dir=str(tmp_path / "rl"), rl_steps=1, save_every=1, dataset_limit=8)
    (tmp_path / "rl.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["rl", "--config", str(tmp_path / "rl.yaml")]) == 0
    metrics = [json.loads(line) for line in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1]
    assert (tmp_path / "rl" / "model.safetensors").exists()


def test_unseen_rl_under_fsdp_with_10x_different_budgets_finishes_with_one_set_of_weights(fsdp_sft, tmp_path):
    base, sft = fsdp_sft
    recipe = yaml.safe_load((REPO / "recipes" / "rl_tiny_unseen.yaml").read_text())
    recipe.update(model=str(sft), output_dir=str(tmp_path / "rl"), rl_steps=1, save_every=1, dataset_limit=8,
                  max_completion_length=80, max_path_tokens=20,
                  weight_decay=0.1)  # a random model's rewards are all equal (no advantage): decay moves the weights  # fmt: skip
    (tmp_path / "rl.yaml").write_text(yaml.safe_dump(recipe))
    launch(FSDP, str(Path(__file__).resolve()), "rl", str(tmp_path), str(tmp_path / "rl.yaml"))
    short, long = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert short["sharded"] and long["sharded"] and short["lockstep"] and long["lockstep"]
    assert short["global_step"] == long["global_step"] >= 1
    # rank 0 (budgets 10x smaller) matched rank 1's extra forwards with dummy ones
    assert long["forwards"] > 3 * short["forwards"] and short["dummy_forwards"] > 0 and long["dummy_forwards"] == 0
    assert short["forwards"] + short["dummy_forwards"] == long["forwards"] + long["dummy_forwards"]
    # one set of weights: what both ranks gather is what was saved, and it moved from the SFT model
    assert short["weights"] == long["weights"] == digest(saved_weights(tmp_path / "rl"))
    assert short["weights"] != digest(saved_weights(sft))


def rl_worker(out: Path, recipe: str) -> None:
    """``parallel-r1 rl`` under the FSDP launch, with rank 0's completion budgets 10x smaller
    (test-only: the recipe's budgets are the same on every rank)."""
    import dataclasses

    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    import parallel_r1.decoding as decoding
    from parallel_r1.cli import main
    from parallel_r1.train import rl, rl_trainer

    rank = int(os.environ["RANK"])
    make_rollout_func, build_trainer, engine = rl_trainer.make_rollout_func, rl.build_trainer, decoding.ParallelEngine

    def uneven(engine_cfg, tags, schedule, *args, **kwargs):
        if rank == 0:
            engine_cfg = dataclasses.replace(engine_cfg, max_path_tokens=engine_cfg.max_path_tokens // 10)
            schedule = {k: v // 10 for k, v in schedule.items()}
        return make_rollout_func(engine_cfg, tags, schedule, *args, **kwargs)

    stats, built = [], []

    class Counted(engine):
        def generate(self, *args, **kwargs):
            out = super().generate(*args, **kwargs)
            stats.append(dict(self.stats, lockstep=self.lockstep is not None))
            return out

    rl_trainer.make_rollout_func, decoding.ParallelEngine = uneven, Counted
    rl.build_trainer = lambda cfg: built.append(build_trainer(cfg)) or built[-1]
    assert main(["rl", "--config", recipe]) == 0
    trainer = built[0][0]
    full = get_model_state_dict(
        trainer.model, options=StateDictOptions(full_state_dict=True)
    )  # every rank: the full weights
    (out / f"rank{rank}.json").write_text(json.dumps(dict(
        sharded=params_sharded(trainer.model), lockstep=all(s["lockstep"] for s in stats), global_step=trainer.state.global_step,
        forwards=sum(s["forwards"] for s in stats), dummy_forwards=sum(s["dummy_forwards"] for s in stats), weights=digest(full),
    )))  # fmt: skip


def _midtrain_recipe(tmp_path: Path, model: Path) -> Path:
    rows = [{"question": f"q {i}", "solution": " ".join(str(i + j) for j in range(5 + i % 7))} for i in range(200)]
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    mix = [{"name": "qa", "path": str(data), "weight": 1.0, "template": "{question}\n{solution}"}]
    recipe = dict(
        model=str(model), output_dir=str(tmp_path / "mt"), seq_len=32, batch_size=4, micro_batch_size=2,
        learning_rate=1e-3, logging_steps=1, save_tokens=32 * 4, save_total_limit=1, estimate_docs=16,
        stable=dict(name="stable", tokens=32 * 4 * 2, mixture=mix),
        decay=[dict(name="long", tokens=32 * 4 * 2, decay="cosine", mixture=mix)],
    )  # fmt: skip
    (tmp_path / "mt.yaml").write_text(yaml.safe_dump(recipe))
    return tmp_path / "mt.yaml"


def test_midtrain_two_stages_on_two_processes_finish_and_final_loads(tmp_path):
    from parallel_r1.models import save_tiny_model

    base = save_tiny_model(tmp_path / "tiny")
    launch(DDP, "-m", "parallel_r1.cli", "midtrain", "--config", str(_midtrain_recipe(tmp_path, base)))
    before = saved_weights(base)
    for stage in ("stable", "long"):
        report = json.loads((tmp_path / "mt" / stage / "report.json").read_text())
        assert report["steps"] == 2 and report["tokens_seen"] == 2 * 32 * 4  # 2 processes x micro 2 = batch 4
        assert not (tmp_path / "mt" / stage / "final.tmp").exists()
        weights = saved_weights(tmp_path / "mt" / stage / "final")
        assert any(not torch.equal(weights[k], before[k]) for k in weights)
        before = weights  # the decay branch moved on from the stable checkpoint


# ------------------------------------------------------------------ capacity (docs/rl.md "Capacity")


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kv_bytes_per_token_is_what_the_cache_holds(arch, dtype):
    from parallel_r1.devices import kv_bytes_per_token
    from parallel_r1.models import build_tiny_model

    model, _ = build_tiny_model(arch, num_layers=3)
    model.to(dtype)
    n = 37
    with torch.no_grad():
        cache = model(input_ids=torch.arange(5, 5 + n)[None], use_cache=True).past_key_values
    held = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    assert held == n * kv_bytes_per_token(model.config, dtype)


def test_cache_rows_is_the_largest_count_that_fits():
    from parallel_r1.devices import cache_rows, kv_bytes_per_token, recipe_config

    c = recipe_config("SmolLM2-135M")
    per = kv_bytes_per_token(c)
    for budget, tokens in [(10**9, 4096), (3 * 10**9, 1000), (per * 2 * 512 * 7, 512)]:
        # count up, as the engine's chunking adds rows: a compaction holds two caches of the chunk
        brute = 0
        while 2 * (brute + 1) * tokens * per <= budget:
            brute += 1
        assert cache_rows(c, budget, tokens) == brute


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_checkpoint_bytes_match_what_a_training_checkpoint_writes(arch, tmp_path):
    from parallel_r1.devices import checkpoint_bytes, num_parameters
    from parallel_r1.models import build_tiny_model

    model, _ = build_tiny_model(arch)
    assert num_parameters(model.config) == sum(p.numel() for p in model.parameters())  # tied embeddings once
    opt = torch.optim.AdamW(model.parameters())
    model(input_ids=torch.arange(3, 9)[None]).logits.sum().backward()
    opt.step()
    model.save_pretrained(tmp_path)
    torch.save(opt.state_dict(), tmp_path / "optimizer.pt")
    written = (tmp_path / "model.safetensors").stat().st_size + (tmp_path / "optimizer.pt").stat().st_size
    assert checkpoint_bytes(model.config) <= written <= 1.05 * checkpoint_bytes(model.config)  # + file headers


def test_capacity_note_in_the_docs_is_the_computed_one():
    from parallel_r1.devices import capacity_table, checkpoint_bytes, recipe_config

    assert capacity_table() in (REPO / "docs" / "rl.md").read_text()
    assert 47e9 < checkpoint_bytes(recipe_config("Qwen3-4B")) < 49e9  # ~48 GB: fp32 weights + AdamW of 4.0B parameters


def test_attention_that_drops_the_4d_mask_or_is_missing_fails_at_the_config(tmp_path):
    from parallel_r1.devices import check_attention_available
    from parallel_r1.train.midtrain import MidtrainConfig
    from parallel_r1.train.sft import ParallelSFTConfig

    if not torch.cuda.is_available():  # flash-attn needs CUDA: here the missing extra is named
        with pytest.raises(ImportError, match=r"parallel-r1\[flash-attn\]"):
            check_attention_available("flash_attention_2")
        with pytest.raises(ImportError, match="flash-attn"):
            MidtrainConfig(model="m", output_dir=str(tmp_path), attn_implementation="flash_attention_2",
                           stable=dict(name="s", tokens=100, mixture=[]))  # fmt: skip
        with pytest.raises(ImportError, match="flash-attn"):
            ParallelSFTConfig(
                output_dir=str(tmp_path), variant="seen", attn_implementation="flash_attention_2", use_cpu=True
            )
    with pytest.raises(ValueError, match="4-D attention mask"):
        ParallelSFTConfig(
            output_dir=str(tmp_path), variant="unseen", attn_implementation="flex_attention", use_cpu=True
        )


def test_rl_trainer_refuses_a_model_whose_attention_drops_the_4d_mask(tmp_path):
    from datasets import Dataset

    from parallel_r1.models import build_tiny_model
    from parallel_r1.structure import TagIds
    from parallel_r1.train.rl import RLConfig
    from parallel_r1.train.rl_trainer import ParallelGRPOTrainer

    model, tok = build_tiny_model("llama")
    model.config._attn_implementation = "flash_attention_2"  # what the trainer's forward would see
    args = RLConfig(output_dir=str(tmp_path), num_generations=2, generation_batch_size=2, per_device_train_batch_size=2,
                    use_cpu=True, bf16=False, report_to="none")  # fmt: skip
    with pytest.raises(ValueError, match="4-D attention mask"):
        ParallelGRPOTrainer(model=model, reward_funcs=[lambda completions, **kw: [0.0] * len(completions)], args=args,
                            train_dataset=Dataset.from_list([{"prompt": "a"}]), processing_class=tok,
                            tag_ids=TagIds.from_tokenizer(tok), scheduled_reward=None, run_dir=tmp_path)  # fmt: skip


if __name__ == "__main__":
    if sys.argv[1] == "rl":
        rl_worker(Path(sys.argv[2]), sys.argv[3])
    else:
        worker(Path(sys.argv[1]))
