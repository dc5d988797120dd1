"""Token sampling with per-row temperature and banned tokens, top-k and top-p."""

from __future__ import annotations

import torch


def sample_tokens(
    logits: torch.Tensor,
    temperatures: list[float],
    top_p: float = 1.0,
    top_k: int = 0,
    banned: list[list[int]] | None = None,
    generator: torch.Generator | None = None,
) -> list[int]:
    """Draw one token per row.

    Args:
        logits: float ``[B, V]``, the model's next-token logits.
        temperatures: ``[B]``; 0 means greedy for that row.
        top_p, top_k: nucleus / top-k truncation (1.0 / 0 = off), applied after temperature.
        banned: per row, token ids that must not be drawn.
        generator: seeds the draw.
    Returns:
        ``B`` token ids.
    """
    logits = logits.float().clone()
    for i, ids in enumerate(banned or []):
        if ids:
            logits[i, ids] = float("-inf")
    temps = torch.tensor(temperatures, dtype=logits.dtype, device=logits.device)
    greedy = temps <= 0
    scaled = logits / torch.where(greedy, torch.ones_like(temps), temps)[:, None]
    if top_k > 0 and top_k < scaled.shape[-1]:
        kth = torch.topk(scaled, top_k, dim=-1).values[:, -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(scaled, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens ranked above it already reach top_p (the first always stays)
        drop = probs.cumsum(-1) - probs >= top_p
        scaled = scaled.scatter(1, order, sorted_logits.masked_fill(drop, float("-inf")))
    if bool(greedy.all()):
        return logits.argmax(-1).tolist()
    # argmax(p / E), E ~ Exp(1), is a draw from p (the exponential race); several times faster
    # than torch.multinomial on a 50k vocabulary
    probs = torch.softmax(scaled, dim=-1)
    race = torch.empty_like(probs).exponential_(1.0, generator=generator)
    drawn = (probs / race).argmax(-1)
    return torch.where(greedy, logits.argmax(-1), drawn).tolist()
