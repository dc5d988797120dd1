"""The grammar of parallel thinking (README, "What parallel thinking looks like").

Canonical layout of a response::

    ...trunk...<Parallel><Path>p1</Path><Path>p2</Path></Parallel>\\n<Summary>s</Summary>...trunk...
    Final Answer: X

Everything here works on text. Token-level structure (attention layout, position ids)
lives in :mod:`parallel_r1.structure`; it uses the same tags.

Choices where the paper's code is silent or loose (each is tested):

* ``check_format`` is the paper's stack checker (``check_parallel_thinking_format``) with
  two additions that no pilot trace trips: a ``<Path>`` must sit directly inside a
  ``<Parallel>``, and a tag other than ``<Summary>`` right after ``</Parallel>`` is an error
  ("a summary right after each ``</Parallel>``"). Like the paper's checker it does not look
  at ``</Summary>`` by default: pilot row 327 ends inside an unclosed summary and the paper
  counts all 341 pilot traces as valid. ``strict=True`` also requires every ``<Summary>`` to
  be closed by ``</Summary>``. Nesting a block inside a path is
  tolerated, as in the paper.
* ``uses_parallel`` follows the reward code: the text contains ``<Parallel>`` at least once,
  valid or not. ``num_blocks`` counts blocks that closed properly.
* Relative position of a block = offset of its ``<Parallel>`` ÷ response length, in tokens
  when token ids are given, else in characters; 0.0 is the very start.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

PARALLEL_OPEN = "<Parallel>"
PARALLEL_CLOSE = "</Parallel>"
PATH_OPEN = "<Path>"
PATH_CLOSE = "</Path>"
SUMMARY_OPEN = "<Summary>"
SUMMARY_CLOSE = "</Summary>"
TAGS: tuple[str, ...] = (PARALLEL_OPEN, PARALLEL_CLOSE, PATH_OPEN, PATH_CLOSE, SUMMARY_OPEN, SUMMARY_CLOSE)

TAG_RE = re.compile(r"</?(?:Parallel|Path|Summary)>")

# How a model reads the format: Unseen isolates a block's paths (mask + shared-start positions,
# structure.py), Seen reads everything causally. The one list of the names.
VARIANTS = ("unseen", "seen")


@dataclass
class Block:
    """One ``<Parallel>`` block. Offsets are character offsets into the parsed text."""

    start: int  # offset of "<Parallel>"
    end: int  # offset just past "</Parallel>" (or past "</Summary>" when a summary follows)
    paths: list[str] = field(default_factory=list)  # path texts, tags excluded
    summary: str | None = None  # summary text, tags excluded; None when there is none
    depth: int = 0  # 0 for a top-level block, 1 inside a path of another block, ...


@dataclass
class ParsedTrace:
    """A response split into its trunk segments and its parallel blocks."""

    text: str
    trunk: list[str]  # text outside closed top-level blocks, in order (len == their count + 1)
    blocks: list[Block]  # every closed block, in order of its "<Parallel>", nested ones too
    errors: list[str]  # format errors; empty iff the format is valid

    @property
    def uses_parallel(self) -> bool:
        return PARALLEL_OPEN in self.text

    @property
    def format_ok(self) -> bool:
        return not self.errors

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def paths_per_block(self) -> list[int]:
        return [len(b.paths) for b in self.blocks]


def check_format(text: str, strict: bool = False) -> list[str]:
    """The paper's stack checker (with the choices in the module docstring).

    Returns a list of error messages, empty when the format is valid. A response with no
    tag at all is valid (sequential reasoning is allowed).
    """
    return parse(text, strict).errors


def parse(text: str, strict: bool = False) -> ParsedTrace:
    """Parse ``text`` into trunk segments and blocks, collecting format errors.

    One pass over the tags with a stack; linear in the length of the text. Never raises.
    An unclosed summary ends at the next ``<Parallel>`` or at the end of the text (an error
    only when ``strict``).
    """
    errors: list[str] = []
    blocks: list[Block] = []
    # Stack frames: [tag, start offset, content start, payload]; payload of a Parallel frame
    # is the list of its closed path texts.
    stack: list[list] = []
    summary_expected_for: Block | None = None  # block waiting for its <Summary>
    open_summary: tuple[Block | None, int] | None = None  # (block, content start)
    n_parallel_close = 0
    n_summary_open = 0

    def end_summary(content_end: int, block_end: int | None = None) -> None:
        nonlocal open_summary
        block, content_start = open_summary
        if block is not None:
            block.summary = text[content_start:content_end]
            block.end = content_end if block_end is None else block_end
        open_summary = None

    for m in TAG_RE.finditer(text):
        tag, pos = m.group(0), m.start()
        if summary_expected_for is not None and tag != SUMMARY_OPEN:
            errors.append(f"{tag} at {pos}: expected <Summary> after </Parallel>")
            summary_expected_for = None
        if tag == PARALLEL_OPEN:
            if open_summary is not None:
                if strict:
                    errors.append(f"<Parallel> at {pos}: previous <Summary> not closed")
                end_summary(pos)
            if stack and stack[-1][0] != PATH_OPEN:
                errors.append(f"<Parallel> at {pos}: directly inside {stack[-1][0]}")
            stack.append([PARALLEL_OPEN, pos, m.end(), []])
        elif tag == PATH_OPEN:
            if not stack or stack[-1][0] != PARALLEL_OPEN:
                errors.append(f"<Path> at {pos}: not directly inside <Parallel>")
            stack.append([PATH_OPEN, pos, m.end(), None])
        elif tag == PATH_CLOSE:
            if not stack or stack[-1][0] != PATH_OPEN:
                errors.append(f"</Path> at {pos}: no open <Path>")
                continue
            frame = stack.pop()
            if stack and stack[-1][0] == PARALLEL_OPEN:
                stack[-1][3].append(text[frame[2] : pos])
        elif tag == PARALLEL_CLOSE:
            if not stack or stack[-1][0] != PARALLEL_OPEN:
                errors.append(f"</Parallel> at {pos}: no open <Parallel> on top of the stack")
                continue
            frame = stack.pop()
            n_parallel_close += 1
            paths = frame[3]
            if len(paths) < 2:
                errors.append(f"</Parallel> at {pos}: block has {len(paths)} closed path(s), needs >= 2")
            depth = sum(1 for f in stack if f[0] == PARALLEL_OPEN)
            block = Block(start=frame[1], end=m.end(), paths=list(paths), depth=depth)
            blocks.append(block)
            summary_expected_for = block
        elif tag == SUMMARY_OPEN:
            n_summary_open += 1
            if open_summary is not None:
                if strict:
                    errors.append(f"<Summary> at {pos}: previous <Summary> not closed")
                end_summary(pos)
            if summary_expected_for is None:
                errors.append(f"<Summary> at {pos}: not right after a </Parallel>")
            open_summary = (summary_expected_for, m.end())
            summary_expected_for = None
        elif tag == SUMMARY_CLOSE:
            if open_summary is None:
                if strict:
                    errors.append(f"</Summary> at {pos}: no open <Summary>")
                continue
            end_summary(pos, m.end())

    for frame in stack:
        errors.append(f"{frame[0]} at {frame[1]}: never closed")
    if summary_expected_for is not None:
        errors.append("text ends right after </Parallel>: <Summary> missing")
    if open_summary is not None:
        if strict:
            errors.append("<Summary> never closed")
        end_summary(len(text))
    if n_summary_open != n_parallel_close and not errors:
        errors.append(f"{n_summary_open} <Summary> for {n_parallel_close} </Parallel>")
    blocks.sort(key=lambda b: b.start)
    # Trunk = the text outside closed top-level blocks (a block's span includes its summary).
    trunk, cursor = [], 0
    for b in blocks:
        if b.depth == 0:
            trunk.append(text[cursor : b.start])
            cursor = b.end
    trunk.append(text[cursor:])
    return ParsedTrace(text=text, trunk=trunk, blocks=blocks, errors=errors)


_NORMALISE = (
    (re.compile(r"<Parallel>\s*<Path>"), "<Parallel><Path>"),
    (re.compile(r"</Path>\s*<Path>"), "</Path><Path>"),
    (re.compile(r"</Path>\s*</Parallel>"), "</Path></Parallel>"),
    (re.compile(r"</Parallel>\s*<Summary>"), "</Parallel>\n<Summary>"),
)


def normalize(text: str) -> str:
    """Canonical whitespace between tags (the layout above): none inside a block, one ``\\n`` before ``<Summary>``.

    Text inside paths and summaries is untouched. Idempotent.
    """
    for pattern, repl in _NORMALISE:
        text = pattern.sub(repl, text)
    return text


def block_positions(
    text: str,
    token_ids: list[int] | None = None,
    parallel_token_id: int | None = None,
) -> list[float]:
    """Relative position of each ``<Parallel>`` in a response, in [0, 1).

    With ``token_ids`` and ``parallel_token_id``: token index ÷ number of tokens.
    Otherwise: character offset ÷ number of characters. Empty when there is no block.
    """
    if token_ids is not None:
        if parallel_token_id is None:
            raise ValueError("block_positions: token_ids given without parallel_token_id")
        n = len(token_ids)
        return [i / n for i, t in enumerate(token_ids) if t == parallel_token_id]
    n = len(text)
    return [m.start() / n for m in re.finditer(re.escape(PARALLEL_OPEN), text)]


@dataclass
class TraceReport:
    """What the metrics, rewards and the ``score`` command report about one response."""

    uses_parallel: bool
    format_ok: bool
    num_blocks: int
    paths_per_block: list[int]
    positions: list[float]
    errors: list[str]


def analyze(
    text: str,
    token_ids: list[int] | None = None,
    parallel_token_id: int | None = None,
) -> TraceReport:
    """Parse, validate and measure one response."""
    p = parse(text)
    return TraceReport(
        uses_parallel=p.uses_parallel,
        format_ok=p.format_ok,
        num_blocks=p.num_blocks,
        paths_per_block=p.paths_per_block,
        positions=block_positions(text, token_ids, parallel_token_id),
        errors=p.errors,
    )


def strip_tags(text: str) -> str:
    """The response with the six tags removed (what ``skip_special_tokens=True`` decodes to)."""
    return TAG_RE.sub("", text)
