"""The decoding engine: exact log-probs under the training layout, forced-token layout, budgets, bad input."""

import os
import subprocess
import sys

import pytest
import torch

from conftest import max_gap, scripted_setup, training_logprobs, with_tag_bias
from parallel_r1.decoding import DecodingConfig, ParallelEngine
from parallel_r1.decoding.sampling import sample_tokens
from parallel_r1.format import parse
from parallel_r1.models import build_tiny_model
from parallel_r1.structure import TagIds


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("num_paths", [2, 3])
def test_unseen_logprobs_equal_a_training_forward(arch, num_paths):
    model, tok = build_tiny_model(arch)
    tags = TagIds.from_tokenizer(tok)
    model = with_tag_bias(model, tags)
    cfg = DecodingConfig(num_paths=num_paths, max_new_tokens=90, max_path_tokens=14, max_blocks=3, seed=0, batch_size=5)
    samples = ParallelEngine(model, tok, cfg).generate(["hello there", "a b c d e f g h i", "x"], n=3)
    assert [s.prompt_index for s in samples] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    blocks = sum(s.num_blocks for s in samples)
    assert blocks >= 5, "the biased model should open blocks"
    for s in samples:
        assert len(s.completion_ids) == len(s.logprobs) == len(s.injected) <= 90
        report = parse(s.text)
        assert report.num_blocks >= s.num_blocks
        assert all(n == num_paths for n in report.paths_per_block)
    assert max_gap(model, tags, samples, "unseen") <= 1e-4


def test_unseen_exact_at_another_temperature_and_with_top_p():
    model, tok = build_tiny_model("llama")
    tags = TagIds.from_tokenizer(tok)
    model = with_tag_bias(model, tags)
    cfg = DecodingConfig(max_new_tokens=60, temperature=0.7, top_p=0.9, path_temperature=None, seed=3)
    samples = ParallelEngine(model, tok, cfg).generate(["one two", "three"], n=2)
    assert max_gap(model, tags, samples, "unseen", temperature=0.7) <= 1e-4


def test_seen_is_causal_sampling_with_the_same_return_shape():
    model, tok = build_tiny_model("qwen2")
    tags = TagIds.from_tokenizer(tok)
    model = with_tag_bias(model, tags)
    samples = ParallelEngine(model, tok, DecodingConfig(variant="seen", max_new_tokens=40, seed=0)).generate(
        ["hi", "a longer prompt here"], n=2
    )
    assert len(samples) == 4 and not any(any(s.injected) for s in samples)
    assert max_gap(model, tags, samples, "seen") <= 1e-4


def test_seed_makes_generation_reproducible():
    model, tok = build_tiny_model("llama")
    model = with_tag_bias(model, TagIds.from_tokenizer(tok))
    cfg = DecodingConfig(max_new_tokens=40, seed=7)
    a = ParallelEngine(model, tok, cfg).generate(["abc"], n=3)
    b = ParallelEngine(model, tok, cfg).generate(["abc"], n=3)
    assert [s.completion_ids for s in a] == [s.completion_ids for s in b]
    assert len({tuple(s.completion_ids) for s in a}) > 1


def test_forced_tokens_give_the_canonical_layout_and_respect_max_blocks():
    model, tok, tags, a, s = scripted_setup()
    prompt = [a, a, a]  # positions 0-2
    cfg = DecodingConfig(num_paths=2, max_blocks=2, max_new_tokens=200, temperature=0)
    (sample,) = ParallelEngine(model, tok, cfg).generate([prompt])
    nl = tok.encode("\n", add_special_tokens=False)
    block = (
        [tags.parallel_open]
        + 2 * [tags.path_open, a, a, tags.path_close]
        + [tags.parallel_close, *nl, tags.summary_open, s, s, tags.summary_close]
    )
    assert sample.completion_ids == [a, a, a] + block + block
    assert sample.finish_reason == "max_blocks" and sample.num_blocks == 2
    injected = [t for t, inj in zip(sample.completion_ids, sample.injected) if inj]
    assert injected == 2 * ([tags.path_open, tags.path_open, tags.parallel_close, *nl, tags.summary_open])
    assert parse(sample.text, strict=True).format_ok


