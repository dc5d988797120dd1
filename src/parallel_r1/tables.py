"""Every summary table of the toolkit, in one place: plain text, markdown and HTML.

Library modules compute rows (``evaluate.summarize``, ``analysis.analyze_run``); this module only
lays them out, so that ``evaluate``, ``analysis``, ``report``, ``demo`` and ``rl-readiness`` print
the same numbers the same way. Percentages are shown as ``12.3`` (one decimal), missing values as ``-``.
"""

from __future__ import annotations

import html

from .metrics import LABELS

# Benchmark names as the papers' tables print them.
DISPLAY = {
    "aime24": "AIME24", "aime25": "AIME25", "amc23": "AMC23", "math500": "MATH500", "math": "MATH", "gsm8k": "GSM8K",
    "apo_aime24": "AIME24 (APO)", "apo_aime25": "AIME25 (APO)", "apo_amc23": "AMC23 (APO)", "math300": "MATH300",
    "olympiadbench": "OlympiadBench", "math8k": "MATH8K",
}  # fmt: skip
# The behaviour rows of every per-benchmark table: (label, results key), labels from metrics.LABELS.
BEHAVIOUR_ROWS = [(LABELS[k] + " %", k) for k in ("parallel_ratio", "opens_parallel")]


def protocol_label(results: dict) -> str:
    """Which protocol produced a ``results.json``: ``parallel_r1``, ``octothinker/base``,
    ``parallel_r1 + max_new_tokens`` (settings given over the protocol); ``custom`` for results
    written before protocols existed."""
    p = results.get("protocol") or {}
    label = p.get("name", "custom") + (f"/{p['model_kind']}" if p.get("model_kind") else "")
    return label + "".join(f" + {o}" for o in p.get("overrides") or [])


def method_label(results: dict) -> str:
    """How a ``results.json`` was decoded and scored, e.g. `` · decoding paper on vllm ·
    scorer minerva_exact on the paper extractor`` (empty for results that do not record it)."""
    s = results.get("settings") or {}
    if not s.get("decoding"):
        return ""
    on = "vllm" if s.get("backend") == "vllm" else "transformers"
    return f" · decoding {s['decoding']} on {on} · scorer {s.get('grader')} on the {s.get('extractor')} extractor"


def pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def text_table(header: list[str], rows: list[list[str]]) -> str:
    """Aligned plain text: first column left, the others right, a rule under the header."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells) -> str:
        return "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def format_table(results: dict, title: str | None = None) -> str:
    """The paper's main-table layout: benchmarks as columns, metrics as rows, plus the average."""
    bench = results["benchmarks"]
    names = list(bench)
    heads = [f"{DISPLAY.get(b, b)} (k={bench[b]['k']})" for b in names] + ["Avg."]
    rows = [
        ("mean@k", "mean@k"),
        ("pass@k", "pass@k"),
        ("maj@k", "maj@k"),
        ("best@k (verl)", "best@k"),
        *BEHAVIOUR_ROWS,
        ("format errors %", "format_error_rate"),
    ]
    table = []
    for label, key in rows:
        vals = [bench[b].get(key) for b in names]
        have = [v for v in vals if v is not None]
        table.append([label] + [pct(v) for v in vals] + [pct(sum(have) / len(have)) if have else "-"])
    for label, key, fmt in (
        ("mean blocks", "mean_blocks", "{:.2f}"),
        ("mean length", "mean_length", "{:.0f}"),
        ("critical path", "mean_critical_path_tokens", "{:.0f}"),
    ):
        vals = [bench[b].get(key) for b in names]
        table.append([label] + ["-" if v is None else fmt.format(v) for v in vals] + [""])
    table.append(["problems"] + [str(bench[b]["n_problems"]) for b in names] + [""])
    body = text_table(["", *heads], table) + f"\nprotocol: {protocol_label(results)}{method_label(results)}"
    return f"{title}\n{body}" if title else body


