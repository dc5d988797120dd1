"""``parallel-r1 prepare-model``: the tokenizer surgery of spec §8.1 as a command."""

from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, help="local folder, hub id, or an alias such as `smollm2`")
    p.add_argument("--out", required=True, help="folder for the ready-to-train checkpoint")


def run(args) -> int:
    from ..models import prepare_model

    out = prepare_model(args.model, args.out)
    print(f"saved {out} (six tag tokens present)")
    return 0
