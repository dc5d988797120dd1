"""The parallel decoding engine (spec PARALLEL_R1.md §3.3, §3.4; issue 3).

Unseen variant, per sample (the paper's agent loop, made exact):

1. decode the trunk until ``<Parallel>``, EOS or the budget;
2. fork k path rows that share the prefix's keys/values; each gets an injected ``<Path>`` at
   position pos(``<Parallel>``)+1 and decodes until ``</Path>`` (an EOS becomes ``</Path>``; a
   path at its own budget, or a block about to overflow the total budget, gets ``</Path>``
   appended). The paths of a block are rows of the same batch, decoded side by side;
3. merge the paths' caches into one row that sees the prefix and every path, inject
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
* A ``<Parallel>`` sampled with no room left for a minimal block (k paths of one token plus
  the closing and summary tags) ends the sample with finish reason ``length``.
* ``max_new_tokens`` bounds the completion (trunk + every path + summaries), ``max_path_tokens``
  one path including its two tags.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..format import parse
from ..structure import TagIds
from .cache import new_cache, regather
from .sampling import sample_tokens


@dataclass
class DecodingConfig:
    """How the engine samples (issue 3)."""

    variant: str = field(default="unseen", metadata={"help": "unseen: orchestrated paths (exact layout); seen: plain causal sampling."})
    num_paths: int = field(default=2, metadata={"help": "k, paths forked per <Parallel> block (unseen)."})
    max_blocks: int = field(default=4, metadata={"help": "M, blocks per completion; the sample ends after the M-th </Summary> (paper: 4)."})
    max_new_tokens: int = field(default=512, metadata={"help": "Budget of completion tokens (trunk + all paths + summaries)."})
    max_path_tokens: int | None = field(default=None, metadata={"help": "Budget of one path, tags included (default: max_new_tokens)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature; 0 = greedy. Also the temperature of the returned log-probs."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling threshold."})
    top_k: int | None = field(default=0, metadata={"help": "Top-k sampling (0 or None = off)."})
    path_temperature: float | None = field(default=1.0, metadata={"help": "Temperature inside paths (paper forces 1.0); None = temperature."})
    constrain_tags: bool = field(default=True, metadata={"help": "Unseen: never sample a tag that would break the block structure."})
    batch_size: int = field(default=64, metadata={"help": "Samples decoded together (paths add rows)."})
    seed: int | None = field(default=None, metadata={"help": "Seed of the sampler; None = nondeterministic."})

    def __post_init__(self):
        self.top_k = self.top_k or 0
        if self.variant not in ("unseen", "seen"):
            raise ValueError(f"decoding: variant must be 'unseen' or 'seen', got {self.variant!r}")
        if self.num_paths < 2:
            raise ValueError(f"decoding: num_paths must be >= 2 (a block has at least two paths), got {self.num_paths}")
        if self.max_blocks < 1 or self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("decoding: max_blocks, max_new_tokens and batch_size must be >= 1")
        if self.max_path_tokens is not None and self.max_path_tokens < 2:
            raise ValueError("decoding: max_path_tokens must be >= 2 (the two path tags)")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError("decoding: need temperature >= 0, 0 < top_p <= 1, top_k >= 0")


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


class _Seq:
    """Tokens with their log-probs; a log-prob of None is filled once the logits exist."""

    def __init__(self):
        self.ids: list[int] = []
        self.lps: list[float | None] = []
        self.inj: list[bool] = []

    def add(self, tok: int, lp: float | None, injected: bool) -> int:
        self.ids.append(tok)
        self.lps.append(lp)
        self.inj.append(injected)
        return len(self.ids) - 1


class _Sample(_Seq):
    def __init__(self, index: int, prompt_index: int, prompt_ids: list[int], budget: int):
        super().__init__()
        self.index, self.prompt_index, self.prompt_ids, self.budget = index, prompt_index, prompt_ids, budget
        self.blocks = 0
        self.paths: list[_Path] = []
        self.finish: str | None = None

    def used(self) -> int:
        return len(self.ids) + sum(len(p.ids) for p in self.paths)


class _Path(_Seq):
    def __init__(self, j: int):
        super().__init__()
        self.j = j
        self.closing = False  # </Path> appended, its keys not yet computed
        self.waiting = False  # </Path> computed; row idles until the block merges
        self.last_pos = 0
        self.next_open_lp = 0.0  # log p(<Path>) after this path's </Path>: the next path's first token
        self.next_close_lp = 0.0  # log p(</Parallel>) after it: used when this is the last path


@dataclass
class _Row:
    """One batch row: a sample's trunk/summary, or one of its paths."""

    sample: _Sample
    path: _Path | None = None
    kind: str = "trunk"  # trunk | summary | path
    pending: list[tuple[int, _Seq | None, int]] = field(default_factory=list)  # (token, owner, index to fill)
    pos: int = 0  # position id of pending[0]
    prefix: int = 0  # path rows: valid slots before the path's own (prefix incl. <Parallel>)


