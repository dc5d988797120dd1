"""The vLLM backend's agent loop, driven through a stand-in with vLLM's offline interface.

vLLM needs a GPU and is not installed here. ``FakeLLM`` has the part of ``vllm.LLM`` the backend
uses (``generate(prompts, sampling_params, use_tqdm)`` with ``{"prompt_token_ids": ...}`` prompts,
outputs with ``token_ids`` and per-token ``logprobs`` dicts, stop tokens kept in the output) and
decodes greedily with a real tiny model on the flat causal sequence, as vLLM would.
"""

import math
import subprocess
import sys
import types

import pytest
import torch

from parallel_r1.decoding import DecodingConfig, ParallelEngine
from parallel_r1.decoding.vllm_backend import VLLMEngine
from parallel_r1.format import parse
from parallel_r1.models import build_tiny_model

from test_decoding import scripted_setup


class FakeLLM:
    def __init__(self, model, tokenizer):
        self.model, self.tokenizer, self.requests = model, tokenizer, []

    def get_tokenizer(self):
        return self.tokenizer

    @torch.no_grad()
    def generate(self, prompts, sampling_params, use_tqdm=True):
        outs = []
        for prompt, params in zip(prompts, sampling_params):
            ids = list(prompt["prompt_token_ids"])
            self.requests.append((ids, params))
            toks, lps = [], []
            while len(toks) < params.max_tokens:
                x = torch.tensor([ids + toks])
                logits = self.model(input_ids=x, position_ids=torch.arange(x.shape[1])[None]).logits[0, -1]
                tok = int(logits.argmax())
                toks.append(tok)
                lps.append({tok: types.SimpleNamespace(logprob=float(torch.log_softmax(logits, -1)[tok]))})
                if tok in params.stop_token_ids:
                    break
            outs.append(types.SimpleNamespace(outputs=[types.SimpleNamespace(token_ids=toks, logprobs=lps)]))
        return outs


def params(**kw):
    return types.SimpleNamespace(**kw)


def test_paper_loop_gives_the_engines_tokens_from_separate_requests():
    model, tok, tags, a, s = scripted_setup()
    cfg = DecodingConfig(num_paths=2, max_blocks=2, max_new_tokens=200, temperature=0)
    llm = FakeLLM(model, tok)
    (sample,) = VLLMEngine(llm, cfg, sampling_params=params).generate([[a, a, a]])
    (exact,) = ParallelEngine(model, tok, cfg).generate([[a, a, a]])
    # same script, same tokens and injected tags; only the contexts differ (not exact)
    assert sample.completion_ids == exact.completion_ids and sample.injected == exact.injected
    assert sample.finish_reason == "max_blocks" and sample.num_blocks == 2
    assert (sample.backend, sample.exact, exact.backend, exact.exact) == ("vllm", False, "transformers", True)
    assert parse(sample.text, strict=True).format_ok
    assert all(math.isnan(lp) == inj for lp, inj in zip(sample.logprobs, sample.injected))
    # the requests of the paper's loop: trunk, k paths each on context + <Path> alone, summary on everything
    kinds = []
    for ids, p in llm.requests:
        if ids[-1] == tags.path_open:
            kinds.append("path")
            assert p.stop_token_ids[0] == tags.path_close and p.temperature == 1.0  # the paper's forced path temperature
            assert ids.count(tags.path_open) - ids.count(tags.path_close) == 1  # no sibling path in its context
        elif ids[-1] == tags.summary_open:
            kinds.append("summary")
            assert p.stop_token_ids[0] == tags.summary_close and p.temperature == 0
            assert ids.count(tags.path_close) == 2 * (kinds.count("summary"))  # both paths re-read causally
        else:
            kinds.append("trunk")
            assert p.stop_token_ids[0] == tags.parallel_open
        assert p.logprobs == 0 and p.skip_special_tokens is False
    assert kinds == 2 * ["trunk", "path", "path", "summary"]


