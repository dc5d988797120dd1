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
apo_eval           test           the paper's eval file, every row kept (each AIME/AMC problem 16
                                  times, consecutive); the v3 prompt is stripped off the problem
                                  and kept in ``extra["prompt"]``; ``extra["data_source"]`` says
                                  which benchmark a row belongs to
synthetic_easy     train, test    :mod:`parallel_r1.data.synthetic`, generated; the two splits are
synthetic_hard     train, test    disjoint by problem text (5,000 train / 500 test problems)
=================  =============  ====================================================================

``split=None`` means the set's test split (its only split when it has one); training code passes
``split="train"``. A path ending in .jsonl/.json/.parquet/.csv is read with the problem and
answer columns detected (:data:`PROBLEM_FIELDS`, :data:`ANSWER_FIELDS`); an ``owner/name`` (or
``owner/name:config``, e.g. ``openai/gsm8k:main``) that is not a file goes to
:func:`datasets.load_dataset` with the same detection.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
SYNTHETIC_SIZES = {"train": 5000, "test": 500}
KNOWN: tuple[str, ...] = (*FILES, "synthetic_easy", "synthetic_hard")
PILOT_FILE = "parallel_gsm8k_pilot/train.parquet"

# Column detection for files and hub sets, first match wins; dotted names reach into dict columns.
PROBLEM_FIELDS = ("question", "problem", "prompt")
ANSWER_FIELDS = ("answer", "reference", "ground_truth", "reward_model.ground_truth")
FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


@dataclass
class Problem:
    id: str  # unique within a loaded set: "<set>-<split>-<row>" or the source's own id
    problem: str  # bare problem text, no prompt template
    answer: str  # gold answer as the source writes it (GSM8K: the #### number)
    source: str  # set name or file stem
    extra: dict[str, Any] = field(default_factory=dict)  # source-specific fields (level, data_source, ...)


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


# ----------------------------------------------------------------------------------- readers


