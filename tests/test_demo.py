"""The demo's driver on a tiny model: every stage runs, finished stages are reused, --force redoes,
an interrupted stage continues, bad input gives clear errors. (The SmolLM2 run itself is `make demo`.)"""

import json

import pytest

from parallel_r1.cli import main
from parallel_r1.demo import DemoConfig, run_demo


def tiny_demo(tiny_checkpoint, out, **kw):
    args = dict(
        output_dir=str(out),
        model=str(tiny_checkpoint),
        sft_steps=2,
        sft_batch_size=2,
        rl_steps=2,
        rl_prompts=2,
        rl_rollouts=2,
        rl_informative_groups=1,
        eval_problems=2,
        base_eval_problems=2,
        max_new_tokens=24,
        max_path_tokens=8,
        gsm8k=False,
    )
    args.update(kw)
    return DemoConfig(**args)


def test_demo_runs_every_stage_then_reuses_them(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "demo"
    result = run_demo(tiny_demo(tiny_checkpoint, out))
    assert set(result["timings"]) == {"base", "sft", "rl", "eval", "report"}
    for stage in ("base", "sft", "rl"):
        assert json.loads((out / stage / "DONE.json").read_text())["stage"] == stage
    html = (out / "report.html").read_text()
    assert "<img" in html and "Parallel" in html
    assert [r["model"] for r in result["summary"]] == ["base", "sft", "rl"]
    assert set(result["summary"][0]["benchmarks"]) == {"synthetic_easy"}  # RL data = easy: no second set
    printed = capsys.readouterr().out
    assert "| rl |" in printed and "RL reward (alternating)" in printed
    assert "rl - sft [paired 95 %]" in printed and "| synthetic_easy |" in printed
    # dynamic sampling: each step generates rounds of prompts x rollouts until a group is informative
    rollouts = (out / "rl" / "rollouts.jsonl").read_text().splitlines()
    metrics = [json.loads(line) for line in (out / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2 and all(1 <= m["generation_rounds"] <= 3 for m in metrics)
    assert len(rollouts) == sum(m["generation_rounds"] for m in metrics) * 2 * 2
    # a second run reuses everything; --force on one stage redoes only that one
    again = run_demo(tiny_demo(tiny_checkpoint, out))
    assert again["timings"] == {}
    assert "done earlier" in capsys.readouterr().out
    forced = run_demo(tiny_demo(tiny_checkpoint, out, stages="eval", force=True))
    assert set(forced["timings"]) == {"eval"}


def test_a_stage_without_its_input_names_what_to_run(tiny_checkpoint, tmp_path):
    with pytest.raises(FileNotFoundError, match="no base model .* run the base stage first"):
        run_demo(tiny_demo(tiny_checkpoint, tmp_path / "d", stages="eval"))


def test_bad_input_gives_one_clear_line(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    assert main(["demo", "--output-dir", str(tmp_path / "d"), "--data-dir", str(tmp_path / "missing")]) == 2
    assert "--data-dir" in capsys.readouterr().err
    assert main(["demo", "--output-dir", str(tmp_path / "d"), "--stages", "sft,nope"]) == 2
    assert "unknown stage" in capsys.readouterr().err
    assert main(["demo", "--output-dir", str(tmp_path / "d"), "--rl-reward", "acuracy"]) == 2
    err = capsys.readouterr().err
    assert "--rl-reward" in err and "'acuracy'" in err and "alternating" in err
    assert not (tmp_path / "d").exists()  # refused before any stage ran

    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10, 10, 100 * 2**20))
    assert main(["demo", "--output-dir", str(tmp_path / "d"), "--model", str(tiny_checkpoint), "--stages", "base"]) == 2
    err = capsys.readouterr().err
    assert "GiB free" in err and not (tmp_path / "d" / "base" / "DONE.json").exists()


def test_an_interrupted_stage_continues_on_the_next_run(tiny_checkpoint, tmp_path, monkeypatch):
    import parallel_r1.evaluate as ev

    out = tmp_path / "demo"
    run_demo(tiny_demo(tiny_checkpoint, out, stages="base,sft,rl"))
    real, calls = ev.evaluate, []

    def interrupted(cfg, *a, **kw):  # Ctrl-C while the second model is being evaluated
        calls.append(cfg.output_dir)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(cfg, *a, **kw)

    monkeypatch.setattr(ev, "evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_demo(tiny_demo(tiny_checkpoint, out, stages="eval"))
    assert not (out / "rl" / "eval" / "DONE.json").exists()
    base_rows = (out / "rl" / "eval" / "base" / "completions.jsonl").read_text()
    monkeypatch.setattr(ev, "evaluate", real)
    result = run_demo(tiny_demo(tiny_checkpoint, out, stages="eval"))
    assert set(result["timings"]) == {"eval"} and (out / "rl" / "eval" / "DONE.json").exists()
    assert (out / "rl" / "eval" / "base" / "completions.jsonl").read_text() == base_rows  # nothing regenerated
