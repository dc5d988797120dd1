"""Stand-ins with the part of vLLM's offline interface the backend uses (vLLM needs a GPU and is
not installed here): ``FakeLLM`` has ``vllm.LLM.generate(prompts, sampling_params, use_tqdm)``
with ``{"prompt_token_ids": ...}`` prompts, outputs with ``token_ids`` and per-token ``logprobs``
dicts, stop tokens kept in the output, and decodes greedily with a real tiny model on the flat
causal sequence, as vLLM would; ``NamedLLM`` is built from a model folder as ``vllm.LLM(model=...)``."""

import os
import types

import torch


class FakeLLM:
    def __init__(self, model, tokenizer):
        self.model, self.tokenizer, self.requests = model, tokenizer, []

    def get_tokenizer(self):
        return self.tokenizer

    @torch.no_grad()
    def generate(self, prompts, sampling_params, use_tqdm=True):
        outs = []
        for prompt, params in zip(prompts, sampling_params):
            ids = list(prompt["prompt_token_ids"])
            self.requests.append((ids, params))
            toks, lps = [], []
            while len(toks) < params.max_tokens:
                x = torch.tensor([ids + toks])
                logits = self.model(input_ids=x, position_ids=torch.arange(x.shape[1])[None]).logits[0, -1]
                tok, logprob = self.pick(logits, params)
                toks.append(tok)
                lps.append({tok: types.SimpleNamespace(logprob=logprob)})
                if tok in params.stop_token_ids:
                    break
            outs.append(types.SimpleNamespace(outputs=[types.SimpleNamespace(token_ids=toks, logprobs=lps)]))
        return outs

    def pick(self, logits, params) -> tuple[int, float]:
        """Greedy, with the log-prob vLLM reports for it."""
        tok = int(logits.argmax())
        return tok, float(torch.log_softmax(logits, -1)[tok])


def params(**kw):
    return types.SimpleNamespace(**kw)


class NamedLLM(FakeLLM):
    """``vllm.LLM(model=PATH, **engine args)``: the stand-in built from a model folder, as vLLM is."""

    made: list = []

    def __init__(self, model, **kwargs):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        # vllm 0.30 entrypoints/llm.py ~284: the offline LLM is single-process
        if kwargs.get("data_parallel_size", 1) > 1:
            raise ValueError("LLM(data_parallel_size=...) is not supported for single-process usage")
        super().__init__(AutoModelForCausalLM.from_pretrained(model).eval(), AutoTokenizer.from_pretrained(model))
        self.kwargs = kwargs
        self.visible = os.environ.get("CUDA_VISIBLE_DEVICES")  # what vLLM's engine process inherits
        NamedLLM.made.append(self)
