"""``parallel-r1 eval``: benchmarks with mean@k / pass@k / maj@k and the parallel-thinking metrics (docs/eval.md)."""

from __future__ import annotations

from ..evaluate import EvalConfig

HELP = "benchmarks with mean@k / pass@k / maj@k and parallel-thinking metrics"
CONFIG = (EvalConfig,)


def run(cfg: EvalConfig) -> int:
    import os
    from pathlib import Path

    from ..evaluate import evaluate
    from ..models import check_model_source
    from ..tables import format_table

    check_model_source(cfg.model)
    results = evaluate(cfg)
    if os.environ.get("RANK", "0") != "0":
        return 0  # data-parallel eval: rank 0 wrote the results and prints the table
    title = f"{results['model']}  ({cfg.template}, {cfg.variant}, T={cfg.temperature}, max {cfg.max_new_tokens} tokens)"
    print(format_table(results, title=title))
    out = Path(cfg.output_dir)
    print(f"\nwrote {out / 'results.json'} and {out / 'completions.jsonl'}")
    return 0
