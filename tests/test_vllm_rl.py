"""`rl` with `rollout_backend: vllm`, driven through stand-ins at the boundaries TRL uses.

vLLM needs a GPU and is not installed here, so none of this ran on a real vLLM. TRL's
``VLLMGeneration`` is used unchanged; what stands in is what it talks to:

* colocate mode: ``vllm.LLM`` (``trl.generation.vllm_generation.LLM``) -> :class:`ColocatedLLM`,
  a :class:`helpers.fake_vllm.FakeLLM` that samples from a real tiny model on the flat causal
  sequence and takes TRL's weight sync (``llm_engine...model.load_weights``);
* server mode: TRL's ``VLLMClient`` -> :class:`FakeClient` (``update_named_params``,
  ``/v1/completions``-shaped ``generate``), behind a real HTTP ``/health``.
"""

from __future__ import annotations

import http.server
import socket
import threading
import types
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

from conftest import GEN_BATCH
from conftest import rl_recipe as _recipe
from helpers.fake_vllm import FakeLLM, NamedLLM, params
from parallel_r1.cli import main as cli_main
from parallel_r1.cli import parse_command


def _rows(run: Path, name: str) -> list[dict]:
    import json

    return [json.loads(line) for line in (run / name).read_text().splitlines()]


def parse_config(argv: list[str]):
    (cfg,) = parse_command("rl", argv)
    return cfg


pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _load(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


class SamplingLLM(FakeLLM):
    """Samples at the request's temperature (seeded per request when it has a seed) and reports
    vLLM's ``processed_logprobs``: log-softmax of the temperature-scaled logits."""

    def __init__(self, path):
        super().__init__(*_load(path))
        self.loaded: list[set[str]] = []  # names of the parameters each weight sync sent
        self.gen = torch.Generator().manual_seed(0)

    def pick(self, logits, params):
        if not params.temperature:
            return super().pick(logits, params)
        logp = torch.log_softmax(logits / params.temperature, -1)
        tok = int(torch.multinomial(logp.exp(), 1, generator=self.gen))
        return tok, float(logp[tok])

    def load_weights(self, weights) -> None:
        own = dict(self.model.named_parameters())
        names = set()
        for name, w in weights:
            own[name].data.copy_(w)  # an unknown name fails here, as in vLLM
            names.add(name)
        self.loaded[-1] |= names

    def reset_prefix_cache(self) -> None:  # TRL calls it after every sync
        self.loaded.append(set())


class ColocatedLLM(SamplingLLM):
    """``vllm.LLM(model=..., **engine args)`` as TRL's colocate mode builds it."""

    made: list[ColocatedLLM] = []

    def __init__(self, model, **kwargs):
        super().__init__(model)
        self.kwargs = kwargs
        runner = types.SimpleNamespace(model=types.SimpleNamespace(load_weights=self.load_weights))
        self.llm_engine = types.SimpleNamespace(
            model_config=types.SimpleNamespace(max_model_len=kwargs.get("max_model_len") or 4096),
            model_executor=types.SimpleNamespace(driver_worker=types.SimpleNamespace(model_runner=runner)),
        )
        self.loaded.append(set())
        self.asleep: set[str] = set()  # the parts of the engine put to sleep
        ColocatedLLM.made.append(self)

    # Sleep mode as vLLM 0.30 has it (vllm/entrypoints/llm.py ``sleep`` / ``wake_up``): level 2
    # discards weights and KV cache; ``wake_up(tags)`` wakes only the parts named. While any part
    # sleeps the engine core keeps its scheduler paused (v1/engine/core.py ~928) and new requests
    # queue, so the offline ``generate`` would wait for ever: the stand-in raises instead of hanging.
    def sleep(self, level: int = 1) -> None:
        self.asleep = {"weights", "kv_cache"}

    def wake_up(self, tags: list[str] | None = None) -> None:
        self.asleep -= set(tags or ("weights", "kv_cache"))

    def load_weights(self, weights) -> None:
        assert "weights" not in self.asleep, "load_weights into sleeping (unmapped) weights"
        super().load_weights(weights)

    def generate(self, *args, **kwargs):
        if self.asleep:
            raise RuntimeError(f"scheduler paused ({', '.join(sorted(self.asleep))} asleep): generate would hang")
        return super().generate(*args, **kwargs)


class FakeClient:
    """TRL's ``VLLMClient`` of a ``trl vllm-serve`` server: the server's model is a SamplingLLM."""

    path: Path
    made: list[FakeClient] = []

    def __init__(self, base_url=None, group_port=None, connection_timeout=0.0):
        self.llm, self.calls = SamplingLLM(self.path), []
        self.llm.loaded.append(set())
        FakeClient.made.append(self)

    def init_communicator(self, device=None):
        pass

    def get_server_info(self):  # /server_info: the server's VllmConfig as JSON
        return {"model_config": {"logprobs_mode": "processed_logprobs", "max_model_len": 4096}}

    def update_named_params(self, metadata, params):
        self.llm.load_weights((name, p.detach()) for name, p in params)

    def reset_prefix_cache(self):
        self.llm.reset_prefix_cache()

    lock = threading.Lock()  # the stand-in model is not thread-safe; a real server takes concurrent requests

    def generate(self, prompts, n=1, generation_kwargs=None, logprobs=0, **sampling):
        with self.lock:
            return self._generate(prompts, n, generation_kwargs, logprobs, **sampling)

    def _generate(self, prompts, n=1, generation_kwargs=None, logprobs=0, **sampling):
        assert n == 1 and logprobs == 0 and isinstance(prompts[0], list)
        self.calls.append(dict(sampling, **(generation_kwargs or {})))
        params = types.SimpleNamespace(**sampling, **(generation_kwargs or {}))
        outs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], [params] * len(prompts))
        return {
            "prompt_ids": prompts,
            "completion_ids": [o.outputs[0].token_ids for o in outs],
            "logprobs": [[[d[t].logprob] for t, d in zip(o.outputs[0].token_ids, o.outputs[0].logprobs)] for o in outs],
        }


