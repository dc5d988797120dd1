"""Keep the teacher traces fit for SFT and say why the others went (docs/coldstart.md).

A trace is kept iff, checked in this order (the first failure names the drop reason):

1. ``no_response``: it has a non-empty response;
2. ``format``: after whitespace normalisation (:func:`parallel_r1.format.normalize`) it passes
   the format checker (:func:`parallel_r1.format.parse`); with ``require_parallel`` it must
   also hold at least one block;
3. ``no_answer``: it has a ``Final Answer:`` line (:func:`parallel_r1.grading.extract_final_answer`);
4. ``wrong_answer``: that answer matches the gold answer (:func:`parallel_r1.grading_pool.grade_answers`);
5. ``too_long``: prompt (the v3 prompt through the tokenizer's chat template) + trace + EOS fit
   ``max_tokens`` tokens of the given tokenizer (the paper: 4,096 Qwen3 tokens).

Inputs: a ``coldstart generate`` jsonl, an SFT-style jsonl (``problem``, ``response``,
``answer``), or a verl parquet in the pilot's layout (trace in ``extra_info.answer``, problem after
"Problem: " in ``extra_info.question``, gold in ``reward_model.ground_truth``). For the pilot the
gold is the *teacher's* own answer (docs/coldstart.md), so the report also grades every trace against the
real GSM8K answer, joined by question text, when the GSM8K train set is available.
"""

from __future__ import annotations

import os
import statistics
from collections import Counter, defaultdict
from pathlib import Path

from ..format import normalize, parse
from ..io import atomic_write_json, read_jsonl, write_jsonl
from ..prompts import build_prompt, format_problem

REASONS = ("no_response", "format", "no_answer", "wrong_answer", "too_long")
PARQUET_COLUMNS = ("extra_info", "reward_model")


def _problem_from_prompt(text: str) -> str:
    """The problem inside a templated prompt (after its last "Problem: "), or the text itself."""
    head, sep, tail = text.rpartition("Problem: ")
    return tail.strip() if sep else text.strip()


def _str_or_none(x) -> str | None:
    return x if isinstance(x, str) and x.strip() else None


