"""Every row of the papers' reward tables (docs/rewards.md),
the schedules (alternating, scaffold) and the TRL adapter.

Each completion below is hand-written to have one (correct, parallel, format) combination; a
test checks that the reward code measures exactly that combination before any formula is
trusted, so a wrong case cannot make a formula test pass by accident.
"""

from __future__ import annotations

import math
import re
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sacrebleu import sentence_bleu

from parallel_r1.rewards import (
    GSM8K_FORMULAS,
    MATH_DAPO_FORMULAS,
    REWARDS,
    SCHEDULES,
    alternating_mode,
    compute_reward,
    efficiency_gain,
    get_reward,
    get_schedule,
    self_bleu,
    spans,
)

GOLD = "42"
PATH_A = "Add 40 and 2 to get 42."
PATH_B = "Count up from 40 by two, which lands on 42."

# name -> (completion, correct, uses_parallel, format_ok, has_answer)
CASES = {
    # c ∧ ¬p (a sequential answer; the format checker accepts text without tags)
    "SR": ("We need 40 + 2.\nThat is 42.\nFinal Answer: 42", True, False, True, True),
    # ¬c ∧ ¬p
    "SW": ("We need 40 + 2.\nThat is 41.\nFinal Answer: 41", False, False, True, True),
    # c ∧ p ∧ f: the canonical layout (README "What parallel thinking looks like")
    "PR": (
        f"Two ways.<Parallel><Path>{PATH_A}</Path><Path>{PATH_B}</Path></Parallel>\n"
        "<Summary>Both give 42.</Summary>\nFinal Answer: 42",
        True,
        True,
        True,
        True,
    ),
    # ¬c ∧ p ∧ f
    "PW": (
        f"Two ways.<Parallel><Path>{PATH_A}</Path><Path>{PATH_B}</Path></Parallel>\n"
        "<Summary>Both give 41.</Summary>\nFinal Answer: 41",
        False,
        True,
        True,
        True,
    ),
    # c ∧ p ∧ ¬f: a block with a single path (the checker needs >= 2)
    "MR": (
        "<Parallel><Path>only one path</Path></Parallel>\n<Summary>s</Summary>\nFinal Answer: 42",
        True,
        True,
        False,
        True,
    ),
    # ¬c ∧ p ∧ ¬f: an unclosed <Parallel>
    "MW": ("<Parallel><Path>a</Path><Path>b</Path>\nFinal Answer: 41", False, True, False, True),
    # no "Final Answer" at all, sequential
    "NA": ("The answer is 42.", False, False, True, False),
    # p ∧ f but no answer line
    "PN": (
        f"<Parallel><Path>{PATH_A}</Path><Path>{PATH_B}</Path></Parallel>\n<Summary>42</Summary>",
        False,
        True,
        True,
        False,
    ),
}

B = sentence_bleu(PATH_A, [PATH_B]).score / 100  # self-BLEU of PR / PW / PN: their one block
assert 0 < B < 1  # the diversity rows then really depend on it
G = 7 / 25  # efficiency gain of PR / PW, counted by hand below


def test_efficiency_gain_counted_by_hand():
    # PR: outside blocks "Two ways." (2) + summary "Both give 42." (3) + "Final Answer: 42" (3) = 8;
    # paths: 7 and 10 words. total = 8 + 7 + 10 = 25, traversed = 8 + max(7, 10) = 18.
    assert efficiency_gain(CASES["PR"][0]) == pytest.approx(G)
    assert efficiency_gain(CASES["PW"][0]) == pytest.approx(G)
    assert efficiency_gain(CASES["SR"][0]) == 0.0  # no block: everything is traversed
    assert efficiency_gain("") == 0.0
    # a tag never glues two words: "a<Path>b" is 2 words
    two_blocks = (
        "x<Parallel><Path>a b c</Path><Path>d</Path></Parallel>y<Parallel><Path>e</Path><Path>f g</Path></Parallel>"
    )
    # total 1+3+1+1+1+2 = 9; traversed = x, y (2) + 3 + 2 = 7
    assert efficiency_gain(two_blocks) == pytest.approx(2 / 9)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("family", ["accuracy_reward", "gsm8k/emphase_acc", "gsm8k/accuracy_reward"])
def test_cases_have_the_intended_combination(case, family):
    text, c, p, f, has_answer = CASES[case]
    facts = get_reward(family).facts(text, GOLD)
    assert (facts.correct, facts.uses_parallel, facts.format_ok, facts.has_answer) == (c, p, f, has_answer)


