"""``sdpa_gqa_fold``: sdpa attention for grouped-query models under a 4-D mask, without copying keys.

With a mask and a query wider than one token, transformers' sdpa attention (5.23
``integrations/sdpa_attention.py``) copies every layer's keys and values once per query-head
group (``repeat_kv``), because CUDA's masked sdpa kernels take no grouped-query heads. The
decoding engine always passes a mask (the Unseen layout) and its query is >= 2 tokens wide while a
row is inside a block: for Qwen3-4B at 64 rows x 3.5k cache slots that is ~3.7 GB copied per layer
per decode step (docs/decoding.md, "Speed").

Folding the groups into the query axis gives the same attention without the copy: the queries of
the ``G`` heads that share a key/value head become ``G × L`` query rows of that head
(``[B, Hkv, G·L, D]``), and the mask is repeated ``G`` times along its query axis (bools: small
next to the cache). Registered with transformers' ``AttentionInterface`` (and its mask
function, sdpa's) under :data:`NAME`; the engine switches a model to it while it decodes on an
accelerator (CPU keeps torch's own grouped-query kernel, ``engine.cpu_sdpa_gqa``).
"""

from __future__ import annotations

import contextlib

import torch

NAME = "sdpa_gqa_fold"


def fold_gqa_attention(query, key, value, attention_mask, scaling=None, dropout: float = 0.0):
    """``query`` ``[B, Hq, L, D]``, ``key`` / ``value`` ``[B, Hkv, S, D]`` (``Hq = G·Hkv``),
    ``attention_mask`` ``[B, 1 or Hq, L, S]`` (bool: True attends; or additive float) ->
    attention output ``[B, Hq, L, D]``, equal to sdpa over ``repeat_kv``'d keys and values."""
    b, hq, q_len, d = query.shape
    hkv = key.shape[1]
    g = hq // hkv
    q = query.reshape(b, hkv, g * q_len, d)  # head h = kv head h // g: its queries, group-major
    mask = attention_mask
    if mask is not None:
        if mask.shape[1] == 1:
            mask = mask.expand(b, 1, q_len, mask.shape[-1]).repeat(1, 1, g, 1)  # [B, 1, G·L, S]
        else:  # a per-head mask folds like the queries
            mask = mask.reshape(b, hkv, g * q_len, mask.shape[-1])
    out = torch.nn.functional.scaled_dot_product_attention(
        q, key, value, attn_mask=mask, dropout_p=dropout, scale=scaling
    )
    return out.reshape(b, hq, q_len, d)


def sdpa_gqa_fold_forward(
    module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs
):
    """transformers' attention-function signature; returns ``(output [B, L, Hq, D], None)`` as
    ``sdpa_attention_forward`` does. Anything but the masked multi-token grouped-query case goes
    to transformers' own sdpa."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = getattr(module, "num_key_value_groups", 1)
    if groups == 1 or attention_mask is None or query.shape[2] == 1 or kwargs.get("position_bias") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, is_causal, **kwargs)
    dropout = dropout if module.training else 0.0
    out = fold_gqa_attention(query, key, value, attention_mask, scaling=scaling, dropout=dropout)
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Make :data:`NAME` a transformers attention implementation (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, sdpa_gqa_fold_forward)
    if NAME not in ALL_MASK_ATTENTION_FUNCTIONS:
        AttentionMaskInterface.register(NAME, sdpa_mask)


@contextlib.contextmanager
def folded_gqa(model, device: torch.device):
    """While decoding on an accelerator, a grouped-query sdpa model attends through
    :data:`NAME`; its configured implementation is put back afterwards."""
    config = getattr(model, "config", None)
    impl = getattr(config, "_attn_implementation", None)
    kv = getattr(config, "num_key_value_heads", None)
    heads = getattr(config, "num_attention_heads", None)
    if device.type == "cpu" or impl != "sdpa" or not kv or not heads or kv == heads:
        yield
        return
    register()
    configs = [
        m.config for m in model.modules() if getattr(getattr(m, "config", None), "_attn_implementation", None) == "sdpa"
    ]
    for c in configs:
        c._attn_implementation = NAME
    try:
        yield
    finally:
        for c in configs:
            c._attn_implementation = "sdpa"
