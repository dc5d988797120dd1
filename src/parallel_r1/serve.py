"""An OpenAI-compatible server on the exact decoding engine (docs/serve.md).

``POST /v1/completions`` and ``/v1/chat/completions`` in the OpenAI wire format (the ``openai``
client works unchanged, streaming included), ``GET /v1/models``, ``/health`` and ``/metrics``
(Prometheus text), on FastAPI + uvicorn as vLLM's own server. Requests are decoded together by
one :class:`~parallel_r1.decoding.engine.Batch` (continuous batching: a request joins the
running rows at the next decoding step and leaves the step it ends), each sample with its
request's settings over the server's :class:`~parallel_r1.decoding.config.DecodingConfig` and
its own seeded sampler, so a served completion is what the engine writes offline for the same
prompt, settings and seed, whatever else is decoding. Parallel-thinking settings are extension
fields of the request (``num_paths``, ``max_blocks``, ``max_path_tokens``, ``variant``); every
choice carries its parsed structure (``parallel``) and ``usage`` has ``critical_path_tokens``.

Beyond ``max_queued`` waiting requests: 429 with ``Retry-After``; past its deadline a request is
dropped from the batch with 504; a client that disconnects frees its rows at the next step. A
field the engine cannot honour is a 400 naming it, never silently ignored: ``echo``, ``suffix``,
``best_of`` > 1, penalties, ``logit_bias``, top-``logprobs`` alternatives, log-probs while
streaming.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations (the
# `Request` imported inside build_app) at definition time.
import asyncio
import collections
import dataclasses
import json
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
        default=64,
        metadata={"help": "Requests waiting to join the batch (it holds --batch_size samples); more get 429."},
    )
    request_timeout: float = field(
        default=600.0,
        metadata={
            "help": "Seconds from arrival to answer before a request is dropped with 504 (a request's `timeout` field sets its own)."
        },
    )
    device: str = field(
        default="auto", metadata={"help": "auto (the first GPU when there is one, else the CPU), cpu, cuda, cuda:N."}
    )

    def __post_init__(self):
        from .devices import resolve_device

        resolve_device(self.device)  # a device this machine lacks fails here, before any model loads
        positive(self, "max_queued", "request_timeout")
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
                 "n", "seed", "stop", "logprobs", "user", "stream", "stream_options"}  # fmt: skip
EXTENSIONS = {"num_paths", "max_blocks", "max_path_tokens", "variant", "top_k", "timeout"}
# request field -> DecodingConfig field
TO_DECODING = {"max_tokens": "max_new_tokens", "max_completion_tokens": "max_new_tokens", "temperature": "temperature",
               "top_p": "top_p", "top_k": "top_k", "seed": "seed", "num_paths": "num_paths",
               "max_blocks": "max_blocks", "max_path_tokens": "max_path_tokens", "variant": "variant"}  # fmt: skip


@dataclass(eq=False)
class Job:
    """One request for the worker: prompt token ids, ``n``, the decoding settings, its deadline
    (``time.monotonic()``), and the callbacks it reports through (called on the worker thread):
    ``done(samples, error)`` once, ``progress(snapshots)`` after each step for a streaming
    request (per choice: :meth:`Batch.progress`'s (flat ids, open paths' ids), or None once it
    ended). ``cancelled`` is set from the event loop when the client goes away."""

    prompt_ids: list[int]
    n: int
    decoding: Any  # DecodingConfig
    done: Callable[[list | None, BaseException | None], None]
    deadline: float | None = None
    progress: Callable[[list], None] | None = None
    cancelled: bool = False
    uids: list[int] = field(default_factory=list)


class Worker:
    """The one thread that owns the engine: admits queued :class:`Job` s into one continuously
    batched :class:`~parallel_r1.decoding.engine.Batch` while it holds fewer than ``capacity``
    samples (a job larger than that runs alone), steps it, and hands each job its samples the
    step its last one ends. ``changed`` is notified after every step (tests wait on it).

    With ``thread=False`` nothing starts: the caller runs :meth:`run` on its own thread, as
    :func:`serve_forever` does on the main thread (why: its docstring)."""

    def __init__(
        self,
        engine,
        max_queued: int,
        capacity: int,
        on_cancel: Callable[[str], None] = lambda reason: None,
        thread: bool = True,
    ):
        self.engine, self.max_queued, self.capacity, self.on_cancel = engine, max_queued, capacity, on_cancel
        self.queue: collections.deque[Job] = collections.deque()
        self.running: list[Job] = []
        self.changed = threading.Condition()
        self.steps = 0
        self.stopping = False
        self.thread = threading.Thread(target=self.run, name="parallel-r1-engine", daemon=True) if thread else None
        if self.thread is not None:
            self.thread.start()

    def submit(self, job: Job) -> None:
        with self.changed:
            if self.stopping:
                raise RequestError("the server is shutting down", status=503, kind="service_unavailable")
            if len(self.queue) >= self.max_queued:
                raise RequestError("the server's queue is full; retry later", status=429, kind="rate_limit_error")
            self.queue.append(job)
            self.changed.notify_all()

    def cancel(self, job: Job) -> None:
        """Called from the event loop: the job leaves the batch at the next step."""
        with self.changed:
            job.cancelled = True
            self.changed.notify_all()

    def depth(self) -> int:
        return len(self.queue)

    def decoding(self) -> int:
        """Samples in the batch now."""
        return sum(job.n for job in self.running)

    def stop(self) -> None:
        """Finish every queued and running job, then end :meth:`run` (joined when it is the worker's own thread)."""
        with self.changed:
            self.stopping = True
            self.changed.notify_all()
        if self.thread is not None:
            self.thread.join()

    def run(self) -> None:
        """Decode until :meth:`stop` and nothing is left."""
        while True:
            try:
                with self.engine.batch() as batch:
                    self._serve(batch)
                    return
            except BaseException as e:  # the engine failed: its jobs fail, the server keeps serving
                for job in self.running:
                    job.done(None, e)
                self.running = []

    def _serve(self, batch) -> None:
        while True:
            with self.changed:
                while not self.queue and not self.running and not self.stopping:
                    self.changed.wait()
                if self.stopping and not self.queue and not self.running:
                    return
            rows = self.decoding()
            while True:  # admit one job at a time, so that a failing one loses no other
                with self.changed:
                    if not self.queue or (rows > 0 and rows + self.queue[0].n > self.capacity):
                        queued = list(self.queue)
                        break
                    job = self.queue.popleft()
                try:
                    job.uids = batch.add(job.prompt_ids, job.n, job.decoding)
                except ValueError as e:  # this request's own refusal (no room for a block, ...)
                    job.done(None, e)
                    continue
                except BaseException as e:  # the engine failed (out of memory, ...): run() starts afresh
                    job.done(None, e)
                    raise
                self.running.append(job)
                rows += job.n
            self._drop(batch, queued)
            if batch.rows:
                batch.step()
            self._report(batch)
            with self.changed:
                self.steps += 1
                self.changed.notify_all()

    def _drop(self, batch, queued: list[Job]) -> None:
        """Cancelled and overdue jobs leave the batch (or the queue) now."""
        now = time.monotonic()
        for job in [*self.running, *queued]:
            reason = "disconnect" if job.cancelled else "deadline" if job.deadline and now > job.deadline else None
            if reason is None:
                continue
            if job in self.running:
                batch.cancel(job.uids)
                self.running.remove(job)
            else:
                with self.changed:
                    self.queue.remove(job)
            self.on_cancel(reason)
            if reason == "deadline":
                job.done(None, RequestError("the request took longer than its deadline", status=504, kind="timeout"))
            else:
                job.done(None, RequestError("the client disconnected", status=499, kind="cancelled"))

    def _report(self, batch) -> None:
        for job in list(self.running):
            if all(u in batch.done for u in job.uids):
                self.running.remove(job)
                job.done(batch.take(job.uids), None)
            elif job.progress is not None:
                job.progress([batch.progress(u) if u in batch.live else None for u in job.uids])


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
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise RequestError(f"'stream' must be true or false, got {stream!r}", param="stream")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict) or set(stream_options) - {"include_usage"}:
        raise RequestError("'stream_options' may only hold 'include_usage'", param="stream_options")
    if stream_options and not stream:
        raise RequestError("'stream_options' needs 'stream': true", param="stream_options")
    if stream and logprobs is not None and logprobs is not False:  # 0 asks for the sampled tokens
        raise RequestError("'logprobs' are not streamed; ask without 'stream'", param="logprobs")
    timeout = body.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0):
        raise RequestError(f"'timeout' must be a number of seconds > 0, got {timeout!r}", param="timeout")
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
    opts = {"n": n, "stop": [stop] if isinstance(stop, str) else list(stop or []), "logprobs": logprobs,
            "stream": stream, "include_usage": bool(stream_options.get("include_usage")), "timeout": timeout}  # fmt: skip
    return opts, decoding


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


