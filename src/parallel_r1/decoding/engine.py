"""The parallel decoding engine (docs/decoding.md).

Unseen variant, per sample (the paper's agent loop, made exact):

1. decode the trunk until ``<Parallel>``, EOS or the budget;
2. fork k paths that share the prefix's keys/values (k streams in the sample's batch row, kept
   apart by the mask: cache.py); each gets an injected ``<Path>`` at position
   pos(``<Parallel>``)+1 and decodes until ``</Path>`` (an EOS becomes ``</Path>``; a path at its
   own budget, or a block about to overflow the total budget, gets ``</Path>`` appended). The
   paths of a block are decoded side by side, one query each per forward;
3. merge the paths (their slots become visible to what follows, nothing is copied), inject
   ``</Parallel>\\n<Summary>`` at max(path positions)+1, decode the summary until
   ``</Summary>`` (an EOS becomes ``</Summary>``), and go back to 1;
4. stop after the ``</Summary>`` of block ``max_blocks``, at EOS, or at ``max_new_tokens``.

Every token is computed with exactly the context and position ids that
:func:`parallel_r1.structure.build_unseen_layout` gives it in training, so the returned
log-probs equal a training forward's (tested to 1e-4). The paper's vLLM loop instead re-reads
the flat text causally after each block, so its summary and later tokens are off-policy.

Seen variant: plain causal sampling of the model's own tags, same return type.

Choices where the spec is silent:

* ``logprobs`` are the trainer's: ``log_softmax(logits / temperature)`` of the unmodified model,
  for sampled and injected tokens alike (the paper trains on injected tokens). Sampling may
  differ from that distribution by top-p / top-k, ``path_temperature`` and the tag constraint.
* ``constrain_tags`` (default on, Unseen only): a tag that would break the block structure is
  never sampled (in the trunk only ``<Parallel>``; in a path only ``</Path>``; in a summary only
  ``</Summary>``). The paper's loop lets such tags through as text, which makes a malformed
  block the trainer lays out causally; here every completion's layout is well formed.
* A ``<Parallel>`` sampled with no room left for a minimal block (:func:`min_block_room`, shared
  with the vLLM backend) ends the sample with finish reason ``length``.

On accelerators (docs/decoding.md): the engine runs on the model's device, in ``dtype`` (autocast,
e.g. bfloat16 when the trainer trains in bf16); sampled ids are read once per step (they drive the
state machine) and log-probs stay on the device until the chunk ends; under sharded parameters
(FSDP / FSDP2 / ZeRO-3) with several ranks every rank runs the same number of forwards
(``lockstep``).
* ``max_new_tokens`` bounds the completion (trunk + every path + summaries), ``max_path_tokens``
  one path including its two tags.
"""

from __future__ import annotations

import contextlib
import enum
import os
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from ..attention import folded_gqa
from ..devices import check_unseen_attention, kv_bytes_per_token, params_sharded, resolve_dtype, world_size
from ..format import parse
from ..structure import TagIds
from .cache import GROW, join, new_cache, regather, visible
from .config import DecodingConfig
from .sampling import draw


def encode_prompt(tokenizer, prompt, index: int, context: int | None) -> list[int]:
    """Token ids of one prompt (text is encoded without special tokens); refuses an empty prompt
    and one that leaves no room in the model's context."""
    ids = list(prompt) if isinstance(prompt, (list, tuple)) else tokenizer.encode(prompt, add_special_tokens=False)
    if not ids:
        raise ValueError(f"decoding: prompt {index} is empty")
    if context is not None and len(ids) >= context:
        raise ValueError(f"decoding: prompt {index} has {len(ids)} tokens, the model's context is {context}")
    return ids


def completion_budget(max_new_tokens: int, context: int | None, prompt_len: int) -> int:
    """Completion tokens a sample may use: ``max_new_tokens``, capped by what the context leaves."""
    return max_new_tokens if context is None else min(max_new_tokens, context - prompt_len)


@dataclass
class Sample:
    """One generated completion."""

    prompt_index: int
    prompt_ids: list[int]
    completion_ids: list[int]
    logprobs: list[float]  # per completion token
    injected: list[bool]  # per completion token: written by the engine, not sampled
    text: str  # completion decoded with special tokens kept
    finish_reason: str  # eos | length | max_blocks
    num_blocks: int
    backend: str = "transformers"  # which engine wrote it
    exact: bool = True  # every token has the context and positions of the Unseen training layout


