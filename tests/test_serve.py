"""`parallel-r1 serve`: the openai client against a real server on a tiny model (uvicorn on
loopback, in a thread): each served completion, streamed or not, alone or beside others, equals
the offline engine's for the same request; bad requests get an OpenAI error naming the field and
the server keeps serving; 401, 429, the deadline, a client's disconnect, SIGTERM's drain, a load
test. Waits are handshakes on the worker's condition, never sleeps."""

from __future__ import annotations

import dataclasses
import json
import threading
import urllib.error
import urllib.request

import openai
import pytest

from conftest import with_tag_bias
from parallel_r1.decoding import DecodingConfig, ParallelEngine
from parallel_r1.decoding.scripted import ScriptedLM
from parallel_r1.serve import ServeConfig, build_app
from parallel_r1.structure import TagIds


class Server:
    """uvicorn serving ``app`` on a free loopback port, started and stopped with handshakes."""

    def __init__(self, app):
        import socket

        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.up = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import asyncio

        async def main():
            config = self.server.config
            if not config.loaded:
                config.load()
            self.server.lifespan = config.lifespan_class(config)
            await self.server.startup(sockets=[self.sock])
            self.up.set()
            await self.server.main_loop()
            await self.server.shutdown(sockets=[self.sock])

        asyncio.run(main())

    def __enter__(self):
        self.thread.start()
        assert self.up.wait(60), "the server did not start"
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(60)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def post(self, path: str, body, headers: dict | None = None) -> tuple[int, dict]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path, data=data, headers={"Content-Type": "application/json", **(headers or {})}
        )
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, {**json.loads(e.read()), "headers": {k.lower(): v for k, v in e.headers.items()}}


@pytest.fixture(scope="module")
def served(tiny_checkpoint):
    from parallel_r1.models import load_with_tags

    model, tok, _ = load_with_tags(str(tiny_checkpoint))
    model = with_tag_bias(model, TagIds.from_tokenizer(tok))  # so that it writes blocks: path deltas appear
    defaults = DecodingConfig(max_new_tokens=24, max_path_tokens=8, dtype="float32", batch_size=8)
    cfg = ServeConfig(model="tiny", api_key=None, max_queued=256)
    engine = ParallelEngine(model, tok, defaults)
    app = build_app(cfg, tok, engine, context=model.config.max_position_embeddings)
    with Server(app) as server:
        yield server, model, tok, defaults


def _offline(model, tok, defaults, prompt: str, n: int, **over):
    from parallel_r1.decoding import ParallelEngine

    cfg = dataclasses.replace(defaults, **over)
    ids = tok.encode(prompt, add_special_tokens=False)
    return [s.text.removesuffix(tok.eos_token) for s in ParallelEngine(model, tok, cfg).generate([ids], n=n)]


def test_completions_equal_the_offline_engine(served):
    server, model, tok, defaults = served
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none")
    prompt = "Tom has 3 apples and buys 4 more. How many?"
    # greedy in the trunk; paths sample at path_temperature 1.0 (the paper's), so seeded too
    greedy = client.completions.create(model="tiny", prompt=prompt, max_tokens=24, temperature=0, seed=1)
    assert greedy.choices[0].text == _offline(model, tok, defaults, prompt, 1, temperature=0.0, seed=1)[0]
    assert greedy.choices[0].parallel["num_blocks"] >= 1
    sampled = client.completions.create(model="tiny", prompt=prompt, max_tokens=24, temperature=1.0, n=3, seed=7,
                                        extra_body={"num_paths": 3})  # fmt: skip
    want = _offline(model, tok, defaults, prompt, 3, temperature=1.0, seed=7, num_paths=3)
    assert [c.text for c in sampled.choices] == want
    again = client.completions.create(model="tiny", prompt=prompt, max_tokens=24, temperature=1.0, n=3, seed=7,
                                      extra_body={"num_paths": 3})  # fmt: skip
    assert [c.text for c in again.choices] == want  # seeded: the same whatever came before
    text = greedy.choices[0].text
    assert len(text) > 4  # a stop string inside the greedy text cuts it there, finish reason "stop"
    cut = client.completions.create(model="tiny", prompt=prompt, max_tokens=24, temperature=0, seed=1, stop=[text[3:5]])
    assert cut.choices[0].text == text[: text.find(text[3:5])] and cut.choices[0].finish_reason == "stop"
    d = sampled.model_dump()
    assert (
        d["usage"]["completion_tokens"] > 0
        and d["usage"]["total_tokens"] == d["usage"]["prompt_tokens"] + d["usage"]["completion_tokens"]
    )
    assert 0 < d["usage"]["critical_path_tokens"] <= d["usage"]["completion_tokens"]
    assert {"blocks", "format_ok", "num_blocks"} <= set(d["choices"][0]["parallel"])


