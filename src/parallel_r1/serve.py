"""An OpenAI-compatible server on the exact decoding engine (docs/serve.md).

``POST /v1/completions`` and ``/v1/chat/completions`` in the OpenAI wire format (the ``openai``
client works unchanged), ``GET /v1/models``, ``/health`` and ``/metrics`` (Prometheus text), on
FastAPI + uvicorn as vLLM's own server. Each request is decoded by
:class:`~parallel_r1.decoding.ParallelEngine` with the request's settings over the server's
:class:`~parallel_r1.decoding.config.DecodingConfig`, so a served completion is what the engine
writes offline for the same prompt, settings and seed. Parallel-thinking settings are extension
fields of the request (``num_paths``, ``max_blocks``, ``max_path_tokens``, ``variant``); every
choice carries its parsed structure (``parallel``) and ``usage`` has ``critical_path_tokens``.

Requests are decoded one at a time by one worker thread, in arrival order, behind a bounded
queue (beyond ``max_queued`` waiting: 429 with ``Retry-After``). A field the engine cannot honour
is a 400 naming it, never silently ignored: ``stream``, ``echo``, ``suffix``, ``best_of`` > 1,
penalties, ``logit_bias``, top-``logprobs`` alternatives.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations (the
# `Request` imported inside build_app) at definition time.
import asyncio
import dataclasses
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .validate import positive


@dataclass
class ServeConfig:
    """Where the server listens and what it serves; how it samples by default is the
    ``DecodingConfig`` combined with it (its flags follow these)."""

    model: str = field(metadata={"help": "Checkpoint folder, hub id or alias (smollm2)."})
    host: str = field(default="127.0.0.1", metadata={"help": "Address to listen on."})
    port: int = field(default=8000, metadata={"help": "Port to listen on (0 = any free port)."})
    served_model_name: str | None = field(
        default=None, metadata={"help": "The model name clients send and /v1/models lists (default: --model)."}
    )
    api_key: str | None = field(
        default=None,
        metadata={"help": "Require `Authorization: Bearer KEY` on /v1/* (as vLLM's --api-key); 401 otherwise."},
    )
    max_queued: int = field(
        default=64, metadata={"help": "Requests waiting for the engine beyond the one decoding; more get 429."}
    )
    device: str = field(
        default="auto", metadata={"help": "auto (the first GPU when there is one, else the CPU), cpu, cuda, cuda:N."}
    )

    def __post_init__(self):
        from .devices import resolve_device

        resolve_device(self.device)  # a device this machine lacks fails here, before any model loads
        positive(self, "max_queued")
        if not 0 <= self.port < 65536:
            raise ValueError(f"--port must be between 0 and 65535, got {self.port}")
        self.served_model_name = self.served_model_name or self.model


class RequestError(Exception):
    """An OpenAI-style error: HTTP ``status``, the offending ``param``, a ``type``."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.param, self.status, self.kind = param, status, kind

    def body(self) -> dict:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": None}}


# OpenAI fields the engine cannot honour: name -> the value that means "not used".
UNSUPPORTED = {
    "stream": False,
    "echo": False,
    "suffix": None,
    "best_of": 1,
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "logit_bias": None,
    "top_logprobs": 0,
    "tools": None,
    "tool_choice": None,
    "response_format": None,
}
# Fields read from a request: OpenAI's, then ours (extensions).
OPENAI_FIELDS = {"model", "prompt", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p",
                 "n", "seed", "stop", "logprobs", "user"}  # fmt: skip
EXTENSIONS = {"num_paths", "max_blocks", "max_path_tokens", "variant", "top_k"}
# request field -> DecodingConfig field
TO_DECODING = {"max_tokens": "max_new_tokens", "max_completion_tokens": "max_new_tokens", "temperature": "temperature",
               "top_p": "top_p", "top_k": "top_k", "seed": "seed", "num_paths": "num_paths",
               "max_blocks": "max_blocks", "max_path_tokens": "max_path_tokens", "variant": "variant"}  # fmt: skip


