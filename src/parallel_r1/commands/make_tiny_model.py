"""``parallel-r1 make-tiny-model OUTPUT_DIR [--arch llama|qwen2]``: a randomly initialised tiny model
with the six tags, for the plumbing recipes (``recipes/*_tiny*.yaml``) that check a whole stage in
seconds on a CPU. Library entry point: :func:`parallel_r1.models.save_tiny_model`."""

from __future__ import annotations

from dataclasses import dataclass, field

HELP = "a tiny random model with the tags, for the plumbing recipes (runs/tiny)"
ON_INTERRUPT = "interrupted; the checkpoint is moved in place only once complete, so nothing changed: run it again"


@dataclass
class TinyModelConfig:
    output_dir: str = field(
        metadata={
            "help": "Folder for the checkpoint (also the first positional argument): new, empty, or an earlier make-tiny-model output."
        }
    )
    arch: str = field(default="llama", metadata={"help": "llama | qwen2."})
    force: bool = field(default=False, metadata={"help": "Replace OUTPUT_DIR even when it holds something else."})

    def __post_init__(self):
        from ..validate import one_of

        one_of(self, "arch", ("llama", "qwen2"))


CONFIG = (TinyModelConfig,)


def parse(argv: list[str]) -> tuple:
    from ._config import parse_config

    if argv and not argv[0].startswith("-"):  # `make-tiny-model runs/tiny` = `--output_dir runs/tiny`
        argv = ["--output_dir", *argv]
    return parse_config("parallel-r1 make-tiny-model", HELP, CONFIG, argv)


def run(cfg: TinyModelConfig) -> int:
    from ..models import save_tiny_model

    out = save_tiny_model(cfg.output_dir, cfg.arch, force=cfg.force)
    print(f"saved {out} (tiny random {cfg.arch} with the six tag tokens)")
    return 0
