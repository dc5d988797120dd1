"""The grammar of parallel thinking: parsing, validation, normalisation, positions."""

from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parallel_r1.format import (
    TAGS,
    analyze,
    block_positions,
    check_format,
    normalize,
    parse,
    strip_tags,
)

CANON = (
    "Let x be 3.<Parallel><Path>x+1=4</Path><Path>1+x=4</Path></Parallel>\n<Summary>Both give 4.</Summary>"
    "\nFinal Answer: 4"
)


def test_canonical_trace_parses_into_trunk_and_block():
    p = parse(CANON)
    assert p.errors == []
    assert p.format_ok and p.uses_parallel
    assert p.num_blocks == 1 and p.paths_per_block == [2]
    b = p.blocks[0]
    assert b.paths == ["x+1=4", "1+x=4"]
    assert b.summary == "Both give 4."
    assert CANON[b.start :].startswith("<Parallel>") and CANON[: b.end].endswith("</Summary>")
    assert p.trunk == ["Let x be 3.", "\nFinal Answer: 4"]


def test_many_paths_and_blocks():
    blk = "<Parallel>" + "".join(f"<Path>p{i}</Path>" for i in range(5)) + "</Parallel>\n<Summary>s</Summary>"
    text = "a" + blk + "b" + blk + "c" + blk + "Final Answer: 1"
    p = parse(text)
    assert p.errors == []
    assert p.paths_per_block == [5, 5, 5]
    assert p.trunk == ["a", "b", "c", "Final Answer: 1"]


def test_no_tags_is_valid_sequential_reasoning():
    p = parse("just thinking\nFinal Answer: 2")
    assert p.format_ok and not p.uses_parallel and p.num_blocks == 0


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("<Parallel><Path>a</Path></Parallel>\n<Summary>s</Summary>", "needs >= 2"),
        ("<Parallel><Path>a</Path><Path>b</Path></Parallel> no summary", "<Summary> missing"),
        ("<Parallel><Path>a</Path><Path>b</Path></Parallel><Parallel>", "expected <Summary>"),
        ("<Parallel><Path>a</Path><Path>b", "never closed"),
        ("a</Path>", "no open <Path>"),
        ("</Parallel>", "no open <Parallel>"),
        ("<Summary>s</Summary>", "not right after a </Parallel>"),
        ("<Path>a</Path>", "not directly inside <Parallel>"),
        ("<Parallel><Path>a</Parallel></Path>", "no open <Parallel>"),
    ],
)
def test_invalid_formats_are_reported(text, fragment):
    errors = check_format(text)
    assert errors, text
    assert any(fragment in e for e in errors), errors


def test_nested_block_inside_a_path_is_tolerated_like_the_paper():
    inner = "<Parallel><Path>i1</Path><Path>i2</Path></Parallel>\n<Summary>si</Summary>"
    text = f"<Parallel><Path>a{inner}</Path><Path>b</Path></Parallel>\n<Summary>s</Summary>"
    p = parse(text)
    assert p.errors == []
    assert [b.depth for b in p.blocks] == [0, 1]
    assert p.num_blocks == 2


def test_unclosed_summary_paper_rule_vs_strict():
    text = "<Parallel><Path>a</Path><Path>b</Path></Parallel>\n<Summary>unfinished"
    assert check_format(text) == []  # the paper's checker never looks at </Summary>
    assert any("never closed" in e for e in check_format(text, strict=True))
    assert parse(text).blocks[0].summary == "unfinished"


def test_all_pilot_traces_pass_the_paper_checker(data_dir):
    df = pd.read_parquet(data_dir / "parallel_gsm8k_pilot" / "train.parquet")
    traces = [r["answer"] for r in df["extra_info"]]
    assert len(traces) == 341
    assert all(check_format(t) == [] for t in traces)
    blocks = [parse(t).num_blocks for t in traces]
    # the pilot set (docs/data.md): blocks per response 1:261, 2:59, 3:12, 4:6, 0:3
    assert {n: blocks.count(n) for n in set(blocks)} == {0: 3, 1: 261, 2: 59, 3: 12, 4: 6}
    paths = [n for t in traces for n in parse(t).paths_per_block]
    assert {n: paths.count(n) for n in set(paths)} == {2: 427, 3: 11, 4: 1}


def test_normalize_reproduces_the_pilot_normalisation(data_dir):
    df = pd.read_parquet(data_dir / "parallel_gsm8k_pilot" / "train.parquet")
    pairs = list(zip(df["output"], (e["answer"] for e in df["extra_info"])))
    # the pilot set (docs/data.md): normalising the raw teacher text gives the stored trace for 248/341 rows
    assert sum(normalize(raw) == ans for raw, ans in pairs) == 248
    # 45 more differ only in whitespace before <Summary> (the pilot kept "\n\n"; canonical is "\n");
    # the other 48 had their text edited upstream (e.g. "$4" -> "4"), which no normaliser should do
    assert sum(normalize(raw) == normalize(ans) for raw, ans in pairs) == 293


def test_normalize_is_idempotent_and_canonical():
    messy = "a<Parallel> \n <Path>x</Path>\n\n<Path>y</Path>  </Parallel>  \n\n<Summary>s</Summary>"
    once = normalize(messy)
    assert once == "a<Parallel><Path>x</Path><Path>y</Path></Parallel>\n<Summary>s</Summary>"
    assert normalize(once) == once


def test_positions_in_characters_and_tokens():
    text = "abcd<Parallel><Path>x</Path><Path>y</Path></Parallel>\n<Summary>s</Summary>"
    assert block_positions(text) == [4 / len(text)]
    ids = [1, 2, 9, 3, 9]
    assert block_positions(text, ids, parallel_token_id=9) == [2 / 5, 4 / 5]
    with pytest.raises(ValueError):
        block_positions(text, ids)
    assert analyze(text).positions == [4 / len(text)]


def test_strip_tags():
    assert strip_tags(CANON) == "Let x be 3.x+1=41+x=4\nBoth give 4.\nFinal Answer: 4"


soup = st.lists(st.one_of(st.sampled_from(TAGS), st.text(alphabet="ab \n<>/", max_size=4)), max_size=40).map("".join)


@settings(max_examples=400, deadline=None)
@given(soup)
def test_tag_soup_never_crashes_and_is_consistent(text):
    p = parse(text)
    assert p.format_ok == (p.errors == [])
    assert p.uses_parallel == ("<Parallel>" in text)
    assert all(len(b.paths) >= 0 for b in p.blocks)
    # the strict checker only ever adds errors
    assert set(p.errors) <= set(parse(text, strict=True).errors)
    assert normalize(normalize(text)) == normalize(text)
    # trunk + blocks cover the text: trunk pieces appear in order
    cursor = 0
    for piece in p.trunk:
        cursor = text.index(piece, cursor) + len(piece)


def test_adversarial_inputs_get_a_result():
    big = ("<Parallel><Path>" + "x" * 1000 + "</Path>") * 500 + "y" * 1_000_000
    p = parse(big)
    assert p.errors and p.uses_parallel  # unclosed blocks
    deep = "<Parallel><Path>" * 2000 + "</Path></Parallel>" * 2000
    assert parse(deep).errors
