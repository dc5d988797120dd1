"""Data mixtures for mid-training: named sources, weights in tokens, one tokenized document stream.

A stage's mixture is a list of sources (OctoThinker Tables 2-5: MegaMath-Web-Pro-Max 0.725, DCLM
0.10, ...). Each source is a hub dataset or a local jsonl / json / parquet / csv / text file whose
rows become documents through a ``text_field`` or a ``template`` (``str.format`` over the row, so
``"{question}\\n{answer}"`` joins GSM8K question and solution and ``"{prompt[0][content]}\\n{reward_model[ground_truth]}"``
reaches into DAPO's nested columns).

Everything after loading is ``datasets``: ``IterableDataset.map`` tokenizes, ``repeat(None)``
makes each source endless (a small QA set is seen for several epochs, as in the paper, and the
token budget decides when a stage stops), and ``interleave_datasets(probabilities=...)`` samples
sources. The one thing we add is the unit: the paper's weights are shares of *tokens*, while
``interleave_datasets`` samples *documents*; so each weight is divided by the source's mean
document length (measured on its first ``estimate_docs`` documents) before normalising. A
source of long solutions is then picked less often but contributes its share of tokens.
"""

from __future__ import annotations

import glob
import warnings
from dataclasses import dataclass, field
from pathlib import Path

LOCAL_BUILDERS = {
    ".jsonl": "json",
    ".json": "json",
    ".gz": "json",
    ".parquet": "parquet",
    ".csv": "csv",
    ".txt": "text",
    ".md": "text",
}


@dataclass
class SourceConfig:
    """One named source of a stage's mixture."""

    name: str = field(metadata={"help": "Short name used in reports and errors (e.g. `megamath_web_pro_max`)."})
    path: str = field(metadata={"help": "Hub dataset id, or a local file / glob (jsonl, json, parquet, csv, txt)."})
    weight: float = field(
        metadata={
            "help": "Share of the stage's *tokens* drawn from this source. Weights are normalised to sum to 1 (with a warning when they do not)."
        }
    )
    text_field: str | None = field(
        default="text", metadata={"help": "Column holding the document text; ignored when `template` is set."}
    )
    template: str | None = field(
        default=None,
        metadata={
            "help": "`str.format` template over a row, e.g. `{question}\\n{answer}`; nested fields as `{prompt[0][content]}`."
        },
    )
    subset: str | None = field(
        default=None, metadata={"help": "Hub dataset configuration name (`load_dataset(path, name=subset)`)."}
    )
    data_dir: str | None = field(
        default=None,
        metadata={
            "help": "Sub-folder of a hub dataset (`load_dataset(path, data_dir=...)`), e.g. one MegaMath subset."
        },
    )
    split: str = field(default="train", metadata={"help": "Split to read."})
    streaming: bool | None = field(
        default=None,
        metadata={
            "help": "Stream instead of loading into an Arrow cache. Default: streaming for hub ids, in-memory for local files."
        },
    )
    shuffle: bool = field(
        default=True,
        metadata={
            "help": "Shuffle the documents of an in-memory source once (seeded). Streamed sources are read in order, which keeps the stream position exactly restorable."
        },
    )

    def __post_init__(self):
        if not self.name:
            raise ValueError(f"a mixture source has no name (path {self.path!r})")
        if not isinstance(self.weight, (int, float)) or self.weight <= 0:
            raise ValueError(f"source {self.name!r}: weight must be a positive number, got {self.weight!r}")
        if not self.template and not self.text_field:
            raise ValueError(f"source {self.name!r}: set `text_field` or `template`")

    @property
    def is_local(self) -> bool:
        return bool(glob.glob(str(Path(self.path).expanduser()))) or self.path.startswith((".", "/", "~"))


def normalize_weights(sources: list[SourceConfig], stage: str = "stage") -> list[float]:
    """Token weights summing to 1. Weights that do not sum to 1 are rescaled with a warning
    (so a recipe can write 9:1 as ``9`` and ``1``); duplicate names are an error."""
    names = [s.name for s in sources]
    if not sources:
        raise ValueError(f"{stage}: the mixture has no sources")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{stage}: duplicate source names {dup}")
    total = float(sum(s.weight for s in sources))
    if abs(total - 1.0) > 1e-6:
        warnings.warn(f"{stage}: mixture weights sum to {total:g}, not 1; normalising them", stacklevel=2)
    return [s.weight / total for s in sources]


def render(src: SourceConfig, row: dict) -> str:
    """The document text of one row (template or text field); a missing field names the source."""
    try:
        text = src.template.format_map(row) if src.template else row[src.text_field]
    except (KeyError, IndexError) as e:
        raise KeyError(
            f"source {src.name!r} ({src.path}): row has no field {e}; its fields are {sorted(row)}"
        ) from None
    if not isinstance(text, str):
        raise ValueError(
            f"source {src.name!r} ({src.path}): field {src.text_field!r} is {type(text).__name__}, not text"
        )
    return text


