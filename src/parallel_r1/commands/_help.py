"""Stored ``--help`` pages of ``parallel-r1 rl`` and ``parallel-r1 sft``.

Why stored: their configs subclass TRL's ``GRPOConfig`` / ``SFTConfig`` (so that every TRL and
transformers training field is a recipe key and a flag), and importing those pulls in torch and
transformers, about 10-20 s on a shared CPU, for a page of text. The page is therefore generated
once from the config dataclasses, by the very parser that reads the arguments
(:func:`parallel_r1.commands._config.parse_config` with ``--help``), at a fixed width, and kept
in ``commands/help/<command>.txt``. ``tests/test_train_commands.py`` regenerates it and fails when
the stored page is stale; ``python -m parallel_r1.commands._help`` rewrites it. When the file is
missing (an install without package data) the page is built live: slow, never wrong.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path

HELP_DIR = Path(__file__).parent / "help"
WIDTH = "100"  # columns the stored pages are laid out for (argparse reads $COLUMNS)


def wants_help(argv: list[str]) -> bool:
    return any(a in ("-h", "--help") for a in argv)


def generate(name: str, description: str, types: tuple[type, ...]) -> str:
    """The ``--help`` page ``parse_config`` prints for these config types."""
    from ._config import parse_config

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            parse_config(f"parallel-r1 {name}", description, types, ["--help"])
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old
    return out.getvalue()


def print_help(name: str, description: str, types) -> None:
    """Print the stored page of command ``name`` (``types``: a callable returning the config types,
    called only when the page has to be built live)."""
    path = HELP_DIR / f"{name}.txt"
    sys.stdout.write(path.read_text(encoding="utf-8") if path.exists() else generate(name, description, types()))


def parse(name: str, description: str, types, argv: list[str]) -> tuple:
    """``parse_config`` for command ``name``, except that ``--help`` prints the stored page
    (``types``: a callable returning the config types; not called for ``--help``)."""
    from ._config import parse_config

    if wants_help(argv):
        print_help(name, description, types)
        raise SystemExit(0)
    return parse_config(f"parallel-r1 {name}", description, types(), argv)


STORED = ("rl", "sft")  # the commands whose page is stored


def pages() -> dict[str, str]:
    """Every stored page, freshly generated: ``{command: text}``."""
    from ..cli import command_module  # by name, as the CLI does: the commands import this module

    return {name: generate(name, command_module(name).HELP, command_module(name).config_types()) for name in STORED}


if __name__ == "__main__":
    HELP_DIR.mkdir(exist_ok=True)
    for name, text in pages().items():
        (HELP_DIR / f"{name}.txt").write_text(text, encoding="utf-8")
        print(f"wrote {HELP_DIR / name}.txt")
