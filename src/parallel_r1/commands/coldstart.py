"""``parallel-r1 coldstart generate | filter``: teacher traces and the SFT file (docs/coldstart.md).

    parallel-r1 coldstart generate --teacher openai --base_url http://localhost:8000/v1 \\
        --model deepseek-ai/DeepSeek-R1-0528-Qwen3-8B --output runs/coldstart/raw.jsonl --n 1
    parallel-r1 coldstart filter --input runs/coldstart/raw.jsonl --output runs/coldstart/sft.jsonl
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

HELP = "teacher traces for the cold start: `coldstart generate` and `coldstart filter`"


@dataclass
class TracesConfig:
    """``coldstart generate``: prompt a teacher over a problem set; append traces to a jsonl (resumable)."""

    output: str = field(metadata={"help": "Output jsonl; an existing file is resumed, never duplicated."})
    teacher: str = field(default="openai", metadata={"help": "openai | local | synthetic."})
    problems: str | None = field(
        default=None,
        metadata={"help": "Problem set name or file (default: gsm8k; synthetic_easy for the synthetic teacher)."},
    )
    split: str = field(default="train", metadata={"help": "Split of the problem set."})
    limit: int | None = field(default=None, metadata={"help": "First N problems only."})
    n: int = field(default=1, metadata={"help": "Samples per problem."})
    prompt_file: str | None = field(
        default=None, metadata={"help": "Teacher prompt with one {Problem} placeholder (default: the built-in one)."}
    )
    base_url: str | None = field(
        default=None,
        metadata={
            "help": "OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 for a local vLLM server (required by the openai teacher)."
        },
    )
    model: str | None = field(
        default=None, metadata={"help": "Served model name (openai) or local model path/alias (local)."}
    )
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={"help": "Environment variable holding the API key."})
    concurrency: int = field(default=8, metadata={"help": "Requests in flight at once."})
    max_retries: int = field(default=6, metadata={"help": "Retries of a failed request."})
    timeout: float = field(default=300.0, metadata={"help": "Seconds per request."})
    backoff: float = field(default=1.0, metadata={"help": "First retry delay in seconds (doubles each retry)."})
    temperature: float = field(default=0.6, metadata={"help": "Sampling temperature."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling threshold."})
    max_new_tokens: int = field(default=4096, metadata={"help": "Completion budget per trace in tokens."})
    batch_size: int = field(default=8, metadata={"help": "Prompts per engine call (local teacher)."})
    seed: int = field(default=0, metadata={"help": "Seed of the local teacher's sampler."})
    data_dir: str | None = field(default=None, metadata={"help": "Folder of the shipped data sets."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar (--no_progress hides it)."})

    def __post_init__(self):
        if self.teacher not in ("openai", "local", "synthetic"):
            raise ValueError(f"unknown teacher {self.teacher!r}; known: openai, local, synthetic")
        if self.teacher != "synthetic" and not self.model:
            what = "the served model name" if self.teacher == "openai" else "a model path or alias"
            raise ValueError(f"--model is required for the {self.teacher} teacher ({what})")
        if self.teacher == "openai" and not self.base_url:
            raise ValueError(
                "--base_url is required for the openai teacher (e.g. http://127.0.0.1:8000/v1 for a local vLLM server)"
            )
        from ..validate import fraction, non_negative, positive

        positive(self, "n", "limit", "concurrency", "timeout", "max_new_tokens", "batch_size")
        non_negative(self, "max_retries", "backoff", "temperature")
        fraction(self, "top_p")


@dataclass
class FilterConfig:
    """``coldstart filter``: keep valid, correct, short-enough traces; write the SFT jsonl and a report."""

    input: str = field(metadata={"help": "generate jsonl, SFT jsonl, or a verl parquet such as the pilot."})
    output: str = field(metadata={"help": "SFT jsonl (id, source, problem, prompt, response, answer)."})
    report: str | None = field(default=None, metadata={"help": "Report json (default: OUTPUT.report.json)."})
    tokenizer: str = field(
        default="smollm2", metadata={"help": "Tokenizer for the length budget (path, hub id or alias)."}
    )
    max_length: int = field(
        default=4096, metadata={"help": "Token budget of chat-templated prompt + trace + EOS (the SFT's max_length)."}
    )
    template: str = field(default="parallel_v3", metadata={"help": "Prompt template the SFT will use."})
    require_parallel: bool = field(default=False, metadata={"help": "Also drop traces without any parallel block."})
    grader: str = field(default="math_verify", metadata={"help": "math_verify | minerva_exact."})
    gsm8k_join: bool = field(
        default=True, metadata={"help": "Grade against GSM8K gold joined by question (--no_gsm8k_join skips it)."}
    )
    data_dir: str | None = field(default=None, metadata={"help": "Folder of the shipped data sets."})

    def __post_init__(self):
        from ..validate import positive

        positive(self, "max_length")


ACTIONS = {"generate": TracesConfig, "filter": FilterConfig}
USAGE = "usage: parallel-r1 coldstart {generate,filter} [--config YAML] [options]"


def parse(argv: list[str]) -> tuple:
    from ._config import parse_config

    if not argv or argv[0] not in ACTIONS:
        lines = [USAGE, "", HELP, ""] + [f"  {name:9} {cls.__doc__.split(': ', 1)[1]}" for name, cls in ACTIONS.items()]
        lines.append("\n`parallel-r1 coldstart ACTION --help` for its options; each reads --config YAML.")
        if argv and argv[0] in ("-h", "--help"):
            print("\n".join(lines))
            raise SystemExit(0)
        print("\n".join(lines), file=sys.stderr)
        raise SystemExit(2)
    cls = ACTIONS[argv[0]]
    return parse_config(f"parallel-r1 coldstart {argv[0]}", cls.__doc__, (cls,), argv[1:])


def _teacher(cfg: TracesConfig):
    from ..coldstart.teacher import LocalTeacher, OpenAITeacher, SyntheticTeacher

    if cfg.teacher == "openai":
        return OpenAITeacher(
            cfg.base_url,
            cfg.model,
            cfg.api_key_env,
            timeout=cfg.timeout,
            max_retries=cfg.max_retries,
            backoff=cfg.backoff,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            max_tokens=cfg.max_new_tokens,
        )
    if cfg.teacher == "local":
        return LocalTeacher(cfg.model, cfg.batch_size, cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.seed)
    return SyntheticTeacher()


def run(cfg: TracesConfig | FilterConfig) -> int:
    import json
    from pathlib import Path

    if isinstance(cfg, TracesConfig):
        from ..coldstart.teacher import DEFAULT_TEACHER_PROMPT, generate, read_prompt_file, summary_line
        from ..data.registry import load_problems

        prompt = read_prompt_file(cfg.prompt_file) if cfg.prompt_file else DEFAULT_TEACHER_PROMPT
        name = cfg.problems or ("synthetic_easy" if cfg.teacher == "synthetic" else "gsm8k")
        problems = load_problems(name, split=cfg.split, data_dir=cfg.data_dir, limit=cfg.limit)
        stats = generate(
            problems,
            _teacher(cfg),
            cfg.output,
            n=cfg.n,
            prompt_template=prompt,
            concurrency=cfg.concurrency,
            progress=cfg.progress,
        )
        print(summary_line(stats, Path(cfg.output)))
        if stats.failed and not stats.written:  # nothing came back: a dead endpoint, a wrong model, ...
            print(
                f"parallel-r1 coldstart generate: error: every request failed; last: {stats.last_error}",
                file=sys.stderr,
            )
            return 1
        return 0
    from ..coldstart.filter import run_filter

    report = run_filter(
        cfg.input,
        cfg.output,
        tokenizer_name=cfg.tokenizer,
        max_tokens=cfg.max_length,
        template=cfg.template,
        require_parallel=cfg.require_parallel,
        grader=cfg.grader,
        report_path=cfg.report,
        join_gsm8k=cfg.gsm8k_join,
        data_dir=cfg.data_dir,
    )
    print(json.dumps({k: v for k, v in report.items() if k != "drop_examples"}, indent=2))
    print(f"kept {report['kept']}/{report['total']} traces -> {cfg.output}")
    return 0
