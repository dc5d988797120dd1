"""OlympiadBench (He et al. 2024), the English text-only open-ended maths subset OctoThinker evaluates.

The hub copy is ``Hothan/OlympiadBench``, config ``OE_TO_maths_en_COMP`` (675 problems, served as
the hub's only split, ``train``); OctoThinker's and Qwen2.5-Math's ``olympiadbench/test.jsonl``
are the same 675 rows. A row has ``question``, ``final_answer`` (a list of LaTeX strings, often
wrapped in ``$...$``), ``is_multiple_answer``, ``answer_type`` (Numerical, Expression, Tuple,
Interval, ...), ``unit``, ``error`` (a numeric tolerance), ``context``, ``subfield``, ``id``.

Gold answer (what :func:`parallel_r1.grading.grade` compares against):

* ``$`` delimiters are removed from every answer (``$\\frac{1}{2}$`` -> ``\\frac{1}{2}``);
* a multiple-answer problem (``is_multiple_answer``) gets all its answers joined with ``", "``
  into one string (``["$2$", "$-3$"]`` -> ``2, -3``); the math-verify grader reads a comma list as
  a set, so a prediction ``-3, 2`` is correct and ``2`` alone is not. An answer list already held
  in one string (``["$(2,1),(3,1)$"]``) stays one string, read the same way;
* a single-answer problem uses ``final_answer[0]``, as OctoThinker's and OpenBMB's judges do.

``Problem.extra["first_final_answer"]`` keeps ``final_answer[0]`` as written (``$`` and all):
OctoThinker's gold, which ``--protocol octothinker`` grades against (docs/eval.md). The question
is kept as written (not stripped), as OctoThinker puts it in its prompt; a ``context`` preamble
goes before it (every row of OctoThinker's copy has none).

``unit`` and ``error`` are kept in ``Problem.extra`` but not applied: the grader compares values
without units or tolerances (a Numerical answer given to fewer digits than the gold is wrong).
"""

from __future__ import annotations

import re

from .problem import Problem, require_columns

HUB_ID = "Hothan/OlympiadBench:OE_TO_maths_en_COMP"
HUB_SPLIT = "train"
LOCAL_FILE = "olympiadbench/test.jsonl"  # OctoThinker's / Qwen2.5-Math's copy, when put in the data folder
SCHEMA_FIELD = "final_answer"  # a file or hub set with this column is read as OlympiadBench

_DOLLAR = re.compile(r"(?<!\\)\$")  # a math delimiter, not an escaped \$ (a currency sign)


def is_olympiadbench(rows: list[dict]) -> bool:
    return bool(rows) and SCHEMA_FIELD in rows[0]


def _answers(value) -> list[str]:
    """``final_answer`` as a list of strings: lists, numpy arrays (parquet), or one bare string."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    return [a for a in (_DOLLAR.sub("", str(x)).strip() for x in items if x is not None) if a]


def gold_of(final_answer, is_multiple_answer: bool) -> str | None:
    """The gold string of one row (rules in the module doc); ``None`` when there is no answer."""
    answers = _answers(final_answer)
    if not answers:
        return None
    return ", ".join(answers) if is_multiple_answer else answers[0]


def to_problems(rows: list[dict], where: str, source: str) -> list[Problem]:
    """OlympiadBench rows as problems; a missing column or an empty answer is an error naming it."""
    require_columns(rows, where, "question", SCHEMA_FIELD)
    out = []
    for i, row in enumerate(rows):
        question = str(row.get("question") or "")
        multiple = bool(row.get("is_multiple_answer"))
        gold = gold_of(row.get(SCHEMA_FIELD), multiple)
        if not question.strip() or gold is None:
            what = "question" if not question.strip() else SCHEMA_FIELD
            raise ValueError(f"{where} row {i}: {what!r} is empty")
        context = str(row.get("context") or "").strip()  # shared preamble of a multi-part problem
        extra = {k: row.get(k) for k in ("answer_type", "unit", "error", "subfield")}
        raw = row.get(SCHEMA_FIELD)
        raw = raw.tolist() if hasattr(raw, "tolist") else raw
        extra.update(
            is_multiple_answer=multiple,
            final_answer=_answers(raw),
            first_final_answer=str(raw[0] if isinstance(raw, list) else raw),
        )
        rid = row.get("id", i)
        out.append(Problem(f"{source}-{rid}", f"{context}\n\n{question}" if context else question, gold, source, extra))
    return out
