"""Devices, compute dtypes and sharding: the checks a run makes before any model loads.

* :func:`resolve_device` / :func:`resolve_dtype` turn recipe strings into torch objects, with
  one clear error for a device this machine does not have or a dtype name torch does not know.
* :func:`check_unseen_attention` refuses attention implementations that ignore the Unseen
  layout's 4-D mask (docs/decoding.md, "Devices and dtypes").
* :func:`params_sharded` / :func:`world_size` decide whether decoding must run in lockstep
  (every forward of a sharded model is a collective; docs/decoding.md, "Lockstep").
"""

from __future__ import annotations

import torch

# Attention implementations of transformers that apply a custom 4-D attention mask as given.
# flash_attention_2/3 (and their paged / hub-kernel variants) keep only causality and a 2-D
# padding mask; flex_attention adds a tensor mask to the scores, so a bool mask (the engine's)
# is read as +0/+1 instead of masking. Any of them would let paths see each other.
MASK_HONOURING_ATTENTION = ("sdpa", "eager")

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}  # fmt: skip


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """``None``/``"auto"``: the first CUDA device when there is one, else the CPU. Anything else
    must name a device this machine has (``cuda:3`` on a 2-GPU machine is refused here, before
    a model loads, instead of failing deep inside the first forward)."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"device {name!r}: not a torch device name ({e})") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0 or (dev.index is not None and dev.index >= n):
            raise ValueError(f"device {name!r}: this machine has {n} CUDA device(s); use 'cpu' or cuda:0..cuda:{n - 1}" if n
                             else f"device {name!r}: this machine has no CUDA device; use 'cpu'")  # fmt: skip
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r}: MPS is not available on this machine; use 'cpu'")
    elif dev.type not in ("cpu", "cuda", "mps"):
        acc = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
        if acc is None or acc.type != dev.type:
            raise ValueError(f"device {name!r}: this machine has no {dev.type} accelerator; use 'cpu'")
    return dev


def resolve_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    """``None``/``"auto"`` -> None (the model's own dtype); ``float32``/``bfloat16``/``float16``
    (or ``fp32``/``bf16``/``fp16``, or a ``torch.dtype``) -> that dtype."""
    if name is None or name == "auto" or isinstance(name, torch.dtype):
        return name if isinstance(name, torch.dtype) else None
    if name not in _DTYPES:
        raise ValueError(f"dtype {name!r}: use auto, {', '.join(_DTYPES)}")
    return _DTYPES[name]


def attention_implementation(model_or_impl) -> str | None:
    if isinstance(model_or_impl, str) or model_or_impl is None:
        return model_or_impl
    config = getattr(model_or_impl, "config", None)
    return getattr(config, "_attn_implementation", None)


def check_unseen_attention(model_or_impl) -> None:
    """Refuse an attention implementation that would ignore the Unseen 4-D mask (paths would see
    each other, and the log-probs would not be those of the training layout)."""
    impl = attention_implementation(model_or_impl)
    if impl is None or impl in MASK_HONOURING_ATTENTION:
        return
    raise ValueError(
        f"attention implementation {impl!r} ignores the Unseen layout's 4-D attention mask (paths would attend "
        f"to each other); load the model with attn_implementation 'sdpa' or 'eager' (recipe field "
        f"`attn_implementation: sdpa`, or parallel_r1.models.load_model(..., attn_implementation='sdpa'))"
    )


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def params_sharded(model: torch.nn.Module) -> bool:
    """True when a forward of ``model`` gathers parameters from other ranks (a collective):
    FSDP2 (``fully_shard``: an ``FSDPModule`` / DTensor parameters), FSDP1
    (``FullyShardedDataParallel``) or DeepSpeed ZeRO-3 (parameters carry ``ds_id``). Plain DDP
    keeps full parameters on every rank: False."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel
    from torch.distributed.tensor import DTensor

    if any(isinstance(m, (FSDPModule, FullyShardedDataParallel)) for m in model.modules()):
        return True
    return any(isinstance(p, DTensor) or hasattr(p, "ds_id") for p in model.parameters())


if __name__ == "__main__":  # `python -m parallel_r1.devices` under a launcher: which process am I?
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    print(f"rank {state.process_index} of {state.num_processes} ({state.distributed_type}, {state.backend}, {state.device})", flush=True)
