"""Evaluation protocols (docs/eval.md, "Protocols"): values against the papers, overrides, the
results record, OctoThinker's answer forms, apo copies grouped into @16, bad input, the paper's loop."""

from __future__ import annotations

import json

import pytest

from parallel_r1 import evaluate as E
from parallel_r1 import metrics as M
from parallel_r1.cli import main
from parallel_r1.grading import GRADERS
from parallel_r1.io import read_jsonl, write_jsonl
from parallel_r1.protocols import (
    EXTRACTORS,
    PROTOCOLS,
    detect_model_kind,
    extract_octothinker,
    get_protocol,
)
from parallel_r1.rewards import compute_reward


def _cfg(**kw) -> E.EvalConfig:
    return E.EvalConfig(**{"model": "m", "output_dir": "o", **kw})


# ----------------------------------------------------------------------------- the papers' values


def test_parallel_r1_protocol_is_the_papers_evaluation():
    c = _cfg(protocol="parallel_r1")
    # the paper's eval rows: AIME/AMC 16 copies x k=1 (= mean@16), MATH300 once
    assert c.benchmarks == ["apo_aime24", "apo_aime25", "apo_amc23", "math300"]
    assert {b: c.k_of(b) for b in c.benchmarks} == dict.fromkeys(c.benchmarks, 1)
    assert (c.grader, c.extractor, c.template) == ("minerva_exact", "paper", "parallel_v3")
    assert (c.temperature, c.top_p, c.top_k, c.max_new_tokens) == (1.0, 1.0, None, 3000)
    assert c.decoding == "paper"  # the paper's numbers came from its separate-request loop
    assert get_protocol("parallel_r1").chat_template and c.overrides == []


def test_decoding_follows_the_protocol_and_the_backend():
    assert (_cfg().decoding, _cfg(protocol="octothinker", model_kind="rl").decoding) == ("engine", "engine")
    assert _cfg(backend="vllm").decoding == "paper"  # vLLM runs the paper's loop only
    c = _cfg(protocol="parallel_r1", decoding="engine")  # the exact engine over the paper's loop
    assert c.decoding == "engine" and c.overrides == ["decoding"]
    assert _cfg(protocol="parallel_r1", decoding="paper").overrides == []  # the protocol's own value
    with pytest.raises(ValueError, match="--backend vllm runs the paper's separate-request loop"):
        _cfg(backend="vllm", decoding="engine")  # once quietly ran the paper's loop


@pytest.mark.parametrize("kind, template, budget", [("base", "fewshot", 1024), ("rl", "orz", 4096)])
def test_octothinker_protocol_few_shot_base_zero_shot_rl(kind, template, budget):
    c = _cfg(protocol="octothinker", model_kind=kind)
    assert c.benchmarks == ["gsm8k", "math500", "olympiadbench", "amc23"]
    assert {b: c.k_of(b) for b in c.benchmarks} == dict.fromkeys(c.benchmarks, 1)  # greedy pass@1
    assert (c.grader, c.extractor, c.temperature, c.top_p) == ("math_verify", "octothinker", 0.0, 1.0)
    assert (c.template, c.max_new_tokens) == (template, budget)
    assert not get_protocol("octothinker").chat_template


def test_custom_protocol_is_the_old_default():
    c = _cfg()
    assert c.protocol == "custom" and c.benchmarks == ["aime24", "aime25", "amc23", "math500"]
    assert [c.k_of(b) for b in c.benchmarks] == [16, 16, 16, 1]
    assert (c.grader, c.extractor, c.template, c.temperature, c.top_p, c.max_new_tokens) == (
        "math_verify",
        "auto",
        "parallel_v3",
        1.0,
        1.0,
        3000,
    )
    assert c.overrides == []


def test_explicit_settings_win_and_are_recorded():
    c = _cfg(protocol="parallel_r1", max_new_tokens=64, grader="math_verify", k="math300=2", samples="math300=2")
    assert (c.max_new_tokens, c.grader, c.k_of("math300"), c.k_of("apo_aime24")) == (64, "math_verify", 2, 1)
    assert c.extractor == "paper"  # not given: still the protocol's
    assert sorted(c.overrides) == ["grader", "k", "max_new_tokens"]


