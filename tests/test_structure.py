"""The Unseen attention layout and shared-start positions against brute-force references."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from parallel_r1.structure import (
    TagIds,
    build_unseen_layout,
    causal_layout,
    row_structure,
)

T = TagIds(parallel_open=101, parallel_close=102, path_open=103, path_close=104, summary_open=105, summary_close=106)
WORD, WS = 7, 8  # an ordinary token, a whitespace token


def random_trace(rng: random.Random, max_depth: int = 2, stray: bool = True):
    """A random well-formed trace with ground truth recorded while it is built.

    Returns (ids, positions, ctx) where ctx[t] is the tuple of (block uid, path index) pairs
    enclosing token t — the parse tree, written down by construction rather than parsed.
    """
    ids, pos, ctx = [], [], []
    uid = [0]

    def emit(tok, p, c):
        ids.append(tok)
        pos.append(p)
        ctx.append(c)

    def seq(p: int, depth: int, c: tuple) -> int:
        for _ in range(rng.randint(0, 3)):
            for _ in range(rng.randint(0, 3)):
                emit(WORD, p, c)
                p += 1
            if depth < max_depth and rng.random() < 0.6:
                emit(T.parallel_open, p, c)
                fork, top = p, p
                me = uid[0]
                uid[0] += 1
                for j in range(rng.randint(2, 4)):
                    if stray and j > 0 and rng.random() < 0.2:  # un-normalised whitespace between paths
                        for _ in range(rng.randint(1, 2)):
                            top += 1
                            emit(WS, top, c)
                    pc = c + ((me, j),)
                    emit(T.path_open, fork + 1, pc)
                    end = seq(fork + 2, depth + 1, pc)
                    emit(T.path_close, end, pc)
                    top = max(top, end)
                emit(T.parallel_close, top + 1, c)
                p = top + 2
                emit(WS, p, c)
                emit(T.summary_open, p + 1, c)
                emit(WORD, p + 2, c)
                emit(T.summary_close, p + 3, c)
                p += 4
        return p

    seq(0, 0, ())
    return ids, pos, ctx


def brute_force_mask(ctx: list[tuple]) -> torch.Tensor:
    """May query q see key k? Causal, unless some block holds q and k in different paths.

    Decided block by block from the recorded tree (one membership vector per block), not from
    the depth labels the implementation uses.
    """
    n = len(ctx)
    mask = torch.tril(torch.ones(n, n, dtype=torch.bool))
    for uid in {b for c in ctx for b, _ in c}:
        path = torch.tensor([dict(c).get(uid, -1) for c in ctx])
        inside = path >= 0
        mask &= ~(inside[:, None] & inside[None, :] & (path[:, None] != path[None, :]))
    return mask


def test_worked_example_from_the_paper():
    # prompt 0-2, a=3, <Parallel>=4, path 1 = 5 6 7 8, path 2 = 5 6 7, </Parallel>=9, \n=10, <Summary>=11
    ids = [WORD] * 3 + [WORD, T.parallel_open, T.path_open, WORD, WORD, T.path_close, T.path_open, WORD, T.path_close]
    ids += [T.parallel_close, WS, T.summary_open, WORD, T.summary_close, WORD]
    row = row_structure(ids, T)
    assert row.positions.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 5, 6, 7, 9, 10, 11, 12, 13, 14]
    assert row.malformed == []


def test_thousands_of_random_traces_match_the_brute_force_reference():
    rng = random.Random(0)
    checked_blocks = 0
    for _ in range(2000):
        ids, pos, ctx = random_trace(rng)
        if not ids:
            continue
        lay = build_unseen_layout(torch.tensor([ids]), T)
        assert lay.malformed == [[]]
        assert lay.position_ids[0].tolist() == pos
        assert torch.equal(lay.attention_mask[0, 0], brute_force_mask(ctx))
        checked_blocks += len(lay.blocks[0])
    assert checked_blocks > 2000


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_left_or_right_matches_unpadded_rows(side):
    rng = random.Random(1)
    rows = [random_trace(rng) for _ in range(6)]
    rows = [r for r in rows if r[0]]
    width = max(len(r[0]) for r in rows) + 3
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    am = torch.zeros(len(rows), width, dtype=torch.long)
    spans = []
    for i, (r, _, _) in enumerate(rows):
        a = width - len(r) if side == "left" else 0
        ids[i, a : a + len(r)] = torch.tensor(r)
        am[i, a : a + len(r)] = 1
        spans.append((a, a + len(r)))
    lay = build_unseen_layout(ids, T, am)
    for i, ((_, pos, ctx), (a, b)) in enumerate(zip(rows, spans)):
        m = lay.attention_mask[i, 0]
        assert torch.equal(m[a:b, a:b], brute_force_mask(ctx))
        assert lay.position_ids[i, a:b].tolist() == pos
        assert lay.position_ids[i, :a].eq(0).all() and lay.position_ids[i, b:].eq(0).all()
        assert not m[a:b, :a].any() and not m[a:b, b:].any()  # real queries never see pads
    assert lay.attention_mask.any(-1).all()  # no fully masked query row anywhere (no NaN)


def test_structure_mask_ignores_tags_in_the_prompt():
    prompt = [WORD, T.parallel_open, WORD, T.path_open, WORD, T.path_close, WORD]  # tags quoted in a prompt
    resp = [T.parallel_open, T.path_open, WORD, T.path_close, T.path_open, WORD, T.path_close, T.parallel_close]
    ids = torch.tensor([prompt + resp])
    sm = torch.tensor([[False] * len(prompt) + [True] * len(resp)])
    with_prompt_tags = build_unseen_layout(ids, T)
    only_response = build_unseen_layout(ids, T, structure_mask=sm)
    assert with_prompt_tags.malformed[0]  # the quoted <Parallel> never closes properly
    assert only_response.malformed == [[]]
    rows = only_response.position_ids[0].tolist()
    assert rows[len(prompt) :] == [7, 8, 9, 10, 8, 9, 10, 11]


@pytest.mark.parametrize(
    "ids, why",
    [
        ([WORD, T.parallel_open, T.path_open, WORD, T.path_close, T.path_open, WORD], "never closed"),
        ([WORD, T.parallel_open, T.path_open, WORD, T.path_close, T.parallel_close], "needs >= 2"),
        ([WORD, T.path_close, WORD], "stray </Path>"),
        ([T.parallel_close, WORD], "stray </Parallel>"),
        ([T.parallel_open, T.path_open, WORD, T.parallel_close], "not closed before"),
    ],
)
def test_malformed_spans_are_causal_and_reported(ids, why):
    lay = build_unseen_layout(torch.tensor([ids]), T)
    assert any(why in m for m in lay.malformed[0]), lay.malformed
    mask, pos = causal_layout(torch.tensor([ids]))
    assert torch.equal(lay.attention_mask, mask)
    assert torch.equal(lay.position_ids, pos)


def test_malformed_block_does_not_disturb_a_wellformed_neighbour():
    good = [T.parallel_open, T.path_open, WORD, T.path_close, T.path_open, WORD, WORD, T.path_close, T.parallel_close]
    bad = [T.parallel_open, T.path_open, WORD]
    lay = build_unseen_layout(torch.tensor([good + [WORD] + bad]), T)
    assert len(lay.blocks[0]) == 1 and lay.malformed[0]
    assert lay.position_ids[0].tolist() == [0, 1, 2, 3, 1, 2, 3, 4, 5, 6, 7, 8, 9]


tokens = st.lists(st.sampled_from([WORD, WS, *T.as_tuple()]), max_size=60)


@settings(max_examples=300, deadline=None)
@given(st.lists(tokens, min_size=1, max_size=3), st.sampled_from(["left", "right"]))
def test_tag_soup_never_crashes_and_keeps_invariants(rows, side):
    width = max(len(r) for r in rows) + 1
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    am = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        a = width - len(r) if side == "left" else 0
        ids[i, a : a + len(r)] = torch.tensor(r, dtype=torch.long)
        am[i, a : a + len(r)] = 1
    lay = build_unseen_layout(ids, T, am)
    m = lay.attention_mask[:, 0]
    causal = torch.tril(torch.ones(width, width, dtype=torch.bool))
    assert not (m & ~causal).any()  # never sees the future
    assert m.diagonal(dim1=-2, dim2=-1).all()  # every token sees itself: no NaN row
    assert (lay.position_ids >= 0).all()
    for i, r in enumerate(rows):
        reference = build_unseen_layout(torch.tensor([r], dtype=torch.long), T)
        a = width - len(r) if side == "left" else 0
        assert torch.equal(m[i, a : a + len(r), a : a + len(r)], reference.attention_mask[0, 0])
        assert lay.position_ids[i, a : a + len(r)].tolist() == reference.position_ids[0].tolist()


def test_model_under_the_layout_equals_each_path_alone(tiny_model, tiny_tokenizer):
    """A path's logits under the layout equal those of the prefix plus that path alone (1e-5, float32)."""
    tags = TagIds.from_tokenizer(tiny_tokenizer)
    enc = lambda s: tiny_tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    rng = random.Random(3)
    ids = enc("Problem: 12 + 30? Let us see.")
    for b in range(3):  # three blocks with 2, 3 and 4 paths
        ids += enc(f" step {b}") + [tags.parallel_open]
        for _ in range(2 + b):
            ids += (
                [tags.path_open]
                + enc(" " + " ".join(str(rng.randint(0, 99)) for _ in range(rng.randint(1, 6))))
                + [tags.path_close]
            )
        ids += [tags.parallel_close] + enc("\n") + [tags.summary_open] + enc(" ok") + [tags.summary_close]
    ids += enc("\nFinal Answer: 42")
    full = torch.tensor([ids])
    lay = build_unseen_layout(full, tags)
    assert lay.malformed == [[]] and len(lay.blocks[0]) == 3
    with torch.no_grad():
        logits = tiny_model(input_ids=full, attention_mask=lay.attention_mask, position_ids=lay.position_ids).logits[0]
        assert not torch.isnan(logits).any()
        for blk in lay.blocks[0]:
            for s, e in blk.paths:
                seq = torch.tensor([ids[: blk.open + 1] + ids[s : e + 1]])
                alone = build_unseen_layout(seq, tags)
                ref = tiny_model(
                    input_ids=seq, attention_mask=alone.attention_mask, position_ids=alone.position_ids
                ).logits[0, -(e + 1 - s) :]
                assert torch.allclose(logits[s : e + 1], ref, atol=1e-5), (logits[s : e + 1] - ref).abs().max()
        # and the first block's paths against a plain causal run with the shared-start positions
        blk = lay.blocks[0][0]
        for s, e in blk.paths:
            seq = torch.tensor([ids[: blk.open + 1] + ids[s : e + 1]])
            plain = tiny_model(input_ids=seq).logits[0, -(e + 1 - s) :]
            assert torch.allclose(logits[s : e + 1], plain, atol=1e-5)


def test_tag_ids_error_names_the_missing_tags():
    from parallel_r1.models import build_tiny_tokenizer

    with pytest.raises(ValueError, match="<Parallel>"):
        TagIds.from_tokenizer(build_tiny_tokenizer())
