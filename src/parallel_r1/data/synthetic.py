"""The built-in synthetic task: short word problems by seed, and a programmatic parallel teacher.

A problem is a count of one kind of item that changes over a few sentences::

    Mia has 24 shells. She finds 13 more. She gives away 9. How many shells does Mia have now?

Structure (``Problem.extra``): a list of signed *terms* ``[sign, k, n]`` meaning ``sign * k * n``
(``k == 1`` for a plain number; ``k > 1`` is "k packs of n", one multiplication); the first term
is the start. The answer is their sum. Operations = additions/subtractions between terms plus
multiplications inside them: *easy* has 1-2, *medium* 3 (easy's numbers; the RL stage's
difficulty with headroom, docs/experiments.md), *hard* 4-6 plus a distractor sentence whose
number does not matter. Every running total is a whole number in [0, 1000).

The teacher (:func:`teacher_trace`) writes one parallel block with two different computations
and a summary that checks they agree::

    Track Mia's shells.
    <Parallel><Path>In order: 24+13=37, 37-9=28.</Path><Path>Net change: 13-9=4, 24+4=28.</Path></Parallel>
    <Summary>Both ways give 28.</Summary>
    Final Answer: 28

Path 1 always goes left to right. Path 2 groups differently: gains and losses are totalled first
and the net change is applied to the start ("Net change"); a problem with a single addition or
subtraction splits the second number into tens and ones instead ("Split"); every multiplication
in path 2 is written as a repeated addition. The wording is fixed, so that a 135M model learns
the layout in a hundred SFT steps (token counts in docs/data.md).

Splits: a problem belongs to ``test`` iff the SHA-256 of its text is 0 or 1 mod 10; generation
redraws until the problem lands in the requested split, so train and test never share a problem.
"""

from __future__ import annotations

import hashlib
import random

from .problem import Problem

DIFFICULTIES = ("easy", "medium", "hard")
OPS = {"easy": (1, 2), "medium": (3, 3), "hard": (4, 6)}  # inclusive range of operations
MAX_VALUE = 1000

NAMES = [("Mia", "She", "her"), ("Tom", "He", "his"), ("Ava", "She", "her"), ("Sam", "He", "his"),
         ("Lily", "She", "her"), ("Ben", "He", "his"), ("Zoe", "She", "her"), ("Leo", "He", "his"),
         ("Emma", "She", "her"), ("Max", "He", "his"), ("Nora", "She", "her"), ("Jack", "He", "his")]  # fmt: skip
ITEMS = [
    "apples",
    "pens",
    "stickers",
    "marbles",
    "cookies",
    "books",
    "coins",
    "shells",
    "cards",
    "stamps",
    "beads",
    "eggs",
]
GAIN = ["{P} buys {n} more.", "{P} finds {n} more.", "{P} gets {n} more."]
LOSS = ["{P} gives away {n}.", "{P} loses {n}.", "{P} sells {n}."]
GAIN_PACKS = ["{P} buys {k} packs of {n}.", "{P} gets {k} bags of {n}."]
LOSS_PACKS = ["{P} gives {k} friends {n} each.", "{P} sells {k} boxes of {n}."]
START = "{N} has {n} {items}."
START_PACKS = "{N} has {k} boxes of {n} {items}."
DISTRACTORS = ["{N} is {m} years old.", "The shop is {m} minutes away.", "{Q} has {m} {other}."]
QUESTION = "How many {items} does {N} have now?"


def split_of(text: str) -> str:
    """``test`` for 1 in 5 problem texts (by hash), else ``train``."""
    return "test" if int(hashlib.sha256(text.encode()).hexdigest(), 16) % 10 < 2 else "train"


def evaluate_terms(terms: list[list[int]]) -> int:
    return sum(sign * k * n for sign, k, n in terms)


def count_ops(terms: list[list[int]]) -> int:
    return len(terms) - 1 + sum(k > 1 for _, k, _ in terms)


