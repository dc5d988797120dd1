"""The vLLM backend's agent loop, driven through a stand-in with vLLM's offline interface.

vLLM needs a GPU and is not installed here. ``FakeLLM`` has the part of ``vllm.LLM`` the backend
uses (``generate(prompts, sampling_params, use_tqdm)`` with ``{"prompt_token_ids": ...}`` prompts,
outputs with ``token_ids`` and per-token ``logprobs`` dicts, stop tokens kept in the output) and
decodes greedily with a real tiny model on the flat causal sequence, as vLLM would.
"""

import dataclasses
import math
import os
import re
import subprocess
import sys
import types

import pytest

from conftest import scripted_setup
from helpers.fake_vllm import FakeLLM, NamedLLM, params
from parallel_r1.decoding import DecodingConfig, ParallelEngine
from parallel_r1.decoding.vllm_backend import VLLMEngine
from parallel_r1.format import parse
from parallel_r1.models import build_tiny_model


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
            assert (
                p.stop_token_ids[0] == tags.path_close and p.temperature == 1.0
            )  # the paper's forced path temperature
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
    samples = VLLMEngine(
        seen_llm, DecodingConfig(variant="seen", max_new_tokens=12, temperature=0), sampling_params=params
    ).generate([[a, a, a, a], [a, a]], n=2)
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
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
        == "False"
    )


# pip's words for "the package index did not answer" (offline machine, proxy, DNS)
_OFFLINE = (
    "NewConnectionError",
    "Failed to establish",
    "Max retries exceeded",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "ConnectTimeout",
    "ReadTimeout",
    "ProxyError",
    "No route to host",
)


def test_vllm_extra_resolves_with_the_pins(tmp_path):
    """The `[vllm]` extra names one vLLM release whose own requirements accept our torch and
    transformers pins and which TRL's `[vllm]` range accepts. pip resolves it from the index
    (metadata only: --dry-run --no-deps, nothing is installed and no wheel is kept)."""
    import json
    from importlib.metadata import requires
    from pathlib import Path

    import tomllib
    from packaging.requirements import Requirement

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    pins = {r.name: r for r in map(Requirement, project["dependencies"])}
    (extra,) = [Requirement(r) for r in project["optional-dependencies"]["vllm"]]
    assert extra.name == "vllm" and len(extra.specifier) == 1 and next(iter(extra.specifier)).operator == "==", extra
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--ignore-installed", "--quiet",
           "--timeout", "15", "--retries", "1", "--report", str(report), str(extra)]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0 and any(w in res.stderr for w in _OFFLINE):
        pytest.skip(
            f"the package index cannot be reached, so the [vllm] extra cannot be resolved: {res.stderr.strip().splitlines()[-1]}"
        )
    assert res.returncode == 0, res.stderr
    (item,) = json.loads(report.read_text())["install"]
    meta = item["metadata"]
    assert meta["name"] == "vllm" and extra.specifier.contains(meta["version"])
    theirs = [Requirement(r) for r in meta.get("requires_dist", [])]
    # the versions the project installs and tests: torch from the Makefile (pyproject only asks for a
    # floor, so a CUDA image's torch is kept), transformers pinned in pyproject
    makefile = (Path(__file__).parents[1] / "Makefile").read_text()
    tested = {"torch": re.search(r"torch==([0-9.]+)", makefile).group(1),
              "transformers": next(iter(pins["transformers"].specifier)).version}  # fmt: skip
    for name, ours in tested.items():
        assert pins[name].specifier.contains(ours), f"pyproject's {pins[name]} excludes the tested {name} {ours}"
        (req,) = [r for r in theirs if r.name == name and not r.marker]
        assert req.specifier.contains(ours), f"vllm {meta['version']} needs {req}; the project installs {name}=={ours}"
    trl_range = [Requirement(r) for r in requires("trl") if r.startswith("vllm")]
    assert trl_range and all(r.specifier.contains(meta["version"]) for r in trl_range), trl_range


@pytest.fixture
def fake_vllm_module(monkeypatch):
    NamedLLM.made.clear()
    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=NamedLLM, SamplingParams=params))
    return NamedLLM


def test_each_rank_of_a_launch_gets_its_own_gpus(monkeypatch):
    from parallel_r1.evaluate import visible_devices_for_rank

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    visible_devices_for_rank(2)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2,3"  # not cuda:0 for every rank
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    monkeypatch.setenv("LOCAL_RANK", "1")
    visible_devices_for_rank(1)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "5"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4")
    with pytest.raises(ValueError, match="local rank 1 needs GPUs 2..3"):
        visible_devices_for_rank(2)
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    visible_devices_for_rank(2)  # a plain run: left as it is
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"


