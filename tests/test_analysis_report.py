"""`analyze` and `report` on a synthetic run folder written to the run-folder schema
(docs/INTERFACES.md), so they are tested independently of the RL trainer; the report is
rendered in headless chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from helpers.run_folder import BUDGET, make_run
from parallel_r1 import analysis, report, tables
from parallel_r1 import metrics as M
from parallel_r1.cli import main


def test_analysis_per_step_matches_rollouts(tmp_path):
    run = make_run(tmp_path)
    a = analysis.analyze_run(run)
    assert a["n_steps"] == 8 and a["n_rollouts"] == 32 and a["budget"] == BUDGET
    rows = [json.loads(line) for line in (run / "rollouts.jsonl").read_text().splitlines()]
    for s in a["steps"]:
        g = [r for r in rows if r["step"] == s["step"]]
        # uses_parallel (writes <Parallel>) is the opens_parallel share; the parallel ratio counts valid closed blocks
        assert s["opens_parallel"] == pytest.approx(np.mean([r["uses_parallel"] for r in g]))
        assert s["parallel_ratio"] == pytest.approx(np.mean([M.has_parallel_block(r["completion"]) for r in g]))
        assert s["accuracy"] == pytest.approx(np.mean([r["correct"] for r in g]))
        assert s["reward"] == pytest.approx(np.mean([r["reward"] for r in g]))
        pos = [p for r in g for p in r["positions"]]
        assert s["mean_parallel_position"] == (pytest.approx(np.mean(pos)) if pos else None)
        assert s["format_error_rate"] == pytest.approx(np.mean([not r["format_ok"] for r in g]))
    assert a["steps"][1]["format_error_rate"] == 0.25
    # the parallel ratio grows, blocks move from the start to the end (fig. 3 shape)
    assert a["steps"][-1]["parallel_ratio"] > a["steps"][0]["parallel_ratio"]
    t = a["position_trend"]
    assert t["early"] < 0.1 and t["late"] > 0.4 and t["shift"] > 0.3
    # alternating schedule: 6 accuracy steps, 2 parallel steps, kept apart
    assert a["by_reward_mode"]["accuracy"]["step"] == [1, 2, 3, 5, 6, 7]
    assert a["by_reward_mode"]["parallel"]["step"] == [4, 8]
    assert not a["length_pathology"]["flagged"]
    assert list(a["evals"]) == ["checkpoint-4", "checkpoint-8"]


def test_length_pathology_flagged_when_lengths_pin_at_budget(tmp_path):
    a = analysis.analyze_run(make_run(tmp_path, pinned=True))
    lp = a["length_pathology"]
    assert lp["flagged"] and lp["clipped_share_last_steps"] == 1.0 and lp["last_steps"] == [7, 8]
    assert "LENGTH PATHOLOGY" in analysis.format_summary(a)


def test_analysis_from_metrics_only_and_bad_folders(tmp_path):
    run = make_run(tmp_path)
    (run / "rollouts.jsonl").unlink()
    a = analysis.analyze_run(run)
    assert [s["step"] for s in a["steps"]] == list(range(1, 9))
    assert a["steps"][3]["reward_mode"] == "parallel" and a["steps"][0]["mean_parallel_position"] is None
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="neither rollouts.jsonl, metrics.jsonl nor eval"):
        analysis.analyze_run(empty)
    with pytest.raises(FileNotFoundError, match="no such run folder"):
        analysis.analyze_run(tmp_path / "missing")


def test_analyze_cli_writes_json_and_prints_summary(tmp_path, capsys):
    run = make_run(tmp_path)
    assert main(["analyze", "--run_dir", str(run)]) == 0
    out = capsys.readouterr().out
    assert "parallel ratio" in out and "| checkpoint-8 |" in out and "| model | AIME24 mean@2 | AIME24 pass@2 |" in out
    saved = json.loads((run / "analysis.json").read_text())
    assert saved["n_steps"] == 8 and saved["position_trend"]["shift"] > 0.3


def test_summary_rows_and_markdown_table(tmp_path):
    run = make_run(tmp_path, eval_tags=("rl", "sft", "base"))  # written out of order on purpose
    evals = analysis.load_evals(run)
    assert list(evals) == ["base", "sft", "rl"]  # curriculum order, not alphabetical
    rows = tables.summary_rows(evals)
    assert [r["model"] for r in rows] == ["base", "sft", "rl"]
    rl = rows[2]["benchmarks"]
    # written in order rl, sft, base: rl got mean@k 0.25
    assert rl["aime24"] == {
        "k": 2,
        "n_problems": 2,
        "accuracy": 0.25,
        "pass@k": 0.5,
        "parallel_ratio": 0.5,
        "mean_length": 30.0,
        "mean_critical_path_tokens": None,  # results of before the critical path: no column below
    }
    assert rl["gsm8k"]["pass@k"] is None  # k = 1: pass@1 is mean@1, not repeated
    assert rows[0]["avg_accuracy"] == pytest.approx(0.75)
    md = tables.format_summary_markdown(rows).splitlines()
    assert (
        md[0]
        == "| model | AIME24 mean@2 | AIME24 pass@2 | AIME24 parallel ratio % | AIME24 length | GSM8K mean@1 | GSM8K parallel ratio % | GSM8K length | avg acc |"
    )
    assert md[2] == "| base | 75.0 | 100.0 | 50.0 | 30 | 75.0 | 50.0 | 30 | 75.0 |"
    assert [line.split(" | ")[0] for line in md[2:]] == ["| base", "| sft", "| rl"]
    assert analysis.eval_summary(run) == "\n".join(md)
    assert tables.format_summary_markdown([]) == "(no evaluation results)"
    # models evaluated on different benchmarks / k: missing cells are "-", headers show both k
    evals["base"]["benchmarks"] = {"aime24": dict(evals["base"]["benchmarks"]["aime24"], k=4)}
    md = tables.format_summary_markdown(tables.summary_rows(evals)).splitlines()
    assert "AIME24 mean@2/4" in md[0] and md[2].count(" - ") == 3
    # a model whose results have the critical path: the column appears beside the length
    evals["rl"]["benchmarks"]["gsm8k"]["mean_critical_path_tokens"] = 21.5
    md = tables.format_summary_markdown(tables.summary_rows(evals)).splitlines()
    assert "| GSM8K length | GSM8K critical path |" in md[0] and md[-1].split(" | ")[-2] == "22"


def test_report_on_evals_only_and_on_rollouts_only(tmp_path):
    evals_only = make_run(tmp_path / "a", eval_tags=("base", "sft", "rl"), training=False)
    a = analysis.analyze_run(evals_only)
    assert a["n_steps"] == 0 and list(a["evals"]) == ["base", "sft", "rl"]
    assert "| rl |" in analysis.format_summary(a)
    page = report.build_report(evals_only)
    assert "id='eval-summary'" in page and "evaluations only" in page and page.count("<img") == 1  # the eval curve only
    assert "Per step" not in page and page.count('class="trace"') >= 1  # traces from the last eval

    rollouts_only = make_run(tmp_path / "b", eval_tags=())
    page = report.build_report(rollouts_only)
    assert "eval-summary" not in page and "No eval/&lt;tag&gt;/results.json" in page
    assert page.count("<img") == 4 and "Per step" in page


def test_render_trace_puts_paths_side_by_side_and_escapes():
    text = "pre <x> <Parallel><Path>a <script>alert(1)</script></Path><Path>b</Path></Parallel>\n<Summary>s & t</Summary> post"
    h = report.render_trace(text)
    assert h.count('class="path"') == 2 and h.count('class="summary"') == 1
    assert "<script>" not in h and "&lt;script&gt;" in h and "s &amp; t" in h and "pre &lt;x&gt;" in h
    nested = "<Parallel><Path>x<Parallel><Path>y</Path><Path>z</Path></Parallel>\n<Summary>yz</Summary></Path><Path>w</Path></Parallel>\n<Summary>all</Summary>"
    assert report.render_trace(nested).count('class="block"') == 2
    broken = "<Parallel><Path>never closed"
    assert "&lt;Parallel&gt;&lt;Path&gt;never closed" in report.render_trace(broken)


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        pytest.fail(
            "chromium is needed to check the report renders: `apt-get install -y chromium` (Debian) — `make test` installs it"
        )
    return exe


def _chrome(html_path: Path, tmp: Path, *mode: str) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
        "--window-size=1280,1800",
    ]
    return subprocess.run(
        [_chromium(), *flags, *mode, html_path.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HOME": str(tmp)},
    )


def console_errors(stderr: str) -> list[str]:
    """Page console messages at error level (chromium logs them as `...:CONSOLE...` lines)."""
    return [line for line in stderr.splitlines() if "CONSOLE" in line and ("ERROR" in line or "Uncaught" in line)]


def test_report_renders_in_headless_chromium(tmp_path):
    run = make_run(tmp_path, eval_tags=("base", "sft", "checkpoint-8", "rl"))
    assert main(["report", "--run-dir", str(run)]) == 0
    page = run / "report.html"
    html_text = page.read_text()
    assert "http://" not in html_text and "https://" not in html_text and "<script" not in html_text

    dom = _chrome(page, tmp_path, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert console_errors(dom.stderr) == []
    imgs = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,', dom.stdout)
    assert len(imgs) >= 5, imgs  # 4 training curves + the eval curve over checkpoints
    assert dom.stdout.count('class="block"') >= 1 and dom.stdout.count('class="path"') >= 2
    assert "checkpoint-8" in dom.stdout and "&lt;b&gt;&amp;amp; check&lt;/b&gt;" in dom.stdout  # escaped model text
    # the combined table: one row per model in curriculum order, per benchmark its metric columns
    table = re.search(r'<table id="eval-summary".*?</table>', dom.stdout, re.S)
    assert table, "combined summary table missing"
    models = re.findall(r"<tr><td[^>]*>([^<]+)</td>", table.group(0))
    assert models == ["base", "sft", "checkpoint-8", "rl"]
    assert "AIME24" in table.group(0) and "pass@2" in table.group(0) and "GSM8K" in table.group(0)
    assert dom.stdout.count("<h3>") >= 2 + 4  # Summary, Per model, and each model's detailed table

    shot = tmp_path / "shot.png"
    res = _chrome(page, tmp_path, f"--screenshot={shot}")
    assert shot.exists(), res.stderr[-2000:]
    assert console_errors(res.stderr) == []
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=float)
    plots = pixels[150:900]  # the curves grid sits right under the header
    assert plots.std() > 20, "plot area is blank"
    # matplotlib's first colour (C0, #1f77b4) must be drawn: the curves are there, not just empty axes
    c0 = (np.abs(plots - np.array([31, 119, 180])).sum(-1) < 60).sum()
    assert c0 > 200, f"only {c0} pixels of curve colour in the plot area"


def test_console_error_detection_works(tmp_path):
    """The console check above can fail: a page with a script error is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><p>x</p><script>undefinedFunction()</script></body></html>")
    res = _chrome(bad, tmp_path, "--dump-dom")
    assert console_errors(res.stderr), res.stderr[-2000:]


def test_eval_intervals_come_from_each_models_completions(tmp_path):
    from parallel_r1.analysis import eval_intervals
    from parallel_r1.intervals import bootstrap_mean, per_problem

    run = make_run(tmp_path, training=False)
    evals = analysis.load_evals(run)
    bars = eval_intervals(run, evals)
    assert set(bars) == set(evals)
    for tag in evals:
        scores = list(per_problem(run / "eval" / tag / "completions.jsonl", "aime24").values())
        b = bars[tag]["aime24"]
        assert b == bootstrap_mean(scores, 2000) and b["lo"] <= b["mean"] <= b["hi"]
        assert "gsm8k" not in bars[tag]  # no completions of it: no interval rather than a made-up one
