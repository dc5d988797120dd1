"""`parallel-r1 serve`: the openai client against a real server on a tiny model (uvicorn on
loopback, in a thread): each served completion equals the offline engine's for the same request;
bad requests get an OpenAI error naming the field and the server keeps serving; 401, 429."""

from __future__ import annotations

import dataclasses
import json
import threading
import urllib.error
import urllib.request

import openai
import pytest

from parallel_r1.decoding.config import DecodingConfig
from parallel_r1.serve import ServeConfig, build_app, engine_generate


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
    model.eval()
    defaults = DecodingConfig(max_new_tokens=24, max_path_tokens=8, dtype="float32")
    cfg = ServeConfig(model="tiny", api_key=None)
    app = build_app(cfg, tok, engine_generate(model, tok), defaults, context=model.config.max_position_embeddings)
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
    greedy = client.completions.create(model="tiny", prompt=prompt, max_tokens=24, temperature=0)
    assert greedy.choices[0].text == _offline(model, tok, defaults, prompt, 1, temperature=0.0)[0]
    sampled = client.completions.create(model="tiny", prompt=prompt, max_tokens=24, temperature=1.0, n=3, seed=7,
                                        extra_body={"num_paths": 3})  # fmt: skip
    want = _offline(model, tok, defaults, prompt, 3, temperature=1.0, seed=7, num_paths=3)
    assert [c.text for c in sampled.choices] == want
    again = client.completions.create(model="tiny", prompt=prompt, max_tokens=24, temperature=1.0, n=3, seed=7,
                                      extra_body={"num_paths": 3})  # fmt: skip
    assert [c.text for c in again.choices] == want  # seeded: the same whatever came before
    text = greedy.choices[0].text
    assert len(text) > 4  # a stop string inside the greedy text cuts it there, finish reason "stop"
    cut = client.completions.create(model="tiny", prompt=prompt, max_tokens=24, temperature=0, stop=[text[3:5]])
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
    got = client.chat.completions.create(model="tiny", messages=messages, max_tokens=24, temperature=0, logprobs=True)
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert got.choices[0].message.content == _offline(model, tok, defaults, prompt, 1, temperature=0.0)[0]
    assert got.choices[0].message.role == "assistant" and len(got.choices[0].logprobs.content) > 0


@pytest.mark.parametrize(
    "body, status, param",
    [
        ({"model": "nope", "prompt": "x"}, 404, "model"),
        ({"model": "tiny", "prompt": "x", "stream": True}, 400, "stream"),
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


def _fake_sample(tok):
    from parallel_r1.decoding.engine import Sample

    ids = tok.encode("Final Answer: 2", add_special_tokens=False)
    return Sample(0, [1], ids, [0.0] * len(ids), [False] * len(ids), "Final Answer: 2", "eos", 0)


def test_api_key_and_a_full_queue(tiny_tokenizer):
    """401 without the key; with the engine held (a handshake, not a sleep) and one request
    queued, the next gets 429 with Retry-After; released, the held two complete."""
    release, entered = threading.Event(), threading.Event()

    def generate(ids, n, decoding):
        entered.set()
        assert release.wait(60)
        return [_fake_sample(tiny_tokenizer)] * n

    cfg = ServeConfig(model="tiny", api_key="secret", max_queued=1)
    app = build_app(cfg, tiny_tokenizer, generate, DecodingConfig(max_new_tokens=8))
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
        assert entered.wait(60)  # the first is decoding
        held[1].start()
        while app.state.worker.depth() < 1:  # the second is queued (the worker is blocked: no race)
            threading.Event().wait(0.01)
        code, answer = server.post("/v1/completions", body, key)
        assert code == 429 and answer["headers"]["retry-after"] == "1"
        release.set()
        for t in held:
            t.join(60)
        assert [r[0] for r in results] == [200, 200]
        assert server.post("/v1/completions", body, key)[0] == 200


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
