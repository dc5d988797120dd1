"""Devices, compute dtypes and sharding: the checks a run makes before any model loads.

* :func:`resolve_device` / :func:`resolve_dtype` turn recipe strings into torch objects, with
  one clear error for a device this machine does not have or a dtype name torch does not know.
* :func:`check_unseen_attention` refuses attention implementations that ignore the Unseen
  layout's 4-D mask (docs/decoding.md, "Devices and dtypes"); :func:`check_attention_available`
  refuses flash-attention without the ``flash-attn`` extra.
* :func:`params_sharded` / :func:`world_size` decide whether decoding must run in lockstep
  (every forward of a sharded model is a collective; docs/decoding.md, "Lockstep").
"""

from __future__ import annotations

import torch

# Attention implementations of transformers that apply the Unseen layout's bool 4-D mask as a
# mask. flash_attention_2/3 (and their paged / hub-kernel variants) keep only causality and a 2-D
# padding mask; eager (transformers 5.23 ``eager_attention_forward``) and flex_attention *add* a
# tensor mask to the scores, so a bool mask is read as +1 / +0 instead of masking: tokens would
# see the future and their sibling paths. Only sdpa takes a bool mask as a mask.
MASK_HONOURING_ATTENTION = ("sdpa", "sdpa_gqa_fold")  # the second: parallel_r1.attention

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
        f"to each other); load the model with attn_implementation 'sdpa' (recipe field "
        f"`attn_implementation: sdpa`, or parallel_r1.models.load_model(..., attn_implementation='sdpa'))"
    )


def check_attention_available(impl: str | None) -> None:
    """Refuse a flash-attention implementation this machine cannot load, naming the extra that
    brings it, when the config is made (transformers would raise an ImportError only once the
    model loads, minutes into a run)."""
    if impl not in ("flash_attention_2", "flash_attention_3"):
        return
    from transformers.utils import is_flash_attn_2_available, is_flash_attn_3_available

    if (is_flash_attn_2_available if impl == "flash_attention_2" else is_flash_attn_3_available)():
        return
    raise ImportError(
        f"attn_implementation {impl!r} needs the flash-attn package and a CUDA GPU: install the extra "
        f"(pip install 'parallel-r1[flash-attn]') or set `attn_implementation: sdpa`"
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


def allow_fsdp_on_cpu() -> None:
    """Let ``accelerate launch`` with an FSDP config shard on CPU processes (gloo).

    accelerate 1.15 turns its FSDP plugin on only for accelerator process groups; on a CPU-only
    machine (``use_cpu: true`` in the recipe) it silently falls back to DDP, so a config such as
    ``recipes/accelerate/fsdp_cpu_2proc.yaml`` would not test sharding at all. FSDP2 itself runs
    on CPU tensors over gloo, so when the launch asks for FSDP and this machine has no
    accelerator, the state is switched to FSDP after accelerate built it. No-op otherwise.
    """
    import os

    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true" or torch.accelerator.is_available():
        return
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType

    init = AcceleratorState.__init__
    if getattr(init, "_cpu_fsdp", False):
        return

    def __init__(self, *args, fsdp_plugin=None, **kwargs):
        init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        # every AcceleratorState() re-reads the process state (MULTI_CPU): switch again each time
        plugin = fsdp_plugin or getattr(self, "fsdp_plugin", None)
        if plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type, self.fsdp_plugin = DistributedType.FSDP, plugin

    __init__._cpu_fsdp = True
    AcceleratorState.__init__ = __init__


# ------------------------------------------------------------------------------------------ capacity

# The architectures of the recipe models (their hub config.json fields that size the cache and the
# weights), so the capacity note needs no download.
RECIPE_MODELS = {
    "Qwen3-4B": dict(model_type="qwen3", hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                     num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=151936,
                     tie_word_embeddings=True),
    "Llama-3.2-3B": dict(model_type="llama", hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                         num_attention_heads=24, num_key_value_heads=8, head_dim=128, vocab_size=128256,
                         tie_word_embeddings=True),
    "SmolLM2-135M": dict(model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, head_dim=64, vocab_size=49152,
                         tie_word_embeddings=True),
}  # fmt: skip
# Bytes per parameter of a training checkpoint: fp32 master weights (4) + AdamW's two moments (8).
CHECKPOINT_BYTES_PER_PARAM = 12
GiB = 2**30


def recipe_config(name: str):
    """The transformers config of a recipe model (:data:`RECIPE_MODELS`)."""
    from transformers import AutoConfig

    fields = dict(RECIPE_MODELS[name])
    return AutoConfig.for_model(fields.pop("model_type"), **fields)


def kv_bytes_per_token(config, dtype: torch.dtype = torch.bfloat16) -> int:
    """Key/value cache bytes one token takes over all layers: 2 (K and V) × layers × kv heads ×
    head dim × bytes of ``dtype`` (the decoding compute dtype)."""
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * heads * head_dim * dtype.itemsize


def cache_rows(config, budget_bytes: int, tokens_per_row: int, dtype: torch.dtype = torch.bfloat16) -> int:
    """Rollout rows whose cache fits ``budget_bytes`` when each row holds ``tokens_per_row`` tokens
    (prompt + completion budget), counted as the engine's chunking counts them: twice, since a
    compaction holds the old and the new cache at once (``DecodingConfig.max_cache_bytes``)."""
    return budget_bytes // (2 * tokens_per_row * kv_bytes_per_token(config, dtype))


def num_parameters(config) -> int:
    """Parameters of the model ``config`` describes (tied embeddings once), built on the meta device."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def checkpoint_bytes(config) -> int:
    """Disk of one training checkpoint: fp32 weights + AdamW moments (``CHECKPOINT_BYTES_PER_PARAM``)."""
    return CHECKPOINT_BYTES_PER_PARAM * num_parameters(config)


def capacity_table(budget_gib: int = 20, tokens_per_row: tuple[int, ...] = (4096, 8192), keep: int = 2) -> str:
    """The capacity table of docs/rl.md ("Capacity"), computed from :data:`RECIPE_MODELS`."""
    cols = " | ".join(f"rows in {budget_gib} GiB at {t // 1024}k tokens" for t in tokens_per_row)
    lines = [
        f"| model | layers × kv heads × head dim | KV bytes/token (bf16) | {cols} | parameters | checkpoint (fp32 + AdamW) | {keep} kept |",
        "|---|---|---|" + "---|" * len(tokens_per_row) + "---|---|---|",
    ]
    for name in RECIPE_MODELS:
        c = recipe_config(name)
        rows = " | ".join(str(cache_rows(c, budget_gib * GiB, t)) for t in tokens_per_row)
        ckpt = checkpoint_bytes(c)
        lines.append(
            f"| {name} | {c.num_hidden_layers} × {c.num_key_value_heads} × {c.head_dim} | {kv_bytes_per_token(c):,} | "
            f"{rows} | {num_parameters(c) / 1e9:.2f} B | {ckpt / 1e9:.1f} GB | {keep * ckpt / 1e9:.0f} GB |"
        )
    return "\n".join(lines)


if __name__ == "__main__":  # `python -m parallel_r1.devices` under a launcher: which process am I?
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    print(
        f"rank {state.process_index} of {state.num_processes} ({state.distributed_type}, {state.backend}, {state.device})",
        flush=True,
    )
