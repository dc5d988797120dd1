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
    """:func:`draw` as a list of ints (one host sync)."""
    return draw(logits, temperatures, top_p, top_k, banned, generator).tolist()


def draw(
    logits: torch.Tensor,
    temperatures: list[float],
    top_p: float | list[float] = 1.0,
    top_k: int | list[int] = 0,
    banned: list[list[int]] | None = None,
    generator: torch.Generator | list[torch.Generator | None] | None = None,
) -> torch.Tensor:
    """Draw one token per row, on the logits' device (no host sync: the caller reads the ids
    when it needs them).

    Args:
        logits: float ``[B, V]``, the model's next-token logits.
        temperatures: ``[B]``; 0 means greedy for that row.
        top_p, top_k: nucleus / top-k truncation (1.0 / 0 = off), applied after temperature; one
            value for every row or one per row.
        banned: per row, token ids that must not be drawn.
        generator: seeds the draw: one for the batch, or one per row (each row's uniform comes
            from its own generator, None = torch's global one), so a row draws the same whatever
            the other rows are.
    Returns:
        long ``[B]`` token ids.
    """
    logits = logits.float().clone()
    pairs = [(i, t) for i, ids in enumerate(banned or []) for t in ids]
    if pairs:
        rows, toks = torch.tensor(pairs).T
        logits[rows.to(logits.device, non_blocking=True), toks.to(logits.device, non_blocking=True)] = float("-inf")
    temps = torch.tensor(temperatures, dtype=logits.dtype).to(logits.device, non_blocking=True)
    greedy = temps <= 0
    scaled = logits / torch.where(greedy, torch.ones_like(temps), temps)[:, None]
    rows, vocab = scaled.shape
    ks = [top_k] * rows if isinstance(top_k, int) else list(top_k)
    ps = [top_p] * rows if isinstance(top_p, (int, float)) else list(top_p)
    ks = [k if 0 < k < vocab else 0 for k in ks]
    if any(ks):
        kth = torch.topk(scaled, max(ks), dim=-1).values  # [B, max k]: the k-th largest per row
        at = torch.tensor([max(k, 1) - 1 for k in ks]).to(logits.device, non_blocking=True)
        cut = kth.gather(1, at[:, None])
        cut = torch.where(torch.tensor([k > 0 for k in ks]).to(logits.device)[:, None], cut, float("-inf"))
        scaled = scaled.masked_fill(scaled < cut, float("-inf"))
    if any(p < 1.0 for p in ps):
        sorted_logits, order = torch.sort(scaled, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens ranked above it already reach top_p (the first always stays)
        p = torch.tensor(ps, dtype=probs.dtype).to(logits.device, non_blocking=True)
        drop = probs.cumsum(-1) - probs >= p[:, None]
        scaled = scaled.scatter(1, order, sorted_logits.masked_fill(drop, float("-inf")))
    if all(t <= 0 for t in temperatures):  # decided on the host: no sync
        return logits.argmax(-1)
    # Inverse CDF: one uniform per row against the cumulated probabilities (float64, so the
    # rounding of 50k partial sums stays far below any probability we care about). Tokens with
    # probability 0 have empty intervals and are never drawn. 20x cheaper on a 50k vocabulary
    # than the exponential race argmax(p / E) (one random number per row instead of per token)
    # and than torch.multinomial.
    cdf = torch.softmax(scaled, dim=-1, dtype=torch.float64).cumsum(-1)
    if isinstance(generator, list):
        # a greedy row draws nothing: its sampler is then where it would be with the row alone
        u = torch.cat(
            [torch.zeros(1, dtype=torch.float64) if t <= 0 else torch.rand(1, dtype=torch.float64, generator=g)
             for t, g in zip(temperatures, generator)]
        )[:, None]  # fmt: skip
        u = u.to(cdf.device, non_blocking=True)
    else:
        u = torch.rand(cdf.shape[0], 1, dtype=torch.float64, device=cdf.device, generator=generator)
    u = u * cdf[:, -1:]
    drawn = torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_(max=cdf.shape[1] - 1)
    return torch.where(greedy, logits.argmax(-1), drawn)