def read_traces(path: str | os.PathLike) -> list[dict]:
    """Rows ``{id, source, problem, response, answer}`` from any supported input (module doc).

    A row with no usable response keeps ``response=None`` (the filter counts it); a file that
    cannot be read as traces at all raises a ``ValueError`` naming the file and what is missing.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    rows = []
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as e:  # pyarrow raises its own error types for corrupt files
            raise ValueError(f"{path}: cannot read parquet ({type(e).__name__}: {e})") from None
        missing = [c for c in PARQUET_COLUMNS if c not in table.column_names]
        if missing:
            raise ValueError(
                f"{path}: missing column(s) {', '.join(missing)}; expected the verl SFT layout "
                "(extra_info.answer = trace, extra_info.question = prompt, reward_model.ground_truth = answer)"
            )
        src_col = table.column("data_source").to_pylist() if "data_source" in table.column_names else None
        idx_col = table.column("index").to_pylist() if "index" in table.column_names else None
        for i, (extra, reward) in enumerate(
            zip(table.column("extra_info").to_pylist(), table.column("reward_model").to_pylist())
        ):
            extra, reward = extra or {}, reward or {}
            question = _str_or_none(extra.get("question"))
            rows.append(
                dict(
                    id=str(idx_col[i] if idx_col is not None else extra.get("index", i)),
                    source=(src_col[i] if src_col else None) or path.stem,
                    problem=_problem_from_prompt(question) if question else None,
                    response=_str_or_none(extra.get("answer")),
                    answer=str(reward.get("ground_truth") or "").strip(),
                    where=f"{path}: row {i}",
                )
            )
        return rows
    fields: set[str] = set()
    for n, r in enumerate(read_jsonl(path), 1):
        fields.update(r)
        if "problem_id" in r:  # coldstart generate
            rid = f"{r['problem_id']}#{r.get('sample_index', 0)}"
        else:
            rid = str(r.get("id", n))
        problem = _str_or_none(r.get("problem")) or (
            _problem_from_prompt(r["prompt"]) if _str_or_none(r.get("prompt")) else None
        )
        rows.append(
            dict(
                id=rid,
                source=r.get("source") or path.stem,
                problem=problem,
                response=_str_or_none(r.get("response")),
                answer=str(r.get("answer") or "").strip(),
                where=f"{path}:{n}",
            )
        )
    # A row without a response is counted (no_response); a file where no row has one has the wrong columns.
    missing = [k for k in ("response",) if k not in fields] + (
        [] if fields & {"problem", "prompt"} else ["problem (or prompt)"]
    )
    if rows and missing:
        raise ValueError(
            f"{path}: no row has the field(s) {', '.join(missing)}; expected `coldstart generate` or SFT rows "
            f"(problem, response, answer), found: {', '.join(sorted(fields))}"
        )
    return rows


def gsm8k_gold_by_question(data_dir=None) -> dict[str, str]:
    """GSM8K train questions (whitespace-collapsed) -> gold answer; empty when not available."""
    try:
        from ..data.registry import load_problems

        problems = load_problems("gsm8k", split="train", data_dir=data_dir)
    except (FileNotFoundError, KeyError, ImportError, ValueError):
        return {}
    return {" ".join(p.problem.split()): p.answer for p in problems}


def filter_traces(
    rows: list[dict],
    tokenizer,
    max_tokens: int = 4096,
    template: str = "parallel_v3",
    require_parallel: bool = False,
    grader: str = "math_verify",
    gsm8k_gold: dict[str, str] | None = None,
) -> tuple[list[dict], dict]:
    """Apply the rules of the module doc; return (kept SFT rows, report)."""
    from ..grading import extract_final_answer, gold_answer
    from ..grading_pool import grade_answers

    reason: dict[int, str] = {}
    preds: dict[int, str] = {}
    texts: dict[int, str] = {}
    for i, r in enumerate(rows):
        if not r.get("response") or not r.get("problem"):
            reason[i] = "no_response"
            continue
        text = normalize(r["response"])
        p = parse(text)
        if not p.format_ok or (require_parallel and p.num_blocks == 0):
            reason[i] = "format"
            continue
        pred = extract_final_answer(text)
        if pred is None:
            reason[i] = "no_answer"
            continue
        texts[i], preds[i] = text, pred
    graded = list(preds)
    verdicts = grade_answers(
        [preds[i] for i in graded], [gold_answer(rows[i]["answer"]) for i in graded], grader=grader
    )
    for i, ok in zip(graded, verdicts):
        if not ok:
            reason[i] = "wrong_answer"
    survivors = [i for i in graded if i not in reason]
    lengths: dict[int, int] = {}
    if survivors:
        prompts = [build_prompt(rows[i]["problem"], tokenizer, template) for i in survivors]
        eos = tokenizer.eos_token or ""
        enc = tokenizer([p + texts[i] + eos for p, i in zip(prompts, survivors)], add_special_tokens=False)["input_ids"]
        for i, ids in zip(survivors, enc):
            lengths[i] = len(ids)
            if len(ids) > max_tokens:
                reason[i] = "too_long"
    kept_idx = [i for i in range(len(rows)) if i not in reason]
    kept = [
        dict(
            id=rows[i]["id"],
            source=rows[i]["source"],
            problem=rows[i]["problem"],
            prompt=format_problem(rows[i]["problem"], template),
            response=texts[i],
            answer=rows[i]["answer"],
        )
        for i in kept_idx
    ]
    per_source: dict[str, Counter] = defaultdict(Counter)
    for i, r in enumerate(rows):
        per_source[r["source"]]["total"] += 1
        per_source[r["source"]]["kept"] += i not in reason
        if i in reason:
            per_source[r["source"]][reason[i]] += 1
    dropped = Counter(reason.values())
    kept_parsed = [parse(texts[i]) for i in kept_idx]
    report = dict(
        total=len(rows),
        kept=len(kept),
        kept_ratio=len(kept) / len(rows) if rows else 0.0,
        dropped={k: dropped.get(k, 0) for k in REASONS},
        per_source={s: dict(c) for s, c in per_source.items()},
        max_tokens=max_tokens,
        template=template,
        require_parallel=require_parallel,
        grader=grader,
        kept_token_length=dict(
            median=statistics.median(lengths[i] for i in kept_idx) if kept_idx else 0,
            max=max((lengths[i] for i in kept_idx), default=0),
        ),
        kept_blocks=dict(Counter(p.num_blocks for p in kept_parsed)),
        kept_without_block=sum(p.num_blocks == 0 for p in kept_parsed),
        drop_examples={
            k: [rows[i]["where"] for i in sorted(reason) if reason[i] == k][:5] for k in REASONS if dropped.get(k)
        },
    )
    if gsm8k_gold:
        report["gsm8k_gold"] = compare_with_gsm8k(rows, texts, kept_idx, gsm8k_gold, grader)
    elif gsm8k_gold is not None:
        report["gsm8k_gold"] = "not compared: the GSM8K train set could not be loaded"
    return kept, report


def compare_with_gsm8k(rows, texts, kept_idx, gold_by_q, grader) -> dict:
    """Grade traces against the GSM8K gold answer (joined by question text); also compare the rows' own gold."""
    from ..grading import extract_final_answer, gold_answer
    from ..grading_pool import grade_answers

    joined = [i for i, r in enumerate(rows) if r.get("problem") and " ".join(r["problem"].split()) in gold_by_q]
    gold = [gold_answer(gold_by_q[" ".join(rows[i]["problem"].split())]) for i in joined]
    preds = [extract_final_answer(texts[i]) if i in texts else None for i in joined]
    correct = {i for i, ok in zip(joined, grade_answers(preds, gold, grader=grader)) if ok}
    same_gold = grade_answers([rows[i]["answer"] or None for i in joined], gold, grader=grader)
    kept = set(kept_idx)
    return dict(
        joined=len(joined),
        row_gold_equals_gsm8k_gold=sum(same_gold),
        trace_correct=len(correct),
        kept_joined=len(kept & set(joined)),
        kept_and_correct=len(kept & correct),
    )


def run_filter(
    inp: str | os.PathLike,
    out: str | os.PathLike,
    tokenizer_name: str = "smollm2",
    max_tokens: int = 4096,
    template: str = "parallel_v3",
    require_parallel: bool = False,
    grader: str = "math_verify",
    report_path: str | os.PathLike | None = None,
    join_gsm8k: bool = True,
    data_dir=None,
) -> dict:
    """Read, filter, write the SFT jsonl and the report (both atomically); return the report."""
    from ..models import add_tag_tokens, load_tokenizer

    rows = read_traces(inp)
    tok = load_tokenizer(tokenizer_name)
    add_tag_tokens(None, tok)  # count each tag as the single token it will be in training
    kept, report = filter_traces(
        rows,
        tok,
        max_tokens=max_tokens,
        template=template,
        require_parallel=require_parallel,
        grader=grader,
        gsm8k_gold=gsm8k_gold_by_question(data_dir) if join_gsm8k else None,
    )
    report = dict(input=str(inp), output=str(out), tokenizer=tokenizer_name, **report)
    write_jsonl(out, kept)
    atomic_write_json(report_path or Path(str(out) + ".report.json"), report)
    return report