def read_rows(path: str | os.PathLike) -> list[dict]:
    """All rows of a .jsonl/.json/.parquet/.csv file as dicts."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        from ..io import read_jsonl

        return list(read_jsonl(path))
    if suffix == ".json":
        import json

        obj = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(obj, dict):  # {"data": [...]} or {column: [values]}
            lists = [v for v in obj.values() if isinstance(v, list)]
            if len(lists) == 1 and all(isinstance(r, dict) for r in lists[0]):
                obj = lists[0]
            elif lists and all(isinstance(v, list) for v in obj.values()):
                obj = [dict(zip(obj, vals)) for vals in zip(*obj.values())]
        if not isinstance(obj, list) or not all(isinstance(r, dict) for r in obj):
            raise ValueError(f"{path}: expected a list of objects (one per problem)")
        return obj
    if suffix in (".parquet", ".csv"):
        import pandas as pd

        df = pd.read_parquet(path) if suffix == ".parquet" else pd.read_csv(path, dtype=str, keep_default_na=False)
        return df.to_dict("records")
    raise ValueError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(FILE_SUFFIXES)}")


def _get(row: dict, key: str):
    """``row[key]``, following dots into dict columns; ``None`` when absent."""
    value: Any = row
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _text(value) -> str | None:
    """A problem/answer cell as text: chat messages give their first content; numbers their str."""
    if value is None:
        return None
    if hasattr(value, "tolist"):  # numpy arrays of chat messages from parquet
        value = value.tolist()
    if isinstance(value, list):
        value = value[0].get("content") if value and isinstance(value[0], dict) else None
    if isinstance(value, float) and value != value:  # NaN from pandas
        return None
    text = str(value).strip() if value is not None else ""
    return text or None


def rows_to_problems(rows: list[dict], where: str, source: str, problem_key: str | None = None, answer_key: str | None = None) -> list[Problem]:
    """Detect (or use the given) problem and answer columns; a row without one is an error naming it."""
    if not rows:
        return []
    columns = sorted(rows[0])

    def pick(candidates, given, what):
        if given is not None:
            return given
        for c in candidates:
            if _get(rows[0], c) is not None:
                return c
        raise ValueError(f"{where}: no {what} field; columns are {', '.join(columns)} (expected one of {', '.join(candidates)})")

    pkey = pick(PROBLEM_FIELDS, problem_key, "problem")
    akey = pick(ANSWER_FIELDS, answer_key, "answer")
    from ..grading import gold_answer

    out = []
    for i, row in enumerate(rows):
        problem, answer = _text(_get(row, pkey)), _text(_get(row, akey))
        for value, key, what in ((problem, pkey, "problem"), (answer, akey, "answer")):
            if value is None:
                raise ValueError(f"{where} row {i}: no {what} field ({key!r} missing or empty); columns are {', '.join(sorted(row))}")
        rid = row.get("id", row.get("unique_id", i))
        out.append(Problem(id=f"{source}-{rid}", problem=problem, answer=gold_answer(answer), source=source, extra={}))
    return out


def _strip_template(prompt: str, template: str) -> str:
    from ..prompts import TEMPLATES

    head = TEMPLATES[template].split("{Problem}")[0]
    return prompt[len(head) :].strip() if prompt.startswith(head) else prompt.strip()


# ----------------------------------------------------------------------------------- known sets


def _load_known(name: str, split: str, path: Path) -> list[Problem]:
    from ..grading import gold_answer

    rows = read_rows(path)
    where = str(path)
    if name == "gsm8k":
        return [Problem(f"gsm8k-{split}-{i}", r["question"].strip(), gold_answer(r["answer"]), "gsm8k") for i, r in enumerate(rows)]
    if name == "math":
        return [
            Problem(f"math-{split}-{i}", r["question"].strip(), str(r["reference"]).strip(), "math", {"level": r.get("level"), "type": r.get("type")})
            for i, r in enumerate(rows)
        ]
    if name == "math500":
        return [
            Problem(f"math500-{r.get('unique_id', i)}", r["problem"].strip(), str(r["answer"]).strip(), "math500", {"level": r.get("level"), "subject": r.get("subject")})
            for i, r in enumerate(rows)
        ]
    if name in ("aime24", "aime25", "amc23"):
        # amc23 answers are floats (27.0) in the file; str() keeps them as given.
        return [Problem(f"{name}-{r.get('id', i)}", r["problem"].strip(), str(r["answer"]).strip(), name) for i, r in enumerate(rows)]
    if name == "dapo_math_17k":
        return rows_to_problems(rows, where, name, "prompt", "reward_model.ground_truth")
    if name == "apo_eval":
        out = []
        for i, r in enumerate(rows):
            prompt = _text(r["prompt"]) or ""
            out.append(
                Problem(
                    f"apo_eval-{i}", _strip_template(prompt, "parallel_v3"), str(r["reward_model"]["ground_truth"]).strip(), "apo_eval",
                    {"data_source": r["data_source"], "prompt": prompt},
                )
            )  # fmt: skip
        return out
    raise KeyError(name)


def load_problems(name_or_path: str, split: str | None = None, data_dir: str | os.PathLike | None = None, limit: int | None = None) -> list[Problem]:
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
        if difficulty not in ("easy", "hard"):
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
        problems = _load_known(name, split, path)
        return problems[:limit] if limit is not None else problems
    path = Path(name).expanduser()
    if path.suffix.lower() in FILE_SUFFIXES or path.exists():
        problems = rows_to_problems(read_rows(path), str(path), path.stem)
        return problems[:limit] if limit is not None else problems
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        return _load_hub(name, split or "test", limit)
    raise KeyError(f"unknown problem set {name!r}; known: {', '.join(KNOWN)} (or a .jsonl/.json/.parquet/.csv file, or a hub id owner/name)")


def _load_hub(name: str, split: str, limit: int | None) -> list[Problem]:
    """A hub dataset ``owner/name`` or ``owner/name:config`` through ``datasets.load_dataset`` (downloads)."""
    from datasets import load_dataset

    repo, _, config = name.partition(":")
    ds = load_dataset(repo, config or None, split=split if limit is None else f"{split}[:{limit}]")
    return rows_to_problems(list(ds), f"{name} ({split})", repo.split("/")[-1])


def load_pilot_traces(data_dir: str | os.PathLike | None = None) -> list[dict]:
    """The authors' Parallel-GSM8K pilot: rows ``{prompt, problem, trace, answer, source}``.

    ``prompt`` is the v2 prompt with the problem, ``trace`` the normalised teacher trace
    (``extra_info.answer``), ``answer`` the teacher's own final answer (``reward_model.ground_truth``).
    """
    path = resolve_data_dir(data_dir) / PILOT_FILE
    out = []
    for r in read_rows(path):
        prompt = _text(r["prompt"]) or ""
        out.append(
            dict(
                prompt=prompt, problem=_strip_template(prompt, "parallel_v2"), trace=r["extra_info"]["answer"],
                answer=str(r["reward_model"]["ground_truth"]).strip(), source=r.get("data_source") or "parallel_gsm8k_pilot",
            )
        )  # fmt: skip
    return out
