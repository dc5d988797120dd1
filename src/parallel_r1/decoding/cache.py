"""A key/value cache whose rows can be forked, merged and compacted between decoding steps.

The engine keeps one batch row per decoding stream (a trunk, or one path of a block). Every
step appends one slot per row and per input token; a per-row ``valid`` mask says which slots
hold real keys (idle rows and padding write slots nobody may see). Between steps the engine
rebuilds the batch with :func:`regather`: every new row is a concatenation of the valid slots
of some old rows. That one operation forks a trunk into k paths (the same row k times: the
prefix is copied, never recomputed), merges a block's paths into one row for the summary
(path 1's row plus the path-only slots of the others), drops finished rows and squeezes out
invalid slots. Keys are stored with their rotary positions already applied, so a slot's
place in the row does not matter; attention over a set of keys is order-free.

transformers' ``DynamicLayer`` concatenates on every step (a full copy of the cache per
token); :class:`SlotLayer` writes into a buffer with spare capacity instead.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer

_GROW = 128  # spare slots allocated at once


class SlotLayer(DynamicLayer):
    """One layer's keys/values ``[B, H, S, D]`` in a buffer with spare capacity along S."""

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.length = 0
        self._k = key_states.new_empty((*key_states.shape[:2], 0, key_states.shape[-1]))
        self._v = value_states.new_empty((*value_states.shape[:2], 0, value_states.shape[-1]))
        self.is_initialized = True

    def set(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Replace the contents (after a regather), keeping spare capacity."""
        if not self.is_initialized:
            self.lazy_initialization(keys, values)
        self.length = 0
        self._k, self._v = self._alloc(keys, keys.shape[-2] + _GROW), self._alloc(values, values.shape[-2] + _GROW)
        self._write(keys, values)

    @staticmethod
    def _alloc(like: torch.Tensor, capacity: int) -> torch.Tensor:
        return like.new_empty((*like.shape[:2], capacity, like.shape[-1]))

    def _write(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        n = self.length + keys.shape[-2]
        if n > self._k.shape[-2]:
            k, v = self._alloc(self._k, n + _GROW), self._alloc(self._v, n + _GROW)
            k[:, :, : self.length] = self._k[:, :, : self.length]
            v[:, :, : self.length] = self._v[:, :, : self.length]
            self._k, self._v = k, v
        self._k[:, :, self.length : n] = keys
        self._v[:, :, self.length : n] = values
        self.length = n
        self.keys, self.values = self._k[:, :, :n], self._v[:, :, :n]

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self._write(key_states, value_states)
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length if self.is_initialized else 0


def new_cache() -> Cache:
    return Cache(layer_class_to_replicate=SlotLayer)


def regather(cache: Cache, valid: torch.Tensor, plans: list[list[tuple[int, int]]]) -> torch.Tensor:
    """Rebuild the batch in place: new row b = valid slots of old rows, per ``plans[b]``.

    Args:
        cache: the engine's cache, rows ``[B, H, S, D]`` per layer.
        valid: bool ``[B, S]``, which slots of each old row hold real keys.
        plans: one entry per new row, a list of ``(old_row, skip)``: the valid slots of
            ``old_row`` in slot order, without the first ``skip`` of them.
    Returns:
        the new ``valid`` mask, bool ``[B', S']`` (S' = the longest new row; shorter rows are
        padded at the end with invalid slots).
    """
    old_b, s = valid.shape
    slots = [valid[r].nonzero().squeeze(1) for r in range(old_b)]
    rows = [torch.cat([slots[r][skip:] + r * s for r, skip in plan]) if plan else valid.new_zeros(0, dtype=torch.long) for plan in plans]
    width = max((len(x) for x in rows), default=0)
    index = torch.zeros(len(rows), width, dtype=torch.long, device=valid.device)
    new_valid = torch.zeros(len(rows), width, dtype=torch.bool, device=valid.device)
    for b, x in enumerate(rows):
        index[b, : len(x)] = x
        new_valid[b, : len(x)] = True
    flat = index.reshape(-1)
    for layer in cache.layers:
        if not layer.is_initialized:
            continue
        h, dk, dv = layer.keys.shape[1], layer.keys.shape[-1], layer.values.shape[-1]
        k = layer.keys.transpose(1, 2).reshape(old_b * s, h, dk).index_select(0, flat)
        v = layer.values.transpose(1, 2).reshape(old_b * s, h, dv).index_select(0, flat)
        layer.set(k.view(len(rows), width, h, dk).transpose(1, 2), v.view(len(rows), width, h, dv).transpose(1, 2))
    return new_valid