def min_block_room(num_paths: int, tail: int) -> int:
    """Completion tokens a block needs after its ``<Parallel>``: k paths of one sampled token with
    their two tags (3k), the tail ``</Parallel>\\n<Summary>`` (``tail`` tokens) and a summary of
    one token plus ``</Summary>`` (2). Both backends end a sample whose ``<Parallel>`` leaves
    less room with finish reason ``length``."""
    return 3 * num_paths + tail + 2


class Kind(enum.Enum):
    """What a stream (a trunk/summary, or one path) does next."""

    TRUNK = "trunk"
    PATH = "path"
    SUMMARY = "summary"
    FORK = "fork"  # sampled <Parallel>: _rebuild opens the block's k paths
    DRAIN = "drain"  # ended; one more forward scores its injected tags
    DONE = "done"


class _Seq:
    """Tokens with their log-probs. A log-prob is a handle into the chunk's :class:`_Scores`
    (computed on the device, read once at the end); None until the logits that score it exist."""

    def __init__(self):
        self.ids: list[int] = []
        self.lps: list[int | None] = []
        self.inj: list[bool] = []

    def add(self, tok: int, lp: int | None, injected: bool) -> int:
        self.ids.append(tok)
        self.lps.append(lp)
        self.inj.append(injected)
        return len(self.ids) - 1


class Pending(NamedTuple):
    """A token fed at the next forward."""

    token: int
    owner: _Seq | None  # whose log-prob ``at`` the logits of the token before this one fill (None: known)
    at: int
    stream: int  # cache stream of its slot (cache.py): 0 shared, j + 1 path j


class _Sample(_Seq):
    """A sample being decoded, with its own settings and sampler: what it draws does not depend on
    what else shares the batch."""

    def __init__(self, index: int, prompt_index: int, prompt_ids: list[int], cfg: DecodingConfig, budget: int, gen):
        super().__init__()
        self.index, self.prompt_index, self.prompt_ids, self.budget = index, prompt_index, prompt_ids, budget
        self.cfg, self.gen = cfg, gen
        self.uid = -1  # its id in the Batch
        self.path_budget = cfg.max_path_tokens or cfg.max_new_tokens
        self.blocks = 0
        self.paths: list[_Path] = []
        self.finish: str | None = None
        self.b = 0  # its batch row

    def used(self) -> int:
        return len(self.ids) + sum(len(p.ids) for p in self.paths)


class _Path(_Seq):
    def __init__(self, j: int):
        super().__init__()
        self.j = j
        self.closing = False  # </Path> appended, its keys not yet computed
        self.waiting = False  # </Path> computed; the stream idles until the block merges
        self.last_pos = 0
        self.next_open_lp: int | None = None  # log p(<Path>) after this path's </Path>: the next path's first token
        self.next_close_lp: int | None = None  # log p(</Parallel>) after it: used when this is the last path


@dataclass
class _Row:
    """One decoding stream: a sample's trunk/summary, or one of its paths (all in the sample's batch row)."""

    sample: _Sample
    path: _Path | None = None
    kind: Kind = Kind.TRUNK
    pending: list[Pending] = field(default_factory=list)
    pos: int = 0  # position id of pending[0]
    stream: int = 0
    col: int = 0  # column of pending[0] in the last forward's input
    last: int = 0  # index of the pending token whose logits pick the next token


class _Scores:
    """Log-probs asked for during a chunk: gathered on the device once per step, read once per chunk.

    ``log_softmax(logits / temperature)`` in float32 over the model's logits as the forward returned
    them (bf16 under bf16 autocast, as in the trainer's forward), for any token: sampled or injected.
    """

    def __init__(self):
        self.parts: list[torch.Tensor] = []
        self.asked: list[tuple[int, int, int]] = []
        self.temps: list[float] = []
        self.n = 0
        self.values: list[float] = []  # parts already read

    def ask(self, b: int, col: int, tok: int, temperature: float) -> int:
        self.asked.append((b, col, tok))
        self.temps.append(temperature if temperature > 0 else 1.0)
        return self.n + len(self.asked) - 1

    def flush(self, logits: torch.Tensor) -> None:
        """Score what was asked against ``logits`` ``[B, q, V]`` (no host sync)."""
        if not self.asked:
            return
        b, col, tok = (to_device(x, logits.device) for x in torch.tensor(self.asked).T)
        t = to_device(torch.tensor(self.temps), logits.device)
        rows = torch.log_softmax(logits[b, col].float() / t[:, None], dim=-1)
        self.parts.append(rows.gather(1, tok[:, None]).squeeze(1))
        self.n += len(self.asked)
        self.asked, self.temps = [], []

    def read(self) -> list[float]:
        """Every flushed log-prob (one host read of the parts flushed since the last read)."""
        if self.parts:
            self.values += torch.cat(self.parts).tolist()
            self.parts = []
        return self.values


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host -> device without waiting for the device (pinned + non_blocking on CUDA)."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


