"""Cold-start pipeline: teacher against a real loopback HTTP server with injected faults, resume, filter."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest

from parallel_r1.coldstart.filter import filter_traces, read_traces, run_filter
from parallel_r1.coldstart.teacher import DEFAULT_TEACHER_PROMPT, OpenAITeacher, generate
from parallel_r1.format import parse
from parallel_r1.io import read_jsonl

REPO = Path(__file__).resolve().parents[1]


def trace_for(a: int, b: int) -> str:
    return (
        f"We add {a} and {b}.<Parallel><Path>{a} + {b} = {a + b}</Path><Path>{b} + {a} = {a + b}</Path></Parallel>\n"
        f"<Summary>Both give {a + b}.</Summary>\nFinal Answer: {a + b}"
    )


class FakeOpenAI:
    """An OpenAI-compatible /v1/chat/completions on 127.0.0.1 that misbehaves on a schedule.

    ``schedule`` is consumed one entry per request (then "ok" forever): ok, timeout (sleeps past
    the client's timeout), 500, 503, 429, malformed (truncated JSON), nonutf8 (invalid bytes in
    the body), empty (an empty choice list), surrogate (valid JSON whose content holds a lone
    UTF-16 surrogate, which no UTF-8 file can store), 401, block (holds the answer until the test
    sets ``gate``: a handshake, so a test can act while requests are surely in flight).
    ``fail_always`` maps a problem's "a" number to a fault served on every request for it.
    """

    def __init__(self, schedule=(), sleep=1.0, fail_always=None):
        self.schedule = list(schedule)
        self.sleep = sleep
        self.fail_always = fail_always or {}
        self.served = Counter()
        self.lock = threading.Lock()
        self.gate = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][0]["content"]
                a, b = map(int, re.search(r"What is (\d+) plus (\d+)\?", prompt).groups())
                with fake.lock:
                    kind = fake.schedule.pop(0) if fake.schedule else "ok"
                    kind = fake.fail_always.get(a, kind)
                    fake.served[kind] += 1
                if kind == "timeout":
                    time.sleep(fake.sleep)
                    kind = "ok"
                if kind == "block":
                    fake.gate.wait()
                    kind = "ok"
                if kind in ("500", "503", "429", "401"):
                    return self._send(int(kind), b'{"error": {"message": "injected"}}')
                content = ("\ud800" if kind == "surrogate" else "") + trace_for(a, b)
                choices = [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}]
                payload = json.dumps(
                    {
                        "id": "x",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body["model"],
                        "choices": [] if kind == "empty" else choices,
                    }
                ).encode()
                if kind == "malformed":
                    payload = payload[: len(payload) // 2]
                if kind == "nonutf8":
                    payload = payload.replace(b'"assistant"', b'"assis\xff\xfetant"')
                self._send(200, payload)

            def _send(self, code, payload):
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    if code == 429:
                        self.send_header("Retry-After", "0")
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.gate.set()  # let blocked handlers finish
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_server():
    servers = []

    def make(**kw):
        servers.append(FakeOpenAI(**kw))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def problems(n):
    return [
        SimpleNamespace(id=f"p{i}", problem=f"What is {i} plus {2 * i + 1}?", answer=str(3 * i + 1), source="toy")
        for i in range(n)
    ]


def teacher(url, **kw):
    # A generous request timeout: an answer delayed by a busy machine is not a fault. Tests of the
    # timeout path pass a short one and a server fault that sleeps well past it.
    kw = dict(timeout=60, max_retries=8, backoff=0.01, max_backoff=0.05) | kw
    return OpenAITeacher(url, "teacher-model", api_key_env="PARALLEL_R1_TEST_NO_KEY", **kw)


def keys(path):
    return Counter((r["problem_id"], r["sample_index"]) for r in read_jsonl(path))


def test_default_prompt_shows_the_canonical_layout():
    text = DEFAULT_TEACHER_PROMPT.format(Problem="What is 1 plus 2?")
    assert text.endswith("Problem: What is 1 plus 2?")
    assert "Final Answer:" in text
    skeleton = re.search(r"<Parallel><Path>.*?</Summary>", text, re.S).group(0)
    parsed = parse(skeleton)
    assert parsed.format_ok and parsed.num_blocks == 1 and parsed.paths_per_block == [2]


def test_every_row_exactly_once_after_injected_faults(fake_server, tmp_path):
    faults = ["timeout", "500", "429", "malformed", "nonutf8", "empty", "503", "ok"] * 3
    server = fake_server(schedule=faults, sleep=1.0)
    out = tmp_path / "raw.jsonl"
    # One request can meet every fault in a row while the others sleep: allow that many retries.
    stats = generate(
        problems(10), teacher(server.url, max_retries=len(faults), timeout=0.5), out, n=2, concurrency=4, progress=False
    )
    got = keys(out)
    assert set(got) == {(f"p{i}", k) for i in range(10) for k in range(2)}
    assert set(got.values()) == {1}
    assert stats.written == 20 and stats.failed == 0 and stats.successes == 20
    for kind in ("timeout", "500", "429", "malformed", "nonutf8", "empty", "503"):
        assert server.served[kind] >= 3, kind
    rows = list(read_jsonl(out))
    assert all(r["correct"] and r["format_ok"] and r["num_blocks"] == 1 for r in rows)
    # A second run finds everything done and writes nothing.
    again = generate(problems(10), teacher(server.url), out, n=2, concurrency=4, progress=False)
    assert again.written == 0 and again.skipped == 20 and keys(out) == got


@pytest.mark.parametrize(
    "fault, logged",
    [
        ("empty", "empty choice list"),
        ("nonutf8", "UnicodeDecodeError"),
        ("malformed", "JSONDecodeError"),
        ("500", "InternalServerError"),
        ("429", "RateLimitError"),
    ],
)
def test_request_that_keeps_failing_is_left_for_the_next_run(fake_server, tmp_path, fault, logged):
    """A teacher that always answers one problem with garbage: counted and logged, not written, retried next run."""
    server = fake_server(fail_always={3: fault})
    out = tmp_path / "raw.jsonl"
    stats = generate(problems(5), teacher(server.url, max_retries=2), out, n=1, concurrency=2, progress=False)
    assert stats.failed == 1 and stats.written == 4
    assert ("p3", 0) not in keys(out)
    errors = list(read_jsonl(out.with_name(out.name + ".errors")))
    assert len(errors) == 1 and errors[0]["problem_id"] == "p3" and logged in errors[0]["error"]
    assert "gave up after 3 attempts" in errors[0]["error"] and server.served[fault] == 3
    server.fail_always.clear()
    stats = generate(problems(5), teacher(server.url), out, n=1, concurrency=2, progress=False)
    assert stats.written == 1 and set(keys(out).values()) == {1} and len(keys(out)) == 5


def test_unfixable_error_stops_the_run_cleanly(fake_server, tmp_path):
    server = fake_server(schedule=["ok", "ok", "401"])
    out = tmp_path / "raw.jsonl"
    with pytest.raises(ValueError, match="AuthenticationError"):
        generate(problems(4), teacher(server.url), out, n=1, concurrency=1, progress=False)
    assert len(keys(out)) == 2  # the rows written before the error are kept


def test_interrupt_then_resume(fake_server, tmp_path):
    """SIGINT a real run mid-way, tear its last line as a crash would, re-run: every row exactly once."""
    # Handshake, no sleeps: 4 answers come at once, every later request is held by the server until
    # the signal has been sent, so the run is surely still going when it gets the signal.
    server = fake_server(schedule=["ok"] * 4 + ["block"] * 400)
    out = tmp_path / "raw.jsonl"
    script = textwrap.dedent(
        f"""
        import sys
        from types import SimpleNamespace
        from parallel_r1.coldstart.teacher import OpenAITeacher, generate
        ps = [SimpleNamespace(id=f"p{{i}}", problem=f"What is {{i}} plus {{2 * i + 1}}?", answer=str(3 * i + 1), source="toy")
              for i in range(30)]
        t = OpenAITeacher({server.url!r}, "m", api_key_env="PARALLEL_R1_TEST_NO_KEY", timeout=600, backoff=0.01)
        generate(ps, t, {str(out)!r}, n=1, concurrency=2, progress=False)
        """
    )
    # A shell starts background jobs with SIGINT ignored and children inherit that (Python then
    # installs no KeyboardInterrupt handler): give the run the default disposition, as a terminal would.
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    rows_written = lambda: out.read_text().count("\n") if out.exists() else 0  # noqa: E731
    while rows_written() < 4:  # the 4 answers are graded and written; the run then waits on the server
        assert proc.poll() is None, "the run ended before its 4th row"
        time.sleep(0.05)  # polling a file, not a race: the run cannot end before the gate opens
    proc.send_signal(signal.SIGINT)
    server.gate.set()  # the held requests may answer now
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0 and b"KeyboardInterrupt" in err
    first = keys(out)
    assert 4 <= len(first) < 30 and set(first.values()) == {1}
    with open(out, "a") as f:  # a crash in the middle of a write
        f.write('{"problem_id": "p29", "sample_ind')
    server.schedule.clear()
    stats = generate(problems(30), teacher(server.url), out, n=1, concurrency=4, progress=False)
    final = keys(out)
    assert set(final) == {(f"p{i}", 0) for i in range(30)} and set(final.values()) == {1}
    assert stats.skipped == len(first) and stats.written == 30 - len(first)


def test_lone_surrogate_in_the_content_is_written_as_valid_utf8(fake_server, tmp_path):
    server = fake_server(fail_always={1: "surrogate"})
    out = tmp_path / "raw.jsonl"
    stats = generate(problems(3), teacher(server.url), out, n=1, concurrency=1, progress=False)
    assert stats.written == 3 and stats.failed == 0
    out.read_bytes().decode("utf-8")  # strict: the whole file is valid UTF-8
    row = next(r for r in read_jsonl(out) if r["problem_id"] == "p1")
    assert row["response"] == "\ufffd" + trace_for(1, 3) and row["correct"]


class ScriptedTeacher:
    """A local-style teacher (batches, no HTTP) that raises or miscounts on chosen batches."""

    name, batch_size = "scripted", 2

    def __init__(self, raise_on=(), short_on=()):
        self.raise_on, self.short_on, self.calls = set(raise_on), set(short_on), 0

    def complete_batch(self, ps, prompts):
        from parallel_r1.coldstart.teacher import Completion

        self.calls += 1
        first = ps[0].id
        if first in self.raise_on:
            raise RuntimeError(f"CUDA out of memory on {first}")
        out = [Completion(trace_for(*map(int, re.findall(r"\d+", p.problem))), "stop") for p in ps]
        return out[:-1] if first in self.short_on else out


def test_a_teacher_that_raises_or_miscounts_loses_no_rows(tmp_path):
    out = tmp_path / "raw.jsonl"
    stats = generate(problems(6), ScriptedTeacher(raise_on={"p2"}), out, n=1, progress=False)
    assert stats.written == 4 and stats.failed == 2 and set(keys(out)) == {("p0", 0), ("p1", 0), ("p4", 0), ("p5", 0)}
    errors = list(read_jsonl(out.with_name(out.name + ".errors")))
    assert {e["problem_id"] for e in errors} == {"p2", "p3"} and all("out of memory" in e["error"] for e in errors)
    # A teacher that hands back fewer answers than prompts is a bug in the teacher: stop, keep what is written.
    with pytest.raises(ValueError, match="returned 1 completions for 2 prompts"):
        generate(problems(6), ScriptedTeacher(short_on={"p2"}), out, n=1, progress=False)
    assert len(keys(out)) == 4
    stats = generate(problems(6), ScriptedTeacher(), out, n=1, progress=False)
    assert stats.written == 2 and stats.skipped == 4 and set(keys(out).values()) == {1} and len(keys(out)) == 6


def test_bad_problem_sets_and_output_files_are_refused(tmp_path):
    ps = problems(3)
    ps[2].id = "p0"
    with pytest.raises(ValueError, match="problem id 'p0' appears twice"):
        generate(ps, ScriptedTeacher(), tmp_path / "a.jsonl", progress=False)
    foreign = _write(tmp_path / "sft.jsonl", [{"id": 1, "problem": "p", "response": "r"}])
    with pytest.raises(ValueError, match="sft.jsonl:1: not a `coldstart generate` row"):
        generate(problems(2), ScriptedTeacher(), foreign, progress=False)
    assert foreign.read_text().count("\n") == 1  # untouched


def test_cli_generate_filter_and_sft_rows(fake_server, tmp_path, capsys):
    """The documented commands end to end: generate (loopback endpoint, with faults) -> filter -> SFT rows."""
    from parallel_r1.cli import main
    from parallel_r1.train.sft import load_traces

    server = fake_server(schedule=["500", "429", "malformed"])
    src = _write(
        tmp_path / "problems.jsonl",
        [dict(id=f"q{i}", problem=f"What is {i} plus {i + 2}?", answer=str(2 * i + 2)) for i in range(4)],
    )
    raw, sft = tmp_path / "raw.jsonl", tmp_path / "sft.jsonl"
    args = [
        "coldstart",
        "generate",
        "--teacher",
        "openai",
        "--base-url",
        server.url,
        "--model",
        "m",
        "--problems",
        str(src),
        "--output",
        str(raw),
        "--n",
        "2",
        "--backoff",
        "0.01",
        "--timeout",
        "60",
        "--no-progress",
        "--api-key-env",
        "PARALLEL_R1_TEST_NO_KEY",
    ]
    assert main(args) == 0
    assert "wrote 8 rows" in capsys.readouterr().out and len(keys(raw)) == 8
    assert main(args) == 0 and "wrote 0 rows" in capsys.readouterr().out and len(keys(raw)) == 8
    with open(raw, "a") as f:  # a row a broken teacher might leave: no response
        f.write(
            json.dumps(
                dict(
                    problem_id="q9",
                    sample_index=0,
                    source="problems",
                    problem="What is 9 plus 11?",
                    answer="20",
                    response=None,
                )
            )
            + "\n"
        )
    assert main(["coldstart", "filter", "--input", str(raw), "--output", str(sft), "--no-gsm8k-join"]) == 0
    assert "kept 8/9 traces" in capsys.readouterr().out
    report = json.loads(Path(str(sft) + ".report.json").read_text())
    assert report["dropped"]["no_response"] == 1 and report["per_source"]["problems"] == dict(
        total=9, kept=8, no_response=1
    )
    rows = load_traces(str(sft))
    assert len(rows) == 8 and all(parse(r["response"]).num_blocks == 1 for r in rows)
    # missing columns / no such file: one clear line, exit code 2
    assert main(["coldstart", "filter", "--input", str(tmp_path / "nope.parquet"), "--output", str(sft)]) == 2
    assert "no such file" in capsys.readouterr().err


def test_local_teacher_through_the_cli_resumes(tiny_checkpoint, tmp_path, capsys):
    """`coldstart generate --teacher local`: a transformers model decoded by the engine, rows once, resumable."""
    from parallel_r1.cli import main

    src = _write(
        tmp_path / "problems.jsonl",
        [dict(id=f"q{i}", problem=f"What is {i} plus 1?", answer=str(i + 1)) for i in range(3)],
    )
    out = tmp_path / "local.jsonl"
    args = [
        "coldstart",
        "generate",
        "--teacher",
        "local",
        "--model",
        str(tiny_checkpoint),
        "--problems",
        str(src),
        "--output",
        str(out),
        "--max-new-tokens",
        "12",
        "--batch-size",
        "2",
        "--temperature",
        "1.0",
        "--no-progress",
    ]
    assert main(args + ["--limit", "2"]) == 0 and set(keys(out)) == {("problems-q0", 0), ("problems-q1", 0)}
    assert main(args + ["--n", "2"]) == 0
    got = keys(out)
    assert set(got) == {(f"problems-q{i}", k) for i in range(3) for k in range(2)} and set(got.values()) == {1}
    rows = list(read_jsonl(out))
    assert all(r["teacher"] == f"local:{tiny_checkpoint}" and isinstance(r["response"], str) for r in rows)
    assert all(r["success"] == (r["format_ok"] and r["num_blocks"] > 0 and r["correct"]) for r in rows)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_prepare_model_adds_tags_once_with_mean_of_pieces(arch, tmp_path, capsys):
    """Tag surgery: single tokens, new rows = mean of the tag text's old pieces (input and untied output), idempotent."""
    import torch

    from parallel_r1.cli import main
    from parallel_r1.format import PARALLEL_OPEN, PATH_CLOSE
    from parallel_r1.models import build_tiny_model, load_model, load_tokenizer

    model, tok = build_tiny_model(arch, with_tags=False)
    model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    pieces = {t: tok.encode(t, add_special_tokens=False) for t in (PARALLEL_OPEN, PATH_CLOSE)}
    assert all(len(p) > 1 for p in pieces.values())
    assert main(["prepare-model", "--model", str(tmp_path / "base"), "--output_dir", str(tmp_path / "ready")]) == 0
    tok2, m2 = load_tokenizer(tmp_path / "ready"), load_model(tmp_path / "ready")
    assert len(tok2) == len(tok) + 6 and m2.get_input_embeddings().weight.shape[0] == len(tok2)
    for tag, ids in pieces.items():
        (tid,) = tok2.encode(tag, add_special_tokens=False)
        for old, new in (
            (model.get_input_embeddings(), m2.get_input_embeddings()),
            (model.get_output_embeddings(), m2.get_output_embeddings()),
        ):
            torch.testing.assert_close(new.weight[tid], old.weight[ids].mean(0))
    n_old = len(tok)
    torch.testing.assert_close(m2.get_input_embeddings().weight[:n_old], model.get_input_embeddings().weight)
    # again on the prepared checkpoint: nothing added, nothing moved
    assert main(["prepare-model", "--model", str(tmp_path / "ready"), "--output_dir", str(tmp_path / "again")]) == 0
    tok3, m3 = load_tokenizer(tmp_path / "again"), load_model(tmp_path / "again")
    assert len(tok3) == len(tok2)
    torch.testing.assert_close(m3.get_input_embeddings().weight, m2.get_input_embeddings().weight, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------- filter


def test_filter_keeps_the_pilot_and_reports(data_dir, tmp_path):
    out = tmp_path / "sft.jsonl"
    report = run_filter(data_dir / "parallel_gsm8k_pilot" / "train.parquet", out, tokenizer_name="smollm2")
    assert report["total"] == 341 and report["kept"] == 341
    assert sum(report["dropped"].values()) == 0
    assert report["kept_blocks"] == {1: 261, 2: 59, 3: 12, 4: 6, 0: 3}
    rows = list(read_jsonl(out))
    assert len(rows) == 341 and {"id", "source", "problem", "prompt", "response", "answer"} <= set(rows[0])
    assert rows[0]["prompt"].startswith("Solve the following problem") and rows[0]["prompt"].endswith(
        rows[0]["problem"]
    )
    assert json.loads(Path(str(out) + ".report.json").read_text())["kept"] == 341


def test_filter_drop_reasons(tiny_tokenizer, tmp_path):
    good = trace_for(2, 3)
    rows = [
        dict(
            id="ok",
            source="a",
            problem="What is 2 plus 3?",
            response=good.replace("</Path><Path>", "</Path>\n  <Path>"),
            answer="5",
        ),
        dict(id="none", source="a", problem="What is 2 plus 3?", response=None, answer="5"),
        dict(id="fmt", source="b", problem="What is 2 plus 3?", response=good.replace("</Parallel>", ""), answer="5"),
        dict(
            id="noans",
            source="b",
            problem="What is 2 plus 3?",
            response=good.replace("Final Answer: 5", "so 5"),
            answer="5",
        ),
        dict(id="wrong", source="b", problem="What is 2 plus 3?", response=good, answer="6"),
        dict(
            id="long",
            source="b",
            problem="What is 2 plus 3?",
            response=good.replace("We add", "We add " + "very " * 500),
            answer="5",
        ),
    ]
    for r in rows:
        r["where"] = r["id"]
    kept, report = filter_traces(rows, tiny_tokenizer, max_tokens=600)
    assert [k["id"] for k in kept] == ["ok"]
    assert "</Path><Path>" in kept[0]["response"]  # whitespace between tags normalised
    assert report["dropped"] == dict(no_response=1, format=1, no_answer=1, wrong_answer=1, too_long=1)
    assert report["per_source"]["a"] == dict(total=2, kept=1, no_response=1)
    assert report["per_source"]["b"]["kept"] == 0 and report["per_source"]["b"]["total"] == 4


def test_filter_bad_inputs(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"prompt": ["x"], "extra_info": [{"answer": "y"}]}), bad)
    with pytest.raises(ValueError, match="missing column.*reward_model"):
        read_traces(bad)
    torn = tmp_path / "torn.jsonl"
    torn.write_text('{"id": 1, "problem": "p", "response": "r"}\n{"id": 2, "pro\n{"id": 3}\n')
    with pytest.raises(ValueError, match="torn.jsonl:2"):
        read_traces(torn)
    rows = read_traces(
        _write(tmp_path / "ok.jsonl", [{"id": 1, "problem": "p"}, {"id": 2, "problem": "p", "response": "  "}])
    )
    assert [r["response"] for r in rows] == [None, None]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
