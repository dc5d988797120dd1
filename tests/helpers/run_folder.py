"""A synthetic RL run folder written to the run-folder schema (docs/INTERFACES.md), for the tests
of `analyze`, `report` and the experiment scripts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from parallel_r1.format import analyze as analyze_trace
from parallel_r1.io import write_jsonl

BUDGET = 64


def trace(step: int, i: int, early: bool) -> str:
    """A completion whose block sits near the start (early) or near the end (late)."""
    block = (
        f"<Parallel><Path>route A for {i}: 3 + 4 = 7</Path><Path>route B <b>&amp; check</b> {i}: 7</Path></Parallel>\n"
        "<Summary>both give 7</Summary>"
    )
    filler = "We add the numbers carefully. " * 8
    return (block + filler if early else filler + block) + "\nFinal Answer: 7"


EVAL_TAGS = ("checkpoint-4", "checkpoint-8")


def make_run(
    root: Path, n_steps: int = 8, per_step: int = 4, pinned: bool = False, eval_tags=EVAL_TAGS, training: bool = True
) -> Path:
    """A run folder as `parallel-r1 rl` writes it: config.yaml, rollouts.jsonl, metrics.jsonl, eval/.

    ``eval_tags`` get results whose aime24 mean@k is 0.25, 0.5, ... in order; ``training=False``
    leaves only the evaluations (the demo's eval stage without an RL run)."""
    run = root / ("run_pinned" if pinned else "run")
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(
        yaml.safe_dump({"model": "tiny", "max_completion_length": BUDGET, "reward": "alternating"})
    )
    rollouts, logged = [], []
    for step in range(1, n_steps + 1):
        mode = "accuracy" if (step - 1) % 4 < 3 else "parallel"
        rows = []
        for i in range(per_step):
            uses = i < 1 + step * (per_step - 1) // n_steps  # parallel ratio grows over the run
            text = trace(step, i, early=step <= n_steps // 2) if uses else "3 + 4 = 7\nFinal Answer: 7"
            if i == per_step - 1 and step == 2:
                text = "<Parallel><Path>only one path</Path></Parallel>\nFinal Answer: 7"  # a format error
            rep = analyze_trace(text)
            correct = (i + step) % 3 != 0
            length = BUDGET if pinned and step > n_steps // 2 else 20 + 3 * step + i
            rows.append(
                {
                    "step": step,
                    "prompt_id": f"p{i % 2}",
                    "sample_index": i // 2,
                    "prompt": f"What is 3 + 4? <{i}>",
                    "completion": text,
                    "answer": "7",
                    "reward": (1.0 if correct else -1.0) + (0.2 if mode == "parallel" and uses else 0.0),
                    "correct": correct,
                    "reward_mode": mode,
                    "uses_parallel": rep.uses_parallel,
                    "format_ok": rep.format_ok,
                    "num_blocks": rep.num_blocks,
                    "paths_per_block": rep.paths_per_block,
                    "positions": rep.positions,
                    "length": length,
                    "clipped": length >= BUDGET,
                }
            )
        rollouts += rows
        logged.append(
            {
                "step": step,
                "global_step": step * 2,
                "loss": 0.1 / step,
                "reward_mode": int(mode == "parallel"),
                "reward_mode_name": mode,
                "parallel_ratio": np.mean([r["uses_parallel"] for r in rows]),
                "mean_parallel_position": None,
            }
        )
    if training:
        write_jsonl(run / "rollouts.jsonl", rollouts)
        write_jsonl(run / "metrics.jsonl", logged)
    else:
        (run / "config.yaml").unlink()
    for j, ckpt in enumerate(eval_tags):
        acc = 0.25 * (j + 1)
        ev = run / "eval" / ckpt
        ev.mkdir(parents=True)
        bench = {
            "n_problems": 2,
            "k": 2,
            "mean@k": acc,
            "pass@k": min(1.0, acc + 0.25),
            "maj@k": acc,
            "best@k": acc + 0.2,
            "parallel_ratio": 0.5,
            "mean_blocks": 0.5,
            "mean_length": 30.0,
            "format_error_rate": 0.0,
        }
        (ev / "results.json").write_text(
            json.dumps(
                {"model": str(run / ckpt), "settings": {}, "benchmarks": {"aime24": bench, "gsm8k": dict(bench, k=1)}}
            )
        )
        write_jsonl(
            ev / "completions.jsonl",
            [
                {
                    "benchmark": "aime24",
                    "problem_id": str(p),
                    "sample_index": s,
                    "prompt": "Solve <x>",
                    "completion": trace(9, p, False),
                    "answer": "7",
                    "pred": "7",
                    "correct": True,
                    "uses_parallel": True,
                    "format_ok": True,
                    "num_blocks": 1,
                    "positions": analyze_trace(trace(9, p, False)).positions,
                    "length": 30,
                    "finish_reason": "eos",
                }
                for p in range(2)
                for s in range(2)
            ],
        )
    return run
