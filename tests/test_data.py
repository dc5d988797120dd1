"""The problem registry on the shipped data (the paper benchmarks, MATH8K, OlympiadBench files), the
synthetic task and its teacher, the few-shot prompts, the data sets and rewards the recipes name."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml

from parallel_r1.data.fewshot import fewshot_prompt, fewshot_stop
from parallel_r1.data.registry import APO_SOURCES, KNOWN, load_pilot_traces, load_problems, resolve_data_dir
from parallel_r1.data.synthetic import make_problem, make_problems, teacher_trace, worked_solution
from parallel_r1.format import parse
from parallel_r1.grading_pool import grade_answers, is_correct

# Row counts from ../shared/data/README.md.
COUNTS = [
    ("gsm8k", "test", 1319), ("gsm8k", "train", 7473), ("math", "test", 5000), ("math", "train", 7500),
    ("math500", None, 500), ("aime24", None, 30), ("aime25", None, 30), ("amc23", None, 40),
    ("dapo_math_17k", None, 17917), ("apo_eval", None, 1916),
    ("apo_aime24", None, 480), ("apo_aime25", None, 480), ("apo_amc23", None, 640), ("math300", None, 316),
]  # fmt: skip


@pytest.mark.parametrize("name,split,n", COUNTS)
def test_known_sets_load_with_readme_counts(data_dir, name, split, n):
    problems = load_problems(name, split=split, data_dir=data_dir)
    assert len(problems) == n
    assert len({p.id for p in problems}) == n  # ids key output rows downstream
    assert all(p.problem.strip() and p.answer.strip() for p in problems)


def test_answers_kept_as_given_or_cut_to_the_gsm8k_number(data_dir):
    gsm = load_problems("gsm8k", split="test", data_dir=data_dir, limit=3)
    raw = [json.loads(line) for line in (data_dir / "gsm8k" / "test.jsonl").read_text().splitlines()[:3]]
    assert [p.answer for p in gsm] == [r["answer"].rsplit("####", 1)[1].strip().replace(",", "") for r in raw]
    assert gsm[0].answer == "18" and gsm[0].problem == raw[0]["question"].strip()
    aime = load_problems("aime24", data_dir=data_dir)
    padded = [p.answer for p in aime if p.answer.startswith("0")]
    assert padded and all(len(a) == 3 for a in padded)  # 025-style kept, grading handles it
    assert load_problems("amc23", data_dir=data_dir)[0].answer == "27.0"
    assert grade_answers(["25", "27"], ["025", "27.0"]) == [True, True]
    dapo = load_problems("dapo_math_17k", data_dir=data_dir, limit=1)[0]
    assert dapo.answer == "34" and dapo.problem.startswith("In triangle $ABC$")
    assert load_problems("math", split="test", data_dir=data_dir, limit=1)[0].answer == "2"


def test_apo_eval_strips_the_v3_prompt_and_keeps_rows(data_dir):
    rows = load_problems("apo_eval", data_dir=data_dir)
    assert Counter(p.extra["data_source"] for p in rows) == {
        "APO_AMC23": 640,
        "APO_AIME24": 480,
        "APO_AIME25": 480,
        "APO_MATH300": 316,
    }
    assert not any("<Parallel>" in p.problem for p in rows)
    assert all(p.extra["prompt"].endswith(p.problem) for p in rows)
    aime25 = {p.answer for p in load_problems("aime25", data_dir=data_dir)}
    assert {p.answer for p in rows if p.extra["data_source"] == "APO_AIME25"} == aime25


def test_apo_eval_splits_into_one_benchmark_per_data_source(data_dir):
    raw = pd.read_parquet(data_dir / "apo_eval" / "test.parquet")
    assert set(APO_SOURCES.values()) == set(raw["data_source"])  # every benchmark of the file has a name
    total = 0
    for name, source in APO_SOURCES.items():
        rows = load_problems(name, data_dir=data_dir)
        prompts = [m[0]["content"] for m, s in zip(raw["prompt"], raw["data_source"]) if s == source]
        assert [p.extra["prompt"] for p in rows] == prompts and {p.source for p in rows} == {
            name
        }  # the file's rows, in order
        total += len(rows)
        by_index: dict[int, set] = {}
        for p in rows:
            by_index.setdefault(p.extra["problem_index"], set()).add((p.problem, p.answer))
        assert all(len(v) == 1 for v in by_index.values()) and sorted(by_index) == list(range(len(by_index)))
        copies = Counter(p.extra["problem_index"] for p in rows)
        assert set(copies.values()) == ({1} if name == "math300" else {16})  # mean@16 baked in, MATH300 once
    assert total == len(raw) == 1916


def distinct(rows):
    return list({p.extra["problem_index"]: p for p in rows}.values())


def test_apo_benchmarks_against_the_standalone_files(data_dir):
    """What docs/data.md says about apo_* vs aime24/aime25/amc23 (why they have names of their own)."""
    amc, apo_amc = load_problems("amc23", data_dir=data_dir), distinct(load_problems("apo_amc23", data_dir=data_dir))
    assert [p.problem for p in apo_amc] == [p.problem for p in amc]
    assert [float(p.answer) for p in apo_amc] == [float(p.answer) for p in amc]  # 27 vs 27.0
    aime25, apo25 = load_problems("aime25", data_dir=data_dir), distinct(load_problems("apo_aime25", data_dir=data_dir))
    repaired = [p.problem.replace("\x0c", "\\f").replace("\t", "\\t") for p in apo25]
    assert repaired == [p.problem for p in aime25] and [p.answer for p in apo25] == [p.answer for p in aime25]
    assert (
        sum(p.problem != q.problem for p, q in zip(apo25, aime25)) == 3
    )  # the form-feed/tab defect, kept as in the paper
    aime24, apo24 = load_problems("aime24", data_dir=data_dir), distinct(load_problems("apo_aime24", data_dir=data_dir))
    assert sorted(int(p.answer) for p in apo24) == sorted(int(p.answer) for p in aime24)
    assert [p.answer for p in apo24] != [p.answer for p in aime24]  # another order
    assert len({p.problem for p in apo24} - {p.problem for p in aime24}) == 2  # reworded / truncated texts


def test_math300_is_316_integer_answer_problems(data_dir):
    rows = load_problems("math300", data_dir=data_dir)
    assert len(rows) == len({p.problem for p in rows}) == 316
    assert all(re.fullmatch(r"-?\d+", p.answer) for p in rows)
    math500 = load_problems("math500", data_dir=data_dir)
    assert sum(p.problem in {q.problem for q in math500} for p in rows) == 290  # word for word
    start = lambda text: "".join(text[:50].split())  # noqa: E731
    flattened = []  # base-b answers whose subscript was dropped upstream: 52_8 -> 528
    for p in rows:  # the other 26 share a MATH500 problem's start, and its answer
        twins = [q.answer for q in math500 if start(q.problem) == start(p.problem)]
        assert p.answer in twins or p.answer in [t.replace("_", "") for t in twins], p.problem
        flattened += [p.answer] if p.answer not in twins else []
    assert sorted(flattened) == ["2045", "25168", "409", "43436", "528"]


def test_math8k_is_math_levels_3_to_5_minus_math500(data_dir):
    rows = load_problems("math8k", data_dir=data_dir)
    assert load_problems("math8k", split="train", data_dir=data_dir, limit=3) == rows[:3]
    assert {p.extra["level"] for p in rows} == {"Level 3", "Level 4", "Level 5"}
    norm = [" ".join(p.problem.split()) for p in rows]
    assert len(set(norm)) == len(rows) and len({p.id for p in rows}) == len(rows)
    math500 = {" ".join(p.problem.split()) for p in load_problems("math500", data_dir=data_dir)}
    assert not math500 & set(norm)
    # brute-force reference on the raw files: distinct level 3-5 texts of train + test not in MATH500
    raw = pd.concat([pd.read_parquet(data_dir / "math" / f"{s}.parquet") for s in ("train", "test")])
    raw = raw[raw["level"].isin(["Level 3", "Level 4", "Level 5"])]
    expected = {" ".join(q.split()) for q in raw["question"]} - math500
    assert set(norm) == expected
    answers = dict(zip(raw["question"].str.strip(), raw["reference"].astype(str).str.strip()))
    assert all(answers[p.problem] == p.answer for p in rows[:: max(1, len(rows) // 200)])
    with pytest.raises(ValueError, match="no 'test' split"):
        load_problems("math8k", split="test", data_dir=data_dir)


def test_a_benchmark_file_without_its_answer_column_names_file_and_column(tmp_path):
    (tmp_path / "aime24").mkdir()
    bad = tmp_path / "aime24" / "test.jsonl"
    bad.write_text('{"id": 0, "problem": "1+1?", "solution": "2"}\n')
    with pytest.raises(
        ValueError, match=rf"{re.escape(str(bad))}: no 'answer' column; columns are id, problem, solution"
    ):
        load_problems("aime24", data_dir=tmp_path)


# ----------------------------------------------------------------------------------- OlympiadBench

OLYMPIAD_ROWS = [  # the OlympiadBench schema (OE_TO_maths_en_COMP), answers as the source writes them
    {"id": 1606, "subfield": "Combinatorics", "context": None, "question": "How many moves does Xenia need?", "solution": ["..."],
     "final_answer": ["$2$"], "is_multiple_answer": False, "unit": None, "answer_type": "Numerical", "error": None},
    {"id": 1700, "subfield": "Algebra", "context": None, "question": "Find all real $x$ with $x^2+x-6=0$.", "solution": ["..."],
     "final_answer": ["$2$", "$-3$"], "is_multiple_answer": True, "unit": None, "answer_type": "Numerical", "error": None},
    {"id": 1701, "subfield": "Number Theory", "context": "Let $n$ be a positive integer.", "question": "Find all pairs $(a,b)$.",
     "solution": ["..."], "final_answer": ["$(2,1),(3,1)$"], "is_multiple_answer": True, "unit": None, "answer_type": "Tuple", "error": None},
    {"id": 1702, "subfield": "Algebra", "context": None, "question": "Compute the ratio.", "solution": ["..."],
     "final_answer": ["$\\frac{1}{2}$"], "is_multiple_answer": False, "unit": "m", "answer_type": "Expression", "error": "1e-3"},
]  # fmt: skip


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet"])
def test_olympiadbench_from_a_local_file(tmp_path, suffix):
    path = tmp_path / f"olympiad{suffix}"
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in OLYMPIAD_ROWS))
    elif suffix == ".json":
        path.write_text(json.dumps(OLYMPIAD_ROWS))
    else:  # parquet gives final_answer back as a numpy array
        pd.DataFrame(OLYMPIAD_ROWS).to_parquet(path)
    rows = load_problems(str(path))
    assert [p.answer for p in rows] == [
        "2",
        "2, -3",
        "(2,1),(3,1)",
        "\\frac{1}{2}",
    ]  # $ removed, multiple answers joined
    assert [p.id for p in rows] == ["olympiad-1606", "olympiad-1700", "olympiad-1701", "olympiad-1702"]
    assert rows[2].problem == "Let $n$ be a positive integer.\n\nFind all pairs $(a,b)$."  # context first
    assert rows[1].extra["final_answer"] == ["2", "-3"] and rows[1].extra["is_multiple_answer"] is True
    assert (rows[3].extra["unit"], rows[3].extra["answer_type"]) == ("m", "Expression")
    preds = ["2", "-3, 2", "2", "(3,1), (2,1)", "(2,1)", "0.5"]
    golds = [rows[0].answer, rows[1].answer, rows[1].answer, rows[2].answer, rows[2].answer, rows[3].answer]
    assert grade_answers(preds, golds) == [True, True, False, True, False, True]  # a multi-answer gold is a set


def test_olympiadbench_name_reads_the_data_folder_copy_else_the_hub(tmp_path, monkeypatch):
    (tmp_path / "olympiadbench").mkdir()
    (tmp_path / "olympiadbench" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in OLYMPIAD_ROWS))
    rows = load_problems("olympiadbench", data_dir=tmp_path, limit=2)
    assert [(p.id, p.source, p.answer) for p in rows] == [
        ("olympiadbench-1606", "olympiadbench", "2"),
        ("olympiadbench-1700", "olympiadbench", "2, -3"),
    ]
    with pytest.raises(ValueError, match="no 'train' split"):
        load_problems("olympiadbench", split="train", data_dir=tmp_path)

    import datasets

    calls = []

    def fake_load_dataset(repo, config=None, split=None):  # the hub, offline: records the request
        calls.append((repo, config, split))
        return [dict(r, image_1=None, language="English") for r in OLYMPIAD_ROWS[:2]]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    empty = tmp_path / "empty"
    empty.mkdir()
    rows = load_problems("olympiadbench", data_dir=empty, limit=2)
    assert calls == [("Hothan/OlympiadBench", "OE_TO_maths_en_COMP", "train[:2]")]
    assert [(p.id, p.answer) for p in rows] == [("olympiadbench-1606", "2"), ("olympiadbench-1700", "2, -3")]
    assert (
        load_problems("Hothan/OlympiadBench:OE_TO_maths_en_COMP", split="train")[1].answer == "2, -3"
    )  # schema detected


def test_olympiadbench_bad_files_name_file_row_and_column(tmp_path):
    no_answer = tmp_path / "olympiadbench" / "test.jsonl"
    no_answer.parent.mkdir()
    no_answer.write_text(json.dumps({"id": 1, "question": "Q?", "answer_type": "Numerical"}) + "\n")
    with pytest.raises(
        ValueError,
        match=rf"{re.escape(str(no_answer))}: no 'final_answer' column; columns are answer_type, id, question",
    ):
        load_problems("olympiadbench", data_dir=tmp_path)
    as_file = tmp_path / "olympiad.jsonl"  # by path, no final_answer means no OlympiadBench schema: generic detection
    as_file.write_text(no_answer.read_text())
    with pytest.raises(ValueError, match=r"olympiad\.jsonl: no answer field; columns are answer_type, id, question"):
        load_problems(str(as_file))
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps(OLYMPIAD_ROWS[0]) + "\n" + json.dumps(dict(OLYMPIAD_ROWS[1], final_answer=[])) + "\n")
    with pytest.raises(ValueError, match=r"empty\.jsonl row 1: 'final_answer' is empty"):
        load_problems(str(empty))
    no_question = tmp_path / "no_question.jsonl"
    no_question.write_text(json.dumps({"id": 1, "problem_text": "Q?", "final_answer": ["1"]}) + "\n")
    with pytest.raises(
        ValueError, match=r"no_question\.jsonl: no 'question' column; columns are final_answer, id, problem_text"
    ):
        load_problems(str(no_question))


# ----------------------------------------------------------------------------------- recipes

REPO = Path(__file__).resolve().parents[1]
DATA_RECIPES = ["rl_gsm8k_unseen", "rl_gsm8k_seen", "rl_octothinker", "rl_octothinker_staged"]


@pytest.mark.parametrize("recipe", DATA_RECIPES)
def test_recipes_name_a_registered_data_set_and_reward(data_dir, recipe):
    from parallel_r1.rewards import REWARDS, SCHEDULES

    cfg = yaml.safe_load((REPO / "recipes" / f"{recipe}.yaml").read_text())
    assert cfg["dataset"] in KNOWN and (cfg["reward"] in REWARDS or cfg["reward"] in SCHEDULES)
    assert load_problems(cfg["dataset"], split=cfg.get("dataset_split"), data_dir=data_dir, limit=1)
    if recipe.startswith("rl_gsm8k"):  # the GSM8K family (0/1 scale) on GSM8K train
        assert (cfg["dataset"], cfg["dataset_split"], cfg["reward"]) == (
            "gsm8k",
            "train",
            "gsm8k/accuracy_times_special_token_reward",
        )
        assert cfg["variant"] == recipe.removeprefix("rl_gsm8k_")
    else:
        assert cfg["dataset"] == "math8k"
        assert ("max_response_schedule" in cfg) == recipe.endswith("_staged")
        assert cfg["max_completion_length"] == (8192 if recipe.endswith("_staged") else 4096)


def test_limit_split_and_default_split(data_dir):
    assert len(load_problems("gsm8k", data_dir=data_dir, limit=5)) == 5
    assert load_problems("gsm8k", data_dir=data_dir, limit=2)[0].id == "gsm8k-test-0"  # default = test
    assert load_problems("gsm8k", split="train", data_dir=data_dir, limit=0) == []
    with pytest.raises(ValueError, match="no 'train' split"):
        load_problems("aime24", split="train", data_dir=data_dir)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(KeyError) as e:
        load_problems("gsm9k")
    assert all(name in str(e.value) for name in KNOWN)
    with pytest.raises(KeyError, match="synthetic_easy"):
        load_problems("synthetic_extreme")
    assert len(load_problems("synthetic_medium", limit=2)) == 2  # a known difficulty loads


def test_missing_data_dir_names_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=f"{missing}.*--data-dir"):
        load_problems("gsm8k", data_dir=missing)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        resolve_data_dir(missing)


def test_local_files_with_detected_columns(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"question": "1+1?", "answer": "2"}\n{"question": "2+2?", "answer": "#### 4"}\n')
    (tmp_path / "b.csv").write_text("problem,reference\n3+3?,6\n")
    (tmp_path / "c.json").write_text(
        json.dumps([{"prompt": [{"role": "user", "content": "5+5?"}], "reward_model": {"ground_truth": "10"}}])
    )
    assert [(p.problem, p.answer) for p in load_problems(str(tmp_path / "a.jsonl"))] == [("1+1?", "2"), ("2+2?", "4")]
    assert [(p.problem, p.answer, p.source) for p in load_problems(str(tmp_path / "b.csv"))] == [("3+3?", "6", "b")]
    assert [(p.problem, p.answer) for p in load_problems(str(tmp_path / "c.json"))] == [("5+5?", "10")]
    assert len(load_problems(str(tmp_path / "a.jsonl"), limit=1)) == 1


def test_bad_files_name_file_row_and_columns(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "1+1?", "solution": "2"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl: no answer field; columns are question, solution"):
        load_problems(str(bad))
    holes = tmp_path / "holes.jsonl"
    holes.write_text('{"problem": "a", "answer": "1"}\n{"problem": "b", "answer": ""}\n')
    with pytest.raises(ValueError, match=r"holes\.jsonl row 1: no answer field"):
        load_problems(str(holes))
    with pytest.raises(FileNotFoundError, match="missing.parquet"):
        load_problems(str(tmp_path / "missing.parquet"))


def test_pilot_traces(data_dir):
    rows = load_pilot_traces(data_dir)
    assert len(rows) == 341
    r = rows[0]
    assert set(r) == {"prompt", "problem", "trace", "answer", "source"}
    assert r["problem"].startswith("Frankie's parents") and r["prompt"].endswith(r["problem"]) and r["answer"] == "19"
    assert sum(parse(x["trace"]).format_ok for x in rows) == 341


# ----------------------------------------------------------------------------------- synthetic

NUMBER = re.compile(r"\d+")


def reference_answer(problem) -> int:
    """Independent of the generator: the numbers of the text, read back by the sentence they sit in."""
    total = 0
    for sentence in re.split(r"(?<=[.?])\s+", problem.problem):
        nums = [int(x) for x in NUMBER.findall(sentence)]
        if (
            not nums
            or "years old" in sentence
            or "minutes away" in sentence
            or not sentence.startswith((problem.extra["name"], "He ", "She "))
        ):
            continue
        if sentence.startswith(problem.extra["name"]) and not sentence.startswith(f"{problem.extra['name']} has"):
            continue
        value = nums[0] * nums[1] if len(nums) == 2 else nums[0]
        loss = any(w in sentence for w in ("gives", "loses", "sells"))
        total += -value if loss else value
    return total


def test_synthetic_is_deterministic_and_split_disjoint():
    assert make_problem(7, "easy") == make_problem(7, "easy")
    assert make_problems(3, "hard", seed=10)[1] == make_problem(11, "hard")
    assert make_problem(7, "easy").problem != make_problem(8, "easy").problem
    for difficulty in ("easy", "medium", "hard"):
        train = {p.problem for p in load_problems(f"synthetic_{difficulty}", split="train", limit=2000)}
        test = load_problems(f"synthetic_{difficulty}", split="test", limit=300)
        assert len(test) == 300 and not train & {p.problem for p in test}
        assert all(p.id.startswith(f"synthetic_{difficulty}-test-") for p in test)
    assert len(load_problems("synthetic_easy")) == 500


@pytest.mark.parametrize("difficulty,n,ops", [("easy", 500, {1, 2}), ("medium", 200, {3}), ("hard", 200, {4, 5, 6})])
def test_synthetic_problems_and_teacher_traces(difficulty, n, ops):
    problems = make_problems(n, difficulty, seed=1000)
    counts = Counter()
    for p in problems:
        terms = p.extra["terms"]
        n_ops = len(terms) - 1 + sum(k > 1 for _, k, _ in terms)
        counts[n_ops] += 1
        assert p.problem.isascii() and int(p.answer) == reference_answer(p)
        running = 0
        for sign, k, m in terms:
            running += sign * k * m
            assert 0 <= running < 1000
        assert ("distractor" in p.extra) == (difficulty == "hard")
        if difficulty == "hard":
            assert str(p.extra["distractor"]) in p.problem

        trace = teacher_trace(p)
        parsed = parse(trace, strict=True)
        assert parsed.format_ok, (trace, parsed.errors)
        assert parsed.paths_per_block == [2]
        path1, path2 = parsed.blocks[0].paths
        assert path1 != path2 and path1.split(":")[0] != path2.split(":")[0]
        # every equation in both paths is true, and both reach the answer
        for path in (path1, path2):
            equations = re.findall(r"([\d+\-*]+)=(\d+)", path)
            assert equations and all(eval(lhs) == int(rhs) for lhs, rhs in equations)
            assert int(equations[-1][1]) == int(p.answer)
        assert trace.isascii() and trace.endswith(f"Final Answer: {p.answer}")
        assert f"Both ways give {p.answer}." in parsed.blocks[0].summary
    assert set(counts) == ops
    golds = [p.answer for p in problems]
    assert all(is_correct(teacher_trace(p), p.answer) for p in problems[:20])
    from parallel_r1.grading import extract_final_answer

    assert grade_answers([extract_final_answer(teacher_trace(p)) for p in problems], golds) == [True] * n


@pytest.mark.parametrize("difficulty", ["easy", "hard"])
def test_worked_solutions_are_true_sequential_and_in_the_answer_form(difficulty):
    from parallel_r1.data.problem import Problem
    from parallel_r1.grading import extract_final_answer

    for p in make_problems(200, difficulty, seed=7):
        text = worked_solution(p)
        body, last = text.split("\n")
        equations = re.findall(r"([\d+\-*]+)=(\d+)", body)
        assert body.startswith("In order: ") and all(eval(lhs) == int(rhs) for lhs, rhs in equations)
        assert int(equations[-1][1]) == int(p.answer) and last == f"Final Answer: {p.answer}"
        assert extract_final_answer(text) == p.answer and parse(text).num_blocks == 0  # no block
    with pytest.raises(ValueError, match="worked solution needs a problem from data.synthetic"):
        worked_solution(Problem(id="x", problem="1+1?", answer="2", source="toy"))


def test_teacher_refuses_foreign_problems(data_dir):
    with pytest.raises(ValueError, match="needs a problem from data.synthetic"):
        teacher_trace(load_problems("gsm8k", data_dir=data_dir, limit=1)[0])


# ----------------------------------------------------------------------------------- few-shot


def test_fewshot_prompts(data_dir):
    problem = "Let $x^{2}=4$. Find $x$."
    gsm = fewshot_prompt("gsm8k", problem, data_dir)
    assert gsm.count("\nA:") == 9 and gsm.endswith(f"Q: {problem}\nA:") and "The answer is 8." in gsm
    math = fewshot_prompt("math500", problem, data_dir)
    assert math.count("Problem:\n") == 5 and math.endswith(f"Problem:\n{problem}\n\nSolution:")
    assert fewshot_prompt("aime24", problem, data_dir) == f"Q: {problem}\nA: "  # upstream's trailing space
    assert fewshot_prompt("olympiadbench", problem, data_dir) == math  # OctoThinker: Minerva 4-shot as MATH
    assert fewshot_stop("gsm8k", data_dir) == ["\nQ:"] and fewshot_stop("math", data_dir) == ["\nProblem:"]
    with pytest.raises(KeyError, match="gsm8k"):
        fewshot_prompt("nope", problem, data_dir)
