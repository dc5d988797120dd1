"""Batch collation for cold-start SFT: TRL's padding collator plus the variant's attention layout.

The Unseen variant (docs/coldstart.md) replaces the 2-D padding mask by the path-isolating bool mask
``[B, 1, L, L]`` and adds the shared-start ``position_ids [B, L]``; the Seen variant keeps TRL's
batch untouched (plain causal attention, sequential positions). Only response tokens can act as
tags (``structure_mask = labels != -100``): the v3 prompt quotes ``<Parallel>`` and ``<Path>``
literally, and those copies must not open blocks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from ..format import VARIANTS
from ..structure import TagIds, build_unseen_layout


@dataclass
class ParallelSFTCollator:
    """Right-pads ``input_ids``/``labels`` (prompt labels already -100) and adds the layout.

    Output keys: ``input_ids [B,L]``, ``labels [B,L]``, ``attention_mask`` (``[B,L]`` for seen,
    bool ``[B,1,L,L]`` for unseen), ``position_ids [B,L]`` (unseen only) and ``token_mask [B,L]``
    (1 on real tokens; the trainer pops it to count tokens, since the 4-D mask cannot be summed
    into a token count).
    """

    pad_token_id: int
    variant: str = "unseen"
    tags: TagIds | None = None
    pad_to_multiple_of: int | None = None
    _pad: DataCollatorForLanguageModeling = field(init=False, repr=False)

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown SFT variant {self.variant!r}; known: {', '.join(VARIANTS)}")
        if self.variant == "unseen" and self.tags is None:
            raise ValueError("the unseen variant needs the tag ids (TagIds.from_tokenizer)")
        self._pad = DataCollatorForLanguageModeling(
            pad_token_id=self.pad_token_id, pad_to_multiple_of=self.pad_to_multiple_of
        )

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self._pad(examples)
        batch["token_mask"] = batch["attention_mask"]
        if self.variant == "unseen":
            layout = build_unseen_layout(
                batch["input_ids"],
                self.tags,
                attention_mask=batch["attention_mask"],
                structure_mask=batch["labels"] != -100,
            )
            batch["attention_mask"] = layout.attention_mask
            batch["position_ids"] = layout.position_ids
        return batch
