"""Where a training stage resumes from: one rule for SFT, RL and mid-training.

Every stage writes transformers ``checkpoint-N`` folders into its run folder. Re-running a stage
resumes from the newest one that was saved completely: a save killed mid-way lacks the file the
stage writes last (``trainer_state.json`` for the Trainer; mid-training also needs its
``data_state.json``), so it is skipped rather than loaded half-written.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# Values of ``resume_from_checkpoint`` that mean "the newest checkpoint of output_dir" / "none".
LAST = ("true", "last", "auto")
NONE = ("false", "none", "")


def last_checkpoint(run_dir: str | os.PathLike, needs: str = "trainer_state.json") -> Path | None:
    """The newest ``run_dir/checkpoint-N`` that holds ``needs``; None when there is none."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := _CHECKPOINT.match(p.name)) and (p / needs).exists()]
    return max(found)[1] if found else None


def resume_checkpoint(run_dir: str | os.PathLike, value=None, auto: bool = False, needs: str = "trainer_state.json") -> str | None:
    """The checkpoint a stage resumes from.

    ``value`` is ``resume_from_checkpoint``: a checkpoint path (must exist), ``true``/``last``/``auto``
    (the newest complete checkpoint of ``run_dir``), or None/``false`` (the newest one only when
    ``auto``, i.e. re-running the same command continues it).
    """
    text = "" if value is None else str(value).strip().lower()
    if text in LAST or (text in NONE and auto):
        ckpt = last_checkpoint(run_dir, needs)
        return None if ckpt is None else str(ckpt)
    if text in NONE:
        return None
    if not Path(value).is_dir():
        raise FileNotFoundError(f"resume_from_checkpoint: no such checkpoint folder {value}")
    return str(value)


def config_dict(args, drop: tuple[str, ...] = ()) -> dict:
    """A ``TrainingArguments``-based config as YAML-safe plain values that load back as the same
    config (the run folder's ``config.yaml``); ``drop``: fields derived from others on loading."""
    import json

    d = args.to_dict()
    # to_dict masks every *_token field for the Hub token's sake; pad_token / eos_token are settings
    for k in d:
        if k.endswith("_token"):
            d[k] = None if k == "hub_token" else getattr(args, k)
    for k in drop:
        d.pop(k)
    return json.loads(json.dumps(d, default=str))


def save_final_model(trainer, output_dir: str | os.PathLike) -> None:
    """Save the trained model as a full checkpoint that ``from_pretrained`` loads, on any launch.

    Under FSDP with ``fsdp_state_dict_type: SHARDED_STATE_DICT`` (what large runs use for their
    mid-training checkpoints) ``Trainer.save_model`` writes per-rank shards only; the final save
    switches the plugin to ``FULL_STATE_DICT`` (accelerate gathers it on rank 0, which writes
    ``model.safetensors``), then switches back. Collective: every rank calls it.
    """
    plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None) if trainer.is_fsdp_enabled else None
    old = getattr(plugin, "state_dict_type", None)
    if plugin is None or "FULL_STATE_DICT" in str(old):
        trainer.save_model(str(output_dir))
        return
    plugin.set_state_dict_type("FULL_STATE_DICT")
    try:
        trainer.save_model(str(output_dir))
    finally:
        plugin.set_state_dict_type(old)
