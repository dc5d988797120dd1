"""`parallel-r1 rl-readiness`: same RL + same eval per mid-training branch, one table.

Two branches in a fake midtrain run folder: `stable` = a random tiny Llama, `long` = the same
architecture taught (a few seconds of LM training) to answer `What is a + b?` with
`Final Answer: c`. Real RL steps run on both; the table is checked against the completions.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_GRPO
from parallel_r1.cli import main as cli_main
from parallel_r1.io import read_jsonl
from parallel_r1.train import readiness as R

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


@pytest.fixture(scope="module")
def additions(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "additions.jsonl"
    rows = [
        {"id": f"add-{a}-{b}", "problem": f"What is {a} + {b}?", "answer": str(a + b)}
        for a in range(2)
        for b in range(2)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def midtrain_run(tmp_path_factory) -> Path:
    """A folder shaped like a `parallel-r1 midtrain` run: config.json, stable/final, long/final."""
    from parallel_r1.models import build_tiny_model
    from parallel_r1.prompts import build_prompt

    run = tmp_path_factory.mktemp("mt")
    (run / "config.json").write_text(json.dumps({"stable": {"name": "stable"}, "decay": [{"name": "long"}]}))
    model, tok = build_tiny_model("llama")
    model.save_pretrained(run / "stable" / "final")
    tok.save_pretrained(run / "stable" / "final")
    torch.manual_seed(0)
    rng = random.Random(0)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    for _ in range(40):
        pairs = [(rng.randrange(2), rng.randrange(2)) for _ in range(16)]
        text = [
            build_prompt(f"What is {a} + {b}?", tok, "baseline") + f"Final Answer: {a + b}{tok.eos_token}"
            for a, b in pairs
        ]
        enc = tok(text, return_tensors="pt", padding=True)
        loss = model(**enc, labels=enc.input_ids.masked_fill(enc.attention_mask == 0, -100)).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(run / "long" / "final")
    tok.save_pretrained(run / "long" / "final")
    (run / "long" / "checkpoint-3").mkdir()  # not a final: must be ignored
    return run


def _recipe(tmp_path: Path, additions: Path, **over) -> dict:
    rl = dict(
        TINY_GRPO,
        dataset=str(additions),
        template="baseline",
        variant="seen",
        reward="accuracy",
        rl_steps=2,
        save_every=1,
        num_generations=4,
        generation_batch_size=8,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=1,
        max_completion_length=16,
        learning_rate=5e-3,
    )
    ev = dict(
        benchmarks=[str(additions)],
        template="baseline",
        variant="seen",
        temperature=1.0,
        max_new_tokens=16,
        limit=4,
        samples=4,
        k=1,
        batch_size=8,
        seed=0,
        grading_workers=1,
    )
    cfg = dict(output_dir=str(tmp_path / "ready"), rl=rl, eval=ev)
    cfg.update(over)
    return cfg


def _no_model_loads(monkeypatch):
    import parallel_r1.models as M

    def boom(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(M, "load_model", boom)
    monkeypatch.setattr(M, "load_tokenizer", boom)


def _by_hand(folder: Path, n_rows: int) -> dict:
    rows = list(read_jsonl(folder / "completions.jsonl"))
    assert len(rows) == n_rows
    return {
        "accuracy": sum(r["correct"] for r in rows) / n_rows,
        "mean_length": sum(r["length"] for r in rows) / n_rows,
        "at_budget": sum(r["finish_reason"] == "length" for r in rows) / n_rows,
    }


def test_one_row_per_branch_from_the_completions_and_rerun_reuses(
    tmp_path, additions, midtrain_run, monkeypatch, capsys
):
    cfg = R.ReadinessConfig(**_recipe(tmp_path, additions, midtrain_dir=str(midtrain_run)))
    assert list(cfg.branches) == ["stable", "long"]  # the recipe's order; checkpoint-3 is not a final
    rows = R.run_readiness(cfg)
    out = Path(cfg.output_dir)
    assert [r["branch"] for r in rows] == ["stable", "long"]
    for r in rows:
        for when in ("before", "after"):
            ref = _by_hand(out / r["branch"] / f"eval_{when}", 4 * 4)
            assert r[when]["samples"] == 16
            for key, val in ref.items():
                assert r[when][key] == pytest.approx(val), (r["branch"], when, key)
        assert r["rl_steps"] == 2
    # RL really ran on the taught branch and moved its weights (the random branch has no
    # reward signal: every group is all wrong, zero advantage)
    w0 = load_file(str(midtrain_run / "long" / "final" / "model.safetensors"))
    w1 = load_file(str(out / "long" / "rl" / "model.safetensors"))
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)
    # the taught branch answers some, stops before the budget; the random one runs to the budget
    assert rows[1]["before"]["accuracy"] > 0 and rows[1]["before"]["at_budget"] < 1
    assert rows[0]["before"]["at_budget"] > rows[1]["before"]["at_budget"]

    saved = json.loads((out / "readiness.json").read_text())
    assert [r["branch"] for r in saved["branches"]] == ["stable", "long"]
    md = (out / "readiness.md").read_text()
    lines = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert len(lines) == 3 and lines[1].startswith("| stable") and lines[2].startswith("| long")
    assert f"{100 * rows[1]['after']['accuracy']:.1f}" in lines[2]

    # re-run: every part is reused, no model is loaded, same table
    _no_model_loads(monkeypatch)
    again = R.run_readiness(R.ReadinessConfig(**_recipe(tmp_path, additions, midtrain_dir=str(midtrain_run))))
    assert [(r["before"], r["after"]) for r in again] == [(r["before"], r["after"]) for r in rows]
    assert all(r["seconds"] == {"eval_before": 0.0, "rl": 0.0, "eval_after": 0.0} for r in again)

    # a different RL recipe in the same folder is an error naming the field
    other = _recipe(tmp_path, additions, midtrain_dir=str(midtrain_run))
    other["rl"]["learning_rate"] = 1e-4
    with pytest.raises(ValueError, match="learning_rate"):
        R.run_readiness(R.ReadinessConfig(**other))


def test_interrupted_branch_resumes_its_rl_run(tmp_path, additions, midtrain_run):
    """An RL run killed after its first checkpoint continues from it (no rl_done.json yet)."""
    cfg = R.ReadinessConfig(**_recipe(tmp_path, additions, branches={"long": str(midtrain_run / "long" / "final")}))
    R.run_readiness(cfg)
    bdir = Path(cfg.output_dir) / "long"
    metrics = list(read_jsonl(bdir / "rl" / "metrics.jsonl"))
    # simulate a kill after RL step 1: drop the marker, the final weights and step 2's checkpoint
    (bdir / "rl_done.json").unlink()
    shutil.rmtree(bdir / "eval_after")
    ckpts = sorted(bdir.joinpath("rl").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    shutil.rmtree(ckpts[-1])
    rows = R.run_readiness(cfg)
    again = list(read_jsonl(bdir / "rl" / "metrics.jsonl"))
    assert [m["step"] for m in again] == [1, 2]  # step 1 kept, step 2 redone, no duplicate
    assert again[0] == metrics[0]
    assert rows[0]["rl_steps"] == 2 and (bdir / "rl_done.json").exists()


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda c, d: c.update(branches={"long": str(d / "nope" / "final")}), "branch 'long'.*does not exist"),
        (lambda c, d: c.update(branches={"long": str(d)}), "no config.json"),
        (lambda c, d: c["rl"].update(reward="no_such_reward"), "reward"),
        (lambda c, d: c["rl"].update(not_a_field=1), "not_a_field"),
        (lambda c, d: c["eval"].update(benchmarks=["no_such_bench"]), "no_such_bench"),
        (lambda c, d: c.update(midtrain_dir=str(d / "empty")), "does not exist"),
        (lambda c, d: c["eval"].update(device="cuda:99"), "device 'cuda:99'"),
    ],
)
def test_bad_input_fails_before_any_model_loads(tmp_path, additions, midtrain_run, monkeypatch, change, match):
    cfg = _recipe(tmp_path, additions, branches={"stable": str(midtrain_run / "stable" / "final")})
    change(cfg, tmp_path)
    _no_model_loads(monkeypatch)
    with pytest.raises((ValueError, KeyError, FileNotFoundError), match=match):
        R.run_readiness(R.ReadinessConfig(**cfg))
    assert not (tmp_path / "ready" / "stable").exists()


def test_cli_reports_bad_branch_cleanly(tmp_path, additions, capsys):
    import yaml

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(tmp_path, additions)))
    rc = cli_main(["rl-readiness", "--config", str(recipe), "--branches", f"long={tmp_path / 'missing'}"])
    assert rc == 2
    assert "branch 'long'" in capsys.readouterr().err
    rc = cli_main(["rl-readiness", "--config", str(recipe), "--branches", "long"])
    assert rc == 2 and "NAME=CHECKPOINT" in capsys.readouterr().err


def test_shipped_recipe_passes_every_check_without_a_model(tiny_checkpoint, monkeypatch):
    repo = Path(__file__).resolve().parents[1]
    cfg = R.load_config(repo / "recipes" / "readiness_smollm2_cpu.yaml", branches={"a": str(tiny_checkpoint)})
    _no_model_loads(monkeypatch)
    R.validate(cfg)
    assert cfg.rl["variant"] == "seen" and cfg.eval["variant"] == "seen"
    assert cfg.rl["template"] == cfg.eval["template"]  # the same prompt in RL and eval
