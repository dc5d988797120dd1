"""``parallel-r1 eval``: benchmarks with mean@k / pass@k / maj@k and the parallel-thinking metrics (docs/eval.md)."""

from __future__ import annotations

import os

from ..evaluate import EvalConfig

HELP = "benchmarks with mean@k / pass@k / maj@k and parallel-thinking metrics"
CONFIG = (EvalConfig,)


def run(cfg: EvalConfig) -> int:
    from pathlib import Path

    from ..evaluate import evaluate
    from ..models import check_model_source
    from ..tables import format_table, protocol_label

    check_model_source(cfg.model)
    results = evaluate(cfg)
    if os.environ.get("RANK", "0") != "0":
        return 0  # data-parallel eval: rank 0 wrote the results and prints the table
    title = f"{results['model']}  ({protocol_label(results)}: {cfg.template}, {cfg.variant}, {cfg.decoding} decoding, T={cfg.temperature}, max {cfg.max_new_tokens} tokens)"
    print(format_table(results, title=title))
    out = Path(cfg.output_dir)
    print(f"\nwrote {out / 'results.json'} and {out / 'completions.jsonl'}")
    return 0
