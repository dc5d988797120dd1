"""Data-parallel ``eval``: 2 CPU processes (gloo) under ``torch.distributed.run``, the tiny model.

Each rank takes a shard of the missing (problem, sample) pairs and appends to its own
``completions.rank<R>.jsonl``; rank 0 merges them into ``completions.jsonl`` and writes
``results.json`` (docs/gpu.md, "Data-parallel evaluation"). Decoding is greedy, so a sample does not
depend on which process drew it and the 2-process table must equal the 1-process one. The worker is
this file run under ``torch.distributed.run``; the subprocess timeout only guards against a hang.
"""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

from parallel_r1 import evaluate as E
from parallel_r1.io import read_jsonl, write_jsonl

HERE = Path(__file__).resolve().parent
PROBLEMS = [{"id": f"p{i}", "problem": f"What is {i} plus {i}?", "answer": str(2 * i)} for i in range(5)]
SAMPLES = 2  # per problem: 10 pairs, 5 per rank, batches of 2
ALL_PAIRS = Counter({(f"mini-{p['id']}", s): 1 for p in PROBLEMS for s in range(SAMPLES)})  # ids: <set>-<id>


def config(model: str, out: Path, bench: Path) -> E.EvalConfig:
    return E.EvalConfig(model=model, output_dir=str(out), benchmarks=str(bench), template="no_prompt", temperature=0.0,
                        max_new_tokens=8, num_paths=2, max_blocks=1, k="2", batch_size=2, seed=0, grading_workers=1)  # fmt: skip


class Counting:
    """The engine's generate function, counting the samples asked; raises on call ``fail_on``."""

    def __init__(self, fn, fail_on: int | None = None):
        self.fn, self.fail_on, self.calls, self.samples = fn, fail_on, 0, 0

    def __call__(self, prompts, seed):
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("interrupted (test)")
        self.samples += len(prompts)
        return self.fn(prompts, seed)


def counting_engine(cfg: E.EvalConfig, fail_on: int | None = None):
    model, tok, _ = E.load_for_eval(cfg.model)
    return Counting(E.engine_generate_fn(model, tok, cfg), fail_on), tok


def run_two(tmp_path, model, out, bench, mode: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent / "src"), str(HERE)]), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           str(Path(__file__).resolve()), str(model), str(out), str(bench), mode]  # fmt: skip
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)  # hang guard only


def keys(out: Path) -> Counter:
    return Counter((r["problem_id"], r["sample_index"]) for r in read_jsonl(out / "completions.jsonl"))


def test_two_processes_write_each_pair_once_and_the_table_of_one(tiny_checkpoint, tmp_path):
    bench = tmp_path / "mini.jsonl"
    write_jsonl(bench, PROBLEMS)
    one = E.evaluate(config(str(tiny_checkpoint), tmp_path / "one", bench), progress=False)

    proc = run_two(tmp_path, tiny_checkpoint, tmp_path / "two", bench, "full")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    two = tmp_path / "two"
    assert keys(two) == ALL_PAIRS
    assert not list(two.glob("completions.rank*.jsonl"))  # merged, then removed
    shares = [json.loads((two / f"rank{r}.json").read_text())["samples"] for r in range(2)]
    assert shares == [5, 5]  # each rank drew its half
    results = json.loads((two / "results.json").read_text())
    assert results["benchmarks"] == one["benchmarks"]
    by_key = {(r["problem_id"], r["sample_index"]): r["completion"] for r in read_jsonl(two / "completions.jsonl")}
    assert by_key == {
        (r["problem_id"], r["sample_index"]): r["completion"]
        for r in read_jsonl(tmp_path / "one" / "completions.jsonl")
    }


def test_resume_after_an_interrupted_two_process_run_generates_only_the_missing_pairs(tiny_checkpoint, tmp_path):
    bench = tmp_path / "mini.jsonl"
    write_jsonl(bench, PROBLEMS)
    out = tmp_path / "run"
    proc = run_two(tmp_path, tiny_checkpoint, out, bench, "crash")  # each rank dies on its 2nd batch
    assert proc.returncode != 0
    assert not (out / "results.json").exists()
    kept = {(r["problem_id"], r["sample_index"]) for p in out.glob("completions.rank*.jsonl") for r in read_jsonl(p)}
    assert 2 <= len(kept) <= 4  # the first batch of the rank that failed first, maybe the other's

    cfg = config(str(tiny_checkpoint), out, bench)
    gen, tok = counting_engine(cfg)
    E.evaluate(cfg, generate_fn=gen, tokenizer=tok, progress=False)
    assert gen.samples == len(PROBLEMS) * SAMPLES - len(kept)
    assert keys(out) == ALL_PAIRS
    assert not list(out.glob("completions.rank*.jsonl"))
    assert json.loads((out / "results.json").read_text())["benchmarks"][str(bench)]["n_problems"] == len(PROBLEMS)


def worker(model: str, out: Path, bench: Path, mode: str) -> None:
    import torch

    torch.set_num_threads(1)
    cfg = config(model, out, bench)
    gen, tok = counting_engine(cfg, fail_on=2 if mode == "crash" else None)
    E.evaluate(cfg, generate_fn=gen, tokenizer=tok, progress=False)
    (out / f"rank{os.environ['RANK']}.json").write_text(json.dumps({"samples": gen.samples}))


if __name__ == "__main__":
    worker(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4])
