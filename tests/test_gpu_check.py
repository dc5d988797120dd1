"""``make gpu-check`` on a machine without a GPU, its stages on the CPU at a tiny size
(``GPU_CHECK_CPU=1``), and the wheelhouse's offline "what is missing" logic (docs/gpu.md)."""

import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

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


def test_wheelhouse_names_the_vllm_for_torch_211_and_why_it_is_not_carried():
    sys.path.insert(0, str(ROOT / "scripts"))
    import wheelhouse

    report = wheelhouse.vllm_report("2.11.0+cu130")
    assert "vllm==0.26.0" in report and "289.6 MiB" in report and "64 MiB" in report
    assert "vllm==0.30.0" in wheelhouse.vllm_report("2.13.0") and "no vLLM release" in wheelhouse.vllm_report("2.9")
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'vllm-torch211 = ["vllm==0.26.0"]' in pyproject and 'requires-python = ">=3.11"' in pyproject


def test_wheelhouse_prefers_the_target_and_checks_the_image_versions(tmp_path):
    import zipfile

    sys.path.insert(0, str(ROOT / "scripts"))
    import wheelhouse

    pytest_v = metadata.version("pytest")
    target = tmp_path / "target"
    (target / "pytest-0.0.1.dist-info").mkdir(parents=True)
    (target / "pytest-0.0.1.dist-info" / "METADATA").write_text("Name: pytest\nVersion: 0.0.1\n")
    (tmp_path / wheelhouse.MANIFEST).write_text("pytest==0.0.1\n")
    (tmp_path / wheelhouse.IMAGE_MANIFEST).write_text("PyYAML\n")
    assert wheelhouse.missing(tmp_path, target) == []  # installed in the target earlier: not again
    with zipfile.ZipFile(tmp_path / "needy-1.0-py3-none-any.whl", "w") as z:
        z.writestr("needy-1.0.dist-info/METADATA", "Name: needy\nRequires-Dist: pyyaml>=999\n")
    with pytest.raises(SystemExit, match=r"pyyaml .* \(needs >=999 \(needy\)\)"):
        wheelhouse.missing(tmp_path, target)
    with zipfile.ZipFile(tmp_path / "needy-1.0-py3-none-any.whl", "w") as z:
        z.writestr("needy-1.0.dist-info/METADATA", "Name: needy\nRequires-Dist: pyyaml>=5\n")
    assert wheelhouse.missing(tmp_path, target) == [] and pytest_v


def test_wheelhouse_installs_only_what_this_python_lacks(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    import wheelhouse

    pytest_v = metadata.version("pytest")
    (tmp_path / wheelhouse.MANIFEST).write_text(f"pytest=={pytest_v}\nPyYAML==0.0.1\nno-such-dist==1.0\n")
    assert wheelhouse.missing(tmp_path, tmp_path / "target") == ["PyYAML==0.0.1", "no-such-dist==1.0"]
    assert (
        not wheelhouse.excluded("PyYAML") and wheelhouse.excluded("nvidia-cudnn-cu13") and wheelhouse.excluded("Jinja2")
    )
