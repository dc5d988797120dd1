"""``parallel-r1 midtrain --config recipes/midtrain_*.yaml [--field value ...] [--stages NAME ...]``:
OctoThinker's stable-then-decay mid-training (docs/midtrain.md). Library entry point:
:func:`parallel_r1.train.midtrain.train`.

The recipe is nested (a stable stage and decay branches with their mixtures), so it is read with
:func:`parallel_r1.io.load_yaml`; every top-level scalar field of ``MidtrainConfig``
(``output_dir``, ``model``, ``token_scale``, ``seq_len``, ...) can be overridden on the command line,
as ``--field_name`` or ``--field-name``, with a YAML value.
"""

from __future__ import annotations

HELP = "stable-then-decay continued pre-training on a data mixture (OctoThinker)"
NESTED = ("stable", "decay")  # set in the recipe only


def parse(argv: list[str]) -> tuple:
    import argparse
    import dataclasses

    import yaml

    from ..train.midtrain import MidtrainConfig, load_config

    p = argparse.ArgumentParser(prog="parallel-r1 midtrain", description=HELP)
    p.add_argument("--config", required=True, metavar="YAML", help="recipe (recipes/midtrain_*.yaml)")
    p.add_argument(
        "--stages", nargs="+", default=None, metavar="NAME", help="run only these stages, e.g. `stable` or `long short`"
    )
    for f in dataclasses.fields(MidtrainConfig):
        if f.name not in NESTED:
            dash = f.name.replace("_", "-")
            flags = [f"--{f.name}"] + ([f"--{dash}"] if dash != f.name else [])
            help = f"{f.metadata['help']} Overrides the recipe."
            p.add_argument(*flags, dest=f.name, type=yaml.safe_load, default=None, metavar="VALUE", help=help)
    args = vars(p.parse_args(argv))
    path, stages = args.pop("config"), args.pop("stages")
    return load_config(path, **args), stages


def run(cfg, stages) -> int:
    import os

    from ..train.midtrain import train

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    reports = train(cfg, only=stages)
    print("[midtrain] done: " + ", ".join(f"{n} -> {r['checkpoint']}" for n, r in reports.items()))
    return 0
