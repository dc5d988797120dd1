"""Answer extraction and the graders by name (docs/rewards.md, "Grading").

The graders, chosen by name in :data:`GRADERS`:

* ``math_verify`` (default): the math-verify library. Gold and prediction are both parsed as
  the content of a ``\\boxed{}`` (math-verify's strongest LaTeX extraction), so ``\\frac12``,
  ``0.5``, ``025``, ``27.0``, intervals and tuples compare by value. When that fails and the
  prediction is plain words ("18 eggs"), it is parsed once more as free text. Answer forms the
  library misreads are rewritten first (:func:`normalize_for_math_verify`: thousands separators,
  degree and percent signs, inequalities as intervals) and two post-checks overrule a wrong "yes"
  (exact decimals, numeral bases); docs/rewards.md has the table of decisions.
* ``minerva_exact``: the paper's check. Minerva ``normalize_final_answer`` (Lewkowycz et al.
  2022, appendix D) on both sides, then exact string equality. The "extract two ``$``"
  step runs line by line in linear time instead of through the quadratic regex; the result
  is the same (a test compares the two).
* ``octothinker_last_single``, ``octothinker_math``, ``octothinker_olympiad``: OctoThinker's own
  per-benchmark checks (``eval/eval/eval_script.py``: numeric / string / ``math_equal`` for
  GSM8K and AMC, the same over every boxed answer for MATH, math-verify for OlympiadBench), run
  verbatim from :mod:`parallel_r1.upstream.octothinker_eval`; ``octothinker_math`` reads its
  prediction as the JSON list the ``octothinker_math`` extractor writes.

Choices where the spec is silent (each is tested):

* An empty gold answer (after stripping) or a missing prediction is never correct.
* :func:`extract_final_answer` looks at the text with the six tags removed (what the paper's
  rewards see), takes the last ``Final Answer:`` match of the math_dapo regex and unwraps the
  last ``\\boxed{}`` inside that line. :func:`extract_boxed` returns ``None`` when the last
  ``\\boxed{`` is never closed (a truncated answer), rather than falling back to an earlier box.
* GSM8K gold: the text after the last ``####``, commas removed.

The graders here have no time limit: callers grade through :mod:`parallel_r1.grading_pool`
(:func:`~parallel_r1.grading_pool.grade`, :func:`~parallel_r1.grading_pool.grade_many`), which runs them in
worker processes and kills any that overrun.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal

from .format import strip_tags

FINAL_ANSWER_RE = re.compile(r"(?i)Final Answer\s*:\s*([^\n]+)")
BOXED = "\\boxed{"


# ----------------------------------------------------------------------------- extraction


def extract_final_answer(text: str) -> str | None:
    """The answer on the last ``Final Answer:`` line of ``text``, or ``None``.

    Tags are removed first; a ``\\boxed{}`` inside the line is unwrapped (its last one).
    """
    matches = FINAL_ANSWER_RE.findall(strip_tags(text))
    if not matches:
        return None
    line = matches[-1].strip()
    boxed = extract_boxed(line)
    return boxed if boxed is not None else line


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` in ``text`` (balanced braces), or ``None``."""
    start = text.rfind(BOXED)
    if start < 0:
        return None
    depth = 0
    for i in range(start + len(BOXED) - 1, len(text)):
        c = text[i]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[start + len(BOXED) : i].strip()
    return None


def extract_gsm8k_gold(solution: str) -> str:
    """``N`` from a GSM8K worked solution ending ``#### N`` (commas removed)."""
    idx = solution.rfind("####")
    if idx < 0:
        raise ValueError(f"GSM8K solution has no '#### N' line: {solution[-80:]!r}")
    return solution[idx + 4 :].strip().replace(",", "")


def gold_answer(answer: str) -> str:
    """A GSM8K worked solution becomes its ``N``; any other answer is returned stripped."""
    answer = str(answer)
    return extract_gsm8k_gold(answer) if "####" in answer else answer.strip()


