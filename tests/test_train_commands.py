"""The training commands (sft, rl, midtrain, rl-readiness, demo): a shipped recipe plus overrides in
both flag spellings, the stored `--help` pages of rl and sft are current (tests/test_commands.py
checks that no `--help` imports torch), and `--data-dir` reaching every stage of the demo."""

from __future__ import annotations

from pathlib import Path

import pytest

from parallel_r1.cli import parse_command

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.mark.parametrize("spelling", ["--{}", "--{dash}"])
def test_sft_recipe_and_overrides(spelling):
    flag = lambda name: spelling.format(name, dash=name.replace("_", "-"))  # noqa: E731
    (cfg,) = parse_command(
        "sft",
        ["--config", str(RECIPES / "sft_tiny.yaml"), flag("max_steps"), "3", flag("data_dir"), "/d", "--use_peft"],
    )
    assert (cfg.max_steps, cfg.data_dir, cfg.use_peft) == (3, "/d", True)
    assert (cfg.variant, cfg.train_size, cfg.learning_rate) == ("unseen", 32, 1e-3)  # from the recipe


@pytest.mark.parametrize("spelling", ["--{}", "--{dash}"])
def test_rl_recipe_and_overrides(spelling):
    flag = lambda name: spelling.format(name, dash=name.replace("_", "-"))  # noqa: E731
    (cfg,) = parse_command(
        "rl",
        [
            "--config",
            str(RECIPES / "rl_tiny_unseen.yaml"),
            flag("rl_steps"),
            "6",
            flag("data_dir"),
            "/d",
            "--model",
            "m",
        ],
    )
    assert (cfg.rl_steps, cfg.data_dir, cfg.model) == (6, "/d", "m")
    assert (cfg.reward, cfg.num_generations) == ("alternating", 4)  # from the recipe
    # derived when the config is made, not when the trainer is built
    assert (cfg.opt_steps_per_rl, cfg.max_steps, cfg.save_steps, cfg.logging_steps) == (2, 12, 4, 2)


def test_rl_model_flag_needs_a_value(capsys):
    with pytest.raises(SystemExit):
        parse_command("rl", ["--config", str(RECIPES / "rl_tiny_unseen.yaml"), "--model"])
    assert "--model" in capsys.readouterr().err


def test_rl_recipe_errors_come_from_the_config():
    from parallel_r1.train.rl import RLConfig

    cpu = dict(output_dir="x", use_cpu=True, bf16=False)
    with pytest.raises(ValueError, match="accuracy_steps"):
        RLConfig(alternating_window=2, accuracy_steps=3, **cpu)
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        RLConfig(generation_batch_size=8, per_device_train_batch_size=4, gradient_accumulation_steps=4, **cpu)


@pytest.mark.parametrize("spelling", ["--{}", "--{dash}"])
def test_midtrain_recipe_and_overrides(spelling):
    flag = lambda name: spelling.format(name, dash=name.replace("_", "-"))  # noqa: E731
    argv = [
        "--config",
        str(RECIPES / "midtrain_smollm2_cpu.yaml"),
        flag("token_scale"),
        "0.5",
        flag("output_dir"),
        "/o",
    ]
    cfg, stages = parse_command("midtrain", argv + [flag("seq_len"), "64", "--stages", "stable"])
    full, _ = parse_command("midtrain", ["--config", str(RECIPES / "midtrain_smollm2_cpu.yaml")])
    assert (cfg.token_scale, cfg.output_dir, cfg.seq_len, stages) == (0.5, "/o", 64, ["stable"])
    assert [s.tokens for s in cfg.stages] == [int(s.tokens * 0.5) for s in full.stages]


@pytest.mark.parametrize("spelling", ["--{}", "--{dash}"])
def test_rl_readiness_recipe_and_overrides(spelling):
    flag = lambda name: spelling.format(name, dash=name.replace("_", "-"))  # noqa: E731
    argv = ["--config", str(RECIPES / "readiness_smollm2_cpu.yaml"), "--branches", "a=smollm2", flag("rl_steps"), "3"]
    cfg, progress = parse_command("rl-readiness", argv + [flag("data_dir"), "/d", flag("output_dir"), "/o"])
    assert (cfg.rl["rl_steps"], cfg.rl["data_dir"], cfg.eval["data_dir"], cfg.output_dir) == (3, "/d", "/d", "/o")
    assert cfg.branches == {"a": "smollm2"} and cfg.rl["reward"] == "accuracy" and progress is False


@pytest.mark.parametrize("spelling", ["--{}", "--{dash}"])
def test_demo_recipe_and_overrides(tmp_path, spelling):
    flag = lambda name: spelling.format(name, dash=name.replace("_", "-"))  # noqa: E731
    recipe = tmp_path / "demo.yaml"
    recipe.write_text("quick: true\nrl_reward: accuracy\nsft_steps: 7\n")
    (cfg,) = parse_command("demo", ["--config", str(recipe), flag("sft_steps"), "9", flag("data_dir"), "/d"])
    assert (cfg.quick, cfg.rl_reward, cfg.sft_steps, cfg.data_dir, cfg.rl_steps) == (True, "accuracy", 9, "/d", 2)


def test_demo_data_dir_reaches_the_sft_and_rl_stages(tmp_path, monkeypatch):
    import parallel_r1.train.rl as rl
    import parallel_r1.train.sft as sft
    from parallel_r1.demo import DemoConfig, stage_rl, stage_sft

    seen = {}
    monkeypatch.setattr(rl, "train", lambda c: seen.setdefault("rl", c))
    monkeypatch.setattr(sft, "train", lambda c: seen.setdefault("sft", c) and {"train": {}, "num_train_rows": 0})
    cfg = DemoConfig(output_dir=str(tmp_path), data_dir=str(tmp_path / "data"), quick=True)
    stage_sft(cfg, tmp_path / "sft")
    stage_rl(cfg, tmp_path / "rl")
    assert seen["rl"].data_dir == seen["sft"].data_dir == str(tmp_path / "data")


@pytest.mark.parametrize("name", ["rl", "sft"])
def test_stored_help_is_current(name):
    """The stored `--help` page equals the one the parser makes now from the config dataclass
    (after changing a config: `python -m parallel_r1.commands._help`)."""
    from parallel_r1.commands import _help

    stored = (_help.HELP_DIR / f"{name}.txt").read_text(encoding="utf-8")
    assert stored == _help.pages()[name], "stale: run python -m parallel_r1.commands._help"
