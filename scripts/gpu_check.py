"""One command that checks a GPU machine, offline (docs/gpu.md, "gpu-check").

    make gpu-check PY=python3             # the Python that has a CUDA build of torch
    GPU_CHECK_CPU=1 python scripts/gpu_check.py   # the same stages on the CPU, at a tiny size

Needs no downloaded weights: a tiny random model carries the stage plumbing (Unseen SFT a few
steps, Unseen RL 2 steps with the engine in the training precision, eval on the device, the vLLM
paths when vLLM and their config fields exist) and a randomly initialised model of a real
architecture (Qwen2.5-0.5B's config) gives the decode speed. Each stage's outputs are asserted;
per stage it prints one line ``stage <name>: ok  <seconds> s  ...`` with peak GPU memory, then
decode tokens/s and the rollout-vs-trainer log-prob gap. Without a GPU it says so and exits 0.

Packages this Python lacks are installed from ``wheelhouse/`` (``make wheelhouse``) with
``--no-index`` into ``.gpu-check-deps/site-packages/`` (then on ``PYTHONPATH``); nothing needs a network.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Qwen2.5-0.5B's architecture (its config.json), randomly initialised: realistic decode speed and memory.
QWEN25_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rope_theta=1e6,
                  rms_norm_eps=1e-6, tie_word_embeddings=True)  # fmt: skip
# GPU_CHECK_CPU=1: the same architecture at a size a shared CPU decodes in seconds.
TINY_QWEN = dict(
    QWEN25_05B, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=2048
)
PROBLEMS = [{"id": f"q{i}", "problem": f"What is {i} + {i + 1}?", "answer": str(2 * i + 1)} for i in range(8)]


@dataclasses.dataclass
class Setting:
    """What the check runs at: a GPU machine (full) or GPU_CHECK_CPU=1 (tiny, on the CPU)."""

    device: str
    bf16: bool
    gpus: int
    sft_steps: int
    rl_flags: list[str]  # on top of recipes/rl_tiny_unseen.yaml
    eval_problems: int
    eval_tokens: int
    speed_arch: dict
    speed_batch: int
    speed_tokens: int

    @classmethod
    def detect(cls, torch) -> Setting:
        if os.environ.get("GPU_CHECK_CPU") == "1":
            small = ["--num_generations", "2", "--generation_batch_size", "2", "--per_device_train_batch_size", "2",
                     "--max_completion_length", "16", "--max_path_tokens", "4", "--dataset_limit", "8"]  # fmt: skip
            return cls("cpu", False, 0, sft_steps=2, rl_flags=small, eval_problems=2, eval_tokens=8,
                       speed_arch=TINY_QWEN, speed_batch=2, speed_tokens=8)  # fmt: skip
        n = torch.cuda.device_count()
        return cls("cuda", True, n, sft_steps=8, rl_flags=[], eval_problems=len(PROBLEMS), eval_tokens=256,
                   speed_arch=QWEN25_05B, speed_batch=64, speed_tokens=256)  # fmt: skip


def ensure_dependencies() -> None:
    """Install what this Python lacks from wheelhouse/ (offline) into .gpu-check-deps/, and put that
    folder and src/ on PYTHONPATH for the process that ``main`` starts next."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import wheelhouse

    # "site-packages" in the path: dill (datasets' hashing) pickles modules elsewhere by value, and fails
    house, target = ROOT / "wheelhouse", ROOT / ".gpu-check-deps" / "site-packages"
    if (house / wheelhouse.MANIFEST).exists():
        done = wheelhouse.install(house, target)
        print(
            f"deps: installed {len(done)} from wheelhouse/ into .gpu-check-deps/site-packages/"
            if done
            else "deps: all present"
        )
    else:
        print("deps: no wheelhouse/ (make wheelhouse): using what this Python has")
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "src"), str(target), os.environ.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep)


