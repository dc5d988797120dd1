"""The decoding engine under sharded parameters: 2 CPU processes (gloo), FSDP2, uneven rollouts.

Every forward of an FSDP2 model all-gathers its parameters, so two ranks whose rollouts need
different numbers of forwards hang unless the engine runs in lockstep (docs/decoding.md). The
worker below is this file run under ``torch.distributed.run``; the subprocess timeout only guards
against a hang, the assertions are on what each rank wrote.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

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

    from parallel_r1.decoding import DecodingConfig, ParallelEngine
    from parallel_r1.models import build_tiny_model
    from parallel_r1.structure import TagIds
    from test_decoding import max_gap, with_tag_bias

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


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
