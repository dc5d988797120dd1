"""OctoThinker's few-shot prompts for evaluating *base* models (docs/data.md).

The exemplars, query format, joiner and stop strings are read from
``<data dir>/fewshot/octothinker_prompts.json`` (copied from OctoThinker's
``eval/few_shot_prompts/``): GSM8K 8-shot chain of thought, MATH/MATH500/OlympiadBench Minerva
4-shot, AMC/AIME 0-shot. A prompt is ``exemplars + join + query.format(problem=...)``; generation
is cut at the first stop string.

The file's copy lost two pieces of whitespace that upstream's ``format_prompt`` writes, restored
at load (:data:`UPSTREAM_WHITESPACE`) so that every prompt is byte-identical to upstream's (a test
builds upstream's own classes, shipped verbatim under ``tests/data``, and compares).
"""

from __future__ import annotations

import functools
import json
import os

from .registry import resolve_data_dir

PROMPTS_FILE = "fewshot/octothinker_prompts.json"

# benchmark -> prompt set of the file. The synthetic word problems read like GSM8K.
PROMPT_SET: dict[str, str] = {
    "gsm8k": "gsm8k_8shot",
    "synthetic_easy": "gsm8k_8shot",
    "synthetic_medium": "gsm8k_8shot",
    "synthetic_hard": "gsm8k_8shot",
    "math": "minerva_math_4shot",
    "math500": "minerva_math_4shot",
    "math300": "minerva_math_4shot",
    "olympiadbench": "minerva_math_4shot",
    "amc23": "amc_0shot",
    "aime24": "amc_0shot",
    "aime25": "amc_0shot",
    "apo_amc23": "amc_0shot",
    "apo_aime24": "amc_0shot",
    "apo_aime25": "amc_0shot",
}


# GAIR-NLP/OctoThinker eval/few_shot_prompts at 2ee2b49: cot_minerva_math_4_shot.py's exemplars end
# with "\n" (line 45) before format_prompt's "\n\nProblem:" (line 52), so three newlines; and
# cot_amc_0_shot.py's format_prompt (lines 11-12) ends "A: " and, unlike the others, is not rstripped.
UPSTREAM_WHITESPACE: dict[str, dict[str, str]] = {
    "minerva_math_4shot": {"join": "\n\n\n"},
    "amc_0shot": {"query": "Q: {problem}\nA: "},
}


@functools.lru_cache(maxsize=4)
def load_prompt_sets(data_dir: str | os.PathLike | None = None) -> dict[str, dict]:
    path = resolve_data_dir(data_dir) / PROMPTS_FILE
    if not path.exists():
        raise FileNotFoundError(f"few-shot prompts not found: {path} (set --data-dir)")
    sets = json.loads(path.read_text(encoding="utf-8"))
    for name, s in sets.items():
        missing = [k for k in ("exemplars", "query", "join", "stop") if k not in s]
        if missing or "{problem}" not in s.get("query", ""):
            raise ValueError(f"{path}: prompt set {name!r} needs exemplars, join, stop and a query with {{problem}}")
    for name, fix in UPSTREAM_WHITESPACE.items():
        if name in sets:
            sets[name] = {**sets[name], **fix}
    return sets


def prompt_set(benchmark: str, data_dir: str | os.PathLike | None = None) -> dict:
    """The prompt set for a benchmark name (or a set name of the file, e.g. ``gsm8k_8shot``)."""
    sets = load_prompt_sets(data_dir)
    key = PROMPT_SET.get(benchmark, benchmark)
    if key not in sets:
        raise KeyError(f"no few-shot prompt for {benchmark!r}; known: {', '.join([*PROMPT_SET, *sets])}")
    return sets[key]


def fewshot_prompt(benchmark: str, problem: str, data_dir: str | os.PathLike | None = None) -> str:
    s = prompt_set(benchmark, data_dir)
    query = s["query"].replace("{problem}", problem)  # not str.format: problems hold LaTeX braces
    return s["exemplars"] + s["join"] + query if s["exemplars"] else query


def fewshot_stop(benchmark: str, data_dir: str | os.PathLike | None = None) -> list[str]:
    return list(prompt_set(benchmark, data_dir)["stop"])
