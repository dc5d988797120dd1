"""The paper's separate-request decoding loop on plain transformers ``generate`` (``eval --decoding paper``).

The loop itself is :class:`~parallel_r1.decoding.vllm_backend.VLLMEngine`'s (docs/decoding.md):
the trunk is decoded until ``<Parallel>``, each path is its own request from the shared prefix
plus ``<Path>`` until ``</Path>``, ``</Parallel>\\n<Summary>`` is injected and the summary and
everything after it are decoded causally on the flat text. No tag is constrained: a stray tag
the model writes inside a path or the trunk is kept as text, as in the paper's loop. Here the
requests go to ``model.generate`` instead of vLLM, so a CPU user can reproduce how the paper's
numbers were produced; :class:`~parallel_r1.decoding.ParallelEngine` stays the exact default.

Requests of one phase with the same sampling settings are decoded as one left-padded batch of
``batch_size``; each is cut after its first stop token or at its own ``max_tokens``. Log-probs
are not computed (``nan``): evaluation does not need them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .engine import DecodingConfig
from .vllm_backend import VLLMEngine


@dataclass
class RequestParams:
    """The subset of vLLM's ``SamplingParams`` the loop sets."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_tokens: int = 16
    stop_token_ids: list[int] = field(default_factory=list)
    logprobs: int | None = None
    skip_special_tokens: bool = False
    seed: int | None = None


@dataclass
class _Completion:
    token_ids: list[int]
    logprobs: None = None


@dataclass
class _Output:
    outputs: list[_Completion]


class TransformersRequests:
    """vLLM's ``LLM.generate(requests, params, use_tqdm)`` answered by ``model.generate``."""

    def __init__(self, model, tokenizer, batch_size: int = 16):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def get_tokenizer(self):
        return self.tokenizer

    def generate(self, requests: list[dict], params: list[RequestParams], use_tqdm: bool = False) -> list[_Output]:
        out: list[_Output | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, p in enumerate(params):
            groups.setdefault((p.temperature, p.top_p, p.top_k, tuple(p.stop_token_ids)), []).append(i)
        for idx in groups.values():
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start : start + self.batch_size]
                for i, ids in zip(
                    chunk, self._batch([requests[i]["prompt_token_ids"] for i in chunk], [params[i] for i in chunk])
                ):
                    out[i] = _Output([_Completion(ids)])
        return out

    @torch.no_grad()
    def _batch(self, contexts: list[list[int]], params: list[RequestParams]) -> list[list[int]]:
        p = params[0]
        if p.seed is not None:
            torch.manual_seed(p.seed)
        width = max(len(c) for c in contexts)
        device = self.model.device
        ids = torch.tensor([[self.pad] * (width - len(c)) + c for c in contexts], device=device)
        mask = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in contexts], device=device)
        sample = p.temperature > 0
        gen = self.model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=max(q.max_tokens for q in params),
            do_sample=sample, temperature=p.temperature if sample else None, top_p=p.top_p if sample else None,
            top_k=(p.top_k if p.top_k and p.top_k > 0 else None) if sample else None,
            eos_token_id=list(p.stop_token_ids), pad_token_id=self.pad,
        )  # fmt: skip
        stops = set(p.stop_token_ids)
        result = []
        for row, q in zip(gen[:, width:].tolist(), params):
            row = row[: q.max_tokens]
            cut = next((j + 1 for j, t in enumerate(row) if t in stops), len(row))
            result.append(row[:cut])
        return result


class PaperLoopEngine(VLLMEngine):
    """:class:`ParallelEngine`'s ``generate(prompts, n) -> list[Sample]`` through the paper's loop
    on a transformers model (module doc). Samples say ``backend="transformers-paper"``, ``exact=False``."""

    backend, exact = "transformers-paper", False

    def __init__(self, model, tokenizer, config: DecodingConfig | None = None, batch_size: int = 16):
        context = getattr(model.config, "max_position_embeddings", None)
        super().__init__(TransformersRequests(model, tokenizer, batch_size), config, tokenizer=tokenizer,
                         sampling_params=RequestParams, max_model_len=context)  # fmt: skip


__all__ = ["PaperLoopEngine", "RequestParams", "TransformersRequests"]
