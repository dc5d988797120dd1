"""Serving speed, measured side by side in one run: `parallel-r1 serve`'s app on uvicorn (loopback).

    .venv/bin/python bench/serve.py [--model smollm2] [--path-tokens 96] [--repeats 3]

The model's next token is forced by the script of ``bench/decoding.py`` (trunk of 8 tokens,
``<Parallel>``, 2 paths, a 16-token summary, EOS) while the real model runs every forward, so
every contender produces the same tokens and only the way they are served differs:

(a) latency to the final answer of a 2-path response through HTTP  vs  the same tokens decoded
    sequentially in one row in-process (``model.generate``), as bench/decoding.py's (a) (goal <= 0.65);
(b) completed requests per second at 1, 8 and 32 concurrent clients (paths of 16 tokens),
    32 clients ÷ 1 client (goal >= 4);
(c) server overhead: the HTTP round trip  vs  the engine called in-process on the same request
    (goal <= 1.1).

The server is ``parallel-r1 serve``'s own loop in a child process (the forced model cannot be
named on the command line); the in-process contenders run in this one.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from decoding import forced_generate, make_script, timed  # noqa: E402  (bench/decoding.py)

from parallel_r1.decoding import DecodingConfig, ParallelEngine  # noqa: E402
from parallel_r1.decoding.scripted import ScriptedLM  # noqa: E402
from parallel_r1.models import add_tag_tokens, load_model, load_tokenizer  # noqa: E402
from parallel_r1.prompts import build_prompt  # noqa: E402
from parallel_r1.serve import ServeConfig, build_app, serve_forever  # noqa: E402
from parallel_r1.structure import TagIds  # noqa: E402


class Served:
    """``parallel-r1 serve``'s loop (``serve.serve_forever``: uvicorn on a thread, the engine on
    the main thread) on the forced model, in a child process (this script with ``--serve PORT``),
    so that its threads are the command's and nothing of this process shares them."""

    def __init__(self, args, path_tokens: int):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [
            sys.executable,
            __file__,
            "--model",
            args.model,
            "--serve",
            str(self.port),
            "--path-tokens",
            str(path_tokens),
        ]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def __enter__(self):
        for line in self.proc.stdout:  # the child says when uvicorn listens
            if "Uvicorn running" in line:
                threading.Thread(target=self.proc.stdout.read, daemon=True).start()  # keep the pipe flowing
                return self
        raise RuntimeError("the server did not start")

    def __exit__(self, *exc):
        self.proc.terminate()  # SIGTERM: drain, exit 0
        self.proc.wait(60)

    def complete(self, body: dict) -> dict:
        req = urllib.request.Request(
            self.url + "/v1/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=600) as r:
            return json.loads(r.read())


def setup(model_name: str, path_tokens: int):
    """The model, tokenizer, prompt and an engine whose model is forced to the bench's script."""
    torch.manual_seed(0)
    tok = load_tokenizer(model_name)
    model = load_model(model_name, dtype=torch.float32).eval()
    add_tag_tokens(model, tok)
    tags = TagIds.from_tokenizer(tok)
    text = build_prompt("Tom has 3 apples and buys 4 more. How many apples does he have?", tok, "parallel_v3")
    prompt = tok.encode(text, add_special_tokens=False)
    filler = tok.encode(" the", add_special_tokens=False)[0]
    forced = ScriptedLM(model, make_script(tags, filler, tok.eos_token_id, len(prompt), path_tokens))
    # greedy everywhere, as the do_sample=False baseline (bench/decoding.py says why)
    cfg = DecodingConfig(num_paths=2, max_new_tokens=4096, max_path_tokens=4096, temperature=0,
                         path_temperature=None, batch_size=64, dtype="float32")  # fmt: skip
    return model, tok, text, prompt, ParallelEngine(forced, tok, cfg)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--path-tokens", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)  # the child: serve on this port
    args = ap.parse_args()
    if args.serve is not None:
        _, tok, _, _, engine = setup(args.model, args.path_tokens)
        app = build_app(ServeConfig(model="bench", max_queued=1024), tok, engine, worker_thread=False)
        serve_forever(app, "127.0.0.1", args.serve, log_level="info")
        return
    model, tok, text, prompt, engine = setup(args.model, args.path_tokens)
    print(f"model {args.model}, prompt {len(prompt)} tokens, {torch.get_num_threads()} threads")
    body = {"model": "bench", "prompt": text, "max_tokens": 4096}

    # (a) and (c): one request at a time, interleaved repeats
    completion = engine.generate([prompt])[0].completion_ids
    with Served(args, args.path_tokens) as server:
        got = server.complete(body)
        assert got["usage"]["completion_tokens"] == len(completion), (got["usage"], len(completion))
        sides = {
            "http": functools.partial(server.complete, body),
            "in-process": functools.partial(engine.generate, [prompt]),
            "sequential": functools.partial(forced_generate, model, [prompt], [completion], tok.pad_token_id),
        }
        runs = {name: [] for name in sides}
        with torch.no_grad():
            for _ in range(args.repeats):
                for name, fn in sides.items():
                    runs[name].append(timed(fn))
    med = {name: statistics.median(v) for name, v in runs.items()}
    print(
        f"one request of {len(completion)} tokens (2 paths of {args.path_tokens}, critical path "
        f"{got['usage']['critical_path_tokens']}): http {med['http']:.2f}s  in-process {med['in-process']:.2f}s  "
        f"sequential {med['sequential']:.2f}s"
    )
    print(f"  (a) 2-path through HTTP / sequential = {med['http'] / med['sequential']:.2f}  (goal <= 0.65)")

    # (b): requests per second with 1, 8 and 32 clients, short responses
    rates = {}
    with Served(args, 16) as server:
        server.complete(body)  # warm-up
        for clients in (1, 8, 32):
            total = max(4, 2 * clients)
            t0 = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                list(pool.map(lambda _: server.complete(body), range(total)))
            rates[clients] = total / (time.perf_counter() - t0)
    print("  (b) completed requests per second: " + "  ".join(f"{c} clients {r:.2f}/s" for c, r in rates.items()))
    print(f"      32 clients / 1 client = {rates[32] / rates[1]:.2f}  (goal >= 4)")
    print(f"  (c) HTTP round trip / engine in-process = {med['http'] / med['in-process']:.2f}  (goal <= 1.1)")


if __name__ == "__main__":
    main()
