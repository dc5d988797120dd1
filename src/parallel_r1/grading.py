"""Answer extraction and the graders by name (docs/rewards.md, "Grading").

Two graders, chosen by name in :data:`GRADERS`:

* ``math_verify`` (default): the math-verify library. Gold and prediction are both parsed as
  the content of a ``\\boxed{}`` (math-verify's strongest LaTeX extraction), so ``\\frac12``,
  ``0.5``, ``025``, ``27.0``, intervals and tuples compare by value. When that fails and the
  prediction is plain words ("18 eggs"), it is parsed once more as free text.
* ``minerva_exact``: the paper's check. Minerva ``normalize_final_answer`` (Lewkowycz et al.
  2022, appendix D) on both sides, then exact string equality. The "extract two ``$``"
  step runs line by line in linear time instead of through the quadratic regex; the result
  is the same (a test compares the two).

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
    """The paper's check: Minerva-normalised prediction == normalised gold."""
    return normalize_final_answer(pred) == normalize_final_answer(gold)


_WORDS_RE = re.compile(r"[A-Za-z]{2,}")


def math_verify_grade(pred: str, gold: str) -> bool:
    """math-verify ``verify(parse(gold), parse(pred))`` with both parsed as boxed LaTeX.

    Unguarded (no time limit): call it through :func:`parallel_r1.grading_pool.grade`.
    """
    from math_verify import parse, verify

    gold_parsed = parse(BOXED + gold + "}", parsing_timeout=None)
    if not gold_parsed:
        return False
    if verify(gold_parsed, parse(BOXED + pred + "}", parsing_timeout=None), timeout_seconds=None):
        return True
    # "18 eggs": as LaTeX the words become a product of symbols; as free text they are dropped.
    if "\\" not in pred and _WORDS_RE.search(pred):
        return verify(gold_parsed, parse(pred, parsing_timeout=None), timeout_seconds=None)
    return False


# name -> fn(pred, gold) -> bool. Raw functions without a time limit; grade() guards them.
GRADERS: dict[str, Callable[[str, str], bool]] = {
    "math_verify": math_verify_grade,
    "minerva_exact": minerva_exact,
}


__all__ = [
    "EXTRACTORS", "FINAL_ANSWER_RE", "GRADERS", "extract_boxed", "extract_final_answer", "extract_gsm8k_gold",
    "gold_answer", "math_verify_grade", "minerva_exact", "normalize_final_answer",
]  # fmt: skip