class Stages:
    """Runs and times the stages; one printed line each."""

    def __init__(self, torch, setting: Setting, work: Path):
        self.torch, self.s, self.work = torch, setting, work
        self.figures: dict[str, float] = {}

    def run(self, name: str, fn) -> None:
        cuda = self.s.device == "cuda"
        if cuda:
            self.torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        detail = fn() or ""
        secs = time.perf_counter() - t0
        mem = f"  peak GPU memory {self.torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if cuda else ""
        print(f"stage {name}: ok  {secs:.1f} s{mem}  {detail}".rstrip(), flush=True)

    def cli(self, *argv: str, launch: list[str] | None = None, own_process: bool = False) -> None:
        """A ``parallel-r1`` command: in this process, in a process of its own (``own_process``: a
        vLLM stage, whose engine and torch's cache are gone with the process, so the next vLLM
        finds the GPU free; vLLM refuses to start below its ``gpu_memory_utilization`` of free
        memory, vllm 0.30 ``v1/worker/utils.py`` ~534), or under ``accelerate launch`` (FSDP on several GPUs)."""
        if launch or own_process:
            prefix = ["-m", "accelerate.commands.launch", *launch] if launch else []
            subprocess.run([sys.executable, *prefix, "-m", "parallel_r1.cli", *argv], check=True)
            return
        from parallel_r1.cli import main

        rc = main(list(argv))
        assert rc == 0, f"parallel-r1 {argv[0]} exited {rc}"

    def device_flags(self) -> list[str]:
        return (
            ["--use_cpu", "true", "--bf16", "false"]
            if self.s.device == "cpu"
            else ["--use_cpu", "false", "--bf16", "true"]
        )

    def sft(self) -> str:
        out = self.work / "sft"
        launch = None
        if self.s.gpus > 1:
            launch = [
                "--config_file",
                str(ROOT / "recipes/accelerate/fsdp_8gpu.yaml"),
                "--num_processes",
                str(self.s.gpus),
            ]
        self.cli("sft", "--config", str(ROOT / "recipes/sft_tiny.yaml"), "--model", str(self.work / "tiny"),
                 "--output_dir", str(out), "--max_steps", str(self.s.sft_steps), "--save_strategy", "no",
                 *self.device_flags(), launch=launch)  # fmt: skip
        assert (out / "config.json").exists() and list(out.glob("*.safetensors")), f"sft: no loadable model in {out}"
        return f"{self.s.sft_steps} steps, {'FSDP on ' + str(self.s.gpus) + ' GPUs' if launch else 'one process'}"

    def rl(self, *extra: str, name: str = "rl", own_process: bool = False) -> str:
        out = self.work / name
        self.cli("rl", "--config", str(ROOT / "recipes/rl_tiny_unseen.yaml"), "--model", str(self.work / "sft"),
                 "--output_dir", str(out), "--rl_steps", "2", "--save_every", "2", *self.device_flags(), *self.s.rl_flags,
                 *extra, own_process=own_process)  # fmt: skip
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
        assert [r["step"] for r in rows] == [1, 2], f"rl: metrics steps {[r['step'] for r in rows]}"
        gap = max(r.get("logprob_gap_max", 0.0) for r in rows)
        self.figures[f"{name}_logprob_gap"] = gap
        return f"2 steps, rollout-vs-trainer log-prob gap {gap:.2e} ({'bf16' if self.s.bf16 else 'fp32'})"

    def eval(self, *extra: str, name: str = "eval", own_process: bool = False) -> str:
        from parallel_r1.io import write_jsonl

        bench, out = self.work / "check.jsonl", self.work / name
        problems = PROBLEMS[: self.s.eval_problems]
        write_jsonl(bench, problems)
        self.cli("eval", "--model", str(self.work / "rl"), "--benchmarks", str(bench), "--output_dir", str(out),
                 "--template", "no_prompt", "--k", "2", "--max_new_tokens", str(self.s.eval_tokens), "--seed", "0",
                 "--device", self.s.device, "--grading_workers", "1", *extra, own_process=own_process)  # fmt: skip
        rows = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines() if line.strip()]
        pairs = sorted((r["problem_id"], r["sample_index"]) for r in rows)
        assert len(pairs) == len(set(pairs)) == 2 * len(problems), (
            f"eval: {len(pairs)} completions for {2 * len(problems)} pairs"
        )
        res = json.loads((out / "results.json").read_text())["benchmarks"][str(bench)]
        return f"{len(rows)} samples, mean@2 {res['mean@k']:.2f}, mean length {res['mean_length']:.0f} tokens"

    def speed(self) -> str:
        torch = self.torch
        from transformers import AutoModelForCausalLM, Qwen2Config

        from parallel_r1.decoding import DecodingConfig, ParallelEngine
        from parallel_r1.models import add_tag_tokens, build_tiny_tokenizer

        tok = build_tiny_tokenizer()
        add_tag_tokens(None, tok)
        cfg = Qwen2Config(
            **self.s.speed_arch, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None
        )
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa", dtype=torch.float32).to(self.s.device)
        dcfg = DecodingConfig(variant="unseen", max_new_tokens=self.s.speed_tokens, batch_size=self.s.speed_batch, seed=0,
                              dtype="bfloat16" if self.s.bf16 else "float32")  # fmt: skip
        engine = ParallelEngine(model, tok, dcfg)
        prompts = [f"Problem {i}: what is {i} times {i}?" for i in range(self.s.speed_batch)]
        engine.generate(prompts[:2], n=1)  # warm-up: kernels, allocator
        if self.s.device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        samples = engine.generate(prompts, n=1)
        if self.s.device == "cuda":
            torch.cuda.synchronize()
        secs = time.perf_counter() - t0
        tokens = sum(len(s.completion_ids) for s in samples)
        assert len(samples) == len(prompts) and tokens > 0
        self.figures["decode_tokens_per_s"] = tokens / secs
        arch = "Qwen2.5-0.5B architecture (random)" if self.s.speed_arch is QWEN25_05B else "Qwen2 tiny (random)"
        return f"{arch}: {tokens} tokens in {secs:.2f} s = {tokens / secs:.0f} decode tokens/s (batch {len(prompts)})"


