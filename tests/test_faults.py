"""Killed mid-write, run again: nothing lost, nothing doubled.

Each trainer (sft, rl, midtrain) runs as a real ``parallel-r1`` process whose checkpoint write
stops half-way: ``trainer_state.json`` of checkpoint ``AT`` is half written, the process tells the
test through a file and blocks, and the test SIGKILLs it (a handshake: no sleep decides anything).
The re-run must skip that torn checkpoint, resume from the last complete one and leave every log
row exactly once. ``generate --output`` is killed between rows the same way.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import yaml

import conftest
from parallel_r1.cli import main
from parallel_r1.io import read_jsonl

REPO = Path(__file__).resolve().parents[1]

# argv: READY_FILE STEP COMMAND ARGS...; the checkpoint of optimiser step STEP is torn
DRIVER = """
import dataclasses, json, sys, threading
from transformers.trainer_callback import TrainerState

ready, at = sys.argv[1], int(sys.argv[2])
save = TrainerState.save_to_json

def torn_save(self, path):
    if self.global_step == at and "checkpoint-" in str(path):
        text = json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)
        with open(path, "w") as f:
            f.write(text[: len(text) // 2])  # killed in the middle of the write
        open(ready, "w").write(str(path))
        threading.Event().wait()  # until the test's SIGKILL
    save(self, path)

TrainerState.save_to_json = torn_save
from parallel_r1.cli import main
sys.exit(main(sys.argv[3:]))
"""


def kill_mid_checkpoint(tmp_path: Path, at: int, argv: list[str]) -> Path:
    """Run ``parallel-r1 ARGV`` until it is half-way through checkpoint ``at``, then SIGKILL it."""
    ready, log = tmp_path / "ready", tmp_path / "killed.log"
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), TRL_EXPERIMENTAL_SILENCE="1")
    with open(log, "wb") as err:  # a file, not a pipe: a full pipe would block the run
        proc = subprocess.Popen(
            [sys.executable, "-c", DRIVER, str(ready), str(at), *argv], env=env, stdout=err, stderr=err
        )
    try:
        while not ready.exists():  # polling a file the process writes, then blocks: not a race
            if proc.poll() is not None:
                raise AssertionError(f"the run ended before checkpoint {at}: {log.read_text()[-2000:]}")
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return Path(ready.read_text()).parent


GEN_BATCH = conftest.GEN_BATCH  # completions per RL step


def rl_recipe(tmp_path: Path, model: Path, **over) -> Path:
    """test_rl's tiny-model GRPO recipe on additions (2 optimiser steps per RL step), shorter."""
    data = tmp_path / "additions.jsonl"
    data.write_text(
        "".join(
            json.dumps({"id": f"add-{a}-{b}", "problem": f"What is {a} + {b}?", "answer": str(a + b)}) + "\n"
            for a in range(4)
            for b in range(4)
        )
    )
    short = dict(dataset_limit=4, max_completion_length=16, max_path_tokens=8, max_blocks=1, learning_rate=1e-3)
    return conftest.rl_recipe(tmp_path, model, data, **{"epsilon_high": None, **short, **over})


def test_sft_killed_mid_checkpoint_resumes_from_the_last_complete_one(tiny_checkpoint, tmp_path, capsys):
    data = tmp_path / "sft.jsonl"
    data.write_text(
        "".join(
            json.dumps({"id": i, "problem": f"What is {i} + 4?", "response": f"It is {i + 4}.\nFinal Answer: {i + 4}"})
            + "\n"
            for i in range(8)
        )
    )
    out = tmp_path / "run"
    argv = [
        "sft",
        "--config",
        str(REPO / "recipes/sft_tiny.yaml"),
        "--model",
        str(tiny_checkpoint),
        "--train_data",
        str(data),
        "--output_dir",
        str(out),
        "--max_steps",
        "4",
        "--save_steps",
        "1",
        "--disable_tqdm",
        "true",
    ]
    torn = kill_mid_checkpoint(tmp_path, 3, argv)
    assert torn.name == "checkpoint-3" and (out / "checkpoint-2").is_dir()
    assert main(argv) == 0
    summary = json.loads((out / "sft_summary.json").read_text())
    assert Path(summary["resumed_from"]).name == "checkpoint-2"
    losses = [r["step"] for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]
    assert losses == [1, 2, 3, 4]  # steps 3+ of the killed run were logged again, once
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4


def test_rl_killed_mid_checkpoint_resumes_from_the_last_complete_one(tiny_checkpoint, tmp_path):
    recipe = rl_recipe(tmp_path, tiny_checkpoint, rl_steps=3, save_every=1)
    out = tmp_path / "run"
    argv = ["rl", "--config", str(recipe)]
    torn = kill_mid_checkpoint(tmp_path, 4, argv)  # RL step 2 (2 optimiser steps per RL step)
    assert torn.name == "checkpoint-4" and (out / "checkpoint-2").is_dir()
    assert main(argv) == 0
    summary = json.loads((out / "rl_summary.json").read_text())
    assert Path(summary["resumed_from"]).name == "checkpoint-2"
    assert Counter(r["step"] for r in read_jsonl(out / "rollouts.jsonl")) == {s: GEN_BATCH for s in (1, 2, 3)}
    assert [m["step"] for m in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3]


def test_rl_torn_rollout_line_drops_its_whole_step_and_regenerates_it(tiny_checkpoint, tmp_path):
    from parallel_r1.cli import parse_command
    from parallel_r1.train.rl import build_trainer

    recipe = rl_recipe(tmp_path, tiny_checkpoint, rl_steps=2, save_every=1)

    def train():  # build_trainer + train, without the final save: the run is not finished
        trainer, ckpt = build_trainer(*parse_command("rl", ["--config", str(recipe)]))
        trainer.train(resume_from_checkpoint=ckpt)
        return trainer, ckpt

    train()  # checkpoints at RL steps 1 and 2 (optimiser steps 2 and 4)
    run = tmp_path / "run"
    text = (run / "rollouts.jsonl").read_text()
    (run / "rollouts.jsonl").write_text(text[: len(text) - 40])  # step 2's last row torn: 7 whole rows of 8
    trainer, ckpt = train()  # resumes from RL step 1 and generates step 2 again
    assert Path(ckpt).name == "checkpoint-2" and trainer.state.global_step == 4
    assert Counter(r["step"] for r in read_jsonl(run / "rollouts.jsonl")) == {1: GEN_BATCH, 2: GEN_BATCH}
    assert [m["step"] for m in read_jsonl(run / "metrics.jsonl")] == [1, 2]


def test_midtrain_killed_mid_checkpoint_resumes_from_the_last_complete_one(tiny_checkpoint, tmp_path, capsys):
    rows = [{"text": " ".join(str(i + j) for j in range(20))} for i in range(100)]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = tmp_path / "mid.yaml"
    recipe.write_text(
        yaml.safe_dump(
            dict(
                model=str(tiny_checkpoint),
                output_dir=str(tmp_path / "run"),
                seq_len=32,
                batch_size=2,
                micro_batch_size=2,
                learning_rate=1e-3,
                logging_steps=1,
                save_tokens=64,
                stable=dict(
                    name="stable",
                    tokens=64 * 4,
                    mixture=[dict(name="docs", path=str(tmp_path / "docs.jsonl"), weight=1.0)],
                ),
            )
        )
    )
    argv = ["midtrain", "--config", str(recipe)]
    torn = kill_mid_checkpoint(tmp_path, 3, argv)
    stage = tmp_path / "run" / "stable"
    assert torn == stage / "checkpoint-3" and (stage / "checkpoint-2").is_dir()
    capsys.readouterr()
    assert main(argv) == 0
    assert "resuming from checkpoint-2" in capsys.readouterr().out
    report = json.loads((stage / "report.json").read_text())
    assert report["tokens_seen"] == 64 * 4 and len(report["loss_curve"]) == 4


def test_generate_output_resumes_by_problem_and_sample_index(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "s.jsonl"
    argv = [
        "generate",
        "--model",
        str(tiny_checkpoint),
        "--problem",
        "1+1?",
        "--problem",
        "2+2?",
        "--n",
        "2",
        "--max-new-tokens",
        "8",
        "--seed",
        "0",
        "--output",
        str(out),
    ]
    assert main(argv) == 0
    rows = list(read_jsonl(out))
    assert [(r["problem_id"], r["sample_index"]) for r in rows] == [
        ("problem-0", 0),
        ("problem-0", 1),
        ("problem-1", 0),
        ("problem-1", 1),
    ]
    assert main(argv) == 0  # all there: nothing appended
    assert list(read_jsonl(out)) == rows
    # killed while writing the last row: it is torn; the re-run writes exactly that one again
    text = out.read_text()
    out.write_text(text[: text.rstrip("\n").rfind("\n") + 1] + '{"problem_id": "problem-1", "sampl')
    capsys.readouterr()
    assert main(argv) == 0
    assert "wrote 1 samples" in capsys.readouterr().out
    assert Counter((r["problem_id"], r["sample_index"]) for r in read_jsonl(out)) == {
        (r["problem_id"], r["sample_index"]): 1 for r in rows
    }
