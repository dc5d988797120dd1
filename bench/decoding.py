"""Decoding speed, measured side by side in one run.

    .venv/bin/python bench/decoding.py [--model smollm2] [--path-tokens 96] [--repeats 3]

Every contender produces the *same* tokens: the model's next token is forced by a script
(trunk of 8 tokens, ``<Parallel>``, k paths of ``--path-tokens`` tokens, a 16-token summary,
EOS) while the real model runs every forward, so only the decoding scheme differs:

(a) engine (the paper's v3 prompt), k paths decoded as k streams of one row (4-D mask, shared prefix)  vs  the same number of
    tokens generated sequentially in one row (``model.generate``);
(b) engine  vs  the paper's re-prefill scheme with plain ``generate`` calls (trunk; the k paths
    as k rows re-reading the context; the summary re-reading context + paths causally).

Prints the medians and the ratios (goals: (a) <= 0.6 for k=2, <= 0.4 for k=4; (b) < 1), and the
engine's own counters (docs/decoding.md): host syncs per decode step (reads of device values
the loop waits for) and cache bytes copied per fork.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from parallel_r1.decoding import DecodingConfig, ParallelEngine
from parallel_r1.decoding.scripted import ScriptedLM
from parallel_r1.models import add_tag_tokens, load_model, load_tokenizer
from parallel_r1.prompts import build_prompt
from parallel_r1.structure import TagIds

TRUNK, SUMMARY = 8, 16


def make_script(tags: TagIds, filler: int, eos: int, prompt_len: int, path_tokens: int):
    state = {}

    def script(last: int, pos: int) -> int:
        if last == tags.path_open:
            state["path"] = pos
        if last == tags.summary_open:
            state["summary"] = pos
        if last == tags.summary_close:
            return eos
        if "summary" in state and pos >= state["summary"]:
            return tags.summary_close if pos >= state["summary"] + SUMMARY else filler
        if "path" in state and pos >= state["path"]:
            return tags.path_close if pos >= state["path"] + path_tokens else filler
        return tags.parallel_open if pos >= prompt_len + TRUNK - 1 else filler

    return script


class Force(LogitsProcessor):
    """Make ``generate`` emit given continuations (one per row)."""

    def __init__(self, targets: list[list[int]], start: int):
        self.targets, self.start = targets, start

    def __call__(self, input_ids, scores):
        t = input_ids.shape[1] - self.start
        forced = torch.full_like(scores, -1e4)
        for b, target in enumerate(self.targets):
            forced[b, target[min(t, len(target) - 1)]] = 1e4
        return forced


def forced_generate(model, rows: list[list[int]], targets: list[list[int]], pad: int) -> None:
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    n = max(len(t) for t in targets)
    model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=n,
        min_new_tokens=n,
        do_sample=False,
        logits_processor=LogitsProcessorList([Force(targets, width)]),
        pad_token_id=pad,
    )


def reprefill(model, prompt: list[int], completion: list[int], tags: TagIds, k: int, pad: int) -> None:
    """The paper's agent loop (docs/decoding.md) with plain generate calls."""
    fork = completion.index(tags.parallel_open) + 1
    close = completion.index(tags.parallel_close)
    path_len = (close - fork) // k
    trunk, paths, summary = completion[:fork], completion[fork + 1 : fork + path_len], completion[close:]
    forced_generate(model, [prompt], [trunk], pad)
    context = prompt + trunk
    forced_generate(model, [context + [tags.path_open]] * k, [paths] * k, pad)
    forced_generate(model, [context + completion[fork : close + 3]], [summary[3:]], pad)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--path-tokens", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    tok = load_tokenizer(args.model)
    model = load_model(args.model, dtype=torch.float32).eval()
    add_tag_tokens(model, tok)
    tags = TagIds.from_tokenizer(tok)
    prompt = tok.encode(
        build_prompt("Tom has 3 apples and buys 4 more. How many apples does he have?", tok, "parallel_v3"),
        add_special_tokens=False,
    )
    filler = tok.encode(" the", add_special_tokens=False)[0]
    print(
        f"model {args.model}, prompt {len(prompt)} tokens, paths of {args.path_tokens} tokens, {torch.get_num_threads()} threads, "
        f"MKL_CBWR={os.environ.get('MKL_CBWR')!r} (parallel_r1's default AUTO; run with MKL_CBWR= for MKL's own kernel choice)"
    )
    for k in (2, 4):
        forced = ScriptedLM(model, make_script(tags, filler, tok.eos_token_id, len(prompt), args.path_tokens))
        # greedy everywhere (path_temperature None), like the do_sample=False baselines: with the paper's
        # forced path temperature 1.0 the engine would pay for sampling that the baselines skip
        engine = ParallelEngine(
            forced,
            tok,
            DecodingConfig(
                num_paths=k, max_new_tokens=4096, max_path_tokens=4096, temperature=0, path_temperature=None
            ),
        )
        completion = engine.generate([prompt])[0].completion_ids
        sides = {
            "engine": functools.partial(engine.generate, [prompt]),
            "sequential": functools.partial(forced_generate, model, [prompt], [completion], tok.pad_token_id),
            "reprefill": functools.partial(reprefill, model, prompt, completion, tags, k, tok.pad_token_id),
        }
        runs = {name: [] for name in sides}
        with torch.no_grad():
            for _ in range(args.repeats):  # interleaved, so drift hits all three alike
                for name, fn in sides.items():
                    runs[name].append(timed(fn))
        engine.generate([prompt, prompt], n=2)  # 4 samples: forks, merges and row drops all happen
        st = engine.stats
        print(
            f"k={k}: host syncs per decode step {st['step_syncs'] / st['forwards']:.2f} ({st['step_syncs']} reads of sampled ids "
            f"in {st['forwards']} forwards, + {st['chunk_syncs']} read of the log-probs per chunk); cache bytes copied per fork "
            f"{st['copy_bytes'] / max(st['forks'], 1):.0f} ({st['copy_bytes']} bytes in all: prompt copies and dropped rows, {st['forks']} forks)"
        )
        med = {name: statistics.median(v) for name, v in runs.items()}
        print(
            f"k={k}: {len(completion)} completion tokens | engine {med['engine']:.2f}s  sequential {med['sequential']:.2f}s  "
            f"re-prefill {med['reprefill']:.2f}s"
        )
        print(
            f"  (a) engine / sequential = {med['engine'] / med['sequential']:.2f}  (goal <= {0.6 if k == 2 else 0.4})"
        )
        print(f"  (b) engine / re-prefill = {med['engine'] / med['reprefill']:.2f}  (goal < 1)")


if __name__ == "__main__":
    main()