def summary_rows(evals: dict[str, dict]) -> list[dict]:
    """One row per evaluated model, for the combined table (report, ``analyze``, the demo).

    Args:
        evals: ``{tag: results.json content}``, e.g. :func:`parallel_r1.analysis.load_evals` of
            a run folder (the demo's ``RL_DIR/eval/{base,sft,rl}``) or ``{tag: evaluate(cfg)}``.

    Returns:
        ``[{"model": tag, "path": results["model"], "benchmarks": {name: {"k", "n_problems",
        "accuracy" (mean@k), "pass@k" (None when k == 1), "parallel_ratio", "mean_length",
        "mean_critical_path_tokens"}},
        "avg_accuracy"}]`` in the order of ``evals``.
    """
    rows = []
    for tag, res in evals.items():
        cells = {}
        for name, b in (res.get("benchmarks") or {}).items():
            k = b.get("k") or 1
            cells[name] = {
                "k": k,
                "n_problems": b.get("n_problems"),
                "accuracy": b.get("mean@k"),
                "pass@k": b.get("pass@k") if k > 1 else None,
                "parallel_ratio": b.get("parallel_ratio"),
                "mean_length": b.get("mean_length"),
                "mean_critical_path_tokens": b.get("mean_critical_path_tokens"),
            }
        accs = [c["accuracy"] for c in cells.values() if c["accuracy"] is not None]
        rows.append({"model": tag, "path": res.get("model"), "protocol": protocol_label(res), "benchmarks": cells,
                     "avg_accuracy": sum(accs) / len(accs) if accs else None})  # fmt: skip
    return rows


def summary_columns(rows: list[dict]) -> list[tuple[str, str, str]]:
    """(benchmark, metric key, header) for every column: benchmarks in first-seen order; pass@k
    only for benchmarks evaluated with k > 1 by some model, the critical path only where some
    model's results have it (results written before it existed do not)."""
    benches: dict[str, set[int]] = {}
    critical: set[str] = set()
    for r in rows:
        for name, c in r["benchmarks"].items():
            benches.setdefault(name, set()).add(c["k"])
            if c.get("mean_critical_path_tokens") is not None:
                critical.add(name)
    cols = []
    for name, ks in benches.items():
        kk = "/".join(str(k) for k in sorted(ks))
        for label, key in (
            ("mean@" + kk, "accuracy"),
            ("pass@" + kk, "pass@k"),
            (LABELS["parallel_ratio"] + " %", "parallel_ratio"),
            ("length", "mean_length"),
            ("critical path", "mean_critical_path_tokens"),
        ):
            if (key == "pass@k" and max(ks) <= 1) or (key == "mean_critical_path_tokens" and name not in critical):
                continue
            cols.append((name, key, label))
    return cols


def cell(key: str, v) -> str:
    """A summary-table cell: lengths in tokens, everything else in %."""
    if v is None:
        return "-"
    return f"{v:.0f}" if key in ("mean_length", "mean_critical_path_tokens") else f"{100 * v:.1f}"


def format_summary_markdown(rows: list[dict]) -> str:
    """The combined table as GitHub markdown: a row per model; per benchmark accuracy (mean@k, %),
    pass@k (%, when k > 1), parallel ratio (%) and mean length (tokens); then the average accuracy."""
    if not rows:
        return "(no evaluation results)"
    cols = summary_columns(rows)
    proto = _show_protocol(rows)
    head = (
        ["model"]
        + (["protocol"] if proto else [])
        + [f"{DISPLAY.get(b, b)} {label}" for b, _, label in cols]
        + ["avg acc"]
    )
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] * (1 + proto) + ["---:"] * (len(head) - 1 - proto)) + "|",
    ]
    for r in rows:
        cells = (
            [r["model"]]
            + ([r["protocol"]] if proto else [])
            + [cell(key, r["benchmarks"].get(b, {}).get(key)) for b, key, _ in cols]
        )
        lines.append("| " + " | ".join([*cells, cell("accuracy", r["avg_accuracy"])]) + " |")
    return "\n".join(lines)


def _show_protocol(rows: list[dict]) -> bool:
    """A protocol column is shown when some result was not produced by the default ``custom`` protocol."""
    return any(r.get("protocol", "custom") != "custom" for r in rows)


