"""The parallel decoding engine: Unseen orchestrated paths (exact) and Seen causal sampling.

``DecodingConfig`` is torch-free; the engine (torch) loads on first use of ``ParallelEngine`` /
``Sample``, so that a command's ``--help`` built from the config stays fast.
``vllm_backend.VLLMEngine`` (the paper's separate-request loop on vLLM, not exact) is imported
from its module on demand, so that this package never imports vLLM.
"""

from .config import DecodingConfig

__all__ = ["DecodingConfig", "ParallelEngine", "Sample"]


def __getattr__(name: str):
    if name in ("ParallelEngine", "Sample"):
        from . import engine

        return getattr(engine, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