@contextlib.contextmanager
def cpu_sdpa_gqa(device: torch.device):
    """On CPU, let transformers' sdpa attention hand grouped-query heads to torch as they are.

    With a 4-D mask (the engine always passes one) transformers copies each layer's keys and
    values once per query-head group (``repeat_kv``), because CUDA's masked kernels lack GQA; on
    CPU torch's flash kernel takes the mask and the groups together, with the same result, at half
    the attention time for SmolLM2's 3 groups (docs/decoding.md, "Speed"). transformers reads
    ``TRANSFORMERS_SDPA_FORCE_GQA`` at every call, so it is set only while the engine decodes.
    """
    if device.type != "cpu" or "TRANSFORMERS_SDPA_FORCE_GQA" in os.environ:
        yield
        return
    os.environ["TRANSFORMERS_SDPA_FORCE_GQA"] = "1"
    try:
        yield
    finally:
        del os.environ["TRANSFORMERS_SDPA_FORCE_GQA"]


class _Lockstep:
    """Every rank runs the same number of forwards (each is a collective of the sharded model).

    Before each real forward a rank all-reduces 1 (without reading the result); a rank with
    nothing left all-reduces 0, reads the max, and runs a one-token dummy forward while some rank
    still works: transformers' ``synced_gpus``, one all-reduce per step.
    """

    def __init__(self):
        import torch.distributed as dist

        self.dist = dist

    def flag(self, value: int, device: torch.device) -> torch.Tensor:
        dev = device if self.dist.get_backend() == "nccl" else torch.device("cpu")
        t = torch.tensor([value], device=dev)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX)
        return t

    def drain(self, device: torch.device, dummy) -> int:
        steps = 0
        while int(self.flag(0, device).item()):
            dummy()
            steps += 1
        return steps