def test_eval_on_vllm_writes_the_engine_layout_and_resumes(tiny_checkpoint, tmp_path, fake_vllm_module):
    import json

    from parallel_r1 import evaluate as E
    from parallel_r1.io import read_jsonl, write_jsonl

    bench = tmp_path / "mini.jsonl"
    write_jsonl(bench, [{"id": str(i), "problem": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(4)])
    common = dict(model=str(tiny_checkpoint), benchmarks=str(bench), template="no_prompt", max_new_tokens=12, max_blocks=1,
                  batch_size=3, seed=0, grading_workers=1, k="2", temperature=0.0)  # fmt: skip
    engine_out, vllm_out = tmp_path / "engine", tmp_path / "vllm"
    E.evaluate(E.EvalConfig(output_dir=str(engine_out), **common), progress=False)
    with pytest.raises(ValueError, match="data_parallel_size 2: vLLM's offline LLM.*torchrun --nproc_per_node 2"):
        E.EvalConfig(output_dir=str(vllm_out), backend="vllm", data_parallel_size=2, **common)
    cfg = E.EvalConfig(output_dir=str(vllm_out), backend="vllm", tensor_parallel_size=2,
                       vllm_kwargs="{gpu_memory_utilization: 0.5}", limit=3, **common)  # fmt: skip
    E.evaluate(cfg, progress=False)
    (llm,) = fake_vllm_module.made
    assert llm.kwargs == {"enable_prefix_caching": True, "dtype": "auto", "tensor_parallel_size": 2,
                          "gpu_memory_utilization": 0.5}  # fmt: skip
    # resume: a larger limit generates only the new problem's samples
    first = list(read_jsonl(vllm_out / "completions.jsonl"))
    asked = len(llm.requests)
    fake_vllm_module.made.clear()
    res = E.evaluate(dataclasses.replace(cfg, limit=None, k="2"), progress=False)
    (llm,) = fake_vllm_module.made
    rows = list(read_jsonl(vllm_out / "completions.jsonl"))
    assert rows[: len(first)] == first and len(first) == 3 * 2 and len(rows) == 4 * 2
    assert llm.requests and len(llm.requests) <= asked  # only 2 samples asked for this time (6 before)
    assert {r["problem_id"] for r in rows[len(first) :]} == {"mini-3"}
    # the same folder layout, rows and results as the engine's
    assert sorted(p.name for p in vllm_out.iterdir()) == sorted(p.name for p in engine_out.iterdir())
    engine_rows = list(read_jsonl(engine_out / "completions.jsonl"))
    assert [set(r) for r in rows] == [set(r) for r in engine_rows]
    engine_res = json.loads((engine_out / "results.json").read_text())
    assert set(res) == set(engine_res) and set(res["benchmarks"][str(bench)]) == set(
        engine_res["benchmarks"][str(bench)]
    )
    assert json.loads((vllm_out / "run.json").read_text())["identity"]["backend"] == "vllm"
    with pytest.raises(ValueError, match="backend: 'vllm' there, 'engine' now"):
        E.evaluate(E.EvalConfig(output_dir=str(vllm_out), **common), progress=False)


def test_eval_on_vllm_bad_input(tmp_path, fake_vllm_module, capsys):
    from parallel_r1.cli import main
    from parallel_r1.evaluate import EvalConfig, evaluate

    model, tok = build_tiny_model("llama", with_tags=False)
    bare = tmp_path / "bare"
    model.save_pretrained(bare)
    tok.save_pretrained(bare)
    cfg = EvalConfig(model=str(bare), output_dir=str(tmp_path / "ev"), benchmarks="aime24", backend="vllm", limit=1)
    with pytest.raises(ValueError, match="has no tag tokens; the vllm backend cannot add them"):
        evaluate(cfg, progress=False)
    assert not fake_vllm_module.made  # refused before vLLM started
    for bad in (["--temperature", "0.001"], ["--backend", "sglang"], ["--vllm-kwargs", "[1, 2]"]):
        assert (
            main(["eval", "--model", str(bare), "--output-dir", str(tmp_path / "ev2"), "--backend", "vllm", *bad]) == 2
        )
    err = capsys.readouterr().err
    assert "temperature 0.001" in err and "sglang" in err and "vllm_kwargs must be a mapping" in err


def test_vllm_fixes_path_budget_eos_and_dtype(tmp_path, fake_vllm_module):
    model, tok, tags, a, s = scripted_setup(path_len=50)
    llm = FakeLLM(model, tok)
    cfg = DecodingConfig(num_paths=2, max_blocks=1, max_new_tokens=60, max_path_tokens=2, temperature=0)
    (sample,) = VLLMEngine(llm, cfg, sampling_params=params).generate([[a, a, a]])
    paths = [p for ids, p in llm.requests if ids[-1] == tags.path_open]
    assert paths and all(p.max_tokens == 1 for p in paths)  # vLLM refuses max_tokens=0
    # the model's generation-config EOS ids end a phase as the tokenizer's EOS does
    other_eos = tok.convert_tokens_to_ids("b")
    engine = VLLMEngine(FakeLLM(model, tok), DecodingConfig(variant="seen", max_new_tokens=5, temperature=0),
                        sampling_params=params, eos_ids=[other_eos])  # fmt: skip
    engine.generate([[a]])
    assert engine.llm.requests[0][1].stop_token_ids == [tok.eos_token_id, other_eos]
    from transformers import GenerationConfig

    folder = tmp_path / "m"
    GenerationConfig(eos_token_id=[tok.eos_token_id, other_eos]).save_pretrained(folder)
    from parallel_r1.decoding.vllm_backend import generation_eos_ids

    assert (
        generation_eos_ids(str(folder)) == [tok.eos_token_id, other_eos]
        and generation_eos_ids(str(tmp_path / "none")) == []
    )
    with pytest.raises(ValueError, match="path_temperature 0.005 is outside"):
        VLLMEngine(FakeLLM(model, tok), DecodingConfig(path_temperature=0.005), sampling_params=params)
    # generate --backend vllm asks for the model's own dtype (vLLM "auto"), not float32
    from parallel_r1.commands.generate import GenerateConfig, run

    small, small_tok = build_tiny_model("llama")
    small.save_pretrained(tmp_path / "tiny")
    small_tok.save_pretrained(tmp_path / "tiny")
    run(
        GenerateConfig(model=str(tmp_path / "tiny"), problem=["1+1?"], backend="vllm"),
        DecodingConfig(max_new_tokens=4, temperature=0),
    )
    assert fake_vllm_module.made[-1].kwargs["dtype"] == "auto"
