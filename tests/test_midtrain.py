"""Mid-training: token-weighted mixture, packing without cross-document attention, the
stable-then-decay lr, resume at the same token, bad inputs, recipes."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch

from parallel_r1.train.midtrain import MidtrainConfig, load_config, run_stage, stage_steps, train
from parallel_r1.train.mixture import SourceConfig, build_mixture, normalize_weights
from parallel_r1.train.packing import PackedStream, prepare_for_packing

REPO = Path(__file__).resolve().parents[1]


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def sources(tmp_path):
    """Three QA-like sources whose documents differ ~8x in length."""
    out = []
    for name, words, w in [("short", 3, 0.5), ("medium", 12, 0.3), ("long", 30, 0.2)]:
        rows = [
            {"question": f"{name} {i}", "solution": " ".join(str(i + j) for j in range(words + i % 5))}
            for i in range(200)
        ]
        out.append(
            SourceConfig(name, write_jsonl(tmp_path / f"{name}.jsonl", rows), w, template="{question}\n{solution}")
        )
    return out


def test_mixture_hits_token_weights_over_a_long_stream(sources, tiny_tokenizer):
    mix = build_mixture(sources, tiny_tokenizer, seed=0)
    stream = PackedStream(mix.docs, seq_len=128, num_sources=3)
    rows = 1500  # 192k tokens
    for _ in itertools.islice(iter(stream), rows):
        pass
    seen = stream.state_at(rows)["tokens_per_source"]
    assert sum(seen) == rows * 128
    shares = [n / sum(seen) for n in seen]
    assert shares == pytest.approx([0.5, 0.3, 0.2], abs=0.02)
    # Sampling documents by the raw weights would be far off: the length correction matters.
    naive = [w * m for w, m in zip(mix.weights, mix.mean_doc_tokens)]
    assert abs(naive[0] / sum(naive) - 0.5) > 0.15
    assert mix.probabilities[0] > mix.probabilities[1] > mix.probabilities[2]


def test_weights_not_summing_to_one_are_normalised_with_a_warning(sources):
    for s, w in zip(sources, [9, 1, 0.0001]):
        s.weight = w
    with pytest.warns(UserWarning, match="sum to 10.0001"):
        weights = normalize_weights(sources, "stage 'x'")
    assert sum(weights) == pytest.approx(1.0)
    assert weights[0] == pytest.approx(9 / 10.0001)


def _docs_dataset(docs: list[list[int]]):
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": docs, "source": [i % 2 for i in range(len(docs))]}).to_iterable_dataset()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_row_gives_the_same_logits_as_documents_run_separately(tiny_model, tiny_tokenizer, attn):
    tiny_model.set_attn_implementation(attn)
    prepare_for_packing(tiny_model)  # what run_stage does: the Trainer's forward passes no use_cache
    eos = tiny_tokenizer.eos_token_id
    texts = [
        "Tom has 3 apples.",
        "He buys 12 more, so he has 15 apples and then some more apples.",
        "Final Answer: 15",
        "Tom has 7",
    ]
    docs = [tiny_tokenizer(t)["input_ids"] + [eos] for t in texts]
    seq_len = sum(len(d) for d in docs[:3]) + 2  # the 4th document (4 tokens) is cut at the row boundary
    assert len(docs[3]) > 2
    rows = list(PackedStream(_docs_dataset(docs * 2), seq_len, 2))
    row = rows[0]
    with torch.no_grad():
        packed = tiny_model(input_ids=row["input_ids"][None], position_ids=row["position_ids"][None]).logits[0]
        start = 0
        for d in docs:
            n = min(len(d), seq_len - start)
            alone = tiny_model(input_ids=torch.tensor([d[:n]])).logits[0]
            torch.testing.assert_close(packed[start : start + n], alone, atol=1e-5, rtol=1e-5)
            assert row["labels"][start] == -100  # EOS of the previous document predicts nothing
            start += n
        assert start == seq_len
        # The cut document continues in the next row with positions restarting at 0, alone again.
        rest = docs[3][n:]
        nxt = rows[1]
        assert nxt["input_ids"][: len(rest)].tolist() == rest and nxt["position_ids"][0] == 0
        assert nxt["labels"][0] != -100  # a continuation, not a document start
        cont = tiny_model(input_ids=nxt["input_ids"][None], position_ids=nxt["position_ids"][None]).logits[0]
        torch.testing.assert_close(
            cont[: len(rest)], tiny_model(input_ids=torch.tensor([rest])).logits[0], atol=1e-5, rtol=1e-5
        )
    # Without the position resets the same row does attend across documents (the check has teeth).
    with torch.no_grad():
        causal = tiny_model(input_ids=row["input_ids"][None]).logits[0]
    assert not torch.allclose(causal[len(docs[0]) :], packed[len(docs[0]) :], atol=1e-3)


def _recipe(tmp_path, model, sources, **kw) -> MidtrainConfig:
    mix = [s.__dict__ | {} for s in sources]
    base = dict(
        model=str(model),
        output_dir=str(tmp_path / "run"),
        seq_len=32,
        batch_size=4,
        micro_batch_size=2,
        learning_rate=1e-3,
        logging_steps=1,
        save_tokens=32 * 4,
        stable=dict(name="stable", tokens=32 * 4 * 6, mixture=mix),
        decay=[
            dict(name="long", tokens=32 * 4 * 5, decay="cosine", mixture=mix[:2]),
            dict(name="short", tokens=32 * 4 * 4, decay="linear", min_lr_ratio=0.2, mixture=mix[1:]),
        ],
    )
    base.update(kw)
    return MidtrainConfig(**base)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_lr_is_stable_then_decays_as_configured_and_branches_start_at_the_stable_lr(tmp_path, tiny_checkpoint, sources):
    cfg = _recipe(tmp_path, tiny_checkpoint, sources)
    reports = train(cfg)
    lr = 1e-3
    stable = reports["stable"]["lr_per_step"]
    assert list(stable.values()) == pytest.approx([lr] * 6, rel=1e-9)
    n = 5
    want_cos = [lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / n))) for k in range(n)]
    assert list(reports["long"]["lr_per_step"].values()) == pytest.approx(want_cos, rel=1e-9)
    n = 4
    want_lin = [lr * (0.2 + 0.8 * (1 - k / n)) for k in range(n)]
    assert list(reports["short"]["lr_per_step"].values()) == pytest.approx(want_lin, rel=1e-9)
    for b in ("long", "short"):
        assert reports[b]["init_from"] == str(tmp_path / "run" / "stable" / "final")
        assert reports[b]["lr_per_step"]["1"] == stable["6"]
        assert (tmp_path / "run" / b / "final" / "model.safetensors").exists()
    # Training moved the weights, and the two branches differ from the stable checkpoint and each other.
    base, st = _weights(tiny_checkpoint), _weights(tmp_path / "run" / "stable" / "final")
    lo, sh = _weights(tmp_path / "run" / "long" / "final"), _weights(tmp_path / "run" / "short" / "final")
    key = "model.layers.0.self_attn.q_proj.weight"
    assert (
        not torch.equal(base[key], st[key]) and not torch.equal(st[key], lo[key]) and not torch.equal(lo[key], sh[key])
    )
    # The report: tokens per source add up to the tokens seen; a second run skips finished stages.
    for r in reports.values():
        assert sum(s["tokens"] for s in r["sources"]) == r["tokens_seen"] == r["steps"] * 32 * 4
        assert len(r["loss_curve"]) == r["steps"] and r["throughput_tokens_per_s"] > 0
    assert {s["name"] for s in reports["short"]["sources"]} == {"medium", "long"}
    again = train(cfg)
    assert again["long"]["lr_per_step"] == reports["long"]["lr_per_step"]


class Kill:
    """A TrainerCallback that dies during optimizer step ``at`` (after checkpoint at-1 exists)."""

    def __init__(self, at: int):
        from transformers import TrainerCallback

        at_step = at

        class _K(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                if state.global_step == at_step:
                    raise KeyboardInterrupt

        self.cb = _K()


def test_stage_killed_midway_resumes_at_the_same_token_and_data_position(tmp_path, tiny_checkpoint, sources):
    cfg = _recipe(tmp_path, tiny_checkpoint, sources)
    full = run_stage(cfg, cfg.stable, str(tiny_checkpoint), tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        run_stage(cfg, cfg.stable, str(tiny_checkpoint), tmp_path / "killed", callbacks=[Kill(4).cb])
    saved = json.loads((tmp_path / "killed" / "checkpoint-3" / "data_state.json").read_text())
    assert saved["rows"] == 3 * 4 and sum(saved["tokens_per_source"]) == 3 * 4 * 32
    resumed = run_stage(cfg, cfg.stable, str(tiny_checkpoint), tmp_path / "killed")
    assert resumed["tokens_seen"] == full["tokens_seen"]
    assert [s["tokens"] for s in resumed["sources"]] == [s["tokens"] for s in full["sources"]]
    assert [c["loss"] for c in resumed["loss_curve"]] == pytest.approx(
        [c["loss"] for c in full["loss_curve"]], abs=1e-5
    )
    a, b = _weights(tmp_path / "full" / "final"), _weights(tmp_path / "killed" / "final")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)


def test_bad_inputs_name_the_source_or_stage(tmp_path, tiny_checkpoint, tiny_tokenizer, sources):
    empty = SourceConfig("empty_qa", write_jsonl(tmp_path / "empty.jsonl", []), 0.5)
    with pytest.raises(ValueError, match="empty_qa.*empty"):
        build_mixture([sources[0], empty], tiny_tokenizer)
    nofield = SourceConfig("gsm_typo", sources[0].path, 0.5, template="{question}\n{answer}")
    with pytest.raises(KeyError, match=r"gsm_typo.*'answer'.*question"):
        build_mixture([sources[0], nofield], tiny_tokenizer)
    with pytest.raises(KeyError, match="plain.*'text'"):
        build_mixture([SourceConfig("plain", sources[0].path, 1.0)], tiny_tokenizer)
    with pytest.raises(ValueError, match="'neg'.*positive"):
        SourceConfig("neg", sources[0].path, -0.1)
    with pytest.raises(FileNotFoundError, match="missing"):
        build_mixture([SourceConfig("missing", str(tmp_path / "nope.jsonl"), 1.0)], tiny_tokenizer)
    cfg = _recipe(tmp_path, tiny_checkpoint, sources)
    cfg.decay[0].tokens = 100
    with pytest.raises(ValueError, match=r"stage 'long'.*smaller than one batch.*128"):
        stage_steps(cfg, cfg.decay[0])
    # Through the CLI: one clean error line, exit code 2.
    from parallel_r1.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text(
        f"model: {tiny_checkpoint}\noutput_dir: {tmp_path / 'x'}\nstable:\n  name: stable\n  tokens: 10\n  mixture: [{{name: a, path: {sources[0].path}, weight: 1, template: '{{question}}'}}]\n"
    )
    assert main(["midtrain", "--config", str(bad)]) == 2
    bad.write_text("model: m\noutput_dir: o\nlearning_rat: 1\n")
    with pytest.raises(KeyError, match="learning_rat"):
        load_config(bad)


def test_failed_run_leaves_no_record_and_a_trained_one_refuses_another_recipe(tmp_path, tiny_checkpoint, sources):
    out = tmp_path / "run"
    broken = _recipe(tmp_path, tiny_checkpoint, [SourceConfig("missing", str(tmp_path / "nope.jsonl"), 1.0)], decay=[])
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        train(broken)
    assert not (out / "config.json").exists()
    cfg = _recipe(tmp_path, tiny_checkpoint, sources, decay=[], save_tokens=32 * 4 * 2)
    cfg.stable.tokens = 32 * 4 * 2
    train(cfg)  # the corrected re-run is not refused
    assert json.loads((out / "config.json").read_text())["stable"]["tokens"] == 32 * 4 * 2
    other = _recipe(tmp_path, tiny_checkpoint, sources, decay=[], save_tokens=32 * 4 * 2, learning_rate=5e-4)
    other.stable.tokens = 32 * 4 * 2
    with pytest.raises(ValueError, match=r"another recipe \(learning_rate: 0.001 there, 0.0005 now\)"):
        train(other)


def test_recipes_carry_the_paper_numbers(data_dir):
    paper = load_config(REPO / "recipes" / "midtrain_llama32_3b.yaml")
    assert (paper.seq_len, paper.batch_size, paper.learning_rate, paper.weight_decay) == (8192, 512, 2e-5, 0.1)
    assert paper.stable.tokens == 200 * 10**9 and paper.stable.decay == "none" and paper.stable.warmup_tokens == 0
    assert [d.name for d in paper.decay] == ["long", "short", "hybrid"]
    for d in paper.decay:
        assert (d.tokens, d.decay, d.min_lr_ratio) == (20 * 10**9, "cosine", 0.1)
        assert sum(s.weight for s in d.mixture) == pytest.approx(1.0)
    assert sum(s.weight for s in paper.stable.mixture) == pytest.approx(1.0)
    assert {s.path for s in paper.stable.mixture} >= {"OctoThinker/MegaMath-Web-Pro-Max"}
    cpu = load_config(REPO / "recipes" / "midtrain_smollm2_cpu.yaml")
    assert cpu.model == "smollm2" and len(cpu.decay) >= 2
    total = sum(s.tokens for s in cpu.stages)
    assert 100_000 <= total <= 1_000_000
    for stage in cpu.stages:
        stage_steps(cpu, stage)
        for s in stage.mixture:  # every local source exists and renders
            assert s.is_local, s.name
            assert Path(s.path.replace("../shared/data", str(data_dir))).exists() or Path(REPO, s.path).exists(), s.path


def test_token_scale_shrinks_every_budget_and_is_validated():
    full = load_config(REPO / "recipes" / "midtrain_smollm2_cpu.yaml")
    quick = load_config(REPO / "recipes" / "midtrain_smollm2_cpu.yaml", token_scale=0.06)
    assert [q.tokens for q in quick.stages] == [int(f.tokens * 0.06) for f in full.stages]
    assert quick.token_scale == 0.06
    for stage in quick.stages:  # still at least one batch per stage
        assert stage_steps(quick, stage)[0] >= 2
    with pytest.raises(ValueError, match="token_scale"):
        load_config(REPO / "recipes" / "midtrain_smollm2_cpu.yaml", token_scale=-1)