def load_source(src: SourceConfig, seed: int = 0):
    """The raw rows of a source as a ``datasets.IterableDataset``."""
    from datasets import load_dataset

    if src.is_local:
        files = sorted(glob.glob(str(Path(src.path).expanduser())))
        if not files:
            raise FileNotFoundError(f"source {src.name!r}: no file matches {src.path}")
        suffix = Path(files[0]).suffix
        if suffix not in LOCAL_BUILDERS:
            raise ValueError(
                f"source {src.name!r}: cannot read {files[0]} (known suffixes: {', '.join(LOCAL_BUILDERS)})"
            )
        if all(_blank_file(f) for f in files):
            # datasets fails on empty files with a bare StopIteration / "At least one data file"
            raise ValueError(f"source {src.name!r} ({src.path}) is empty: {', '.join(files[:3])} hold no rows")
        kwargs = {"data_files": files, "split": "train"}
        try:
            if src.streaming:
                return load_dataset(LOCAL_BUILDERS[suffix], streaming=True, **kwargs)
            ds = load_dataset(LOCAL_BUILDERS[suffix], **kwargs)
        except (StopIteration, ValueError, TypeError) as e:  # datasets' parse errors name neither source nor file
            raise ValueError(
                f"source {src.name!r} ({src.path}): cannot read it as {LOCAL_BUILDERS[suffix]}: {type(e).__name__}: {e}"
            ) from None
    else:
        ds = load_dataset(
            src.path, name=src.subset, data_dir=src.data_dir, split=src.split, streaming=src.streaming is not False
        )
        if src.streaming is not False:
            return ds
    if src.shuffle:
        ds = ds.shuffle(seed=seed)
    return ds.to_iterable_dataset()


def _blank_file(path: str) -> bool:
    """No rows: zero bytes, or (for text formats) only whitespace. Large files are only sized."""
    size = Path(path).stat().st_size
    if size == 0:
        return True
    if size > 1 << 16 or Path(path).suffix in (".parquet", ".gz"):
        return False
    return not Path(path).read_bytes().strip()


def _tokenize_fn(src: SourceConfig, index: int, tokenizer, eos_id: int):
    def fn(batch: dict) -> dict:
        n = len(next(iter(batch.values())))
        texts = [render(src, {k: v[i] for k, v in batch.items()}) for i in range(n)]
        texts = [t for t in texts if t.strip()]  # an empty document would only add an EOS
        ids = tokenizer(texts, add_special_tokens=True)["input_ids"] if texts else []
        return {"input_ids": [x + [eos_id] for x in ids], "source": [index] * len(ids)}

    return fn


def peek(src: SourceConfig, ds, tokenizer, n: int) -> list[int]:
    """Token lengths of the first ``n`` non-empty documents; errors name the source when it is
    empty or its rows lack the text field."""
    lengths, rows = [], 0
    for row in ds.take(n):
        rows += 1
        text = render(src, row)
        if text.strip():
            lengths.append(len(tokenizer(text, add_special_tokens=True)["input_ids"]) + 1)
    if rows == 0:
        raise ValueError(f"source {src.name!r} ({src.path}) is empty")
    if not lengths:
        raise ValueError(f"source {src.name!r} ({src.path}): the first {rows} rows all have empty text")
    return lengths


@dataclass
class Mixture:
    """A stage's tokenized, interleaved document stream and how it was sampled."""

    names: list[str]
    weights: list[float]  # target token shares, sum 1
    probabilities: list[float]  # document sampling probabilities given to interleave_datasets
    mean_doc_tokens: list[float]
    docs: object  # datasets.IterableDataset of {"input_ids": [...], "source": int}


def build_mixture(
    sources: list[SourceConfig], tokenizer, seed: int = 0, estimate_docs: int = 64, stage: str = "stage"
) -> Mixture:
    """Tokenize each source, repeat it endlessly and interleave by token weight."""
    from datasets import Features, List, Value, interleave_datasets

    weights = normalize_weights(sources, stage)
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no EOS token to separate packed documents")
    features = Features({"input_ids": List(Value("int32")), "source": Value("int32")})
    streams, means = [], []
    for i, src in enumerate(sources):
        raw = load_source(src, seed)
        lengths = peek(src, raw, tokenizer, estimate_docs)
        means.append(sum(lengths) / len(lengths))
        columns = list(next(iter(raw.take(1))).keys())
        tok = raw.map(
            _tokenize_fn(src, i, tokenizer, eos), batched=True, batch_size=64, remove_columns=columns, features=features
        )
        streams.append(tok.repeat(None))
    raw_p = [w / m for w, m in zip(weights, means)]
    probs = [p / sum(raw_p) for p in raw_p]
    if len(streams) == 1:
        docs = streams[0]
    else:
        docs = interleave_datasets(streams, probabilities=probs, seed=seed, stopping_strategy="all_exhausted")
    return Mixture([s.name for s in sources], weights, probs, means, docs)
