"""Sequence packing with document boundaries kept in the attention, and a restorable stream position.

Documents (each already ending in EOS) are concatenated and cut into rows of exactly ``seq_len``
tokens; a document that does not fit continues at the start of the next row. No row is padded.

No cross-document attention: each row carries ``position_ids`` that restart at 0 where a document
(or the continuation of one) starts, and no ``attention_mask``. transformers 5.23 then finds the
packed documents itself (``masking_utils.find_packed_sequence_indices``: a position that does not
follow its predecessor by 1 starts a new sequence) and builds a block-diagonal causal mask for
sdpa / eager / flex attention, and flash-attention uses the same ``position_ids`` as its
varlen boundaries. tests/test_midtrain.py checks on a tiny model that a packed row gives
the same logits as running its documents one by one. The label of a document's first token is
-100, so the EOS of the previous document is not trained to predict an unrelated next document.

Resume: the stream records, after each row it yields, where it stands: the ``datasets`` state
(``IterableDataset.state_dict()``) just before the document that straddles the row boundary, how
many tokens of that document are already used, the row count, and cumulative tokens per source.
The DataLoader reads ahead, so the trainer asks for the state at the number of rows it has
actually *consumed* (``state_at``), writes it next to its checkpoint, and a restarted run
continues at exactly that token.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import numpy as np
import torch


def prepare_for_packing(model) -> None:
    """Make a plain ``model(**row)`` forward honour the packed ``position_ids``.

    transformers looks for packed documents only when there is no cache (``masking_utils``:
    ``past_key_values is None``), but a model whose config says ``use_cache`` builds an empty
    ``DynamicCache`` before the mask, silently turning a packed row into one causal sequence.
    Training never reads the cache, so turn it off.
    """
    model.config.use_cache = False


class PackedStream(torch.utils.data.IterableDataset):
    """Rows ``{"input_ids", "labels", "position_ids"}`` (each ``[seq_len]`` int64) packed from
    a ``datasets.IterableDataset`` of ``{"input_ids": list[int], "source": int}`` documents.

    ``history`` bounds how many past row-boundary states are kept for ``state_at``: it must cover
    the rows the DataLoader has read ahead of the optimizer (a few batches).
    """

    def __init__(self, docs, seq_len: int, num_sources: int, history: int = 4096):
        super().__init__()
        self.docs = docs
        self.seq_len = int(seq_len)
        self.num_sources = int(num_sources)
        self.history = int(history)
        self._start = self.initial_state()
        self._states: OrderedDict[int, dict] = OrderedDict()
        self._states[0] = self._start

    def initial_state(self) -> dict:
        return {"docs": None, "skip": 0, "rows": 0, "tokens_per_source": [0] * self.num_sources}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a state returned by ``state_at`` (a fresh iteration starts there)."""
        if len(state["tokens_per_source"]) != self.num_sources:
            raise ValueError(
                f"saved data position has {len(state['tokens_per_source'])} sources, the mixture has {self.num_sources}"
            )
        self._start = copy.deepcopy(state)
        self._states = OrderedDict([(state["rows"], self._start)])

    def state_at(self, rows: int) -> dict:
        """The stream position after exactly ``rows`` yielded rows (must still be in the history)."""
        if rows not in self._states:
            have = f"{next(iter(self._states))}..{next(reversed(self._states))}" if self._states else "none"
            raise KeyError(f"data position after {rows} rows is no longer recorded (recorded: {have}); raise `history`")
        return copy.deepcopy(self._states[rows])

    def _record(self, state: dict) -> None:
        self._states[state["rows"]] = state
        while len(self._states) > self.history:
            self._states.popitem(last=False)

    def __iter__(self):
        L = self.seq_len
        start = copy.deepcopy(self._start)
        if start["docs"] is not None:
            self.docs.load_state_dict(start["docs"])
        skip, rows = start["skip"], start["rows"]
        counts = np.asarray(start["tokens_per_source"], dtype=np.int64)
        doc_state = start["docs"]  # datasets state just before the document being consumed
        ids, labels, pos, src = [], [], [], []
        filled = 0
        for doc in self.docs:
            toks = np.asarray(doc["input_ids"], dtype=np.int64)
            s = int(doc["source"])
            i, skip = skip, 0
            while i < len(toks):
                take = min(L - filled, len(toks) - i)
                piece = toks[i : i + take]
                lab = piece.copy()
                if i == 0:
                    lab[0] = -100  # the previous document's EOS does not predict this one
                ids.append(piece)
                labels.append(lab)
                pos.append(np.arange(take, dtype=np.int64))
                src.append((s, take))
                filled += take
                i += take
                if filled == L:
                    rows += 1
                    for k, n in src:
                        counts[k] += n
                    row = {
                        "input_ids": torch.from_numpy(np.concatenate(ids)),
                        "labels": torch.from_numpy(np.concatenate(labels)),
                        "position_ids": torch.from_numpy(np.concatenate(pos)),
                    }
                    nxt = i if i < len(toks) else 0  # tokens of this document already used
                    self._record(
                        {
                            "docs": doc_state if nxt else self.docs.state_dict(),
                            "skip": nxt,
                            "rows": rows,
                            "tokens_per_source": counts.tolist(),
                        }
                    )
                    ids, labels, pos, src, filled = [], [], [], [], 0
                    yield row
            doc_state = self.docs.state_dict()
