"""``parallel-r1 prepare-model``: add the six tag tokens to a model (README, "What parallel thinking looks like") and save it."""

from __future__ import annotations

from dataclasses import dataclass, field

HELP = "add the six tag tokens to a model and save a ready-to-train checkpoint"


@dataclass
class PrepareModelConfig:
    model: str = field(metadata={"help": "Local folder, hub id, or an alias such as `smollm2`."})
    output_dir: str = field(metadata={"help": "Folder for the ready-to-train checkpoint."})


CONFIG = (PrepareModelConfig,)


def run(cfg: PrepareModelConfig) -> int:
    from ..models import prepare_model

    out = prepare_model(cfg.model, cfg.output_dir)
    print(f"saved {out} (six tag tokens present)")
    return 0
