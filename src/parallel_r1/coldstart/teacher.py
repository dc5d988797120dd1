"""Teachers that write parallel-thinking traces, and the resumable generation loop (docs/coldstart.md).

The paper's teacher prompt and generation code are not public. We ship
:data:`DEFAULT_TEACHER_PROMPT`: the final v3 prompt's instructions plus an explicit skeleton of
the canonical layout (README, "What parallel thinking looks like") and the ``Final Answer:`` line,
since a teacher that is shown the layout reproduces it far more often than one told about it in
prose. ``prompt_file`` selects another text (one ``{Problem}`` placeholder, literal braces doubled).

Teachers (``coldstart generate --teacher``):

* ``openai``: any OpenAI-compatible chat endpoint (vLLM, SGLang, a hosted API) through the
  ``openai`` client. Base URL and model from the command line, key from an environment variable.
  The client's own retries are off: :meth:`OpenAITeacher.complete` retries timeouts, connection
  errors, 429, 5xx, malformed or non-UTF-8 bodies and empty choice lists with exponential
  backoff and jitter (honouring ``Retry-After``), and stops the run at once on errors that no
  retry can fix (401, 403, 404, 400).
* ``local``: a transformers model decoded free-running (the Seen variant) by
  :class:`parallel_r1.decoding.ParallelEngine`.
* ``synthetic``: :func:`parallel_r1.data.synthetic.teacher_trace`, a programmatic teacher for the
  synthetic task (always valid; the CPU recipe's training data).

Generation output is one jsonl row per (problem_id, sample_index), appended as each answer
arrives (:class:`parallel_r1.io.JsonlAppender`). A re-run skips the keys already on disk, so it
resumes without duplicating or losing rows; Ctrl-C leaves whole rows only. A request that still
fails after its retries is not written (a re-run retries it) but logged to ``OUT.errors`` (jsonl).
"""

from __future__ import annotations

import os
import queue
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..format import parse
from ..io import JsonlAppender, read_jsonl, repair_torn_tail
from ..prompts import PARALLEL_V3

DEFAULT_TEACHER_PROMPT = (
    PARALLEL_V3.removesuffix("Problem: {Problem}")
    + "Use exactly this layout for every parallel block, with no whitespace between the tags of a block and one "
    "newline before <Summary>:\n"
    "<Parallel><Path>first independent line of reasoning</Path><Path>second independent line of reasoning</Path>"
    "</Parallel>\n<Summary>what the paths establish together</Summary>\n"
    'Use at least one parallel block. The last line must be "Final Answer: " followed by the number only.\n'
    "\n"
    "Problem: {Problem}"
)


@dataclass
class Completion:
    """One teacher answer: the text, or why there is none."""

    text: str | None
    finish_reason: str | None = None
    error: str | None = None


class TeacherFatal(RuntimeError):
    """An error no retry can fix (bad key, unknown model, bad request): the run stops."""


_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(text: str) -> str:
    """Text that can be written as UTF-8: lone surrogates (the only str a UTF-8 file cannot hold;
    a JSON body may carry them as ``\\ud800`` escapes) become U+FFFD, NUL bytes are dropped."""
    return _SURROGATE.sub("\ufffd", text).replace("\x00", "")


class OpenAITeacher:
    """An OpenAI-compatible chat endpoint; one request per sample, retried with backoff."""

    batch_size = 1

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 300.0,
        max_retries: int = 6,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        temperature: float = 0.6,
        top_p: float = 0.95,
        max_tokens: int = 4096,
        sleep: Callable[[float], None] = time.sleep,
    ):
        from openai import OpenAI

        # Local servers (vLLM, SGLang) accept any key; hosted APIs need the real one.
        key = os.environ.get(api_key_env) or "EMPTY"
        self.client = OpenAI(base_url=base_url, api_key=key, timeout=timeout, max_retries=0)
        self.model, self.max_retries, self.backoff, self.max_backoff = model, max_retries, backoff, max_backoff
        self.sampling = dict(temperature=temperature, top_p=top_p, max_tokens=max_tokens)
        self.sleep = sleep
        self.name = f"openai:{model}"

    def _delay(self, attempt: int, error: Exception | None) -> float:
        retry_after = getattr(getattr(error, "response", None), "headers", {}).get("retry-after")
        try:
            if retry_after is not None:
                return min(float(retry_after), self.max_backoff)
        except ValueError:
            pass
        return min(self.max_backoff, self.backoff * 2**attempt) * (0.5 + random.random())

    def complete(self, prompt: str) -> Completion:
        import openai

        last, error = "no attempt", None
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.sleep(self._delay(attempt - 1, error))
            try:
                resp = self.client.chat.completions.create(
                    model=self.model, messages=[{"role": "user", "content": prompt}], **self.sampling
                )
                if not getattr(resp, "choices", None):
                    raise ValueError("the endpoint returned an empty choice list")
                choice = resp.choices[0]
                if choice.message is None or not isinstance(choice.message.content, str):
                    raise ValueError("the choice has no message content")
                return Completion(clean_text(choice.message.content), choice.finish_reason)
            except (
                openai.AuthenticationError,
                openai.PermissionDeniedError,
                openai.NotFoundError,
                openai.BadRequestError,
            ) as e:
                raise TeacherFatal(f"{self.name}: {type(e).__name__}: {e}") from None
            except (
                openai.APIConnectionError,
                openai.APIStatusError,
                openai.APIResponseValidationError,
                ValueError,
            ) as e:
                # ValueError covers malformed JSON, non-UTF-8 bodies (UnicodeDecodeError) and empty choices.
                error, last = e, f"{type(e).__name__}: {str(e)[:200]}"
        return Completion(None, error=f"gave up after {self.max_retries + 1} attempts; last: {last}")

    def complete_batch(self, problems: list, prompts: list[str]) -> list[Completion]:
        return [self.complete(p) for p in prompts]


