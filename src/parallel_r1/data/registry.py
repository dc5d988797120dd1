"""Problem sets by name: the shipped benchmarks, the training sets, the synthetic task, files, hub ids.

Every loader returns :class:`Problem` rows with the bare problem text (no prompt template) and
the gold answer as the source gives it (``025``, ``27.0``, LaTeX): grading, not loading, decides
equivalence (:mod:`parallel_r1.grading`). GSM8K is the exception: its worked solution is cut to
the ``#### N`` number, so that every answer is a final answer.

Names (``KNOWN``), read from the data folder (``--data-dir``, else ``$PARALLEL_R1_DATA``, else
``../shared/data`` beside the repository):

=================  =============  ====================================================================
name               splits         notes
=================  =============  ====================================================================
gsm8k              train, test    ``question``; answer = the ``#### N`` of ``answer``
math               train, test    MATH (Hendrycks); answer = ``reference``
math500            test
aime24             test           answers zero-padded as given (``025``)
aime25             test
amc23              test           answers as given (``27.0``)
dapo_math_17k      train          problem = ``prompt[0].content``; answer = ``reward_model.ground_truth``
apo_eval           test           the paper's eval file, every row kept (each AIME/AMC problem
                                  sequence 16 times over); the v3 prompt is stripped off the
                                  problem and kept in ``extra["prompt"]``; ``extra["data_source"]``
                                  says which benchmark a row belongs to
apo_aime24         test           the rows of one ``data_source`` of ``apo_eval`` (:data:`APO_SOURCES`),
apo_aime25                        copies included; ``extra["problem_index"]`` / ``extra["copy"]``
apo_amc23                         number the distinct problems and their repeats
math300                           (``APO_MATH300``: 316 integer-answer MATH500 problems, once each)
math8k             train          OctoThinker's RL set rebuilt as SimpleRL describes it: MATH levels
                                  3-5 of train and test, minus MATH500, deduplicated
olympiadbench      test           ``<data>/olympiadbench/test.jsonl`` when present, else the hub
                                  (:mod:`parallel_r1.data.olympiadbench`)
synthetic_easy     train, test    :mod:`parallel_r1.data.synthetic`, generated; the two splits are
synthetic_medium   train, test    disjoint by problem text (5,000 train / 500 test problems;
synthetic_hard     train, test    more with ``limit``)
=================  =============  ====================================================================

``split=None`` means the set's test split (its only split when it has one); training code passes
``split="train"``. A path ending in .jsonl/.json/.parquet/.csv is read with the problem and
answer columns detected (:mod:`parallel_r1.data.problem`; a ``final_answer``
column means the OlympiadBench schema); an ``owner/name`` (or ``owner/name:config``, e.g.
``openai/gsm8k:main``) that is not a file goes to :func:`datasets.load_dataset` with the same
detection.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from . import olympiadbench
from .problem import FILE_SUFFIXES, Problem, cell_text, read_rows, require_columns, rows_to_problems

DATA_ENV = "PARALLEL_R1_DATA"

# name -> {split: relative file}; a set with one split serves it for any requested split=None.
FILES: dict[str, dict[str, str]] = {
    "gsm8k": {"train": "gsm8k/train.jsonl", "test": "gsm8k/test.jsonl"},
    "math": {"train": "math/train.parquet", "test": "math/test.parquet"},
    "math500": {"test": "math500/test.jsonl"},
    "aime24": {"test": "aime24/test.jsonl"},
    "aime25": {"test": "aime25/test.jsonl"},
    "amc23": {"test": "amc23/test.jsonl"},
    "dapo_math_17k": {"train": "dapo_math_17k/train.parquet"},
    "apo_eval": {"test": "apo_eval/test.parquet"},
}
# The benchmarks inside apo_eval, one name per data_source. Not the same problems as aime24 etc.
# in every case (docs/data.md says how they differ), hence names of their own.
APO_SOURCES = {
    "apo_aime24": "APO_AIME24",
    "apo_aime25": "APO_AIME25",
    "apo_amc23": "APO_AMC23",
    "math300": "APO_MATH300",
}
FILES.update({name: FILES["apo_eval"] for name in APO_SOURCES})
MATH8K_LEVELS = ("Level 3", "Level 4", "Level 5")
SYNTHETIC_SIZES = {"train": 5000, "test": 500}
KNOWN: tuple[str, ...] = (*FILES, "math8k", "olympiadbench", "synthetic_easy", "synthetic_medium", "synthetic_hard")
PILOT_FILE = "parallel_gsm8k_pilot/train.parquet"

# Columns each shipped file must have (problem, answer); checked before any row is read.
COLUMNS = {
    "gsm8k": ("question", "answer"), "math": ("question", "reference"), "math500": ("problem", "answer"),
    "aime24": ("problem", "answer"), "aime25": ("problem", "answer"), "amc23": ("problem", "answer"),
    "dapo_math_17k": ("prompt", "reward_model.ground_truth"), "apo_eval": ("prompt", "reward_model.ground_truth", "data_source"),
}  # fmt: skip
COLUMNS.update({name: COLUMNS["apo_eval"] for name in APO_SOURCES})


# ----------------------------------------------------------------------------------- data folder


def default_data_dir() -> Path:
    """``$PARALLEL_R1_DATA``, else ``../shared/data`` beside the repository (or the working directory)."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV])
    repo = Path(__file__).resolve().parents[3]
    if (repo / "pyproject.toml").exists():  # an editable install / a checkout
        return repo.parent / "shared" / "data"
    return Path.cwd().parent / "shared" / "data"


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data folder; a ``FileNotFoundError`` naming the path (and how to set it) when it is missing."""
    path = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    if not path.is_dir():
        how = "the --data-dir given" if data_dir is not None else f"set --data-dir or ${DATA_ENV}"
        raise FileNotFoundError(f"data folder not found: {path} ({how})")
    return path


def _strip_template(prompt: str, template: str) -> str:
    from ..prompts import TEMPLATES

    head = TEMPLATES[template].split("{Problem}")[0]
    return prompt[len(head) :].strip() if prompt.startswith(head) else prompt.strip()


def _limit(problems: list[Problem], limit: int | None) -> list[Problem]:
    return problems[:limit] if limit is not None else problems


# ----------------------------------------------------------------------------------- known sets


def _load_apo(name: str, rows: list[dict]) -> list[Problem]:
    """apo_eval rows (all, or one data_source's), v3 prompt stripped; repeats numbered by first occurrence."""
    wanted = APO_SOURCES.get(name)
    index: dict[tuple[str, str], int] = {}  # (data_source, prompt) -> problem index, as verl groups them
    problems: Counter[str] = Counter()  # distinct problems so far per data_source
    copies: Counter[tuple[str, str]] = Counter()
    out = []
    for i, r in enumerate(rows):
        source = r["data_source"]
        if wanted is not None and source != wanted:
            continue
        prompt = cell_text(r["prompt"]) or ""
        key = (source, prompt)
        if key not in index:
            index[key] = problems[source]
            problems[source] += 1
        k, copy = index[key], copies[key]
        copies[key] += 1
        rid = f"{name}-{i}" if wanted is None else f"{name}-{k}-{copy}"
        extra = {"data_source": source, "prompt": prompt, "problem_index": k, "copy": copy}
        out.append(
            Problem(
                rid, _strip_template(prompt, "parallel_v3"), str(r["reward_model"]["ground_truth"]).strip(), name, extra
            )
        )
    return out


def _load_known(name: str, split: str, path: Path) -> list[Problem]:
    from ..grading import gold_answer

    rows = read_rows(path)
    require_columns(rows, str(path), *COLUMNS[name])
    if name == "gsm8k":
        return [
            Problem(f"gsm8k-{split}-{i}", r["question"].strip(), gold_answer(r["answer"]), "gsm8k")
            for i, r in enumerate(rows)
        ]
    if name == "math":
        return [
            Problem(
                f"math-{split}-{i}",
                r["question"].strip(),
                str(r["reference"]).strip(),
                "math",
                {"level": r.get("level"), "type": r.get("type")},
            )
            for i, r in enumerate(rows)
        ]
    if name == "math500":
        return [
            Problem(
                f"math500-{r.get('unique_id', i)}",
                r["problem"].strip(),
                str(r["answer"]).strip(),
                "math500",
                {"level": r.get("level"), "subject": r.get("subject")},
            )
            for i, r in enumerate(rows)
        ]
    if name in ("aime24", "aime25", "amc23"):
        # amc23 answers are floats (27.0) in the file; str() keeps them as given.
        return [
            Problem(f"{name}-{r.get('id', i)}", r["problem"].strip(), str(r["answer"]).strip(), name)
            for i, r in enumerate(rows)
        ]
    if name == "dapo_math_17k":
        return rows_to_problems(rows, str(path), name, "prompt", "reward_model.ground_truth")
    return _load_apo(name, rows)


def _norm(text: str) -> str:
    return " ".join(text.split())


def _load_math8k(data_dir: Path) -> list[Problem]:
    """MATH levels 3-5 of train then test, minus MATH500 problems (by whitespace-normalised text), first copy kept."""
    held_out = {_norm(p.problem) for p in _load_known("math500", "test", data_dir / FILES["math500"]["test"])}
    seen: set[str] = set()
    out = []
    for split in ("train", "test"):
        for p in _load_known("math", split, data_dir / FILES["math"][split]):
            key = _norm(p.problem)
            if p.extra["level"] in MATH8K_LEVELS and key not in held_out and key not in seen:
                seen.add(key)
                out.append(Problem(f"math8k-{p.id.removeprefix('math-')}", p.problem, p.answer, "math8k", p.extra))
    return out


def _to_problems(rows: list[dict], where: str, source: str) -> list[Problem]:
    """Rows of a file or hub set: the OlympiadBench schema when it has ``final_answer``, else detected columns."""
    if olympiadbench.is_olympiadbench(rows):
        return olympiadbench.to_problems(rows, where, source)
    return rows_to_problems(rows, where, source)


def load_problems(
    name_or_path: str, split: str | None = None, data_dir: str | os.PathLike | None = None, limit: int | None = None
) -> list[Problem]:
    """Problems of a known set, a local file, or a hub dataset (see the module doc).

    Args:
        name_or_path: a name in ``KNOWN``, a file path, or a hub id ``owner/name``.
        split: ``train`` / ``test``; ``None`` = the set's test split (its only one when it has one).
        data_dir: folder of the shipped sets (known names only).
        limit: keep the first ``limit`` problems.
    """
    name = str(name_or_path)
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if name.startswith("synthetic_"):
        difficulty = name.removeprefix("synthetic_")
        from .synthetic import DIFFICULTIES

        if difficulty not in DIFFICULTIES:
            raise KeyError(f"unknown problem set {name!r}; known: {', '.join(KNOWN)}")
        split = split or "test"
        if split not in SYNTHETIC_SIZES:
            raise ValueError(f"{name}: unknown split {split!r}; known: {', '.join(SYNTHETIC_SIZES)}")
        from .synthetic import make_problems

        n = SYNTHETIC_SIZES[split] if limit is None else limit
        return make_problems(n, difficulty, seed=0, split=split)
    if name in FILES:
        splits = FILES[name]
        split = split or ("test" if "test" in splits else next(iter(splits)))
        if split not in splits:
            raise ValueError(f"{name}: no {split!r} split; it has {', '.join(splits)}")
        path = resolve_data_dir(data_dir) / splits[split]
        if not path.exists():
            raise FileNotFoundError(f"{name}: {path} not found in the data folder (set --data-dir)")
        return _limit(_load_known(name, split, path), limit)
    if name == "math8k":
        if split not in (None, "train"):
            raise ValueError(f"{name}: no {split!r} split; it has train")
        return _limit(_load_math8k(resolve_data_dir(data_dir)), limit)
    if name == "olympiadbench":
        if split not in (None, "test"):
            raise ValueError(f"{name}: no {split!r} split; it has test")
        try:
            path = resolve_data_dir(data_dir) / olympiadbench.LOCAL_FILE
        except FileNotFoundError:  # no data folder: the hub still serves the set
            path = None
        if path is not None and path.exists():
            rows, where = read_rows(path), str(path)
        else:
            rows, where = (
                _hub_rows(olympiadbench.HUB_ID, olympiadbench.HUB_SPLIT, limit),
                f"{olympiadbench.HUB_ID} ({olympiadbench.HUB_SPLIT})",
            )
        return _limit(olympiadbench.to_problems(rows, where, name), limit)
    path = Path(name).expanduser()
    if path.suffix.lower() in FILE_SUFFIXES or path.exists():
        return _limit(_to_problems(read_rows(path), str(path), path.stem), limit)
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        split = split or "test"
        return _to_problems(_hub_rows(name, split, limit), f"{name} ({split})", name.partition(":")[0].split("/")[-1])
    raise KeyError(
        f"unknown problem set {name!r}; known: {', '.join(KNOWN)} (or a .jsonl/.json/.parquet/.csv file, or a hub id owner/name)"
    )


def _hub_rows(name: str, split: str, limit: int | None) -> list[dict]:
    """Rows of a hub dataset ``owner/name`` or ``owner/name:config`` through ``datasets.load_dataset`` (downloads)."""
    from datasets import load_dataset

    repo, _, config = name.partition(":")
    return list(load_dataset(repo, config or None, split=split if limit is None else f"{split}[:{limit}]"))


def load_pilot_traces(data_dir: str | os.PathLike | None = None) -> list[dict]:
    """The authors' Parallel-GSM8K pilot: rows ``{prompt, problem, trace, answer, source}``.

    ``prompt`` is the v2 prompt with the problem, ``trace`` the normalised teacher trace
    (``extra_info.answer``), ``answer`` the teacher's own final answer (``reward_model.ground_truth``).
    """
    path = resolve_data_dir(data_dir) / PILOT_FILE
    out = []
    for r in read_rows(path):
        prompt = cell_text(r["prompt"]) or ""
        out.append(
            dict(
                prompt=prompt, problem=_strip_template(prompt, "parallel_v2"), trace=r["extra_info"]["answer"],
                answer=str(r["reward_model"]["ground_truth"]).strip(), source=r.get("data_source") or "parallel_gsm8k_pilot",
            )
        )  # fmt: skip
    return out
