"""The project's dependencies as wheels, for a GPU machine without network (docs/gpu.md, "Wheelhouse").

    python scripts/wheelhouse.py build   [--out wheelhouse] [--python-version 3.12 ...]   # where pip reaches an index
    python scripts/wheelhouse.py install [--wheelhouse wheelhouse] --target DIR              # offline: what this Python lacks

``build`` resolves the project's dependency closure with this Python's pip (no install:
``pip install --dry-run --report``), leaves out torch and what every torch install already holds
(its own requirements, the CUDA libraries, triton) and, unless ``--full``, the large binary
packages a CUDA PyTorch image already holds (:data:`IMAGE_HAS`: numpy, pyarrow, pandas,
matplotlib, tokenizers, ...; with them one Python's wheelhouse is ~170 MiB, without them ~27 MiB,
under the 64 MiB a device call carries), downloads the rest as wheels for this Python
and for each ``--python-version`` (manylinux x86_64, the GPU machine's), adds the project's own
wheel and writes ``requirements.txt`` (name==version per line) and ``image.txt`` (the packages
expected from the image, any version) next to them.

``install`` compares that list with what this Python has and installs the missing or
different ones with ``pip --no-index --no-deps --target DIR`` (nothing else is touched; put DIR
on ``PYTHONPATH``). ``--target`` makes pip ignore what is installed, so the missing set is
computed here rather than by pip's resolver, which would also want torch.

Standard library only: it runs with a bare CUDA PyTorch image's Python.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# torch and its hard requirements: a CUDA PyTorch image has them (and the CUDA ones are GBs).
TORCH_OWN = {"torch", "triton", "setuptools", "sympy", "mpmath", "networkx", "jinja2", "markupsafe"}
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_26_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_12_x86_64", "manylinux2010_x86_64",
             "manylinux_2_5_x86_64", "manylinux1_x86_64"]  # fmt: skip
# The vLLM a torch needs: the newest release inside TRL 1.16's supported range (0.22-0.31) whose
# metadata pins that torch, read from each candidate's metadata (`pip install --dry-run --no-deps
# --report - vllm==V`, 2026-12-03): 0.25.x-0.26.0 pin torch==2.11.0, 0.27.0-0.30.0 torch==2.13.0;
# all ask transformers>=5.5.3 (0.29+: >=5.10.4) with no upper cap, so 5.23 fits. Each is one
# ~290 MiB binary wheel (0.26.0: 289.6 MiB) plus 73 requirements: no device call carries it.
VLLM_FOR_TORCH = {"2.11": ("0.26.0", 289.6), "2.13": ("0.30.0", None)}
CARRY_LIMIT_MIB = 64  # what one device call carries, the working tree included
MANIFEST = "requirements.txt"
IMAGE_MANIFEST = "image.txt"
# Binary packages every CUDA PyTorch image we know holds (NGC, pytorch/pytorch with the usual data
# stack, the project's GPU test machine: docs/gpu.md). Carrying them would cost ~140 MiB per Python;
# `install` checks they are there (any version) and names the missing ones.
IMAGE_HAS = {
    "numpy", "pyarrow", "pandas", "matplotlib", "contourpy", "kiwisolver", "pillow", "fonttools", "grpcio", "lxml",
    "tensorboard", "tensorboard-data-server", "cuda-bindings", "pyyaml", "regex", "safetensors", "tokenizers",
    "hf-xet", "xxhash", "psutil", "aiohttp", "multidict", "yarl", "frozenlist", "propcache", "protobuf",
}  # fmt: skip


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def excluded(name: str) -> bool:
    n = normalize(name)
    return n in TORCH_OWN or n.startswith("nvidia-") or n == "parallel-r1"


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def closure(project: Path) -> list[str]:
    """name==version of every distribution the project needs on this Python (torch's left out)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        pip(
            "install",
            "--quiet",
            "--dry-run",
            "--ignore-installed",
            "--report",
            str(report),
            "--target",
            f"{tmp}/t",
            str(project),
        )
        items = json.loads(report.read_text())["install"]
    pins = {normalize(i["metadata"]["name"]): i["metadata"]["version"] for i in items}
    return [f"{n}=={v}" for n, v in sorted(pins.items()) if not excluded(n)]


