"""``parallel-r1 coldstart generate | filter``: teacher traces and the SFT file (spec §2).

    parallel-r1 coldstart generate --teacher openai --base-url http://localhost:8000/v1 \\
        --model deepseek-ai/DeepSeek-R1-0528-Qwen3-8B --out runs/coldstart/raw.jsonl --n 1
    parallel-r1 coldstart filter --input runs/coldstart/raw.jsonl --out runs/coldstart/sft.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="{generate,filter}")

    g = sub.add_parser("generate", help="prompt a teacher over a problem set; append traces to a jsonl (resumable)")
    g.add_argument("--teacher", choices=("openai", "local", "synthetic"), default="openai")
    g.add_argument("--out", required=True, help="output jsonl; an existing file is resumed, never duplicated")
    g.add_argument("--problems", default=None, help="problem set name or file (default: gsm8k; synthetic_easy for --teacher synthetic)")
    g.add_argument("--split", default="train")
    g.add_argument("--limit", type=int, default=None, help="first N problems only")
    g.add_argument("--n", type=int, default=1, help="samples per problem")
    g.add_argument("--prompt-file", default=None, help="teacher prompt with one {Problem} placeholder (default: the built-in one)")
    g.add_argument("--base-url", default="http://127.0.0.1:8000/v1", help="OpenAI-compatible endpoint (openai teacher)")
    g.add_argument("--model", default=None, help="served model name (openai) or local model path/alias (local)")
    g.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    g.add_argument("--concurrency", type=int, default=8, help="requests in flight at once")
    g.add_argument("--max-retries", type=int, default=6)
    g.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    g.add_argument("--backoff", type=float, default=1.0, help="first retry delay in seconds (doubles each retry)")
    g.add_argument("--temperature", type=float, default=0.6)
    g.add_argument("--top-p", type=float, default=0.95)
    g.add_argument("--max-tokens", type=int, default=4096)
    g.add_argument("--batch-size", type=int, default=8, help="prompts per engine call (local teacher)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--data-dir", default=None, help="folder of the shipped data sets")
    g.add_argument("--no-progress", action="store_true")

    f = sub.add_parser("filter", help="keep valid, correct, short-enough traces; write the SFT jsonl and a report")
    f.add_argument("--input", required=True, help="generate jsonl, SFT jsonl, or a verl parquet such as the pilot")
    f.add_argument("--out", required=True, help="SFT jsonl (id, source, problem, prompt, response, answer)")
    f.add_argument("--report", default=None, help="report json (default: OUT.report.json)")
    f.add_argument("--tokenizer", default="smollm2", help="tokenizer for the length budget (path, hub id or alias)")
    f.add_argument("--max-tokens", type=int, default=4096, help="budget for chat-templated prompt + trace + EOS")
    f.add_argument("--template", default="parallel_v3", help="prompt template the SFT will use")
    f.add_argument("--require-parallel", action="store_true", help="also drop traces without any parallel block")
    f.add_argument("--grader", default="math_verify", help="math_verify | minerva_exact")
    f.add_argument("--no-gsm8k-join", action="store_true", help="skip grading against GSM8K gold joined by question")
    f.add_argument("--data-dir", default=None)


def _problems(args):
    from ..data.registry import load_problems

    name = args.problems or ("synthetic_easy" if args.teacher == "synthetic" else "gsm8k")
    return load_problems(name, split=args.split, data_dir=args.data_dir, limit=args.limit)


def _teacher(args):
    from .teacher import LocalTeacher, OpenAITeacher, SyntheticTeacher

    if args.teacher == "openai":
        if not args.model:
            raise ValueError("--model is required for the openai teacher (the served model name)")
        return OpenAITeacher(
            args.base_url, args.model, args.api_key_env, timeout=args.timeout, max_retries=args.max_retries,
            backoff=args.backoff, temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens,
        )  # fmt: skip
    if args.teacher == "local":
        if not args.model:
            raise ValueError("--model is required for the local teacher (a model path or alias)")
        return LocalTeacher(args.model, args.batch_size, args.max_tokens, args.temperature, args.top_p, args.seed)
    return SyntheticTeacher()


def run(args) -> int:
    if args.action == "generate":
        from .teacher import DEFAULT_TEACHER_PROMPT, generate, read_prompt_file, summary_line

        prompt = read_prompt_file(args.prompt_file) if args.prompt_file else DEFAULT_TEACHER_PROMPT
        stats = generate(
            _problems(args), _teacher(args), args.out, n=args.n, prompt_template=prompt,
            concurrency=args.concurrency, progress=not args.no_progress,
        )  # fmt: skip
        print(summary_line(stats, Path(args.out)))
        return 0
    from .filter import run_filter

    report = run_filter(
        args.input, args.out, tokenizer_name=args.tokenizer, max_tokens=args.max_tokens, template=args.template,
        require_parallel=args.require_parallel, grader=args.grader, report_path=args.report,
        join_gsm8k=not args.no_gsm8k_join, data_dir=args.data_dir,
    )  # fmt: skip
    print(json.dumps({k: v for k, v in report.items() if k != "drop_examples"}, indent=2))
    print(f"kept {report['kept']}/{report['total']} traces -> {args.out}")
    return 0