def test_budgets_close_paths_and_never_overrun():
    model, tok, tags, a, s = scripted_setup(path_len=50)
    prompt = [a, a, a]
    cfg = DecodingConfig(num_paths=3, max_new_tokens=200, max_path_tokens=6, temperature=0)
    (sample,) = ParallelEngine(model, tok, cfg).generate([prompt])
    report = parse(sample.text)
    assert report.num_blocks >= 1
    first = sample.completion_ids.index(tags.parallel_open)
    path = sample.completion_ids[first + 1 : first + 7]
    assert path == [tags.path_open, a, a, a, a, tags.path_close] and sample.injected[first + 6]
    for budget in (20, 27, 31, 40):
        cfg = DecodingConfig(num_paths=3, max_new_tokens=budget, max_path_tokens=50, temperature=0)
        (sample,) = ParallelEngine(model, tok, cfg).generate([prompt])
        assert len(sample.completion_ids) <= budget and sample.finish_reason == "length"
        blocks = parse(sample.text).blocks
        assert all(len(b.paths) == 3 for b in blocks)


def test_bad_input_is_refused_before_decoding():
    model, tok = build_tiny_model("llama")
    engine = ParallelEngine(model, tok, DecodingConfig(max_new_tokens=5))
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        engine.generate(["ok", ""])
    with pytest.raises(ValueError, match="context"):
        engine.generate(["ok", [5] * 5000])
    with pytest.raises(ValueError, match="num_paths"):
        DecodingConfig(num_paths=1)
    bare, bare_tok = build_tiny_model("llama", with_tags=False)
    with pytest.raises(ValueError, match="no single token for <Parallel>"):
        ParallelEngine(bare, bare_tok, DecodingConfig())
    _, tagged_tok = build_tiny_model("llama")
    with pytest.raises(ValueError, match="embedding has only"):
        ParallelEngine(bare, tagged_tok, DecodingConfig())


def test_sampler_against_a_brute_force_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0]]).repeat(4, 1)
    gen = torch.Generator().manual_seed(0)
    draws = torch.tensor([sample_tokens(logits, [1.0] * 4, top_p=0.8, generator=gen) for _ in range(3000)]).flatten()
    p = torch.softmax(logits[0], -1)
    keep = [i for i in range(5) if p[:i].sum() < 0.8]  # brute force: tokens whose higher-ranked mass < top_p
    expected = torch.zeros(5)
    expected[keep] = p[keep] / p[keep].sum()
    freq = torch.bincount(draws, minlength=5).float() / len(draws)
    assert (freq - expected).abs().max() < 0.03
    assert set(sample_tokens(logits, [1.0, 1.0, 0.0, 1.0], top_k=1, generator=gen)) == {0}
    assert 0 not in sample_tokens(logits, [0.0] * 4, banned=[[0]] * 4)


def test_unseen_logprobs_exact_on_smollm2(smollm2_path):
    from parallel_r1.models import add_tag_tokens, load_model, load_tokenizer
    from parallel_r1.prompts import build_prompt

    tok = load_tokenizer(smollm2_path)
    model = load_model(smollm2_path, dtype=torch.float32)
    add_tag_tokens(model, tok)
    tags = TagIds.from_tokenizer(tok)
    model = with_tag_bias(model, tags, {tags.parallel_open: 12.0, tags.path_close: 6.0, tags.summary_close: 8.0})
    prompts = [
        build_prompt(q, tok, "parallel_v3")
        for q in ("What is 2 + 3?", "Tom has 4 apples and eats one. How many are left?")
    ]
    cfg = DecodingConfig(max_new_tokens=40, max_path_tokens=10, seed=0)
    samples = ParallelEngine(model, tok, cfg).generate(prompts, n=2)
    assert sum(s.num_blocks for s in samples) >= 2
    assert max_gap(model, tags, samples, "unseen") <= 1e-4


