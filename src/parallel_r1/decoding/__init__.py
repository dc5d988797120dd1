"""The parallel decoding engine: Unseen orchestrated paths (exact) and Seen causal sampling.

``vllm_backend.VLLMEngine`` (the paper's separate-request loop on vLLM, not exact) is imported
from its module on demand, so that this package never imports vLLM.
"""

from .engine import DecodingConfig, ParallelEngine, Sample

__all__ = ["DecodingConfig", "ParallelEngine", "Sample"]
