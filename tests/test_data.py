"""The problem registry on the shipped data, the synthetic task and its teacher, the few-shot prompts."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from parallel_r1.data.fewshot import fewshot_prompt, fewshot_stop
from parallel_r1.data.registry import KNOWN, load_pilot_traces, load_problems, resolve_data_dir
from parallel_r1.data.synthetic import make_problem, make_problems, teacher_trace
from parallel_r1.format import parse
from parallel_r1.grading_pool import grade_answers, is_correct

# Row counts from ../shared/data/README.md.
COUNTS = [
    ("gsm8k", "test", 1319), ("gsm8k", "train", 7473), ("math", "test", 5000), ("math", "train", 7500),
    ("math500", None, 500), ("aime24", None, 30), ("aime25", None, 30), ("amc23", None, 40),
    ("dapo_math_17k", None, 17917), ("apo_eval", None, 1916),
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
    assert Counter(p.extra["data_source"] for p in rows) == {"APO_AMC23": 640, "APO_AIME24": 480, "APO_AIME25": 480, "APO_MATH300": 316}
    assert not any("<Parallel>" in p.problem for p in rows)
    assert all(p.extra["prompt"].endswith(p.problem) for p in rows)
    aime25 = {p.answer for p in load_problems("aime25", data_dir=data_dir)}
    assert {p.answer for p in rows if p.extra["data_source"] == "APO_AIME25"} == aime25


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
        load_problems("synthetic_medium")


def test_missing_data_dir_names_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=f"{missing}.*--data-dir"):
        load_problems("gsm8k", data_dir=missing)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        resolve_data_dir(missing)


def test_local_files_with_detected_columns(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"question": "1+1?", "answer": "2"}\n{"question": "2+2?", "answer": "#### 4"}\n')
    (tmp_path / "b.csv").write_text("problem,reference\n3+3?,6\n")
    (tmp_path / "c.json").write_text(json.dumps([{"prompt": [{"role": "user", "content": "5+5?"}], "reward_model": {"ground_truth": "10"}}]))
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
        if not nums or "years old" in sentence or "minutes away" in sentence or not sentence.startswith((problem.extra["name"], "He ", "She ")):
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
    for difficulty in ("easy", "hard"):
        train = {p.problem for p in load_problems(f"synthetic_{difficulty}", split="train", limit=2000)}
        test = load_problems(f"synthetic_{difficulty}", split="test", limit=300)
        assert len(test) == 300 and not train & {p.problem for p in test}
        assert all(p.id.startswith(f"synthetic_{difficulty}-test-") for p in test)
    assert len(load_problems("synthetic_easy")) == 500


@pytest.mark.parametrize("difficulty,n,ops", [("easy", 500, {1, 2}), ("hard", 200, {4, 5, 6})])
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
    assert fewshot_prompt("aime24", problem, data_dir) == f"Q: {problem}\nA:"
    assert fewshot_stop("gsm8k", data_dir) == ["\nQ:"] and fewshot_stop("math", data_dir) == ["\nProblem:"]
    with pytest.raises(KeyError, match="gsm8k"):
        fewshot_prompt("nope", problem, data_dir)