def vllm_paths(stages: Stages, needs_gpu: bool = True) -> None:
    """RL with vLLM rollouts (``rollout_backend: vllm``) and ``eval --backend vllm`` when vLLM is
    importable on a GPU; a printed skip otherwise. ``needs_gpu=False`` is for the tests' CPU
    stand-in of vLLM (tests/test_vllm_rl.py); a real vLLM needs a GPU."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        print("stage vllm: skipped (vLLM is not importable)")
        return
    if needs_gpu and stages.s.device != "cuda":
        print("stage vllm: skipped (vLLM needs a GPU)")
        return
    # each vLLM in a process of its own: TRL's colocated engine of rl-vllm and torch's cache would
    # still hold the memory the eval's vLLM needs free to start
    stages.run("rl-vllm", lambda: stages.rl("--rollout_backend", "vllm", name="rl_vllm", own_process=True))
    stages.run("eval-vllm", lambda: stages.eval("--backend", "vllm", name="eval_vllm", own_process=True))


def main() -> int:
    try:
        import torch
    except ImportError:
        if not Path("/dev/nvidia0").exists() and not shutil.which("nvidia-smi"):
            print(f"gpu-check: no GPU (no NVIDIA device, and {sys.executable} has no torch); nothing to check")
            return 0
        print(
            f"gpu-check: {sys.executable} has no torch; run it with the Python of a CUDA PyTorch install (make gpu-check PY=...)"
        )
        return 1
    if os.environ.get("GPU_CHECK_CPU") != "1" and not torch.cuda.is_available():
        print(f"gpu-check: no GPU (torch {torch.__version__} in {sys.executable} sees no CUDA device); nothing to check. "
              "GPU_CHECK_CPU=1 runs the stages on the CPU at a tiny size.")  # fmt: skip
        return 0
    if os.environ.get("GPU_CHECK_DEPS_READY") != "1":
        ensure_dependencies()
        # start again with the installed packages on the path from the first import (torch came
        # first here, and finds numpy only if it is there when torch loads)
        os.environ["GPU_CHECK_DEPS_READY"] = "1"
        sys.stdout.flush()
        os.execv(sys.executable, [sys.executable, str(Path(__file__).resolve())])
    setting = Setting.detect(torch)
    where = (
        "CPU (GPU_CHECK_CPU=1, tiny sizes)"
        if setting.device == "cpu"
        else f"{setting.gpus} x {torch.cuda.get_device_name(0)}"
    )
    print(f"gpu-check: torch {torch.__version__}, {where}")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from parallel_r1.models import save_tiny_model

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        stages = Stages(torch, setting, Path(tmp))
        save_tiny_model(stages.work / "tiny")
        stages.run("sft", stages.sft)
        stages.run("rl", stages.rl)
        stages.run("eval", stages.eval)
        stages.run("speed", stages.speed)
        vllm_paths(stages)
    f = stages.figures
    print(f"gpu-check: all stages ok in {time.perf_counter() - t0:.0f} s; decode {f['decode_tokens_per_s']:.0f} tokens/s; "
          f"log-prob gap {f['rl_logprob_gap']:.2e}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
