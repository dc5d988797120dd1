"""Cold-start SFT: the trainer's Unseen loss against a brute-force reference, padding, real steps, recipes, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from parallel_r1.cli import parse_command
from parallel_r1.prompts import build_prompt
from parallel_r1.structure import TagIds
from parallel_r1.train.sft import ParallelSFTConfig, build_trainer

REPO = Path(__file__).resolve().parents[1]

TRACES = [
    "Tom has 3 apples.<Parallel><Path>3 + 4 = 7</Path><Path>4 + 3 = 7 again</Path></Parallel>\n<Summary>7</Summary>\nFinal Answer: 7",
    "Two ways.<Parallel><Path>a</Path><Path>b b</Path><Path>c c c</Path></Parallel>\n<Summary>ok</Summary> then"
    "<Parallel><Path>x y</Path><Path>z</Path></Parallel>\n<Summary>done</Summary>\nFinal Answer: 5",
    "No block here, 2 + 2 = 4.\nFinal Answer: 4",
    "Unclosed<Parallel><Path>one</Path> so the block is malformed.\nFinal Answer: 1",
]


def rows(n=4):
    return [
        dict(id=i, problem=f"Tom has {i} apples and buys 4 more. How many?", response=TRACES[i % len(TRACES)])
        for i in range(n)
    ]


def parse_config(argv: list[str]) -> ParallelSFTConfig:
    """The config `parallel-r1 sft ARGV` runs with."""
    (c,) = parse_command("sft", argv)
    return c


def cfg(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        learning_rate=3e-3,
        logging_steps=1,
        save_strategy="no",
        max_length=2048,
        seed=0,
        disable_tqdm=True,
    )
    return ParallelSFTConfig(**(base | kw))


def brute_force_layout(ids: list[int], start: int, tags: TagIds):
    """Mask and positions from the parse tree of the response (tokens from ``start`` on), with plain loops."""
    n = len(ids)
    where = [None] * n  # (block number, path number) of tokens inside a path of a well-formed block
    pos = list(range(n))
    i, block = start, 0
    while i < n:
        if ids[i] != tags.parallel_open:
            i += 1
            continue
        # find the block's paths and its close; give up (stay causal) when malformed
        j, paths, ok = i + 1, [], True
        while j < n and ids[j] == tags.path_open:
            k = j + 1
            while k < n and ids[k] not in (tags.path_close, tags.parallel_open, tags.parallel_close, tags.path_open):
                k += 1
            if k == n or ids[k] != tags.path_close:
                ok = False
                break
            paths.append((j, k))
            j = k + 1
        if not ok or j == n or ids[j] != tags.parallel_close or len(paths) < 2:
            i += 1
            continue
        p = pos[i]
        top = p
        for number, (s, e) in enumerate(paths):
            for t in range(s, e + 1):
                where[t] = (block, number)
                pos[t] = p + 1 + (t - s)
                top = max(top, pos[t])
        shift = top + 1 - j  # </Parallel> gets max position + 1, later tokens follow
        for t in range(j, n):
            pos[t] = t + shift
        block += 1
        i = j + 1
    mask = torch.zeros(n, n, dtype=torch.bool)
    for q in range(n):
        for k in range(q + 1):
            mask[q, k] = not (where[q] and where[k] and where[q][0] == where[k][0] and where[q][1] != where[k][1])
    return mask, torch.tensor(pos)


def reference_loss(model, tokenizer, tags, train_rows, ds):
    """Token-mean CE over response tokens, one unpadded row at a time, with the brute-force layout."""
    total, count = 0.0, 0
    for r, ex in zip(train_rows, ds):
        ids = ex["input_ids"]
        start = len(tokenizer(build_prompt(r["problem"], tokenizer), add_special_tokens=False)["input_ids"])
        labels = ex["labels"]
        assert all(x == -100 for x in labels[:start]) and labels[start:] == ids[start:]  # loss on the response only
        assert ids[-1] == tokenizer.eos_token_id
        mask, pos = brute_force_layout(ids, start, tags)
        bias = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
        with torch.no_grad():
            logits = model(
                input_ids=torch.tensor([ids]), attention_mask=bias[None, None], position_ids=pos[None]
            ).logits[0]
        logp = torch.log_softmax(logits[:-1].float(), -1)
        nll = -logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
        total += nll[start - 1 :].sum().item()
        count += len(ids) - start
    return total / count


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_unseen_trainer_loss_equals_brute_force(arch, tiny_tokenizer, tmp_path):
    from parallel_r1.models import build_tiny_model

    model, tok = build_tiny_model(arch, tokenizer=tiny_tokenizer)
    with torch.no_grad():  # larger random weights than HF's 0.02 init, so that who-sees-whom moves the loss
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.25)
    tags = TagIds.from_tokenizer(tok)
    train_rows = rows(4)
    trainer = build_trainer(cfg(tmp_path), model, tok, train_rows)
    ds = trainer.train_dataset
    assert list(ds["id"]) == [str(r["id"]) for r in train_rows]  # no shuffling before the trainer's sampler
    batch = trainer.data_collator([ds[i] for i in range(len(ds))])
    assert batch["attention_mask"].shape[1:] == (1, batch["input_ids"].shape[1], batch["input_ids"].shape[1])
    model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch)).item()
    ref = reference_loss(model, tok, tags, train_rows, ds)
    assert loss == pytest.approx(ref, rel=1e-5, abs=1e-5)
    # The Unseen layout matters here: the causal loss on the same batch is different.
    seen_trainer = build_trainer(cfg(tmp_path, variant="seen"), model, tok, train_rows)
    with torch.no_grad():
        causal = seen_trainer.compute_loss(
            model, dict(seen_trainer.data_collator([ds[i] for i in range(len(ds))]))
        ).item()
    assert abs(causal - loss) > 1e-2


def test_padding_contributes_nothing(tiny_llama, tiny_tokenizer, tmp_path):
    trainer = build_trainer(cfg(tmp_path), tiny_llama, tiny_tokenizer, rows(4))
    examples = [trainer.train_dataset[i] for i in range(4)]
    base = trainer.data_collator(examples)
    padded = type(trainer.data_collator)(
        tiny_tokenizer.pad_token_id, "unseen", trainer.data_collator.tags, pad_to_multiple_of=256
    )(examples)
    assert padded["input_ids"].shape[1] > base["input_ids"].shape[1] + 50
    # Whatever sits in the pad positions, it must not matter.
    pads = padded["token_mask"] == 0
    padded["input_ids"][pads] = torch.randint(0, len(tiny_tokenizer), (int(pads.sum()),))
    with torch.no_grad():
        a = trainer.compute_loss(tiny_llama, dict(base)).item()
        b = trainer.compute_loss(tiny_llama, dict(padded)).item()
        one = trainer.compute_loss(tiny_llama, dict(trainer.data_collator(examples[:1]))).item()
        alone = trainer.compute_loss(tiny_llama, dict(trainer.data_collator([examples[0], examples[2]]))).item()
    assert b == pytest.approx(a, rel=1e-5)
    assert one != pytest.approx(alone)  # sanity: the loss does depend on the real tokens


@pytest.mark.parametrize("variant", ["unseen", "seen"])
def test_training_steps_move_weights_and_lower_loss(variant, tiny_llama, tiny_tokenizer, tmp_path):
    before = {n: p.detach().clone() for n, p in tiny_llama.named_parameters()}
    trainer = build_trainer(
        cfg(tmp_path, variant=variant, max_steps=8, lr_scheduler_type="constant"), tiny_llama, tiny_tokenizer, rows(4)
    )
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 8 and losses[-1] < losses[0] - 0.5
    moved = [n for n, p in tiny_llama.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert len(moved) == len(before)
    metrics = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [m["loss"] for m in metrics if "loss" in m] == losses
    # tokens counted from the real tokens, not from the 4-D mask
    n_tokens = sum(len(x) for x in trainer.train_dataset["input_ids"])
    assert metrics[-2]["num_tokens"] == 8 * n_tokens


def test_lora_trains_adapters_and_tag_rows(tiny_llama, tiny_tokenizer, tmp_path):
    trainer = build_trainer(cfg(tmp_path, use_peft=True, lora_r=4, max_steps=2), tiny_llama, tiny_tokenizer, rows(4))
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert any("lora_" in n for n in trainable) and any("trainable_tokens" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    assert all(
        not torch.equal(p.detach(), before[n])
        for n, p in trainer.model.named_parameters()
        if p.requires_grad and "lora_B" in n
    )


def test_recipes_parse_with_overrides():
    recipes = sorted((REPO / "recipes").glob("sft_*.yaml"))
    assert {r.name for r in recipes} >= {
        "sft_qwen3_4b_unseen.yaml",
        "sft_qwen3_4b_seen.yaml",
        "sft_smollm2_cpu.yaml",
        "sft_tiny.yaml",
    }
    for r in recipes:
        c = parse_config(["--config", str(r)])
        assert c.variant in ("seen", "unseen") and c.output_dir
    paper = parse_config(
        ["--config", str(REPO / "recipes/sft_qwen3_4b_unseen.yaml"), "--learning_rate", "2e-5", "--use_peft"]
    )
    assert paper.learning_rate == 2e-5 and paper.use_peft is True and paper.variant == "unseen"
    assert paper.num_train_epochs == 5 and paper.max_length == 4096 and paper.lr_scheduler_type == "cosine"
    assert paper.warmup_steps == 0.1 and paper.adam_beta2 == 0.95 and paper.weight_decay == 0.01
    assert paper.per_device_train_batch_size * paper.gradient_accumulation_steps * 8 == 128


def test_cli_trains_checkpoints_and_resumes(tiny_checkpoint, tmp_path):
    from parallel_r1.cli import main

    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows(4)))
    out = tmp_path / "run"
    common = [
        "sft",
        "--config",
        str(REPO / "recipes/sft_tiny.yaml"),
        "--model",
        str(tiny_checkpoint),
        "--train_data",
        str(data),
        "--output_dir",
        str(out),
        "--save_steps",
        "1",
        "--disable_tqdm",
        "true",
    ]
    assert main(common + ["--max_steps", "2"]) == 0
    assert (
        (out / "checkpoint-2").is_dir() and (out / "model.safetensors").exists() and (out / "loss_curve.png").exists()
    )
    assert main(common + ["--max_steps", "3", "--resume_from_checkpoint", "true"]) == 0
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3 and len([h for h in state["log_history"] if "loss" in h]) == 3
    # config.yaml is the config the run used: it loads back as the same config
    from parallel_r1.train.checkpoints import config_dict

    used = parse_config(common[1:] + ["--max_steps", "3", "--resume_from_checkpoint", "true"])
    again = parse_config(["--config", str(out / "config.yaml")])
    assert config_dict(again) == config_dict(used) and again.max_steps == 3 and again.pad_token == used.pad_token
    # finished: a re-run trains nothing and writes nothing; another recipe is refused before loading
    logged = (out / "metrics.jsonl").read_text()
    assert main(common + ["--max_steps", "3"]) == 0
    assert (out / "metrics.jsonl").read_text() == logged and not (out / "checkpoint-4").exists()
    assert main(common + ["--max_steps", "3", "--learning_rate", "0.5"]) == 2
    assert (out / "metrics.jsonl").read_text() == logged
    assert main(common[:-6] + ["--train_data", str(tmp_path / "nope.jsonl"), "--output_dir", str(tmp_path / "x")]) == 2


def test_bad_training_rows_are_named(tmp_path):
    from parallel_r1.train.sft import load_traces

    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"id": 1, "problem": "p", "response": "r"}) + "\n" + json.dumps({"id": 2, "problem": "p"}) + "\n"
    )
    with pytest.raises(ValueError, match="bad.jsonl:2: missing or empty field 'response'"):
        load_traces(str(bad))


def test_format_check_is_an_evaluation(tiny_llama, tiny_tokenizer, tmp_path, data_dir):
    from parallel_r1.train.sft import format_check

    c = cfg(
        tmp_path, format_check_size=3, format_check_max_new_tokens=8, format_check_batch_size=2, data_dir=str(data_dir)
    )
    out = tmp_path / "out"
    summary = format_check(tiny_llama, tiny_tokenizer, c, out)
    rows = [json.loads(x) for x in (out / "format_check" / "completions.jsonl").read_text().splitlines()]
    assert summary["n"] == len(rows) == 3 and {r["benchmark"] for r in rows} == {"gsm8k"}
    assert summary["valid_parallel_ratio"] == sum(r["format_ok"] and r["uses_parallel"] for r in rows) / 3
    assert summary["accuracy"] == sum(r["correct"] for r in rows) / 3
    assert summary["mean_length"] == sum(r["length"] for r in rows) / 3 and all(r["length"] <= 8 for r in rows)
    assert json.loads((out / "format_check.json").read_text()) == summary


@pytest.mark.parametrize("normalizer", ["batch", "micro_batch"])
def test_loss_normalizer_weights_tokens_or_traces(normalizer, tiny_llama, tiny_tokenizer, tmp_path):
    """One optimiser step of 2 accumulated micro-batches of 1 trace, the gradient taken just before
    the optimiser: ``batch`` is the token mean over both traces (long traces weigh more),
    ``micro_batch`` the mean of each trace's token mean (verl's cold start, per_device 1).
    References: transformers' own per-row loss (a token mean), weighted by hand."""
    from transformers import TrainerCallback

    two = rows(3)[::2]  # a long trace and a short one: the two weightings differ
    trainer = build_trainer(
        cfg(tmp_path, variant="seen", per_device_train_batch_size=1, gradient_accumulation_steps=2, max_steps=1,
            max_grad_norm=0.0, loss_normalizer=normalizer),
        tiny_llama, tiny_tokenizer, two,
    )  # fmt: skip
    model = trainer.model
    refs = []
    for i in range(2):
        batch = trainer.data_collator([trainer.train_dataset[i]])
        loss = model(input_ids=batch["input_ids"], labels=batch["labels"]).loss  # that trace's token mean
        refs.append((loss, int((batch["labels"][:, 1:] != -100).sum())))
    (l0, n0), (l1, n1) = refs
    assert n0 != n1

    def grad_of(loss):
        model.zero_grad()
        loss.backward(retain_graph=True)
        return torch.cat([p.grad.flatten().clone() for p in model.parameters() if p.grad is not None])

    per_trace, per_token = grad_of((l0 + l1) / 2), grad_of((l0 * n0 + l1 * n1) / (n0 + n1))
    model.zero_grad()
    got = {}

    class Grab(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            got["grad"] = torch.cat([p.grad.flatten().clone() for p in model.parameters() if p.grad is not None])

    trainer.add_callback(Grab())
    trainer.train()
    want, other = (per_trace, per_token) if normalizer == "micro_batch" else (per_token, per_trace)
    assert torch.allclose(got["grad"], want, rtol=1e-4, atol=1e-7)
    assert not torch.allclose(got["grad"], other, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("name", ["sft_qwen3_4b_unseen", "sft_qwen3_4b_seen"])
def test_cold_start_recipes_weigh_each_trace_as_verl(name):
    """The official cold start: micro-batch 1, each micro-batch's token mean, and its clip at 1.0
    on a gradient 16x the mean (docs/coldstart.md, "Loss aggregation")."""
    import yaml

    cfg = yaml.safe_load((REPO / "recipes" / f"{name}.yaml").read_text())
    assert (cfg["loss_normalizer"], cfg["per_device_train_batch_size"]) == ("micro_batch", 1)
    assert cfg["max_grad_norm"] == pytest.approx(1.0 / cfg["gradient_accumulation_steps"])
