"""Parallel-thinking rewards and their schedules (docs/rewards.md).

Every ``reward_method`` of the paper is a :class:`Reward` in :data:`REWARDS`, callable as a pure
function ``reward(completion, gold, step) -> float``:

* math_dapo family (±1 scale, DAPO training and APO eval) under the paper's name, e.g.
  ``accuracy_reward``, ``accuracy_parallel_interv_reward`` (the alternating S2 reward);
* GSM8K family (0/1 scale) as ``gsm8k/<name>``, e.g. ``gsm8k/accuracy_times_special_token_reward``;
* OctoThinker's ``boxed_pm1``: last ``\\boxed{}`` graded, ±1, no box → −1.

A formula reads c = correct, p = uses parallel (``<Parallel>`` occurs), f = format OK
(:func:`parallel_r1.format.check_format`), n_par = number of ``<Parallel>``, the self-BLEU of
the paths and the efficiency gain g. Each family extracts the answer its own way:

* math_dapo: tags stripped, last 300 characters, last ``Final Answer\\s*:\\s*(...)`` match;
  no match counts as wrong (the paper compares ``"[INVALID]"``).
* ``gsm8k/accuracy_reward``: last 300 characters (tags kept: the GSM8K family sees the text
  with tags, since it tests ``"<Parallel>" in s``), last ``Final Answer: (-?[0-9.,]+)`` match.
  Other ``gsm8k/*``: first ``Final Answer:\\s*(-?[0-9.,]+)`` match in the whole text. ``,``
  and ``$`` are removed from the match. No match → reward 0 whatever the formula.

Grader. Each reward takes ``grader=`` (a name in :data:`parallel_r1.grading.GRADERS`). The
default is the paper's: ``minerva_exact`` for both families (on the GSM8K family's digit
strings it is plain string equality, as in ``gsm8k.py``), and ``math_verify`` for
``boxed_pm1`` (OctoThinker's verifier calls math-verify). Pass ``grader="math_verify"`` to
train against the same judge the evaluation uses by default; the math_dapo family then still
extracts the answer the paper's way.

Choices where the papers are silent (tested):

* Self-BLEU: blocks are the ``<Parallel>…</Parallel>`` spans (non-greedy), paths their
  ``<Path>…</Path>`` texts; the score of a block is the mean of
  ``sentence_bleu(path_i, [path_j]).score / 100`` over pairs i < j. A block with fewer than two
  paths scores 1.0; no block at all gives 1.0 (as the paper defines it). Only the first
  :data:`BLEU_MAX_BLOCKS` blocks and their first :data:`BLEU_MAX_PATHS` paths are scored, so a
  tag soup cannot cost millions of BLEU pairs; the paper's traces (≤ 4 blocks, 2–4 paths) are
  scored in full.
* Spans are found by a linear scan equal to ``re.finditer("<Parallel>(.*?)</Parallel>", re.S)``
  (the regex is quadratic on many unclosed ``<Parallel>``: minutes on a 300 kB tag soup).
* Efficiency gain: words are whitespace-split after each tag is replaced by a space (so a tag
  never glues two words together).
* Steps start at 1, as verl's ``global_steps``: the RL step, not TRL's optimiser step. The RL
  trainer's reward function (:class:`parallel_r1.train.rl_trainer.ScheduledReward`) gets it from
  ``RLConfig.rl_step(global_step)`` (:func:`parallel_r1.train.rl.rl_step_of`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

from . import grading, grading_pool
from .format import PARALLEL_CLOSE, PARALLEL_OPEN, PATH_CLOSE, PATH_OPEN, TAG_RE, parse, strip_tags

# ----------------------------------------------------------------------------- answer extraction

GSM8K_LAST_RE = re.compile(r"Final Answer: (\-?[0-9\.\,]+)")
GSM8K_FIRST_RE = re.compile(r"Final Answer:\s*([-]?[0-9\.\,]+)")
TAIL_CHARS = 300  # the paper's rewards only look at the last 300 characters


def extract_math_dapo(completion: str) -> str | None:
    """math_dapo family: last ``Final Answer:`` match in the last 300 tag-stripped characters."""
    matches = grading.FINAL_ANSWER_RE.findall(strip_tags(completion)[-TAIL_CHARS:])
    return matches[-1].strip() if matches else None


def extract_gsm8k_last(completion: str) -> str | None:
    """``gsm8k.py``: last match in the last 300 characters, ``,`` and ``$`` removed."""
    matches = GSM8K_LAST_RE.findall(completion[-TAIL_CHARS:])
    return matches[-1].replace(",", "").replace("$", "") if matches else None


def extract_gsm8k_first(completion: str) -> str | None:
    """``gsm8k_*.py::extract_solution``: first match in the whole text, ``,`` and ``$`` removed."""
    m = GSM8K_FIRST_RE.search(completion)
    return m.group(1).replace(",", "").replace("$", "") if m else None


def extract_boxed_answer(completion: str) -> str | None:
    return grading.extract_boxed(strip_tags(completion))


# ----------------------------------------------------------------------------- measured facts

BLEU_MAX_BLOCKS = 64
BLEU_MAX_PATHS = 8


def spans(text: str, open_tag: str, close_tag: str) -> list[tuple[int, int]]:
    """``(start, end)`` of every ``open_tag…close_tag`` span, non-greedy and non-overlapping.

    The same spans as ``re.finditer(open + "(.*?)" + close, re.S)`` (``m.start()``, ``m.end()``),
    in linear time: once an opening tag has no closing tag after it, no later one has either.
    """
    out = []
    i = text.find(open_tag)
    while i >= 0:
        j = text.find(close_tag, i + len(open_tag))
        if j < 0:
            break
        out.append((i, j + len(close_tag)))
        i = text.find(open_tag, j + len(close_tag))
    return out


def _inner(text: str, open_tag: str, close_tag: str) -> list[str]:
    """The texts between the tags of :func:`spans` (what the regex's group 1 holds)."""
    return [text[a + len(open_tag) : b - len(close_tag)] for a, b in spans(text, open_tag, close_tag)]


def _words(text: str) -> int:
    return len(TAG_RE.sub(" ", text).split())


def self_bleu(completion: str) -> float:
    """Average over blocks of the mean pairwise sacrebleu sentence BLEU between paths, in [0, 1].

    1.0 = paths identical (no diversity); a block with < 2 paths and a response without
    blocks score 1.0.
    """
    from sacrebleu import sentence_bleu

    scores = []
    for block in _inner(completion, PARALLEL_OPEN, PARALLEL_CLOSE)[:BLEU_MAX_BLOCKS]:
        paths = [p.strip() for p in _inner(block, PATH_OPEN, PATH_CLOSE)[:BLEU_MAX_PATHS]]
        pairs = [(a, b) for i, a in enumerate(paths) for b in paths[i + 1 :]]
        if not pairs:
            scores.append(1.0)
            continue
        scores.append(sum(sentence_bleu(a, [b]).score / 100 for a, b in pairs) / len(pairs))
    return sum(scores) / len(scores) if scores else 1.0


def efficiency_gain(completion: str) -> float:
    """g = max((total − traversed) / total, 0) in words (docs/rewards.md).

    traversed = words outside blocks (summaries included: they sit after ``</Parallel>``) +
    for each block the words of its longest path.
    """
    total = _words(completion)
    if total == 0:
        return 0.0
    blocks = spans(completion, PARALLEL_OPEN, PARALLEL_CLOSE)
    outside = [
        completion[a:b] for a, b in zip([0] + [e for _, e in blocks], [s for s, _ in blocks] + [len(completion)])
    ]
    traversed = _words(" ".join(outside))
    for block in _inner(completion, PARALLEL_OPEN, PARALLEL_CLOSE):
        traversed += max((_words(p) for p in _inner(block, PATH_OPEN, PATH_CLOSE)), default=0)
    return max((total - traversed) / total, 0.0)


@dataclass
class Facts:
    """What a reward formula reads about one completion. BLEU and g are computed on demand."""

    completion: str
    pred: str | None  # the extracted answer (None: no answer found)
    correct: bool  # c
    n_par: int  # number of "<Parallel>"
    format_ok: bool  # f
    num_blocks: int

    @property
    def uses_parallel(self) -> bool:  # p
        return self.n_par >= 1

    @property
    def has_answer(self) -> bool:
        return self.pred is not None

    @cached_property
    def avg_bleu(self) -> float:
        return self_bleu(self.completion)

    @cached_property
    def efficiency_gain(self) -> float:
        return efficiency_gain(self.completion)


def measure(completion: str, pred: str | None, correct: bool) -> Facts:
    parsed = parse(completion)
    return Facts(
        completion=completion,
        pred=pred,
        correct=bool(correct),
        n_par=completion.count(PARALLEL_OPEN),
        format_ok=parsed.format_ok,
        num_blocks=parsed.num_blocks,
    )


# ----------------------------------------------------------------------------- schedules


def alternating_mode(step: int, window: int = 10, accuracy_steps: int = 8) -> str:
    """``"accuracy"`` when ``(step − 1) mod window < accuracy_steps``, else ``"parallel"``.

    With the defaults: steps 1–8, 11–18, … → accuracy; 9, 10, 19, 20, … → parallel (docs/rewards.md).
    """
    if not 0 <= accuracy_steps <= window or window < 1:
        raise ValueError(f"alternating schedule needs 0 <= accuracy_steps <= window, got {accuracy_steps}/{window}")
    return "accuracy" if (step - 1) % window < accuracy_steps else "parallel"


# ----------------------------------------------------------------------------- formulas
# f(facts, step) -> float. c, p, f as in the tables of docs/rewards.md.


def _pm1(x: Facts) -> float:
    return 1.0 if x.correct else -1.0


def _emphase(bonus: Callable[[Facts], float], wrong: float) -> Callable[[Facts, int], float]:
    """c∧¬p → 1; c∧p∧f → bonus; anything else (wrong, or correct but malformed) → wrong."""

    def formula(x: Facts, step: int) -> float:
        if x.correct and not x.uses_parallel:
            return 1.0
        if x.correct and x.format_ok:
            return bonus(x)
        return wrong

    return formula


def _interv(x: Facts, step: int) -> float:
    if alternating_mode(step) == "accuracy":
        return _pm1(x)
    return _emphase(lambda _: 1.2, -1.0)(x, step)


def _efficiency(decay: bool) -> Callable[[Facts, int], float]:
    def formula(x: Facts, step: int) -> float:
        scale = math.exp(-step / 50) if decay else 1.0
        if x.correct:
            return 1.0 + 0.4 * scale * x.efficiency_gain
        return -1.0 + 0.1 * scale * x.efficiency_gain

    return formula


def _all_three(yes: float, no: float) -> Callable[[Facts, int], float]:
    return lambda x, step: yes if x.correct and x.uses_parallel and x.format_ok else no


MATH_DAPO_FORMULAS: dict[str, tuple[Callable[[Facts, int], float], bool]] = {
    # name: (formula, pays for parallel structure)
    "accuracy_reward": (lambda x, s: _pm1(x), False),
    "accuracy_parallel_interv_reward": (_interv, True),
    "emphase_acc": (_emphase(lambda _: 1.0, -1.0), True),
    "emphase_parallel": (_emphase(lambda _: 1.2, -1.0), True),
    "emphase_parallel_enhance": (_emphase(lambda _: 2.0, -1.0), True),
    "emphase_parallel_add_diversity": (_emphase(lambda x: 1.2 - 0.2 * x.avg_bleu, -1.0), True),
    "accuracy_add_parallel_reward": (lambda x, s: _pm1(x) + (0.5 if x.uses_parallel and x.format_ok else 0.0), True),
    "accuracy_times_parallel_reward": (_all_three(1.0, -1.0), True),
    "format_times_accuracy_times_parallel_reward": (_all_three(1.0, -1.0), True),
    "accuracy_parallel_reward": (lambda x, s: _pm1(x) + math.sqrt(x.n_par), True),
    "accuracy_add_diversity_reward": (lambda x, s: _pm1(x) - 0.3 * x.avg_bleu, True),
    "accuracy_add_parallel_add_diversity_reward": (
        lambda x, s: _pm1(x) + (1.0 if x.uses_parallel else 0.0) - 0.3 * x.avg_bleu,
        True,
    ),
    "accuracy_add_efficiency_reward": (_efficiency(decay=False), True),
    "accuracy_add_efficiency_reward_decay": (_efficiency(decay=True), True),
}

GSM8K_FORMULAS: dict[str, tuple[Callable[[Facts, int], float], bool]] = {
    "accuracy_reward": (lambda x, s: 1.0 if x.correct else 0.0, False),
    "accuracy_times_special_token_reward": (_all_three(1.0, 0.0), True),
    "format_times_accuracy_times_parallel_reward": (_all_three(1.0, 0.0), True),
    "accuracy_add_parallel_reward": (
        lambda x, s: (1.0 if x.correct else 0.0) + (0.5 if x.uses_parallel and x.format_ok else 0.0),
        True,
    ),
    "emphase_acc": (_emphase(lambda _: 1.0, 0.0), True),
    "emphase_parallel": (_emphase(lambda _: 1.2, 0.0), True),
    "emphase_parallel_add_diversity": (_emphase(lambda x: 1.2 - 0.2 * x.avg_bleu, 0.0), True),
}


# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Reward:
    """One ``reward_method``: how to find the answer, how to grade it, and the formula."""

    name: str
    extract: Callable[[str], str | None]
    formula: Callable[[Facts, int], float]
    grader: str = "minerva_exact"  # default judge of correctness
    parallel_aware: bool = True  # False: pays for correctness only
    no_answer: float | None = None  # reward when no answer is found (None: graded as wrong)

    @property
    def __name__(self) -> str:  # TRL logs a callable by its __name__
        return self.name

    def mode(self, step: int) -> str:
        """``"accuracy"`` or ``"parallel"``: whether the reward pays for structure at ``step``."""
        if self.formula is _interv:
            return alternating_mode(step)
        return "parallel" if self.parallel_aware else "accuracy"

    def facts(self, completion: str, gold: str, grader: str | None = None) -> Facts:
        pred = self.extract(completion)
        correct = grading_pool.grade(pred, grading.gold_answer(gold), grader or self.grader)
        return measure(completion, pred, correct)

    def score(self, facts: Facts, step: int) -> float:
        if self.no_answer is not None and not facts.has_answer:
            return self.no_answer
        return float(self.formula(facts, step))

    def __call__(self, completion: str, gold: str, step: int = 1, grader: str | None = None) -> float:
        return self.score(self.facts(completion, gold, grader), step)


REWARDS: dict[str, Reward] = {}
for _name, (_f, _aware) in MATH_DAPO_FORMULAS.items():
    REWARDS[_name] = Reward(_name, extract_math_dapo, _f, parallel_aware=_aware)
for _name, (_f, _aware) in GSM8K_FORMULAS.items():
    _extract = extract_gsm8k_last if _name == "accuracy_reward" else extract_gsm8k_first
    REWARDS[f"gsm8k/{_name}"] = Reward(f"gsm8k/{_name}", _extract, _f, parallel_aware=_aware, no_answer=0.0)
REWARDS["boxed_pm1"] = Reward(
    "boxed_pm1", extract_boxed_answer, lambda x, s: _pm1(x), grader="math_verify", parallel_aware=False, no_answer=-1.0
)


def get_reward(name: str) -> Reward:
    if name not in REWARDS:
        raise KeyError(f"unknown reward {name!r}; known: {', '.join(REWARDS)}")
    return REWARDS[name]


def compute_reward(name: str, completion: str, gold: str, step: int = 1, grader: str | None = None) -> float:
    """``REWARDS[name](completion, gold, step)``; ``gold`` may be a GSM8K worked solution."""
    return get_reward(name)(completion, gold, step, grader)


@dataclass(frozen=True)
class RewardSchedule:
    """Which reward is paid at a training step.

    ``parallel_reward=None``: ``base_reward`` at every step. Otherwise the alternating schedule:
    ``base_reward`` on the first ``accuracy_steps`` steps of every ``window``, ``parallel_reward``
    on the rest; with ``switch_step`` set, only ``base_reward`` after that step (the exploration
    scaffold of docs/rl.md: alternating for 200 steps, then accuracy only).
    """

    name: str
    base_reward: str = "accuracy_reward"
    parallel_reward: str | None = None
    window: int = 10
    accuracy_steps: int = 8
    switch_step: int | None = None

    def __post_init__(self):
        for r in (self.base_reward, self.parallel_reward):
            if r is not None:
                get_reward(r)
        if self.parallel_reward is not None:
            alternating_mode(1, self.window, self.accuracy_steps)  # validates the split

    @property
    def __name__(self) -> str:
        return self.name

    def active(self, step: int) -> Reward:
        """The reward paid at ``step`` (steps start at 1)."""
        if self.parallel_reward is None or (self.switch_step is not None and step > self.switch_step):
            return REWARDS[self.base_reward]
        if alternating_mode(step, self.window, self.accuracy_steps) == "accuracy":
            return REWARDS[self.base_reward]
        return REWARDS[self.parallel_reward]

    def mode(self, step: int) -> str:
        return self.active(step).mode(step)

    def reward(self, completion: str, gold: str, step: int = 1, grader: str | None = None) -> float:
        """The reward of one completion at ``step``."""
        return self.active(step)(completion, gold, step, grader)

    __call__ = reward

    def details(
        self,
        completions: Sequence[str],
        golds: Sequence[str],
        step: int = 1,
        grader: str | None = None,
        workers: int | None = None,
        timeout: float = grading_pool.DEFAULT_TIMEOUT,
    ) -> list[dict]:
        """Per completion: ``pred``, ``correct``, ``uses_parallel``, ``format_ok``, ``num_blocks``,
        ``mode``, ``reward``. Answers are graded in parallel processes (:func:`grading_pool.grade_answers`).
        """
        if len(completions) != len(golds):
            raise ValueError(f"{len(completions)} completions for {len(golds)} gold answers")
        active = self.active(step)
        preds = [active.extract(c) for c in completions]
        gold_answers = [grading.gold_answer(g) for g in golds]
        correct = grading_pool.grade_answers(preds, gold_answers, grader or active.grader, workers, timeout)
        mode = active.mode(step)
        rows = []
        for c, p, ok in zip(completions, preds, correct):
            x = measure(c, p, ok)
            rows.append(
                dict(
                    pred=p,
                    correct=x.correct,
                    uses_parallel=x.uses_parallel,
                    format_ok=x.format_ok,
                    num_blocks=x.num_blocks,
                    mode=mode,
                    reward=active.score(x, step),
                )
            )
        return rows


SCHEDULES: dict[str, RewardSchedule] = {
    "accuracy": RewardSchedule("accuracy"),  # S1 and mid-training
    "alternating": RewardSchedule("alternating", parallel_reward="emphase_parallel"),  # S2
    "scaffold": RewardSchedule("scaffold", parallel_reward="emphase_parallel", switch_step=200),
}


def get_schedule(name_or_schedule: str | RewardSchedule, **overrides) -> RewardSchedule:
    """A schedule from :data:`SCHEDULES`, or any single reward of :data:`REWARDS` by name.

    ``overrides`` replace fields, e.g. ``get_schedule("scaffold", switch_step=50)`` or
    ``get_schedule("alternating", window=5, accuracy_steps=4)``.
    """
    if isinstance(name_or_schedule, RewardSchedule):
        base = name_or_schedule
    elif name_or_schedule in SCHEDULES:
        base = SCHEDULES[name_or_schedule]
    elif name_or_schedule in REWARDS:
        base = RewardSchedule(name_or_schedule, base_reward=name_or_schedule)
    else:
        raise KeyError(
            f"unknown reward or schedule {name_or_schedule!r}; schedules: {', '.join(SCHEDULES)}; "
            f"rewards: {', '.join(REWARDS)}"
        )
    return dataclasses.replace(base, **overrides) if overrides else base


__all__ = [
    "Facts",
    "GSM8K_FORMULAS",
    "MATH_DAPO_FORMULAS",
    "REWARDS",
    "Reward",
    "RewardSchedule",
    "SCHEDULES",
    "alternating_mode",
    "compute_reward",
    "efficiency_gain",
    "extract_gsm8k_first",
    "extract_gsm8k_last",
    "extract_math_dapo",
    "get_reward",
    "get_schedule",
    "measure",
    "self_bleu",
    "spans",
]