EXTRACTORS: dict[str, Callable[[str], str | None]] = {
    "final_answer": extract_final_answer,
    "boxed": lambda text: extract_boxed(strip_tags(text)),
    "auto": lambda text: extract_final_answer(text) or extract_boxed(strip_tags(text)),
}


# ----------------------------------------------------------------------------- graders

# Minerva normalisation tables (Lewkowycz et al. 2022, appendix D), as used by verl math_dapo.
SUBSTITUTIONS = [
    ("an ", ""), ("a ", ""), (".$", "$"), ("\\$", ""), (r"\ ", ""), (" ", ""),
    ("mbox", "text"), (",\\text{and}", ","), ("\\text{and}", ","), ("\\text{m}", "\\text{}"),
]  # fmt: skip
REMOVED_EXPRESSIONS = [
    "square", "ways", "integers", "dollars", "mph", "inches", "hours", "km", "units", "\\ldots",
    "sue", "points", "feet", "minutes", "digits", "cents", "degrees", "cm", "gm", "pounds",
    "meters", "meals", "edges", "students", "childrentickets", "multiples", "\\text{s}",
    "\\text{.}", "\\text{\ns}", "\\text{}^2", "\\text{}^3", "\\text{\n}", "\\text{}",
    r"\mathrm{th}", r"^\circ", r"^{\circ}", r"\;", r",\!", "{,}", '"', "\\dots",
]  # fmt: skip


def _between_first_two_dollars(s: str) -> str:
    """``re.sub(r"(.*?)(\\$)(.*?)(\\$)(.*)", "$\\3$", s)`` in linear time.

    ``.`` stops at newlines, so each line with two or more ``$`` becomes ``$<text between
    the first two>$`` and other lines are kept.
    """
    lines = s.split("\n")
    for k, line in enumerate(lines):
        i = line.find("$")
        j = line.find("$", i + 1) if i >= 0 else -1
        if j >= 0:
            lines[k] = "$" + line[i + 1 : j] + "$"
    return "\n".join(lines)


def normalize_final_answer(final_answer: str) -> str:
    """Minerva's answer normalisation, step for step (docs/rewards.md, "Grading")."""
    final_answer = final_answer.split("=")[-1]
    for before, after in SUBSTITUTIONS:
        final_answer = final_answer.replace(before, after)
    for expr in REMOVED_EXPRESSIONS:
        final_answer = final_answer.replace(expr, "")
    final_answer = _between_first_two_dollars(final_answer)
    final_answer = re.sub(r"(\\text\{)(.*?)(\})", "\\2", final_answer)
    final_answer = re.sub(r"(\\textbf\{)(.*?)(\})", "\\2", final_answer)
    final_answer = re.sub(r"(\\overline\{)(.*?)(\})", "\\2", final_answer)
    final_answer = re.sub(r"(\\boxed\{)(.*)(\})", "\\2", final_answer)
    final_answer = re.sub(r"(frac)([^{])(.)", "frac{\\2}{\\3}", final_answer)
    final_answer = re.sub(r"(sqrt)([^{])", "sqrt{\\2}", final_answer)
    final_answer = final_answer.replace("$", "")
    if final_answer.replace(",", "").isdigit():
        final_answer = final_answer.replace(",", "")
    return final_answer.strip()


def minerva_exact(pred: str, gold: str) -> bool:
    """The paper's check: Minerva-normalised prediction == normalised gold, exactly as the paper.

    Its quirks are kept (rewards must match the paper's); each is tested:

    * only the text after the last ``=`` counts: ``x=5`` equals ``y=5`` and ``y=2x+1`` equals ``2x+1``;
    * every space is removed (``1 2`` equals ``12``), and the removed words are substrings, so
      ``\\text{issue}`` equals ``\\text{is}`` ("sue") and ``"a "`` goes anywhere (``banana `` -> ``banan``);
    * commas go only from a pure digit string: ``-1,000`` and ``1,000.5`` keep them;
    * ``\\dfrac`` is not ``\\frac``, ``\\left(`` is not ``(``, and the match is case-sensitive;
    * the ``\\fracab`` / ``\\sqrta`` rewrites take single characters: ``\\frac1{2}`` becomes
      ``\\frac{1}{{}2}`` and ``\\sqrt23`` becomes ``\\sqrt{2}3``;
    * ``^\\circ`` is removed but ``\\%`` is not;
    * no numeric equivalence: ``0.5`` is not ``\\frac12``, ``025`` is not ``25``, ``27.0`` is not ``27``.
    """
    return normalize_final_answer(pred) == normalize_final_answer(gold)


