"""How the decoding engine samples: :class:`DecodingConfig`, shared by the engine, the vLLM and
paper-loop backends, ``eval``, ``rl`` and ``generate`` (whose command-line flags it gives).

Torch-free, so that ``parallel-r1 generate --help`` does not load torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..format import VARIANTS
from ..validate import fraction, non_negative, one_of, positive


@dataclass
class DecodingConfig:
    """How the engine samples."""

    variant: str = field(
        default="unseen", metadata={"help": "unseen: orchestrated paths (exact layout); seen: plain causal sampling."}
    )
    num_paths: int = field(default=2, metadata={"help": "k, paths forked per <Parallel> block (unseen)."})
    max_blocks: int = field(
        default=4, metadata={"help": "M, blocks per completion; the sample ends after the M-th </Summary> (paper: 4)."}
    )
    max_new_tokens: int = field(
        default=512, metadata={"help": "Budget of completion tokens (trunk + all paths + summaries)."}
    )
    max_path_tokens: int | None = field(
        default=None, metadata={"help": "Budget of one path, tags included (default: max_new_tokens)."}
    )
    temperature: float = field(
        default=1.0,
        metadata={"help": "Sampling temperature; 0 = greedy. Also the temperature of the returned log-probs."},
    )
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling threshold."})
    top_k: int | None = field(default=0, metadata={"help": "Top-k sampling (0 or None = off)."})
    path_temperature: float | None = field(
        default=1.0, metadata={"help": "Temperature inside paths (paper forces 1.0); None = temperature."}
    )
    constrain_tags: bool = field(
        default=True, metadata={"help": "Unseen: never sample a tag that would break the block structure."}
    )
    batch_size: int = field(
        default=64,
        metadata={
            "help": "Samples decoded together (one batch row each; a block's paths share their sample's row). RL: `rollout_batch_size`."
        },
    )
    max_cache_bytes: int | None = field(
        default=None,
        metadata={
            "help": "Memory budget of the key/value cache in bytes: a batch whose estimated cache exceeds it is decoded in smaller chunks (None = batch_size only)."
        },
    )
    dtype: str | None = field(
        default=None,
        metadata={
            "help": "Compute dtype of the forwards: None/auto = the model's parameters; bfloat16/float16 = autocast (use the trainer's precision: bf16 training -> bfloat16)."
        },
    )
    lockstep: bool | None = field(
        default=None,
        metadata={
            "help": "Every rank runs the same number of forwards (needed when parameters are sharded: FSDP, FSDP2, ZeRO-3). None = auto (sharded parameters and world size > 1)."
        },
    )
    seed: int | None = field(default=None, metadata={"help": "Seed of the sampler; None = nondeterministic."})

    def __post_init__(self):
        from ..devices import resolve_dtype

        self.top_k = self.top_k or 0
        one_of(self, "variant", VARIANTS)
        positive(self, "max_blocks", "max_new_tokens", "batch_size", "max_cache_bytes")
        non_negative(self, "temperature", "path_temperature", "top_k")
        fraction(self, "top_p")
        if self.num_paths < 2:
            raise ValueError(f"--num_paths must be >= 2 (a block has at least two paths), got {self.num_paths}")
        if self.max_path_tokens is not None and self.max_path_tokens < 2:
            raise ValueError(f"--max_path_tokens must be >= 2 (the two path tags), got {self.max_path_tokens}")
        if self.top_p == 0:
            raise ValueError("--top_p must be > 0, got 0")
        resolve_dtype(self.dtype)
