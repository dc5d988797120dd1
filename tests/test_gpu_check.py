"""``make gpu-check`` on a machine without a GPU, its stages on the CPU at a tiny size
(``GPU_CHECK_CPU=1``), and the wheelhouse's offline "what is missing" logic (docs/gpu.md)."""

import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_check(**env) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1", **env)
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_check.py")], env=env, capture_output=True, text=True, timeout=1800
    )


def test_without_a_gpu_it_says_so_and_exits_0():
    proc = run_check(CUDA_VISIBLE_DEVICES="")  # no GPU visible, on any machine
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "gpu-check: no GPU" in proc.stdout and "GPU_CHECK_CPU=1" in proc.stdout
    assert not re.search(r"^stage ", proc.stdout, re.M)  # nothing ran


def test_stages_run_on_the_cpu_at_a_tiny_size():
    proc = run_check(GPU_CHECK_CPU="1", CUDA_VISIBLE_DEVICES="")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = {m.group(1): m.group(0) for m in re.finditer(r"^stage ([\w-]+): .*$", proc.stdout, re.M)}
    assert list(lines)[:4] == ["sft", "rl", "eval", "speed"]
    assert all(re.match(rf"stage {s}: ok  \d+\.\d s", lines[s]) for s in ("sft", "rl", "eval", "speed"))
    assert "2 steps, one process" in lines["sft"]
    gap = float(re.search(r"log-prob gap (\S+) \(fp32\)", lines["rl"]).group(1))
    assert gap <= 1e-4  # fp32 on the CPU: rollout and trainer log-probs agree
    assert "4 samples" in lines["eval"]  # 2 problems x k=2, each once
    assert re.search(r"= \d+ decode tokens/s", lines["speed"])
    vllm = [name for name in lines if "vllm" in name]
    assert vllm and all("skipped" in lines[n] for n in vllm)  # no vLLM / no GPU here: a printed skip
    assert re.search(r"^gpu-check: all stages ok", proc.stdout, re.M)


def test_wheelhouse_installs_only_what_this_python_lacks(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    import wheelhouse

    pytest_v = metadata.version("pytest")
    (tmp_path / wheelhouse.MANIFEST).write_text(f"pytest=={pytest_v}\nPyYAML==0.0.1\nno-such-dist==1.0\n")
    assert wheelhouse.missing(tmp_path, tmp_path / "target") == ["PyYAML==0.0.1", "no-such-dist==1.0"]
    assert (
        not wheelhouse.excluded("PyYAML") and wheelhouse.excluded("nvidia-cudnn-cu13") and wheelhouse.excluded("Jinja2")
    )
