"""The parallel decoding engine: Unseen orchestrated paths (exact) and Seen causal sampling."""

from .engine import DecodingConfig, ParallelEngine, Sample

__all__ = ["DecodingConfig", "ParallelEngine", "Sample"]