def build(out: Path, versions: list[str], full: bool = False) -> None:
    out.mkdir(parents=True, exist_ok=True)
    reqs = closure(ROOT)
    image = [] if full else [r for r in reqs if normalize(r.split("==")[0]) in IMAGE_HAS]
    reqs = [r for r in reqs if r not in image]
    (out / MANIFEST).write_text("\n".join(reqs) + "\n")
    (out / IMAGE_MANIFEST).write_text("".join(f"{r.split('==')[0]}\n" for r in image))
    pip("download", "--quiet", "--no-deps", "--only-binary=:all:", "-d", str(out), "-r", str(out / MANIFEST))
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    for v in dict.fromkeys(versions):
        if v != here:
            plats = [a for p in PLATFORMS for a in ("--platform", p)]
            pip("download", "--quiet", "--no-deps", "--only-binary=:all:", "--python-version", v, "--implementation", "cp",
                *plats, "-d", str(out), "-r", str(out / MANIFEST))  # fmt: skip
    pip("wheel", "--quiet", "--no-deps", "-w", str(out), str(ROOT))
    files = sorted(out.glob("*.whl"), key=lambda p: p.stat().st_size, reverse=True)
    total = sum(p.stat().st_size for p in files)
    print(
        f"wheelhouse: {out}: {len(files)} wheels, {total / 2**20:.1f} MiB (Pythons {', '.join(dict.fromkeys([here, *versions]))})"
    )
    print("largest: " + ", ".join(f"{p.name.split('-')[0]} {p.stat().st_size / 2**20:.1f} MiB" for p in files[:6]))


def vllm_report(torch_version: str) -> str:
    """Which vLLM the wheelhouse would carry for ``torch_version`` (``make wheelhouse VLLM=1``), and
    why it does not: its wheel alone is over what a device call carries."""
    key = ".".join(torch_version.split("+")[0].split(".")[:2])
    if key not in VLLM_FOR_TORCH:
        return f"wheelhouse: no vLLM release in TRL 1.16's range (0.22-0.31) pins torch {key}; known: {', '.join(VLLM_FOR_TORCH)}"
    version, mib = VLLM_FOR_TORCH[key]
    size = f"{mib:.1f} MiB" if mib else "~290 MiB"
    return (
        f"wheelhouse: torch {key} -> vllm=={version} (extra `vllm-torch{key.replace('.', '')}`), one wheel of {size} "
        f"plus its 73 requirements: over the {CARRY_LIMIT_MIB} MiB a device call carries, so it is not added; "
        "install it where the GPU machine reaches an index (pip install 'parallel-r1[vllm-torch211]')"
    )


def image_requirements(wheelhouse: Path) -> dict[str, list[str]]:
    """{image package: the version specifiers the carried wheels ask of it} (their Requires-Dist)."""
    import zipfile

    image = {normalize(n) for n in (wheelhouse / IMAGE_MANIFEST).read_text().split()}
    need: dict[str, list[str]] = {}
    for whl in wheelhouse.glob("*.whl"):
        with zipfile.ZipFile(whl) as z:
            meta = next((n for n in z.namelist() if n.endswith(".dist-info/METADATA")), None)
            text = z.read(meta).decode() if meta else ""
        for line in text.splitlines():
            if not line.startswith("Requires-Dist:") or "extra ==" in line:
                continue
            m = re.match(r"Requires-Dist:\s*([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?\s*\(?([^;)]*)", line)
            if m and normalize(m.group(1)) in image and m.group(2).strip():
                need.setdefault(normalize(m.group(1)), []).append(f"{m.group(2).strip()} ({whl.name.split('-')[0]})")
    return need


