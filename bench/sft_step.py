"""Unseen SFT step vs causal (Seen) SFT step: same model, same batch of parallel traces, one run.

    .venv/bin/python bench/sft_step.py [--model smollm2|tiny|PATH] [--data synthetic_easy|PATH]
                                       [--batch-size 8] [--steps 3] [--rounds 3]

Both steps go through the code path of ``parallel-r1 sft``: the trainer is built by
:func:`parallel_r1.train.sft.build_trainer` (TRL tokenization, prompt labels -100), the batch by
:class:`parallel_r1.train.collators.ParallelSFTCollator` (``unseen``: the path-isolating 4-D bool
mask + shared-start ``position_ids`` from :func:`parallel_r1.structure.build_unseen_layout`;
``seen``: TRL's plain padded causal batch), the loss by ``ParallelSFTTrainer.compute_loss`` (TRL's
token-mean CE over response tokens), the update by the trainer's AdamW with gradient clipping.

One model, one optimizer and one list of examples serve both variants, so only the collator and
hence the mask differ. Rounds alternate unseen / seen (and which goes first) so that load from
other processes on the machine hits both alike; one warm-up step per variant is not timed.
Prints per-part medians (collate = padding + layout, forward + loss, backward, optimizer) and the
ratio Unseen / causal of the whole step (goal <= 1.25). ``--profile`` also splits the layout build
into its parse (``row_structure``) and mask parts, and times one SDPA call with the explicit mask
against ``is_causal``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

PARTS = ("collate", "forward", "backward", "optimizer")


def step(trainer, collator, examples, clip: float) -> dict[str, float]:
    """One optimizer step on ``examples``; wall-clock of each part in seconds."""
    import torch

    model, opt = trainer.model, trainer.optimizer
    t0 = time.perf_counter()
    batch = collator(examples)
    t1 = time.perf_counter()
    model.train()
    inputs = trainer._prepare_inputs(batch)
    # What Trainer passes: response tokens after the shift, so the loss is a token mean.
    n_items = (batch["labels"][:, 1:] != -100).sum()
    loss = trainer.compute_loss(model, inputs, num_items_in_batch=n_items)
    t2 = time.perf_counter()
    trainer.accelerator.backward(loss)
    t3 = time.perf_counter()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    t4 = time.perf_counter()
    return dict(collate=t1 - t0, forward=t2 - t1, backward=t3 - t2, optimizer=t4 - t3, total=t4 - t0, loss=loss.item())


def profile(collator, examples, model, repeats: int = 3) -> None:
    """Where the Unseen-only time goes: parsing rows, building the mask, SDPA with an explicit mask."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from parallel_r1.structure import build_unseen_layout, row_structure

    batch = collator._pad(examples)
    ids, real, resp = batch["input_ids"], batch["attention_mask"].bool(), batch["labels"] != -100
    med = lambda f: statistics.median(_timed(f) for _ in range(repeats))  # noqa: E731
    t_pad = med(lambda: collator._pad(examples))
    t_rows = med(
        lambda: [
            row_structure(ids[r][real[r]].numpy(), collator.tags, resp[r][real[r]].numpy()) for r in range(len(ids))
        ]
    )
    build = lambda: build_unseen_layout(ids, collator.tags, attention_mask=batch["attention_mask"], structure_mask=resp)  # noqa: E731
    t_layout = med(build)
    print(f"profile: padding {1000 * t_pad:.1f} ms, row_structure (parse + positions) over the batch {1000 * t_rows:.1f} ms, "
          f"build_unseen_layout {1000 * t_layout:.1f} ms (mask part ~{1000 * (t_layout - t_rows):.1f} ms)")  # fmt: skip
    cfg = model.config
    heads, kv = cfg.num_attention_heads, getattr(cfg, "num_key_value_heads", cfg.num_attention_heads)
    dim = cfg.hidden_size // heads
    b, length = ids.shape
    q = torch.randn(b, heads, length, dim, requires_grad=True)
    k = torch.randn(b, heads, length, dim, requires_grad=True)
    v = torch.randn(b, heads, length, dim, requires_grad=True)
    layout = build()
    mask = layout.attention_mask

    def sdpa(**kw):
        F.scaled_dot_product_attention(q, k, v, **kw).sum().backward()

    t_causal = med(lambda: sdpa(is_causal=True))
    t_mask = med(lambda: sdpa(attn_mask=mask))
    n_layers = cfg.num_hidden_layers
    print(f"profile: one SDPA forward+backward [{b}x{heads}x{length}x{dim}] is_causal {1000 * t_causal:.1f} ms, "
          f"explicit 4-D bool mask {1000 * t_mask:.1f} ms (x{n_layers} layers: +{n_layers * (t_mask - t_causal):.2f} s per step; "
          f"kv heads {kv}, blocks in batch {sum(len(x) for x in layout.blocks)}, "
          f"mask {np.prod(mask.shape) / 2**20:.1f} MB)")  # fmt: skip