def test_apo_eval_is_scored_as_its_benchmarks():
    assert _cfg(benchmarks="apo_eval,gsm8k").benchmarks == ["apo_aime24", "apo_aime25", "apo_amc23", "math300", "gsm8k"]


# ----------------------------------------------------------------------------- extraction


@pytest.mark.parametrize("text, answer", [
    ("Q: ...\nA: 6 + 36 = 42. The answer is 42.", "42"),
    ("so x = 1/2, and the answer is $\\frac{1}{2}$", "\\frac{1}{2}"),
    ("She makes 9 * 2 = 18 dollars.\n#### 18", "18"),
    ("Hence the total is $\\boxed{\\frac{3}{4}}$ in all.", "\\frac{3}{4}"),
    ("Final Answer: The final answer is $-\\frac{2}{3}$. I hope it is correct.", "-\\frac{2}{3}"),
    ("The answer is 3.5.", "3.5"),
    ("He walks 12 miles then 1,250 more", "1250"),  # last number, commas removed
    ("no number at all", None),
])  # fmt: skip
def test_octothinker_extracts_its_answer_forms(text, answer):
    assert extract_octothinker(text) == answer
    assert EXTRACTORS["octothinker"](text) == answer


def test_octothinker_answers_grade_right_through_the_pipeline(tmp_path):
    bench = tmp_path / "b.jsonl"
    write_jsonl(
        bench, [{"id": i, "problem": f"p{i}", "answer": a} for i, a in enumerate(["42", "0.5", "18", "\\frac34"])]
    )
    said = {
        "p0": "The answer is 42.",
        "p1": "the answer is $\\frac{1}{2}$",
        "p2": "#### 18",
        "p3": "so $\\boxed{0.75}$",
    }

    def gen(prompts, seed):
        return [E.Completion(next(v for k, v in said.items() if k in p), 5) for p in prompts]

    res = E.evaluate(_cfg(output_dir=str(tmp_path / "o"), protocol="octothinker", model_kind="rl", benchmarks=str(bench),
                          grading_workers=1), gen, progress=False)  # fmt: skip
    assert res["benchmarks"][str(bench)]["mean@k"] == 1.0


def test_paper_extractor_reads_only_the_last_300_characters():
    tail = "x" * 400
    assert EXTRACTORS["paper"]("Final Answer: 7\n" + tail) is None
    assert (
        EXTRACTORS["paper"]("<Parallel><Path>a</Path><Path>b</Path></Parallel>\n<Summary>s</Summary>Final Answer: 7")
        == "7"
    )


@pytest.mark.parametrize(
    "line, right",
    [
        ("Final Answer: \\boxed{5}", True),  # Minerva's normaliser unwraps a box that is the whole answer
        ("Final Answer: 5", True),
        ("Final Answer: \\boxed{5}.", False),  # the period stays: "5." != "5"
        ("Final Answer: The answer is \\boxed{5}", False),  # the words stay
    ],
)
def test_paper_protocol_scores_as_the_training_reward(line, right):
    """Eval under ``parallel_r1`` and the paper's accuracy reward read the same text the same way:
    the whole ``Final Answer:`` line goes to Minerva's normaliser (no ``\\boxed{}`` unwrapped first)."""
    p = get_protocol("parallel_r1").values()
    pred = EXTRACTORS[p["extractor"]](line)
    assert pred is not None and GRADERS[p["grader"]](pred, "5") is right
    assert compute_reward("accuracy_reward", line, "5") == (1.0 if right else -1.0)


# ----------------------------------------------------------------------------- results record, @16 from copies