@pytest.fixture
def fake_vllm(monkeypatch, taught_model):
    """TRL's vLLM module sees vLLM installed, with the stand-ins in place of vllm.LLM / VLLMClient."""
    from trl.generation import vllm_generation

    from parallel_r1.decoding import vllm_backend

    monkeypatch.setattr(vllm_generation, "is_vllm_available", lambda *a, **k: True)
    monkeypatch.setattr(vllm_backend, "vllm_version", lambda: "0.30.0")  # the pinned extra
    monkeypatch.setattr(vllm_generation, "LLM", ColocatedLLM, raising=False)
    monkeypatch.setattr(vllm_generation, "SamplingParams", types.SimpleNamespace, raising=False)
    monkeypatch.setattr(vllm_generation, "VLLMClient", FakeClient)
    monkeypatch.setattr(FakeClient, "path", taught_model, raising=False)
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(var, "")  # colocate mode sets them: restored after the test
        monkeypatch.delenv(var)
    ColocatedLLM.made.clear()
    FakeClient.made.clear()
    return vllm_generation


@pytest.fixture
def health_server():
    """A real HTTP server answering /health, as `trl vllm-serve` does."""

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()


def _vllm_recipe(tmp_path, model, data, **over):
    base = dict(rollout_backend="vllm", rl_steps=3, save_every=3)
    return _recipe(tmp_path, model, data, **{**base, **over})