E = math.exp
# (reward_method, step) -> {case: expected reward}; every row of the tables in docs/rewards.md.
TABLE = {
    # ---- math_dapo family, ±1 scale
    ("accuracy_reward", 1): dict(SR=1, SW=-1, PR=1, PW=-1, MR=1, MW=-1, NA=-1, PN=-1),
    # the alternating reward on an accuracy step (1) and on a parallel step (9)
    ("accuracy_parallel_interv_reward", 1): dict(SR=1, SW=-1, PR=1, PW=-1, MR=1, MW=-1, NA=-1, PN=-1),
    ("accuracy_parallel_interv_reward", 9): dict(SR=1, SW=-1, PR=1.2, PW=-1, MR=-1, MW=-1, NA=-1, PN=-1),
    ("accuracy_parallel_interv_reward", 20): dict(SR=1, SW=-1, PR=1.2, PW=-1, MR=-1, MW=-1, NA=-1, PN=-1),
    ("emphase_acc", 1): dict(SR=1, SW=-1, PR=1, PW=-1, MR=-1, MW=-1, NA=-1, PN=-1),
    ("emphase_parallel", 1): dict(SR=1, SW=-1, PR=1.2, PW=-1, MR=-1, MW=-1, NA=-1, PN=-1),
    ("emphase_parallel_enhance", 1): dict(SR=1, SW=-1, PR=2.0, PW=-1, MR=-1, MW=-1, NA=-1, PN=-1),
    ("emphase_parallel_add_diversity", 1): dict(SR=1, SW=-1, PR=1.2 - 0.2 * B, PW=-1, MR=-1, MW=-1, NA=-1, PN=-1),
    ("accuracy_add_parallel_reward", 1): dict(SR=1, SW=-1, PR=1.5, PW=-0.5, MR=1, MW=-1, NA=-1, PN=-0.5),
    ("accuracy_times_parallel_reward", 1): dict(SR=-1, SW=-1, PR=1, PW=-1, MR=-1, MW=-1, NA=-1, PN=-1),
    ("format_times_accuracy_times_parallel_reward", 1): dict(SR=-1, SW=-1, PR=1, PW=-1, MR=-1, MW=-1, NA=-1, PN=-1),
    # (c?+1:-1) + sqrt(n_par), no format check: MW has one (unclosed) <Parallel>
    ("accuracy_parallel_reward", 1): dict(SR=1, SW=-1, PR=2, PW=0, MR=2, MW=0, NA=-1, PN=0),
    # no block -> avg_bleu = 1; MR's block has one path -> 1; MW's block is never closed -> no block -> 1
    ("accuracy_add_diversity_reward", 1): dict(
        SR=0.7, SW=-1.3, PR=1 - 0.3 * B, PW=-1 - 0.3 * B, MR=0.7, MW=-1.3, NA=-1.3, PN=-1 - 0.3 * B
    ),
    ("accuracy_add_parallel_add_diversity_reward", 1): dict(
        SR=0.7, SW=-1.3, PR=2 - 0.3 * B, PW=-0.3 * B, MR=1.7, MW=-0.3, NA=-1.3, PN=-0.3 * B
    ),
    # c: 1 + 0.4 g; ¬c: -1 + 0.1 g. MR: 3 words outside + its one path = everything -> g = 0
    ("accuracy_add_efficiency_reward", 1): dict(SR=1, SW=-1, PR=1 + 0.4 * G, PW=-1 + 0.1 * G, MR=1, MW=-1, NA=-1),
    ("accuracy_add_efficiency_reward_decay", 1): dict(
        SR=1, SW=-1, PR=1 + 0.4 * E(-1 / 50) * G, PW=-1 + 0.1 * E(-1 / 50) * G, MR=1, MW=-1, NA=-1
    ),
    ("accuracy_add_efficiency_reward_decay", 100): dict(PR=1 + 0.4 * E(-2) * G, PW=-1 + 0.1 * E(-2) * G),
    # ---- GSM8K family, 0/1 scale; no "Final Answer" -> 0 whatever the formula (PN)
    ("gsm8k/accuracy_reward", 1): dict(SR=1, SW=0, PR=1, PW=0, MR=1, MW=0, NA=0, PN=0),
    ("gsm8k/accuracy_times_special_token_reward", 1): dict(SR=0, SW=0, PR=1, PW=0, MR=0, MW=0, NA=0, PN=0),
    ("gsm8k/format_times_accuracy_times_parallel_reward", 1): dict(SR=0, SW=0, PR=1, PW=0, MR=0, MW=0, NA=0, PN=0),
    ("gsm8k/accuracy_add_parallel_reward", 1): dict(SR=1, SW=0, PR=1.5, PW=0.5, MR=1, MW=0, NA=0, PN=0),
    ("gsm8k/emphase_acc", 1): dict(SR=1, SW=0, PR=1, PW=0, MR=0, MW=0, NA=0, PN=0),
    ("gsm8k/emphase_parallel", 1): dict(SR=1, SW=0, PR=1.2, PW=0, MR=0, MW=0, NA=0, PN=0),
    ("gsm8k/emphase_parallel_add_diversity", 1): dict(SR=1, SW=0, PR=1.2 - 0.2 * B, PW=0, MR=0, MW=0, NA=0, PN=0),
}
ROWS = [(name, step, case, value) for (name, step), row in TABLE.items() for case, value in row.items()]

