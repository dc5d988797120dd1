"""parallel_r1.attention: grouped-query sdpa under a 4-D mask by folding head groups into the query axis."""

from __future__ import annotations

import pytest
import torch

from parallel_r1.attention import NAME, fold_gqa_attention, folded_gqa


def _repeat_kv_sdpa(q, k, v, mask):
    g = q.shape[1] // k.shape[1]
    k, v = (x.repeat_interleave(g, dim=1) for x in (k, v))
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)


@pytest.mark.parametrize("groups,q_len,per_head", [(3, 2, False), (2, 5, False), (4, 1, False), (2, 3, True)])
def test_folding_equals_sdpa_over_repeated_keys(groups, q_len, per_head):
    g = torch.Generator().manual_seed(groups * 10 + q_len)
    b, hkv, s, d = 2, 2, 9, 8
    q = torch.randn(b, hkv * groups, q_len, d, generator=g, dtype=torch.float64)
    k, v = (torch.randn(b, hkv, s, d, generator=g, dtype=torch.float64) for _ in range(2))
    heads = hkv * groups if per_head else 1
    mask = torch.rand(b, heads, q_len, s, generator=g) < 0.6
    mask[..., 0] = True  # every query sees something
    want = _repeat_kv_sdpa(q, k, v, mask)
    torch.testing.assert_close(fold_gqa_attention(q, k, v, mask), want, atol=1e-6, rtol=0)
    additive = torch.zeros(mask.shape, dtype=q.dtype).masked_fill(~mask, float("-inf"))
    torch.testing.assert_close(fold_gqa_attention(q, k, v, additive), want, atol=1e-6, rtol=0)


def test_a_gqa_model_gives_the_same_logits_through_the_folded_attention(tiny_tokenizer, tags):
    from parallel_r1.models import build_tiny_model
    from parallel_r1.structure import build_unseen_layout

    torch.manual_seed(0)
    model, _ = build_tiny_model("qwen2", tokenizer=tiny_tokenizer)
    model.eval()
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # grouped-query heads
    text = "We add.<Parallel><Path>1 + 2 = 3</Path><Path>2 + 1 = 3</Path></Parallel>\n<Summary>3</Summary>"
    ids = torch.tensor([tiny_tokenizer(text, add_special_tokens=False).input_ids] * 2)
    layout = build_unseen_layout(ids, tags)
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=layout.attention_mask, position_ids=layout.position_ids).logits
        with folded_gqa(model, torch.device("cuda")):  # the switch the engine makes on an accelerator
            assert model.config._attn_implementation == NAME
            got = model(input_ids=ids, attention_mask=layout.attention_mask, position_ids=layout.position_ids).logits
    assert model.config._attn_implementation == "sdpa"  # put back
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)
    with folded_gqa(model, torch.device("cpu")):  # CPU keeps torch's own grouped-query kernel
        assert model.config._attn_implementation == "sdpa"
