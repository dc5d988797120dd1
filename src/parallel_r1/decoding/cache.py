"""A key/value cache whose rows can be compacted between decoding steps, and the slot streams.

The engine keeps one batch row per *sample*. A row holds the sample's prompt, trunk and
summaries, and while a block is open also its k paths: every slot carries a *stream* id
(``-1`` invalid: padding or an idle query's slot; ``0`` shared: prompt, trunk, summaries and
merged paths; ``j + 1``: path j of the open block). A query of stream s sees the valid slots of
stream 0 and of its own stream (:func:`visible`), which is the Unseen training layout: paths
see the prefix and themselves, never each other. So a fork copies nothing (the k paths' first
tokens are k more queries in the same row) and a merge copies nothing (the block's path slots
are relabelled 0, and the summary sees them). Keys are stored with their rotary positions
already applied, so a slot's place in the row does not matter; attention over a set of keys
is order-free.

:func:`regather` rebuilds the batch from chosen old rows, keeping only their valid slots: it
expands the distinct prompts' prefill into one row per sample, and drops finished samples and
squeezes out invalid slots. It is the only operation that copies cache contents.

transformers' ``DynamicLayer`` concatenates on every step (a full copy of the cache per
token); :class:`SlotLayer` writes into a buffer with spare capacity instead.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer

GROW = 128  # spare slots allocated at once


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
        self._k, self._v = self._alloc(keys, keys.shape[-2] + GROW), self._alloc(values, values.shape[-2] + GROW)
        self._write(keys, values)

    @staticmethod
    def _alloc(like: torch.Tensor, capacity: int) -> torch.Tensor:
        return like.new_empty((*like.shape[:2], capacity, like.shape[-1]))

    def _write(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        n = self.length + keys.shape[-2]
        if n > self._k.shape[-2]:
            k, v = self._alloc(self._k, n + GROW), self._alloc(self._v, n + GROW)
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


def visible(slot_streams: torch.Tensor, query_streams: torch.Tensor) -> torch.Tensor:
    """Which slots each query sees (the Unseen layout, module doc).

    Args:
        slot_streams: int ``[B, S]``, stream id per cache slot (-1 invalid).
        query_streams: int ``[B, q]``, stream id per query (-1: padding query, sees nothing).
    Returns:
        bool ``[B, q, S]``.
    """
    k, q = slot_streams[:, None, :], query_streams[:, :, None]
    return (k >= 0) & (q >= 0) & ((k == 0) | (k == q))


def regather(cache: Cache, streams: torch.Tensor, plan: list[int]) -> tuple[torch.Tensor, int]:
    """Rebuild the batch in place: new row b = the valid slots of old row ``plan[b]``.

    Args:
        cache: the engine's cache, rows ``[B, H, S, D]`` per layer.
        streams: int ``[B, S]`` on the host, stream id per slot (-1 invalid).
        plan: one old row per new row (an old row may be repeated: one prompt, n samples).
    Returns:
        the new host ``streams`` ``[B', S']`` (S' = the longest new row; shorter rows are padded
        at the end with invalid slots), and the bytes of keys/values written.
    """
    old_b, s = streams.shape
    slots = [(streams[r] >= 0).nonzero().squeeze(1) for r in range(old_b)]  # host tensors: no device sync
    width = max((len(slots[r]) for r in plan), default=0)
    index = torch.zeros(len(plan), width, dtype=torch.long)
    new = torch.full((len(plan), width), -1, dtype=streams.dtype)
    for b, r in enumerate(plan):
        n = len(slots[r])
        index[b, :n] = slots[r] + r * s
        new[b, :n] = streams[r, slots[r]]
    written = 0
    flat = None
    for layer in cache.layers:
        if not layer.is_initialized:
            continue
        if flat is None:
            flat = index.reshape(-1).to(layer.keys.device, non_blocking=True)
        h, dk, dv = layer.keys.shape[1], layer.keys.shape[-1], layer.values.shape[-1]
        k = layer.keys.transpose(1, 2).reshape(old_b * s, h, dk).index_select(0, flat)
        v = layer.values.transpose(1, 2).reshape(old_b * s, h, dv).index_select(0, flat)
        layer.set(k.view(len(plan), width, h, dk).transpose(1, 2), v.view(len(plan), width, h, dv).transpose(1, 2))
        written += (k.numel() + v.numel()) * k.element_size()
    return new, written


def join(cache: Cache, streams: torch.Tensor, other: Cache, other_streams: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Append ``other``'s rows to ``cache`` in place (new samples joining a running batch).

    Args:
        cache, other: caches with rows ``[B, H, S, D]`` and ``[B', H, S', D]`` per layer.
        streams, other_streams: their host stream ids ``[B, S]``, ``[B', S']``.
    Returns:
        the host streams ``[B + B', max(S, S')]`` (the shorter side padded with invalid slots,
        whose keys and values are zeros: masked out, and finite), and the bytes written.
    """
    b, s = streams.shape
    b2, s2 = other_streams.shape
    width = max(s, s2)
    new = torch.full((b + b2, width), -1, dtype=streams.dtype)
    new[:b, :s], new[b:, :s2] = streams, other_streams
    written = 0
    for mine, theirs in zip(cache.layers, other.layers):
        parts = []
        for x, y in ((mine.keys, theirs.keys), (mine.values, theirs.values)):
            out = x.new_zeros((b + b2, x.shape[1], width, x.shape[-1]))
            out[:b, :, :s], out[b:, :, :s2] = x, y
            parts.append(out)
            written += out.numel() * out.element_size()
        mine.set(*parts)
    return new, written
