"""The command line: every registered command exists and has help; errors are one clean line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from parallel_r1.cli import COMMANDS, command_module, main


def test_top_level_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_unknown_command_is_a_clear_error(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_command_module_has_the_command_interface(name):
    module = command_module(name)
    assert isinstance(module.HELP, str) and "\n" not in module.HELP
    assert callable(module.run)
    assert callable(getattr(module, "parse", None)) or all(isinstance(t, type) for t in module.CONFIG)


def test_console_script_runs():
    out = subprocess.run(
        [sys.executable, "-m", "parallel_r1.cli", "--help"], capture_output=True, text=True, check=True
    )
    assert "parallel-r1" in out.stdout


def test_errors_name_the_command_once(tmp_path, capsys):
    # evaluate raises "eval: ..." for Python callers; the CLI must not print "eval: error: eval: ..."
    assert (
        main(
            ["eval", "--model", str(tmp_path), "--benchmarks", "gsm8k", "--k", "0", "--output_dir", str(tmp_path / "o")]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err == "parallel-r1 eval: error: k for gsm8k must be >= 1, got 0"
