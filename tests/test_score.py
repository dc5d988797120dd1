"""`parallel-r1 score` end to end through the CLI entry point."""

from __future__ import annotations

import json

import pytest

from parallel_r1.cli import main
from parallel_r1.format import analyze
from parallel_r1.rewards import REWARDS, compute_reward, get_schedule

PR = (
    "Two ways.<Parallel><Path>Add 40 and 2.</Path><Path>Count up from 40 by two.</Path></Parallel>\n"
    "<Summary>Both give 42.</Summary>\nFinal Answer: 42"
)
MR = "<Parallel><Path>only one path</Path></Parallel>\n<Summary>s</Summary>\nFinal Answer: 42"  # correct, malformed
PW = PR.replace("Final Answer: 42", "Final Answer: 41")  # parallel, well formed, wrong
GSM8K_SOLUTION = "Natalia sold 48/2 = <<48/2=24>>24 clips.\nAltogether 1,210+24 = <<1210+24=1234>>1,234.\n#### 1,234"

ROWS = [
    {"id": "pr", "completion": PR, "answer": "42", "meta": {"source": "rollout", "k": [1, 2]}},
    {"id": "mr", "completion": MR, "answer": 42},
    {"id": "pw", "completion": PW, "answer": "42"},
    {"id": "gsm", "completion": "So 1210 + 24.\nFinal Answer: 1,234", "answer": GSM8K_SOLUTION},
    {"id": "gsm-wrong", "completion": "Final Answer: 1,243", "answer": GSM8K_SOLUTION},
    {"id": "boxed", "completion": "thus \\boxed{\\frac{1}{2}}", "answer": "0.5"},
    {"id": "none", "completion": "", "answer": "3"},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def score(tmp_path, *extra, rows=ROWS):
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    assert main(["score", "--input", str(src), "--output", str(out), *extra]) == 0
    return read_jsonl(out)


def test_every_reward_by_default_matches_compute_reward(tmp_path):
    out = score(tmp_path, "--step", "9")
    assert [r["id"] for r in out] == [r["id"] for r in ROWS]
    for row, got in zip(ROWS, out):
        for key, value in row.items():  # extra fields kept as they were
            assert got[key] == value
        report = analyze(row["completion"])
        assert got["uses_parallel"] == report.uses_parallel
        assert got["format_ok"] == report.format_ok
        assert got["num_blocks"] == report.num_blocks
        assert got["positions"] == pytest.approx(report.positions)
        for name in REWARDS:  # the batched, grouped grading equals one reward call per row
            assert got[name] == pytest.approx(compute_reward(name, row["completion"], str(row["answer"]), step=9)), name
    by_id = {r["id"]: r for r in out}
    assert [by_id[i]["correct"] for i in ("pr", "mr", "pw", "gsm", "gsm-wrong", "boxed", "none")] == [
        True,
        True,
        False,
        True,
        False,
        True,
        False,
    ]
    assert by_id["pr"]["positions"][0] == pytest.approx(len("Two ways.") / len(PR))
    # GSM8K worked solutions are graded on their "#### N"
    assert by_id["gsm"]["accuracy_reward"] == 1.0 and by_id["gsm"]["gsm8k/accuracy_reward"] == 1.0
    assert by_id["gsm-wrong"]["accuracy_reward"] == -1.0 and by_id["gsm-wrong"]["gsm8k/accuracy_reward"] == 0.0
    assert by_id["boxed"]["boxed_pm1"] == 1.0 and by_id["boxed"]["accuracy_reward"] == -1.0


def test_alternating_reward_depends_on_step(tmp_path):
    names = ["accuracy_parallel_interv_reward", "alternating", "accuracy_reward"]
    at1 = {r["id"]: r for r in score(tmp_path, "--rewards", *names, "--step", "1")}
    at9 = {r["id"]: r for r in score(tmp_path, "--rewards", *names, "--step", "9")}
    for name in names[:2]:
        # correct, parallel, well formed: 1.0 on accuracy steps, 1.2 on parallel steps
        assert (at1["pr"][name], at9["pr"][name]) == (1.0, 1.2)
        # correct but malformed parallel: +1 on accuracy steps, punished on parallel steps
        assert (at1["mr"][name], at9["mr"][name]) == (1.0, -1.0)
        # parallel but wrong: -1 on either
        assert (at1["pw"][name], at9["pw"][name]) == (-1.0, -1.0)
    assert at1["mr"]["accuracy_reward"] == at9["mr"]["accuracy_reward"] == 1.0
    assert set(at1["pr"]) == set(ROWS[0]) | {
        "correct",
        "pred",
        "uses_parallel",
        "format_ok",
        "num_blocks",
        "positions",
        *names,
    }
    # the scaffold stops alternating after its switch step
    assert get_schedule("scaffold").mode(9) == "parallel"
    assert score(tmp_path, "--rewards", "scaffold", "--step", "209")[0]["scaffold"] == 1.0
    assert score(tmp_path, "--rewards", "scaffold", "--step", "9")[0]["scaffold"] == 1.2


def test_grader_option(tmp_path):
    rows = [{"completion": "Final Answer: 0.5", "answer": "\\frac{1}{2}"}]
    default = score(tmp_path, "--rewards", "accuracy_reward", rows=rows)[0]
    assert default["correct"] is True  # `correct` uses math_verify
    assert default["accuracy_reward"] == -1.0  # the paper's reward uses its exact match
    minerva = score(tmp_path, "--rewards", "accuracy_reward", "--grader", "minerva_exact", rows=rows)[0]
    assert minerva["correct"] is False and minerva["accuracy_reward"] == -1.0
    mv = score(tmp_path, "--rewards", "accuracy_reward", "--grader", "math_verify", rows=rows)[0]
    assert mv["correct"] is True and mv["accuracy_reward"] == 1.0


def test_order_kept_across_chunks(tmp_path):
    from parallel_r1.commands import score as score_cmd

    rows = [
        {"n": i, "completion": f"Final Answer: {i % 7}", "answer": str(i % 5)} for i in range(2 * score_cmd.CHUNK + 5)
    ]
    out = score(
        tmp_path, "--rewards", "accuracy_reward", "gsm8k/accuracy_reward", "--grader", "minerva_exact", rows=rows
    )
    assert [r["n"] for r in out] == list(range(len(rows)))
    assert [r["accuracy_reward"] for r in out] == [1.0 if i % 7 == i % 5 else -1.0 for i in range(len(rows))]
    assert [r["gsm8k/accuracy_reward"] for r in out] == [1.0 if i % 7 == i % 5 else 0.0 for i in range(len(rows))]


def test_stdout_without_out(tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", ROWS[:3])
    assert main(["score", "--input", str(src), "--rewards", "emphase_parallel"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["emphase_parallel"] for line in lines] == [1.2, -1.0, -1.0]


def test_malformed_line_names_file_and_line(tmp_path, capsys):
    src = tmp_path / "bad.jsonl"
    src.write_text(json.dumps(ROWS[0]) + "\n\n" + '{"completion": "x", "answer": \n' + json.dumps(ROWS[1]) + "\n")
    out = tmp_path / "out.jsonl"
    assert main(["score", "--input", str(src), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{src}:3" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()  # nothing half-written


@pytest.mark.parametrize(
    "rows,args,message",
    [
        ([{"completion": "x"}], [], "row 1: missing field 'answer'"),
        ([{"answer": "1"}], [], "row 1: missing field 'completion'"),
        ([{"completion": 5, "answer": "1"}], [], "'completion' must be a string"),
        ([{"completion": "x", "answer": None}], [], "'answer' must be a string or a number"),
        ([{"completion": "x", "answer": "1"}], ["--rewards", "no_such_reward"], "no_such_reward"),
        ([{"completion": "x", "answer": "1"}], ["--grader", "sympy"], "sympy"),
        ([{"completion": "x", "answer": "1"}], ["--step", "0"], "--step"),
    ],
)
def test_bad_input_is_one_clean_error(tmp_path, capsys, rows, args, message):
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    assert main(["score", "--input", str(src), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_missing_file(tmp_path, capsys):
    assert main(["score", "--input", str(tmp_path / "nope.jsonl")]) == 2
    assert "nope.jsonl" in capsys.readouterr().err


def _adversarial_rows() -> list[dict]:
    nested = "1"
    for _ in range(300):
        nested = "\\frac{" + nested + "}{2}"
    return [
        {"completion": "Final Answer: " + "9" * 1_000_000, "answer": "9"},
        {"completion": "<Parallel>" * 50_000 + "<Path>x</Path>" * 1000 + "\nFinal Answer: 1", "answer": "1"},
        {"completion": f"Final Answer: {nested}", "answer": "1"},
        {"completion": "Final Answer: 10^{10^{10^{10}}}", "answer": "10^{10^{10^{10}}}+1"},
        {"completion": "Final Answer: 3", "answer": ""},
        {"completion": "</Summary><Path><Parallel></Path>garbage}{\\", "answer": "1"},
        {"completion": "Final Answer: 3", "answer": "3"},
    ]


def test_adversarial_completions_are_scored(tmp_path):
    """Every row is scored and wrong ones are wrong, whether its grading finished or hit the
    per-answer timeout (``10^{10^{10^{10}}}`` never finishes: sympy is stuck in C), so the outcome
    does not depend on how busy the machine is."""
    rows = _adversarial_rows()
    out = score(tmp_path, "--timeout", "1", "--workers", "2", rows=rows)
    assert len(out) == len(rows)
    wrong = [0, 2, 3, 4, 5]
    assert [out[i]["correct"] for i in wrong] == [False] * len(wrong)
    for r in out:
        assert all(isinstance(r[name], float) for name in REWARDS)


def test_right_answers_beside_adversarial_markup_are_right(tmp_path):
    """The rows of the adversarial set that are right: not a timing question, so a generous timeout."""
    rows = [_adversarial_rows()[i] for i in (1, 6)]
    out = score(tmp_path, "--timeout", "300", "--workers", "2", rows=rows)
    assert [r["correct"] for r in out] == [True, True]