_WORDS_RE = re.compile(r"[A-Za-z]{2,}")

# Digit groups joined by a LaTeX thousands separator: 1\,000, 1{,}000, 1,\!000, 1\ 000. Only
# groups of exactly three digits, and never after a decimal point (3.141\,592 stays).
_THOUSANDS_RE = re.compile(r"(?<![\d.])\d{1,3}(?:(?:\\,|\{,\}|,\\!|\\ |\\thinspace\s*)\d{3})+(?!\d)")
_SEPARATOR_RE = re.compile(r"\\,|\{,\}|,\\!|\\ |\\thinspace\s*")
# A whole answer that is one number with plain-comma groups, maybe named or in dollars: "x = 1,000".
# Elsewhere "1,000" may be a list, so it is left to math-verify.
_COMMA_NUMBER_RE = re.compile(r"((?:[^=]*=)?\s*(?:\\\$)?\s*)(-?\d{1,3}(?:,\d{3})+(?:\.\d+)?)")
_DEGREE_RE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree(?![a-zA-Z])")
_PERCENT_RE = re.compile(r"\\%|%")
# An inequality in one variable: "x > 3", "3 < x", "-2 \le x < 5" (a ``\le`` is not a ``\left``).
_RELATION_RE = re.compile(
    r"\\leqslant|\\geqslant|\\leq|\\geq|\\le(?![a-z])|\\ge(?![a-z])|\\lt(?![a-z])|\\gt(?![a-z])|<=|>=|≤|≥|<|>"
)
_LESS = {"\\leqslant", "\\leq", "\\le", "<=", "≤", "<", "\\lt"}
_STRICT = {"<", ">", "\\lt", "\\gt"}
_VARIABLE_RE = re.compile(r"[a-zA-Z]|\\theta")
_OR_RE = re.compile(r"(?:\\quad)?\s*(?:\\cup|\\text\{\s*or\s*\}|\\lor|\\vee|\bor\b)\s*(?:\\quad)?")


def _constant(s: str) -> bool:
    """No free letter once LaTeX commands (``\\frac``, ``\\pi``, ``\\infty``) are removed."""
    return bool(s.strip()) and not re.search(r"[a-zA-Z]", re.sub(r"\\[a-zA-Z]+", "", s))


def _interval(inequality: str) -> str | None:
    """``x > 3`` -> ``(3, \\infty)``, ``-2 \\le x < 5`` -> ``[-2, 5)``; ``None`` if not such an inequality."""
    parts = _RELATION_RE.split(inequality)
    ops = _RELATION_RE.findall(inequality)
    parts = [p.strip() for p in parts]
    if len(ops) == 1:
        (left, right), (op,) = parts, ops
        if _VARIABLE_RE.fullmatch(left) and _constant(right):
            bound, var_less = right, op in _LESS  # x < b
        elif _VARIABLE_RE.fullmatch(right) and _constant(left):
            bound, var_less = left, op not in _LESS  # b > x
        else:
            return None
        if var_less:
            return f"(-\\infty, {bound}" + (")" if op in _STRICT else "]")
        return ("(" if op in _STRICT else "[") + f"{bound}, \\infty)"
    if len(ops) == 2:
        low, var, high = parts
        if not (_VARIABLE_RE.fullmatch(var) and _constant(low) and _constant(high)):
            return None
        if (ops[0] in _LESS) != (ops[1] in _LESS):
            return None
        if ops[0] not in _LESS:  # b > x > a
            low, high, ops = high, low, ops[::-1]
        return ("(" if ops[0] in _STRICT else "[") + f"{low}, {high}" + (")" if ops[1] in _STRICT else "]")
    return None