def test_results_record_the_protocol_and_apo_copies_give_mean_and_pass_at_16(tmp_path, data_dir):
    out = tmp_path / "o"

    def gen(prompts, seed):  # right on the first problem's copies only
        return [E.Completion("Final Answer: 7", 3) for _ in prompts]

    # 60 rows of apo_aime24: the 30 problems twice -> 2 copies per problem
    res = E.evaluate(_cfg(output_dir=str(out), protocol="parallel_r1", benchmarks="apo_aime24", limit=60, data_dir=str(data_dir),
                          max_new_tokens=32, grading_workers=1), gen, progress=False)  # fmt: skip
    assert res["protocol"]["name"] == "parallel_r1" and res["protocol"]["overrides"] == ["benchmarks", "max_new_tokens"]
    run = json.loads((out / "run.json").read_text())
    assert run["protocol"]["name"] == "parallel_r1" and run["identity"]["protocol"] == "parallel_r1"
    b = res["benchmarks"]["apo_aime24"]
    assert (b["n_problems"], b["copies"], b["k"]) == (30, 2, 2)
    rows = list(read_jsonl(out / "completions.jsonl"))
    assert {r["group"] for r in rows} == set(range(30))
    # brute force: group the rows by problem, score by hand
    by = {}
    for r in rows:
        by.setdefault(r["group"], []).append(r["correct"])
    assert b["mean@k"] == pytest.approx(sum(sum(v) / len(v) for v in by.values()) / len(by))
    assert b["pass@k"] == pytest.approx(sum(any(v) for v in by.values()) / len(by))
    from parallel_r1.tables import format_table, protocol_label

    assert protocol_label(res) == "parallel_r1 + benchmarks + max_new_tokens"
    assert "AIME24 (APO) (k=2)" in format_table(res) and "protocol: parallel_r1" in format_table(res)
    assert "decoding paper on transformers · scorer minerva_exact on the paper extractor" in format_table(res)


def test_summarize_groups_copies_brute_force():
    # 2 problems x 3 copies, k=1 per copy: problem 0 right once, problem 1 never
    rows = [{"problem_id": f"q{p}-{c}", "group": p, "sample_index": 0, "correct": p == 0 and c == 1, "pred": "1",
             "completion": "x", "num_blocks": 0, "length": 1, "format_ok": True, "positions": []}
            for c in range(3) for p in range(2)]  # fmt: skip
    s = E.summarize(rows, k=1, n=1)
    assert (s["k"], s["copies"], s["n_problems"]) == (3, 3, 2)
    assert s["mean@k"] == pytest.approx((1 / 3 + 0) / 2) and s["pass@k"] == pytest.approx(0.5)
    assert s["pass@k"] == pytest.approx(M.pass_at_k_mean([[False, True, False], [False] * 3], 3))


# ----------------------------------------------------------------------------- bad input, before any model loads


def _cli(argv, capsys):
    rc = main(argv)
    return rc, capsys.readouterr().err


def test_unknown_protocol_lists_the_known_ones(tmp_path, capsys):
    rc, err = _cli(["eval", "--model", "m", "--protocol", "paper_x", "--output_dir", str(tmp_path / "o")], capsys)
    assert rc == 2 and "paper_x" in err and all(name in err for name in PROTOCOLS)


def test_octothinker_on_a_model_that_does_not_say_its_kind(tmp_path, capsys):
    folder = tmp_path / "some_model"
    folder.mkdir()
    rc, err = _cli(
        ["eval", "--model", str(folder), "--protocol", "octothinker", "--output_dir", str(tmp_path / "o")], capsys
    )
    assert rc == 2 and "--model_kind base" in err and "--model_kind rl" in err
    assert not (tmp_path / "o").exists()
    # a run folder of `rl` says rl; a mid-training stage says base
    (tmp_path / "run" / "final").mkdir(parents=True)
    (tmp_path / "run" / "metrics.jsonl").write_text("")
    (tmp_path / "mt" / "long" / "final").mkdir(parents=True)
    (tmp_path / "mt" / "long" / "report.json").write_text("{}")
    assert detect_model_kind(str(tmp_path / "run" / "final")) == "rl"
    assert detect_model_kind(str(tmp_path / "mt" / "long" / "final")) == "base"
    assert _cfg(model=str(tmp_path / "run" / "final"), protocol="octothinker").template == "orz"


