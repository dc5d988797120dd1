"""One self-contained HTML page about a run (``parallel-r1 report``).

The page holds the curves of :mod:`parallel_r1.analysis` (matplotlib, embedded as base64 PNG),
the evaluation tables of ``eval/<tag>/results.json``, and a trace viewer: sampled completions
with each ``<Parallel>`` block's paths side by side (CSS flex columns) and its summary under
them (``format.parse``; nested blocks are drawn inside their path). No script, no external
URL: it opens offline and in any browser. Every piece of model text is HTML-escaped.

Which traces are shown (the papers are silent): from ``rollouts.jsonl``, up to ``traces`` rows
spread evenly over the run's steps, preferring completions that use ``<Parallel>``; then the
same number from the last evaluation's ``completions.jsonl``.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from .analysis import analyze_run
from .format import parse
from .io import atomic_write_text, read_jsonl
from .metrics import LABELS
from .tables import results_table, steps_table, summary_rows, summary_table_html

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d1d1f;background:#fff}
h1{font-size:22px;margin:0 0 4px} h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#555;font-size:13px}
.flag{background:#fdecea;border:1px solid #e0a39b;padding:8px 12px;border-radius:6px;margin:8px 0}
.ok{background:#eaf6ec;border:1px solid #9bd0a5;padding:8px 12px;border-radius:6px;margin:8px 0}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(460px,1fr));gap:12px}
.plots img{width:100%;border:1px solid #e5e5e5;border-radius:4px}
table{border-collapse:collapse;font-size:13px;margin:6px 0 14px} th,td{border:1px solid #ddd;padding:4px 8px;text-align:right}
th:first-child,td:first-child{text-align:left} th[colspan]{text-align:center}
.trace{border:1px solid #ccc;border-radius:6px;margin:14px 0;padding:10px}
.trace .head{font-size:12px;color:#444;margin-bottom:6px}
.badge{display:inline-block;padding:1px 6px;border-radius:8px;font-size:11px;margin-left:4px}
.good{background:#d6f0db}.bad{background:#f7d4cf}
.text{white-space:pre-wrap;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;line-height:1.35}
.block{border:2px solid #4a78b5;border-radius:6px;margin:6px 0;padding:6px;background:#f4f8fd}
.block>.label{font-size:11px;font-weight:bold;color:#4a78b5}
.paths{display:flex;gap:8px;align-items:stretch}
.path{flex:1 1 0;min-width:0;border:1px solid #9bb4d6;border-radius:4px;padding:6px;background:#fff}
.path>.label{font-size:11px;color:#4a78b5;font-weight:bold}
.summary{margin-top:6px;border:1px solid #d4b26a;border-radius:4px;padding:6px;background:#fdf8ec}
.summary>.label{font-size:11px;color:#9a7420;font-weight:bold}
.errors{color:#a3261b;font-size:11px}
"""