MATH_DAPO_SPEC = [
    "accuracy_reward",
    "accuracy_parallel_interv_reward",
    "emphase_acc",
    "emphase_parallel",
    "emphase_parallel_enhance",
    "emphase_parallel_add_diversity",
    "accuracy_add_parallel_reward",
    "accuracy_times_parallel_reward",
    "format_times_accuracy_times_parallel_reward",
    "accuracy_parallel_reward",
    "accuracy_add_diversity_reward",
    "accuracy_add_parallel_add_diversity_reward",
    "accuracy_add_efficiency_reward",
    "accuracy_add_efficiency_reward_decay",
]
GSM8K_SPEC = [
    "accuracy_reward",
    "accuracy_times_special_token_reward",
    "format_times_accuracy_times_parallel_reward",
    "accuracy_add_parallel_reward",
    "emphase_acc",
    "emphase_parallel",
    "emphase_parallel_add_diversity",
]


def test_registry_is_exactly_the_spec_tables():
    assert set(MATH_DAPO_FORMULAS) == set(MATH_DAPO_SPEC)
    assert set(GSM8K_FORMULAS) == set(GSM8K_SPEC)
    assert set(REWARDS) == set(MATH_DAPO_SPEC) | {f"gsm8k/{n}" for n in GSM8K_SPEC} | {"boxed_pm1"}
    assert {name for name, _ in TABLE} == set(REWARDS) - {"boxed_pm1"}  # every row below is tested
    for name, fn in REWARDS.items():
        assert fn.__name__ == name  # TRL logs reward functions by __name__
    with pytest.raises(KeyError, match="known"):
        get_reward("accuracy_times_special_token_reward_times_format")  # in parquets, no branch


@pytest.mark.parametrize("name,step,case,expected", ROWS, ids=[f"{n}@{s}-{c}" for n, s, c, _ in ROWS])
def test_reward_table_row(name, step, case, expected):
    text = CASES[case][0]
    assert REWARDS[name](text, GOLD, step) == pytest.approx(expected, abs=1e-9)
    assert compute_reward(name, text, GOLD, step=step) == pytest.approx(expected, abs=1e-9)


def test_accuracy_parallel_reward_grows_with_the_number_of_blocks():
    block = f"<Parallel><Path>{PATH_A}</Path><Path>{PATH_B}</Path></Parallel>\n<Summary>ok</Summary>"
    for n in (2, 4):
        right, wrong = block * n + "\nFinal Answer: 42", block * n + "\nFinal Answer: 7"
        assert compute_reward("accuracy_parallel_reward", right, GOLD) == pytest.approx(1 + math.sqrt(n))
        assert compute_reward("accuracy_parallel_reward", wrong, GOLD) == pytest.approx(-1 + math.sqrt(n))


