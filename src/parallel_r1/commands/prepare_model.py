"""``parallel-r1 prepare-model``: add the six tag tokens to a model (README, "What parallel thinking looks like") and save it."""

from __future__ import annotations

from dataclasses import dataclass, field

HELP = "add the six tag tokens to a model and save a ready-to-train checkpoint"
ON_INTERRUPT = "interrupted; the checkpoint is moved in place only once complete, so nothing changed: run it again"


@dataclass
class PrepareModelConfig:
    model: str = field(metadata={"help": "Local folder, hub id, or an alias such as `smollm2`."})
    output_dir: str = field(
        metadata={"help": "Folder for the ready-to-train checkpoint: new, empty, or an earlier prepare-model output."}
    )
    force: bool = field(default=False, metadata={"help": "Replace OUTPUT_DIR even when it holds something else."})


CONFIG = (PrepareModelConfig,)


def run(cfg: PrepareModelConfig) -> int:
    from ..models import prepare_model

    out = prepare_model(cfg.model, cfg.output_dir, force=cfg.force)
    print(f"saved {out} (six tag tokens present)")
    return 0
