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


def missing(wheelhouse: Path, target: Path) -> list[str]:
    """Requirements of the wheelhouse list that this Python (plus ``target``) lacks or holds in another version."""
    have = {normalize(d.metadata["Name"]): d.version for d in metadata.distributions(path=[str(target), *sys.path])}
    reqs = [r.strip() for r in (wheelhouse / MANIFEST).read_text().splitlines() if r.strip()]
    image = wheelhouse / IMAGE_MANIFEST
    absent = [n for n in (image.read_text().split() if image.exists() else []) if normalize(n) not in have]
    if absent:
        raise SystemExit(
            f"wheelhouse: this Python lacks {', '.join(absent)}, which a CUDA PyTorch image usually holds and the "
            "wheelhouse leaves out; build it with `scripts/wheelhouse.py build --full` to carry them too"
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
    i = sub.add_parser("install", help="install what this Python lacks, offline, into --target")
    i.add_argument("--wheelhouse", type=Path, default=ROOT / "wheelhouse")
    i.add_argument("--target", type=Path, required=True)
    args = p.parse_args(argv)
    if args.cmd == "build":
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
