"""The ``math_verify`` grader on real benchmark answers (docs/rewards.md, "Held-out answers").

Nothing here is hand-picked: every gold answer of AIME24, AIME25, AMC23, OlympiadBench (its 675
answers, ``tests/data/olympiadbench_answers.jsonl``: the ``final_answer`` column of OctoThinker's
copy, GAIR-NLP/OctoThinker ``eval/datasets/olympiad_bench/test.jsonl`` at 2ee2b49) and seeded
samples of MATH500, GSM8K test and MATH test goes through :func:`variants`, which writes

* the gold itself, and its rewrites in the forms students write (thousands separators, degree
  signs, percent signs, ``x = N`` / ``f_{\\max} = N``, an interval as its inequality, a set or
  plain list in another order), each of which must grade **correct**;
* wrong answers made from it (the last integer changed, a tuple swapped, an inequality flipped,
  a percentage read as a fraction, a list with a repeated element missing one copy, a variable
  with its case changed), each of which must grade **wrong**.

``python tests/test_grading_heldout.py raw|ours [--sample N]`` grades the set with raw math-verify
or with ours and prints the figures of docs/rewards.md.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from parallel_r1.data.olympiadbench import gold_of
from parallel_r1.grading import gold_answer, math_verify_grade
from parallel_r1.grading_pool import grade_answers

DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"
OLYMPIAD_ANSWERS = Path(__file__).resolve().parent / "data" / "olympiadbench_answers.jsonl"

NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?")
SEPARATORS = ["\\,", "{,}", ",\\!", ","]
NAMES = ["x = ", "n = ", "k=", "\\min = ", "f_{\\max} = ", "m_{\\min}="]


def load_golds(data_dir: Path, sample: int | None, seed: int = 0) -> list[tuple[str, str]]:
    """``(benchmark, gold)`` for every gold answer; ``sample`` caps MATH500, GSM8K and MATH test (seeded)."""
    import pyarrow.parquet as pq

    rng = random.Random(seed)

    def jsonl(name: str) -> list[str]:
        return [gold_answer(str(json.loads(line)["answer"])) for line in open(data_dir / name / "test.jsonl")]

    def capped(golds: list[str]) -> list[str]:
        return golds if sample is None else rng.sample(golds, min(sample, len(golds)))

    math_test = [
        r["ground_truth"] for r in pq.read_table(data_dir / "math" / "test.parquet").column("reward_model").to_pylist()
    ]
    olympiad = [gold_of(r["final_answer"], r["is_multiple_answer"]) for r in map(json.loads, open(OLYMPIAD_ANSWERS))]
    sets = {"math500": capped(jsonl("math500")), "aime24": jsonl("aime24"), "aime25": jsonl("aime25"),
            "amc23": jsonl("amc23"), "gsm8k": capped(jsonl("gsm8k")), "math": capped(math_test),
            "olympiadbench": olympiad}  # fmt: skip
    return [(name, g) for name, golds in sets.items() for g in golds if g.strip()]


def _top_level_split(s: str) -> list[str]:
    """``s`` split on commas outside any brackets or braces."""
    parts, depth, start = [], 0, 0
    for i, c in enumerate(s):
        depth += c in "([{"
        depth -= c in ")]}"
        if c == "," and depth == 0:
            parts.append(s[start:i].strip())
            start = i + 1
    return parts + [s[start:].strip()]


def _thousands(n: int, sep: str) -> str:
    return f"{n:,}".replace(",", sep)


def _perturb_last_integer(s: str) -> str | None:
    """The last integer that is no exponent (``cm^2``) and no base (``52_9``) plus one."""
    matches = list(re.finditer(r"(?<![\d^_])(?<!\^\{)(?<!_\{)\d+", s))
    if not matches:
        return None
    m = matches[-1]
    return s[: m.start()] + str(int(m.group()) + 1).zfill(len(m.group())) + s[m.end() :]


def _inequality(interval: str, var: str = "x") -> tuple[str, str] | None:
    """``(a, \\infty)`` -> (``x > a``, the flipped ``x \\le a``); ``None`` if not one interval."""
    s = re.sub(r"\\left|\\right", "", interval).strip()
    if len(s) < 5 or s[0] not in "([" or s[-1] not in ")]":
        return None
    parts = _top_level_split(s[1:-1])
    if len(parts) != 2 or not all(parts):
        return None
    (low, high), open_low, open_high = parts, s[0] == "(", s[-1] == ")"
    if low == "-\\infty" and high == "\\infty":
        return None
    if high == "\\infty":  # x > a flips to x <= a (and x >= a to x < a)
        op, flip = (">", "\\le") if open_low else ("\\ge", "<")
        return f"{var} {op} {low}", f"{var} {flip} {low}"
    if low == "-\\infty":
        op, flip = ("<", "\\ge") if open_high else ("\\le", ">")
        return f"{var} {op} {high}", f"{var} {flip} {high}"
    lo, hi = ("<" if open_low else "\\le"), ("<" if open_high else "\\le")
    flipped = "\\le" if lo == "<" else "<"
    return f"{low} {lo} {var} {hi} {high}", f"{low} {flipped} {var} {hi} {high}"


def variants(gold: str, rng: random.Random) -> list[tuple[str, bool, str]]:
    """``(pred, expected verdict, form)`` for one gold answer (see the module docstring)."""
    out = [(gold, True, "self")]
    wrong = _perturb_last_integer(gold)
    if wrong is not None and wrong != gold:
        out.append((wrong, False, "other number"))
    plain = re.sub(r",\\!|\{,\}|\\,", "", gold)
    if re.fullmatch(r"-?\d{1,3}(,\d{3})*", plain):
        plain = plain.replace(",", "")
    if re.fullmatch(r"-?\d+", plain) and abs(int(plain)) >= 1000:  # thousands separators
        n = int(plain)
        sep = rng.choice(SEPARATORS)
        out += [(_thousands(n, sep), True, "thousands"), (plain, True, "thousands"),
                (_thousands(n + 10 ** rng.randint(0, 2), sep), False, "thousands")]  # fmt: skip
    if NUMBER_RE.fullmatch(plain):  # named with its variable, or min/max
        name = rng.choice(NAMES)
        out += [(name + gold, True, "named"), (name + _perturb_last_integer(gold), False, "named")]
    degree = re.fullmatch(r"(.+?)\s*\^\s*\{?\\circ\}?", gold)
    if degree:
        out += [(degree.group(1) + "°", True, "degrees"), (degree.group(1), True, "degrees")]
        if _perturb_last_integer(degree.group(1)):
            out.append((_perturb_last_integer(degree.group(1)) + "^\\circ", False, "degrees"))
    percent = re.fullmatch(r"(-?\d+(?:\.\d+)?)\s*\\%", gold)
    if percent:
        value = percent.group(1)
        out += [(value, True, "percent"), (value + "%", True, "percent"),
                (str(float(value) / 100), False, "percent as fraction")]  # fmt: skip
    pieces = [p.strip() for p in gold.split("\\cup")]
    inequalities = [_inequality(p) for p in pieces]
    if all(inequalities) and ("\\infty" in gold or "[" in gold or "]" in gold):  # intervals, never tuples
        joined = " \\text{ or } ".join(right for right, _ in inequalities)
        flipped = " \\text{ or } ".join([inequalities[0][1]] + [right for right, _ in inequalities[1:]])
        out += [(joined, True, "inequality"), (flipped, False, "inequality")]
    bare = re.sub(r"\\(?:text|textbf|mathrm|operatorname)\s*\{[^{}]*\}|\\[A-Za-z]+", " ", gold)
    letters = re.findall(r"[A-Za-z]", bare)
    if letters and not re.search(r"[A-Za-z]{2}", bare) and letters[0].swapcase() not in letters:  # variables
        at = next(m.start() for m in re.finditer(r"(?<!\\)(?<![A-Za-z])[A-Za-z](?![A-Za-z])", gold))
        out.append((gold[:at] + gold[at].swapcase() + gold[at + 1 :], False, "case changed"))
    inner = re.sub(r"\\left|\\right", "", gold).strip()
    listed = _top_level_split(inner)
    if not inner.startswith("\\{") and len(listed) >= 2 and len(set(listed)) < len(listed):  # a multiset
        repeated = next(x for x in listed if listed.count(x) > 1)
        fewer = list(listed)
        fewer.remove(repeated)
        out.append((", ".join(fewer), False, "repeat dropped"))
    if inner.startswith("(") and inner.endswith(")") and "\\infty" not in inner:  # an ordered tuple
        items = _top_level_split(inner[1:-1])
        if len(items) >= 2 and len(set(items)) == len(items):
            out.append(("(" + ", ".join(items[::-1]) + ")", False, "swapped tuple"))
    elif (
        inner.startswith("\\{")
        and inner.endswith("\\}")
        or (inner[:1] not in "([" and "," in inner and "=" not in inner)
    ):
        body = inner[2:-2] if inner.startswith("\\{") else inner
        items = _top_level_split(body)
        if len(items) >= 2 and all(items) and not re.search(r"\d,(\\!\s*)?\d{3}(?!\d)", inner):  # no 1,000
            order = items[1:] + items[:1]
            written = "\\{" + ", ".join(order) + "\\}" if inner.startswith("\\{") else ", ".join(order)
            out.append((written, True, "set order"))
    return out


def held_out(sample: int | None, seed: int = 0) -> list[tuple[str, str, str, bool, str]]:
    """``(benchmark, pred, gold, expected, form)`` rows of the whole held-out set."""
    rng = random.Random(seed)
    return [(name, pred, gold, ok, form) for name, gold in load_golds(DATA_DIR, sample, seed)
            for pred, ok, form in variants(gold, rng)]  # fmt: skip


def test_heldout_benchmark_answers():
    rows = held_out(sample=80)
    verdicts = grade_answers([r[1] for r in rows], [r[2] for r in rows], "math_verify", workers=2, timeout=30.0)
    misgraded = [(name, pred, gold, form) for (name, pred, gold, ok, form), v in zip(rows, verdicts) if v != ok]
    forms = {r[4] for r in rows}
    # percent golds are too rare for the samples (15 in MATH test); FORMS in test_grading.py covers them
    assert {
        "self",
        "thousands",
        "named",
        "degrees",
        "inequality",
        "swapped tuple",
        "set order",
        "repeat dropped",
        "case changed",
    } <= forms
    assert not [m for m in misgraded if m[3] == "self"], "a gold answer does not grade correct against itself"
    assert not misgraded, f"{len(misgraded)} of {len(rows)} misgraded, e.g. {misgraded[:10]}"


def raw_math_verify(pred: str, gold: str) -> bool:
    """The library alone, as its README calls it (both sides boxed, its own timeouts)."""
    from math_verify import parse, verify

    return verify(parse("\\boxed{" + gold + "}"), parse("\\boxed{" + pred + "}"))


def main() -> None:
    """Raw math-verify or ours on the held-out set: the table of docs/rewards.md.

    ``python tests/test_grading_heldout.py {raw,ours} [--sample N]`` (N caps MATH500, GSM8K and MATH test).
    """
    import argparse
    import logging

    ap = argparse.ArgumentParser(description=main.__doc__.split("\n")[0])
    ap.add_argument("grader", choices=["raw", "ours"])
    ap.add_argument("--sample", type=int, default=None, help="MATH500 / GSM8K / MATH test golds (default: all)")
    args = ap.parse_args()
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    from math_verify import parse

    rows = held_out(sample=args.sample)
    golds = sorted({(r[0], r[2]) for r in rows})
    print(f"{len(golds)} distinct gold answers, {len(rows)} graded pairs")
    fn = raw_math_verify if args.grader == "raw" else math_verify_grade
    stats: dict[tuple[bool, str], list[int]] = {}  # (expected, form) -> [graded as expected, pairs]
    misgraded = []
    for name, pred, gold, ok, form in rows:
        try:
            verdict = fn(pred, gold)
        except Exception:
            verdict = False
        s = stats.setdefault((ok, form), [0, 0])
        s[0] += verdict == ok
        s[1] += 1
        if verdict != ok:
            misgraded.append((name, form, pred, gold))
    for ok, rate in [(True, "correct-accept"), (False, "wrong-reject")]:
        good, n = (sum(v[i] for k, v in stats.items() if k[0] == ok) for i in (0, 1))
        print(f"{args.grader}: {rate} {good}/{n} = {good / n:.2%}")
    for (ok, form), (good, n) in sorted(stats.items()):
        print(f"    {'right' if ok else 'wrong'} {form:22s} {good}/{n}")
    print(f"misgraded ({len(misgraded)}):", *misgraded, sep="\n    ")
    if args.grader == "raw":
        unparsed = [(name, g) for name, g in golds if not parse("\\boxed{" + g + "}")]
        print(f"golds math-verify cannot parse ({len(unparsed)}):", *unparsed, sep="\n    ")


if __name__ == "__main__":
    main()