def _satisfies(version: str, spec: str) -> bool:
    from pip._vendor.packaging.specifiers import SpecifierSet  # pip's own copy: standard library + pip only

    return SpecifierSet(spec.split(" (")[0]).contains(version, prereleases=True)


def missing(wheelhouse: Path, target: Path) -> list[str]:
    """Requirements of the wheelhouse list that this Python (plus ``target``) lacks or holds in another
    version. A package in ``target`` wins over the image's copy (it comes first on ``PYTHONPATH``), so
    what an earlier run installed there is not installed again; the image's packages must meet the
    versions the carried wheels ask for (transformers checks tokenizers / safetensors / regex at
    import, datasets needs pyarrow >= 24)."""
    have: dict[str, str] = {}
    for d in metadata.distributions(path=[str(target), *sys.path]):  # first found wins, as imports do
        have.setdefault(normalize(d.metadata["Name"]), d.version)
    reqs = [r.strip() for r in (wheelhouse / MANIFEST).read_text().splitlines() if r.strip()]
    image = wheelhouse / IMAGE_MANIFEST
    absent = [n for n in (image.read_text().split() if image.exists() else []) if normalize(n) not in have]
    if absent:
        raise SystemExit(
            f"wheelhouse: this Python lacks {', '.join(absent)}, which a CUDA PyTorch image usually holds and the "
            "wheelhouse leaves out; build it with `scripts/wheelhouse.py build --full` to carry them too"
        )
    too_old = [
        f"{n} {have[n]} (needs {spec})"
        for n, specs in (image_requirements(wheelhouse) if image.exists() else {}).items()
        for spec in specs
        if n in have and not _satisfies(have[n], spec)
    ]
    if too_old:
        raise SystemExit(
            f"wheelhouse: this Python's {', '.join(too_old)} is older than the carried packages need; "
            "build the wheelhouse with `scripts/wheelhouse.py build --full` to carry them too"
        )
    return [r for r in reqs if have.get(normalize(r.split("==")[0])) != r.split("==")[1]]


def install(wheelhouse: Path, target: Path) -> list[str]:
    if not (wheelhouse / MANIFEST).exists():
        raise SystemExit(
            f"wheelhouse: {wheelhouse / MANIFEST} not found: run `make wheelhouse` where pip reaches a package index, then copy {wheelhouse}/ here"
        )
    todo = missing(wheelhouse, target)
    if todo:
        pip(
            "install",
            "--quiet",
            "--no-index",
            "--find-links",
            str(wheelhouse),
            "--no-deps",
            "--upgrade",
            "--target",
            str(target),
            *todo,
        )
    return todo


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/wheelhouse.py", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="download the wheels (needs a package index)")
    b.add_argument("--out", type=Path, default=ROOT / "wheelhouse")
    b.add_argument(
        "--python-version",
        nargs="*",
        default=["3.12"],
        help="further CPython versions to download binary wheels for (default: 3.12)",
    )
    b.add_argument(
        "--full", action="store_true", help="also carry the binary packages a CUDA PyTorch image holds (IMAGE_HAS)"
    )
    b.add_argument(
        "--vllm", metavar="TORCH", help="say which vLLM would be carried for this torch (e.g. 2.11), and its size"
    )
    i = sub.add_parser("install", help="install what this Python lacks, offline, into --target")
    i.add_argument("--wheelhouse", type=Path, default=ROOT / "wheelhouse")
    i.add_argument("--target", type=Path, required=True)
    args = p.parse_args(argv)
    if args.cmd == "build" and args.vllm:
        print(vllm_report(args.vllm))
    elif args.cmd == "build":
        build(args.out, args.python_version, args.full)
    else:
        done = install(args.wheelhouse, args.target)
        print(
            f"wheelhouse: installed {len(done)} into {args.target}: {' '.join(done)}"
            if done
            else "wheelhouse: nothing missing"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
