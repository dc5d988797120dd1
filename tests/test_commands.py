"""One way in: every command reads a ``--config`` YAML plus flag overrides through ``parse_config``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field

import pytest

from parallel_r1.cli import COMMANDS, main, parse_command
from parallel_r1.commands._config import parse_config
from parallel_r1.io import load_yaml

HELP_PROBE = """
import json, sys
from parallel_r1.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps({"heavy": sorted(m for m in ("torch", "transformers", "trl.trainer", "datasets") if m in sys.modules)}))
"""


@pytest.mark.parametrize(
    "argv", [[name] for name in COMMANDS] + [["coldstart", "generate"], ["coldstart", "filter"]], ids=" ".join
)
def test_help_lists_config_and_imports_no_torch(argv):
    # Behavioural proxy for "--help answers at once": nothing heavy is imported to print it.
    out = subprocess.run(
        [sys.executable, "-c", HELP_PROBE, *argv, "--help"], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    page, _, last = out.stdout.rstrip().rpartition("\n")
    assert "--config" in page
    assert json.loads(last)["heavy"] == []


# ----------------------------------------------------------------------------- parse_config


@dataclass
class Toy:
    model: str = field(metadata={"help": "a required field"})
    max_new_tokens: int = field(default=3, metadata={"help": "an int"})
    benchmarks: list[str] = field(default_factory=lambda: ["aime24"], metadata={"help": "a list"})
    progress: bool = field(default=True, metadata={"help": "a bool defaulting to true"})


def _yaml(tmp_path, text: str, name: str = "recipe.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_precedence_default_then_yaml_then_command_line(tmp_path):
    (cfg,) = parse_config("toy", "", (Toy,), ["--model", "m"])
    assert (cfg.max_new_tokens, cfg.benchmarks, cfg.progress) == (3, ["aime24"], True)
    path = _yaml(tmp_path, "model: from_yaml\nmax_new_tokens: 7\nbenchmarks: [gsm8k, math500]\nprogress: false\n")
    (cfg,) = parse_config("toy", "", (Toy,), ["--config", str(path)])
    assert (cfg.model, cfg.max_new_tokens, cfg.benchmarks, cfg.progress) == (
        "from_yaml",
        7,
        ["gsm8k", "math500"],
        False,
    )
    for flag in ("--max_new_tokens", "--max-new-tokens"):
        (cfg,) = parse_config("toy", "", (Toy,), [flag, "9", "--config", str(path), "--model", "cli"])
        assert (cfg.model, cfg.max_new_tokens, cfg.benchmarks) == ("cli", 9, ["gsm8k", "math500"])


def test_yaml_env_mapping_sets_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("PARALLEL_R1_TEST_ENV", raising=False)
    path = _yaml(tmp_path, "model: m\nenv:\n  PARALLEL_R1_TEST_ENV: 1\n")
    parse_config("toy", "", (Toy,), ["--config", str(path)])
    assert os.environ["PARALLEL_R1_TEST_ENV"] == "1"


def test_unknown_yaml_key_names_file_and_key(tmp_path):
    path = _yaml(tmp_path, "model: m\nmax_new_token: 4\n")
    with pytest.raises(ValueError, match=r"recipe\.yaml: unknown key\(s\) 'max_new_token'"):
        parse_config("toy", "", (Toy,), ["--config", str(path)])


def test_missing_and_malformed_config_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such config file: .*nope.yaml"):
        parse_config("toy", "", (Toy,), ["--config", str(tmp_path / "nope.yaml")])
    bad = _yaml(tmp_path, "model: m\nbenchmarks: [a, b\nmax_new_tokens: 3\n", "bad.yaml")
    with pytest.raises(ValueError, match=r"bad\.yaml:\d+: malformed YAML"):
        parse_config("toy", "", (Toy,), ["--config", str(bad)])
    with pytest.raises(ValueError, match="expected a mapping"):
        load_yaml(_yaml(tmp_path, "- a\n- b\n", "list.yaml"))
    assert load_yaml(_yaml(tmp_path, "", "empty.yaml")) == {}


def test_unknown_flag_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        parse_config("toy", "", (Toy,), ["--model", "m", "--no-such-flag", "1"])
    assert e.value.code == 2 and "--no-such-flag" in capsys.readouterr().err


def test_recipe_errors_are_one_line_through_the_cli(tmp_path, capsys):
    path = _yaml(tmp_path, "run_dir: x\ntraces: 2\ncolour: blue\n")
    assert main(["report", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("parallel-r1 report: error: ") and "colour" in err and str(path) in err
    assert len(err.splitlines()) == 1


def test_debug_shows_the_traceback_before_or_after_the_command(tmp_path):
    missing = str(tmp_path / "nope.yaml")
    for argv in (["--debug", "report", "--config", missing], ["report", "--config", missing, "--debug"]):
        with pytest.raises(FileNotFoundError):
            main(argv)


# ----------------------------------------------------------------------------- each command

# (argv before the options, YAML recipe, field overridden on the command line, its value as text,
#  the value parsed, a field that only the YAML set and its value)
RECIPES = [
    (
        ["eval"],
        "model: m\noutput_dir: out\nbenchmarks: [gsm8k]\nmax_new_tokens: 7\n",
        "max_new_tokens",
        "9",
        9,
        "benchmarks",
        ["gsm8k"],
    ),
    (
        ["eval"],
        "model: m\noutput_dir: out\nbenchmarks: gsm8k\ntemperature: 0.5\n",
        "output_dir",
        "o2",
        "o2",
        "temperature",
        0.5,
    ),
    (["generate"], "model: m\nproblems: gsm8k\nn: 2\n", "max_new_tokens", "64", 64, "n", 2),
    (["analyze"], "run_dir: runs/x\nclip_threshold: 0.3\n", "last_steps", "4", 4, "clip_threshold", 0.3),
    (["report"], "run_dir: runs/x\ntraces: 2\n", "output", "r.html", "r.html", "traces", 2),
    (["score"], "input: in.jsonl\nrewards: [accuracy_reward]\n", "step", "9", 9, "rewards", ["accuracy_reward"]),
    (["prepare-model"], "model: smollm2\noutput_dir: a\n", "output_dir", "b", "b", "model", "smollm2"),
    (
        ["coldstart", "generate"],
        "teacher: synthetic\noutput: raw.jsonl\nlimit: 5\n",
        "max_new_tokens",
        "128",
        128,
        "limit",
        5,
    ),
    (
        ["coldstart", "filter"],
        "input: raw.jsonl\noutput: sft.jsonl\nmax_length: 1024\n",
        "require_parallel",
        "true",
        True,
        "max_length",
        1024,
    ),
]


@pytest.mark.parametrize(
    "prefix,recipe,name,text,value,yaml_field,yaml_value",
    RECIPES,
    ids=lambda x: " ".join(x) if isinstance(x, list) else None,
)
@pytest.mark.parametrize("spelling", ["underscore", "dash"])
def test_each_command_reads_a_recipe_and_overrides(
    tmp_path, prefix, recipe, name, text, value, yaml_field, yaml_value, spelling
):
    path = _yaml(tmp_path, recipe)
    flag = "--" + (name if spelling == "underscore" else name.replace("_", "-"))
    configs = parse_command(prefix[0], [*prefix[1:], "--config", str(path), flag, text])
    # a command may have several configs (generate: what to sample + how the engine samples)
    owner = {f: next(c for c in configs if hasattr(c, f)) for f in (name, yaml_field)}
    assert getattr(owner[name], name) == value
    assert getattr(owner[yaml_field], yaml_field) == yaml_value


def test_coldstart_without_an_action_lists_both(capsys):
    with pytest.raises(SystemExit) as e:
        parse_command("coldstart", ["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "generate" in out and "filter" in out and "--config" in out
    with pytest.raises(SystemExit) as e:
        parse_command("coldstart", ["frobnicate"])
    assert e.value.code == 2