def summary_table_html(rows: list[dict]) -> str:
    """The combined table in HTML: benchmarks as column groups, a row per model."""
    if not rows:
        return ""
    cols = summary_columns(rows)
    groups: dict[str, int] = {}
    for b, _, _ in cols:
        groups[b] = groups.get(b, 0) + 1
    proto = _show_protocol(rows)
    top = (
        "<tr><th rowspan='2'>model</th>"
        + ("<th rowspan='2'>protocol</th>" if proto else "")
        + "".join(f"<th colspan='{n}'>{html.escape(DISPLAY.get(b, b))}</th>" for b, n in groups.items())
        + "<th rowspan='2'>avg acc %</th></tr>"
    )
    sub = "<tr>" + "".join(f"<th>{html.escape(label)}</th>" for _, _, label in cols) + "</tr>"
    body = "".join(
        f"<tr><td title='{html.escape(str(r['path'] or ''))}'>{html.escape(r['model'])}</td>"
        + (f"<td>{html.escape(r['protocol'])}</td>" if proto else "")
        + "".join(f"<td>{cell(key, r['benchmarks'].get(b, {}).get(key))}</td>" for b, key, _ in cols)
        + f"<td>{cell('accuracy', r['avg_accuracy'])}</td></tr>"
        for r in rows
    )
    note = f"<div class='meta'>accuracy = mean@k, pass@k = unbiased estimator (Chen et al. 2021), both in %; {html.escape(LABELS['parallel_ratio'])} = completions with a valid closed &lt;Parallel&gt; block (metrics.behaviour); length = mean completion tokens; protocol: custom unless a column says otherwise.</div>"
    return f"<table id='eval-summary' class='summary-table'>{top}{sub}{body}</table>{note}"


def results_table(tag: str, res: dict) -> str:
    """One model's ``results.json`` in HTML, in the layout of :func:`format_table`."""
    bench = res.get("benchmarks", {})
    names = list(bench)
    head = "".join(f"<th>{html.escape(b)} (k={html.escape(str(bench[b].get('k')))})</th>" for b in names)
    rows = []
    for label, key in (
        ("mean@k", "mean@k"),
        ("pass@k", "pass@k"),
        ("maj@k", "maj@k"),
        ("best@k (verl)", "best@k"),
        *BEHAVIOUR_ROWS,
        ("format errors %", "format_error_rate"),
    ):
        rows.append(f"<tr><td>{label}</td>" + "".join(f"<td>{pct(bench[b].get(key))}</td>" for b in names) + "</tr>")
    for label, key in (
        ("mean blocks", "mean_blocks"),
        ("mean length", "mean_length"),
        ("critical path", "mean_critical_path_tokens"),
        ("problems", "n_problems"),
    ):
        vals = [bench[b].get(key) for b in names]
        rows.append(
            f"<tr><td>{label}</td>" + "".join(f"<td>{'-' if v is None else round(v, 2)}</td>" for v in vals) + "</tr>"
        )
    model = html.escape(f"{res.get('model', '')} (protocol {protocol_label(res)})")
    return f"<h3>{html.escape(tag)}</h3><div class='meta'>{model}</div><table><tr><th></th>{head}</tr>{''.join(rows)}</table>"


def steps_table(steps: list[dict]) -> str:
    """One HTML row per RL step of :func:`parallel_r1.analysis.analyze_run`."""
    cols = [
        ("step", "step"),
        ("mode", "reward_mode"),
        (LABELS["parallel_ratio"] + " %", "parallel_ratio"),
        (LABELS["opens_parallel"] + " %", "opens_parallel"),
        ("position", "mean_parallel_position"),
        ("accuracy %", "accuracy"),
        ("reward", "reward"),
        ("mean len", "mean_length"),
        ("critical path", "mean_critical_path_tokens"),
        ("clipped %", "clipped_ratio"),
        ("format err %", "format_error_rate"),
    ]
    percent = {"parallel_ratio", "opens_parallel", "accuracy", "clipped_ratio", "format_error_rate"}

    def step_cell(key, v):
        if v is None:
            return "-"
        if key in percent:
            return pct(v)
        return f"{v:.2f}" if isinstance(v, float) else html.escape(str(v))

    head = "".join(f"<th>{c}</th>" for c, _ in cols)
    body = "".join("<tr>" + "".join(f"<td>{step_cell(k, s.get(k))}</td>" for _, k in cols) + "</tr>" for s in steps)
    return f"<table><tr>{head}</tr>{body}</table>"
