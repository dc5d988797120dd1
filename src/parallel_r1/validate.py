"""Range checks of config fields, run in the config dataclasses' ``__post_init__`` so that a bad
count, size, worker number, timeout or threshold is one clear error before any model loads.

Each check names the flag (``--field_name``) and the value given; ``None`` means "unset, use the
default" and always passes. The table of what each command refuses is in docs/cli.md.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from pathlib import Path


def _flag(name: str) -> str:
    return f"--{name}"


def positive(cfg, *names: str) -> None:
    """Each named field is > 0 (counts, sizes, budgets, workers, timeouts)."""
    for name in names:
        value = getattr(cfg, name)
        if value is not None and not value > 0:
            raise ValueError(f"{_flag(name)} must be > 0, got {value}")


def non_negative(cfg, *names: str) -> None:
    """Each named field is >= 0 (retries, delays, optional extras)."""
    for name in names:
        value = getattr(cfg, name)
        if value is not None and not value >= 0:
            raise ValueError(f"{_flag(name)} must be >= 0, got {value}")


def fraction(cfg, *names: str) -> None:
    """Each named field is a share in [0, 1] (thresholds, ratios)."""
    for name in names:
        value = getattr(cfg, name)
        if value is not None and not 0 <= value <= 1:
            raise ValueError(f"{_flag(name)} must be between 0 and 1, got {value}")


def one_of(cfg, name: str, choices: Iterable[str]) -> None:
    """The named field is one of ``choices``."""
    choices = list(choices)
    value = getattr(cfg, name)
    if value not in choices:
        raise ValueError(f"{_flag(name)}: unknown value {value!r}; known: {', '.join(choices)}")


def output_folder(path: str | os.PathLike) -> None:
    """``path`` can become a folder: neither it nor its nearest existing parent is a file (checked
    before a model loads, rather than failing at the first write after it)."""
    for p in (Path(path), *Path(path).parents):
        if p.exists():
            if not p.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, "Not a folder", str(p))
            return
