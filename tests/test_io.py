"""Durable files: append-only jsonl survives a torn write; readers name the bad line."""

from __future__ import annotations

import json

import pytest

from parallel_r1.io import JsonlAppender, atomic_write_json, read_jsonl, repair_torn_tail


def test_appender_repairs_a_torn_last_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    with JsonlAppender(path) as out:
        out.write({"i": 0})
        out.write({"i": 1})
    with open(path, "a") as f:
        f.write('{"i": 2, "tor')  # the process died mid-write
    with JsonlAppender(path) as out:
        out.write({"i": 3})
    assert [r["i"] for r in read_jsonl(path)] == [0, 1, 3]


def test_read_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        list(read_jsonl(path))
    path.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: expected a JSON object"):
        list(read_jsonl(path))
    with pytest.raises(FileNotFoundError):
        list(read_jsonl(tmp_path / "missing.jsonl"))


def test_read_jsonl_can_skip_only_a_torn_tail(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"a": 1}\n{"a": ')
    assert list(read_jsonl(path, skip_bad=True)) == [{"a": 1}]
    repair_torn_tail(path)
    assert path.read_text() == '{"a": 1}\n'


def test_atomic_write_leaves_no_temp_files(tmp_path):
    atomic_write_json(tmp_path / "r.json", {"x": 1})
    atomic_write_json(tmp_path / "r.json", {"x": 2})
    assert json.loads((tmp_path / "r.json").read_text()) == {"x": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_atomic_write_gives_the_umask_mode(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "r.json", {"x": 1})
        (tmp_path / "plain.json").write_text("{}")
    finally:
        os.umask(old)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == (tmp_path / "plain.json").stat().st_mode & 0o777 == 0o644