@dataclass
class Job:
    """One request for the worker: prompt token ids, ``n``, the decoding settings, its future."""

    prompt_ids: list[int]
    n: int
    decoding: Any  # DecodingConfig
    done: Callable[[Any, BaseException | None], None]


def check_request(body: Any, kind: str, served_model: str, defaults) -> tuple[dict, Any]:
    """The request's fields checked (400 naming the field otherwise) and its DecodingConfig.

    ``kind`` is ``completions`` or ``chat``; ``defaults`` the server's DecodingConfig."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    known = OPENAI_FIELDS | EXTENSIONS | set(UNSUPPORTED)
    for name in body:
        if name not in known:
            raise RequestError(f"unknown field {name!r}", param=name)
    for name, unused in UNSUPPORTED.items():
        if name in body and body[name] not in (unused, None):
            raise RequestError(f"{name!r} is not supported by this server (docs/serve.md)", param=name)
    if body.get("model") != served_model:
        raise RequestError(
            f"the model {body.get('model')!r} does not exist; this server serves {served_model!r}",
            param="model", status=404, kind="NotFoundError",
        )  # fmt: skip
    need = "prompt" if kind == "completions" else "messages"
    if need not in body:
        raise RequestError(f"{need!r} is required", param=need)
    if kind == "completions" and not isinstance(body["prompt"], str):
        raise RequestError("'prompt' must be one string (token-id and list prompts are not supported)", param="prompt")
    if kind == "chat":
        msgs = body["messages"]
        if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) and "role" in m for m in msgs):
            raise RequestError("'messages' must be a non-empty list of {role, content}", param="messages")
    n = body.get("n", 1)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise RequestError(f"'n' must be an integer >= 1, got {n!r}", param="n")
    logprobs = body.get("logprobs")
    if kind == "completions" and logprobs not in (None, 0):
        raise RequestError(
            "'logprobs' > 0 asks for alternatives; only the sampled tokens' (logprobs: 0)", param="logprobs"
        )
    stop = body.get("stop")
    if stop is not None and not (
        isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop))
    ):
        raise RequestError("'stop' must be a string or a list of strings", param="stop")
    over = {}
    for name, target in TO_DECODING.items():
        if body.get(name) is not None:
            over[target] = body[name]
    if "max_new_tokens" in over and (not isinstance(over["max_new_tokens"], int) or over["max_new_tokens"] < 1):
        raise RequestError(f"'max_tokens' must be an integer >= 1, got {over['max_new_tokens']!r}", param="max_tokens")
    try:
        decoding = dataclasses.replace(defaults, **over)
    except (ValueError, KeyError, TypeError) as e:
        param = next((n for n, t in TO_DECODING.items() if t in str(e) or n in str(e)), None)
        raise RequestError(str(e).replace("--", ""), param=param) from None
    return {"n": n, "stop": [stop] if isinstance(stop, str) else list(stop or []), "logprobs": logprobs}, decoding


class Worker:
    """The one thread that owns the engine: decodes :class:`Job` s in order from a bounded queue."""

    def __init__(self, generate: Callable[[list[int], int, Any], list], max_queued: int):
        self.generate = generate
        self.jobs: queue.Queue[Job | None] = queue.Queue(maxsize=max_queued)
        self.busy = False
        self.thread = threading.Thread(target=self._loop, name="parallel-r1-engine", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            raise RequestError("the server's queue is full; retry later", status=429, kind="rate_limit_error") from None

    def depth(self) -> int:
        return self.jobs.qsize()

    def stop(self) -> None:
        self.jobs.put(None)  # after the jobs already queued: they finish first
        self.thread.join()

    def _loop(self) -> None:
        while (job := self.jobs.get()) is not None:
            self.busy = True
            try:
                job.done(self.generate(job.prompt_ids, job.n, job.decoding), None)
            except BaseException as e:  # the request fails, the server keeps serving
                job.done(None, e)
            finally:
                self.busy = False


def choice_fields(sample, tokenizer, tags, stop: list[str]) -> dict:
    """What a choice says about one :class:`~parallel_r1.decoding.engine.Sample`: the text (special
    tokens removed but for the tags, cut at a stop string), OpenAI's finish reason, the parsed
    ``parallel`` structure and its critical-path tokens."""
    from .evaluate import cut_at_stop, strip_end
    from .format import parse
    from .metrics import critical_path_tokens

    whole = strip_end(sample.text, [t for t in (tokenizer.eos_token, tokenizer.pad_token) if t])
    text = cut_at_stop(whole, stop)
    stopped = len(text) < len(whole)
    finish = "stop" if stopped or sample.finish_reason in ("eos", "max_blocks") else "length"
    parsed = parse(text)
    return {
        "text": text,
        "finish_reason": finish,
        "parallel": {
            "blocks": [{"paths": b.paths, "summary": b.summary} for b in parsed.blocks],
            "format_ok": parsed.format_ok,
            "num_blocks": sample.num_blocks,
        },
        "tokens": len(sample.completion_ids),
        "critical_path_tokens": critical_path_tokens(sample.completion_ids, tags.path_open, tags.path_close),
    }


def build_app(
    cfg: ServeConfig, tokenizer, generate: Callable[[list[int], int, Any], list], defaults, context: int | None = None
):
    """The FastAPI app. ``generate(prompt_ids, n, decoding) -> list[Sample]`` is called on the
    worker thread (the engine in production; tests may pass their own); ``context`` is the
    model's context length (prompt + ``max_tokens`` beyond it is a 400)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

    from .structure import TagIds

    tags = TagIds.from_tokenizer(tokenizer)
    registry = CollectorRegistry()
    requests = Counter(
        "parallel_r1_requests", "Requests answered, by endpoint and status", ["endpoint", "status"], registry=registry
    )
    tokens = Counter(
        "parallel_r1_tokens", "Tokens, by kind (prompt, completion, critical_path)", ["kind"], registry=registry
    )
    queued = Gauge("parallel_r1_queue_depth", "Requests waiting for the engine", registry=registry)
    occupancy = Gauge("parallel_r1_batch_occupancy", "Requests decoding now (0 or 1)", registry=registry)
    latency = Histogram("parallel_r1_request_seconds", "Time from arrival to answer", ["endpoint"], registry=registry)
    worker = Worker(generate, cfg.max_queued)

    @asynccontextmanager
    async def lifespan(app):
        yield
        worker.stop()  # uvicorn has answered the in-flight requests; the queue is empty

    app = FastAPI(title="parallel-r1", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.worker = worker

    def error(e: RequestError, endpoint: str) -> JSONResponse:
        requests.labels(endpoint, str(e.status)).inc()
        headers = {"Retry-After": "1"} if e.status == 429 else None
        return JSONResponse(e.body(), status_code=e.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return error(RequestError(f"malformed request: {exc.errors()[0].get('msg', exc)}"), request.url.path)

    def authorised(request: Request) -> None:
        if cfg.api_key is not None and request.headers.get("authorization") != f"Bearer {cfg.api_key}":
            raise RequestError("invalid or missing API key", status=401, kind="authentication_error")

    async def decode(prompt_ids: list[int], n: int, decoding) -> list:
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def done(result, exc):
            loop.call_soon_threadsafe(
                lambda: future.done() or (future.set_exception(exc) if exc else future.set_result(result))
            )

        worker.submit(Job(prompt_ids, n, decoding, done))
        return await future

    async def serve(request: Request, kind: str) -> JSONResponse:
        endpoint, start = request.url.path, time.perf_counter()
        try:
            authorised(request)
            try:
                body = await request.json()
            except ValueError:
                raise RequestError("the request body is not valid JSON") from None
            opts, decoding = check_request(body, kind, cfg.served_model_name, defaults)
            if kind == "chat":
                prompt = tokenizer.apply_chat_template(body["messages"], tokenize=False, add_generation_prompt=True)
            else:
                prompt = body["prompt"]
            ids = tokenizer.encode(prompt, add_special_tokens=False)
            if not ids:
                raise RequestError("the prompt is empty", param="prompt" if kind == "completions" else "messages")
            if context is not None and len(ids) + decoding.max_new_tokens > context:
                raise RequestError(
                    f"prompt ({len(ids)} tokens) + max_tokens ({decoding.max_new_tokens}) exceed the model's context of {context}",
                    param="max_tokens",
                )  # fmt: skip
            try:
                samples = await decode(ids, opts["n"], decoding)
            except RequestError:
                raise
            except ValueError as e:  # the engine's own refusals (a prompt that leaves no room, ...)
                raise RequestError(str(e)) from None
        except RequestError as e:
            return error(e, endpoint)
        choices, usage = [], {"prompt_tokens": len(ids), "completion_tokens": 0, "critical_path_tokens": 0}
        for i, s in enumerate(samples):
            c = choice_fields(s, tokenizer, tags, opts["stop"])
            usage["completion_tokens"] += c.pop("tokens")
            usage["critical_path_tokens"] += c["critical_path_tokens"]
            if kind == "chat":
                choice = {"index": i, "message": {"role": "assistant", "content": c["text"]}, "finish_reason": c["finish_reason"],
                          "parallel": c["parallel"], "critical_path_tokens": c["critical_path_tokens"]}  # fmt: skip
                if opts["logprobs"]:
                    choice["logprobs"] = {"content": _token_logprobs(s, tokenizer)}
            else:
                choice = {"index": i, "text": c["text"], "finish_reason": c["finish_reason"], "parallel": c["parallel"],
                          "critical_path_tokens": c["critical_path_tokens"], "logprobs": None}  # fmt: skip
                if opts["logprobs"] == 0:
                    entries = _token_logprobs(s, tokenizer)
                    choice["logprobs"] = {"tokens": [e["token"] for e in entries],
                                          "token_logprobs": [e["logprob"] for e in entries], "top_logprobs": None}  # fmt: skip
            choices.append(choice)
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        for k in ("prompt", "completion", "critical_path"):
            tokens.labels(k).inc(usage[f"{k}_tokens"])
        requests.labels(endpoint, "200").inc()
        latency.labels(endpoint).observe(time.perf_counter() - start)
        prefix, obj = ("chatcmpl", "chat.completion") if kind == "chat" else ("cmpl", "text_completion")
        return JSONResponse({"id": f"{prefix}-{uuid.uuid4().hex}", "object": obj, "created": int(time.time()),
                             "model": cfg.served_model_name, "choices": choices, "usage": usage})  # fmt: skip

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await serve(request, "completions")

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await serve(request, "chat")

    @app.get("/v1/models")
    async def models(request: Request):
        try:
            authorised(request)
        except RequestError as e:
            return error(e, "/v1/models")
        return {"object": "list", "data": [{"id": cfg.served_model_name, "object": "model", "owned_by": "parallel-r1"}]}

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics():
        queued.set(worker.depth())
        occupancy.set(1 if worker.busy else 0)
        return PlainTextResponse(generate_latest(registry).decode(), media_type="text/plain; version=0.0.4")

    return app


def _token_logprobs(sample, tokenizer) -> list[dict]:
    return [
        {"token": tok, "logprob": float(lp), "bytes": list(tok.encode()), "top_logprobs": []}
        for tok, lp in zip(tokenizer.convert_ids_to_tokens(list(sample.completion_ids)), sample.logprobs)
    ]


def engine_generate(model, tokenizer) -> Callable[[list[int], int, Any], list]:
    """``generate(prompt_ids, n, decoding)`` on a fresh :class:`ParallelEngine` per request: the
    request's settings, seed included, exactly as an offline ``ParallelEngine(...).generate``."""
    from .decoding import ParallelEngine

    def generate(prompt_ids: list[int], n: int, decoding):
        return ParallelEngine(model, tokenizer, decoding).generate([prompt_ids], n=n)

    return generate