def _inequalities_to_intervals(s: str) -> str:
    """An answer made only of one-variable inequalities, joined by "or" / ``\\cup``, as intervals."""
    if not _RELATION_RE.search(s):
        return s
    pieces = [_interval(p) for p in _OR_RE.split(s.replace("$", ""))]
    return s if None in pieces else " \\cup ".join(pieces)


def normalize_for_math_verify(answer: str) -> str:
    """The answer forms math-verify misreads, rewritten before it parses them (docs/rewards.md).

    * thousands separators in LaTeX (``1\\,000``, ``1{,}000``, ``1,\\!000``) are dropped, and plain
      commas (``x = 1,000``) when the whole answer is that one number;
    * degree signs (``°``, ``^\\circ``, ``^{\\circ}``) are dropped: ``90°`` is ``90``;
    * percent signs are dropped, so ``50\\%`` is ``50`` and never ``0.5``;
    * one-variable inequalities become intervals: ``x > 3`` is ``(3, \\infty)``;
    * a sentence-final period is dropped: math-verify parses ``(-\\infty, 0) \\cup \\{1\\}.`` as 0.
    """
    answer = answer.strip()
    if answer.endswith(".") and not _DECIMAL_RE.fullmatch(answer):
        answer = answer[:-1]
    answer = _THOUSANDS_RE.sub(lambda m: _SEPARATOR_RE.sub("", m.group()), answer)
    number = _COMMA_NUMBER_RE.fullmatch(answer.strip())
    if number:
        answer = number.group(1) + number.group(2).replace(",", "")
    answer = _PERCENT_RE.sub("", _DEGREE_RE.sub("", answer))
    return _inequalities_to_intervals(answer).strip()


def _same_text(a: str, b: str) -> bool:
    """Identical up to spacing and ``\\left``/``\\right``, which no grader should overrule."""

    def squash(s: str) -> str:
        s = re.sub(r"\\left|\\right|\\[,;!]|\$", "", s)
        return re.sub(r"(?<!\d)\s+|\s+(?!\d)", "", s)

    return squash(a) == squash(b)


# Both without nested or overlapping repeats: linear on a megabyte of digits.
_DECIMAL_RE = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")
_BASE_RE = re.compile(r"([0-9A-Za-z]+)_\{?(\d+)\}?")  # 2516_8: a numeral in base 8


def _overrules(pred: str, gold: str) -> bool:
    """Pairs math-verify accepts that are wrong (checked after it says yes).

    * Two plain decimals compare exactly: math-verify rounds to 6 decimal places, so it takes
      ``.0000672`` for ``.0000673``.
    * Numerals in different bases differ: math-verify drops subscripts, so it takes ``52_8`` for
      ``52_9``. (``52`` against ``52_9`` is left to math-verify: the base may be implied.)
    * A list written with a repeated element is a multiset: math-verify compares comma lists as
      sets, so it takes ``16, 3, 1`` for ``16, 3, 1, 1`` and ``-2`` for ``-2, -2``
      (:func:`_multiset_differs`).
    """
    if _DECIMAL_RE.fullmatch(pred) and _DECIMAL_RE.fullmatch(gold):
        return Decimal(pred) != Decimal(gold)
    base_p, base_g = _BASE_RE.fullmatch(pred), _BASE_RE.fullmatch(gold)
    if base_p and base_g and int(base_p.group(2)) != int(base_g.group(2)):
        return True
    return _multiset_differs(pred, gold)


_COMMAND_RE = re.compile(r"\\(?:text|textbf|mathrm|operatorname)\s*\{[^{}]*\}|\\[A-Za-z]+")
_LETTER_RE = re.compile(r"[A-Za-z]")


