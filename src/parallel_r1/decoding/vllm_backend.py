"""vLLM backend for GPU machines: the paper's separate-request agent loop (docs/decoding.md).

**Not exact.** vLLM has no custom attention masks or position ids per request, so this backend
does what the paper's verl loop does: every request is one flat causal sequence. Path j is
generated from ``context + <Path>`` alone (paths do not see each other, positions are those of
the flat sequence, so they already start at pos(``<Parallel>``)+1), but the summary and every
later token are generated after re-reading the trunk and *all* paths causally, with sequential
positions. A trainer that scores these tokens under the Unseen layout sees different contexts
for every token after a block (docs/decoding.md). Use
:class:`~parallel_r1.decoding.ParallelEngine` (transformers) where exact log-probs matter;
use this one for fast GPU evaluation or Seen rollouts. Every :class:`Sample` it returns says so:
``backend="vllm"``, ``exact=False``.

Per sample, as the paper's loop (one ``generate`` call per phase for all samples, so vLLM
batches them; prefix caching shares the context between a sample's paths):

1. trunk: ``stop_token_ids=[<Parallel>, EOS]``; stop unless the last token is ``<Parallel>``;
2. k paths, each its own request on ``context + <Path>`` with ``stop=[</Path>, EOS]`` at the path
   temperature (paper: 1.0, random seed); an EOS becomes ``</Path>``, a path cut by its budget
   gets ``</Path>`` appended;
3. ``</Parallel>\\n<Summary>`` injected, the summary generated with ``stop=[</Summary>, EOS]`` and
   closed the same way; after block ``max_blocks`` the sample ends (finish reason ``max_blocks``).

Log-probs: vLLM returns those of the sampled tokens (under its own, causal, context); injected
tokens get ``nan`` (vLLM never scores them). vLLM is imported only when a model *name* is given.

``llm`` is anything with vLLM's offline interface: a ``vllm.LLM`` (``generate``, eval), TRL's
colocated one (``trainer.vllm_generation.llm``, RL) or :class:`ServerLLM`, which puts TRL's
``VLLMClient`` of a ``trl vllm-serve`` server behind the same interface (RL, server mode).
None of this has run on a real vLLM here (no GPU): the tests drive it through stand-ins at
those boundaries (docs/decoding.md).
"""

from __future__ import annotations

import math
import re
import types

from ..format import parse
from ..structure import TagIds
from .engine import DecodingConfig, Sample, completion_budget, encode_prompt, min_block_room


class _State:
    def __init__(self, prompt_index: int, prompt_ids: list[int], budget: int):
        self.prompt_index, self.prompt_ids, self.budget = prompt_index, prompt_ids, budget
        self.ids: list[int] = []
        self.lps: list[float] = []
        self.inj: list[bool] = []
        self.blocks = 0
        self.finish: str | None = None

    def left(self) -> int:
        return self.budget - len(self.ids)

    def add(self, ids, lps, injected: bool) -> None:
        self.ids += ids
        self.lps += lps
        self.inj += [injected] * len(ids)


