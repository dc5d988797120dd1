"""The problem type every loader returns, and the file readers and column detection they share.

Kept apart from :mod:`parallel_r1.data.registry` so that generators (:mod:`.synthetic`) and
format-specific converters (:mod:`.olympiadbench`) build :class:`Problem` rows without importing
the registry that imports them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


def get_field(row: dict, key: str):
    """``row[key]``, following dots into dict columns; ``None`` when absent."""
    value: Any = row
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def cell_text(value) -> str | None:
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


def require_columns(rows: list[dict], where: str, *keys: str) -> None:
    """A clear error naming the file and the column when the first row lacks one of ``keys``."""
    for key in keys:
        if rows and get_field(rows[0], key) is None:
            raise ValueError(f"{where}: no {key!r} column; columns are {', '.join(sorted(rows[0]))}")


def rows_to_problems(
    rows: list[dict], where: str, source: str, problem_key: str | None = None, answer_key: str | None = None
) -> list[Problem]:
    """Detect (or use the given) problem and answer columns; a row without one is an error naming it."""
    if not rows:
        return []
    columns = sorted(rows[0])

    def pick(candidates, given, what):
        if given is not None:
            require_columns(rows, where, given)
            return given
        for c in candidates:
            if get_field(rows[0], c) is not None:
                return c
        raise ValueError(
            f"{where}: no {what} field; columns are {', '.join(columns)} (expected one of {', '.join(candidates)})"
        )

    pkey = pick(PROBLEM_FIELDS, problem_key, "problem")
    akey = pick(ANSWER_FIELDS, answer_key, "answer")
    from ..grading import gold_answer

    out = []
    for i, row in enumerate(rows):
        problem, answer = cell_text(get_field(row, pkey)), cell_text(get_field(row, akey))
        for value, key, what in ((problem, pkey, "problem"), (answer, akey, "answer")):
            if value is None:
                raise ValueError(
                    f"{where} row {i}: no {what} field ({key!r} missing or empty); columns are {', '.join(sorted(row))}"
                )
        rid = row.get("id", row.get("unique_id", i))
        out.append(Problem(id=f"{source}-{rid}", problem=problem, answer=gold_answer(answer), source=source, extra={}))
    return out