def test_diversity_uses_the_mean_over_blocks_of_pairwise_bleu():
    same = "the same path text here"
    c, d = "one two three four five", "six seven eight nine ten"
    text = (
        f"<Parallel><Path>{same}</Path><Path>{same}</Path></Parallel>\n<Summary>s</Summary>"
        f"<Parallel><Path>{c}</Path><Path>{d}</Path><Path>{c}</Path></Parallel>\n<Summary>s</Summary>"
        "\nFinal Answer: 42"
    )
    pairs = [(c, d), (c, c), (d, c)]
    block2 = sum(sentence_bleu(a, [b]).score / 100 for a, b in pairs) / 3
    assert self_bleu(text) == pytest.approx((1.0 + block2) / 2)
    assert compute_reward("emphase_parallel_add_diversity", text, GOLD) == pytest.approx(1.2 - 0.2 * (1 + block2) / 2)
    # identical paths: no diversity bonus left
    ident = f"<Parallel><Path>{same}</Path><Path>{same}</Path></Parallel>\n<Summary>s</Summary>\nFinal Answer: 42"
    assert compute_reward("emphase_parallel_add_diversity", ident, GOLD) == pytest.approx(1.0)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["<Parallel>", "</Parallel>", "<Path>", "</Path>", "a", "b ", "\n"]), max_size=30))
def test_spans_equal_the_non_greedy_regex(tokens):
    text = "".join(tokens)
    for o, c in (("<Parallel>", "</Parallel>"), ("<Path>", "</Path>")):
        ref = [m.span() for m in re.finditer(re.escape(o) + "(.*?)" + re.escape(c), text, re.S)]
        assert spans(text, o, c) == ref


def test_tag_soup_rewards_stay_bounded():
    # quadratic in the regex version (minutes); here a megabyte of tags is scored at all.
    soup = "<Parallel>" * 100_000 + "<Parallel><Path>" + "<Path>x</Path>" * 20_000 + "</Parallel>\nFinal Answer: 42"
    for name in ("accuracy_add_diversity_reward", "accuracy_add_efficiency_reward", "accuracy_parallel_reward"):
        assert math.isfinite(compute_reward(name, soup, GOLD))


# ----------------------------------------------------------------------------- extraction rules


@pytest.mark.parametrize(
    "name,text,gold,expected",
    [
        # math_dapo: last match, case-insensitive, \boxed{} in the line unwrapped, "x = " dropped
        ("accuracy_reward", "Final Answer: 41\nno wait\nFinal Answer: 42", "42", 1),
        ("accuracy_reward", "final answer : \\boxed{42}", "42", 1),
        ("accuracy_reward", "Final Answer: x = 42", "42", 1),
        ("accuracy_reward", "Final Answer: \\frac12", "\\frac{1}{2}", 1),
        # only \boxed{}, no Final Answer line: -1
        ("accuracy_reward", "so the answer is \\boxed{42}", "42", -1),
        # only the last 300 characters count ...
        ("accuracy_reward", "Final Answer: 42\n" + "x" * 300, "42", -1),
        # ... of the tag-stripped text: 39 tag characters push the line out of the raw tail only
        ("accuracy_reward", "Final Answer: 42\n" + "<Path></Path>" * 3 + "x" * 270, "42", 1),
        # the paper's grader is exact match: 0.5 is not \frac{1}{2}
        ("accuracy_reward", "Final Answer: 0.5", "\\frac{1}{2}", -1),
        # GSM8K worked solution as gold
        ("accuracy_reward", "Final Answer: 1,234", "so 1000 + 234\n#### 1,234", 1),
        # gsm8k/accuracy_reward: last match, needs "Final Answer: " with a space, digits only
        ("gsm8k/accuracy_reward", "Final Answer: 41\nFinal Answer: 42", "#### 42", 1),
        ("gsm8k/accuracy_reward", "Final Answer:42", "42", 0),
        ("gsm8k/accuracy_reward", "Final Answer: 1,234", "#### 1,234", 1),
        ("gsm8k/accuracy_reward", "Final Answer: 42\n" + "x" * 300, "42", 0),
        # the other gsm8k/*: first match in the whole text, spacing free
        ("gsm8k/emphase_acc", "Final Answer: 41\nFinal Answer: 42", "42", 0),
        ("gsm8k/emphase_acc", "Final Answer:42", "42", 1),
        ("gsm8k/emphase_acc", "Final Answer: 42\n" + "x" * 300, "42", 1),
        ("gsm8k/emphase_acc", "Final Answer: -3", "#### -3", 1),
        # OctoThinker boxed ±1: last \boxed{}, nested braces, math-verify equivalence, no box -> -1
        ("boxed_pm1", "\\boxed{41} then \\boxed{42}", "42", 1),
        ("boxed_pm1", "\\boxed{42} then \\boxed{41}", "42", -1),
        ("boxed_pm1", "\\boxed{\\frac{1}{2}}", "0.5", 1),
        ("boxed_pm1", "\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}", 1),
        ("boxed_pm1", "Final Answer: 42", "42", -1),
        ("boxed_pm1", "\\boxed{42", "42", -1),
        (
            "boxed_pm1",
            "<Parallel><Path>\\boxed{1}</Path><Path>b</Path></Parallel>\n<Summary>\\boxed{42}</Summary>",
            "42",
            1,
        ),
    ],
)
def test_extraction_rules(name, text, gold, expected):
    assert compute_reward(name, text, gold) == expected


