"""A real model whose next token is dictated by a script, for tests and benchmarks of decoding.

The wrapped model runs every forward (so caches, masks and timings are real); only its logits
are replaced by a one-hot choice ``script(last_input_token, position) -> next token``. Scripts
see positions, so under the Unseen layout every path of a block sees the same positions.
"""

from __future__ import annotations

import types

import torch


class ScriptedLM(torch.nn.Module):
    def __init__(self, model, script, margin: float = 30.0):
        super().__init__()
        self.inner, self.script, self.margin = model, script, margin
        self.config, self.generation_config = model.config, model.generation_config

    def get_input_embeddings(self):
        return self.inner.get_input_embeddings()

    def forward(self, input_ids, position_ids, logits_to_keep=0, **kw):
        out = self.inner(input_ids=input_ids, position_ids=position_ids, logits_to_keep=logits_to_keep, **kw)
        logits = torch.full_like(out.logits, -self.margin)
        q = logits.shape[1]
        for b in range(input_ids.shape[0]):
            for t in range(q):
                logits[b, t, self.script(int(input_ids[b, t - q]), int(position_ids[b, t - q]))] = self.margin
        return types.SimpleNamespace(logits=logits)