def test_generate_command_appends_samples(tiny_checkpoint, tmp_path):
    from parallel_r1.cli import main
    from parallel_r1.io import read_jsonl

    out = tmp_path / "s.jsonl"
    argv = [
        "generate",
        "--model",
        str(tiny_checkpoint),
        "--problem",
        "1+1?",
        "--problem",
        "2+2?",
        "--n",
        "2",
        "--max-new-tokens",
        "12",
        "--seed",
        "0",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    rows = list(read_jsonl(out))
    assert [r["problem_id"] for r in rows] == ["problem-0"] * 2 + ["problem-1"] * 2
    assert all(0 < r["length"] <= 12 for r in rows)
    assert main(["generate", "--model", str(tmp_path / "nope"), "--problem", "x"]) == 2


def test_chunked_batches_stay_exact_and_a_tiny_cache_budget_is_refused():
    model, tok = build_tiny_model("llama")
    tags = TagIds.from_tokenizer(tok)
    model = with_tag_bias(model, tags)
    base = dict(max_new_tokens=60, max_path_tokens=12, seed=1, batch_size=8)
    probe = ParallelEngine(model, tok, DecodingConfig(**base))
    per_sample = 2 * (4 + 60 + 128) * probe.kv_bytes_per_token()  # the engine's estimate for a <=4-token prompt
    engine = ParallelEngine(model, tok, DecodingConfig(**base, max_cache_bytes=2 * per_sample))
    samples = engine.generate(["a b", "c d e"], n=3)
    assert engine.stats["chunks"] == 3  # 6 samples, 2 fit the budget at once
    assert sum(s.num_blocks for s in samples) >= 2
    assert max_gap(model, tags, samples, "unseen") <= 1e-4
    with pytest.raises(ValueError, match="max_cache_bytes 1000 is below one sample's cache"):
        ParallelEngine(model, tok, DecodingConfig(**base, max_cache_bytes=1000)).generate(["a b"])


class Traced(torch.Tensor):
    """Tensors derived from the model's logits; counts every read of their values on the host."""

    reads = 0
    READS = (torch.Tensor.tolist, torch.Tensor.item, torch.Tensor.__float__, torch.Tensor.__int__,
             torch.Tensor.__bool__, torch.Tensor.__index__)  # fmt: skip

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in cls.READS:
            cls.reads += 1
        return super().__torch_function__(func, types, args, kwargs or {})


class TracedLM(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.inner, self.config, self.generation_config = model, model.config, model.generation_config

    def get_input_embeddings(self):
        return self.inner.get_input_embeddings()

    def forward(self, **kw):
        out = self.inner(**kw)
        out.logits = out.logits.as_subclass(Traced)
        return out


def test_at_most_one_host_read_per_decode_step():
    model, tok = build_tiny_model("qwen2")
    tags = TagIds.from_tokenizer(tok)
    model = with_tag_bias(model, tags)
    engine = ParallelEngine(
        TracedLM(model), tok, DecodingConfig(num_paths=3, max_new_tokens=60, max_path_tokens=10, seed=2, batch_size=4)
    )
    Traced.reads = 0
    samples = engine.generate(["one two", "three", "four five six"], n=2)
    st = engine.stats
    assert st["forks"] >= 3 and st["chunks"] == 2
    # every read of a model-derived value is one of the counted ones: the sampled ids once per step,
    # the log-probs once per chunk
    assert Traced.reads == st["step_syncs"] + st["chunk_syncs"]
    assert st["step_syncs"] <= st["forwards"] and st["chunk_syncs"] == st["chunks"]
    assert st["copy_bytes"] > 0  # prompt copies for n=2 and dropped rows; forks copy nothing
    # the slot-stream matrix crosses to the device once per chunk and after a merge or compaction,
    # not at every step (the decode steps append their columns to the device copy)
    assert st["chunks"] <= st["streams_uploads"] < st["forwards"] - st["chunks"]
    assert max_gap(model, tags, samples, "unseen") <= 1e-4


def test_bf16_autocast_rollouts_match_a_bf16_trainer():
    """The trainer under bf16 autocast scores in bf16; a float32 rollout then differs from it by the
    bf16 rounding, a bf16 rollout only by batching/kernel order (docs/decoding.md)."""
    model, tok = build_tiny_model("llama")
    tags = TagIds.from_tokenizer(tok)
    model = with_tag_bias(model, tags)
    cfg = dict(max_new_tokens=60, max_path_tokens=12, seed=4)
    bf16 = ParallelEngine(model, tok, DecodingConfig(**cfg, dtype="bfloat16")).generate(["hello there", "x y z"], n=2)
    assert sum(s.num_blocks for s in bf16) >= 1
    # on the same tokens: the bf16 rollout's log-probs, and what a float32 rollout gives (the
    # float32 trainer's, which it equals to 1e-4), each against the bf16 trainer
    fp32 = torch.cat([training_logprobs(model, tags, s, "unseen", 1.0) for s in bf16])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        trainer = torch.cat([training_logprobs(model, tags, s, "unseen", 1.0) for s in bf16])
    rollout = torch.cat([torch.tensor(s.logprobs) for s in bf16])
    gap_bf16, gap_fp32 = (rollout - trainer).abs(), (fp32 - trainer).abs()
    assert gap_bf16.max() <= 0.05
    assert gap_bf16.mean() < 0.5 * gap_fp32.mean(), (gap_bf16.mean(), gap_fp32.mean())
    with pytest.raises(ValueError, match="dtype 'fp8'"):
        DecodingConfig(dtype="fp8")


def test_devices_and_attention_are_checked_before_any_model_loads(tmp_path):
    from types import SimpleNamespace

    from parallel_r1.devices import check_unseen_attention, resolve_device, resolve_dtype
    from parallel_r1.train.rl import RLConfig

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(ValueError, match=rf"device 'cuda:{n}': this machine has"):
        resolve_device(f"cuda:{n}")
    assert (
        resolve_device("cpu") == torch.device("cpu")
        and resolve_dtype("bf16") is torch.bfloat16
        and resolve_dtype("auto") is None
    )
    for impl in ("flash_attention_2", "flash_attention_3", "flex_attention", "eager"):
        with pytest.raises(ValueError, match=rf"'{impl}' ignores the Unseen layout's 4-D attention mask.*'sdpa'"):
            check_unseen_attention(SimpleNamespace(config=SimpleNamespace(_attn_implementation=impl)))
    check_unseen_attention("sdpa")
    model, tok = build_tiny_model("llama")
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="flash_attention_2"):
        ParallelEngine(model, tok, DecodingConfig())
    ParallelEngine(model, tok, DecodingConfig(variant="seen"))  # causal: any implementation will do
    with pytest.raises(ValueError, match="rollout_batch_size: must be > 0"):
        RLConfig(output_dir=str(tmp_path), rollout_batch_size=0, use_cpu=True, report_to="none")


def test_one_autocast_region_per_generate_call(monkeypatch, tiny_tokenizer):
    """bf16 decoding of an fp32 model enters autocast once per call, not once per forward: leaving
    the outermost region clears torch's cast cache, so each forward would re-cast every weight."""
    model, _ = build_tiny_model("llama", tokenizer=tiny_tokenizer)
    entered, real = [], torch.autocast

    class Counting(real):
        def __enter__(self):
            entered.append(self.fast_dtype)
            return super().__enter__()

    monkeypatch.setattr(torch, "autocast", Counting)
    engine = ParallelEngine(model, tiny_tokenizer, DecodingConfig(dtype="bfloat16", max_new_tokens=12, seed=0))
    engine.generate(["What is 1 + 2?"], n=2)
    assert engine.stats["forwards"] > 3 and entered == [torch.bfloat16]


def test_eager_attention_breaks_the_unseen_layout_and_is_refused(tiny_tokenizer, tags):
    """Eager attention adds the bool 4-D mask to the scores (+1 / +0): against sdpa on the same
    Unseen layout, rows see what they must not. Hence only sdpa is accepted for Unseen."""
    from parallel_r1.devices import check_unseen_attention
    from parallel_r1.structure import build_unseen_layout

    text = "We add.<Parallel><Path>1 + 2 = 3</Path><Path>2 + 1 = 3</Path></Parallel>\n<Summary>3</Summary>"
    ids = torch.tensor([tiny_tokenizer(text, add_special_tokens=False).input_ids])
    layout = build_unseen_layout(ids, tags)
    torch.manual_seed(0)
    model, _ = build_tiny_model("llama", tokenizer=tiny_tokenizer)
    model.eval()
    with torch.no_grad():
        sdpa = model(input_ids=ids, attention_mask=layout.attention_mask, position_ids=layout.position_ids).logits
        model.config._attn_implementation = "eager"
        eager = model(input_ids=ids, attention_mask=layout.attention_mask, position_ids=layout.position_ids).logits
        float_mask = torch.zeros(layout.attention_mask.shape).masked_fill(~layout.attention_mask, float("-inf"))
        eager_float = model(input_ids=ids, attention_mask=float_mask, position_ids=layout.position_ids).logits
    assert (eager - sdpa).abs().max() > 1e-2  # the bool mask did not mask
    torch.testing.assert_close(eager_float, sdpa, atol=1e-5, rtol=1e-5)  # same layout, applied as a mask: equal
    with pytest.raises(ValueError, match="'eager' ignores"):
        check_unseen_attention(model)


def test_cpu_decoding_hands_grouped_heads_to_sdpa_without_copying_them(monkeypatch):
    # docs/decoding.md, "Speed": with its 4-D mask the engine would otherwise copy every layer's
    # keys/values once per query-head group at every step; exactness is the tests above
    from transformers.integrations import sdpa_attention

    copies = []
    real = sdpa_attention.repeat_kv
    monkeypatch.setattr(sdpa_attention, "repeat_kv", lambda *a: copies.append(1) or real(*a))
    monkeypatch.delenv("TRANSFORMERS_SDPA_FORCE_GQA", raising=False)
    model, tok = build_tiny_model("llama")
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    ParallelEngine(
        with_tag_bias(model, TagIds.from_tokenizer(tok)), tok, DecodingConfig(max_new_tokens=30, seed=0)
    ).generate(["hello"], n=2)
    assert copies == []
    assert "TRANSFORMERS_SDPA_FORCE_GQA" not in os.environ  # only while the engine decodes
    with torch.no_grad():
        model(input_ids=torch.tensor([[5, 6, 7]]), attention_mask=torch.ones(1, 1, 3, 3, dtype=torch.bool).tril())
    assert copies, "a masked forward outside the engine keeps transformers' own choice"


@pytest.mark.parametrize("given, expected", [(None, "AUTO"), ("", ""), ("AVX2", "AVX2")])
def test_importing_the_package_chooses_mkl_kernels_unless_the_user_did(given, expected):
    # docs/decoding.md, "Speed": MKL's default kernels for 2-4-row products are slow on AMD CPUs
    env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
    if given is not None:
        env["MKL_CBWR"] = given
    probe = "import os, parallel_r1; print(repr(os.environ.get('MKL_CBWR')))"
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == repr(expected)


def test_per_row_settings_and_samplers_equal_each_row_drawn_alone():
    """draw() with one top-p / top-k / generator per row gives each row what it draws alone."""
    from parallel_r1.decoding.sampling import draw

    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(1))
    temps, top_p, top_k = [1.0, 0.7, 0.0, 1.3], [1.0, 0.5, 1.0, 0.9], [0, 7, 0, 3]
    for trial in range(20):
        gens = [torch.Generator().manual_seed(100 * trial + i) for i in range(4)]
        together = draw(logits, temps, top_p, top_k, [[]] * 4, gens).tolist()
        alone = [
            draw(logits[i : i + 1], [temps[i]], top_p[i], top_k[i], None, torch.Generator().manual_seed(100 * trial + i))
            .item()
            for i in range(4)
        ]  # fmt: skip
        assert together == alone
        assert together[1] in logits[1].topk(7).indices.tolist() and together[3] in logits[3].topk(3).indices.tolist()
        assert together[2] == logits[2].argmax().item()