def test_grader_override():
    text = "Final Answer: 0.5"
    assert compute_reward("accuracy_reward", text, "\\frac{1}{2}") == -1
    assert compute_reward("accuracy_reward", text, "\\frac{1}{2}", grader="math_verify") == 1
    with pytest.raises(KeyError, match="grader"):
        compute_reward("accuracy_reward", text, "1", grader="nope")


# ----------------------------------------------------------------------------- schedules


def test_alternating_mode_default_split():
    modes = [alternating_mode(step) for step in range(1, 31)]
    assert modes == ["accuracy" if (step - 1) % 10 < 8 else "parallel" for step in range(1, 31)]
    assert [s for s, m in zip(range(1, 31), modes) if m == "parallel"] == [9, 10, 19, 20, 29, 30]


@pytest.mark.parametrize("window,acc", [(5, 3), (4, 1), (3, 3), (6, 0)])
def test_alternating_mode_custom_split(window, acc):
    modes = [alternating_mode(step, window=window, accuracy_steps=acc) for step in range(1, 31)]
    assert modes == ["accuracy" if (step - 1) % window < acc else "parallel" for step in range(1, 31)]
    sched = get_schedule("alternating", window=window, accuracy_steps=acc)
    assert [sched.mode(s) for s in range(1, 31)] == modes


@pytest.mark.parametrize("window,acc", [(0, 0), (10, 11), (10, -1)])
def test_alternating_mode_rejects_bad_split(window, acc):
    with pytest.raises(ValueError):
        alternating_mode(1, window, acc)
    with pytest.raises(ValueError):
        get_schedule("alternating", window=window, accuracy_steps=acc)


def test_alternating_schedule_pays_per_step():
    sched = SCHEDULES["alternating"]
    interv = REWARDS["accuracy_parallel_interv_reward"]
    for step in range(1, 31):
        parallel = (step - 1) % 10 >= 8
        assert sched.mode(step) == ("parallel" if parallel else "accuracy")
        assert sched.reward(CASES["PR"][0], GOLD, step) == (1.2 if parallel else 1.0)
        assert sched.reward(CASES["MR"][0], GOLD, step) == (-1.0 if parallel else 1.0)
        for case in CASES:  # the schedule and the paper's single reward agree at every step
            assert sched.reward(CASES[case][0], GOLD, step) == interv(CASES[case][0], GOLD, step)
    custom = get_schedule("alternating", window=4, accuracy_steps=2)
    assert [custom.reward(CASES["PR"][0], GOLD, s) for s in range(1, 9)] == [1.0, 1.0, 1.2, 1.2] * 2


def test_scaffold_alternates_until_switch_then_accuracy():
    assert SCHEDULES["scaffold"].switch_step == 200  # docs/rl.md: 200 alternating steps
    sched = get_schedule("scaffold", switch_step=25)
    pr, mr = CASES["PR"][0], CASES["MR"][0]
    for step in range(1, 51):
        expected_mode = alternating_mode(step) if step <= 25 else "accuracy"
        assert sched.mode(step) == expected_mode, step
        assert sched.reward(pr, GOLD, step) == (1.2 if expected_mode == "parallel" else 1.0)
        assert sched.reward(mr, GOLD, step) == (-1.0 if expected_mode == "parallel" else 1.0)
    assert sched.mode(29) == "accuracy" and get_schedule("alternating").mode(29) == "parallel"


def test_single_reward_as_schedule_and_unknown_names():
    sched = get_schedule("gsm8k/emphase_parallel")
    assert all(sched.reward(CASES["PR"][0], GOLD, s) == 1.2 for s in (1, 9, 500))
    with pytest.raises(KeyError, match="alternating"):
        get_schedule("no_such_reward")


# ----------------------------------------------------------------------------- TRL adapter