def test_benchmark_file_without_answer_column(tmp_path, capsys, monkeypatch):
    bench = tmp_path / "noanswer.jsonl"
    write_jsonl(bench, [{"problem": "1+1?", "solution_text": "2"}])

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(E, "load_for_eval", no_load)
    rc, err = _cli(
        [
            "eval",
            "--model",
            "m",
            "--protocol",
            "parallel_r1",
            "--benchmarks",
            str(bench),
            "--output_dir",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert rc == 2 and "noanswer.jsonl" in err and "answer" in err


# ----------------------------------------------------------------------------- the paper's loop on transformers


def test_paper_decoding_loop_on_transformers(tiny_checkpoint, tmp_path):
    from parallel_r1.decoding import DecodingConfig
    from parallel_r1.decoding.paper_loop import PaperLoopEngine
    from parallel_r1.models import load_model, load_tokenizer

    tok, model = load_tokenizer(str(tiny_checkpoint)), load_model(str(tiny_checkpoint)).eval()
    cfg = DecodingConfig(
        variant="unseen", num_paths=2, max_blocks=1, max_new_tokens=24, max_path_tokens=8, temperature=1.0, seed=0
    )
    prompts = ["a b", "c d e"]
    samples = PaperLoopEngine(model, tok, cfg, batch_size=2).generate(prompts, n=3)
    assert len(samples) == 6 and all(s.backend == "transformers-paper" and not s.exact for s in samples)
    assert sorted(s.prompt_index for s in samples) == [0, 0, 0, 1, 1, 1]
    for s in samples:
        assert 0 < len(s.completion_ids) <= 24 and s.finish_reason in ("eos", "length", "max_blocks")
        assert s.text == tok.decode(s.completion_ids, skip_special_tokens=False)

    # through eval: same folder layout, the decoding recorded
    res = E.evaluate(_cfg(model=str(tiny_checkpoint), output_dir=str(tmp_path / "o"), benchmarks="aime24", limit=1, k=1,
                          template="no_prompt", decoding="paper", max_new_tokens=12, grading_workers=1), progress=False)  # fmt: skip
    assert res["settings"]["decoding"] == "paper" and res["benchmarks"]["aime24"]["n_problems"] == 1


def test_transformers_requests_cut_at_the_first_stop():
    import torch

    from parallel_r1.decoding.paper_loop import RequestParams, TransformersRequests

    class Tok:
        pad_token_id, eos_token_id = 0, 9

    class Model:
        device = torch.device("cpu")

        def generate(self, input_ids, attention_mask, max_new_tokens, **kw):
            assert kw["eos_token_id"] == [5, 9]
            new = torch.tensor([[4, 5, 6, 7], [1, 2, 3, 9]])[: len(input_ids), :max_new_tokens]
            return torch.cat([input_ids, new], dim=1)

    out = TransformersRequests(Model(), Tok()).generate(
        [{"prompt_token_ids": [1, 2]}, {"prompt_token_ids": [3]}],
        [RequestParams(max_tokens=4, stop_token_ids=[5, 9]), RequestParams(max_tokens=2, stop_token_ids=[5, 9])],
    )
    assert [o.outputs[0].token_ids for o in out] == [[4, 5], [1, 2]]  # stop kept; the second cut at its own budget


def test_readiness_recipe_evaluates_few_shot_before_and_zero_shot_after(tmp_path):
    from pathlib import Path

    from parallel_r1.train.readiness import eval_config, load_config

    repo = Path(__file__).resolve().parents[1]
    midtrain = (repo / "recipes" / "midtrain_llama32_3b.yaml").read_text()
    assert "recipes/readiness_octothinker.yaml" in midtrain
    cfg = load_config(repo / "recipes" / "readiness_octothinker.yaml", branches={"long": str(tmp_path / "long")},
                      rl=str(repo / "recipes" / "rl_octothinker.yaml"))  # fmt: skip
    assert (cfg.rl["dataset"], cfg.rl["max_completion_length"]) == ("math8k", 4096)
    before = eval_config(cfg, str(tmp_path / "long"), tmp_path / "b", "base")
    after = eval_config(cfg, str(tmp_path / "rl"), tmp_path / "a", "rl")
    assert (before.template, before.max_new_tokens, before.model_kind) == ("fewshot", 1024, "base")
    assert (after.template, after.max_new_tokens, after.model_kind) == ("orz", 4096, "rl")
    assert before.benchmarks == after.benchmarks and before.temperature == after.temperature == 0.0


# ----------------------------------------------------------------------------- BOS on raw-text prompts


def _with_bos(tokenizer):
    """A copy of the tiny tokenizer whose encoder adds a BOS ``<s>``, as Llama's post-processor does."""
    import copy

    from tokenizers import processors

    tok = copy.deepcopy(tokenizer)
    tok.add_special_tokens({"bos_token": "<s>"})
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.bos_token_id)]
    )
    return tok


