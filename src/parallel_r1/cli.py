"""``parallel-r1``: one sub-command per stage of the curriculum.

Each command lives in its own module, which defines ``add_arguments(parser)`` and
``run(args) -> int | None``. The registry below maps names to modules and is imported lazily,
so ``parallel-r1 --help`` is instant and a command only pays for the libraries it uses.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). Order = the curriculum's order.
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare-model": ("parallel_r1.commands.prepare_model", "add the six tag tokens to a model and save a ready-to-train checkpoint"),
    "midtrain": ("parallel_r1.train.midtrain", "stable-then-decay continued pre-training on a data mixture (OctoThinker)"),
    "coldstart": ("parallel_r1.coldstart.cli", "teacher traces for the cold start: `coldstart generate` and `coldstart filter`"),
    "sft": ("parallel_r1.train.sft", "cold-start SFT, Seen (causal) or Unseen (path-isolating attention)"),
    "rl": ("parallel_r1.train.rl", "GRPO with parallel-thinking rewards and schedules (TRL)"),
    "rl-readiness": ("parallel_r1.train.readiness", "the OctoThinker comparison: same short RL + eval for each mid-training branch"),
    "generate": ("parallel_r1.decoding.cli", "sample completions with the parallel decoding engine"),
    "eval": ("parallel_r1.evaluate", "benchmarks with mean@k / pass@k / maj@k and parallel-thinking metrics"),
    "score": ("parallel_r1.commands.score", "grade and reward saved completions (jsonl in, jsonl out)"),
    "analyze": ("parallel_r1.analysis", "parallel-thinking behaviour over a training run"),
    "report": ("parallel_r1.report", "one self-contained HTML report of a run"),
    "demo": ("parallel_r1.demo", "the whole curriculum on SmolLM2-135M on a CPU in minutes"),
}


def _top_parser() -> argparse.ArgumentParser:
    width = max(len(n) for n in COMMANDS)
    lines = "\n".join(f"  {n.ljust(width)}  {h}" for n, (_, h) in COMMANDS.items())
    return argparse.ArgumentParser(
        prog="parallel-r1",
        description="Teach language models parallel thinking with reinforcement learning (Parallel-R1 + OctoThinker).",
        epilog=f"commands:\n{lines}\n\n`parallel-r1 COMMAND --help` for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="parallel-r1 COMMAND [options]",
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        _top_parser().print_help()
        return 0
    name = argv[0]
    if name not in COMMANDS:
        _top_parser().print_usage(sys.stderr)
        print(f"parallel-r1: unknown command {name!r}; known: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"parallel-r1 {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print(f"\nparallel-r1 {name}: interrupted; what was written so far is kept, re-run to continue", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError, KeyError, ImportError) as e:  # ImportError: an optional extra (vLLM) missing
        if getattr(args, "debug", False):
            raise
        msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        # modules prefix their messages with their own name for callers outside the CLI
        msg = msg.removeprefix(f"{name}: ")
        print(f"parallel-r1 {name}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