def _case_differs(pred: str, gold: str) -> bool:
    """Do the two name the same variables only up to case? math-verify takes ``N`` for ``n``, so
    ``N=N`` for ``N=n`` and ``2N`` for ``2n``. Letters inside ``\\text{}`` and LaTeX command
    names do not count."""
    letters_p, letters_g = (set(_LETTER_RE.findall(_COMMAND_RE.sub(" ", x))) for x in (pred, gold))
    return letters_p != letters_g and {c.lower() for c in letters_p} == {c.lower() for c in letters_g}


def _top_level_items(text: str) -> list[str]:
    """``text`` split on the commas outside any bracket or brace, each item without spaces."""
    items, depth, start = [], 0, 0
    for i, c in enumerate(text):
        depth += c in "([{"
        depth -= c in ")]}"
        if c == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    return [re.sub(r"\s+", "", x) for x in [*items, text[start:]]]


def _multiset_differs(pred: str, gold: str) -> bool:
    """For a gold list with a repeated element (not written as a set ``\\{...\\}``): does the
    prediction miss one of its copies? Items are paired one to one (each by the grader), so
    order stays free and multiplicity counts."""
    if gold.lstrip().startswith("\\{"):
        return False
    golds = _top_level_items(gold)
    if len(golds) < 2 or len(set(golds)) == len(golds):
        return False
    preds = _top_level_items(pred)
    if len(preds) != len(golds):
        return True
    free = list(preds)
    for g in golds:
        match = next((p for p in free if p == g or math_verify_grade(p, g)), None)
        if match is None:
            return True
        free.remove(match)
    return False


def math_verify_grade(pred: str, gold: str) -> bool:
    """math-verify ``verify(parse(gold), parse(pred))``, both parsed as boxed LaTeX after
    :func:`normalize_for_math_verify`; the same text (up to spacing) is always correct.

    Unguarded (no time limit): call it through :func:`parallel_r1.grading_pool.grade`.
    """
    if _case_differs(pred, gold):  # before the rewrites, which may drop the variable (x > 3)
        return False
    pred, gold = normalize_for_math_verify(pred), normalize_for_math_verify(gold)
    if _same_text(pred, gold):
        return True
    from math_verify import parse, verify

    gold_parsed = parse(BOXED + gold + "}", parsing_timeout=None)
    if not gold_parsed:
        return False
    if verify(gold_parsed, parse(BOXED + pred + "}", parsing_timeout=None), timeout_seconds=None):
        return not _overrules(pred, gold)
    # "18 eggs": as LaTeX the words become a product of symbols; as free text they are dropped.
    if "\\" not in pred and _WORDS_RE.search(pred):
        return verify(gold_parsed, parse(pred, parsing_timeout=None), timeout_seconds=None)
    return False


def octothinker_last_single(pred: str, gold: str) -> bool:
    from .upstream.octothinker_eval import eval_last_single_answer

    return bool(eval_last_single_answer({"prediction": pred, "answer": gold}))


def octothinker_math(pred: str, gold: str) -> bool:
    """``pred``: the JSON list of answers its extractor writes; any other text is one answer."""
    import json

    from .upstream.octothinker_eval import eval_math

    try:
        answers = json.loads(pred)
    except ValueError:
        answers = None
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        answers = [pred]
    return bool(eval_math({"prediction": answers, "answer": gold}))


def octothinker_olympiad(pred: str, gold: str) -> bool:
    from .upstream.octothinker_eval import eval_olympiad_math

    return bool(eval_olympiad_math({"prediction": [pred], "answer": gold}))


# name -> fn(pred, gold) -> bool. Raw functions without a time limit; grade() guards them.
GRADERS: dict[str, Callable[[str, str], bool]] = {
    "math_verify": math_verify_grade,
    "minerva_exact": minerva_exact,
    "octothinker_last_single": octothinker_last_single,
    "octothinker_math": octothinker_math,
    "octothinker_olympiad": octothinker_olympiad,
}


__all__ = [
    "EXTRACTORS", "FINAL_ANSWER_RE", "GRADERS", "extract_boxed", "extract_final_answer", "extract_gsm8k_gold",
    "gold_answer", "math_verify_grade", "minerva_exact", "normalize_final_answer", "normalize_for_math_verify",
]  # fmt: skip