@pytest.mark.parametrize("template", ["fewshot", "orz", "no_prompt"])
def test_raw_prompts_start_with_bos_where_the_tokenizer_adds_one(tiny_tokenizer, data_dir, template):
    """As vLLM encodes a text prompt (special tokens on): the token ids the engine reads for an
    evaluation prompt equal the tokenizer's own encoding with special tokens, BOS or none."""
    from parallel_r1.data.registry import load_problems

    problems = load_problems("gsm8k", split="test", data_dir=data_dir, limit=2)
    bare = E.build_prompts("gsm8k", problems, None, template, data_dir, use_chat_template=False).prompts
    for tok, bos in ((tiny_tokenizer, False), (_with_bos(tiny_tokenizer), True)):
        bp = E.build_prompts("gsm8k", problems, tok, template, data_dir, use_chat_template=False)
        for text, prompt in zip(bare, bp.prompts):
            ids = tok.encode(prompt, add_special_tokens=False)  # as decoding.engine.encode_prompt reads it
            assert ids == tok.encode(text, add_special_tokens=True)
            assert (ids[0] == tok.bos_token_id) is bos


def test_chat_templated_prompts_get_no_bos_of_ours(tiny_tokenizer, data_dir):
    """The chat template writes what it writes; no BOS is put before it."""
    from parallel_r1.data.registry import load_problems
    from parallel_r1.prompts import format_problem

    tok = _with_bos(tiny_tokenizer)
    problems = load_problems("gsm8k", split="test", data_dir=data_dir, limit=1)
    (prompt,) = E.build_prompts("gsm8k", problems, tok, "parallel_v3", data_dir).prompts
    message = [{"role": "user", "content": format_problem(problems[0].problem, "parallel_v3")}]
    assert prompt == tok.apply_chat_template(message, tokenize=False, add_generation_prompt=True)
    assert not prompt.startswith("<s>")


# ----------------------------------------------------------------------------- OctoThinker as upstream


def _upstream_prompt(cls_name: str, question: str) -> str:
    """Upstream's prompt: its class's ``format_prompt(question, "")``, then ``lstrip()`` as its
    ``infer/run_cot_eval.py`` line 74 does (classes shipped verbatim under tests/data)."""
    import importlib
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent / "data"))
    try:
        module = {"CoTGSMPrompt": "cot_gsm_8_shot", "MinervaMathPrompt": "cot_minerva_math_4_shot",
                  "CoTAMCPrompt": "cot_amc_0_shot"}[cls_name]  # fmt: skip
        cls = getattr(importlib.import_module(f"octothinker_few_shot_prompts.{module}"), cls_name)
    finally:
        sys.path.pop(0)
    return cls().format_prompt(question, "").lstrip()