def _draw_terms(rng: random.Random, difficulty: str) -> list[list[int]] | None:
    """Signed terms with the difficulty's operation count and every running total in range, or None."""
    lo, hi = OPS[difficulty]
    n_ops = rng.randint(lo, hi)
    hard = difficulty == "hard"
    terms = []
    if rng.random() < (0.3 if hard else 0.15) and n_ops >= 1:
        terms.append([1, rng.randint(2, 5), rng.randint(3, 15)])
    else:
        terms.append([1, 1, rng.randint(10, 99 if hard else 60)])
    while count_ops(terms) < n_ops:
        packs = count_ops(terms) + 2 <= n_ops and rng.random() < (0.35 if hard else 0.2)
        sign = 1 if rng.random() < 0.55 else -1
        if packs:
            terms.append([sign, rng.randint(2, 4 if not hard else 5), rng.randint(2, 12)])
        else:
            terms.append([sign, 1, rng.randint(2, 30 if hard else 25)])
    if n_ops == 1 and len(terms) == 2:  # a lone +/- : path 2 splits its number into tens and ones
        terms[1][2] = rng.choice([n for n in range(11, 50) if n % 10])
    total = 0
    for sign, k, n in terms:
        total += sign * k * n
        if not 0 <= total < MAX_VALUE:
            return None
    return terms


def _render(rng: random.Random, terms: list[list[int]], difficulty: str) -> tuple[str, dict]:
    name, pronoun, _ = rng.choice(NAMES)
    items = rng.choice(ITEMS)
    sign0, k0, n0 = terms[0]
    sentences = [(START_PACKS if k0 > 1 else START).format(N=name, n=n0, k=k0, items=items)]
    for sign, k, n in terms[1:]:
        if k > 1:
            pool = GAIN_PACKS if sign > 0 else LOSS_PACKS
        else:
            pool = GAIN if sign > 0 else LOSS
        sentences.append(rng.choice(pool).format(P=pronoun, n=n, k=k))
    extra = {}
    if difficulty == "hard":
        other = rng.choice([x for x in NAMES if x[0] != name])[0]
        m = rng.randint(3, 60)
        distractor = rng.choice(DISTRACTORS).format(
            N=name, Q=other, m=m, other=rng.choice([i for i in ITEMS if i != items])
        )
        sentences.insert(rng.randint(1, len(sentences)), distractor)
        extra["distractor"] = m
    sentences.append(QUESTION.format(items=items, N=name))
    return " ".join(sentences), dict(name=name, items=items, **extra)


def make_problem(seed: int, difficulty: str = "easy", split: str = "train") -> Problem:
    """The problem of ``seed`` (deterministic) at ``difficulty``, drawn inside ``split``."""
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {', '.join(DIFFICULTIES)}, got {difficulty!r}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be train or test, got {split!r}")
    rng = random.Random(f"parallel-r1 synthetic {difficulty} {seed}")
    while True:
        terms = _draw_terms(rng, difficulty)
        if terms is None:
            continue
        text, extra = _render(rng, terms, difficulty)
        if split_of(text) == split:
            break
    extra.update(terms=terms, ops=count_ops(terms), difficulty=difficulty, seed=seed, split=split)
    return Problem(
        f"synthetic_{difficulty}-{split}-{seed}", text, str(evaluate_terms(terms)), f"synthetic_{difficulty}", extra
    )


def make_problems(n: int, difficulty: str = "easy", seed: int = 0, split: str = "train") -> list[Problem]:
    """Problems of seeds ``seed .. seed + n - 1``."""
    return [make_problem(seed + i, difficulty, split) for i in range(n)]


# ----------------------------------------------------------------------------------- the teacher