class ParallelEngine:
    """Generate parallel-thinking completions (module doc)."""

    def __init__(self, model, tokenizer, config: DecodingConfig | None = None):
        self.model, self.tokenizer, self.cfg = model, tokenizer, config or DecodingConfig()
        if self.cfg.variant == "unseen":
            check_unseen_attention(model)
        param = next(model.parameters())
        self.device = param.device
        dtype = resolve_dtype(self.cfg.dtype)
        self.autocast = dtype if dtype is not None and dtype != param.dtype else None
        self.compute_dtype = dtype or param.dtype
        lockstep = self.cfg.lockstep
        self.lockstep = (
            _Lockstep() if (lockstep is None and params_sharded(model) and world_size() > 1) or lockstep else None
        )
        self.tags = self._tags()
        eos = model.generation_config.eos_token_id if getattr(model, "generation_config", None) else None
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if tokenizer.eos_token_id is not None:
            eos.append(tokenizer.eos_token_id)
        if not eos:
            raise ValueError("decoding: the tokenizer and model define no EOS token")
        self.eos = set(eos)
        self.newline = tokenizer.encode("\n", add_special_tokens=False)
        self.tail = len(self.newline) + 2  # </Parallel> \n <Summary>
        self.context = getattr(model.config, "max_position_embeddings", None)
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos)
        # counters of the last generate(): forwards, host reads per step (sampled ids) and per chunk
        # (log-probs), forks, cache bytes copied (prompt expansion and compaction; a fork copies none),
        # uploads of the whole slot-stream matrix (after a merge or a compaction only)
        self.stats: dict[str, int] = {}
        # (host streams, their device copy): a decode step appends its query columns to both, so the
        # [B, S] matrix crosses to the device again only when a merge or a compaction rewrote it
        self._streams_dev: tuple[torch.Tensor, torch.Tensor] | None = None

    def _tags(self) -> TagIds | None:
        try:
            tags = TagIds.from_tokenizer(self.tokenizer)
        except ValueError:
            if self.cfg.variant == "unseen":
                raise
            return None
        rows = self.model.get_input_embeddings().num_embeddings
        if max(tags.as_tuple()) >= rows:
            raise ValueError(
                f"decoding: the tokenizer has the tag tokens but the model's embedding has only {rows} rows; "
                "resize it (parallel_r1.models.add_tag_tokens / `parallel-r1 prepare-model`)"
            )
        return tags

    # ------------------------------------------------------------------ public

    def generate(self, prompts: list[str] | list[list[int]], n: int = 1) -> list[Sample]:
        """Sample ``n`` completions per prompt. Prompts are text (already templated; no special
        tokens are added) or token ids. Returns samples ordered by (prompt, sample).

        Sample k (in that order) draws from its own sampler seeded by (``seed``, k), so what it
        draws does not depend on ``batch_size`` or on the other samples (:class:`Batch`)."""
        if n < 1:
            raise ValueError(f"decoding: n must be >= 1, got {n}")
        encoded = [encode_prompt(self.tokenizer, p, i, self.context) for i, p in enumerate(prompts)]
        jobs = [(i, ids) for i, ids in enumerate(encoded) for _ in range(n)]
        chunks = self._chunks(jobs)
        out: list[Sample] = []
        with self.batch() as batch:
            self.stats["chunks"] = len(chunks)
            for start, chunk in chunks:
                uids = batch.add_jobs(chunk, self.cfg, range(start, start + len(chunk)))
                while batch.rows:
                    batch.step()
                out += batch.take(uids)  # the chunk's one read of its log-probs
        return out

    @contextlib.contextmanager
    def batch(self):
        """A :class:`Batch` on this engine: the model in eval mode, no grad, the engine's autocast,
        for the calling thread (torch's grad and autocast modes are per thread)."""
        self.stats = dict(
            forwards=0, step_syncs=0, chunk_syncs=0, forks=0, copy_bytes=0, chunks=0, dummy_forwards=0,
            streams_uploads=0,
        )  # fmt: skip
        was_training = self.model.training
        self.model.eval()
        try:
            # one autocast region for the whole batch: leaving the outermost one clears torch's cast
            # cache, so a region per forward would re-cast every fp32 weight at every decode step
            with torch.no_grad(), cpu_sdpa_gqa(self.device), folded_gqa(self.model, self.device), self._autocast():
                yield Batch(self)
                if self.lockstep is not None:
                    self.stats["dummy_forwards"] = self.lockstep.drain(self.device, self._dummy)
        finally:
            self._streams_dev = None
            self.model.train(was_training)

    def kv_bytes_per_token(self) -> int:
        """Bytes of keys and values one cache slot takes (every layer)."""
        return kv_bytes_per_token(self.model.config, self.compute_dtype)

    def _chunks(self, jobs) -> list[tuple[int, list]]:
        """Split the jobs into batches of at most ``batch_size`` samples whose estimated cache fits
        ``max_cache_bytes``: rows × (longest prompt + max_new_tokens + spare slots) × bytes per slot,
        twice (a compaction holds the old and the new cache at once)."""
        out, cur, longest, start = [], [], 0, 0
        per_slot, budget = self.kv_bytes_per_token(), self.cfg.max_cache_bytes
        for i, job in enumerate(jobs):
            width = max(longest, len(job[1])) + self.cfg.max_new_tokens + GROW
            if cur and (len(cur) == self.cfg.batch_size or (budget and 2 * (len(cur) + 1) * width * per_slot > budget)):
                out.append((start, cur))
                cur, longest, start = [], 0, i
                width = len(job[1]) + self.cfg.max_new_tokens + GROW
            if budget and 2 * width * per_slot > budget:
                raise ValueError(
                    f"decoding: max_cache_bytes {budget} is below one sample's cache ({2 * width * per_slot} bytes for a "
                    f"{len(job[1])}-token prompt + {self.cfg.max_new_tokens} new tokens); raise it or lower max_new_tokens"
                )
            cur.append(job)
            longest = max(longest, len(job[1]))
        if cur:
            out.append((start, cur))
        return out

    # ------------------------------------------------------------------ forwards

    def _forward(self, **kwargs):
        if self.lockstep is not None:
            self.lockstep.flag(1, self.device)
        self.stats["forwards"] += 1
        return self.model(**kwargs)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.autocast) if self.autocast else contextlib.nullcontext()

    def _dummy(self) -> None:
        """One-token forward of a rank with nothing left, matching the others' collectives."""
        one = torch.full((1, 1), self.pad, dtype=torch.long, device=self.device)
        self.model(input_ids=one, position_ids=torch.zeros_like(one), use_cache=False)

    # ------------------------------------------------------------------ loop

    def _start(self, samples: list[_Sample]):
        """Prefill new samples' prompts (each distinct prompt once) and pick their first tokens;
        returns their rows, cache and host streams (batch rows numbered from 0)."""
        uniq = sorted({s.prompt_index for s in samples})
        prompt_of = {s.prompt_index: s.prompt_ids for s in samples}
        cache, streams, logits = self._prefill([prompt_of[i] for i in uniq])
        row_of_prompt = {i: r for r, i in enumerate(uniq)}
        plan = [row_of_prompt[s.prompt_index] for s in samples]
        if plan != list(range(len(uniq))) or bool((streams < 0).any()):
            streams, copied = regather(cache, streams, plan)
            self.stats["copy_bytes"] += copied
            logits = logits[to_device(torch.tensor(plan), logits.device)]
        for b, s in enumerate(samples):
            s.b = b
        rows = [_Row(s, pos=len(s.prompt_ids)) for s in samples]
        # the first completion token comes from the prompt's last logits
        logits = logits[:, None]
        for row, tok in zip(rows, self._pick(rows, logits)):
            self._advance(row, tok)
        self._scores.flush(logits)
        rows, streams = self._rebuild(rows, cache, streams)
        return rows, cache, streams

    def _decode(self, rows: list[_Row], cache, streams: torch.Tensor):
        """One decoding step of every stream; returns the rows left and the new host streams."""
        for r in rows:
            r.last = len(r.pending) - 1
        logits, streams = self._step(rows, cache, streams)
        self._fill_injected(rows)
        picking = []
        for r in rows:
            if not r.pending:
                continue
            if r.kind is Kind.DRAIN:
                r.pending, r.kind = [], Kind.DONE
            elif r.kind is Kind.PATH and r.path.closing:
                self._close_path(r)
                r.pending = []
            else:
                picking.append(r)
        for r, tok in zip(picking, self._pick(picking, logits)):
            self._advance(r, tok)
        self._scores.flush(logits)
        self._budget_paths(rows)
        return self._rebuild(rows, cache, streams)

    def _prefill(self, prompts: list[list[int]]):
        """Left-padded prefill of the distinct prompts; returns cache, host streams [P, L], last logits [P, V]."""
        length = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), length), self.pad, dtype=torch.long)
        valid = torch.zeros(len(prompts), length, dtype=torch.bool)
        for r, p in enumerate(prompts):
            ids[r, length - len(p) :] = torch.tensor(p)
            valid[r, length - len(p) :] = True
        pos = (valid.long().cumsum(1) - 1).clamp(min=0)
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        mask = causal & valid[:, None, :]
        mask |= torch.eye(length, dtype=torch.bool)  # pad queries see themselves: no empty row
        cache = new_cache()
        out = self._forward(
            input_ids=to_device(ids, self.device), attention_mask=to_device(mask[:, None], self.device),
            position_ids=to_device(pos, self.device), past_key_values=cache, use_cache=True, logits_to_keep=1,
        )  # fmt: skip
        streams = torch.where(valid, 0, -1)
        return cache, streams, out.logits[:, -1]

    def _step(self, rows: list[_Row], cache, streams: torch.Tensor):
        """Feed every stream's pending tokens, the streams of a sample side by side in its batch
        row (idle columns feed an invisible pad); returns logits ``[B, q, V]`` and the new host streams."""
        b_rows = streams.shape[0]
        groups: list[list[_Row]] = [[] for _ in range(b_rows)]
        for r in rows:
            if r.pending:
                groups[r.sample.b].append(r)
        q = max(1, max(sum(len(r.pending) for r in g) for g in groups))
        ids = [[self.pad] * q for _ in range(b_rows)]
        pos = [[0] * q for _ in range(b_rows)]
        qs = [[-1] * q for _ in range(b_rows)]
        for b, g in enumerate(groups):
            c = 0
            for r in g:
                r.col = c
                for t, p in enumerate(r.pending):
                    ids[b][c], pos[b][c], qs[b][c] = p.token, r.pos + t, p.stream
                    c += 1
                r.pos += len(r.pending)
        qs = torch.tensor(qs)
        dev = self.device
        query = to_device(qs, dev)
        new = visible(query, query) & torch.ones(q, q, dtype=torch.bool, device=dev).tril()
        new |= torch.eye(q, dtype=torch.bool, device=dev)  # idle columns see themselves: no empty row
        if self._streams_dev is not None and self._streams_dev[0] is streams:
            on_dev = self._streams_dev[1]
        else:
            on_dev = to_device(streams, dev)
            self.stats["streams_uploads"] += 1
        mask = torch.cat([visible(on_dev, query), new], dim=2)[:, None]
        out = self._forward(
            input_ids=to_device(torch.tensor(ids), dev), attention_mask=mask,
            position_ids=to_device(torch.tensor(pos), dev), past_key_values=cache, use_cache=True,
        )  # fmt: skip
        same = on_dev is streams  # on the CPU the device copy is the host tensor: append once
        streams = torch.cat([streams, qs], dim=1)
        self._streams_dev = (streams, streams if same else torch.cat([on_dev, query], dim=1))
        return out.logits, streams

    def _fill_injected(self, rows: list[_Row]) -> None:
        """Log-probs of pending tokens 2.. come from the logits at the token before them."""
        for r in rows:
            for j in range(1, len(r.pending)):
                tok, owner, at, _ = r.pending[j]
                if owner is not None:
                    owner.lps[at] = self._scores.ask(r.sample.b, r.col + j - 1, tok, r.sample.cfg.temperature)

    def _pick(self, rows: list[_Row], logits) -> list[int]:
        """Sample the next token of each stream from its logits at ``col + last``, with its
        sample's settings and sampler: the one host read of a decoding step (the ids drive the
        state machine)."""
        if not rows:
            return []
        b = to_device(torch.tensor([r.sample.b for r in rows]), logits.device)
        c = to_device(torch.tensor([r.col + r.last for r in rows]), logits.device)
        temps, banned = [], []
        for r in rows:
            cfg = r.sample.cfg
            path = r.kind is Kind.PATH and cfg.path_temperature is not None
            temps.append(cfg.path_temperature if path else cfg.temperature)
            banned.append(self._banned(r))
        top_p = [r.sample.cfg.top_p for r in rows]
        top_k = [r.sample.cfg.top_k for r in rows]
        gens = [r.sample.gen for r in rows]
        toks = draw(logits[b, c], temps, top_p, top_k, banned, gens if any(g is not None for g in gens) else None)
        self.stats["step_syncs"] += 1
        return toks.tolist()

    def _banned(self, row: _Row) -> list[int]:
        if row.sample.cfg.variant == "seen" or not row.sample.cfg.constrain_tags:
            return []
        allowed = {
            Kind.TRUNK: self.tags.parallel_open,
            Kind.PATH: self.tags.path_close,
            Kind.SUMMARY: self.tags.summary_close,
        }[row.kind]
        return [t for t in self.tags.as_tuple() if t != allowed]

    # ------------------------------------------------------------------ state machine

    def _score(self, row: _Row, tok: int) -> int:
        """Handle of log p(tok) at the logits that picked the row's next token."""
        return self._scores.ask(row.sample.b, row.col + row.last, tok, row.sample.cfg.temperature)

    def _advance(self, row: _Row, tok: int) -> None:
        """Append a freshly sampled token to its stream and decide what is fed next."""
        s = row.sample
        if row.kind is Kind.PATH:
            p = row.path
            if tok in self.eos:  # the paper closes a path that ends with EOS
                tok = self.tags.path_close
                p.add(tok, self._score(row, tok), True)
            else:
                p.add(tok, self._score(row, tok), False)
            row.pending = [Pending(tok, None, 0, row.stream)]
            if tok == self.tags.path_close:
                p.closing = True
            elif len(p.ids) + 1 >= s.path_budget:
                self._append_path_close(row)
            return
        if row.kind is Kind.SUMMARY and tok in self.eos:
            tok = self.tags.summary_close
            s.add(tok, self._score(row, tok), True)
        else:
            s.add(tok, self._score(row, tok), False)
        row.pending = [Pending(tok, None, 0, 0)]
        unseen = s.cfg.variant == "unseen"
        if tok in self.eos:
            return self._end(row, "eos")
        if unseen and row.kind is Kind.SUMMARY and tok == self.tags.summary_close:
            s.blocks += 1
            row.kind = Kind.TRUNK
            if s.blocks >= s.cfg.max_blocks:
                return self._end(row, "max_blocks")
        if s.used() >= s.budget:
            return self._end(row, "length")
        if unseen and row.kind is Kind.TRUNK and tok == self.tags.parallel_open:
            if s.budget - s.used() < min_block_room(s.cfg.num_paths, self.tail):
                return self._end(row, "length")
            row.kind = Kind.FORK

    def _append_path_close(self, row: _Row) -> None:
        p = row.path
        at = p.add(self.tags.path_close, None, True)
        row.pending.append(Pending(self.tags.path_close, p, at, row.stream))
        p.closing = True

    def _close_path(self, row: _Row) -> None:
        """The stream just computed its </Path>: keep what the next tokens of the block need."""
        p = row.path
        p.next_open_lp, p.next_close_lp = (
            self._score(row, self.tags.path_open),
            self._score(row, self.tags.parallel_close),
        )
        p.last_pos = row.pos - 1
        p.closing, p.waiting = False, True

    def _budget_paths(self, rows: list[_Row]) -> None:
        """Close every open path of a block that could not otherwise fit its summary tags."""
        for s in {id(r.sample): r.sample for r in rows if r.kind is Kind.PATH}.values():
            open_ = [p for p in s.paths if not p.closing and not p.waiting]
            if open_ and s.used() + 2 * len(open_) + self.tail > s.budget:
                for r in rows:
                    if r.sample is s and r.path in open_:
                        self._append_path_close(r)

    def _end(self, row: _Row, reason: str) -> None:
        row.sample.finish = reason
        if any(p.owner is not None for p in row.pending[1:]):
            row.kind = Kind.DRAIN
        else:
            row.pending, row.kind = [], Kind.DONE

    # ------------------------------------------------------------------ batch surgery

    def _rebuild(self, rows: list[_Row], cache, streams: torch.Tensor):
        """Fork and merge streams (no cache copy: cache.py), drop finished samples' batch rows."""
        out, dropped = [], False
        for r in rows:
            if r.kind is Kind.DONE:
                dropped = True
            elif r.kind is Kind.FORK:
                out += self._fork(r)
            elif r.kind is Kind.PATH and r.path.waiting:
                siblings = [x for x in rows if x.sample is r.sample and x.kind is Kind.PATH]
                if not all(x.path.waiting for x in siblings):
                    out.append(r)
                elif r.path.j == 0:
                    b = r.sample.b
                    streams[b] = torch.where(streams[b] > 0, 0, streams[b])  # the summary sees every path
                    self._streams_dev = None  # rewritten in place: upload it again
                    out.append(self._merge(r.sample))
            else:
                out.append(r)
        if not out:
            return [], streams
        live = sorted({id(r.sample): r.sample for r in out}.values(), key=lambda s: s.b)
        valid = (streams >= 0).sum(1)
        # drop finished rows; squeeze idle columns' slots when they make up over half the width
        if dropped or streams.shape[1] > 2 * int(valid.max()) + GROW:
            streams, copied = regather(cache, streams, [s.b for s in live])
            self.stats["copy_bytes"] += copied
            for b, s in enumerate(live):
                s.b = b
        return out, streams

    def _fork(self, r: _Row) -> list[_Row]:
        """k path streams in the sample's row: path 0 feeds the pending ``<Parallel>`` (shared) and
        its ``<Path>``, path j > 0 its ``<Path>`` at the same position."""
        s, tok = r.sample, r.pending[0].token
        s.paths = [_Path(j) for j in range(s.cfg.num_paths)]
        self.stats["forks"] += 1
        out = []
        for p in s.paths:
            opener = Pending(
                self.tags.path_open, p if p.j == 0 else None, p.add(self.tags.path_open, None, True), p.j + 1
            )
            pending = [Pending(tok, None, 0, 0), opener] if p.j == 0 else [opener]
            out.append(_Row(s, p, Kind.PATH, pending, r.pos if p.j == 0 else r.pos + 1, stream=p.j + 1))
        return out

    def _merge(self, s: _Sample) -> _Row:
        """Splice the block's paths into the sample and open its summary."""
        for p in s.paths:
            if p.j > 0:
                p.lps[0] = s.paths[p.j - 1].next_open_lp
            s.ids += p.ids
            s.lps += p.lps
            s.inj += p.inj
        pos = max(p.last_pos for p in s.paths) + 1
        close_lp = s.paths[-1].next_close_lp
        s.paths = []
        row = _Row(s, kind=Kind.SUMMARY, pos=pos)
        row.pending.append(Pending(self.tags.parallel_close, None, s.add(self.tags.parallel_close, close_lp, True), 0))
        for tok in [*self.newline, self.tags.summary_open]:
            row.pending.append(Pending(tok, s, s.add(tok, None, True), 0))
        if s.used() >= s.budget:
            self._end(row, "length")
        return row

    def _finish(self, s: _Sample, scores: list[float]) -> Sample:
        text = self.tokenizer.decode(s.ids, skip_special_tokens=False)
        blocks = s.blocks
        if s.cfg.variant == "seen":
            blocks = parse(text).num_blocks
        lps = [scores[h] for h in s.lps]
        return Sample(s.prompt_index, list(s.prompt_ids), s.ids, lps, s.inj, text, s.finish or "length", blocks)


