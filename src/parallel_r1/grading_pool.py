"""Time-limited grading in worker processes: :func:`grade`, :func:`grade_many`, :class:`GradingPool`.

The answer maths (extraction, the graders by name in :data:`parallel_r1.grading.GRADERS`) lives
in :mod:`parallel_r1.grading`; this module only makes sure no input can hang a caller.

:func:`grade` and :func:`grade_many` run graders in worker processes (fresh interpreters: nothing
is forked from a multi-threaded trainer), and a worker that overruns its per-answer ``timeout``
is killed and replaced; the answer is graded ``False``. math-verify's own timeouts use
``signal.alarm`` (main thread only, and useless while sympy is stuck in C code such as
``10**10**10``), so they are switched off. The one exception is ``minerva_exact`` on short
inputs, which runs inline: its regexes are at worst quadratic, which on :data:`INLINE_LIMIT`
characters is a few milliseconds.
"""

from __future__ import annotations

import atexit
import logging
import os
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from multiprocessing.connection import Connection, wait
from pathlib import Path

from .grading import EXTRACTORS, GRADERS, gold_answer

DEFAULT_TIMEOUT = 5.0
INLINE_LIMIT = 4096  # characters of pred + gold under which minerva_exact runs in-process


def _check_grader(grader: str) -> None:
    if grader not in GRADERS:
        raise KeyError(f"unknown grader {grader!r}; known: {', '.join(GRADERS)}")


# ----------------------------------------------------------------------------- worker pool


def _worker_main(task_fd: int, result_fd: int) -> None:
    """Loop of a grading worker: read ``(fn, pred, gold)``, write a bool."""
    tasks, results = Connection(task_fd, writable=False), Connection(result_fd, readable=False)
    # math-verify logs the whole input on some failures; a 1 MB answer must not flood stderr.
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    import math_verify.grader
    import math_verify.parser

    # The parent enforces the time limit by killing us, so math-verify's warning is moot.
    math_verify.grader.TIMEOUT_WARNING_SHOWN = math_verify.parser.TIMEOUT_WARNING_SHOWN = True
    results.send("ready")
    while True:
        try:
            fn, pred, gold = tasks.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        try:
            ok = bool(fn(pred, gold))
        except Exception:  # a grader error is a wrong answer, never a crashed batch
            ok = False
        try:
            results.send(ok)
        except OSError:
            return


class _Worker:
    """One ``python -c`` grading process with a task pipe and a result pipe.

    A fresh interpreter rather than ``multiprocessing``: no fork of a multi-threaded trainer,
    and no re-import of the caller's ``__main__`` (scripts without a main guard still work).
    """

    def __init__(self):
        task_r, task_w = os.pipe()
        result_r, result_w = os.pipe()
        src = str(Path(__file__).resolve().parents[1])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")])))
        code = f"from parallel_r1.grading_pool import _worker_main; _worker_main({task_r}, {result_w})"
        self.process = subprocess.Popen(
            [sys.executable, "-c", code], pass_fds=(task_r, result_w), env=env, stdin=subprocess.DEVNULL
        )
        os.close(task_r)
        os.close(result_w)
        self.tasks = Connection(task_w, readable=False)
        self.results = Connection(result_r, writable=False)
        self.ready = False

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        for conn in (self.tasks, self.results):
            conn.close()
        if self.alive():
            self.process.kill()
        self.process.wait()


class GradingPool:
    """Worker processes that grade ``(pred, gold)`` pairs under a hard per-answer time limit.

    A worker that overruns is killed (SIGKILL) and replaced; one that dies (out of memory,
    segfault) is replaced too. Either way the answer is graded ``False``. Thread-safe. The
    time limit counts from the moment a ready worker receives the answer, so the start-up
    of a worker (about a second: it imports math-verify) is never charged to an answer.
    """

    def __init__(self, workers: int = 1):
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self.resize(workers)

    @property
    def size(self) -> int:
        return len(self._workers)

    def resize(self, workers: int) -> None:
        """Grow to at least ``workers`` processes (never shrinks)."""
        while len(self._workers) < workers:
            self._workers.append(_Worker())

    def close(self) -> None:
        for w in self._workers:
            w.kill()
        self._workers = []

    def _replace(self, w: _Worker) -> _Worker:
        w.kill()
        fresh = _Worker()
        self._workers[self._workers.index(w)] = fresh
        return fresh

    def map(self, grader: str, pairs: Sequence[tuple[str, str]], timeout: float = DEFAULT_TIMEOUT) -> list[bool]:
        """Grade every ``(pred, gold)`` pair; each one gets at most ``timeout`` seconds."""
        _check_grader(grader)
        fn = GRADERS[grader]
        results = [False] * len(pairs)
        with self._lock:
            pending = deque(range(len(pairs)))
            for w in list(self._workers):
                if not w.alive():
                    self._replace(w)
            idle = [w for w in self._workers if w.ready]
            starting = {w.results: w for w in self._workers if not w.ready}
            busy: dict = {}  # result conn -> (worker, index, deadline)
            while pending or busy:
                while pending and idle:
                    w, i = idle.pop(), pending.popleft()
                    try:
                        w.tasks.send((fn, *pairs[i]))
                    except OSError:  # died between tasks: answer i stays False
                        fresh = self._replace(w)
                        starting[fresh.results] = fresh
                        continue
                    busy[w.results] = (w, i, time.monotonic() + timeout)
                if not (pending or busy):
                    break
                now = time.monotonic()
                wait_for = min((d for _, _, d in busy.values()), default=now + 60.0) - now
                for conn in wait([*busy, *starting], timeout=max(0.0, wait_for)):
                    if conn in starting:
                        w = starting.pop(conn)
                        try:
                            w.ready = conn.recv() == "ready"
                        except (EOFError, OSError):
                            w.ready = False
                        if w.ready:
                            idle.append(w)
                        else:  # failed to start: no worker can run, so give up cleanly
                            raise RuntimeError(f"grading worker failed to start (exit code {w.process.wait()})")
                        continue
                    w, i, _ = busy.pop(conn)
                    try:
                        results[i] = bool(conn.recv())
                        idle.append(w)
                    except (EOFError, OSError):  # crashed on this answer
                        fresh = self._replace(w)
                        starting[fresh.results] = fresh
                now = time.monotonic()
                for conn, (w, _i, deadline) in list(busy.items()):
                    if now >= deadline:
                        del busy[conn]
                        fresh = self._replace(w)
                        starting[fresh.results] = fresh
        return results


