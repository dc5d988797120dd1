"""Our Unseen RL step vs a plain TRL GRPO step: same model, same prompts, same batch, one run.

    .venv/bin/python bench/rl_step.py      # the demo's SFT model, 4 prompts x 8 rollouts, easy synthetic problems
    .venv/bin/python bench/rl_step.py [--model PATH|smollm2|tiny] [--steps 2] [--template parallel_v3]

The default model is the demo's cold-started SmolLM2 (``runs/demo/sft``; ``parallel-r1 demo
--stages base,sft`` makes it): it solves about a third of the easy synthetic problems, so groups
have unequal rewards. Raw SmolLM2 solves none of them and every group is dead: seconds per
informative rollout is then undefined for both trainers.

"ours" = ``parallel-r1 rl`` (ParallelGRPOTrainer, Unseen engine rollouts through rollout_func,
path-isolating layout in the loss, rollout/metrics logging). "plain" = ``trl.GRPOTrainer`` with
its own transformers generation and a causal forward. Both run the same number of RL steps from
the same weights, in alternating rounds; the first step of each trainer is a warm-up and is not
timed, and checkpoint writes are timed apart (see Timer). "ours" runs as the CPU recipes do:
zero-advantage groups leave the loss (``drop_zero_advantage_groups``) and the engine's rollout
log-probs stand in for TRL's old-policy forward (``rollout_logprobs_as_old``); ``--plain-ours``
turns both off. Prints the headline figure, **seconds per informative rollout** (a rollout of a
group whose rewards differ: the only ones with a gradient) ours / plain (goal <= 0.5), then the
step-time ratio, the share of each step spent generating, the ratio of the non-generation part
(the loss forward/backward over prompt + completion tokens, and the optimiser step), time per
completion token (the two samplers write different lengths), and the prompt / completion
tokens each step's loss forward reads.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


class Timer:
    """Wraps ``trainer._generate`` and times every RL step (one generation each).

    Checkpoint writes are timed apart and left out of the step they fall in: ours saves at the end
    of training (``parallel-r1 rl`` always checkpoints its last step, ~1.6 GB of weights and Adam
    state for SmolLM2), plain TRL here saves nothing, and a save is once per ``save_every`` RL
    steps, not per step.
    """

    def __init__(self, trainer):
        self.gen, self.steps, self.tokens, self.prompt_tokens, self.saves = [], [], [], [], []
        self._t0 = None
        self._saving = 0.0
        inner = trainer._generate
        inner_save = trainer._save_checkpoint

        def timed_save(*args, **kwargs):
            now = time.perf_counter()
            try:
                return inner_save(*args, **kwargs)
            finally:
                self.saves.append(time.perf_counter() - now)
                self._saving += self.saves[-1]

        def timed(prompts):
            now = time.perf_counter()
            if self._t0 is not None:
                self.steps.append(now - self._t0 - self._saving)
            self._t0, self._saving = now, 0.0
            out = inner(prompts)
            self.gen.append(time.perf_counter() - now)
            self.tokens.append(sum(len(c) for c in out[1]))
            self.prompt_tokens.append(sum(len(p) for p in out[0]))
            return out

        trainer._generate = timed
        trainer._save_checkpoint = timed_save

    def close(self):
        """End of training: time the last step, drop the warm-up step."""
        self.steps.append(time.perf_counter() - self._t0 - self._saving)
        self.steps, self.gen, self.tokens, self.prompt_tokens = (
            self.steps[1:],
            self.gen[1:],
            self.tokens[1:],
            self.prompt_tokens[1:],
        )

    @classmethod
    def empty(cls) -> Timer:
        t = cls.__new__(cls)
        t.gen, t.steps, t.tokens, t.prompt_tokens, t.saves, t.informative = [], [], [], [], [], []
        return t

    def extend(self, other: Timer) -> None:
        self.informative += other.informative
        self.gen += other.gen
        self.steps += other.steps
        self.tokens += other.tokens
        self.prompt_tokens += other.prompt_tokens
        self.saves += other.saves


def prepare(model: str, out: Path) -> str:
    from parallel_r1.models import add_tag_tokens, load_model, load_tokenizer, save_tiny_model

    if model == "tiny":
        return str(save_tiny_model(out / "tiny"))
    tok = load_tokenizer(model)
    m = load_model(model)
    if add_tag_tokens(m, tok):
        m.save_pretrained(out / "model")
        tok.save_pretrained(out / "model")
        return str(out / "model")
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model",
        default="runs/demo/sft",
        help="a checkpoint folder (default: the demo's SFT model), smollm2 or tiny (random, seconds)",
    )
    ap.add_argument("--steps", type=int, default=2, help="timed RL steps per round (after one warm-up step)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of (ours, plain), each on fresh trainers")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--num-generations", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--template", default="no_prompt", help="no_prompt: the demo SFT's template")
    ap.add_argument(
        "--plain-ours", action="store_true", help="ours without the zero-advantage drop and rollout log-probs"
    )
    a = ap.parse_args()
    if a.model not in ("smollm2", "tiny") and not (Path(a.model) / "config.json").exists():
        ap.error(f"--model {a.model}: no checkpoint there; run `parallel-r1 demo --stages base,sft` or pass --model")

    import torch
    from trl import GRPOConfig, GRPOTrainer

    from parallel_r1.cli import parse_command
    from parallel_r1.models import load_model, load_tokenizer
    from parallel_r1.prompts import build_prompt
    from parallel_r1.train.rl import build_trainer

    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp(prefix="rl_bench_"))
    model_path = prepare(a.model, tmp)
    from parallel_r1.data.synthetic import make_problems

    problems = [{"id": p.id, "problem": p.problem, "answer": p.answer} for p in make_problems(64, "easy", seed=0)]
    data = tmp / "problems.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in problems))
    tok = load_tokenizer(model_path)
    rows = [{"prompt": build_prompt(p["problem"], tok, a.template), "answer": p["answer"]} for p in problems]  # as ours
    n = a.prompts * a.num_generations
    common = dict(
        num_generations=a.num_generations,
        generation_batch_size=n,
        per_device_train_batch_size=n,
        gradient_accumulation_steps=1,
        max_completion_length=a.max_new_tokens,
        learning_rate=1e-6,
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
        save_strategy="no",
    )
    import yaml
    from datasets import Dataset

    plain_rewards: list[list[float]] = []  # plain TRL's rewards per RL step (one reward call each)

    def accuracy(prompts, completions, answer, **kw):
        from parallel_r1.rewards import compute_reward

        plain_rewards.append([compute_reward("accuracy_reward", c, g) for c, g in zip(completions, answer)])
        return plain_rewards[-1]

    def informative(rewards: list[float]) -> int:
        """Rollouts in groups whose rewards differ."""
        from parallel_r1.train.curation import informative_groups

        return int(informative_groups(torch.tensor(rewards), a.num_generations).sum()) * a.num_generations

    def run_ours(r: int) -> Timer:
        recipe = tmp / f"recipe{r}.yaml"
        recipe.write_text(
            yaml.safe_dump(
                dict(
                    common,
                    model=model_path,
                    dataset=str(data),
                    template=a.template,
                    variant="unseen",
                    reward="accuracy",
                    rl_steps=a.steps + 1,
                    save_every=1000,
                    output_dir=str(tmp / f"ours{r}"),
                    max_path_tokens=a.max_new_tokens // 2,
                    drop_zero_advantage_groups=not a.plain_ours,
                    rollout_logprobs_as_old=not a.plain_ours,
                )
            )
        )
        trainer, _ = build_trainer(*parse_command("rl", ["--config", str(recipe)]))
        t = Timer(trainer)
        trainer.train()
        t.close()
        rows = [json.loads(line) for line in (tmp / f"ours{r}" / "rollouts.jsonl").read_text().splitlines()]
        steps = sorted({x["step"] for x in rows})[1:]  # the warm-up step is not timed
        t.informative = [informative([x["reward"] for x in rows if x["step"] == s]) for s in steps]
        return t

    def run_plain(r: int) -> Timer:
        trainer = GRPOTrainer(
            model=load_model(model_path),
            reward_funcs=[accuracy],
            train_dataset=Dataset.from_list(rows),
            processing_class=tok,
            args=GRPOConfig(output_dir=str(tmp / f"plain{r}"), max_steps=a.steps + 1, logging_steps=1, **common),
        )
        t = Timer(trainer)
        plain_rewards.clear()
        trainer.train()
        t.close()
        t.informative = [informative(x) for x in plain_rewards[1:]]
        return t

    # Rounds alternate ours / plain so that load from other processes on the machine hits both alike.
    t_ours, t_plain = Timer.empty(), Timer.empty()
    for r in range(a.rounds):
        t_ours.extend(run_ours(r))
        t_plain.extend(run_plain(r))

    def summary(t: Timer) -> tuple[float, float, float]:
        return tuple(sum(x) / len(x) for x in (t.steps, t.gen, t.tokens))

    (so, go, ko), (sp, gp, kp) = summary(t_ours), summary(t_plain)
    io, ip = sum(t_ours.informative), sum(t_plain.informative)
    per_o = sum(t_ours.steps) / io if io else float("inf")
    per_p = sum(t_plain.steps) / ip if ip else float("inf")
    print(
        f"model {a.model}: {a.prompts} prompts x {a.num_generations} rollouts, max {a.max_new_tokens} new tokens, {a.rounds} x {a.steps} timed RL steps each"
    )
    print(f"{'':8}{'step s':>9}{'gen s':>9}{'gen share':>11}{'tokens/step':>13}{'ms/token':>10}")
    for name, s, g, k in (("ours", so, go, ko), ("plain", sp, gp, kp)):
        print(f"{name:8}{s:9.3f}{g:9.3f}{g / s:11.1%}{k:13.0f}{1000 * s / max(k, 1):10.2f}")
    print(
        f"seconds per informative rollout: ours {per_o:.2f} ({io} of {len(t_ours.steps) * n}), "
        f"plain {per_p:.2f} ({ip} of {len(t_plain.steps) * n}); ours/plain {per_o / per_p:.3f}  (goal <= 0.5)"
    )
    print(f"step time ratio ours/plain: {so / sp:.3f}  (goal <= 1.15)")
    print(f"per completion token:       {(so / max(ko, 1)) / (sp / max(kp, 1)):.3f}")
    print(f"non-generation part ratio:  {(so - go) / (sp - gp):.3f}")
    print(f"share of our step spent in generation: {go / so:.1%}")
    po = sum(t_ours.prompt_tokens) / len(t_ours.prompt_tokens)
    print(
        f"tokens per step read by the loss forward: {po:.0f} prompt ({po / a.prompts / a.num_generations:.0f} per rollout, "
        f"re-read by each of the {a.num_generations} rollouts of a group) + {ko:.0f} completion ({po / (po + ko):.0%} prompt)"
    )
    if t_ours.saves or t_plain.saves:
        print(
            f"checkpoint writes left out of the step times: ours {sum(t_ours.saves):.2f} s in {len(t_ours.saves)}, "
            f"plain {sum(t_plain.saves):.2f} s in {len(t_plain.saves)}"
        )


if __name__ == "__main__":
    main()