def _in_order(terms: list[list[int]]) -> list[str]:
    """Left to right: each product when it comes, then the running total."""
    steps, total = [], None
    for sign, k, n in terms:
        value = k * n
        if k > 1:
            steps.append(f"{k}*{n}={value}")
        if total is None:
            total = value
            continue
        new = total + sign * value
        steps.append(f"{total}{'+' if sign > 0 else '-'}{value}={new}")
        total = new
    return steps


def _as_sum(k: int, n: int) -> str:
    return "+".join([str(n)] * k) + f"={k * n}"


def _sum_steps(values: list[int]) -> tuple[list[str], int]:
    if len(values) == 1:
        return [], values[0]
    return ["+".join(map(str, values)) + f"={sum(values)}"], sum(values)


def _other_way(terms: list[list[int]]) -> tuple[str, list[str]]:
    """Path 2: a different grouping of the same sum (see the module doc)."""
    steps = [_as_sum(k, n) for _, k, n in terms if k > 1]
    start = terms[0][1] * terms[0][2]
    if len(terms) == 1:
        return "As a sum", steps
    if len(terms) == 2 and terms[1][1] == 1 and terms[1][2] >= 10 and terms[1][2] % 10:
        sign, _, n = terms[1]
        op = "+" if sign > 0 else "-"
        tens, ones = n - n % 10, n % 10
        mid = start + sign * tens
        return f"Split {n}", [f"{start}{op}{tens}={mid}", f"{mid}{op}{ones}={mid + sign * ones}"]
    gains = [k * n for sign, k, n in terms[1:] if sign > 0]
    losses = [k * n for sign, k, n in terms[1:] if sign < 0]
    s, g = _sum_steps(gains) if gains else ([], 0)
    steps += s
    s, lost = _sum_steps(losses) if losses else ([], 0)
    steps += s
    if gains and losses:
        steps.append(f"{g}-{lost}={g - lost}" if g >= lost else f"{lost}-{g}={lost - g}")
    net = g - lost
    steps.append(f"{start}+{net}={start + net}" if net >= 0 else f"{start}-{-net}={start + net}")
    return "Net change", steps


def teacher_trace(problem: Problem) -> str:
    """A correct parallel-thinking trace for a synthetic problem (layout in the module doc)."""
    terms = problem.extra.get("terms") if problem.extra else None
    if not terms:
        raise ValueError(
            f"problem {problem.id}: the synthetic teacher needs a problem from data.synthetic (extra['terms'])"
        )
    answer = evaluate_terms(terms)
    head, other = _other_way(terms)
    path1 = "In order: " + ", ".join(_in_order(terms)) + "."
    path2 = f"{head}: " + ", ".join(other) + "."
    return (
        f"Track {problem.extra['name']}'s {problem.extra['items']}.\n"
        f"<Parallel><Path>{path1}</Path><Path>{path2}</Path></Parallel>\n"
        f"<Summary>Both ways give {answer}.</Summary>\n"
        f"Final Answer: {answer}"
    )


def plain_trace(problem: Problem) -> str:
    """The teacher's sequential twin: the same opening line, path 1 without a block, the answer
    (``Track Mia's shells.\nIn order: 24+13=37, 37-9=28.\nFinal Answer: 28``). Half of a mixed
    cold start (docs/experiments.md, E2), so the model can choose not to think in parallel."""
    return f"Track {problem.extra['name']}'s {problem.extra['items']}.\n" + worked_solution(problem)


def worked_solution(problem: Problem) -> str:
    """A sequential worked solution (path 1 of the teacher, no block) in the RL answer form:
    ``In order: 24+13=37, 37-9=28.\\nFinal Answer: 28``. Mid-training data for the readiness
    experiment (docs/experiments.md, E4): a decay branch that has seen the task's solutions."""
    terms = problem.extra.get("terms") if problem.extra else None
    if not terms:
        raise ValueError(
            f"problem {problem.id}: a worked solution needs a problem from data.synthetic (extra['terms'])"
        )
    return "In order: " + ", ".join(_in_order(terms)) + f".\nFinal Answer: {evaluate_terms(terms)}"
