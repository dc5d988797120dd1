"""Where a training stage resumes from: one rule for SFT, RL and mid-training.

Every stage writes transformers ``checkpoint-N`` folders into its run folder. Re-running a stage
resumes from the newest one that was saved completely: :func:`completion_marker` writes
``checkpoint_complete`` into a checkpoint after everything else of it (the Trainer's files, then
every other ``on_save`` callback's, e.g. mid-training's ``data_state.json``), so a save killed
mid-way lacks it and is skipped rather than loaded half-written.

Run state (:func:`open_run`): the run folder's record (``config.yaml`` / ``config.json``) is the
recipe it was trained with. A re-run with another recipe is refused unless ``force``; a finished
run is left as it is; a folder that is not a run of the stage is never written into unless
``force``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# Values of ``resume_from_checkpoint`` that mean "the newest checkpoint of output_dir" / "none".
LAST = ("true", "last", "auto")
NONE = ("false", "none", "")


COMPLETE = "checkpoint_complete"  # written last into every checkpoint folder


def complete_checkpoints(run_dir: str | os.PathLike, needs: str = "trainer_state.json") -> list[Path]:
    """Every completely saved ``run_dir/checkpoint-N`` (it holds ``needs`` and the marker), oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in run_dir.iterdir()
        if (m := _CHECKPOINT.match(p.name)) and (p / needs).exists() and (p / COMPLETE).exists()
    ]
    return [p for _, p in sorted(found)]


def last_checkpoint(run_dir: str | os.PathLike, needs: str = "trainer_state.json") -> Path | None:
    """The newest completely saved ``run_dir/checkpoint-N``; None when there is none."""
    found = complete_checkpoints(run_dir, needs)
    return found[-1] if found else None


def checkpoint_step(ckpt: str | os.PathLike) -> int:
    """The optimiser step a checkpoint was saved at (its ``trainer_state.json``)."""
    import json

    return int(json.loads((Path(ckpt) / "trainer_state.json").read_text())["global_step"])


def truncate_after(path: str | os.PathLike, step: int) -> int:
    """Drop the rows of jsonl log ``path`` with ``step`` > ``step`` (written after the checkpoint a
    run resumes from, so written again by it) and a torn last line. Returns how many rows went."""
    from ..io import read_jsonl, write_jsonl

    path = Path(path)
    if not path.exists():
        return 0
    rows = list(read_jsonl(path, skip_bad=True))
    keep = [r for r in rows if int(r.get("step", 0)) <= step]
    write_jsonl(path, keep)
    return len(rows) - len(keep)


def drop_checkpoints_after(run_dir: str | os.PathLike, step: int) -> None:
    """Delete ``run_dir/checkpoint-N`` for N > ``step``: a run resuming from ``step`` (or starting
    over, 0) saves them again, and a save killed mid-way must not leave an old marker beside new files."""
    import shutil

    run_dir = Path(run_dir)
    if run_dir.is_dir():
        for p in run_dir.iterdir():
            if (m := _CHECKPOINT.match(p.name)) and int(m.group(1)) > step:
                shutil.rmtree(p)


def completion_marker():
    """A ``TrainerCallback`` writing :data:`COMPLETE` into each checkpoint once it is saved. Add it
    after every other callback: the Trainer calls ``on_save`` after its own files, callbacks in order."""
    from transformers import TrainerCallback

    from ..io import atomic_write_text

    class CheckpointComplete(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                atomic_write_text(
                    Path(args.output_dir) / f"checkpoint-{state.global_step}" / COMPLETE, f"{state.global_step}\n"
                )

    return CheckpointComplete()


def _load_record(path: Path, text: str | None = None) -> dict:
    """Run record ``path`` (json or yaml by its suffix), or ``text`` read back as that file would be."""
    import json

    import yaml

    text = path.read_text(encoding="utf-8") if text is None else text
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as e:
        raise ValueError(
            f"{path}: unreadable run record ({str(e).splitlines()[0]}); use another output_dir or --force"
        ) from None
    return data if isinstance(data, dict) else {}


def dump_record(path: Path, record: dict) -> str:
    """The text of run record ``path`` (json or yaml by its suffix)."""
    import json

    import yaml

    if path.suffix == ".json":
        return json.dumps(record, indent=2, ensure_ascii=False, default=str) + "\n"
    return yaml.safe_dump(record, sort_keys=False)


def open_run(
    run_dir: str | os.PathLike,
    record_name: str,
    record: dict,
    *,
    stage: str,
    force: bool = False,
    finished: str | None = None,
    free: tuple[str, ...] = (),
    budget: tuple[str, ...] = (),
) -> str:
    """What a stage does with its run folder: ``"new"``, ``"resume"`` or ``"finished"``.

    ``record`` is what the stage will write as ``run_dir/record_name``: fields in ``free`` may
    change between runs (where the run is, logging); fields in ``budget`` may change to train a
    run further (the step budget); any other difference is another recipe, refused once the
    folder holds training (a complete checkpoint, or ``finished``, the file a stage writes last).
    A record without training (a run that failed before its first checkpoint) is simply replaced.
    Finished = ``finished`` exists and the record agrees in everything but ``free``.
    A non-empty folder without the record is refused: it is not a run folder of this stage.
    ``force`` lifts both refusals. Nothing is written here; called before any model loads.
    """
    run_dir = Path(run_dir)
    path = run_dir / record_name
    if not path.exists():
        # dot-files are skipped: the record's own temporary file, written by another process of the run
        if run_dir.is_dir() and any(not p.name.startswith(".") for p in run_dir.iterdir()) and not force:
            raise ValueError(
                f"{stage}: {run_dir} is not empty and has no {record_name}: it is not a run folder of `{stage}`; "
                "use another output_dir (or --force to write into it)"
            )
        return "new"
    old = _load_record(path) if not force else {}
    new = _load_record(path, dump_record(path, record))
    done = finished is not None and (run_dir / finished).exists()
    trained = done or any(run_dir.glob(f"checkpoint-*/{COMPLETE}")) or any(run_dir.glob(f"*/checkpoint-*/{COMPLETE}"))
    changed = [k for k in sorted(set(old) | set(new)) if k not in free and old.get(k) != new.get(k)]
    if force:
        return "resume" if trained else "new"
    if [k for k in changed if k not in budget] and trained:
        detail = "; ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in changed if k not in budget)
        raise ValueError(
            f"{stage}: {run_dir} holds a run of another recipe ({detail}); use another output_dir, "
            "or --force to continue it with this recipe"
        )
    if done and not changed:
        return "finished"
    return "resume" if trained else "new"


def resume_checkpoint(
    run_dir: str | os.PathLike, value=None, auto: bool = False, needs: str = "trainer_state.json"
) -> str | None:
    """The checkpoint a stage resumes from.

    ``value`` is ``resume_from_checkpoint``: a checkpoint path (must exist), ``true``/``last``/``auto``
    (the newest complete checkpoint of ``run_dir``), ``false``/``none`` (start over), or None (the
    newest one only when ``auto``, i.e. re-running the same command continues it).
    """
    text = "" if value is None else str(value).strip().lower()
    if text in LAST or (value is None and auto):
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