def _layout_logps(model, tags, prompt_ids, completion_ids, mask):
    """Brute force: the completion's log-probs under build_unseen_layout."""
    from parallel_r1.structure import build_unseen_layout

    ids = torch.cat([prompt_ids, completion_ids], 1)
    attn = torch.cat([torch.ones_like(prompt_ids), mask], 1)
    structure = torch.zeros_like(attn, dtype=torch.bool)
    structure[:, prompt_ids.shape[1] :] = mask.bool()
    layout = build_unseen_layout(ids, tags, attention_mask=attn, structure_mask=structure)
    logits = model(input_ids=ids, attention_mask=layout.attention_mask, position_ids=layout.position_ids).logits
    logp = torch.log_softmax(logits[:, prompt_ids.shape[1] - 1 : -1].float(), -1)
    return logp.gather(-1, completion_ids[..., None])[..., 0]


@pytest.mark.parametrize("mode,sleep", [("colocate", False), ("colocate", True), ("server", False)])
def test_unseen_rl_on_vllm_trains_syncs_and_measures_the_gap(
    tmp_path, taught_model, additions, fake_vllm, health_server, mode, sleep
):
    from parallel_r1.structure import TagIds
    from parallel_r1.train.rl import build_trainer

    over = dict(vllm_mode=mode, vllm_server_base_url=health_server if mode == "server" else None, vllm_server_timeout=5)
    over["vllm_enable_sleep_mode"] = sleep  # the GPU recipes' setting: TRL puts the engine to sleep between steps
    cfg = parse_config(["--config", str(_vllm_recipe(tmp_path, taught_model, additions, **over))])
    assert (
        cfg.use_vllm
        and cfg.vllm_importance_sampling_correction
        and cfg.vllm_importance_sampling_mode == "token_truncate"
    )
    trainer, ckpt = build_trainer(cfg)
    tags = TagIds.from_tokenizer(trainer.processing_class)
    llm = ColocatedLLM.made[0] if mode == "colocate" else FakeClient.made[0].llm
    assert trainer.vllm_generation.mode == mode and trainer.rollout_func is not None
    start = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}

    checked, after_gaps = [], []
    generate = trainer._generate_and_score_completions

    def spy(inputs):  # the trainer's old log-probs are the exact Unseen layout's, under the synced weights
        out = generate(inputs)
        with torch.no_grad():
            ref = _layout_logps(trainer.model, tags, out["prompt_ids"], out["completion_ids"], out["completion_mask"])
        m = out["completion_mask"].bool()
        assert torch.allclose(out["old_per_token_logps"][m], ref[m], atol=1e-4)
        for name, p in trainer.model.named_parameters():  # vLLM generated with the trainer's current weights
            assert torch.equal(dict(llm.model.named_parameters())[name], p.detach())
        # before a block vLLM's flat sequence is the Unseen layout (paths start at <Parallel>+1 alone):
        # no gap there; the summary and what follows re-read all paths causally: a gap
        close = out["completion_ids"] == tags.parallel_close
        after = (close.cumsum(-1) - close.long()) > 0
        gap = (out["old_per_token_logps"] - out["sampling_per_token_logps"]).abs()
        scored = m & ~gap.isnan()
        assert gap[scored & ~after].max() < 1e-4
        if (scored & after).any():
            after_gaps.append(float(gap[scored & after].max()))
        checked.append(out["importance_sampling_ratio"])
        return out

    trainer._generate_and_score_completions = spy
    trainer.train(resume_from_checkpoint=ckpt)
    assert after_gaps and max(after_gaps) > 1e-3
    assert len(checked) == 3 and all(r.max() <= cfg.vllm_importance_sampling_clip_max for r in checked)
    assert sum(not torch.equal(start[k], v) for k, v in trainer.model.named_parameters()) > 0, "no parameter moved"
    # one sync of every parameter per RL step (TRL's sync_weights), and vLLM's copy moved with the policy
    synced = [names for names in llm.loaded if names]
    assert len(synced) == 3 and all(names == set(start) for names in synced)
    assert any(not torch.equal(start[k], v) for k, v in llm.model.named_parameters())
    if sleep:  # asleep again after each rollout, as TRL leaves it after its own generate
        assert llm.asleep == {"weights", "kv_cache"}

    run = tmp_path / "run"
    rollouts = _rows(run, "rollouts.jsonl")
    assert Counter(r["step"] for r in rollouts) == {1: GEN_BATCH, 2: GEN_BATCH, 3: GEN_BATCH}
    assert any(r["num_blocks"] > 0 for r in rollouts), "the taught model wrote no parallel block"
    metrics = _rows(run, "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3]
    for m in metrics:
        assert {
            "logprob_gap_mean",
            "logprob_gap_max",
            "after_block_token_share",
            "logprob_gap_mean_after_block",
        } <= set(m)
        assert 0 <= m["logprob_gap_mean"] <= m["logprob_gap_max"] and 0 <= m["after_block_token_share"] <= 1
        assert "sampling/importance_sampling_ratio/mean" in m  # TRL's own correction ran
    blocky = [m for m in metrics if m["after_block_token_share"] > 0]
    assert blocky and all(m["logprob_gap_mean_after_block"] > m["logprob_gap_mean"] for m in blocky)
    if mode == "server":
        calls = FakeClient.made[0].calls
        assert {c["temperature"] for c in calls} == {1.0} and all(c["skip_special_tokens"] is False for c in calls)
        assert any(c["stop_token_ids"][0] == tags.path_close for c in calls)


def test_vllm_outside_trls_range_is_not_taken(monkeypatch):
    from trl.generation import vllm_generation

    from parallel_r1.decoding import vllm_backend

    monkeypatch.setattr(vllm_generation, "is_vllm_available", lambda *a, **k: True)
    for version, ok in (
        ("0.30.0", True),
        ("0.26.0+cu130", True),
        ("0.31.0", True),
        ("0.33.0", False),
        ("0.21.0", False),
    ):
        monkeypatch.setattr(vllm_backend, "vllm_version", lambda v=version: v)
        assert vllm_backend.vllm_installed() is ok, version


def test_server_requests_go_out_concurrently_and_the_context_is_the_servers():
    import threading

    from parallel_r1.decoding.vllm_backend import ServerLLM

    both_in = threading.Barrier(2, timeout=30)  # passes only if two calls are in flight at once

    class Client:
        def get_server_info(self):
            return {"model_config": {"max_model_len": 2048}}

        def generate(self, prompts, n=1, generation_kwargs=None, **sampling):
            both_in.wait()
            return {"completion_ids": [[7, sampling["max_tokens"]] for _ in prompts], "logprobs": None}

    llm = ServerLLM(Client(), tokenizer=None)
    assert llm.llm_engine.model_config.max_model_len == 2048  # VLLMEngine budgets prompt + max_tokens by it
    outs = llm.generate(
        [{"prompt_token_ids": [1, 2]}, {"prompt_token_ids": [3]}, {"prompt_token_ids": [4]}],
        [{"max_tokens": 5}, {"max_tokens": 9}, {"max_tokens": 5}],
    )
    assert [o.outputs[0].token_ids for o in outs] == [[7, 5], [7, 9], [7, 5]]  # each answer at its request


def test_gap_stats_brute_force():
    from parallel_r1.train.rl_trainer import _GapStats, gap_stats

    close, nan = 9, float("nan")
    ids = torch.tensor([[1, 2, close, 3, 4], [1, 1, 1, 1, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    trainer = torch.tensor([[-1.0, -2.0, -3.0, -4.0, -5.0], [-1.0, -1.0, -1.0, -9.0, -9.0]])
    sampler = torch.tensor([[-1.5, -2.0, nan, -2.0, -5.5], [-1.0, -0.9, -1.0, 0.0, 0.0]])
    stats = _GapStats()
    stats.add(gap_stats(trainer, sampler, mask, ids, close)[None])
    got = stats.metrics()
    scored = [0.5, 0.0, 2.0, 0.5, 0.0, 0.1, 0.0]  # the nan (an injected tag) and the padding left out
    assert got["logprob_gap_mean"] == pytest.approx(sum(scored) / len(scored))
    assert got["logprob_gap_max"] == pytest.approx(2.0)
    assert got["after_block_token_share"] == pytest.approx(2 / 8)  # tokens 3, 4 of row 0
    assert got["logprob_gap_mean_after_block"] == pytest.approx(2.5 / 2)
    stats.add(gap_stats(trainer, trainer, mask, ids, None)[None])  # a second batch, no gap, no tags
    assert stats.metrics()["logprob_gap_mean"] == pytest.approx(sum(scored) / (len(scored) + 8))


def test_seen_rl_on_vllm_is_plain_sampling(tmp_path, taught_model, additions, fake_vllm):
    from parallel_r1.train.rl import build_trainer

    recipe = _vllm_recipe(
        tmp_path,
        taught_model,
        additions,
        variant="seen",
        rl_steps=2,
        save_every=2,
        vllm_importance_sampling_correction=False,
    )
    trainer, ckpt = build_trainer(parse_config(["--config", str(recipe)]))
    start = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    trainer.train(resume_from_checkpoint=ckpt)
    assert sum(not torch.equal(start[k], v) for k, v in trainer.model.named_parameters()) > 0
    (llm,) = ColocatedLLM.made
    eos = trainer.processing_class.eos_token_id
    assert llm.requests and all(p.stop_token_ids[0] == eos for _, p in llm.requests)  # one request per completion
    assert len(llm.requests) == 2 * GEN_BATCH
    metrics = _rows(tmp_path / "run", "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2]
    # correction off: the gap is still measured, from the loss forward; TRL logs no ratio
    assert all(
        m["logprob_gap_mean"] is not None and "sampling/importance_sampling_ratio/mean" not in m for m in metrics
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bad_vllm_input_fails_before_the_model_loads(tmp_path, additions, taught_model, capsys, monkeypatch):
    from trl.generation import vllm_generation

    missing = tmp_path / "no-such-model"
    # vLLM not installed (as here)
    assert cli_main(["rl", "--config", str(_vllm_recipe(tmp_path, missing, additions))]) == 2
    err = capsys.readouterr().err
    assert "rollout_backend: `vllm` needs vLLM" in err and "no-such-model" not in err
    from parallel_r1.decoding import vllm_backend

    monkeypatch.setattr(vllm_generation, "is_vllm_available", lambda *a, **k: True)
    monkeypatch.setattr(vllm_backend, "vllm_version", lambda: "0.30.0")  # the pinned extra
    # a temperature vLLM would change silently
    assert cli_main(["rl", "--config", str(_vllm_recipe(tmp_path, missing, additions, temperature=0.001))]) == 2
    assert "temperature 0.001 is outside what vLLM samples at" in capsys.readouterr().err
    # a server that does not answer: one error, before the model loads (the model folder is missing)
    url = f"http://127.0.0.1:{_free_port()}"
    recipe = _vllm_recipe(
        tmp_path, taught_model, additions, vllm_mode="server", vllm_server_base_url=url, vllm_server_timeout=0
    )
    monkeypatch.setattr("parallel_r1.models.load_model", lambda *a, **k: pytest.fail("the model loaded"))
    assert cli_main(["rl", "--config", str(recipe)]) == 2
    assert f"vLLM server at {url} does not answer" in capsys.readouterr().err
    # a model without the tag tokens
    from parallel_r1.models import build_tiny_model

    model, tok = build_tiny_model("llama", with_tags=False)
    bare = tmp_path / "bare"
    model.save_pretrained(bare)
    tok.save_pretrained(bare)
    assert cli_main(["rl", "--config", str(_vllm_recipe(tmp_path, bare, additions))]) == 2
    assert "<Parallel>" in capsys.readouterr().err


@pytest.mark.parametrize("stem", ["rl_parallel_r1_unseen_s1", "rl_parallel_r1_unseen_s2", "rl_scaffold"])
def test_gpu_vllm_recipes_are_the_engine_recipes_on_vllm(stem, monkeypatch):
    from trl.generation import vllm_generation

    from parallel_r1.decoding import vllm_backend

    monkeypatch.setattr(vllm_generation, "is_vllm_available", lambda *a, **k: True)
    monkeypatch.setattr(vllm_backend, "vllm_version", lambda: "0.30.0")  # the pinned extra
    root = Path(__file__).parents[1] / "recipes"
    engine, vllm = (
        yaml.safe_load((root / f"{stem}.yaml").read_text()),
        yaml.safe_load((root / "vllm" / f"{stem}.yaml").read_text()),
    )
    added = {k: vllm[k] for k in set(vllm) - set(engine)}
    assert {k for k in engine if engine[k] != vllm.get(k)} <= {"output_dir", "rollout_backend"}
    assert vllm["rollout_backend"] == "vllm" and set(added) <= {
        "rollout_backend",
        "vllm_mode",
        "vllm_gpu_memory_utilization",
        "vllm_max_model_length",
        "vllm_tensor_parallel_size",
        "vllm_importance_sampling_correction",
        "vllm_importance_sampling_mode",
        "vllm_enable_sleep_mode",
    }
    cfg = parse_config(["--config", str(root / "vllm" / f"{stem}.yaml"), "--bf16", "false"])
    assert cfg.use_vllm and cfg.vllm_importance_sampling_correction


def test_baseline_recipe_turns_the_correction_off():
    text = (Path(__file__).parents[1] / "recipes" / "rl_grpo_baseline.yaml").read_text()
    assert yaml.safe_load(text)["vllm_importance_sampling_correction"] is False and "verl 0.4.1" in text


def test_gpu_check_runs_the_vllm_rl_and_eval_stages(tmp_path, taught_model, fake_vllm, monkeypatch, capsys):
    """``make gpu-check``'s vLLM stages, driven here through the stand-ins (TRL's colocate LLM for
    RL, the ``vllm`` module for eval): what the script runs on a GPU machine where vLLM imports."""
    import importlib.machinery
    import json
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import gpu_check

    fake = types.ModuleType("vllm")
    fake.__spec__ = importlib.machinery.ModuleSpec("vllm", None)  # importable, as find_spec sees it
    fake.LLM, fake.SamplingParams = NamedLLM, params
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setenv("GPU_CHECK_CPU", "1")
    stages = gpu_check.Stages(torch, gpu_check.Setting.detect(torch), tmp_path)
    for name in ("sft", "rl"):  # the earlier stages' models: the eval stage reads `rl`
        (tmp_path / name).symlink_to(taught_model)

    own = []  # each vLLM stage is a process of its own; here it runs in-process on the stand-ins

    def in_process(cmd, check):
        assert cmd[:3] == [sys.executable, "-m", "parallel_r1.cli"] and check
        own.append(cmd[3])
        from parallel_r1.cli import main

        assert main(cmd[3:]) == 0

    monkeypatch.setattr(gpu_check.subprocess, "run", in_process)
    gpu_check.vllm_paths(stages, needs_gpu=False)
    assert own == ["rl", "eval"]
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("stage ")]
    assert [line.split(":")[0] for line in lines] == ["stage rl-vllm", "stage eval-vllm"]
    assert all(": ok " in line for line in lines)
    config = yaml.safe_load((tmp_path / "rl_vllm" / "config.yaml").read_text())
    assert config["rollout_backend"] == "vllm" and ColocatedLLM.made  # TRL built its (stand-in) vLLM
    rows = [json.loads(line) for line in (tmp_path / "rl_vllm" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all("logprob_gap_max" in r for r in rows)
    run = json.loads((tmp_path / "eval_vllm" / "run.json").read_text())
    assert run["identity"]["backend"] == "vllm" and NamedLLM.made  # eval went through `vllm.LLM`