def sample_generator(seed: int, k: int) -> torch.Generator:
    """The sampler of sample k of a seeded request: its own stream (numpy's ``SeedSequence`` of
    (seed, k)), so a sample draws the same whatever else is decoded beside it."""
    import numpy as np

    state = int(np.random.SeedSequence([seed, k]).generate_state(1, np.uint64)[0])
    return torch.Generator().manual_seed(state >> 1)


class Batch:
    """Samples decoded together that join and leave between decoding steps (continuous batching).

    :meth:`add` prefills a new request's prompt and joins its samples to the running rows at the
    next :meth:`step`; a sample leaves the batch the step it finishes (:meth:`take` returns it) or
    is cancelled (:meth:`cancel`). Every sample keeps its own settings (temperature, top-p/k,
    paths, blocks, budgets, variant) and its own seeded sampler, so what it writes does not
    depend on what else shares the batch (up to the floating-point effects of batching: a
    different batch can round a logit differently). ``dtype``, ``lockstep`` and the cache budget
    are the engine's. Made by :meth:`ParallelEngine.batch`; one at a time per engine.
    """

    def __init__(self, engine: ParallelEngine):
        self.e = engine
        self.rows: list[_Row] = []
        self.cache, self.streams = None, None
        self.live: dict[int, _Sample] = {}
        self.done: dict[int, _Sample] = {}
        self.next_uid = 0
        engine._scores = _Scores()

    def add(self, prompt, n: int = 1, config: DecodingConfig | None = None) -> list[int]:
        """Join ``n`` samples of one prompt (text or ids) with ``config`` (default: the
        engine's); sample j draws as sample j of ``generate([prompt], n)``. Returns their ids."""
        if n < 1:
            raise ValueError(f"decoding: n must be >= 1, got {n}")
        ids = encode_prompt(self.e.tokenizer, prompt, 0, self.e.context)
        return self.add_jobs([(0, ids)] * n, config or self.e.cfg, range(n))

    def add_jobs(self, jobs: list[tuple[int, list[int]]], cfg: DecodingConfig, seed_index) -> list[int]:
        """Join samples given as (prompt index, prompt ids), the k-th drawing with sampler
        (``cfg.seed``, ``seed_index[k]``)."""
        e = self.e
        if cfg.variant == "unseen":
            check_unseen_attention(e.model)
            if e.tags is None:
                raise ValueError("decoding: the Unseen variant needs the tag tokens in the tokenizer")
        if not self.rows and not self.done:  # an empty batch: start afresh, the old handles are gone
            e._scores, self.cache, self.streams, e._streams_dev = _Scores(), None, None, None
        samples = []
        for (i, ids), k in zip(jobs, seed_index):
            gen = None if cfg.seed is None else sample_generator(cfg.seed, k)
            samples.append(_Sample(k, i, ids, cfg, completion_budget(cfg.max_new_tokens, e.context, len(ids)), gen))
        uids = list(range(self.next_uid, self.next_uid + len(samples)))
        self.next_uid += len(samples)
        for uid, s in zip(uids, samples):
            s.uid = uid
            self.live[uid] = s
        rows, cache, streams = e._start(samples)
        if rows and self.rows:
            offset = self.streams.shape[0]
            self.streams, copied = join(self.cache, self.streams, cache, streams)
            e.stats["copy_bytes"] += copied
            for s in {id(r.sample): r.sample for r in rows}.values():
                s.b += offset
            self.rows += rows
        elif rows:
            self.rows, self.cache, self.streams = rows, cache, streams
        self._retire()
        return uids

    def step(self) -> list[int]:
        """One decoding step of every running sample; returns the ids of those that finished."""
        before = set(self.done)
        if self.rows:
            self.rows, self.streams = self.e._decode(self.rows, self.cache, self.streams)
        self._retire()
        return [u for u in self.done if u not in before]

    def cancel(self, uids) -> None:
        """Drop samples from the batch now (their rows are freed; they are never returned)."""
        gone = {uid for uid in uids if self.live.pop(uid, None) is not None or self.done.pop(uid, None) is not None}
        if not gone:
            return
        for r in self.rows:
            if r.sample.uid in gone:
                r.kind, r.pending = Kind.DONE, []
        self.rows, self.streams = self.e._rebuild(self.rows, self.cache, self.streams)
        if not self.rows:
            self.cache, self.streams = None, None

    def progress(self, uid: int) -> tuple[list[int], list[list[int]]]:
        """A running sample's tokens so far: the flat completion (trunk, merged paths, summaries)
        and the paths of its open block (empty when none is open)."""
        s = self.live[uid]
        return list(s.ids), [list(p.ids) for p in s.paths]

    def take(self, uids) -> list[Sample]:
        """The finished samples ``uids``, removed from the batch (one host read of the log-probs)."""
        scores = self.e._scores.read()
        self.e.stats["chunk_syncs"] += 1
        return [self.e._finish(self.done.pop(u), scores) for u in uids]

    def _retire(self) -> None:
        running = {r.sample.uid for r in self.rows}
        for uid in [u for u in self.live if u not in running]:
            self.done[uid] = self.live.pop(uid)
        if not self.rows:
            self.cache, self.streams = None, None
