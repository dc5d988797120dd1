"""Evaluation protocols by name: the settings a paper's table was produced with, as one bundle.

``parallel-r1 eval --protocol NAME`` fills every eval setting the user did not give on the
command line (or in the ``--config`` YAML) from the protocol; a setting given explicitly wins
and is recorded in ``run.json`` / ``results.json`` as an override (docs/eval.md, "Protocols").

* ``custom`` (default): the toolkit's own defaults (math_verify grader, ``Final Answer:`` line
  else ``\\boxed{}``, AIME24/AIME25/AMC23 x16 and MATH500 x1, T=1.0, 3,000 tokens, v3 prompt).
* ``parallel_r1``: how the Parallel-R1 paper scored its main table (docs/eval.md): Minerva
  exact match (``minerva_exact``) on the whole last ``Final Answer:`` line of the last 300
  tag-stripped characters (the training reward's own extraction,
  :func:`~parallel_r1.rewards.extract_math_dapo`), decoded by the paper's loop; the paper's own eval rows (``apo_aime24``, ``apo_aime25``,
  ``apo_amc23``: 16 copies of each problem, one sample each, so mean@16 and pass@16 come from
  grouping the copies; ``math300`` once), T=1.0, top-p 1.0, 3,000 tokens, the v3 prompt through
  the chat template.
* ``octothinker``: OctoThinker's evaluation of base models (few-shot, greedy, 1,024 tokens:
  GSM8K 8-shot, MATH500/OlympiadBench Minerva 4-shot, AMC23 0-shot) and of RL models (zero-shot
  with its RL template, greedy as verl's validation, 4,096 tokens = its RL response length),
  GSM8K, MATH500, OlympiadBench and AMC23 scored by OctoThinker's own per-benchmark extraction
  and checks (:data:`OCTOTHINKER_SCORING`), any other benchmark with :func:`extract_octothinker`
  and the math_verify grader. Which one applies is the
  ``model_kind`` (``base`` | ``rl``): given, or read from the model folder (:func:`detect_model_kind`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .format import strip_tags
from .grading import EXTRACTORS as GRADING_EXTRACTORS
from .grading import extract_boxed
from .rewards import extract_math_dapo

# ----------------------------------------------------------------------------- extraction

_MINERVA_RE = re.compile(r"final answer is\s*\$(.+?)\$\s*\.?\s*I hope", re.IGNORECASE | re.DOTALL)
_THE_ANSWER_RE = re.compile(r"the answer is[:\s]*([^\n]+)", re.IGNORECASE)
_HASHES_RE = re.compile(r"####\s*([^\n]+)")
_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def _clean(answer: str) -> str | None:
    answer = answer.strip().rstrip(".").strip()
    if len(answer) >= 2 and answer.startswith("$") and answer.endswith("$"):
        answer = answer.strip("$").strip()
    return answer or None


def extract_octothinker(text: str) -> str | None:
    """OctoThinker's answer forms, in the order its extraction tries them.

    Minerva's ``final answer is $X$. I hope it is correct.``; the last ``\\boxed{}``; the last
    ``the answer is X.`` (its GSM8K/AMC demos); ``#### N`` (GSM8K's own solutions); else the
    last number. ``$...$`` and a sentence-final period are removed.
    """
    text = strip_tags(text)
    for find in (
        lambda t: _MINERVA_RE.findall(t),
        lambda t: [b] if (b := extract_boxed(t)) is not None else [],
        lambda t: _THE_ANSWER_RE.findall(t),
        lambda t: _HASHES_RE.findall(t),
    ):
        found = find(text)
        if found and (answer := _clean(found[-1])) is not None:
            return answer
    numbers = _NUMBER_RE.findall(text)
    return numbers[-1].replace(",", "") if numbers else None


def _text_only(fn: Callable[[str], str | None]) -> Callable[..., str | None]:
    return lambda text, question="": fn(text)


def _octothinker_gsm8k(text: str, question: str = "") -> str:
    from .upstream.octothinker_eval import extract_gsm_few_shot_cot_answer

    return extract_gsm_few_shot_cot_answer(question, text, "cot")


def _octothinker_math(text: str, question: str = "") -> str:
    """Every boxed / Minerva answer, as the JSON list the ``octothinker_math`` grader reads."""
    import json

    from .upstream.octothinker_eval import extract_math_few_shot_cot_answer

    return json.dumps(extract_math_few_shot_cot_answer(question, text, "cot"))


def _octothinker_olympiad(text: str, question: str = "") -> str:
    from .upstream.octothinker_eval import extract_olympiad_math_answer

    return extract_olympiad_math_answer(question, text, "cot")[0]


# name -> fn(completion, question="") -> answer or None: the grading module's plus the protocols'
# own. OctoThinker's MATH extraction reads the question ("separated by commas" splits a list).
EXTRACTORS: dict[str, Callable[..., str | None]] = {
    **{name: _text_only(fn) for name, fn in GRADING_EXTRACTORS.items()},
    # The paper scored evaluation with its training reward's extraction: the whole line goes to
    # Minerva's normaliser, so "\boxed{5}." or "The answer is \boxed{70}" on it is wrong.
    "paper": _text_only(extract_math_dapo),
    "octothinker": _text_only(extract_octothinker),
    "octothinker_gsm8k": _octothinker_gsm8k,
    "octothinker_math": _octothinker_math,
    "octothinker_olympiad": _octothinker_olympiad,
}


@dataclass(frozen=True)
class Scoring:
    """How one benchmark is scored: extractor and grader names, and where the gold answer is
    (``gold``: a ``Problem.extra`` key; ``None``: the problem's answer, ``grading.gold_answer``)."""

    extractor: str
    grader: str
    gold: str | None = None


# OctoThinker's evaluation (GAIR-NLP/OctoThinker eval/configs/en_math_cot_few_shot_test_configs.json
# lines 2-45, at 2ee2b49): per benchmark its extraction (data_processing/answer_extraction.py) and
# its check (eval/eval_script.py). MATH500 has no entry there; its results file reports it beside
# MATH, scored as MATH (math-cot), which is what is done here.
OCTOTHINKER_SCORING: dict[str, Scoring] = {
    "gsm8k": Scoring("octothinker_gsm8k", "octothinker_last_single"),
    "amc23": Scoring("octothinker_gsm8k", "octothinker_last_single"),
    "math500": Scoring("octothinker_math", "octothinker_math"),
    "olympiadbench": Scoring("octothinker_olympiad", "octothinker_olympiad", gold="first_final_answer"),
}


# ----------------------------------------------------------------------------- protocols

MODEL_KINDS = ("base", "rl")


@dataclass(frozen=True)
class Protocol:
    """One paper's evaluation settings. ``settings`` are :class:`~parallel_r1.evaluate.EvalConfig`
    field values; ``by_kind`` adds the values that depend on ``model_kind`` (base vs RL model)."""

    name: str
    reproduces: str  # what table the protocol reproduces (for docs and run.json)
    benchmarks: tuple[str, ...]
    k: dict[str, int]  # samples scored per problem, per benchmark
    settings: dict  # decoding, grader, extractor, template, temperature, top_p, max_new_tokens
    chat_template: bool  # prompts go through the tokenizer's chat template when it has one
    by_kind: dict[str, dict] = field(default_factory=dict)  # model_kind -> settings on top
    scoring: dict[str, Scoring] = field(default_factory=dict)  # benchmark -> its own scoring

    def values(self, model_kind: str | None = None) -> dict:
        """Every field value the protocol sets for a model of ``model_kind``."""
        if self.by_kind and model_kind not in self.by_kind:
            raise ValueError(
                f"protocol {self.name}: model_kind must be one of {', '.join(self.by_kind)}, got {model_kind!r}"
            )
        out = {"benchmarks": list(self.benchmarks), **self.settings, **self.by_kind.get(model_kind, {})}
        return out


PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol(
            name="custom",
            reproduces="the toolkit's defaults: math_verify grading, Final Answer: line else \\boxed{}",
            benchmarks=("aime24", "aime25", "amc23", "math500"),
            k={"aime24": 16, "aime25": 16, "amc23": 16, "math500": 1},
            settings=dict(
                decoding="engine",
                grader="math_verify",
                extractor="auto",
                template="parallel_v3",
                temperature=1.0,
                top_p=1.0,
                max_new_tokens=3000,
            ),
            chat_template=True,
        ),
        Protocol(
            name="parallel_r1",
            reproduces="Parallel-R1 main table: AIME24/AIME25/AMC23 mean@16 and pass@16, MATH300 mean@1",
            # The paper's eval rows: 16 copies per AIME/AMC problem, k=1 each (grouped into @16).
            benchmarks=("apo_aime24", "apo_aime25", "apo_amc23", "math300"),
            k={"apo_aime24": 1, "apo_aime25": 1, "apo_amc23": 1, "math300": 1},
            # The paper's numbers came from its vLLM loop (paths as separate requests, stray tags
            # let through), so that is how the protocol decodes (docs/eval.md, "Decoding").
            settings=dict(
                decoding="paper",
                grader="minerva_exact",
                extractor="paper",
                template="parallel_v3",
                temperature=1.0,
                top_p=1.0,
                max_new_tokens=3000,
            ),
            chat_template=True,
        ),
        Protocol(
            name="octothinker",
            reproduces="OctoThinker: base models few-shot, RL models zero-shot, greedy accuracy",
            benchmarks=("gsm8k", "math500", "olympiadbench", "amc23"),
            k={"gsm8k": 1, "math500": 1, "olympiadbench": 1, "amc23": 1},
            # Its models have no tags: the engine decodes them causally, as vLLM's plain generate did.
            settings=dict(decoding="engine", grader="math_verify", extractor="octothinker", temperature=0.0, top_p=1.0),
            chat_template=False,
            by_kind={
                "base": dict(template="fewshot", max_new_tokens=1024),
                "rl": dict(template="orz", max_new_tokens=4096),
            },
            # Its four benchmarks as its harness scores them; any other one with the settings above.
            scoring=OCTOTHINKER_SCORING,
        ),
    )
}


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise KeyError(f"unknown protocol {name!r}; known: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def detect_model_kind(model: str) -> str | None:
    """``rl`` for a model written by ``parallel-r1 rl`` (its run folder has ``rollouts.jsonl`` or
    ``metrics.jsonl`` beside or above it), ``base`` for one written by ``midtrain`` or
    ``prepare-model`` without RL after it (a ``report.json`` of a mid-training stage); ``None``
    when the folder does not say (a hub id, a folder copied elsewhere)."""
    path = Path(model).expanduser()
    if not path.is_dir():
        return None
    for folder in (path, path.parent, path.parent.parent):
        if (folder / "rollouts.jsonl").exists() or (folder / "metrics.jsonl").exists():
            return "rl"
    for folder in (path, path.parent):
        if (folder / "report.json").exists():
            return "base"
    return None


def resolve_model_kind(protocol: Protocol, model: str, model_kind: str | None) -> str | None:
    """The model kind a protocol needs: given, else detected, else a clear error."""
    if not protocol.by_kind:
        return model_kind
    if model_kind is not None:
        if model_kind not in protocol.by_kind:
            raise ValueError(f"eval: --model_kind must be one of {', '.join(protocol.by_kind)}, got {model_kind!r}")
        return model_kind
    kind = detect_model_kind(model)
    if kind is None:
        raise ValueError(
            f"eval: --protocol {protocol.name} evaluates base models few-shot and RL models zero-shot, and "
            f"{model!r} does not say which it is; give --model_kind base or --model_kind rl"
        )
    return kind
