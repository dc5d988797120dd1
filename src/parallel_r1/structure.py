"""Token-level structure of the Unseen variant (README "What parallel thinking looks like", docs/INTERFACES.md).

From token ids this module builds, for a batch of (left- or right-) padded sequences:

* the **attention layout**: a boolean ``[B, 1, L, L]`` tensor, True where query i may attend
  to key j. It is causal, except that a token of path P_i of a block may not attend to any
  token of a sibling path P_j (i != j) of the same block; a path's span runs from its
  ``<Path>`` through its ``</Path>`` inclusive. Everything after ``</Parallel>`` sees all
  paths. Pad keys are hidden from real queries; a pad query sees only itself, so no row is
  fully masked and no NaN appears.
* the **shared-start position ids** ``[B, L]``: with p = pos(``<Parallel>``), every path
  starts at p+1; ``</Parallel>`` gets (largest position inside the block) + 1; later tokens
  continue from there. Pads get 0.

Both follow the parse tree, so any number of paths per block, any number of blocks, and
blocks nested inside paths work. Choices the paper leaves open (tested):

* A block is laid out only when it closes properly (``</Parallel>`` after at least two
  closed paths, no stray path tag inside). A malformed block (unclosed tags, stray closers,
  a single path) is laid out causally with sequential positions and reported in
  ``UnseenLayout.malformed``; it never raises.
* Tokens of a block that sit outside every path (whitespace between ``</Path>`` and
  ``<Path>`` when a trace was not normalised) are visible to everything after them and see
  everything before them; their positions continue from the largest position used so far in
  the block. Paths still start at (position of the token before the first ``<Path>``) + 1,
  which is pos(``<Parallel>``) + 1 for normalised text. Normalise traces
  (:func:`parallel_r1.format.normalize`) to get exactly the paper's layout.
* Summary tags do not change the layout (the summary is ordinary text after the block).
* ``structure_mask`` restricts which tokens count as tags, so the literal tags inside a
  prompt (the v3 prompt names them) can be left out of the structure.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np
import torch

from .format import PARALLEL_CLOSE, PARALLEL_OPEN, PATH_CLOSE, PATH_OPEN, SUMMARY_CLOSE, SUMMARY_OPEN


@dataclass(frozen=True)
class TagIds:
    """Token ids of the six tags in one tokenizer."""

    parallel_open: int
    parallel_close: int
    path_open: int
    path_close: int
    summary_open: int
    summary_close: int

    @classmethod
    def from_tokenizer(cls, tokenizer) -> TagIds:
        """Look the tags up; raise a clear error when one is not a single token.

        Run :func:`parallel_r1.models.add_tag_tokens` on a tokenizer that lacks them.
        """
        ids, missing = [], []
        for tag in (PARALLEL_OPEN, PARALLEL_CLOSE, PATH_OPEN, PATH_CLOSE, SUMMARY_OPEN, SUMMARY_CLOSE):
            enc = tokenizer.encode(tag, add_special_tokens=False)
            if len(enc) != 1:
                missing.append(tag)
            else:
                ids.append(enc[0])
        if missing:
            raise ValueError(
                f"the tokenizer has no single token for {', '.join(missing)}; add the tags first "
                "(`parallel-r1 prepare-model` or parallel_r1.models.add_tag_tokens)"
            )
        return cls(*ids)

    def as_tuple(self) -> tuple[int, ...]:
        return (
            self.parallel_open,
            self.parallel_close,
            self.path_open,
            self.path_close,
            self.summary_open,
            self.summary_close,
        )


@dataclass
class BlockSpan:
    """A well-formed block in token indices (of an unpadded row): all ends inclusive."""

    open: int  # index of <Parallel>
    close: int  # index of </Parallel>
    paths: list[tuple[int, int]]  # (index of <Path>, index of </Path>) per path
    depth: int = 0


@dataclass
class RowStructure:
    """The structure of one unpadded row."""

    blocks: list[BlockSpan]
    positions: np.ndarray  # int64 [n]
    malformed: list[str] = field(default_factory=list)


def find_blocks(ids: np.ndarray, tags: TagIds, is_tag: np.ndarray | None = None) -> tuple[list[BlockSpan], list[str]]:
    """Match tags with a stack; return the well-formed blocks and messages about the rest.

    Args:
        ids: int array ``[n]``, one unpadded row.
        tags: the tag ids.
        is_tag: optional bool array ``[n]``; tokens where it is False are never tags.
    """
    tag_set = np.array([tags.parallel_open, tags.parallel_close, tags.path_open, tags.path_close])
    where = np.nonzero(np.isin(ids, tag_set) & (True if is_tag is None else is_tag))[0]
    stack: list[dict] = []
    blocks: list[BlockSpan] = []
    malformed: list[str] = []

    def fail(frame: dict, why: str) -> None:
        if frame["ok"]:
            malformed.append(f"block at token {frame['open']}: {why}")
        frame["ok"] = False

    def innermost_block() -> dict | None:
        return next((f for f in reversed(stack) if f["kind"] == "P"), None)

    for i in where.tolist():
        t = int(ids[i])
        if t == tags.parallel_open:
            stack.append(dict(kind="P", open=i, paths=[], ok=True))
        elif t == tags.path_open:
            if stack and stack[-1]["kind"] == "P":
                stack.append(dict(kind="A", open=i, ok=True))
            else:
                owner = innermost_block()
                if owner is not None:
                    fail(owner, f"<Path> at token {i} is not directly inside it")
                else:
                    malformed.append(f"<Path> at token {i} outside any block")
                stack.append(dict(kind="A", open=i, ok=False))
        elif t == tags.path_close:
            if stack and stack[-1]["kind"] == "A":
                frame = stack.pop()
                if frame["ok"] and stack and stack[-1]["kind"] == "P":
                    stack[-1]["paths"].append((frame["open"], i))
            else:
                owner = innermost_block()
                if owner is not None:
                    fail(owner, f"stray </Path> at token {i}")
                else:
                    malformed.append(f"stray </Path> at token {i}")
        else:  # </Parallel>
            if not any(f["kind"] == "P" for f in stack):
                malformed.append(f"stray </Parallel> at token {i}")
                continue
            while stack[-1]["kind"] != "P":  # close unclosed paths: the block is malformed
                frame = stack.pop()
                fail(innermost_block(), f"<Path> at token {frame['open']} not closed before </Parallel>")
            frame = stack.pop()
            if frame["ok"] and len(frame["paths"]) < 2:
                fail(frame, f"{len(frame['paths'])} closed path(s), needs >= 2")
            if frame["ok"]:
                blocks.append(BlockSpan(open=frame["open"], close=i, paths=frame["paths"]))
    for frame in stack:
        if frame["kind"] == "P":
            fail(frame, "never closed")
        elif not any(f["kind"] == "P" for f in stack):
            malformed.append(f"<Path> at token {frame['open']} never closed")
    blocks.sort(key=lambda b: b.open)
    for b in blocks:  # depth = number of enclosing well-formed paths
        b.depth = sum(1 for o in blocks for s, e in o.paths if s < b.open < e)
    return blocks, malformed


def shared_start_positions(n: int, blocks: list[BlockSpan]) -> np.ndarray:
    """Shared-start position ids ``[n]`` of one unpadded row of ``n`` tokens (rules in the module doc)."""
    pos = np.zeros(n, dtype=np.int64)
    opens = [b.open for b in blocks]

    def lay(a: int, b: int, p: int) -> int:
        """Fill pos[a:b] starting at position p; return the position after the last one."""
        i = a
        k = bisect.bisect_left(opens, a)
        while k < len(blocks) and blocks[k].open < b:
            blk = blocks[k]
            k += 1
            if blk.open < i:  # nested in the block just laid out; handled by its path
                continue
            s1 = blk.paths[0][0]
            pos[i:s1] = np.arange(p, p + s1 - i)
            p += s1 - i
            fork = p - 1
            top = fork
            prev = s1
            for s, e in blk.paths:
                pos[prev:s] = np.arange(top + 1, top + 1 + s - prev)  # stray tokens between paths
                top += s - prev
                top = max(top, lay(s, e + 1, fork + 1) - 1)
                prev = e + 1
            pos[prev : blk.close + 1] = np.arange(top + 1, top + 2 + blk.close - prev)
            p = top + 2 + blk.close - prev
            i = blk.close + 1
        pos[i:b] = np.arange(p, p + b - i)
        return p + b - i

    lay(0, n, 0)
    return pos


def row_structure(ids, tags: TagIds, is_tag=None) -> RowStructure:
    """Blocks, shared-start positions and problems of one unpadded row."""
    ids = np.asarray(ids, dtype=np.int64)
    blocks, malformed = find_blocks(ids, tags, None if is_tag is None else np.asarray(is_tag, dtype=bool))
    return RowStructure(blocks=blocks, positions=shared_start_positions(len(ids), blocks), malformed=malformed)


def path_labels(n: int, blocks: list[BlockSpan]) -> tuple[np.ndarray, np.ndarray]:
    """Per depth d and token t: the id of the block whose path holds t at depth d, and that path's index.

    Returns ``block_of`` and ``path_of``, int arrays ``[D, n]`` (D = max depth + 1, at least 1),
    -1 where a token is in no path at that depth.
    """
    depth = 1 + max((b.depth for b in blocks), default=0)
    block_of = np.full((depth, n), -1, dtype=np.int64)
    path_of = np.full((depth, n), -1, dtype=np.int64)
    for bid, b in enumerate(blocks):
        for j, (s, e) in enumerate(b.paths):
            block_of[b.depth, s : e + 1] = bid
            path_of[b.depth, s : e + 1] = j
    return block_of, path_of


def isolation_mask(block_of: torch.Tensor, path_of: torch.Tensor) -> torch.Tensor:
    """Pairs (q, k) in sibling paths of one block, vectorised over depth.

    Args:
        block_of, path_of: long ``[D, n]`` from :func:`path_labels`.
    Returns:
        bool ``[n, n]``: True where query q and key k lie in different paths of the same block.
    """
    same_block = (block_of[:, :, None] == block_of[:, None, :]) & (block_of[:, :, None] >= 0)
    other_path = path_of[:, :, None] != path_of[:, None, :]
    return (same_block & other_path).any(dim=0)


@dataclass
class UnseenLayout:
    """What a model forward needs for the Unseen variant, plus what was malformed."""

    attention_mask: torch.Tensor  # bool [B, 1, L, L], True = may attend
    position_ids: torch.Tensor  # long [B, L]
    malformed: list[list[str]]  # per row; empty lists when every block was well-formed
    blocks: list[list[BlockSpan]]  # per row, in indices of the padded row


def build_unseen_layout(
    input_ids: torch.Tensor,
    tags: TagIds,
    attention_mask: torch.Tensor | None = None,
    structure_mask: torch.Tensor | None = None,
) -> UnseenLayout:
    """Attention layout and shared-start positions for a padded batch.

    Args:
        input_ids: long ``[B, L]``.
        tags: the tag ids of the tokenizer.
        attention_mask: ``[B, L]``, 1 for real tokens, 0 for pads (left or right padding, or
            both); None means no padding. Real tokens of a row must be contiguous.
        structure_mask: optional bool ``[B, L]``; only tokens where it is True can act as tags
            (pass the response mask to ignore tags written in the prompt).
    Returns:
        :class:`UnseenLayout` with ``attention_mask`` bool ``[B, 1, L, L]`` and
        ``position_ids`` long ``[B, L]`` on the device of ``input_ids``.
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [B, L], got shape {tuple(input_ids.shape)}")
    bsz, length = input_ids.shape
    device = input_ids.device
    real = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    ids_np = input_ids.detach().cpu().numpy()
    real_np = real.detach().cpu().numpy()
    struct_np = None if structure_mask is None else structure_mask.detach().cpu().numpy().astype(bool)

    mask = padded_causal_mask(real)
    positions = torch.zeros(bsz, length, dtype=torch.long)
    malformed: list[list[str]] = []
    all_blocks: list[list[BlockSpan]] = []
    for r in range(bsz):
        idx = np.nonzero(real_np[r])[0]
        if len(idx) == 0:
            malformed.append([])
            all_blocks.append([])
            continue
        a, b = int(idx[0]), int(idx[-1]) + 1
        if len(idx) != b - a:
            raise ValueError(f"row {r}: real tokens are not contiguous in attention_mask")
        row = row_structure(ids_np[r, a:b], tags, None if struct_np is None else struct_np[r, a:b])
        positions[r, a:b] = torch.from_numpy(row.positions)
        if row.blocks:
            block_of, path_of = path_labels(b - a, row.blocks)
            iso = isolation_mask(torch.from_numpy(block_of).to(device), torch.from_numpy(path_of).to(device))
            mask[r, a:b, a:b] &= ~iso
        malformed.append(row.malformed)
        all_blocks.append(
            [BlockSpan(x.open + a, x.close + a, [(s + a, e + a) for s, e in x.paths], x.depth) for x in row.blocks]
        )
    return UnseenLayout(
        attention_mask=mask[:, None],
        position_ids=positions.to(device),
        malformed=malformed,
        blocks=all_blocks,
    )


def causal_layout(
    input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Seen variant's equivalent: causal bool mask ``[B,1,L,L]`` and sequential positions ``[B,L]``.

    Same padding conventions as :func:`build_unseen_layout`, so the two are interchangeable.
    """
    real = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    positions = (real.long().cumsum(-1) - 1).clamp(min=0) * real.long()
    return padded_causal_mask(real)[:, None], positions


def padded_causal_mask(real: torch.Tensor) -> torch.Tensor:
    """Causal bool mask ``[B, L, L]`` (query, key) of a padded batch; ``real``: bool ``[B, L]``, False at pads.

    Pads are hidden as keys from every other query; a pad query sees only itself, so no softmax
    row is empty (no NaN).
    """
    length = real.shape[1]
    eye = torch.eye(length, dtype=torch.bool, device=real.device)
    causal = torch.ones(length, length, dtype=torch.bool, device=real.device).tril()
    return (causal[None] & real[:, None, :]) | (eye[None] & ~real[:, :, None])