class VLLMEngine:
    """Same ``generate(prompts, n) -> list[Sample]`` as :class:`ParallelEngine`, on vLLM (module doc).

    ``llm``: a model name/folder (a ``vllm.LLM`` is built with prefix caching and ``llm_kwargs``)
    or an object with vLLM's ``generate(prompts, sampling_params, use_tqdm=...)`` and
    ``get_tokenizer()``. ``sampling_params``: the ``SamplingParams`` class (default: vLLM's).
    ``eos_ids``: every token that ends a completion (default: the tokenizer's EOS and those of
    the model's ``generation_config.json`` when ``llm`` is a name), as the transformers engine.
    """

    backend, exact = "vllm", False

    def __init__(self, llm, config: DecodingConfig | None = None, *, tokenizer=None, sampling_params=None,
                 max_model_len: int | None = None, llm_kwargs: dict | None = None, eos_ids=None):  # fmt: skip
        self.cfg = config or DecodingConfig()
        check_sampling(self.cfg.temperature, self.cfg.path_temperature, where="decoding")
        if isinstance(llm, str):
            name, (llm, sampling_params) = llm, load_llm(llm, **(llm_kwargs or {}))
            eos_ids = generation_eos_ids(name) if eos_ids is None else eos_ids
        elif sampling_params is None:
            sampling_params = _vllm().SamplingParams
        self.llm, self.params = llm, sampling_params
        self.tokenizer = tokenizer or llm.get_tokenizer()
        self.tags = TagIds.from_tokenizer(self.tokenizer) if self.cfg.variant == "unseen" else None
        eos = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        eos += [t for t in (eos_ids or []) if t not in eos]
        if not eos:
            raise ValueError("decoding: the tokenizer defines no EOS token")
        self.eos, self.eos_ids = eos[0], eos
        self.newline = self.tokenizer.encode("\n", add_special_tokens=False)
        if max_model_len is None:
            max_model_len = getattr(
                getattr(getattr(llm, "llm_engine", None), "model_config", None), "max_model_len", None
            )
        self.context = max_model_len
        self.path_budget = self.cfg.max_path_tokens or self.cfg.max_new_tokens

    def generate(self, prompts: list[str] | list[list[int]], n: int = 1) -> list[Sample]:
        if n < 1:
            raise ValueError(f"decoding: n must be >= 1, got {n}")
        states = []
        for i, p in enumerate(prompts):
            ids = encode_prompt(self.tokenizer, p, i, self.context)
            states += [
                _State(i, ids, completion_budget(self.cfg.max_new_tokens, self.context, len(ids))) for _ in range(n)
            ]
        if self.cfg.variant == "seen":
            self._seen(states)
        else:
            active = states
            while active:
                active = self._block(active)
        return [self._sample(s) for s in states]

    # ------------------------------------------------------------------ phases

    def _request(self, contexts, stops, max_tokens, temperature):
        temp = temperature if temperature is not None else self.cfg.temperature
        stops = [*stops, *self.eos_ids[1:]]  # the model's other EOS tokens end a phase as EOS does
        params = [
            self.params(n=1, temperature=temp, top_p=self.cfg.top_p, top_k=self.cfg.top_k or -1, max_tokens=m,
                        stop_token_ids=stops, logprobs=0, skip_special_tokens=False, seed=self._seed(k))
            for k, m in enumerate(max_tokens)
        ]  # fmt: skip
        outs = self.llm.generate([{"prompt_token_ids": c} for c in contexts], params, use_tqdm=False)
        result = []
        for out in outs:
            o = out.outputs[0]
            toks = list(o.token_ids)
            lps = [d[t].logprob for t, d in zip(toks, o.logprobs)] if o.logprobs else [math.nan] * len(toks)
            result.append((toks, lps))
        return result

    def _seed(self, k: int) -> int | None:
        # the paper seeds nothing; a configured seed makes runs repeatable, one per request
        return None if self.cfg.seed is None else self.cfg.seed + k

    def _seen(self, states) -> None:
        outs = self._request([s.prompt_ids for s in states], [self.eos], [s.left() for s in states], None)
        for s, (toks, lps) in zip(states, outs):
            s.add(toks, lps, False)
            s.finish = "eos" if toks and toks[-1] in self.eos_ids else "length"

    def _block(self, active: list[_State]) -> list[_State]:
        """Trunk until <Parallel>, then the paths and the summary of one block; returns the samples that go on."""
        t, k = self.tags, self.cfg.num_paths
        outs = self._request(
            [s.prompt_ids + s.ids for s in active], [t.parallel_open, self.eos], [s.left() for s in active], None
        )
        forking = []
        tail = 1 + len(self.newline) + 1  # </Parallel> \n <Summary>
        for s, (toks, lps) in zip(active, outs):
            s.add(toks, lps, False)
            if not toks or toks[-1] != t.parallel_open:
                s.finish = "eos" if toks and toks[-1] in self.eos_ids else "length"
            elif s.left() < min_block_room(k, tail):  # the engine's rule
                s.finish = "length"
            else:
                forking.append(s)
        if not forking:
            return []
        # k path requests per sample; each path's share of what is left keeps the block inside the budget
        # (at least one sampled token, as the engine: a 2-token path budget would ask vLLM for max_tokens=0)
        share = [max(1, min(self.path_budget, (s.left() - tail - 2) // k) - 2) for s in forking]
        contexts = [s.prompt_ids + s.ids + [t.path_open] for s in forking for _ in range(k)]
        paths = self._request(
            contexts, [t.path_close, self.eos], [m for m in share for _ in range(k)], self.cfg.path_temperature
        )
        summarising = []
        for n_s, s in enumerate(forking):
            for toks, lps in paths[n_s * k : (n_s + 1) * k]:
                s.add([t.path_open], [math.nan], True)
                if toks and toks[-1] in self.eos_ids:
                    toks, lps = toks[:-1], lps[:-1]
                s.add(toks, lps, False)
                if not toks or toks[-1] != t.path_close:
                    s.add([t.path_close], [math.nan], True)
            s.add([t.parallel_close, *self.newline, t.summary_open], [math.nan] * tail, True)
            s.blocks += 1
            if s.left() >= 2:  # the summary needs a token and its close
                summarising.append(s)
            else:
                s.finish = "length"  # an unclosed <Summary>, as the paper's loop leaves it
        if summarising:
            outs = self._request([s.prompt_ids + s.ids for s in summarising], [t.summary_close, self.eos],
                                 [s.left() - 1 for s in summarising], None)  # fmt: skip
            for s, (toks, lps) in zip(summarising, outs):
                if toks and toks[-1] in self.eos_ids:
                    toks, lps = toks[:-1], lps[:-1]
                s.add(toks, lps, False)
                if not toks or toks[-1] != t.summary_close:
                    s.add([t.summary_close], [math.nan], True)
        going = []
        for s in forking:
            if s.finish:
                continue
            if s.blocks >= self.cfg.max_blocks:
                s.finish = "max_blocks"
            elif s.left() <= 0:
                s.finish = "length"
            else:
                going.append(s)
        return going

    def _sample(self, s: _State) -> Sample:
        text = self.tokenizer.decode(s.ids, skip_special_tokens=False)
        blocks = s.blocks if self.cfg.variant == "unseen" else parse(text).num_blocks
        return Sample(s.prompt_index, list(s.prompt_ids), s.ids, s.lps, s.inj, text, s.finish or "length", blocks,
                      backend=self.backend, exact=self.exact)  # fmt: skip


# ---------------------------------------------------------------------- checks made before vLLM starts

# vLLM raises temperatures in (0, 0.01) to 0.01 with a warning (its ``_MAX_TEMP``) and rejects
# negative ones only when the request is built, after the model has loaded.
VLLM_MIN_TEMPERATURE = 0.01


def check_sampling(temperature: float, path_temperature: float | None = None, *, where: str = "vllm") -> None:
    """Refuse, before anything loads, temperatures vLLM would reject or silently change."""
    for name, t in (("temperature", temperature), ("path_temperature", path_temperature)):
        if t is None or t == 0:
            continue
        if not math.isfinite(t) or t < VLLM_MIN_TEMPERATURE:
            raise ValueError(
                f"{where}: {name} {t} is outside what vLLM samples at (0 = greedy, or a finite value >= {VLLM_MIN_TEMPERATURE})"
            )


def generation_eos_ids(model: str) -> list[int]:
    """The EOS ids of a model folder's / hub id's ``generation_config.json`` (Qwen: ``<|im_end|>``
    and ``<|endoftext|>``); none when it has no such file."""
    from transformers import GenerationConfig

    try:
        eos = GenerationConfig.from_pretrained(model).eos_token_id
    except OSError:
        return []
    return [eos] if isinstance(eos, int) else list(eos or [])


def _vllm():
    try:
        import vllm
    except ImportError:
        raise ImportError(
            "decoding: the vLLM backend needs vllm (pip install 'parallel-r1[vllm]', GPU machines); "
            "the transformers backend (ParallelEngine) works without it"
        ) from None
    return vllm


def load_llm(model: str, **llm_kwargs):
    """``(vllm.LLM, vllm.SamplingParams)`` for a model folder / hub id: prefix caching on (a
    sample's paths share their context), the model's own dtype unless ``dtype`` is given."""
    vllm = _vllm()
    llm_kwargs = {"enable_prefix_caching": True, "dtype": "auto", **llm_kwargs}
    return vllm.LLM(model=model, **llm_kwargs), vllm.SamplingParams


# TRL 1.16's supported vLLM range (trl/import_utils.py ``is_vllm_available``; TRL itself only warns outside it)
TRL_VLLM_RANGE = ((0, 22, 0), (0, 31, 0))


def vllm_installed() -> bool:
    """vLLM importable (TRL's own test, so TRL and this check agree) in a version TRL supports."""
    from trl.generation import vllm_generation

    if not vllm_generation.is_vllm_available():
        return False
    nums = tuple(int(x) for x in re.findall(r"\d+", vllm_version().split("+")[0])[:3])
    return TRL_VLLM_RANGE[0] <= nums <= TRL_VLLM_RANGE[1]


def vllm_version() -> str:
    from importlib.metadata import version

    return version("vllm")


# ---------------------------------------------------------------------- a vLLM server behind the LLM interface


class ServerLLM:
    """TRL's ``VLLMClient`` (``trl vllm-serve``) with the part of ``vllm.LLM`` :class:`VLLMEngine` uses.

    Requests that share their sampling settings go to the server as one ``/v1/completions`` call
    (the server batches them; prefix caching shares a sample's context between its paths).
    ``sampling_params`` for :class:`VLLMEngine` is ``dict``: each request's settings as keywords.
    """

    def __init__(self, client, tokenizer, concurrency: int = 32):
        self.client, self.tokenizer, self.concurrency = client, tokenizer, concurrency
        # vLLM 0.30 rejects a request whose prompt + max_tokens passes the server's max_model_len:
        # :class:`VLLMEngine` budgets by it, read here as the colocated LLM's ``llm_engine.model_config``
        info = client.get_server_info() if hasattr(client, "get_server_info") else {}
        length = (info.get("model_config") or {}).get("max_model_len")
        self.llm_engine = types.SimpleNamespace(model_config=types.SimpleNamespace(max_model_len=length))

    def get_tokenizer(self):
        return self.tokenizer

    def generate(self, prompts: list[dict], sampling_params: list[dict], use_tqdm: bool = False) -> list:
        """One ``/v1/completions`` call per group of identical settings, the groups sent
        concurrently (``concurrency`` at a time): after the trunk nearly every sample has its own
        ``max_tokens`` and seed, so one call at a time would serialise the whole phase."""
        from concurrent.futures import ThreadPoolExecutor

        groups: dict[tuple, list[int]] = {}
        for i, p in enumerate(sampling_params):
            groups.setdefault(
                tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in p.items())), []
            ).append(i)

        def ask(idx: list[int]) -> dict:
            p = dict(sampling_params[idx[0]])
            extra = {k: p.pop(k) for k in ("stop_token_ids", "skip_special_tokens", "seed") if k in p}
            return self.client.generate(prompts=[prompts[i]["prompt_token_ids"] for i in idx], n=p.pop("n", 1),
                                        generation_kwargs=extra, **p)  # fmt: skip

        outs: list = [None] * len(prompts)
        with ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(groups)))) as pool:
            for idx, res in zip(groups.values(), pool.map(ask, list(groups.values()))):
                lps = res.get("logprobs") or [None] * len(idx)
                for i, toks, lp in zip(idx, res["completion_ids"], lps):
                    # logprobs=0: one entry per token, the sampled token's own
                    lp = [{t: types.SimpleNamespace(logprob=row[0])} for t, row in zip(toks, lp)] if lp else None
                    outs[i] = types.SimpleNamespace(outputs=[types.SimpleNamespace(token_ids=list(toks), logprobs=lp)])
        return outs