def test_a_sample_is_the_same_whatever_shares_its_batch():
    """Continuous batching: samples that join a running batch, leave it early or are cancelled
    change nothing for the others; each equals its offline generate() and a training forward."""
    from dataclasses import replace

    model, tok = build_tiny_model("qwen2")
    tags = TagIds.from_tokenizer(tok)
    model = with_tag_bias(model, tags)
    base = DecodingConfig(num_paths=2, max_new_tokens=50, max_path_tokens=10, seed=3, batch_size=1)
    other = replace(base, num_paths=3, temperature=0.7, top_k=5, max_blocks=2, seed=9)
    greedy = replace(base, temperature=0.0, seed=11, max_new_tokens=30)  # paths still sample at 1.0
    engine = ParallelEngine(model, tok, base)
    want_a = engine.generate(["hello there"], n=2)  # batch_size 1: each sample alone
    want_b = ParallelEngine(model, tok, other).generate(["x y z w"], n=1)
    want_c = ParallelEngine(model, tok, greedy).generate(["one"], n=1)
    assert sum(s.num_blocks for s in want_a + want_b) >= 2, "the biased model should open blocks"
    with engine.batch() as batch:
        a = batch.add("hello there", n=2)
        doomed = batch.add("a b c", n=2, config=replace(base, seed=5))
        for _ in range(3):
            batch.step()
        b = batch.add("x y z w", config=other)  # joins mid-decode, with other settings
        batch.step()
        batch.cancel(doomed)
        assert all(r.sample.uid not in doomed for r in batch.rows)
        c = batch.add(tok.encode("one", add_special_tokens=False), config=greedy)
        finished = []
        while batch.rows:
            finished += batch.step()
        assert sorted(finished) == sorted(a + b + c)  # each reported once, the cancelled never
        got = batch.take(a + b + c)
        assert batch.live == {} and batch.done == {} and batch.cache is None
    for g, w in zip(got, want_a + want_b + want_c):
        assert g.completion_ids == w.completion_ids and g.text == w.text and g.finish_reason == w.finish_reason
        assert torch.allclose(torch.tensor(g.logprobs), torch.tensor(w.logprobs), atol=1e-4)
    assert max_gap(model, tags, got[:2], "unseen") <= 1e-4
    assert max_gap(model, tags, got[2:3], "unseen", temperature=0.7) <= 1e-4