def _timed(f) -> float:
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model", default="smollm2", help="smollm2 (default), tiny (random Llama, seconds), or a checkpoint folder"
    )
    ap.add_argument("--data", default="synthetic_easy", help="training source as in the SFT recipe's train_data")
    ap.add_argument(
        "--batch-size", type=int, default=8, help="rows per step (the CPU recipe's per_device_train_batch_size)"
    )
    ap.add_argument("--steps", type=int, default=3, help="timed steps per variant per round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of (unseen, seen), order alternating")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument(
        "--profile", action="store_true", help="also split the Unseen-only costs (layout build, masked SDPA)"
    )
    a = ap.parse_args()

    import torch

    from parallel_r1.models import save_tiny_model
    from parallel_r1.train.collators import ParallelSFTCollator
    from parallel_r1.train.sft import ParallelSFTConfig, build_trainer, load_traces, prepare_model_and_tokenizer

    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp(prefix="sft_bench_"))
    model_path = str(save_tiny_model(tmp / "tiny")) if a.model == "tiny" else a.model
    cfg = ParallelSFTConfig(
        output_dir=str(tmp / "out"), model=model_path, variant="unseen",
        per_device_train_batch_size=a.batch_size, learning_rate=1e-5, max_length=a.max_length, use_cpu=True,
        bf16=False, save_strategy="no", report_to="none", disable_tqdm=True, seed=0,
    )  # fmt: skip
    rows = load_traces(a.data, a.batch_size)
    model, tok = prepare_model_and_tokenizer(cfg)
    trainer = build_trainer(cfg, model=model, tokenizer=tok, train_rows=rows)
    trainer.create_optimizer()
    unseen = trainer.data_collator
    seen = ParallelSFTCollator(pad_token_id=tok.pad_token_id, variant="seen")
    keep = {"input_ids", "labels"}  # what the dataloader hands the collator (TRL built the labels)
    examples = [
        {k: v for k, v in trainer.train_dataset[i].items() if k in keep} for i in range(len(trainer.train_dataset))
    ]
    examples = examples[: a.batch_size]
    lengths = [len(e["input_ids"]) for e in examples]
    layout = unseen(examples)
    print(f"model {a.model}: {len(examples)} rows of {a.data}, {min(lengths)}-{max(lengths)} tokens (padded to {max(lengths)}), "
          f"{sum(x != -100 for e in examples for x in e['labels'])} response tokens; torch threads {torch.get_num_threads()}; "
          f"{a.rounds} rounds x {a.steps} timed steps per variant")  # fmt: skip
    assert layout["attention_mask"].dim() == 4 and not torch.equal(
        layout["position_ids"][0], torch.arange(layout["position_ids"].shape[1])
    ), "the unseen batch has no parallel block: pick traces that use the format"

    clip = cfg.max_grad_norm
    times: dict[str, list[dict]] = {"unseen": [], "seen": []}
    collators = {"unseen": unseen, "seen": seen}
    for name in ("unseen", "seen"):  # warm-up: first-call allocations, optimizer state
        step(trainer, collators[name], examples, clip)
    for r in range(a.rounds):
        order = ("unseen", "seen") if r % 2 == 0 else ("seen", "unseen")
        for name in order:
            for _ in range(a.steps):
                times[name].append(step(trainer, collators[name], examples, clip))

    med = {n: {p: statistics.median(t[p] for t in ts) for p in (*PARTS, "total")} for n, ts in times.items()}
    print(f"{'median s':10}" + "".join(f"{p:>11}" for p in (*PARTS, "total")) + f"{'loss (last)':>13}")
    for n in ("unseen", "seen"):
        print(f"{n:10}" + "".join(f"{med[n][p]:11.3f}" for p in (*PARTS, "total")) + f"{times[n][-1]['loss']:13.4f}")
    print(f"{'ratio':10}" + "".join(f"{med['unseen'][p] / med['seen'][p]:11.2f}" for p in (*PARTS, "total")))
    ratio = med["unseen"]["total"] / med["seen"]["total"]
    print(f"step time ratio unseen/causal: {ratio:.3f}  (goal <= 1.25)")
    per_round = [
        statistics.median(t["total"] for t in times["unseen"][i * a.steps : (i + 1) * a.steps])
        / statistics.median(t["total"] for t in times["seen"][i * a.steps : (i + 1) * a.steps])
        for i in range(a.rounds)
    ]
    print("per-round ratios: " + " ".join(f"{x:.3f}" for x in per_round))
    if a.profile:
        profile(unseen, examples, trainer.model)


if __name__ == "__main__":
    main()