def build_app(cfg: ServeConfig, tokenizer, engine, context: int | None = None, worker_thread: bool = True):
    """The FastAPI app around ``engine`` (a :class:`~parallel_r1.decoding.ParallelEngine`: its
    ``cfg`` are the server's defaults, its ``batch_size`` the samples decoded together);
    ``context`` is the model's context length (prompt + ``max_tokens`` beyond it is a 400).
    ``app.state.worker`` is its :class:`Worker`, on a thread of its own unless ``worker_thread``
    is False (then :func:`serve_forever` runs it)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

    from .structure import TagIds

    tags = TagIds.from_tokenizer(tokenizer)
    defaults = engine.cfg
    registry = CollectorRegistry()
    requests = Counter(
        "parallel_r1_requests", "Requests answered, by endpoint and status", ["endpoint", "status"], registry=registry
    )
    tokens = Counter(
        "parallel_r1_tokens", "Tokens, by kind (prompt, completion, critical_path)", ["kind"], registry=registry
    )
    cancelled = Counter(
        "parallel_r1_cancelled", "Requests dropped from the batch, by reason", ["reason"], registry=registry
    )
    queued = Gauge("parallel_r1_queue_depth", "Requests waiting to join the batch", registry=registry)
    running = Gauge("parallel_r1_running_samples", "Samples decoding now", registry=registry)
    occupancy = Gauge("parallel_r1_batch_occupancy", "Samples decoding now / batch_size", registry=registry)
    latency = Histogram("parallel_r1_request_seconds", "Time from arrival to answer", ["endpoint"], registry=registry)
    worker = Worker(
        engine, cfg.max_queued, defaults.batch_size, on_cancel=lambda r: cancelled.labels(r).inc(), thread=worker_thread
    )
    ends = [t for t in (tokenizer.eos_token, tokenizer.pad_token) if t]
    tag_ids = set(tags.as_tuple())

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

    def submit(ids: list[int], opts: dict, decoding) -> tuple[Job, asyncio.Queue]:
        """The job on the worker; its reports arrive on the returned queue as (kind, value, error)."""
        loop, events = asyncio.get_running_loop(), asyncio.Queue()

        def put(event):
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the event loop is gone (the server stopped): nobody is waiting
                pass

        timeout = opts["timeout"] or cfg.request_timeout
        job = Job(ids, opts["n"], decoding, lambda samples, exc: put(("done", samples, exc)),
                  deadline=time.monotonic() + timeout,
                  progress=(lambda snap: put(("progress", snap, None))) if opts["stream"] else None)  # fmt: skip
        worker.submit(job)
        return job, events

    def failure(exc: BaseException) -> RequestError:
        if isinstance(exc, RequestError):
            return exc
        if isinstance(exc, ValueError):  # the engine's own refusals (a prompt that leaves no room, ...)
            return RequestError(str(exc))
        return RequestError(f"the engine failed: {exc}", status=500, kind="internal_error")

    def choices_and_usage(samples, ids, opts, kind) -> tuple[list[dict], dict]:
        choices, usage = [], {"prompt_tokens": len(ids), "completion_tokens": 0, "critical_path_tokens": 0}
        for i, s in enumerate(samples):
            c = choice_fields(s, tokenizer, tags, opts["stop"])
            usage["completion_tokens"] += c.pop("tokens")
            usage["critical_path_tokens"] += c["critical_path_tokens"]
            choice = {"index": i, "finish_reason": c["finish_reason"], "parallel": c["parallel"],
                      "critical_path_tokens": c["critical_path_tokens"], "text": c["text"]}  # fmt: skip
            if kind == "chat" and opts["logprobs"]:
                choice["logprobs"] = {"content": _token_logprobs(s, tokenizer)}
            elif kind != "chat":
                choice["logprobs"] = None
                if opts["logprobs"] == 0:
                    entries = _token_logprobs(s, tokenizer)
                    choice["logprobs"] = {"tokens": [e["token"] for e in entries],
                                          "token_logprobs": [e["logprob"] for e in entries], "top_logprobs": None}  # fmt: skip
            choices.append(choice)
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        for k in ("prompt", "completion", "critical_path"):
            tokens.labels(k).inc(usage[f"{k}_tokens"])
        return choices, usage

    async def answer(request: Request, kind: str):
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
            job, events = submit(ids, opts, decoding)
        except RequestError as e:
            return error(e, endpoint)
        head = {"id": f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}", "created": int(time.time()),
                "model": cfg.served_model_name}  # fmt: skip
        if opts["stream"]:
            stream = Stream(tokenizer, tag_ids, tags, opts, ends)
            return StreamingResponse(
                stream_events(job, events, stream, head, kind, ids, endpoint, start), media_type="text/event-stream"
            )
        try:
            while True:  # wait for the job, looking every quarter second whether the client is still there
                try:
                    _, samples, exc = await asyncio.wait_for(events.get(), 0.25)
                    break
                except TimeoutError:
                    if await request.is_disconnected():
                        worker.cancel(job)
                        return error(RequestError("the client disconnected", status=499, kind="cancelled"), endpoint)
        except asyncio.CancelledError:
            worker.cancel(job)
            raise
        if exc is not None:
            return error(failure(exc), endpoint)
        choices, usage = choices_and_usage(samples, ids, opts, kind)
        if kind == "chat":
            for c in choices:
                c["message"] = {"role": "assistant", "content": c.pop("text")}
        requests.labels(endpoint, "200").inc()
        latency.labels(endpoint).observe(time.perf_counter() - start)
        obj = "chat.completion" if kind == "chat" else "text_completion"
        return JSONResponse({**head, "object": obj, "choices": choices, "usage": usage})

    async def stream_events(job: Job, events: asyncio.Queue, stream: "Stream", head, kind, ids, endpoint, start):
        """Server-sent events of one request: content deltas of each choice's canonical flat text
        (and ``parallel_delta`` previews of its open paths), a last chunk per choice with its finish
        reason and structure, the usage chunk when asked, ``[DONE]``."""
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"

        def chunk(choices: list[dict], **extra) -> str:
            return f"data: {json.dumps({**head, 'object': obj, 'choices': choices, **extra})}\n\n"

        def choice(i: int, text: str | None, finish=None, **extra) -> dict:
            if kind == "chat":
                delta = {} if text is None else {"content": text}
                return {"index": i, "delta": delta, "finish_reason": finish, **extra}
            return {"index": i, "text": text or "", "finish_reason": finish, "logprobs": None, **extra}

        finished = False
        try:
            if kind == "chat":
                yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                             for i in range(job.n)])  # fmt: skip
            while True:
                event, value, exc = await events.get()
                while event == "progress" and not events.empty():  # only the latest snapshot matters
                    event, value, exc = events.get_nowait()
                if event == "progress":
                    out = [choice(i, text, **extra) for i, text, extra in stream.deltas(value)]
                    if out:
                        yield chunk(out)
                    continue
                finished = True
                if exc is not None:
                    e = failure(exc)
                    requests.labels(endpoint, str(e.status)).inc()
                    yield f"data: {json.dumps(e.body())}\n\ndata: [DONE]\n\n"
                    return
                choices, usage = choices_and_usage(value, ids, stream.opts, kind)
                yield chunk([choice(c["index"], stream.rest(c["index"], c["text"]), c["finish_reason"],
                                    parallel=c["parallel"], critical_path_tokens=c["critical_path_tokens"])
                             for c in choices])  # fmt: skip
                if stream.opts["include_usage"]:
                    yield chunk([], usage=usage)
                yield "data: [DONE]\n\n"
                requests.labels(endpoint, "200").inc()
                latency.labels(endpoint).observe(time.perf_counter() - start)
                return
        finally:
            if not finished:  # the client went away (the generator was closed or cancelled)
                worker.cancel(job)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await answer(request, "completions")

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await answer(request, "chat")

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
        running.set(worker.decoding())
        occupancy.set(worker.decoding() / defaults.batch_size)
        return PlainTextResponse(generate_latest(registry).decode(), media_type="text/plain; version=0.0.4")

    return app


class Stream:
    """What a streaming request has sent: per choice, the prefix of its content, and of each path
    of its open block. A partial decode is sent only as far as it cannot change: not a trailing
    incomplete character (U+FFFD), not the last characters that could still begin a stop string
    or the end token's text (they are cut from the final text), so the concatenated deltas equal
    the non-streamed text."""

    MARGIN = 4  # characters kept back beyond the longest stop/end text: a tokenizer's clean-up of spaces

    def __init__(self, tokenizer, tag_ids: set[int], tags, opts: dict, ends: list[str]):
        self.tokenizer, self.tag_ids, self.tags, self.opts = tokenizer, tag_ids, tags, opts
        self.hold = max((len(s) for s in [*opts["stop"], *ends]), default=0) + self.MARGIN
        self.sent = [""] * opts["n"]
        self.paths: dict[tuple[int, int, int], str] = {}

    def deltas(self, snapshot: list) -> list[tuple[int, str | None, dict]]:
        """(choice, content delta or None, extension fields) for one progress snapshot."""
        from .evaluate import cut_at_stop

        out = []
        for i, snap in enumerate(snapshot):
            if snap is None:
                continue
            flat, paths = snap
            text = self.tokenizer.decode(flat, skip_special_tokens=False).rstrip("\ufffd")
            cut = cut_at_stop(text, self.opts["stop"])
            safe = cut if len(cut) < len(text) else text[: max(0, len(text) - self.hold)]
            if len(safe) > len(self.sent[i]) and safe.startswith(self.sent[i]):
                out.append((i, safe[len(self.sent[i]) :], {}))
                self.sent[i] = safe
            block = flat.count(self.tags.parallel_open) - 1
            for j, path in enumerate(paths):
                words = [t for t in path if t not in self.tag_ids]
                ptext = self.tokenizer.decode(words, skip_special_tokens=False).rstrip("\ufffd")
                before = self.paths.get((i, block, j), "")
                if len(ptext) > len(before) and ptext.startswith(before):
                    out.append((i, None, {"parallel_delta": {"block": block, "path": j, "text": ptext[len(before) :]}}))
                    self.paths[(i, block, j)] = ptext
        return out

    def rest(self, i: int, final: str) -> str:
        """The last content delta of choice ``i``, whose whole text is ``final``."""
        if not final.startswith(self.sent[i]):  # cannot happen by the hold-back rule; say so if it does
            raise RuntimeError(f"serve: streamed text {self.sent[i]!r} is not a prefix of the completion {final!r}")
        return final[len(self.sent[i]) :]


def _token_logprobs(sample, tokenizer) -> list[dict]:
    return [
        {"token": tok, "logprob": float(lp), "bytes": list(tok.encode()), "top_logprobs": []}
        for tok, lp in zip(tokenizer.convert_ids_to_tokens(list(sample.completion_ids)), sample.logprobs)
    ]


def serve_forever(app, host: str, port: int, log_level: str = "info") -> None:
    """Serve ``app`` (made with ``worker_thread=False``) until SIGTERM or Ctrl-C, then drain.

    uvicorn runs on a thread and the engine's worker on the calling thread, the main one, which
    loaded the model: torch's CPU build keeps one OpenMP thread team per thread that runs
    parallel ops, and with two teams on a small CPU (more OpenMP threads than cores) libgomp
    shortens every idle thread's spin, which made each decoding step 25-35 % slower on 2 cores
    (bench/serve.py; docs/serve.md). A signal asks uvicorn to stop accepting and finish the
    requests in flight; its lifespan shutdown then stops the worker after the queue, and this
    returns. A second Ctrl-C stops at once."""
    import signal

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level))
    worker = app.state.worker

    def on_signal(signum, frame):
        server.force_exit = server.should_exit and signum == signal.SIGINT
        server.should_exit = True

    def web():
        try:
            server.run()
        finally:  # uvicorn ended (drained, or could not start): the worker ends after its queue
            worker.stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    thread = threading.Thread(target=web, name="uvicorn")
    try:
        thread.start()
        worker.run()
        thread.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not server.started:
        raise RuntimeError(f"serve: could not listen on {host}:{port} (uvicorn's log above says why)")