# ----------------------------------------------------------------------------- plots


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _series(steps: list[dict], key: str) -> tuple[list, list]:
    pts = [(s["step"], s[key]) for s in steps if s.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def make_plots(a: dict) -> list[tuple[str, str]]:
    """(title, base64 PNG) for each curve of the analysis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = a["steps"]
    plots = []
    evals = a.get("evals") or {}

    def new(title, ylabel):
        fig, ax = plt.subplots(figsize=(6, 3.4))
        ax.set_title(title, fontsize=11)
        ax.set_xlabel("RL step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        return fig, ax

    if not steps:  # evaluations only: no training curves to draw
        return plots + _eval_plot(evals, a.get("eval_intervals") or {}, plt)
    fig, ax = new("Parallel ratio and format errors", "share of completions")
    for key, label in (
        ("parallel_ratio", LABELS["parallel_ratio"]),
        ("opens_parallel", LABELS["opens_parallel"]),
        ("format_error_rate", "format error"),
    ):
        ax.plot(*_series(steps, key), marker="o", ms=3, label=label)
    ax.set_ylim(-0.03, 1.03)
    ax.legend(fontsize=8)
    plots.append(("Parallel ratio", _png(fig)))

    fig, ax = new("Mean relative position of <Parallel> (0 = start)", "relative position")
    ax.plot(*_series(steps, "mean_parallel_position"), marker="o", ms=3, color="C2")
    ax.set_ylim(-0.03, 1.03)
    plots.append(("Parallel position", _png(fig)))

    fig, ax = new("Reward and accuracy (markers: reward mode of the step)", "value")
    # the curves join every step; the markers say which reward mode scored it (alternating, scaffold)
    ax.plot(*_series(steps, "reward"), color="0.35", lw=1.5, label="reward")
    ax.plot(*_series(steps, "accuracy"), color="0.65", lw=1.2, ls="--", label="accuracy")
    for i, (mode, d) in enumerate(a["by_reward_mode"].items()):
        for key, style in (("accuracy", "o"), ("reward", "x")):
            pts = [(s, v) for s, v in zip(d["step"], d[key]) if v is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, ms=5, color=f"C{i}", label=f"{key} ({mode})")
    ax.legend(fontsize=8)
    plots.append(("Accuracy and reward", _png(fig)))

    lp = a["length_pathology"]
    fig, ax = new("Completion length" + (" (PINNED AT BUDGET)" if lp.get("flagged") else ""), "tokens")
    ax.plot(*_series(steps, "mean_length"), marker="o", ms=3, label="mean")
    ax.plot(*_series(steps, "max_length"), ls="--", label="max")
    if any(s.get("mean_critical_path_tokens") is not None for s in steps):
        ax.plot(*_series(steps, "mean_critical_path_tokens"), marker=".", ms=3, label="critical path (mean)")
    if a.get("budget"):
        ax.axhline(a["budget"], color="black", ls=":", lw=1.2, label="budget")
    ax2 = ax.twinx()
    ax2.plot(*_series(steps, "clipped_ratio"), color="C3", alpha=0.6, label="clipped share")
    ax2.set_ylim(-0.03, 1.03)
    ax2.set_ylabel("clipped share")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8)
    plots.append(("Length", _png(fig)))
    return plots + _eval_plot(evals, a.get("eval_intervals") or {}, plt)


def _eval_plot(evals: dict, bars: dict, plt) -> list[tuple[str, str]]:
    """mean@k per model and benchmark; ``bars`` (analysis ``eval_intervals``) draws each 95 % interval."""
    plots = []
    if len(evals) > 1:
        fig, ax = plt.subplots(figsize=(6, 3.4))
        ax.set_title("Evaluation mean@k by model / checkpoint (95 % intervals)", fontsize=11)
        tags = list(evals)
        benches = sorted({b for r in evals.values() for b in r.get("benchmarks", {})})
        for b in benches:
            ys = [evals[t].get("benchmarks", {}).get(b, {}).get("mean@k") for t in tags]
            ys = [float("nan") if y is None else y for y in ys]
            iv = [bars.get(t, {}).get(b) for t in tags]
            # clamped: the bar is drawn around results.json's mean@k, which the interval from the
            # completions need not contain when the two files disagree (a hand-made folder)
            err = [
                [max(0.0, y - i["lo"]) if i else 0.0 for y, i in zip(ys, iv)],
                [max(0.0, i["hi"] - y) if i else 0.0 for y, i in zip(ys, iv)],
            ]
            ax.errorbar(range(len(tags)), ys, yerr=err, marker="o", capsize=3, label=b)
        ax.set_xticks(range(len(tags)), tags, rotation=30, fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        plots.append(("Evaluation", _png(fig)))
    return plots


# ----------------------------------------------------------------------------- traces


def render_trace(text: str, depth: int = 0) -> str:
    """HTML of one completion: trunk text, and each top-level block as side-by-side paths + summary."""
    p = parse(text)
    top = [b for b in p.blocks if b.depth == 0]
    out = []
    for i, b in enumerate(top):
        out.append(f'<span class="text">{html.escape(p.trunk[i])}</span>')
        paths = "".join(
            f'<div class="path"><div class="label">Path {j + 1}</div><div class="text">{render_trace(path, depth + 1)}</div></div>'
            for j, path in enumerate(b.paths)
        )
        summary = (
            ""
            if b.summary is None
            else f'<div class="summary"><div class="label">Summary</div><div class="text">{html.escape(b.summary)}</div></div>'
        )
        out.append(
            f'<div class="block"><div class="label">&lt;Parallel&gt; block {i + 1} &middot; {len(b.paths)} paths</div><div class="paths">{paths}</div>{summary}</div>'
        )
    out.append(f'<span class="text">{html.escape(p.trunk[-1] if p.trunk else text)}</span>')
    return "".join(out)


def pick_traces(rows: list[dict], n: int) -> list[dict]:
    """Up to n rows spread over the steps (or over the file), those with blocks first."""
    if n <= 0 or not rows:
        return []
    with_blocks = [r for r in rows if r.get("num_blocks")]
    pool = with_blocks if len(with_blocks) >= n else with_blocks + [r for r in rows if not r.get("num_blocks")]
    pool.sort(
        key=lambda r: (r.get("step", 0), r.get("prompt_id", r.get("problem_id", "")) or "", r.get("sample_index", 0))
    )
    if len(pool) <= n:
        return pool
    return [pool[round(i * (len(pool) - 1) / (n - 1))] for i in range(n)] if n > 1 else [pool[-1]]


def _trace_card(r: dict) -> str:
    p = parse(r.get("completion", ""))
    where = [f"step {r['step']}"] if "step" in r else []
    where += [f"{r['benchmark']} #{r['problem_id']}"] if "benchmark" in r else []
    bits = [
        *where,
        f"sample {r.get('sample_index', 0)}",
        f"{r.get('length', '?')} tokens",
        f"answer {r.get('answer', '')}",
    ]
    if "reward" in r:
        bits.append(f"reward {r['reward']}")
    correct = r.get("correct")
    badges = f'<span class="badge {"good" if correct else "bad"}">{"correct" if correct else "wrong"}</span>'
    badges += f'<span class="badge {"good" if p.format_ok else "bad"}">{"format ok" if p.format_ok else "format error"}</span>'
    if r.get("clipped") or r.get("finish_reason") == "length":
        badges += '<span class="badge bad">clipped</span>'
    errors = f'<div class="errors">{html.escape("; ".join(p.errors))}</div>' if p.errors else ""
    prompt = html.escape(str(r.get("prompt", "")))
    return (
        f'<div class="trace"><div class="head">{html.escape(" · ".join(str(b) for b in bits))}{badges}</div>{errors}'
        f'<details><summary>prompt</summary><div class="text">{prompt}</div></details>'
        f"<div>{render_trace(r.get('completion', ''))}</div></div>"
    )


# ----------------------------------------------------------------------------- page


def build_report(run_dir: str | Path, traces: int = 6) -> str:
    run_dir = Path(run_dir)
    a = analyze_run(run_dir)
    parts = [
        f"<h1>Parallel-R1 run report</h1><div class='meta'>{html.escape(str(run_dir.resolve()))} · {a['n_steps']} RL steps · {a['n_rollouts']} rollouts · budget {a['budget'] or 'unknown'} tokens</div>"
    ]
    lp = a["length_pathology"]
    if lp.get("flagged"):
        parts.append(
            f"<div class='flag'><b>Length pathology:</b> {lp['clipped_share_last_steps']:.0%} of the completions of steps {lp['last_steps'][0]}-{lp['last_steps'][-1]} hit the token budget (threshold {lp['threshold']:.0%}; the OctoThinker length pathology).</div>"
        )
    elif "clipped_share_last_steps" in lp:
        parts.append(
            f"<div class='ok'>Lengths do not pin at the budget: {lp['clipped_share_last_steps']:.0%} clipped over the last {len(lp['last_steps'])} steps.</div>"
        )
    t = a["position_trend"]
    if t["shift"] is not None:
        parts.append(
            f"<div class='meta'>Mean &lt;Parallel&gt; position: {t['early']:.2f} over the first third of the steps, {t['late']:.2f} over the last third (paper fig. 3: it moves later as parallel thinking turns from exploration to verification).</div>"
        )

    parts.append("<h2>Curves</h2>")
    if not a["steps"]:
        parts.append(
            "<p class='meta'>No RL steps in this folder (no rollouts.jsonl or metrics.jsonl): evaluations only.</p>"
        )
    parts.append("<div class='plots'>")
    for title, b64 in make_plots(a):
        parts.append(f'<img alt="{html.escape(title)}" src="data:image/png;base64,{b64}">')
    parts.append("</div>")

    parts.append("<h2>Evaluation</h2>")
    if a["evals"]:
        parts.append("<h3>Summary</h3>" + summary_table_html(summary_rows(a["evals"])))
        parts.append("<h3>Per model</h3>")
        parts += [results_table(tag, res) for tag, res in a["evals"].items()]
    else:
        parts.append("<p class='meta'>No eval/&lt;tag&gt;/results.json in this run folder.</p>")

    if a["steps"]:
        parts.append("<h2>Per step</h2>" + steps_table(a["steps"]))

    parts.append("<h2>Traces</h2>")
    rollouts_path = run_dir / "rollouts.jsonl"
    rollouts = list(read_jsonl(rollouts_path, skip_bad=True)) if rollouts_path.exists() else []
    cards = [_trace_card(r) for r in pick_traces(rollouts, traces)]
    if a["evals"]:
        last_tag = list(a["evals"])[-1]
        comp = run_dir / "eval" / last_tag / "completions.jsonl"
        if comp.exists():
            cards += [_trace_card(r) for r in pick_traces(list(read_jsonl(comp, skip_bad=True)), traces)]
    parts += cards or ["<p class='meta'>No completions to show.</p>"]

    body = "\n".join(parts)
    return f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>Parallel-R1 report: {html.escape(run_dir.name)}</title><style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n'


def write_report(run_dir: str | Path, output: str | Path | None = None, traces: int = 6) -> Path:
    """Write :func:`build_report` of ``run_dir`` to ``output`` (default ``RUN_DIR/report.html``) atomically."""
    out = Path(output) if output else Path(run_dir) / "report.html"
    atomic_write_text(out, build_report(run_dir, traces))
    return out
