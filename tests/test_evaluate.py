"""``parallel-r1 eval`` end to end: the results folder, resuming, bad input, few-shot data, grading.

The real decoding engine runs on the tiny random checkpoint of conftest (a few tokens per
sample, so the whole file stays well under a minute); a scripted generator stands in where the
test needs to know exactly what the model wrote (grading) or to interrupt a run.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from parallel_r1 import evaluate as E
from parallel_r1 import metrics as M
from parallel_r1.cli import main
from parallel_r1.io import read_jsonl, write_jsonl

# Answers in the forms the shipped sets use (AIME `025`, AMC `27.0`, MATH LaTeX, intervals, tuples).
PROBLEMS = [
    {"id": "aime", "problem": "Find the remainder (AIME style).", "answer": "025"},
    {"id": "amc", "problem": "How many miles from City A?", "answer": "27.0"},
    {"id": "half", "problem": "What is one half?", "answer": "0.5"},
    {"id": "interval", "problem": "Solve 1 < x <= 2.", "answer": "(1,2]"},
    {"id": "polar", "problem": "Convert (0,3) to polar coordinates.", "answer": "\\left( 3, \\frac{\\pi}{2} \\right)"},
]


@pytest.fixture
def bench(tmp_path) -> Path:
    path = tmp_path / "mini.jsonl"
    write_jsonl(path, PROBLEMS)
    return path


def cfg_for(model, out, bench, **kw) -> E.EvalConfig:
    base = dict(
        model=str(model),
        output_dir=str(out),
        benchmarks=str(bench),
        template="no_prompt",
        max_new_tokens=10,
        num_paths=2,
        max_blocks=1,
        batch_size=4,
        seed=0,
        grading_workers=1,
    )
    return E.EvalConfig(**{**base, **kw})


def rows_of(out: Path) -> list[dict]:
    return list(read_jsonl(out / "completions.jsonl"))


class Scripted:
    """A generator that answers from a table keyed by problem text, and counts what it was asked."""

    def __init__(self, answers: dict[str, str] | None = None, fail_on_call: int | None = None):
        self.answers, self.fail_on_call = answers or {}, fail_on_call
        self.calls, self.prompts = 0, Counter()

    def __call__(self, prompts, seed):
        self.calls += 1
        if self.fail_on_call is not None and self.calls == self.fail_on_call:
            raise KeyboardInterrupt  # what Ctrl-C does in the middle of a run
        self.prompts.update(prompts)
        out = []
        for p in prompts:
            text = next((a for q, a in self.answers.items() if q in p), "no idea")
            out.append(E.Completion(text, length=len(text.split()), finish_reason="eos"))
        return out


# ----------------------------------------------------------------------------- the results folder


def test_cli_eval_writes_results_completions_and_table(tiny_checkpoint, bench, tmp_path, capsys):
    out = tmp_path / "ev"
    argv = [
        "eval",
        "--model",
        str(tiny_checkpoint),
        "--benchmarks",
        str(bench),
        "--k",
        "2",
        "--samples",
        "3",
        "--template",
        "no_prompt",
        "--max-new-tokens",
        "10",
        "--max-blocks",
        "1",
        "--batch-size",
        "4",
        "--seed",
        "0",
        "--grading-workers",
        "1",
        "--limit",
        "3",
        "--output-dir",
        str(out),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    # the paper's layout: benchmarks as columns, metric rows, an average column
    for label in (
        "mean@k",
        "pass@k",
        "maj@k",
        "best@k (verl)",
        "parallel ratio %",
        "format errors %",
        "mean length",
        "Avg.",
    ):
        assert label in printed
    assert f"{bench} (k=2)" in printed and "results.json" in printed

    rows = rows_of(out)
    assert len(rows) == 3 * 3  # 3 problems x 3 samples
    assert Counter(r["problem_id"] for r in rows) == {"mini-aime": 3, "mini-amc": 3, "mini-half": 3}
    assert sorted({r["sample_index"] for r in rows}) == [0, 1, 2]
    for r in rows:
        assert 1 <= r["length"] <= 10 and r["finish_reason"] in ("eos", "length", "max_blocks")
        assert set(r) >= {
            "prompt",
            "completion",
            "answer",
            "pred",
            "correct",
            "uses_parallel",
            "format_ok",
            "num_blocks",
            "positions",
        }

    res = json.loads((out / "results.json").read_text())
    b = res["benchmarks"][str(bench)]
    assert (b["k"], b["n_samples"], b["n_problems"]) == (2, 3, 3)
    acc = sum(r["correct"] for r in rows) / len(rows)
    assert b["mean@k"] == pytest.approx(acc)
    assert b["mean_length"] == pytest.approx(sum(r["length"] for r in rows) / len(rows))
    # every row's critical path is at most its length, and the summary is their mean
    assert all(1 <= r["critical_path_tokens"] <= r["length"] for r in rows)
    assert b["mean_critical_path_tokens"] == pytest.approx(sum(r["critical_path_tokens"] for r in rows) / len(rows))
    # uses_parallel (writes <Parallel>) is the opens_parallel share; the parallel ratio counts valid closed blocks
    assert b["opens_parallel"] == pytest.approx(sum(r["uses_parallel"] for r in rows) / len(rows))
    assert b["parallel_ratio"] == pytest.approx(sum(M.has_parallel_block(r["completion"]) for r in rows) / len(rows))
    assert res["settings"]["k"] == {str(bench): 2} and res["model"] == str(Path(tiny_checkpoint).resolve())
    assert json.loads((out / "run.json").read_text())["identity"]["max_new_tokens"] == 10


def test_resume_generates_only_the_missing_samples(tiny_checkpoint, bench, tmp_path):
    from parallel_r1.models import load_model, load_tokenizer

    out = tmp_path / "ev"
    cfg = cfg_for(tiny_checkpoint, out, bench, k={str(bench): 3}, batch_size=4)  # 5 problems x 3 = 15 samples
    tok = load_tokenizer(tiny_checkpoint)
    engine = E.engine_generate_fn(load_model(tiny_checkpoint).eval(), tok, cfg)
    asked: list[int] = []

    def interrupted(prompts, seed):
        if len(asked) == 2:
            raise KeyboardInterrupt
        asked.append(len(prompts))
        return engine(prompts, seed)

    with pytest.raises(KeyboardInterrupt):
        E.evaluate(cfg, interrupted, tokenizer=tok, progress=False)
    first = rows_of(out)
    assert len(first) == 8 and not (out / "results.json").exists()
    # a torn last line (killed mid-write) is dropped and its sample made again
    with open(out / "completions.jsonl", "a") as f:
        f.write('{"benchmark": "torn')

    counted: list[list[str]] = []

    def counting(prompts, seed):
        counted.append(list(prompts))
        return engine(prompts, seed)

    res = E.evaluate(cfg, counting, tokenizer=tok, progress=False)
    rows = rows_of(out)
    pairs = [(r["problem_id"], r["sample_index"]) for r in rows]
    assert sum(map(len, counted)) == 15 - 8  # only the missing (problem, sample) pairs
    assert len(pairs) == len(set(pairs)) == 15
    assert rows[:8] == first  # finished samples are kept as they were
    assert res["benchmarks"][str(bench)]["n_problems"] == 5

    # nothing left: no generation at all; more samples per problem: only the new indices
    counted.clear()
    E.evaluate(cfg, counting, tokenizer=tok, progress=False)
    assert counted == []
    more = cfg_for(tiny_checkpoint, out, bench, k={str(bench): 3}, samples={str(bench): 4})
    E.evaluate(more, counting, tokenizer=tok, progress=False)
    assert sum(map(len, counted)) == 5
    assert Counter(r["sample_index"] for r in rows_of(out))[3] == 5


def test_results_of_other_benchmarks_in_the_folder_are_kept(bench, tmp_path, data_dir):
    out = tmp_path / "ev"
    E.evaluate(cfg_for("m", out, bench, k={str(bench): 1}), Scripted(), progress=False)
    res = E.evaluate(cfg_for("m", out, "aime24", limit=2, data_dir=str(data_dir)), Scripted(), progress=False)
    assert set(res["benchmarks"]) == {str(bench), "aime24"}
    assert (
        res["benchmarks"]["aime24"]["k"] == 16 and res["benchmarks"]["aime24"]["n_problems"] == 2
    )  # the paper's AIME k


# ----------------------------------------------------------------------------- bad input


def _cli(argv, capsys) -> tuple[int, str]:
    rc = main(argv)
    return rc, capsys.readouterr().err


def test_unknown_benchmark_lists_the_known_ones_before_the_model_loads(tmp_path, capsys):
    not_a_model = tmp_path / "empty_model"
    not_a_model.mkdir()  # exists, but would fail to load: the benchmark error must come first
    rc, err = _cli(
        ["eval", "--model", str(not_a_model), "--benchmarks", "aime24,aime2024", "--output_dir", str(tmp_path / "o")],
        capsys,
    )
    assert rc == 2
    assert "aime2024" in err and all(n in err for n in ("aime24", "aime25", "amc23", "math500", "gsm8k"))
    assert not (tmp_path / "o").exists()


def test_model_path_that_does_not_exist(tmp_path, capsys):
    rc, err = _cli(
        [
            "eval",
            "--model",
            str(tmp_path / "no_such_model"),
            "--benchmarks",
            "aime24",
            "--output_dir",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert rc == 2 and "does not exist" in err and "no_such_model" in err
    with pytest.raises(FileNotFoundError, match="does not exist"):
        E.load_for_eval(str(tmp_path / "no_such_model"))


def test_a_device_this_machine_lacks_is_refused_before_the_model_loads(tmp_path, capsys):
    import torch

    not_a_model = tmp_path / "empty_model"
    not_a_model.mkdir()  # would fail to load: the device error must come first
    missing = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU (cuda:0 on a CPU machine)
    for cmd in (
        ["eval", "--output_dir", str(tmp_path / "o"), "--benchmarks", "aime24"],
        ["generate", "--problem", "1+1?"],
    ):
        rc, err = _cli([*cmd, "--model", str(not_a_model), "--device", missing], capsys)
        assert rc == 2 and f"device {missing!r}" in err and "CUDA device" in err
    with pytest.raises(ValueError, match="dtype 'fp8'"):
        E.EvalConfig(model="m", output_dir=str(tmp_path / "o"), dtype="fp8")
    assert not (tmp_path / "o").exists()


def test_eval_device_and_dtype_defaults():
    import torch

    cfg = E.EvalConfig(model="m", output_dir="o", device="cpu")
    assert E.eval_device(cfg) == torch.device("cpu") and E.eval_dtype(cfg, torch.device("cpu")) == "float32"
    assert E.eval_dtype(cfg, torch.device("cuda", 0)) == "bfloat16"  # auto: the recipes' training precision
    assert E.eval_dtype(E.EvalConfig(model="m", output_dir="o", dtype="float16"), torch.device("cuda", 0)) == "float16"


def test_k_larger_than_the_samples_available(tmp_path, capsys):
    rc, err = _cli(
        [
            "eval",
            "--model",
            "m",
            "--benchmarks",
            "aime24",
            "--k",
            "aime24=4",
            "--samples",
            "aime24=2",
            "--output_dir",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert rc == 2 and "k=4" in err and "2 samples" in err
    with pytest.raises(ValueError, match="k for aime24 must be >= 1"):
        E.EvalConfig(model="m", output_dir="o", benchmarks="aime24", k="0")
    with pytest.raises(ValueError, match="amc23, which are not in benchmarks"):
        E.EvalConfig(model="m", output_dir="o", benchmarks="aime24", k="amc23=4")
    # the summary refuses problems with fewer than k finished samples rather than averaging fewer
    rows = [{"problem_id": "p", "sample_index": i, "correct": True, "pred": "1"} for i in range(2)]
    with pytest.raises(ValueError, match="fewer than k=4 samples"):
        E.summarize(rows, k=4, n=4)


def test_results_folder_of_another_run(bench, tmp_path, capsys):
    out = tmp_path / "ev"
    E.evaluate(cfg_for("model_a", out, bench, k={str(bench): 1}), Scripted(), progress=False)
    for change, field in (
        ({"model": "model_b"}, "model"),
        ({"max_new_tokens": 99}, "max_new_tokens"),
        ({"template": "baseline", "temperature": 0.5}, "temperature"),
    ):
        with pytest.raises(ValueError, match=f"holds results of another run.*{field}"):
            kw = {"model": "model_a", **change}
            E.evaluate(cfg_for(kw.pop("model"), out, bench, k={str(bench): 1}, **kw), Scripted(), progress=False)
    # through the CLI: a clear message, and it comes before the (here unloadable) model is touched
    not_a_model = tmp_path / "empty_model"
    not_a_model.mkdir()
    rc, err = _cli(
        [
            "eval",
            "--model",
            str(not_a_model),
            "--benchmarks",
            str(bench),
            "--k",
            "1",
            "--template",
            "no_prompt",
            "--max-new-tokens",
            "10",
            "--output_dir",
            str(out),
        ],
        capsys,
    )
    assert rc == 2 and "holds results of another run" in err and "model: 'model_a' there" in err
    # a folder with results but no run.json is not continued either
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    shutil.copy(out / "completions.jsonl", foreign / "completions.jsonl")
    with pytest.raises(ValueError, match="no run.json"):
        E.evaluate(cfg_for("model_a", foreign, bench, k={str(bench): 1}), Scripted(), progress=False)
    # settings that do not change a sample may change: --limit, --k, --batch-size
    E.evaluate(cfg_for("model_a", out, bench, k={str(bench): 1}, limit=2, batch_size=1), Scripted(), progress=False)


def test_unloadable_model_name_is_a_clear_error(tmp_path, monkeypatch):
    import huggingface_hub.constants

    # no network in tests: a bare name is tried as a hub id and fails (offline: at once, not after retries)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match="cannot load model 'surely-not-a-model-xyz'"):
        E.load_for_eval("surely-not-a-model-xyz")


# ----------------------------------------------------------------------------- few-shot data folder


def test_fewshot_prompts_and_stops_come_from_data_dir(data_dir, tmp_path):
    mine = tmp_path / "data"
    (mine / "fewshot").mkdir(parents=True)
    shutil.copytree(data_dir / "gsm8k", mine / "gsm8k")
    sets = json.loads((data_dir / "fewshot" / "octothinker_prompts.json").read_text())
    sets["gsm8k_8shot"] = {
        **sets["gsm8k_8shot"],
        "exemplars": "Q: MY-EXEMPLAR 1+1?\nA: The answer is 2.",
        "stop": ["\nNEXT:"],
    }
    (mine / "fewshot" / "octothinker_prompts.json").write_text(json.dumps(sets))

    gen = Scripted(
        {"Janet": "A: 16 - 3 - 4 = 9, 9 * 2 = 18. The answer is 18.\nFinal Answer: 18\nNEXT: Final Answer: 7"}
    )
    cfg = E.EvalConfig(
        model="m",
        output_dir=str(tmp_path / "ev"),
        benchmarks="gsm8k",
        template="fewshot",
        limit=2,
        data_dir=str(mine),
        grading_workers=1,
    )
    E.evaluate(cfg, gen, progress=False)
    rows = rows_of(tmp_path / "ev")
    assert all(r["prompt"].startswith("Q: MY-EXEMPLAR") and r["prompt"].endswith("\nA:") for r in rows)
    janet = next(r for r in rows if "Janet" in r["prompt"])
    assert (
        janet["completion"].endswith("Final Answer: 18") and "NEXT" not in janet["completion"]
    )  # cut at this file's stop
    assert janet["pred"] == "18" and janet["correct"]

    # the shipped file (default data folder) has other exemplars: the flag really switched files
    E.evaluate(
        E.EvalConfig(
            model="m",
            output_dir=str(tmp_path / "ev2"),
            benchmarks="gsm8k",
            template="fewshot",
            limit=1,
            grading_workers=1,
        ),
        Scripted(),
        progress=False,
    )
    assert "MY-EXEMPLAR" not in rows_of(tmp_path / "ev2")[0]["prompt"]

    # a data folder without the prompt file fails before anything is generated
    bare = tmp_path / "bare"
    shutil.copytree(data_dir / "gsm8k", bare / "gsm8k")
    gen = Scripted()
    with pytest.raises(FileNotFoundError, match="few-shot prompts not found"):
        E.evaluate(
            E.EvalConfig(
                model="m",
                output_dir=str(tmp_path / "ev3"),
                benchmarks="gsm8k",
                template="fewshot",
                limit=1,
                data_dir=str(bare),
            ),
            gen,
            progress=False,
        )
    assert gen.calls == 0 and not (tmp_path / "ev3").exists()


# ----------------------------------------------------------------------------- grading inside eval


def test_answer_forms_grade_right_through_the_pipeline(bench, tmp_path):
    """Extraction from the completion + gold normalisation + math_verify, as eval does them.

    tests/test_grading.py checks `grade` on bare strings; here the same forms arrive as
    completions (Final Answer: line, \\boxed{}) against the golds as the data files write them.
    """
    right = {
        "remainder": "So the remainder is 25.\nFinal Answer: 25",  # gold 025
        "City A": "They meet after 27 miles, \\boxed{27}",  # gold 27.0
        "one half": "Final Answer: \\frac12",  # gold 0.5
        "1 < x": "Final Answer: (1, 2]",  # interval
        "polar": "Final Answer: (3, \\frac{\\pi}{2})",  # tuple vs \left( ... \right)
    }
    wrong = {
        "remainder": "Final Answer: 250",
        "City A": "\\boxed{27.5}",
        "one half": "Final Answer: \\frac13",
        "1 < x": "Final Answer: [1, 2]",
        "polar": "Final Answer: (\\frac{\\pi}{2}, 3)",
    }
    for name, answers, expect in (("right", right, True), ("wrong", wrong, False)):
        out = tmp_path / name
        res = E.evaluate(cfg_for("m", out, bench, k={str(bench): 1}), Scripted(answers), progress=False)
        rows = rows_of(out)
        assert len(rows) == 5
        assert {r["problem_id"]: r["correct"] for r in rows} == {f"mini-{p['id']}": expect for p in PROBLEMS}, rows
        assert res["benchmarks"][str(bench)]["mean@k"] == float(expect)
    # the AIME gold is kept as written (`025`): grading, not loading, decides it equals 25
    assert rows_of(tmp_path / "right")[0]["answer"] == "025"


def test_minerva_grader_is_stricter(bench, tmp_path):
    answers = {"remainder": "Final Answer: 25", "one half": "Final Answer: \\frac12"}
    E.evaluate(
        cfg_for("m", tmp_path / "ev", bench, k={str(bench): 1}, grader="minerva_exact"),
        Scripted(answers),
        progress=False,
    )
    got = {r["problem_id"]: r["correct"] for r in rows_of(tmp_path / "ev")}
    assert got["mini-aime"] is False and got["mini-half"] is False  # exact match after Minerva normalisation only
