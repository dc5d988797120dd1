"""``parallel-r1``: one sub-command per stage of the curriculum.

Every command is a module ``parallel_r1.commands.<name>`` (dashes become underscores) with

* ``HELP``: one line for ``parallel-r1 --help``;
* ``CONFIG``: a tuple of config dataclasses, read by :func:`parallel_r1.commands._config.parse_config`
  (``--config recipe.yaml`` plus flag overrides), or ``parse(argv) -> tuple`` for a command with
  sub-actions (``coldstart generate | filter``);
* ``run(*configs) -> int``: calls a library function. torch / transformers / TRL are imported
  inside ``run``, never at module top, so ``parallel-r1 CMD --help`` answers at once.

See docs/INTERFACES.md ("Commands").
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Order = the curriculum's order.
COMMANDS = (
    "prepare-model",
    "make-tiny-model",
    "midtrain",
    "coldstart",
    "sft",
    "rl",
    "rl-readiness",
    "generate",
    "eval",
    "score",
    "analyze",
    "report",
    "serve",
    "demo",
)


def command_module(name: str):
    """The module of command ``name`` (imported on first use)."""
    return importlib.import_module(f"parallel_r1.commands.{name.replace('-', '_')}")


def _top_parser() -> argparse.ArgumentParser:
    width = max(len(n) for n in COMMANDS)
    lines = "\n".join(f"  {n.ljust(width)}  {command_module(n).HELP}" for n in COMMANDS)
    p = argparse.ArgumentParser(
        prog="parallel-r1",
        description="Teach language models parallel thinking with reinforcement learning (Parallel-R1 + OctoThinker).",
        epilog=f"commands:\n{lines}\n\n`parallel-r1 COMMAND --help` for a command's options; "
        "every command reads `--config recipe.yaml`.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="parallel-r1 [--debug] COMMAND [options]",
    )
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    return p


def _pop_debug(argv: list[str]) -> tuple[bool, list[str]]:
    """``--debug`` before the command, or after it where it takes no value (TrainingArguments has
    a ``debug`` field: ``rl --debug underflow_overflow`` stays TRL's)."""
    keep, debug = [], False
    for i, a in enumerate(argv):
        if a == "--debug" and (not keep or i + 1 == len(argv) or argv[i + 1].startswith("-")):
            debug = True
        else:
            keep.append(a)
    return debug, keep


def parse_command(name: str, argv: list[str]) -> tuple:
    """The configs of command ``name`` from its arguments (``--config`` YAML and flags)."""
    module = command_module(name)
    if hasattr(module, "parse"):
        return module.parse(argv)
    from .commands._config import parse_config

    return parse_config(f"parallel-r1 {name}", module.HELP, module.CONFIG, argv)


INTERRUPTED = "interrupted; what was written so far is kept, re-run to continue"


def error_line(e: BaseException) -> str | None:
    """The one-line message for an error the user can fix (bad input, a path that cannot be
    read or written, a bad recipe), or None for a bug (its traceback is shown)."""
    import yaml

    if isinstance(e, OSError) and e.strerror:  # PermissionError, IsADirectoryError, NotADirectoryError, ...
        where = f"{e.filename} -> {e.filename2}" if e.filename2 else e.filename
        return f"{e.strerror.lower()}: {where}" if where else e.strerror.lower()
    if isinstance(e, KeyError):
        return str(e.args[0]) if e.args else "missing key"
    if isinstance(e, yaml.YAMLError):
        return f"malformed YAML: {str(e).splitlines()[0]}"
    if isinstance(e, (OSError, ValueError, ImportError)):  # ImportError: an optional extra (vLLM) missing
        return str(e)
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug, argv = _pop_debug(argv)
    if not argv or argv[0] in ("-h", "--help"):
        _top_parser().print_help()
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        _top_parser().print_usage(sys.stderr)
        print(f"parallel-r1: unknown command {name!r}; known: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    parsing = True
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":  # an FSDP launch: on CPU too
        from .devices import allow_fsdp_on_cpu

        allow_fsdp_on_cpu()
    try:
        configs = parse_command(name, rest)
        parsing = False
        return int(command_module(name).run(*configs) or 0)
    except KeyboardInterrupt:
        print(f"\nparallel-r1 {name}: {getattr(command_module(name), 'ON_INTERRUPT', INTERRUPTED)}", file=sys.stderr)
        return 130
    except Exception as e:
        msg = error_line(e)
        if msg is None and parsing and isinstance(e, TypeError):  # a recipe value of the wrong type
            msg = f"bad value in the config: {e}"
        if debug or msg is None:
            raise
        # library functions prefix their messages with the command name for callers outside the CLI
        msg = msg.removeprefix(f"{name}: ")
        print(f"parallel-r1 {name}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