_POOL: GradingPool | None = None
_POOL_LOCK = threading.Lock()


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def get_pool(workers: int = 1) -> GradingPool:
    """The process-wide pool, grown to ``workers`` processes (a forked child gets its own)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL._pid != os.getpid():
            _POOL = GradingPool(workers)
        else:
            _POOL.resize(workers)
        return _POOL


@atexit.register
def _close_pool() -> None:
    if _POOL is not None and _POOL._pid == os.getpid():
        _POOL.close()


# ----------------------------------------------------------------------------- public API


def _inline(grader: str, pred: str, gold: str) -> bool:
    return grader == "minerva_exact" and len(pred) + len(gold) <= INLINE_LIMIT


def grade(pred: str | None, gold: str, grader: str = "math_verify", timeout: float = DEFAULT_TIMEOUT) -> bool:
    """Is ``pred`` the same answer as ``gold``? Never takes much longer than ``timeout`` seconds."""
    _check_grader(grader)
    if pred is None or not str(gold).strip():
        return False
    pred, gold = str(pred), str(gold).strip()
    if _inline(grader, pred, gold):
        return GRADERS[grader](pred, gold)
    return get_pool(1).map(grader, [(pred, gold)], timeout)[0]


def is_correct(completion: str, gold: str, grader: str = "math_verify", extractor: str = "final_answer") -> bool:
    """Extract the answer of ``completion`` with ``extractor`` and grade it against ``gold``.

    ``gold`` may be a GSM8K worked solution (``#### N``).
    """
    if extractor not in EXTRACTORS:
        raise KeyError(f"unknown extractor {extractor!r}; known: {', '.join(EXTRACTORS)}")
    return grade(EXTRACTORS[extractor](completion), gold_answer(gold), grader)


def grade_answers(
    preds: Sequence[str | None],
    golds: Sequence[str],
    grader: str = "math_verify",
    workers: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> list[bool]:
    """:func:`grade` for many already-extracted answers, spread over worker processes."""
    _check_grader(grader)
    if len(preds) != len(golds):
        raise ValueError(f"grade_answers: {len(preds)} predictions for {len(golds)} gold answers")
    results = [False] * len(preds)
    remote: list[int] = []
    for i, (p, g) in enumerate(zip(preds, golds)):
        if p is None or not str(g).strip():
            continue
        if _inline(grader, str(p), str(g).strip()):
            results[i] = GRADERS[grader](str(p), str(g).strip())
        else:
            remote.append(i)
    if remote:
        n = min(len(remote), workers or default_workers())
        pairs = [(str(preds[i]), str(golds[i]).strip()) for i in remote]
        for i, ok in zip(remote, get_pool(n).map(grader, pairs, timeout)):
            results[i] = ok
    return results


def grade_many(
    completions: Sequence[str],
    golds: Sequence[str],
    grader: str = "math_verify",
    extractor: str = "final_answer",
    workers: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> list[bool]:
    """:func:`is_correct` for many completions, graded in parallel processes; never hangs.

    ``workers`` defaults to the number of usable CPUs; each answer gets at most ``timeout``
    seconds (an overrun is graded ``False``).
    """
    if extractor not in EXTRACTORS:
        raise KeyError(f"unknown extractor {extractor!r}; known: {', '.join(EXTRACTORS)}")
    if len(completions) != len(golds):
        raise ValueError(f"grade_many: {len(completions)} completions for {len(golds)} gold answers")
    extract = EXTRACTORS[extractor]
    preds = [extract(c) for c in completions]
    return grade_answers(preds, [gold_answer(g) for g in golds], grader, workers, timeout)


__all__ = [
    "DEFAULT_TIMEOUT", "GradingPool", "default_workers", "get_pool", "grade", "grade_answers", "grade_many",
    "is_correct",
]  # fmt: skip