def _trl_reward(name_or_schedule, answer_key="answer", **overrides):
    """The RL trainer's TRL reward function with the paper's batch arithmetic: 2 optimiser steps per RL step."""
    from parallel_r1.train.rl import rl_step_of
    from parallel_r1.train.rl_trainer import ScheduledReward

    step = lambda global_step: rl_step_of(global_step, 2)  # noqa: E731
    return ScheduledReward(get_schedule(name_or_schedule, **overrides), step, None, set(), answer_key=answer_key)


def test_trl_reward_reads_trainer_state():
    fn = _trl_reward("alternating")
    names = ["PR", "MR", "SR", "PW", "NA"]
    completions = [CASES[n][0] for n in names]
    kwargs = dict(
        prompts=["q"] * 5,
        completions=completions,
        completion_text=completions,
        completion_ids=[[1]] * 5,
        answer=[GOLD] * 5,
    )
    # TRL's global_step counts finished optimizer steps, 2 per RL step: global_step 0 is the paper's step 1
    out = fn(trainer_state=SimpleNamespace(global_step=0), **kwargs)
    assert out == [1.0, 1.0, 1.0, -1.0, -1.0] and all(isinstance(v, float) for v in out)
    out = fn(trainer_state=SimpleNamespace(global_step=16), **kwargs)  # RL step 9: parallel
    assert out == [1.2, -1.0, 1.0, -1.0, -1.0]
    assert [d["reward_mode"] for d in fn.last] == ["parallel"] * 5
    assert [d["correct"] for d in fn.last] == [True, True, True, False, False]
    out = fn(trainer_state=SimpleNamespace(global_step=17), **kwargs)  # still RL step 9 (its 2nd optimiser step)
    assert out == [1.2, -1.0, 1.0, -1.0, -1.0]
    out = fn(trainer_state=SimpleNamespace(global_step=20), **kwargs)  # RL step 11: accuracy again
    assert out == [1.0, 1.0, 1.0, -1.0, -1.0]
    assert fn.__name__ == "alternating"


def test_trl_reward_answer_column():
    fn = _trl_reward("gsm8k/accuracy_times_special_token_reward", answer_key="solution")
    completions = [CASES["PR"][0], CASES["SR"][0]]
    out = fn(
        prompts=["q"] * 2,
        completions=completions,
        completion_text=completions,
        completion_ids=[[1]] * 2,
        solution=["so\n#### 42", "#### 42"],
        trainer_state=SimpleNamespace(global_step=3),
    )
    assert out == [1.0, 0.0]
    with pytest.raises(KeyError, match="solution"):
        fn(
            prompts=["q"],
            completions=["x"],
            completion_text=["x"],
            completion_ids=[[1]],
            answer=["1"],
            trainer_state=SimpleNamespace(global_step=0),
        )


def test_trl_reward_scaffold_override():
    fn = _trl_reward("scaffold", switch_step=10)
    kw = dict(
        prompts=["q"],
        completions=[CASES["PR"][0]],
        completion_text=[CASES["PR"][0]],
        completion_ids=[[1]],
        answer=[GOLD],
    )
    assert fn(trainer_state=SimpleNamespace(global_step=16), **kw) == [1.2]  # RL step 9 <= 10
    assert fn(trainer_state=SimpleNamespace(global_step=36), **kw) == [1.0]  # RL step 19 > 10: accuracy only


PIECES = [
    "<Parallel>",
    "</Parallel>",
    "<Path>",
    "</Path>",
    "<Summary>",
    "</Summary>",
    "\n",
    "x y ",
    "Final Answer: ",
    "42",
    "41",
    "\\boxed{",
    "}",
    "{",
    "$",
    " = ",
]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=40), st.integers(1, 40))
def test_tag_soup_gets_a_finite_reward_from_every_method(pieces, step):
    text = "".join(pieces)
    values = {name: fn(text, GOLD, step) for name, fn in REWARDS.items()}
    assert all(isinstance(v, float) and math.isfinite(v) for v in values.values())
    # the alternating reward is accuracy_reward on accuracy steps and emphase_parallel on the others
    twin = "accuracy_reward" if alternating_mode(step) == "accuracy" else "emphase_parallel"
    assert values["accuracy_parallel_interv_reward"] == values[twin]
    assert values["format_times_accuracy_times_parallel_reward"] == values["accuracy_times_parallel_reward"]
    assert (
        values["gsm8k/format_times_accuracy_times_parallel_reward"]
        == values["gsm8k/accuracy_times_special_token_reward"]
    )
    assert values["accuracy_reward"] in (1.0, -1.0) and values["gsm8k/accuracy_reward"] in (1.0, 0.0)