@pytest.mark.parametrize(
    "benchmark, cls_name",
    [("gsm8k", "CoTGSMPrompt"), ("math500", "MinervaMathPrompt"), ("olympiadbench", "MinervaMathPrompt"),
     ("amc23", "CoTAMCPrompt")],
)  # fmt: skip
def test_few_shot_prompts_are_byte_identical_to_upstream(data_dir, benchmark, cls_name):
    from parallel_r1.data.fewshot import fewshot_prompt

    for question in ("What is $1+1$?", "\nFind all $x$ with $x^2=4$.\n", "How many {braces} here?"):
        assert fewshot_prompt(benchmark, question, data_dir) == _upstream_prompt(cls_name, question)


@pytest.mark.parametrize(
    "benchmark, text, gold, right",
    [
        # GSM8K / AMC: the last number before any "Q: ", compared as a float
        ("gsm8k", "3 + 4 = 7. The answer is 7.\n\nQ: and 9", "7", True),
        ("gsm8k", "The answer is 18 dollars. Then 5 more", "18", False),  # the last number is 5
        ("amc23", "so the answer is 27.0", "27", True),
        ("gsm8k", "The answer is 1800.", "18", True),  # math_equal's percentage rule: 18 x 100
        # MATH500: every boxed / Minerva answer must equal the gold
        ("math500", "Final Answer: The final answer is $\\frac12$. I hope it is correct.", "\\frac{1}{2}", True),
        ("math500", "$\\boxed{3}$ or maybe $\\boxed{4}$", "4", False),
        # OlympiadBench: the text after the last "Final Answer:", boxed, against final_answer[0]
        ("olympiadbench", "Final Answer: The final answer is $5$. I hope it is correct.", "$5$", True),
        ("olympiadbench", "so it is \\boxed{5}", "$5$", True),  # no Final Answer: the whole text boxed
        ("olympiadbench", "the answer is 5", "$5$", False),  # ... where math-verify finds no value
    ],
)
def test_octothinker_scores_each_benchmark_as_upstream(benchmark, text, gold, right):
    """Each benchmark's extraction and check are OctoThinker's own (its harness's functions); our
    generic extractor and math_verify decide differently on some of these."""
    from parallel_r1.grading_pool import grade

    scoring = _cfg(protocol="octothinker", model_kind="base", benchmarks=benchmark).scoring_of(benchmark)
    pred = EXTRACTORS[scoring.extractor](text, "Find x.")
    assert grade(pred, gold, scoring.grader) is right


def test_octothinker_scoring_names_and_override():
    c = _cfg(protocol="octothinker", model_kind="base")
    assert {b: (c.scoring_of(b).extractor, c.scoring_of(b).grader) for b in c.benchmarks} == {
        "gsm8k": ("octothinker_gsm8k", "octothinker_last_single"),
        "math500": ("octothinker_math", "octothinker_math"),
        "olympiadbench": ("octothinker_olympiad", "octothinker_olympiad"),
        "amc23": ("octothinker_gsm8k", "octothinker_last_single"),
    }
    assert c.scoring_of("synthetic_easy").extractor == "octothinker"  # not one of its four: the fallback
    mine = _cfg(protocol="octothinker", model_kind="base", grader="math_verify", extractor="auto")
    assert (mine.scoring_of("gsm8k").extractor, mine.scoring_of("gsm8k").grader) == ("auto", "math_verify")


def test_octothinker_olympiadbench_gold_is_final_answer_0_as_written(tmp_path):
    """Upstream grades against ``final_answer[0]`` with its ``$``: ``$69$,$84$`` is the set
    {69, 84} for math-verify, while the ``$``-stripped ``69,84`` reads as 69.84."""
    from parallel_r1.data.olympiadbench import to_problems

    row = {"id": 7, "question": "Find both.", "final_answer": ["$69$,$84$"], "is_multiple_answer": True}
    (p,) = to_problems([row], "f.jsonl", "olympiadbench")
    scoring = _cfg(protocol="octothinker", model_kind="base").scoring_of("olympiadbench")
    from parallel_r1.grading_pool import grade

    pred = EXTRACTORS[scoring.extractor]("Final Answer: The final answer is $69, 84$. I hope it is correct.")
    assert p.extra[scoring.gold] == "$69$,$84$" and grade(pred, p.extra[scoring.gold], scoring.grader)