def test_chat_uses_the_chat_template(served):
    server, model, tok, defaults = served
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none")
    messages = [{"role": "user", "content": "What is 2 + 3?"}]
    got = client.chat.completions.create(model="tiny", messages=messages, max_tokens=24, temperature=0, seed=2,
                                         logprobs=True)  # fmt: skip
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert got.choices[0].message.content == _offline(model, tok, defaults, prompt, 1, temperature=0.0, seed=2)[0]
    assert got.choices[0].message.role == "assistant" and len(got.choices[0].logprobs.content) > 0


@pytest.mark.parametrize(
    "body, status, param",
    [
        ({"model": "nope", "prompt": "x"}, 404, "model"),
        ({"model": "tiny", "prompt": "x", "stream": True, "logprobs": 0}, 400, "logprobs"),
        ({"model": "tiny", "prompt": "x", "stream_options": {"include_usage": True}}, 400, "stream_options"),
        ({"model": "tiny", "prompt": "x", "timeout": 0}, 400, "timeout"),
        ({"model": "tiny", "prompt": "x", "frequency_penalty": 0.5}, 400, "frequency_penalty"),
        ({"model": "tiny", "prompt": "x", "colour": "red"}, 400, "colour"),
        ({"model": "tiny", "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
        ({"model": "tiny", "prompt": "x", "max_tokens": 10**6}, 400, "max_tokens"),  # beyond the context
        ({"model": "tiny", "prompt": "x " * 5000}, 400, "max_tokens"),  # a prompt longer than the context
        ({"model": "tiny", "prompt": "x", "n": 0}, 400, "n"),
        ({"model": "tiny", "prompt": "x", "top_p": 0}, 400, "top_p"),
        ({"model": "tiny", "prompt": "x", "num_paths": 1}, 400, "num_paths"),
        ({"model": "tiny"}, 400, "prompt"),
        (b"{not json", 400, None),
    ],
)
def test_bad_requests_are_named_and_the_server_keeps_serving(served, body, status, param):
    server = served[0]
    code, answer = server.post("/v1/completions", body)
    assert code == status and answer["error"]["param"] == param, answer
    assert answer["error"]["message"]
    ok, good = server.post(
        "/v1/completions", {"model": "tiny", "prompt": "What is 1 + 1?", "max_tokens": 4, "temperature": 0}
    )
    assert ok == 200 and len(good["choices"]) == 1


def test_models_health_metrics(served):
    server = served[0]
    with urllib.request.urlopen(server.url + "/v1/models") as r:
        assert [m["id"] for m in json.loads(r.read())["data"]] == ["tiny"]
    with urllib.request.urlopen(server.url + "/health") as r:
        assert json.loads(r.read()) == {"status": "ok"}
    server.post("/v1/completions", {"model": "tiny", "prompt": "hi", "max_tokens": 3, "temperature": 0})
    with urllib.request.urlopen(server.url + "/metrics") as r:
        text = r.read().decode()
    assert 'parallel_r1_requests_total{endpoint="/v1/completions",status="200"}' in text
    assert "parallel_r1_queue_depth" in text and "parallel_r1_request_seconds_bucket" in text


class Gate:
    """Holds the engine inside the ``hold_at``-th forward of ``model`` until :meth:`release` (a
    handshake: ``entered`` says it is held; 0 never holds), counting the forwards."""

    def __init__(self, model, hold_at: int = 1):
        self.model, self.hold_at, self.calls = model, hold_at, 0
        self.entered, self.released = threading.Event(), threading.Event()
        inner = model.forward

        def forward(*args, **kw):
            self.calls += 1
            if self.calls == self.hold_at:
                self.entered.set()
                assert self.released.wait(60)
            return inner(*args, **kw)

        model.forward = forward  # the instance's forward: nn.Module.__call__ calls it

    def release(self):
        self.released.set()

    def engine(self, tok, **cfg) -> ParallelEngine:
        return ParallelEngine(self.model, tok, DecodingConfig(dtype="float32", **cfg))


def writes_a(tok):
    """A tiny model scripted to write "a" forever."""
    from parallel_r1.models import build_tiny_model

    a = tok.convert_tokens_to_ids("a")
    return ScriptedLM(build_tiny_model("llama")[0], lambda last, pos: a)


def wait_for(worker, predicate):
    """Block until ``predicate()`` holds after some step or cancel of ``worker`` (a handshake)."""
    with worker.changed:
        assert worker.changed.wait_for(predicate, 60), "the worker never got there"


def test_api_key_and_a_full_queue(tiny_tokenizer):
    """401 without the key; with the engine held inside a forward and one request queued, the
    next gets 429 with Retry-After; released, the held two complete."""
    gate = Gate(writes_a(tiny_tokenizer))
    cfg = ServeConfig(model="tiny", api_key="secret", max_queued=1)
    app = build_app(cfg, tiny_tokenizer, gate.engine(tiny_tokenizer, max_new_tokens=8))
    key = {"Authorization": "Bearer secret"}
    body = {"model": "tiny", "prompt": "x", "max_tokens": 4}
    with Server(app) as server:
        assert server.post("/v1/completions", body)[0] == 401
        assert server.post("/v1/completions", body, {"Authorization": "Bearer wrong"})[0] == 401
        results = []
        held = [
            threading.Thread(target=lambda: results.append(server.post("/v1/completions", body, key))) for _ in range(2)
        ]
        held[0].start()
        assert gate.entered.wait(60)  # the first is decoding, the engine held
        held[1].start()
        worker = app.state.worker
        while worker.depth() < 1:  # the second is queued (the worker is held: it cannot leave the queue)
            threading.Event().wait(0.01)
        code, answer = server.post("/v1/completions", body, key)
        assert code == 429 and answer["headers"]["retry-after"] == "1"
        gate.release()
        for t in held:
            t.join(60)
        assert [r[0] for r in results] == [200, 200]
        assert server.post("/v1/completions", body, key)[0] == 200


def test_the_deadline_drops_a_request_with_504(tiny_tokenizer):
    gate = Gate(writes_a(tiny_tokenizer), hold_at=0)  # never held
    app = build_app(ServeConfig(model="tiny"), tiny_tokenizer, gate.engine(tiny_tokenizer, max_new_tokens=4000))
    with Server(app) as server:
        code, answer = server.post("/v1/completions", {"model": "tiny", "prompt": "x", "timeout": 1e-6})
        assert code == 504 and answer["error"]["type"] == "timeout"
        assert gate.calls < 4000 and app.state.worker.decoding() == 0  # dropped long before its budget
        code, answer = server.post("/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 3})
        assert code == 200 and answer["choices"][0]["text"] == "aaa"  # the valid request is served
        with urllib.request.urlopen(server.url + "/metrics") as r:
            assert 'parallel_r1_cancelled_total{reason="deadline"} 1.0' in r.read().decode()


def test_a_client_that_disconnects_frees_its_rows(tiny_tokenizer):
    """A streaming client reads the first event and hangs up while the engine is held; released,
    the worker drops the request at its next step instead of decoding its 4000 tokens."""
    import http.client

    gate = Gate(writes_a(tiny_tokenizer), hold_at=3)
    app = build_app(ServeConfig(model="tiny"), tiny_tokenizer, gate.engine(tiny_tokenizer, max_new_tokens=4000))
    worker = app.state.worker
    with Server(app) as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.status == 200 and response.readline().startswith(b"data: ")  # the role chunk
        assert gate.entered.wait(60)
        conn.sock.shutdown(2)
        conn.close()
        wait_for(worker, lambda: worker.running and worker.running[0].cancelled)  # the server saw it go
        gate.release()
        wait_for(worker, lambda: not worker.running)
        assert gate.calls < 20 and worker.decoding() == 0
        with urllib.request.urlopen(server.url + "/metrics") as r:
            assert 'parallel_r1_cancelled_total{reason="disconnect"} 1.0' in r.read().decode()


def test_coldstart_teacher_generates_through_serve(served, tmp_path, data_dir):
    """The loop closed: ``coldstart generate --teacher openai`` against this server, end to end."""
    from parallel_r1.cli import main
    from parallel_r1.io import read_jsonl

    server = served[0]
    out = tmp_path / "raw.jsonl"
    argv = ["coldstart", "generate", "--teacher", "openai", "--base_url", server.url + "/v1", "--model", "tiny",
            "--problems", "gsm8k", "--limit", "3", "--max_new_tokens", "16", "--concurrency", "2",
            "--output", str(out), "--data_dir", str(data_dir)]  # fmt: skip
    assert main(argv) == 0
    rows = list(read_jsonl(out))
    assert len(rows) == 3 and all(isinstance(r.get("response"), str) for r in rows), rows[:1]


@pytest.mark.parametrize("flags, message", [(["--max_queued", "0"], "--max_queued must be > 0"),
                                            (["--port", "70000"], "--port must be between 0 and 65535")])  # fmt: skip
def test_serve_command_refuses_bad_flags_before_loading(flags, message):
    from parallel_r1.cli import parse_command

    cfg, dcfg = parse_command("serve", ["--model", "m", "--port", "0", "--num_paths", "3"])  # the valid one parses
    assert (cfg.served_model_name, cfg.port, dcfg.num_paths) == ("m", 0, 3)
    with pytest.raises(ValueError, match=message):
        parse_command("serve", ["--model", "m", *flags])


def _gather(chunks, n: int):
    """Per choice: the concatenated content deltas, the finish reason, the path previews."""
    text, finish, paths = [""] * n, [None] * n, {}
    for ch in chunks:
        for c in ch.choices:
            text[c.index] += (c.delta.content or "") if hasattr(c, "delta") else c.text
            d = (c.model_extra or {}).get("parallel_delta")
            if d is not None:
                key = (c.index, d["block"], d["path"])
                paths[key] = paths.get(key, "") + d["text"]
            finish[c.index] = c.finish_reason or finish[c.index]
    return text, finish, paths


def test_streaming_equals_the_whole_completion(served):
    """The content deltas concatenate to the non-streamed text of each choice; the paths of a
    block stream as previews of the paths the final structure holds; usage comes last."""
    server, model, tok, defaults = served
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none")
    kw = dict(model="tiny", prompt="What is 2 + 2?", max_tokens=24, temperature=1.0, n=2, seed=5,
              extra_body={"num_paths": 2, "max_path_tokens": 8})  # fmt: skip
    whole = client.completions.create(**kw)
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    text, finish, paths = _gather(chunks, 2)
    assert text == [c.text for c in whole.choices] and finish == [c.finish_reason for c in whole.choices]
    assert text == _offline(model, tok, defaults, "What is 2 + 2?", 2, temperature=1.0, seed=5, num_paths=2)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    last = {c.index: c for ch in chunks for c in ch.choices if c.finish_reason}
    assert [last[i].model_extra["parallel"] for i in range(2)] == [c.parallel for c in whole.choices]
    assert paths, "the biased model opens blocks: their paths stream"
    for (i, b, j), preview in paths.items():
        assert whole.choices[i].parallel["blocks"][b]["paths"][j].strip().startswith(preview.strip()), preview
    # chat: the role first, then content equal to the non-streamed message
    messages = [{"role": "user", "content": "What is 2 + 3?"}]
    one = client.chat.completions.create(model="tiny", messages=messages, max_tokens=24, seed=3)
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=24, seed=3, stream=True))
    assert chunks[0].object == "chat.completion.chunk" and chunks[0].choices[0].delta.role == "assistant"
    assert _gather(chunks, 1)[0] == [one.choices[0].message.content]
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert _gather(chunks, 1)[0] == _offline(model, tok, defaults, prompt, 1, seed=3)


def test_requests_sharing_the_batch_equal_each_alone(tiny_checkpoint):
    """Six seeded requests with different settings queue while the engine is held, then decode
    in one batch: each equals the offline engine on that request alone."""
    from parallel_r1.models import load_with_tags

    model, tok, _ = load_with_tags(str(tiny_checkpoint))
    model = with_tag_bias(model, TagIds.from_tokenizer(tok))
    gate = Gate(model)
    engine = gate.engine(tok, max_new_tokens=20, max_path_tokens=8, batch_size=16)
    defaults = engine.cfg
    app = build_app(ServeConfig(model="tiny"), tok, engine)
    worker = app.state.worker
    asks = [dict(prompt=f"What is {i} + {i}?", n=1 + i % 2, seed=10 + i, temperature=(1.0, 0.7, 0.0)[i % 3],
                 num_paths=2 + i % 2, top_p=(1.0, 0.9)[i % 2]) for i in range(6)]  # fmt: skip
    with Server(app) as server:
        answers = [None] * len(asks)

        def ask(i):
            a = dict(asks[i])
            answers[i] = server.post("/v1/completions", {"model": "tiny", "max_tokens": 20, **a})

        threads = [threading.Thread(target=ask, args=(0,))]
        threads[0].start()
        assert gate.entered.wait(60)  # the first is in its prefill, held
        threads += [threading.Thread(target=ask, args=(i,)) for i in range(1, len(asks))]
        for t in threads[1:]:
            t.start()
        while worker.depth() < len(asks) - 1:  # all queued behind the held engine
            threading.Event().wait(0.01)
        gate.release()
        for t in threads:
            t.join(120)
    for a, (code, answer) in zip(asks, answers):
        assert code == 200, answer
        a = dict(a)
        want = _offline(model, tok, defaults, a.pop("prompt"), a.pop("n"), **a)
        assert [c["text"] for c in answer["choices"]] == want


def _tensor_bytes() -> int:
    import gc
    import warnings

    import torch

    storages = {}
    with warnings.catch_warnings():  # isinstance on torch.distributed's deprecated reduce_op warns
        warnings.simplefilter("ignore", FutureWarning)
        for o in gc.get_objects():
            if isinstance(o, torch.Tensor) and not o.is_meta:
                st = o.untyped_storage()
                storages[st.data_ptr()] = st.nbytes()
    return sum(storages.values())


def test_load_every_request_answered_once_and_memory_returns(served):
    """200 requests from 32 concurrent clients, a queue of 16: each is answered exactly once, 200
    or 429; afterwards nothing decodes, nothing is queued, and the tensors alive are those of
    before the load."""
    from concurrent.futures import ThreadPoolExecutor

    server, model, tok, defaults = served
    worker = server.server.config.app.state.worker
    body = {"model": "tiny", "max_tokens": 6, "temperature": 1.0}
    assert server.post("/v1/completions", {**body, "prompt": "warm up"})[0] == 200
    before = _tensor_bytes()
    old = worker.max_queued
    worker.max_queued = 16
    try:
        with ThreadPoolExecutor(32) as pool:
            answers = list(
                pool.map(lambda i: (i, server.post("/v1/completions", {**body, "prompt": f"{i} +"})), range(200))
            )
    finally:
        worker.max_queued = old
    assert sorted(i for i, _ in answers) == list(range(200))  # each answered, once
    codes = [code for _, (code, _) in answers]
    assert set(codes) <= {200, 429} and codes.count(200) >= 16, codes
    for _, (code, answer) in answers:
        if code == 200:
            assert len(answer["choices"]) == 1 and answer["usage"]["completion_tokens"] >= 1
    wait_for(worker, lambda: not worker.running and not worker.queue)
    assert worker.decoding() == 0 and worker.depth() == 0
    assert _tensor_bytes() <= before + 16 * 1024, (before, _tensor_bytes())  # the batch's caches are gone


def test_sigterm_drains_in_flight_requests_and_exits(tiny_checkpoint, tmp_path):
    """`parallel-r1 serve` in its own process: a streaming request is in flight (its first event
    read) when SIGTERM arrives; it still completes, then the server exits 0."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "parallel_r1.cli", "serve", "--model", str(tiny_checkpoint), "--port", str(port),
         "--max_new_tokens", "200", "--device", "cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    try:
        for line in proc.stdout:  # the server says when it listens (a handshake on its log)
            if b"Uvicorn running" in line:
                break
        else:
            raise AssertionError("the server did not start")
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        body = {"model": str(tiny_checkpoint), "prompt": "What is 1 + 1?", "stream": True, "seed": 0}
        conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.status == 200
        first = response.readline()
        assert first.startswith(b"data: ")
        proc.send_signal(signal.SIGTERM)
        rest = response.read().decode()
        assert rest.rstrip().endswith("data: [DONE]") and '"finish_reason": "' in rest
        assert proc.wait(120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