class ParallelEngine:
    """Generate parallel-thinking completions (module doc)."""

    def __init__(self, model, tokenizer, config: DecodingConfig | None = None):
        self.model, self.tokenizer, self.cfg = model, tokenizer, config or DecodingConfig()
        self.device = next(model.parameters()).device
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
        self.path_budget = self.cfg.max_path_tokens or self.cfg.max_new_tokens
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos)

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
        tokens are added) or token ids. Returns samples ordered by (prompt, sample)."""
        if n < 1:
            raise ValueError(f"decoding: n must be >= 1, got {n}")
        encoded = [encode_prompt(self.tokenizer, p, i, self.context) for i, p in enumerate(prompts)]
        gen = None
        if self.cfg.seed is not None:
            gen = torch.Generator(device=self.device).manual_seed(self.cfg.seed)
        jobs = [(i, ids) for i, ids in enumerate(encoded) for _ in range(n)]
        out: list[Sample] = []
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                for start in range(0, len(jobs), self.cfg.batch_size):
                    out += self._run(jobs[start : start + self.cfg.batch_size], start, gen)
        finally:
            self.model.train(was_training)
        return out

    # ------------------------------------------------------------------ loop

    def _run(self, jobs, first_index: int, gen) -> list[Sample]:
        uniq = sorted({i for i, _ in jobs})
        prompt_of = {i: ids for i, ids in jobs}
        samples = []
        for k, (i, ids) in enumerate(jobs):
            samples.append(_Sample(first_index + k, i, ids, completion_budget(self.cfg.max_new_tokens, self.context, len(ids))))
        cache, valid, logits = self._prefill([prompt_of[i] for i in uniq])
        row_of_prompt = {i: r for r, i in enumerate(uniq)}
        valid = regather(cache, valid, [[(row_of_prompt[s.prompt_index], 0)] for s in samples])
        logits = logits[[row_of_prompt[s.prompt_index] for s in samples]]
        rows = [_Row(s, pos=len(s.prompt_ids)) for s in samples]
        # the first completion token comes from the prompt's last logits
        for row, pick in zip(rows, self._pick(rows, logits.unsqueeze(1), [0] * len(rows), gen)):
            self._advance(row, *pick)
        rows, valid = self._rebuild(rows, cache, valid)
        while rows:
            last = [len(r.pending) - 1 for r in rows]
            logits, valid = self._step(rows, cache, valid)
            self._fill_injected(rows, logits)
            live = [i for i, r in enumerate(rows) if r.pending]
            for i in live:
                r = rows[i]
                if r.kind == "drain":
                    r.pending, r.kind = [], "done"
                elif r.kind == "path" and r.path.closing:
                    self._close_path(r, logits[i, last[i]])
                    r.pending = []
            live = [i for i in live if rows[i].pending]
            picks = self._pick([rows[i] for i in live], logits[live], [last[i] for i in live], gen)
            for i, pick in zip(live, picks):
                self._advance(rows[i], *pick)
            self._budget_paths(rows)
            rows, valid = self._rebuild(rows, cache, valid)
        return [self._finish(s) for s in samples]

    def _prefill(self, prompts: list[list[int]]):
        """Left-padded prefill of the distinct prompts; returns cache, valid [P, L], last logits [P, V]."""
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
        out = self.model(
            input_ids=ids.to(self.device), attention_mask=mask[:, None].to(self.device),
            position_ids=pos.to(self.device), past_key_values=cache, use_cache=True, logits_to_keep=1,
        )  # fmt: skip
        return cache, valid.to(self.device), out.logits[:, -1].float()

    def _step(self, rows: list[_Row], cache, valid):
        """Feed every row's pending tokens (idle rows feed an invisible pad); returns logits [B, q, V]."""
        q = max(1, max(len(r.pending) for r in rows))
        b, s = valid.shape
        ids = torch.full((b, q), self.pad, dtype=torch.long)
        pos = torch.zeros(b, q, dtype=torch.long)
        real = torch.zeros(b, q, dtype=torch.bool)
        for i, r in enumerate(rows):
            n = len(r.pending)
            if n:
                ids[i, :n] = torch.tensor([t for t, _, _ in r.pending])
                pos[i, :n] = torch.arange(r.pos, r.pos + n)
                real[i, :n] = True
        real = real.to(self.device)
        new = torch.ones(q, q, dtype=torch.bool, device=self.device).tril() & real[:, None, :]
        new |= torch.eye(q, dtype=torch.bool, device=self.device)
        old = valid[:, None, :].expand(b, q, s) & real[:, :, None]
        mask = torch.cat([old, new], dim=2)[:, None]
        out = self.model(
            input_ids=ids.to(self.device), attention_mask=mask, position_ids=pos.to(self.device),
            past_key_values=cache, use_cache=True,
        )  # fmt: skip
        for r in rows:
            r.pos += len(r.pending)
        return out.logits.float(), torch.cat([valid, real], dim=1)

    def _logprobs(self, logits: torch.Tensor) -> torch.Tensor:
        t = self.cfg.temperature if self.cfg.temperature > 0 else 1.0
        return torch.log_softmax(logits / t, dim=-1)

    def _fill_injected(self, rows: list[_Row], logits) -> None:
        """Log-probs of pending tokens 2.. come from the logits at the token before them."""
        for i, r in enumerate(rows):
            for j in range(1, len(r.pending)):
                tok, owner, at = r.pending[j]
                if owner is not None:
                    owner.lps[at] = float(self._logprobs(logits[i, j - 1])[tok])

    def _pick(self, rows: list[_Row], logits, last: list[int], gen) -> list[tuple[int, torch.Tensor]]:
        """Sample the next token of each row; returns (token, log-probs row) pairs (one batched
        log-softmax for all rows rather than one per row)."""
        if not rows:
            return []
        nxt = torch.stack([logits[i, last[i]] for i in range(len(rows))])
        temps, banned = [], []
        for r in rows:
            path = r.kind == "path" and self.cfg.path_temperature is not None
            temps.append(self.cfg.path_temperature if path else self.cfg.temperature)
            banned.append(self._banned(r))
        toks = sample_tokens(nxt, temps, self.cfg.top_p, self.cfg.top_k, banned, gen)
        return list(zip(toks, self._logprobs(nxt)))

    def _banned(self, row: _Row) -> list[int]:
        if self.cfg.variant == "seen" or not self.cfg.constrain_tags:
            return []
        allowed = {"trunk": self.tags.parallel_open, "path": self.tags.path_close, "summary": self.tags.summary_close}[row.kind]
        return [t for t in self.tags.as_tuple() if t != allowed]

    # ------------------------------------------------------------------ state machine

    def _advance(self, row: _Row, tok: int, lp: torch.Tensor) -> None:
        """Append a freshly sampled token (``lp``: the log-probs it was drawn from) to its stream
        and decide what is fed next."""
        s = row.sample
        if row.kind == "path":
            p = row.path
            if tok in self.eos:  # the paper closes a path that ends with EOS
                tok = self.tags.path_close
                p.add(tok, float(lp[tok]), True)
            else:
                p.add(tok, float(lp[tok]), False)
            row.pending = [(tok, None, 0)]
            if tok == self.tags.path_close:
                p.closing = True
            elif len(p.ids) + 1 >= self.path_budget:
                self._append_path_close(row)
            return
        if row.kind == "summary" and tok in self.eos:
            tok = self.tags.summary_close
            s.add(tok, float(lp[tok]), True)
        else:
            s.add(tok, float(lp[tok]), False)
        row.pending = [(tok, None, 0)]
        unseen = self.cfg.variant == "unseen"
        if tok in self.eos:
            return self._end(row, "eos")
        if unseen and row.kind == "summary" and tok == self.tags.summary_close:
            s.blocks += 1
            row.kind = "trunk"
            if s.blocks >= self.cfg.max_blocks:
                return self._end(row, "max_blocks")
        if s.used() >= s.budget:
            return self._end(row, "length")
        if unseen and row.kind == "trunk" and tok == self.tags.parallel_open:
            # room for k paths of one sampled token each, their closers and the summary tags
            if s.used() + 3 * self.cfg.num_paths + self.tail > s.budget:
                return self._end(row, "length")
            row.kind = "fork"  # _rebuild turns the row into k path rows

    def _append_path_close(self, row: _Row) -> None:
        p = row.path
        at = p.add(self.tags.path_close, None, True)
        row.pending.append((self.tags.path_close, p, at))
        p.closing = True

    def _close_path(self, row: _Row, logits: torch.Tensor) -> None:
        """The row just computed its </Path>: keep what the next tokens of the block need."""
        lp = self._logprobs(logits)
        p = row.path
        p.next_open_lp, p.next_close_lp = float(lp[self.tags.path_open]), float(lp[self.tags.parallel_close])
        p.last_pos = row.pos - 1
        p.closing, p.waiting = False, True

    def _budget_paths(self, rows: list[_Row]) -> None:
        """Close every open path of a block that could not otherwise fit its summary tags."""
        for s in {id(r.sample): r.sample for r in rows if r.kind == "path"}.values():
            open_ = [p for p in s.paths if not p.closing and not p.waiting]
            if open_ and s.used() + 2 * len(open_) + self.tail > s.budget:
                for r in rows:
                    if r.sample is s and r.path in open_:
                        self._append_path_close(r)

    def _end(self, row: _Row, reason: str) -> None:
        row.sample.finish = reason
        if any(owner is not None for _, owner, _ in row.pending[1:]):
            row.kind = "drain"  # one more forward for the log-probs of the injected tags
        else:
            row.pending, row.kind = [], "done"

    # ------------------------------------------------------------------ batch surgery

    def _rebuild(self, rows: list[_Row], cache, valid):
        """Fork, merge and drop rows; regather the cache when the batch changed."""
        k = self.cfg.num_paths
        plans, new_rows, changed = [], [], False
        for b, r in enumerate(rows):
            if r.kind == "done":
                changed = True
            elif r.kind == "fork":
                changed = True
                s, tok = r.sample, r.pending[0][0]
                s.paths = [_Path(j) for j in range(k)]
                for p in s.paths:
                    at = p.add(self.tags.path_open, None, True)
                    row = _Row(s, p, "path", [(tok, None, 0), (self.tags.path_open, p if p.j == 0 else None, at)], r.pos)
                    row.prefix = int(valid[b].sum()) + 1
                    plans.append([(b, 0)])
                    new_rows.append(row)
            elif r.kind == "path" and r.path.waiting:
                siblings = [x for x in rows if x.sample is r.sample and x.kind == "path"]
                if not all(x.path.waiting for x in siblings):
                    plans.append([(b, 0)])
                    new_rows.append(r)
                elif r.path.j == 0:
                    changed = True
                    plans.append([(rows.index(x), 0 if x.path.j == 0 else x.prefix) for x in siblings])
                    new_rows.append(self._merge(r.sample))
            else:
                plans.append([(b, 0)])
                new_rows.append(r)
        if not changed:
            return rows, valid
        keep = [(row, plan) for row, plan in zip(new_rows, plans) if row.kind != "done"]
        if not keep:
            return [], valid
        valid = regather(cache, valid, [plan for _, plan in keep])
        return [row for row, _ in keep], valid

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
        row = _Row(s, kind="summary", pos=pos)
        row.pending.append((self.tags.parallel_close, None, s.add(self.tags.parallel_close, close_lp, True)))
        for tok in [*self.newline, self.tags.summary_open]:
            row.pending.append((tok, s, s.add(tok, None, True)))
        if s.used() >= s.budget:
            self._end(row, "length")
        return row

    def _finish(self, s: _Sample) -> Sample:
        text = self.tokenizer.decode(s.ids, skip_special_tokens=False)
        blocks = s.blocks
        if self.cfg.variant == "seen":
            blocks = parse(text).num_blocks
        return Sample(s.prompt_index, list(s.prompt_ids), s.ids, [float(x) for x in s.lps], s.inj, text, s.finish or "length", blocks)
