"""Which rollouts reach the loss (docs/rl.md, "Every rollout counts"): pure tensor functions.

A GRPO group whose rewards are all equal has zero advantage and so zero policy gradient; its
loss forward and backward are wasted. :func:`informative_groups` finds the groups that carry a
gradient, :func:`take_rows` keeps only their rows (and trims the padding columns nobody needs any
more), :func:`concat_generations` joins the batches of several generation rounds (dynamic
sampling, DAPO's ``filter_groups``) into one, and :func:`pad_rows` adds zero-weight filler rows
so that a process's batch still splits into its ``steps_per_generation`` micro-batches.

A batch is the dict TRL's ``GRPOTrainer._generate_and_score_completions`` returns:
``prompt_ids`` / ``prompt_mask`` ``[B, P]`` (left-padded), ``completion_ids`` /
``completion_mask`` and every per-token tensor (``sampling_per_token_logps``,
``old_per_token_logps``, ``tool_mask``, ...) ``[B, C]`` (right-padded), ``advantages`` ``[B]``,
``num_items_in_batch`` (0-d; recomputed by the caller after selection, since it must count the
trained tokens of every process).
"""

from __future__ import annotations

import torch

PROMPT_KEYS = ("prompt_ids", "prompt_mask")


def informative_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """``rewards`` ``[N]`` (``N = groups × group_size``, each group's rollouts consecutive, as TRL
    orders them) -> bool ``[groups]``: True where the rewards are not all equal.

    Compared exactly (max > min), not through the advantage: TRL's ``(r - mean) / (std + 1e-4)``
    can leave a rounding residue in a group of equal rewards. ``nan`` (unscorable) is ignored.
    """
    if rewards.numel() % group_size:
        raise ValueError(f"informative_groups: {rewards.numel()} rewards are not whole groups of {group_size}")
    r = rewards.reshape(-1, group_size).float()
    finite = ~torch.isnan(r)
    hi = torch.where(finite, r, torch.full_like(r, -torch.inf)).amax(1)
    lo = torch.where(finite, r, torch.full_like(r, torch.inf)).amin(1)
    return hi > lo


def _completion_width(batch: dict) -> int:
    return batch["completion_ids"].size(1)


def _is_per_token(key: str, value, width: int) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() == 2 and key not in PROMPT_KEYS and value.size(1) == width


def take_rows(batch: dict, rows: torch.Tensor, trim: bool = True) -> dict:
    """The batch restricted to ``rows`` (``[K]`` indices); with ``trim``, prompt columns that are
    padding in every kept row (left) and completion columns likewise (right) are cut off."""
    rows = rows.to(batch["completion_ids"].device)
    width = _completion_width(batch)
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.dim() >= 1:
            out[key] = value.index_select(0, rows)
        elif isinstance(value, list):
            out[key] = [value[i] for i in rows.tolist()]
        else:
            out[key] = value
    if not trim or rows.numel() == 0:
        return out
    p_keep = int(out["prompt_mask"].sum(0).nonzero().min()) if out["prompt_mask"].any() else 0
    c_used = out["completion_mask"].sum(0).nonzero()
    c_keep = int(c_used.max()) + 1 if c_used.numel() else 1
    for key, value in list(out.items()):
        if key in PROMPT_KEYS:
            out[key] = value[:, p_keep:]
        elif _is_per_token(key, value, width):
            out[key] = value[:, :c_keep]
    return out


def concat_generations(batches: list[dict], pad_token_id: int) -> dict:
    """One batch from several (rows stacked): prompt tensors left-padded to the widest prompt,
    per-token tensors right-padded to the longest completion (ids with ``pad_token_id``, the rest
    with 0, which the masks make inert). ``num_items_in_batch`` is dropped: recount it."""
    if len(batches) == 1:
        return {k: v for k, v in batches[0].items() if k != "num_items_in_batch"}
    p_width = max(b["prompt_ids"].size(1) for b in batches)
    c_width = max(_completion_width(b) for b in batches)
    out = {}
    for key in batches[0]:
        if key == "num_items_in_batch":
            continue
        parts = []
        for b in batches:
            v = b[key]
            pad = pad_token_id if key in ("prompt_ids", "completion_ids") else 0
            if key in PROMPT_KEYS:
                v = torch.nn.functional.pad(v, (p_width - v.size(1), 0), value=pad)
            elif _is_per_token(key, v, _completion_width(b)):
                v = torch.nn.functional.pad(v, (0, c_width - v.size(1)), value=pad)
            parts.append(v)
        if isinstance(parts[0], torch.Tensor) and parts[0].dim() >= 1:
            out[key] = torch.cat(parts, 0)
        elif isinstance(parts[0], list):
            out[key] = [x for p in parts for x in p]
        else:
            out[key] = parts[0]
    return out


def zero_weight(batch: dict) -> dict:
    """The same rows with zero advantage and an all-zero ``tool_mask``: no token of theirs enters
    the loss or its normaliser (filler rows)."""
    return dict(
        batch,
        advantages=torch.zeros_like(batch["advantages"]),
        tool_mask=torch.zeros_like(batch["completion_mask"]),
    )


def pad_rows(batch: dict, multiple: int) -> dict:
    """Add zero-weight copies of row 0 (:func:`zero_weight`) until the row count is a positive
    multiple of ``multiple``: TRL splits the batch into that many equal micro-batches, and every
    process must run each of them (a DDP / FSDP step is collective). ``batch`` needs a row."""
    if "tool_mask" not in batch:
        batch = dict(batch, tool_mask=torch.ones_like(batch["completion_mask"]))
    n = batch["completion_ids"].size(0)
    if n == 0:
        raise ValueError("pad_rows: the batch has no row to copy")
    extra = -(-n // multiple) * multiple - n
    if extra == 0:
        return batch
    filler = zero_weight(take_rows(batch, torch.zeros(extra, dtype=torch.long), trim=False))
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.dim() >= 1:
            out[key] = torch.cat([value, filler[key]], 0)
        elif isinstance(value, list):
            out[key] = value + filler[key]
        else:
            out[key] = value
    return out


def loss_mask(batch: dict) -> torch.Tensor:
    """The tokens that enter the loss: ``completion_mask`` × ``tool_mask`` (TRL's rule)."""
    mask = batch["completion_mask"]
    return mask if "tool_mask" not in batch else mask * batch["tool_mask"]