class LocalTeacher:
    """A local transformers model, decoded free-running (Seen) by the parallel decoding engine."""

    def __init__(
        self,
        model: str,
        batch_size: int = 8,
        max_new_tokens: int = 1024,
        temperature: float = 0.7,
        top_p: float = 0.95,
        seed: int = 0,
    ):
        from ..decoding import DecodingConfig, ParallelEngine
        from ..models import add_tag_tokens, load_model, load_tokenizer

        tok = load_tokenizer(model)
        lm = load_model(model)
        add_tag_tokens(lm, tok)
        self.tokenizer = tok
        self.engine = ParallelEngine(
            lm.eval(),
            tok,
            DecodingConfig(
                variant="seen", max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed
            ),
        )
        self.batch_size = batch_size
        self.name = f"local:{model}"

    def complete_batch(self, problems: list, prompts: list[str]) -> list[Completion]:
        from ..prompts import build_prompt

        texts = [build_prompt(p, self.tokenizer, "no_prompt") for p in prompts]
        samples = sorted(self.engine.generate(texts, n=1), key=lambda s: s.prompt_index)
        eos = self.tokenizer.eos_token or ""
        return [Completion(clean_text(s.text.removesuffix(eos)), s.finish_reason) for s in samples]


class SyntheticTeacher:
    """The programmatic teacher of the synthetic task; needs problems from ``data.synthetic``."""

    batch_size = 64
    name = "synthetic"

    def complete_batch(self, problems: list, prompts: list[str]) -> list[Completion]:
        from ..data.synthetic import teacher_trace

        return [Completion(teacher_trace(p), "stop") for p in problems]


# ----------------------------------------------------------------------------------- the run loop


def row_key(row: dict) -> tuple[str, int]:
    return str(row["problem_id"]), int(row["sample_index"])


def done_keys(path: str | os.PathLike) -> set[tuple[str, int]]:
    """Keys already in an output file (a torn last line is cut first, as the appender would)."""
    path = Path(path)
    if not path.exists():
        return set()
    repair_torn_tail(path)
    keys = set()
    for n, row in enumerate(read_jsonl(path), 1):
        try:
            keys.add(row_key(row))
        except (KeyError, TypeError, ValueError):
            raise ValueError(
                f"{path}:{n}: not a `coldstart generate` row (needs problem_id and sample_index)"
            ) from None
    return keys


def _pool(chunks: list, fn: Callable, workers: int) -> Iterator[tuple]:
    """Run ``fn`` on chunks in daemon threads; yield ``(chunk, result, exception)`` as they finish.

    Daemon threads, so Ctrl-C returns at once instead of waiting for requests in flight.
    """
    tasks: queue.Queue = queue.Queue()
    results: queue.Queue = queue.Queue()
    stop = threading.Event()
    for c in chunks:
        tasks.put(c)

    def work():
        while not stop.is_set():
            try:
                c = tasks.get_nowait()
            except queue.Empty:
                return
            try:
                results.put((c, fn(c), None))
            except BaseException as e:  # handed to the main thread, which decides
                results.put((c, None, e))

    for _ in range(max(1, min(workers, len(chunks)))):
        threading.Thread(target=work, daemon=True).start()
    try:
        for _ in range(len(chunks)):
            yield results.get()
    finally:
        stop.set()


