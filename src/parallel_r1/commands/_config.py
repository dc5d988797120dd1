"""How every command reads its settings: config dataclasses, a YAML recipe, command-line overrides.

``parse_config`` is TRL's ``TrlParser`` (a ``transformers.HfArgumentParser``) with what a CLI user
needs on top: ``--config recipe.yaml`` fills the dataclass fields, flags given on the command line
win over it, every field takes ``--field_name`` and ``--field-name``, and a bad recipe is one clear
error naming the file (and the key or line) before anything loads. TRL's parser imports neither
torch nor transformers, so ``parallel-r1 CMD --help`` stays fast.

``io.load_yaml`` is the one YAML reader, also for nested recipes that are not flat dataclasses
(``midtrain``, ``rl-readiness``), and library modules read recipes with it, never with this one.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import os
import types as pytypes
import typing

from ..io import load_yaml


def _value_fits(value, tp) -> bool:
    """Whether a YAML value can become a field of type ``tp``. Strings are what a command line
    gives, so a string fits a number or a boolean when it reads as one (argparse converts it)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, pytypes.UnionType):
        return any(_value_fits(value, a) for a in args)
    if tp is type(None):
        return value is None
    if origin is list:  # one string is one item, as on a command line
        items = [value] if isinstance(value, str) else value
        return isinstance(items, list) and (not args or all(_value_fits(v, args[0]) for v in items))
    if origin is dict:
        return isinstance(value, dict)
    if origin is typing.Literal:
        return value in args
    if tp in (int, float):
        if isinstance(value, str):
            try:
                tp(value)
            except ValueError:
                return False
            return True
        return isinstance(value, (int, float) if tp is float else int) and not isinstance(value, bool)
    if tp is bool:
        return isinstance(value, bool) or (
            isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0")
        )
    if tp is str:
        return isinstance(value, (str, int, float)) and not isinstance(value, bool)
    return True  # enums, TRL's own types: their parsers decide


def check_types(path: str | os.PathLike, values: dict, types: tuple[type, ...]) -> None:
    """A recipe value of the wrong type (a list for a count, text for a number) is one error
    naming the file, the key and the value, instead of a failure deep inside a stage."""
    hints = {}
    for t in types:
        try:
            hints.update({k: v for k, v in typing.get_type_hints(t).items() if k not in hints})
        except (NameError, TypeError):  # an annotation that cannot be resolved is not checked
            continue
    for key, value in values.items():
        tp = hints.get(key)
        if tp is not None and not (isinstance(tp, type) and issubclass(tp, enum.Enum)) and not _value_fits(value, tp):
            name = getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
            raise ValueError(f"{path}: {key}: expected {name}, got {value!r}")


def _split_config_flag(argv: list[str]) -> tuple[str | None, list[str]]:
    """(the ``--config`` path or None, argv without it)."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config", default=None)
    known, rest = pre.parse_known_args(argv)
    return known.config, rest


def parse_config(prog: str, description: str, types: tuple[type, ...], argv: list[str]) -> tuple:
    """One instance per dataclass in ``types``, from ``--config YAML`` and the flags in ``argv``.

    Precedence: command line > YAML > dataclass default. A YAML key may be any field of any of the
    ``types``; an ``env:`` mapping sets environment variables (as TRL's recipes do). Unknown YAML
    keys are a ``ValueError`` naming the file and the keys; unknown flags are argparse's usage error.
    """
    from trl.scripts.utils import TrlParser  # lazy: keeps `import parallel_r1.commands.X` light

    parser = TrlParser(types, prog=prog, description=description)
    parser.add_argument(
        "--config",
        metavar="YAML",
        default=None,
        help="recipe: a YAML mapping of any of these fields; flags given on the command line override it",
    )
    path, rest = _split_config_flag(argv)
    if path is not None and not any(a in ("-h", "--help") for a in rest):
        values = load_yaml(path)
        env = values.pop("env", {})
        if not isinstance(env, dict):
            raise ValueError(f"{path}: `env` must be a mapping of variable: value")
        fields = {f.name for t in types for f in dataclasses.fields(t) if f.init}
        unknown = [k for k in values if k not in fields]
        if unknown:
            raise ValueError(
                f"{path}: unknown key(s) {', '.join(map(repr, unknown))} for `{prog}`; known: {', '.join(sorted(fields))}"
            )
        check_types(path, values, types)
        for key, value in env.items():
            os.environ[str(key)] = str(value)
        parser.set_defaults_with_config(**values)
    *parsed, remaining = parser.parse_args_into_dataclasses(
        args=rest, return_remaining_strings=True, look_for_args_file=False
    )
    if remaining:
        parser.error(f"unrecognized arguments: {' '.join(remaining)}")
    # the `--config` action leaves an extra namespace behind; only the dataclasses are returned
    return tuple(p for p in parsed if not isinstance(p, argparse.Namespace))