def test_budgets_close_paths_and_never_overrun():
    model, tok, tags, a, s = scripted_setup(path_len=50)
    cfg = DecodingConfig(num_paths=3, max_new_tokens=200, max_path_tokens=6, temperature=0)
    (sample,) = VLLMEngine(FakeLLM(model, tok), cfg, sampling_params=params).generate([[a, a, a]])
    first = sample.completion_ids.index(tags.parallel_open)
    assert sample.completion_ids[first + 1 : first + 7] == [tags.path_open, a, a, a, a, tags.path_close]
    assert sample.injected[first + 6]  # </Path> appended after the cut
    for budget in (20, 27, 31, 40):
        cfg = DecodingConfig(num_paths=3, max_new_tokens=budget, max_path_tokens=50, temperature=0)
        (sample,) = VLLMEngine(FakeLLM(model, tok), cfg, sampling_params=params).generate([[a, a, a]])
        assert len(sample.completion_ids) <= budget and sample.finish_reason == "length"
        assert all(len(b.paths) == 3 for b in parse(sample.text).blocks)


def test_eos_in_a_path_becomes_its_close_and_seen_is_one_request():
    model, tok = build_tiny_model("llama")
    from parallel_r1.structure import TagIds

    tags, a, eos = TagIds.from_tokenizer(tok), tok.convert_tokens_to_ids("a"), tok.eos_token_id
    from parallel_r1.decoding.scripted import ScriptedLM

    def script(last, pos):  # trunk opens a block at once; paths end with EOS; the summary with </Summary>
        if last == tags.path_open:
            return a
        if last == a and pos > 4:
            return eos if pos < 30 else tags.summary_close
        return {tags.summary_close: eos, tags.summary_open: a}.get(last, tags.parallel_open)

    scripted = ScriptedLM(model, script)
    cfg = DecodingConfig(num_paths=2, max_new_tokens=40, temperature=0)
    (sample,) = VLLMEngine(FakeLLM(scripted, tok), cfg, sampling_params=params).generate([[a, a, a, a]])
    assert eos not in sample.completion_ids[: sample.completion_ids.index(tags.parallel_close)]
    assert parse(sample.text).paths_per_block == [2]
    seen_llm = FakeLLM(scripted, tok)
    samples = VLLMEngine(seen_llm, DecodingConfig(variant="seen", max_new_tokens=12, temperature=0), sampling_params=params).generate(
        [[a, a, a, a], [a, a]], n=2
    )
    assert len(seen_llm.requests) == 4 and all(p.stop_token_ids == [eos] for _, p in seen_llm.requests)
    assert [s.prompt_index for s in samples] == [0, 0, 1, 1] and all(s.backend == "vllm" for s in samples)


def test_bad_input_and_missing_vllm(monkeypatch, capsys):
    model, tok, tags, a, s = scripted_setup()
    engine = VLLMEngine(FakeLLM(model, tok), DecodingConfig(max_new_tokens=5), sampling_params=params, max_model_len=64)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        engine.generate([[a], []])
    with pytest.raises(ValueError, match="context is 64"):
        engine.generate([[a] * 64])
    _, bare_tok = build_tiny_model("llama", with_tags=False)
    with pytest.raises(ValueError, match="no single token for <Parallel>"):
        VLLMEngine(FakeLLM(model, bare_tok), DecodingConfig(), sampling_params=params)
    monkeypatch.setitem(sys.modules, "vllm", None)  # as on a machine without vLLM
    with pytest.raises(ImportError, match=r"parallel-r1\[vllm\]"):
        VLLMEngine("Qwen/Qwen3-4B-Base", DecodingConfig())
    from parallel_r1.cli import main

    assert main(["generate", "--model", "Qwen/Qwen3-4B-Base", "--problem", "1+1?", "--backend", "vllm"]) == 2
    assert "parallel-r1 generate: error: decoding: the vLLM backend needs vllm" in capsys.readouterr().err
    # nothing imports vLLM unless the backend is built with a model name
    code = "import sys, parallel_r1.decoding, parallel_r1.decoding.vllm_backend, parallel_r1.evaluate; print('vllm' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