@dataclass
class GenerateStats:
    written: int = 0
    skipped: int = 0  # already on disk
    failed: int = 0
    successes: int = 0  # valid parallel format and correct answer
    last_error: str | None = None  # of the last failed request


def score_row(text: str, gold: str) -> dict:
    """Format and correctness of one trace (what the progress bar's success rate counts)."""
    from ..grading_pool import is_correct

    p = parse(text)
    correct = bool(gold) and is_correct(text, gold)
    return dict(
        format_ok=p.format_ok,
        num_blocks=p.num_blocks,
        correct=correct,
        success=p.format_ok and p.num_blocks > 0 and correct,
    )


def generate(
    problems: list,
    teacher,
    out: str | os.PathLike,
    n: int = 1,
    prompt_template: str = DEFAULT_TEACHER_PROMPT,
    concurrency: int = 8,
    progress: bool = True,
) -> GenerateStats:
    """Ask ``teacher`` for ``n`` traces per problem; append each to ``out`` as it arrives.

    Args:
        problems: :class:`parallel_r1.data.registry.Problem` objects (``id``, ``problem``, ``answer``, ``source``).
        teacher: an object with ``complete_batch(problems, prompts) -> list[Completion]``, ``batch_size``, ``name``.
        out: the jsonl file; rows already there (by (problem_id, sample_index)) are skipped.
        concurrency: batches in flight at once (requests, for the ``openai`` teacher).
    """
    from tqdm.auto import tqdm

    out = Path(out)
    done = done_keys(out)
    seen_ids = set()
    for p in problems:
        if str(p.id) in seen_ids:
            raise ValueError(f"problem id {p.id!r} appears twice in the problem set; ids key the output rows")
        seen_ids.add(str(p.id))
    jobs = [(p, k) for k in range(n) for p in problems if (str(p.id), k) not in done]
    stats = GenerateStats(skipped=len(problems) * n - len(jobs))
    bs = max(1, int(getattr(teacher, "batch_size", 1)))
    chunks = [jobs[i : i + bs] for i in range(0, len(jobs), bs)]
    errors_path = out.with_name(out.name + ".errors")
    workers = concurrency if bs == 1 else 1

    def call(chunk):
        return teacher.complete_batch(
            [p for p, _ in chunk], [prompt_template.format(Problem=p.problem) for p, _ in chunk]
        )

    bar = tqdm(total=len(jobs), disable=not progress, desc=f"coldstart {teacher.name}", unit="trace")
    with JsonlAppender(out) as f:
        for chunk, results, exc in _pool(chunks, call, workers):
            if isinstance(exc, TeacherFatal):
                raise ValueError(str(exc))
            if exc is not None:
                results = [Completion(None, error=f"{type(exc).__name__}: {exc}")] * len(chunk)
            if len(results) != len(chunk):
                raise ValueError(f"teacher {teacher.name} returned {len(results)} completions for {len(chunk)} prompts")
            for (p, k), c in zip(chunk, results):
                bar.update(1)
                if c.text is None or not c.text.strip():
                    stats.failed += 1
                    stats.last_error = c.error or "empty response"
                    with JsonlAppender(errors_path, fsync=False) as ef:
                        ef.write(
                            dict(
                                problem_id=str(p.id),
                                sample_index=k,
                                error=c.error or "empty response",
                                time=time.time(),
                            )
                        )
                    continue
                score = score_row(c.text, p.answer)
                f.write(
                    dict(
                        problem_id=str(p.id),
                        sample_index=k,
                        source=p.source,
                        problem=p.problem,
                        answer=p.answer,
                        response=c.text,
                        teacher=teacher.name,
                        finish_reason=c.finish_reason,
                        **score,
                    )
                )
                stats.written += 1
                stats.successes += score["success"]
                bar.set_postfix(success=f"{stats.successes / stats.written:.1%}", failed=stats.failed)
    bar.close()
    return stats


def read_prompt_file(path: str | os.PathLike) -> str:
    """A teacher prompt from a file; it must contain ``{Problem}`` and format cleanly."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        text.format(Problem="x")
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(
            f"{path}: bad prompt template ({e}); use one {{Problem}} placeholder and double other braces"
        ) from None
    if "{Problem}" not in text:
        raise ValueError(f"{path}: the prompt has no {{Problem}} placeholder")
    return text


def summary_line(stats: GenerateStats, out: Path) -> str:
    rate = stats.successes / stats.written if stats.written else 0.0
    s = f"wrote {stats.written} rows to {out} ({stats.skipped} already there); success rate {rate:.1%}"
    if stats.failed:
        s += f"; {stats.failed} requests failed after retries (see {out.name}.errors), re-run to retry them"
    return s
