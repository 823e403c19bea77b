"""The Ray engine: every stage of `icp run` as Ray tasks and actors, writing the export folder.

The stages call the same pure functions as the local engine; only where the data lives changes.

- ingest: one task per input file runs `ingest.parse_source` (same rejects, same reasons);
  duplicate ids are found from 64-bit id hashes; documents are numbered in input order exactly
  like the local workspace numbers them, so `--vectors FILE.npy` rows line up the same way.
- embed: Ray Data over the documents, an actor pool that loads the model once per actor (one GPU
  per actor when the cluster has GPUs), written to `embeddings.parquet/block=J/` (doc, vector);
  Ray Data does not keep row order, so every row carries its doc id.
- knn: a faiss IVF index trained on a sample, filled block by block, searched by one task per
  block (every list probed when the index resolves to `flat`, so the search is exact); results
  are keyed by doc id.
- dedup: the pairs at or above the threshold come back to the driver; `dedup.find_duplicates`
  groups them.
- order: IVF lists are grouped into P partitions; each is ordered by `traverse.traverse` in its
  own task and cut into fragments; the driver stitches fragment ends across partitions from the
  ends' kNN lists (see `partition.py`).
- pack: `pack.pack_contexts` per partition, on the chains of fragments it was given; context ids
  are one global permutation; writer tasks write `data/train-XXXXX-of-YYYYY.parquet`, each
  holding a range of the shuffled ids.

Intermediate tables travel through the Ray object store (spilled to disk when full). Input
files, `--vectors` and `--out` must be visible at the same path on every node (a shared mount),
as for Ray Data's own readers and writers.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import ray

import icp_core
from icp_core import (
    dedup,
    embed,
    export,
    knn,
    manifest,
    metrics,
    pack,
    stages,
    tokenizer,
    traverse,
)
from icp_core.distributed import partition
from icp_core.errors import IcpError
from icp_core.ingest import RAW_PREVIEW_CHARS, check_input, detect_format, parse_source
from icp_core.params import Params
from icp_core.pipeline import StageOutcome

log = logging.getLogger(__name__)

Report = Callable[[int, int], None]
ProgressFactory = Callable[[str], Report]

# Documents per embedding/search block: one search task each; 64k queries keep a task busy for
# seconds to minutes (exact) while its (64k, 32) neighbour lists stay under 20 MB.
BLOCK_DOCS = 65_536
# Contexts per output file: 10k contexts of 8192 tokens is about 300 MB of text.
CONTEXTS_PER_FILE = 10_000
# Auto partition count: one traversal task per this many kept documents (a 2M-document walk
# needs about 1 GB and a minute on one core).
PARTITION_DOCS = 2_000_000
# Documents per kNN index shard (one task builds each; every search task reads all of them):
# 1M 384-d float vectors are 1.5 GB.
SHARD_DOCS = 1_048_576
_QUERY_BATCH = 8192


def _no_progress(stage: str) -> Report:
    return stages._noop


@dataclass(frozen=True)
class RayOptions:
    """How to run on Ray.

    address: a cluster to join (`ray://host:10001`, `host:6379`, `auto`); None starts a local one.
    partitions: P for the order stage; None: one per `PARTITION_DOCS` kept documents.
    block_docs, shard_docs, contexts_per_file: work, index and output granularity.
    stitch: join the partitions' path fragments across partitions (off only to measure what
        it brings: benchmarks/bench_partitioned.py).
    init_args: extra `ray.init` arguments for a local cluster (tests cap CPUs and memory).
    """

    address: str | None = None
    partitions: int | None = None
    block_docs: int = BLOCK_DOCS
    shard_docs: int = SHARD_DOCS
    contexts_per_file: int = CONTEXTS_PER_FILE
    stitch: bool = True
    init_args: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Ray session and error handling
# ---------------------------------------------------------------------------------------------


@contextmanager
def ray_session(options: RayOptions) -> Iterator[None]:
    """Join `options.address` or start a local cluster; a session already open is reused (and
    left open)."""
    _quiet_ray_data()
    if ray.is_initialized():
        yield
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
    if options.address:
        # ship this checkout's icp_core so every node runs the driver's code (its dependencies,
        # faiss, torch, sentence-transformers, must be installed on the nodes)
        kwargs["runtime_env"] = {"py_modules": [str(Path(icp_core.__file__).parent)]}
        try:
            ray.init(address=options.address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise IcpError(
                f"--ray-address {options.address}: cannot join the cluster ({err}); check the "
                "address `ray start --head` printed, and for a cluster with token "
                "authentication (Ray's default) set RAY_AUTH_MODE=token with its token in "
                "~/.ray/auth_token or RAY_AUTH_TOKEN"
            ) from None
    else:
        ray.init(**kwargs, **options.init_args)
    try:
        yield
    finally:
        ray.shutdown()


def _quiet_ray_data() -> None:
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def _icp_cause(err: BaseException) -> IcpError | None:
    """The IcpError a task raised, through Ray's and Ray Data's wrappers."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, IcpError) and not isinstance(current, ray.exceptions.RayError):
            return current
        current = getattr(current, "cause", None) or current.__cause__
    return None


def _get(refs: Any) -> Any:
    """`ray.get` that turns a task's IcpError back into the one-line error it was."""
    try:
        return ray.get(refs)
    except Exception as err:
        cause = _icp_cause(err)
        if cause is not None:
            raise IcpError(str(cause)) from None
        raise


def _refs(result: Any, count: int) -> list:
    """A task's `num_returns` refs as a list (Ray returns a bare ref when count is 1)."""
    return [result] if count == 1 else list(result)


# ---------------------------------------------------------------------------------------------
# Arrow helpers
# ---------------------------------------------------------------------------------------------


def _fixed(matrix: np.ndarray) -> pa.FixedSizeListArray:
    """(n, w) numpy -> Arrow fixed-size lists."""
    return pa.FixedSizeListArray.from_arrays(
        pa.array(np.ascontiguousarray(matrix).ravel()), matrix.shape[1]
    )


def _matrix(column: pa.ChunkedArray | pa.Array, dtype: Any) -> np.ndarray:
    """Arrow (fixed-size) lists -> (n, w) numpy."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], column.type)
    n_rows = len(column)
    values = column.flatten().to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    return values.reshape(n_rows, -1) if n_rows else values.reshape(0, column.type.list_size)


def _column(table: pa.Table, name: str, dtype: Any = np.int64) -> np.ndarray:
    return table.column(name).to_numpy().astype(dtype, copy=False)


# ---------------------------------------------------------------------------------------------
# ingest
# ---------------------------------------------------------------------------------------------


@dataclass
class Shard:
    """One input file's accepted documents: `ref` holds (doc, id, text, line, label) with doc in
    first_doc .. first_doc + n_docs - 1."""

    source: str
    ref: Any
    first_doc: int
    n_docs: int


@dataclass
class Corpus:
    shards: list[Shard]
    n_documents: int
    rejects: pa.Table
    sources: list[dict[str, Any]]
    label_field: str | None
    counts: dict[str, int]


def _label_values(metas: list[str | None], label_field: str) -> list[str | None]:
    """The label as DuckDB's json_extract_string gives it (strings bare, other values as JSON)."""
    labels: list[str | None] = []
    for meta in metas:
        value = orjson.loads(meta).get(label_field) if meta else None
        labels.append(
            value if value is None or isinstance(value, str) else orjson.dumps(value).decode()
        )
    return labels


@ray.remote(num_returns=2)
def _parse_task(path: str, text_field: str, id_field: str, label_field: str) -> tuple:
    import pandas as pd

    parsed = parse_source(path, text_field, id_field)
    table = pa.table(
        {
            "id": pa.array(parsed.ids, pa.string()),
            "text": pa.array(parsed.texts, pa.string()),
            "line": pa.array(parsed.lines, pa.int64()),
            "label": pa.array(_label_values(parsed.metas, label_field), pa.string()),
        }
    )
    rejects = _rejects_table(parsed.source, parsed.rejects)
    summary = {
        "source": parsed.source,
        "content_hash": parsed.content_hash,
        "format": parsed.format,
        "rejects": rejects,
        "id_hash": pd.util.hash_array(np.asarray(parsed.ids, dtype=object), categorize=False),
        "n_labelled": table.num_rows - table.column("label").null_count,
    }
    return table, summary


def _rejects_table(source: str, rejects: list[tuple]) -> pa.Table:
    return pa.table(
        {
            "source": pa.array([source] * len(rejects), pa.string()),
            "line": pa.array([r[0] for r in rejects], pa.int64()),
            "id": pa.array([r[1] for r in rejects], pa.string()),
            "reason": pa.array([r[2] for r in rejects], pa.string()),
            "raw": pa.array([r[3] for r in rejects], pa.string()),
        }
    )


@ray.remote
def _take_rows(table: pa.Table, rows: np.ndarray) -> pa.Table:
    return table.take(pa.array(rows, pa.int64())).select(["id", "line", "text"])


@ray.remote
def _number_task(table: pa.Table, drop_rows: np.ndarray, first_doc: int) -> pa.Table:
    keep = np.ones(table.num_rows, dtype=bool)
    keep[drop_rows] = False
    kept = table.filter(pa.array(keep))
    doc = np.arange(first_doc, first_doc + kept.num_rows, dtype=np.int64)
    return kept.add_column(0, "doc", pa.array(doc))


def ingest_stage(inputs: list[str], params: Params, report: Report) -> Corpus:
    """Parse every input in parallel; reject repeated ids like the local ingest does."""
    for path in inputs:
        check_input(Path(path))  # missing, dangling or not a regular file: one line, unopened
        detect_format(Path(path))
    label_field = params.label_field or "label"
    parsed = [
        _parse_task.remote(str(path), params.text_field, params.id_field, label_field)
        for path in inputs
    ]
    summaries = []
    for number, (_, summary_ref) in enumerate(parsed, start=1):
        summaries.append(_get(summary_ref))
        report(number, len(inputs))
    seen_hashes: set[str] = set()
    accepted = []
    for (table_ref, _), summary in zip(parsed, summaries, strict=True):
        if summary["content_hash"] in seen_hashes:
            continue  # the same content given twice adds nothing, as in the local ingest
        seen_hashes.add(summary["content_hash"])
        accepted.append((table_ref, summary))
    duplicate_rows = _duplicate_id_rows(accepted)
    shards, reject_tables, sources = [], [], []
    first_doc = 0
    for index, (table_ref, summary) in enumerate(accepted):
        drop_rows, drop_rejects = duplicate_rows.get(index, (np.zeros(0, np.int64), None))
        n_docs = len(summary["id_hash"]) - len(drop_rows)
        shards.append(
            Shard(
                summary["source"],
                _number_task.remote(table_ref, drop_rows, first_doc),
                first_doc,
                n_docs,
            )
        )
        rejects = summary["rejects"]
        if drop_rejects is not None:
            rejects = pa.concat_tables([rejects, drop_rejects])
        reject_tables.append(rejects)
        sources.append(
            {
                "source": summary["source"],
                "content_hash": summary["content_hash"],
                "format": summary["format"],
                "n_documents": n_docs,
                "n_rejected": rejects.num_rows,
            }
        )
        first_doc += n_docs
    n_labelled = sum(summary["n_labelled"] for _, summary in accepted)
    if params.label_field and not n_labelled:
        raise IcpError(f"--label-field {params.label_field}: no document has that field")
    rejects = pa.concat_tables(reject_tables) if reject_tables else _rejects_table("", [])
    if first_doc == 0:
        raise IcpError(
            f"no documents in {', '.join(map(str, inputs))} "
            f"({rejects.num_rows} rows rejected); check --text-field"
        )
    return Corpus(
        shards=shards,
        n_documents=first_doc,
        rejects=rejects,
        sources=sources,
        label_field=label_field if n_labelled else None,
        counts={
            "documents": first_doc,
            "rejected": rejects.num_rows,
            "sources_skipped": len(parsed) - len(accepted),
        },
    )


def _duplicate_id_rows(accepted: list[tuple]) -> dict[int, tuple[np.ndarray, pa.Table]]:
    """Per accepted source, the rows whose id appeared earlier (in input order), with rejects.

    Candidates come from equal 64-bit hashes; their ids are fetched and compared exactly.
    """
    hashes = [summary["id_hash"] for _, summary in accepted]
    if not hashes or not sum(map(len, hashes)):
        return {}
    all_hashes = np.concatenate(hashes)
    source = np.repeat(np.arange(len(hashes)), [len(h) for h in hashes])
    row = np.concatenate([np.arange(len(h)) for h in hashes])
    unique, inverse, counts = np.unique(all_hashes, return_inverse=True, return_counts=True)
    suspect = np.flatnonzero(counts[inverse] > 1)
    if not len(suspect):
        return {}
    fetched = {
        int(s): _take_rows.remote(accepted[s][0], row[suspect][source[suspect] == s])
        for s in np.unique(source[suspect])
    }
    ids, lines, texts = [], [], []
    for s in np.unique(source[suspect]):
        table = _get(fetched[int(s)])
        ids += table.column("id").to_pylist()
        lines += table.column("line").to_pylist()
        texts += table.column("text").to_pylist()
    first_place: dict[str, str] = {}
    drops: dict[int, list[int]] = {}
    rejects: dict[int, list[tuple]] = {}
    for position, (doc_id, line, text) in enumerate(zip(ids, lines, texts, strict=True)):
        s, r = int(source[suspect][position]), int(row[suspect][position])
        where = f"{accepted[s][1]['source']}:{line}"
        if doc_id not in first_place:
            first_place[doc_id] = where
            continue
        drops.setdefault(s, []).append(r)
        reason = stages.duplicate_id_reason(doc_id, first_place[doc_id])
        rejects.setdefault(s, []).append((line, doc_id, reason, text[:RAW_PREVIEW_CHARS]))
    return {
        s: (np.asarray(rows, dtype=np.int64), _rejects_table(accepted[s][1]["source"], rejects[s]))
        for s, rows in drops.items()
    }


# ---------------------------------------------------------------------------------------------
# embed
# ---------------------------------------------------------------------------------------------


def _block_ranges(n_docs: int, block_docs: int) -> list[tuple[int, int]]:
    return [(start, min(start + block_docs, n_docs)) for start in range(0, n_docs, block_docs)]


def _overlapping(shards: list[Shard], start: int, stop: int) -> list[tuple[Any, int]]:
    """(ref, first_doc) of the shards holding documents start .. stop - 1."""
    return [
        (shard.ref, shard.first_doc)
        for shard in shards
        if shard.first_doc < stop and shard.first_doc + shard.n_docs > start
    ]


def _block_content(pieces: list[tuple[pa.Table, int]], start: int, stop: int) -> pa.Table:
    """Documents start .. stop - 1 from the shard tables that hold them."""
    parts = []
    for table, first_doc in pieces:
        lo = max(start - first_doc, 0)
        hi = min(stop - first_doc, table.num_rows)
        if hi > lo:
            parts.append(table.slice(lo, hi - lo))
    return pa.concat_tables(parts)


def _block_dir(folder: Path, block: int) -> Path:
    return folder / f"block={block}"


class _Embedder:
    """A Ray Data actor: loads the model once, then embeds batches of (doc, text)."""

    def __init__(self, model_path: str, params: Params, block_docs: int, threads: int):
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.model = embed.load_model(model_path, params.device, params.max_tokens)
        self.batch_size = params.batch_size
        self.block_docs = block_docs

    def __call__(self, batch: pa.Table) -> pa.Table:
        vectors = embed.embed_texts(self.model, batch.column("text").to_pylist(), self.batch_size)
        doc = _column(batch, "doc")
        return pa.table({"doc": doc, "block": doc // self.block_docs, "vector": _fixed(vectors)})


@ray.remote
def _import_vectors_task(
    path: str, folder: str, block: int, start: int, stop: int, *pieces: Any
) -> int:
    """Write block `block` of the user's vectors (rows start .. stop - 1 of a .npy in ingest
    order, or the ids of those documents looked up in a Parquet file)."""
    if path.endswith(".npy"):
        vectors = np.asarray(np.load(path, mmap_mode="r")[start:stop], dtype=np.float32)
        bad = ~np.isfinite(vectors).all(axis=1)
        if bad.any():
            raise IcpError(
                f"{path}: {int(bad.sum())} vectors hold NaN or inf "
                f"(first: row {start + int(np.argmax(bad))}); fix or re-export them"
            )
        vectors = embed.normalize_rows(vectors)
    else:
        content = _block_content(list(zip(pieces[0::2], pieces[1::2], strict=True)), start, stop)
        ids = np.asarray(content.column("id").to_pylist(), dtype=object)
        vectors = embed.read_vectors_file(path, ids)
    target = _block_dir(Path(folder), block)
    target.mkdir(parents=True, exist_ok=True)
    table = pa.table({"doc": np.arange(start, stop, dtype=np.int64), "vector": _fixed(vectors)})
    pq.write_table(table, target / "part-0.parquet")
    return len(vectors)


def _cluster_cpus_gpus() -> tuple[int, int]:
    resources = ray.cluster_resources()
    return int(resources.get("CPU", 1)), int(resources.get("GPU", 0))


def embed_stage(
    corpus: Corpus, params: Params, options: RayOptions, folder: Path, report: Report
) -> dict[str, Any]:
    """Write every document's unit vector to `folder/block=J/*.parquet` (doc, vector)."""
    blocks = _block_ranges(corpus.n_documents, options.block_docs)
    report(0, corpus.n_documents)
    if params.vectors:
        path = Path(params.vectors)
        if not path.exists():
            raise IcpError(f"{path}: no such vectors file; pass --vectors with a .parquet or .npy")
        if path.suffix == ".npy":
            shape = np.load(path, mmap_mode="r").shape
            if len(shape) != 2 or shape[0] != corpus.n_documents:
                raise IcpError(
                    f"{path}: shape {shape}, expected ({corpus.n_documents}, d) rows in "
                    "ingest order"
                )
        elif path.suffix not in (".parquet", ".pq"):
            raise IcpError(
                f"{path}: vectors must be .npy (rows in ingest order) or .parquet (id + vector)"
            )
        tasks = []
        for block, (start, stop) in enumerate(blocks):
            pieces = [x for pair in _overlapping(corpus.shards, start, stop) for x in pair]
            refs = pieces if path.suffix != ".npy" else []
            tasks.append(
                _import_vectors_task.remote(str(path), str(folder), block, start, stop, *refs)
            )
        for done, task in enumerate(tasks, start=1):
            _get(task)
            report(min(done * options.block_docs, corpus.n_documents), corpus.n_documents)
        return {"embedded": 0, "imported": corpus.n_documents, "model_key": f"vectors:{path}"}
    _embed_with_ray_data(corpus, params, options, folder)
    report(corpus.n_documents, corpus.n_documents)
    model_path = embed.resolve_model_path(params.model)
    return {
        "embedded": corpus.n_documents,
        "imported": 0,
        "model_key": embed.model_key(str(model_path), params.max_tokens),
        # the actors' device: one GPU each when the cluster has GPUs (_embed_with_ray_data)
        "device": "cuda"
        if _cluster_cpus_gpus()[1] and params.device in ("auto", "cuda")
        else "cpu",
    }


def _embed_with_ray_data(corpus: Corpus, params: Params, options: RayOptions, folder: Path) -> None:
    import ray.data

    model_path = str(embed.resolve_model_path(params.model))  # fails here, before any actor
    cpus, gpus = _cluster_cpus_gpus()
    if gpus and params.device in ("auto", "cuda"):
        pool, actor_cpus, actor_gpus, threads = gpus, 1, 1, 0
    else:
        # leave a core for the readers; on big nodes give each model a few threads
        actor_cpus = 1 if cpus <= 4 else 4
        pool, actor_gpus, threads = max(1, (cpus - 1) // actor_cpus), 0, actor_cpus
    dataset = ray.data.from_arrow_refs([shard.ref for shard in corpus.shards])
    try:
        dataset.select_columns(["doc", "text"]).map_batches(
            _Embedder,
            fn_constructor_kwargs={
                "model_path": model_path,
                "params": params,
                "block_docs": options.block_docs,
                "threads": threads,
            },
            batch_format="pyarrow",
            batch_size=params.batch_size * 4,
            compute=ray.data.ActorPoolStrategy(size=pool),
            num_cpus=actor_cpus,
            num_gpus=actor_gpus,
        ).write_parquet(str(folder), partition_cols=["block"])
    except Exception as err:
        cause = _icp_cause(err)
        if cause is not None:
            raise IcpError(str(cause)) from None
        raise


# ---------------------------------------------------------------------------------------------
# knn (and the pieces of dedup and partitioning that ride along with the search)
# ---------------------------------------------------------------------------------------------


@dataclass
class Searched:
    """One block's search result: `ref` holds (doc, id, text, label, vector, list, nbr_ids,
    nbr_sims) sorted by doc; the summary holds what the driver needs (n_docs, the
    near-duplicate pairs and their lists)."""

    ref: Any
    summary: dict[str, Any]


@dataclass(frozen=True)
class IvfSettings:
    """The IVF sizing: coarse lists, training sample, k-means iterations, lists probed."""

    n_lists: int
    n_train: int
    n_iter: int
    n_probe: int


def ivf_settings(n_docs: int, dim: int = 384) -> IvfSettings:
    """The single-machine kNN's IVF sizing (`knn.ivf_settings`: lists, training sample, probes)
    for a corpus of n_docs, with the k-means iterations the shard tasks train with."""
    settings = knn.ivf_settings(n_docs, dim)
    return IvfSettings(
        n_lists=settings.lists,
        n_train=settings.train_points,
        n_iter=10,
        n_probe=settings.nprobe,
    )


# a stored id packs the document and its IVF list, so a search result names both and no task
# needs a global doc -> list table: id = doc << LIST_BITS | list
LIST_BITS = 24


def _pack_ids(doc: np.ndarray, lists: np.ndarray) -> np.ndarray:
    return (doc.astype(np.int64) << LIST_BITS) | lists.astype(np.int64)


def _unpack_ids(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(doc, list), -1 for both where ids is -1."""
    missing = ids < 0
    doc = np.where(missing, -1, ids >> LIST_BITS)
    lists = np.where(missing, -1, ids & ((1 << LIST_BITS) - 1))
    return doc, lists


@ray.remote
def _sample_task(directory: str, n_take: int, seed: int) -> np.ndarray:
    vectors = _matrix(pq.read_table(directory, columns=["vector"]).column("vector"), np.float32)
    rows = np.random.default_rng(seed).choice(len(vectors), min(n_take, len(vectors)), False)
    return vectors[np.sort(rows)]


def _read_block(directory: Path) -> tuple[np.ndarray, np.ndarray]:
    """(doc, vectors) of one block, sorted by doc."""
    table = pq.read_table(directory, columns=["doc", "vector"])
    doc = _column(table, "doc")
    by_doc = np.argsort(doc, kind="stable")
    return doc[by_doc], _matrix(table.column("vector"), np.float32)[by_doc]


def _task_threads() -> None:
    import faiss

    faiss.omp_set_num_threads(
        max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
    )


def _coarse(centroids: np.ndarray):
    import faiss

    quantizer = faiss.IndexFlatIP(centroids.shape[1])
    quantizer.add(centroids)
    return quantizer


@ray.remote
def _train_task(settings: IvfSettings, *samples: np.ndarray) -> np.ndarray:
    """k-means of the coarse quantizer on the sample, as `icp_core.knn` trains its IVF index:
    the (n_lists, d) centroids."""
    import faiss

    _task_threads()
    sample = np.concatenate(samples)
    dim = sample.shape[1]
    ivf = faiss.IndexIVFFlat(
        faiss.IndexFlatIP(dim), dim, settings.n_lists, faiss.METRIC_INNER_PRODUCT
    )
    ivf.cp.niter = settings.n_iter
    ivf.cp.min_points_per_centroid = 16  # as in icp_core.knn: the sample is enough
    ivf.train(sample)  # its coarse lists also define the order stage's partitions
    return ivf.quantizer.reconstruct_n(0, settings.n_lists)


@ray.remote
def _shard_task(centroids: np.ndarray, kind: str, directories: list[str], path: str) -> int:
    """Build one index shard over some blocks with the driver's trained coarse quantizer (an
    IVF shard, or a flat one for exact search) and write it to `path`."""
    import faiss

    _task_threads()
    quantizer = _coarse(centroids)
    n_lists, dim = centroids.shape
    if kind == "flat":
        index = faiss.IndexIDMap(faiss.IndexFlatIP(dim))
    else:
        index = faiss.IndexIVFFlat(quantizer, dim, n_lists, faiss.METRIC_INNER_PRODUCT)
        index.is_trained = True
    n_docs = 0
    for directory in directories:
        doc, vectors = _read_block(Path(directory))
        lists = quantizer.search(vectors, 1)[1][:, 0]
        index.add_with_ids(vectors, _pack_ids(doc, lists))
        n_docs += len(doc)
    faiss.write_index(index, path)
    return n_docs


def _merge_top(ids: np.ndarray, sims: np.ndarray, keep: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's best `keep` candidates, ties to the lower id (ids grow with doc), -1 last."""
    by_id = np.argsort(np.where(ids < 0, np.iinfo(np.int64).max, ids), axis=1, kind="stable")
    best = np.argsort(-np.take_along_axis(sims, by_id, axis=1), axis=1, kind="stable")
    pick = np.take_along_axis(by_id, best[:, :keep], axis=1)
    return np.take_along_axis(ids, pick, axis=1), np.take_along_axis(sims, pick, axis=1)


@ray.remote(num_returns=2)
def _search_task(
    shards: list[str],
    centroids: np.ndarray,
    n_probe: int,
    n_docs: int,
    directory: str,
    start: int,
    stop: int,
    k_max: int,
    k: int,
    threshold: float | None,
    *pieces: Any,
) -> tuple[pa.Table, dict[str, Any]]:
    """Search one block against every shard (coarse lists assigned once), merge each query's
    top candidates across shards, and return the block's table and summary."""
    import faiss

    _task_threads()
    doc, vectors = _read_block(Path(directory))
    if not np.array_equal(doc, np.arange(start, stop)):
        raise IcpError(f"{directory}: embeddings do not cover documents {start}..{stop - 1}")
    quantizer = _coarse(centroids)
    n_lists = len(centroids)
    probe_sims, probes = quantizer.search(vectors, n_probe)
    own_list = probes[:, 0]
    searched = min(k_max, n_docs - 1) + 1  # one extra column for the document itself
    ids = np.full((len(doc), k_max), -1, dtype=np.int64)
    sims = np.zeros((len(doc), k_max), dtype=np.float32)
    lists = np.full((len(doc), k_max), -1, dtype=np.int64)
    if n_docs > 1:
        # the best `searched` so far, merged with each shard's as it comes
        top_ids = np.full((len(doc), searched), -1, dtype=np.int64)
        top_sims = np.full((len(doc), searched), -np.inf, dtype=np.float32)
        for shard in shards:
            # a shard's lists are memory-mapped: the tasks of one node share one copy
            index = faiss.read_index(shard, faiss.IO_FLAG_MMAP)
            for lo in range(0, len(doc), _QUERY_BATCH):
                hi = min(lo + _QUERY_BATCH, len(doc))
                if isinstance(index, faiss.IndexIVF):
                    index.nprobe = n_probe
                    d, i = index.search_preassigned(
                        vectors[lo:hi], searched, probes[lo:hi], probe_sims[lo:hi]
                    )
                else:
                    d, i = index.search(vectors[lo:hi], searched)
                top_ids[lo:hi], top_sims[lo:hi] = _merge_top(
                    np.hstack([top_ids[lo:hi], i]),
                    np.hstack([top_sims[lo:hi], np.where(i >= 0, d, -np.inf)]),
                    searched,
                )
            del index
        top_docs, top_lists = _unpack_ids(top_ids)
        kept_docs, kept_sims = knn._drop_self(top_docs, top_sims, doc)
        _, kept_lists = knn._drop_self(top_docs, top_lists, doc)  # the same columns
        ids[:, : searched - 1] = kept_docs
        sims[:, : searched - 1] = kept_sims
        lists[:, : searched - 1] = np.where(kept_docs >= 0, kept_lists, -1)
    sims[ids < 0] = 0.0
    content = _block_content(list(zip(pieces[0::2], pieces[1::2], strict=True)), start, stop)
    table = pa.table(
        {
            "doc": doc,
            "id": content.column("id"),
            "text": content.column("text"),
            "label": content.column("label"),
            "vector": _fixed(vectors),
            "list": own_list,
            "nbr_ids": _fixed(ids),
            "nbr_sims": _fixed(sims),
        }
    )
    # kNN edges between IVF lists: the order stage groups lists that share many
    head_ids, head_sims, head_lists = ids[:, :k], sims[:, :k], lists[:, :k]
    valid = head_ids >= 0
    query_list = np.repeat(own_list.astype(np.int64), k)[valid.ravel()]
    key = query_list * n_lists + head_lists[valid]
    pair_key, pair_count = np.unique(key, return_counts=True)
    is_dup = np.zeros_like(valid) if threshold is None else valid & (head_sims >= threshold)
    rows, cols = np.nonzero(is_dup)
    summary = {
        "n_docs": len(doc),
        "list_key": pair_key,
        "list_edges": pair_count,
        "list_sizes": np.bincount(own_list, minlength=n_lists),
        "dup_doc": doc[rows],
        "dup_list": own_list[rows],
        "dup_neighbor": head_ids[rows, cols],
        "dup_neighbor_list": head_lists[rows, cols],
        "dup_sim": head_sims[rows, cols],
    }
    return table, summary


@dataclass
class ListGraph:
    """What the order stage groups IVF lists by: each list's documents and the kNN edges
    between lists (key = first * n_lists + second, count), merged as the blocks come."""

    n_lists: int
    sizes: np.ndarray
    key: np.ndarray
    edges: np.ndarray

    def add(self, summary: dict[str, Any]) -> None:
        self.sizes += summary.pop("list_sizes")
        key = np.concatenate([self.key, summary.pop("list_key")])
        edges = np.concatenate([self.edges, summary.pop("list_edges")])
        self.key, inverse = np.unique(key, return_inverse=True)
        self.edges = np.bincount(inverse, weights=edges).astype(np.int64)


def _shard_groups(directories: list[Path], blocks: list[tuple[int, int]], shard_docs: int):
    """Consecutive blocks grouped into shards of at most shard_docs documents (one at least)."""
    groups: list[list[str]] = [[]]
    filled = 0
    for directory, (start, stop) in zip(directories, blocks, strict=True):
        if groups[-1] and filled + stop - start > shard_docs:
            groups.append([])
            filled = 0
        groups[-1].append(str(directory))
        filled += stop - start
    return groups


def knn_stage(
    corpus: Corpus,
    params: Params,
    folder: Path,
    work: Path,
    options: RayOptions,
    report: Report,
) -> tuple[list[Searched], ListGraph, dict[str, Any]]:
    """Train the coarse quantizer on a sample (all the driver holds), build the index shards
    in tasks (each over some blocks), and search every block against every shard in a task.

    Returns:
        The searched blocks, the IVF lists' sizes and edges, and the stage counts.
    """
    n_docs = corpus.n_documents
    kind = knn.resolve_index(params.index, n_docs)
    if kind == "hnsw":
        raise IcpError("--index hnsw is not available on the ray engine; use auto, flat or ivf")
    blocks = _block_ranges(n_docs, options.block_docs)
    directories = [_block_dir(folder, block) for block in range(len(blocks))]
    settings = ivf_settings(n_docs)
    samples = [
        _sample_task.remote(
            str(directory),
            math.ceil(settings.n_train * (stop - start) / n_docs),
            params.seed + block,
        )
        for block, (directory, (start, stop)) in enumerate(zip(directories, blocks, strict=True))
    ]
    # the driver holds neither the sample nor the index: only the trained centroids
    centroids = _get(
        _train_task.options(num_cpus=_cluster_cpus_gpus()[0]).remote(settings, *samples)
    )
    centroids_ref = ray.put(centroids)
    work.mkdir(parents=True, exist_ok=True)
    groups = _shard_groups(directories, blocks, options.shard_docs)
    shards = [str(work / f"knn-shard-{s:05d}.index") for s in range(len(groups))]
    _get(
        [
            _shard_task.remote(centroids_ref, kind, group, shard)
            for group, shard in zip(groups, shards, strict=True)
        ]
    )
    # exact (flat) search probes no lists; IVF search probes knn's count
    n_probe = 1 if kind == "flat" else settings.n_probe
    k_max = max(params.k, stages.KNN_MIN_STORED)
    tasks = []
    for directory, (start, stop) in zip(directories, blocks, strict=True):
        pieces = [x for pair in _overlapping(corpus.shards, start, stop) for x in pair]
        tasks.append(
            _search_task.remote(
                shards,
                centroids_ref,
                n_probe,
                n_docs,
                str(directory),
                start,
                stop,
                k_max,
                params.k,
                params.dedup_threshold,
                *pieces,
            )
        )
    graph = ListGraph(
        settings.n_lists,
        np.zeros(settings.n_lists, np.int64),
        np.zeros(0, np.int64),
        np.zeros(0, np.int64),
    )
    searched = []
    for table_ref, summary_ref in tasks:
        summary = _get(summary_ref)
        graph.add(summary)
        searched.append(Searched(table_ref, summary))
        report(sum(s.summary["n_docs"] for s in searched), n_docs)
    counts = {
        "documents": n_docs,
        "k_max": k_max,
        "index": kind,
        "ivf_lists": settings.n_lists,
        "ivf_probes": n_probe,
        "shards": len(shards),
    }
    return searched, graph, counts


# ---------------------------------------------------------------------------------------------
# dedup
# ---------------------------------------------------------------------------------------------


@dataclass
class Removed:
    """Duplicates: `doc` removed, `kept_doc` the document it copies, `sim` their cosine."""

    doc: np.ndarray
    kept_doc: np.ndarray
    sim: np.ndarray
    ids: list[str]
    kept_ids: list[str]
    lists: np.ndarray  # the IVF list of each removed document


@ray.remote
def _take_docs(table: pa.Table, docs: np.ndarray) -> pa.Table:
    doc = _column(table, "doc")
    rows = np.flatnonzero(np.isin(doc, docs))
    return table.take(pa.array(rows, pa.int64())).select(["doc", "id", "vector"])


def dedup_stage(searched: list[Searched], params: Params, n_docs: int) -> Removed:
    """Group the near-duplicate pairs with `dedup.find_duplicates` over just the documents
    that have one; every group keeps its earliest document, as in the local engine."""
    none = np.zeros(0, np.int64)
    empty = Removed(none, none, np.zeros(0, np.float32), [], [], none)
    first = np.concatenate([s.summary["dup_doc"] for s in searched]).astype(np.int64)
    second = np.concatenate([s.summary["dup_neighbor"] for s in searched]).astype(np.int64)
    pair_sims = np.concatenate([s.summary["dup_sim"] for s in searched]).astype(np.float32)
    if params.dedup_threshold is None or not len(first):
        return empty
    involved, at_first = np.unique(np.concatenate([first, second]), return_index=True)
    involved_list = np.concatenate(
        [
            np.concatenate([s.summary[key] for s in searched])
            for key in ("dup_list", "dup_neighbor_list")
        ]
    )[at_first]
    local_first = np.searchsorted(involved, first)
    by_row = np.argsort(local_first, kind="stable")
    local_first, local_second = local_first[by_row], np.searchsorted(involved, second)[by_row]
    pair_sims = pair_sims[by_row]
    row_start = np.searchsorted(local_first, np.arange(len(involved)))
    column = np.arange(len(local_first)) - row_start[local_first]
    width = int(column.max()) + 1
    sub_ids = np.full((len(involved), width), -1, dtype=np.int64)
    sub_sims = np.zeros((len(involved), width), dtype=np.float32)
    sub_ids[local_first, column] = local_second
    sub_sims[local_first, column] = pair_sims
    keeper = involved[dedup.find_duplicates(sub_ids, sub_sims, params.dedup_threshold)]
    moved = keeper != involved
    doc, kept_doc = involved[moved], keeper[moved]
    if not len(doc):
        return empty
    wanted = np.union1d(doc, kept_doc)
    rows = pa.concat_tables(_get([_take_docs.remote(s.ref, wanted) for s in searched]))
    found = _column(rows, "doc")
    by_doc = np.argsort(found)
    vectors = _matrix(rows.column("vector"), np.float32)[by_doc]
    ids = np.asarray(rows.column("id").to_pylist(), dtype=object)[by_doc]
    at = np.searchsorted(found[by_doc], doc)
    kept_at = np.searchsorted(found[by_doc], kept_doc)
    sim = metrics.pair_similarity(vectors, at, kept_at)
    return Removed(
        doc,
        kept_doc,
        sim,
        ids[at].tolist(),
        ids[kept_at].tolist(),
        involved_list[moved],
    )


# ---------------------------------------------------------------------------------------------
# order: partition, order each partition, stitch fragments across partitions
# ---------------------------------------------------------------------------------------------


GRAPH_COLUMNS = ["doc", "nbr_ids", "nbr_sims"]
CONTENT_COLUMNS = ["doc", "id", "text", "label", "vector"]


@ray.remote
def _route_task(
    table: pa.Table,
    list_partition: np.ndarray | None,
    removed: np.ndarray,
    n_partitions: int,
    seed: int,
) -> tuple:
    """Split one searched block by partition, dropping removed documents: P graph tables (what
    the walk reads) then P content tables (what packing reads), so a walk never holds texts.

    Partitions group IVF lists (`list_partition`), or with None are seeded random buckets (for
    the `random` ordering: random parts of a random order are a random order)."""
    doc = _column(table, "doc")
    if list_partition is None:
        home = _random_bucket(doc, seed, n_partitions)
    else:
        home = list_partition[_column(table, "list")]
    part = np.where(np.isin(doc, removed), -1, home)
    masks = [pa.array(part == p) for p in range(n_partitions)]
    graph = [table.select(GRAPH_COLUMNS).filter(mask) for mask in masks]
    content = [table.select(CONTENT_COLUMNS).filter(mask) for mask in masks]
    return (*graph, *content)


@ray.remote(num_returns=2)
def _traverse_task(
    removed: np.ndarray, k: int, width: int, method: str, seed: int, *parts: pa.Table
) -> tuple:
    """Order one partition with `traverse.traverse` and cut the path into fragments; return the
    path (doc and kNN lists without removed documents, in path order, `width` wide) and a
    summary: the fragments and their end documents' kNN lists (first k), all the driver needs
    to stitch them."""
    table = pa.concat_tables(parts)
    table = table.take(pa.array(np.argsort(_column(table, "doc"), kind="stable")))
    members = _column(table, "doc")
    nbr_ids = _matrix(table.column("nbr_ids"), np.int64)
    nbr_sims = _matrix(table.column("nbr_sims"), np.float32)
    local = partition.localize(nbr_ids, members)
    walk_ids, walk_sims = stages.restrict_graph(local, nbr_sims, np.arange(len(members)), k)
    order = traverse.traverse(walk_ids, walk_sims, method, seed)
    wide_ids, wide_sims = partition.drop_removed(nbr_ids, nbr_sims, removed, width)
    kept_ids, kept_sims = wide_ids[:, :k], wide_sims[:, :k]
    kept_local = partition.localize(kept_ids, members)
    # a random order is cut nowhere (its partitions are random buckets, not IVF lists)
    outside = (kept_ids >= 0) & (kept_local < 0) & (method != "random")
    starts, jumps = partition.cut_path(order, kept_local, kept_sims, outside)
    lengths = np.diff(np.r_[starts, len(order)])
    # per fragment its head, then its tail (one document for a fragment of one)
    ends = order[np.stack([starts, starts + lengths - 1], axis=1).ravel()]
    path = pa.table(
        {
            "doc": members[order],
            "kept_ids": _fixed(wide_ids[order]),
            "kept_sims": _fixed(wide_sims[order]),
        }
    )
    summary = {
        "fragment_start": starts,
        "fragment_length": lengths,
        "end_doc": members[ends],
        "end_ids": kept_ids[ends],
        "end_sims": kept_sims[ends],
        "n_docs": len(members),
        "jumps": jumps,
    }
    return path, summary


@ray.remote
def _pick_task(
    starts: list[np.ndarray],
    lengths: list[np.ndarray],
    reverses: list[np.ndarray],
    path: pa.Table,
    *content: pa.Table,
) -> tuple[pa.Table, ...] | pa.Table:
    """The rows (graph and content columns) of the path segments a partition sends away: one
    table per receiving partition, its segments laid out in the receiver's order."""
    table = pa.concat_tables(content)
    picked = []
    for start, length, reverse in zip(starts, lengths, reverses, strict=True):
        graph = path.take(pa.array(partition.expand_segments(start, length, reverse)))
        rows = _rows_for(table, _column(graph, "doc"))
        for name in CONTENT_COLUMNS[1:]:
            graph = graph.append_column(name, rows.column(name))
        picked.append(graph)
    return tuple(picked) if len(picked) > 1 else picked[0]


@dataclass
class Ordered:
    """Per partition: its path (graph columns) and its content tables (one per block); plus
    the layout of the fragments over the partitions that pack them."""

    paths: list[Any]
    content: list[list[Any]]
    stitching: partition.Stitching
    counts: dict[str, Any]


def order_stage(
    searched: list[Searched],
    lists: ListGraph,
    removed: Removed,
    params: Params,
    k_max: int,
    n_partitions: int,
    stitch: bool,
    report: Report,
) -> Ordered:
    """Group IVF lists into partitions, order each in a task, stitch their fragments."""
    n_lists = lists.n_lists
    list_sizes = lists.sizes - np.bincount(removed.lists, minlength=n_lists)
    list_partition = partition.group_lists(
        lists.key // n_lists, lists.key % n_lists, lists.edges, list_sizes, n_partitions
    )
    removed_ref = ray.put(np.sort(removed.doc))
    by_hash = params.order == "random"
    list_partition_ref = None if by_hash else ray.put(list_partition)
    # the near-copy filter of `original` drops more documents after stitching; the kNN lists
    # then move up past them (`_assemble`), so the path keeps every stored column
    width = k_max if params.order == "original" else params.k
    routed = [
        _route_task.options(num_returns=2 * n_partitions).remote(
            s.ref, list_partition_ref, removed_ref, n_partitions, params.seed
        )
        for s in searched
    ]
    tasks = [
        _traverse_task.remote(
            removed_ref, params.k, width, params.order, params.seed, *[r[p] for r in routed]
        )
        for p in range(n_partitions)
    ]
    content = [[r[n_partitions + p] for r in routed] for p in range(n_partitions)]
    summaries = []
    for done, (_, summary_ref) in enumerate(tasks, start=1):
        summaries.append(_get(summary_ref))
        report(done, n_partitions)
    end_ids = np.concatenate([s["end_ids"] for s in summaries])
    if not stitch or by_hash:  # only the partitions' own joins: each path stays whole
        end_ids = np.full_like(end_ids, -1)
    stitching = partition.plan_stitching(
        fragment_partition=np.repeat(
            np.arange(n_partitions), [len(s["fragment_start"]) for s in summaries]
        ),
        fragment_start=np.concatenate([s["fragment_start"] for s in summaries]),
        fragment_length=np.concatenate([s["fragment_length"] for s in summaries]),
        end_doc=np.concatenate([s["end_doc"] for s in summaries]),
        end_ids=end_ids,
        end_sims=np.concatenate([s["end_sims"] for s in summaries]),
        n_partitions=n_partitions,
    )
    sizes = [s["n_docs"] for s in summaries]
    packed = np.bincount(stitching.home, weights=stitching.length, minlength=n_partitions)
    counts = {
        "ordered": int(sum(sizes)),
        "partitions": n_partitions,
        "partition_docs_min": int(min(sizes)),
        "partition_docs_max": int(max(sizes)),
        "jumps_before_stitching": int(sum(s["jumps"] for s in summaries)),
        "fragments": int(sum(len(s["fragment_start"]) for s in summaries)),
        "stitched_links": stitching.links,
        "stitched_across_partitions": stitching.across,
        "moved_docs": stitching.moved_docs(),
        "packed_docs_min": int(packed.min()),
        "packed_docs_max": int(packed.max()),
    }
    return Ordered([t[0] for t in tasks], content, stitching, counts)


# ---------------------------------------------------------------------------------------------
# pack (and the metrics measured per partition)
# ---------------------------------------------------------------------------------------------


def _rows_for(table: pa.Table, docs: np.ndarray) -> pa.Table:
    """The rows of `table` for `docs`, in that order (each doc must be present)."""
    found = _column(table, "doc")
    by_doc = np.argsort(found, kind="stable")
    return table.take(pa.array(by_doc[np.searchsorted(found[by_doc], docs)]))


@ray.remote
def _count_words_task(path: pa.Table, drops: np.ndarray, *content: pa.Table) -> Counter:
    """`metrics.word_counts` of the documents on one partition's path but not in `drops`."""
    table = pa.concat_tables(content)
    kept = np.setdiff1d(_column(path, "doc"), drops)
    rows = table.filter(pa.array(np.isin(_column(table, "doc"), kept)))
    return metrics.word_counts(rows.column("text").to_pylist())


def _random_bucket(doc: np.ndarray, seed: int, n_buckets: int) -> np.ndarray:
    """The random-baseline bucket of each document: a seeded hash, so buckets mix partitions."""
    if n_buckets == 1:
        return np.zeros(len(doc), dtype=np.int64)
    mixed = (doc.astype(np.uint64) + np.uint64(seed)) * np.uint64(0x9E3779B97F4A7C15)
    mixed ^= mixed >> np.uint64(31)
    return (mixed % np.uint64(n_buckets)).astype(np.int64)


def _assemble(
    path: pa.Table,
    segments: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    home: int,
    n_content: int,
    parts: tuple[pa.Table, ...],
    drops: np.ndarray,
    k: int,
) -> tuple[pa.Table, pa.Table, np.ndarray]:
    """A home partition's final path: its graph rows and content rows in path order, without
    the `drops`, and each document's first k kNN neighbours that are kept (global ids)."""
    received = parts[n_content:]
    rows = partition.assembly(*segments, home, path.num_rows)
    graph = pa.concat_tables([path, *[r.select(path.column_names) for r in received]]).take(
        pa.array(rows)
    )
    if len(drops):
        graph = graph.filter(pa.array(~np.isin(_column(graph, "doc"), drops)))
    table = _rows_for(
        pa.concat_tables([*parts[:n_content], *[r.select(CONTENT_COLUMNS) for r in received]]),
        _column(graph, "doc"),
    )
    kept_ids, _ = partition.drop_removed(
        _matrix(graph.column("kept_ids"), np.int64),
        _matrix(graph.column("kept_sims"), np.float32),
        drops,
        k,
    )
    return graph, table, kept_ids


@ray.remote
def _near_copy_task(
    path: pa.Table,
    segments: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    home: int,
    n_content: int,
    *parts: pa.Table,
) -> dict[str, Any]:
    """`stages.near_copy_filter` along a home partition's final path (its own fragments and
    the joins stitched to them): the drops, with ids."""
    _, table, _ = _assemble(path, segments, home, n_content, parts, np.zeros(0, np.int64), 1)
    _, drops = stages.near_copy_filter(
        table.column("text").to_pylist(),
        np.arange(table.num_rows),
        _matrix(table.column("vector"), np.float32),
    )
    doc = _column(table, "doc")
    ids = table.column("id").to_pylist()
    return {
        **drops,
        "id": [ids[i] for i in drops["doc"]],
        "kept_id": [ids[i] for i in drops["kept_doc"]],
        "doc": doc[np.asarray(drops["doc"], dtype=np.int64)],
        "kept_doc": doc[np.asarray(drops["kept_doc"], dtype=np.int64)],
    }


def _pack_task(
    path: pa.Table,
    segments: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    home: int,
    params: Params,
    label_field: str | None,
    corpus_counts: Counter,
    drops: np.ndarray,
    n_buckets: int,
    n_content: int,
    *parts: pa.Table,
) -> tuple:
    """Lay out the chains, count tokens, pack, measure, and render the context rows.

    `segments`: (origin, start, length, reverse) of this partition's chains in final order.
    `corpus_counts`: the corpus-wide word counts (context_cache_gain's unigram model).
    `drops`: sorted documents the near-copy filter dropped (`near_copy_stage`).
    `parts`: this partition's `n_content` content tables, then the rows each partition that
    sends segments here picked for it (`_pick_task`), senders in ascending order.

    Returns the context rows, a summary, then `n_buckets` tables of what the random baseline
    measures about this partition's documents (`_random_task`), one per bucket.
    """
    graph, table, kept_ids = _assemble(path, segments, home, n_content, parts, drops, params.k)
    path_docs = _column(table, "doc")
    # number the members in doc order, as the local engine numbers kept documents
    by_doc = np.argsort(path_docs, kind="stable")
    members = path_docs[by_doc]
    order = np.empty(len(path_docs), dtype=np.int64)
    order[by_doc] = np.arange(len(path_docs))
    lm = stages.lm_tokenizer(params)
    sep_ids = np.asarray(lm.separator_ids(params.separator), dtype=np.int64)
    texts = table.column("text").to_pylist()
    token_ids, token_offsets = lm.token_ids(texts)
    doc_tokens = np.empty(len(texts), dtype=np.int64)
    doc_tokens[order] = np.diff(token_offsets)
    packing = pack.pack_contexts(
        order, doc_tokens, params.context_length, params.pack, len(sep_ids), shuffle=False
    )
    vectors = _matrix(table.column("vector"), np.float32)[by_doc]
    kept_ids = kept_ids[by_doc]
    labels = None
    if label_field is not None:
        # the local engine's stand-in for a missing label (stages.read_labels)
        filled = table.column("label").fill_null("\0missing")
        labels = np.asarray(filled.to_pylist(), dtype=object)[by_doc]
    sorted_texts = [texts[i] for i in by_doc]
    measured, weights = metrics.packing_terms(
        packing,
        vectors,
        doc_tokens,
        params.context_length,
        partition.localize(kept_ids, members),
        labels,
        metrics.word_ids(sorted_texts, corpus_counts=corpus_counts),
    )
    filled = packing.context_tokens()
    summary = {
        # short contexts go last in the global order (a fixed-stride reader stays in step)
        "short_contexts": np.flatnonzero(filled < params.context_length)
        if params.pack == "split"
        else np.zeros(0, dtype=np.int64),
        "n_docs": len(members),
        "n_contexts": packing.n_contexts,
        "metrics": measured,
        "weights": weights,
        "every_doc_once": metrics.every_doc_once(
            packing, np.arange(len(members)), doc_tokens, len(sep_ids)
        ),
        "over_length": int((packing.context_tokens() > params.context_length).sum()),
        "pieces": int(len(packing.doc)),
    }
    ids = np.asarray(table.column("id").to_pylist(), dtype=object)[by_doc]
    # document d (doc order) holds token_ids[token_offsets[by_doc[d]]:...]; a piece its slice
    first_token = token_offsets[by_doc][packing.doc]
    piece_ids = [
        token_ids[a + s : a + e]
        for a, s, e in zip(
            first_token.tolist(), packing.start.tolist(), packing.end.tolist(), strict=True
        )
    ]
    piece_offsets = np.zeros(len(piece_ids) + 1, dtype=np.int64)
    np.cumsum(packing.end - packing.start, out=piece_offsets[1:])
    docs, n_pieces = np.unique(packing.doc, return_counts=True)
    split_docs = docs[n_pieces > 1].tolist()
    rows = export.context_rows(
        lm,
        sep_ids,
        {
            "context": packing.context,
            "doc": packing.doc,
            "start": packing.start,
            "end": packing.end,
            "sep": packing.sep,
            "n_tokens": doc_tokens[packing.doc],
        },
        np.concatenate(piece_ids) if piece_ids else np.zeros(0, dtype=np.uint32),
        piece_offsets,
        [sorted_texts[doc] for doc in packing.doc.tolist()],
        {doc: sorted_texts[doc] for doc in split_docs},
        pa.array(ids[packing.doc].tolist(), pa.string()),
    )
    prefix = metrics.CACHE_MAX_WORDS * 64  # all that metrics.word_ids reads of a text
    baseline = pa.table(
        {
            "doc": members,
            "n_tokens": doc_tokens,
            "label": pa.array(labels.tolist() if labels is not None else [None] * len(members)),
            "vector": _fixed(vectors),
            "kept_ids": _fixed(kept_ids),
            "text": [text[:prefix] for text in sorted_texts],
        }
    )
    bucket = _random_bucket(members, params.seed, n_buckets)
    buckets = [baseline.filter(pa.array(bucket == b)) for b in range(n_buckets)]
    return rows, summary, *buckets


@ray.remote
def _random_task(
    params: Params,
    corpus_counts: Counter,
    sep_tokens: int,
    has_labels: bool,
    *parts: pa.Table,
) -> tuple[dict[str, Any], dict[str, int]] | None:
    """The random baseline over one bucket of kept documents: `stages.random_packing`'s
    seeded order and packing, measured like the contexts (`metrics.packing_terms`)."""
    table = pa.concat_tables(parts)
    if not table.num_rows:
        return None
    table = table.take(pa.array(np.argsort(_column(table, "doc"), kind="stable")))
    members = _column(table, "doc")
    doc_tokens = _column(table, "n_tokens")
    packing = stages.random_packing(np.arange(len(members)), doc_tokens, params, sep_tokens)
    labels = np.asarray(table.column("label").to_pylist(), dtype=object) if has_labels else None
    return metrics.packing_terms(
        packing,
        _matrix(table.column("vector"), np.float32),
        doc_tokens,
        params.context_length,
        partition.localize(_matrix(table.column("kept_ids"), np.int64), members),
        labels,
        metrics.word_ids(table.column("text").to_pylist(), corpus_counts=corpus_counts),
    )


_pack_task_remote = ray.remote(_pack_task)


@ray.remote
def _split_task(rows: pa.Table, context_ids: np.ndarray, per_file: int, n_files: int) -> Any:
    """Give a partition's contexts their global ids and split them by output file."""
    rows = rows.set_column(0, "context", pa.array(context_ids, pa.int64()))
    file_of = context_ids // per_file
    parts = tuple(rows.filter(pa.array(file_of == j)) for j in range(n_files))
    return parts if n_files > 1 else parts[0]


@ray.remote
def _write_task(path: str, *parts: pa.Table) -> int:
    table = pa.concat_tables(parts).sort_by("context")
    pq.write_table(table, path)
    return table.num_rows


@dataclass
class Packed:
    """The context files, the partitions' summaries, the random buckets' `packing_terms`, the
    near-copy drops (doc, kept_doc, sim, reason, id, kept_id) and the stage counts."""

    names: list[str]
    summaries: list[dict[str, Any]]
    random: list[tuple]
    drops: dict[str, Any]
    counts: dict[str, Any]


def _home_inputs(ordered: Ordered) -> list[tuple]:
    """Per partition that packs (one whose chains all went elsewhere packs none): (home, its
    path, its segments (origin, start, length, reverse) in final order, its number of content
    tables, its content tables then the rows each sender picked for it, senders ascending)."""
    layout = ordered.stitching
    sent = layout.home != layout.origin
    picked = {}
    for origin in np.unique(layout.origin[sent]).tolist():
        leaving = sent & (layout.origin == origin)
        receivers = np.unique(layout.home[leaving]).tolist()
        masks = [leaving & (layout.home == home) for home in receivers]
        refs = _pick_task.options(num_returns=len(receivers)).remote(
            [layout.start[m] for m in masks],
            [layout.length[m] for m in masks],
            [layout.reverse[m] for m in masks],
            ordered.paths[origin],
            *ordered.content[origin],
        )
        picked.update(
            zip([(origin, h) for h in receivers], _refs(refs, len(receivers)), strict=True)
        )
    homes = []
    for home in np.unique(layout.home).tolist():
        mine = layout.home == home
        senders = sorted(o for o, h in picked if h == home)
        segments = tuple(
            column[mine] for column in (layout.origin, layout.start, layout.length, layout.reverse)
        )
        parts = [*ordered.content[home], *[picked[(o, home)] for o in senders]]
        homes.append((home, ordered.paths[home], segments, len(ordered.content[home]), parts))
    return homes


def _no_drops() -> dict[str, Any]:
    return {
        "doc": np.zeros(0, np.int64),
        "kept_doc": np.zeros(0, np.int64),
        "sim": [],
        "reason": [],
        "id": [],
        "kept_id": [],
    }


def _near_copies(homes: list[tuple]) -> dict[str, Any]:
    """The `original` ordering's near-copy filter along every home partition's final path."""
    found = _get(
        [
            _near_copy_task.remote(path, segments, home, n_content, *parts)
            for home, path, segments, n_content, parts in homes
        ]
    )
    drops = _no_drops()
    for part in found:
        for key, values in drops.items():
            drops[key] = (
                np.concatenate([values, part[key]])
                if isinstance(values, np.ndarray)
                else values + list(part[key])
            )
    return drops


def pack_stage(
    ordered: Ordered,
    params: Params,
    label_field: str | None,
    staging: Path,
    options: RayOptions,
    report: Report,
) -> Packed:
    """Drop `original`'s near copies along each partition's final path, pack every partition,
    shuffle context ids globally, write the context files, and measure the random baseline:
    the kept documents in seeded random buckets (one per PARTITION_DOCS, so below that one: the
    local engine's exact baseline), each packed in a seeded random order."""
    homes = _home_inputs(ordered)
    drops = _near_copies(homes) if params.order == "original" else _no_drops()
    drops_ref = ray.put(np.sort(drops["doc"]))
    # the corpus-wide unigram model of context_cache_gain: counts from the partitions, merged
    corpus_counts: Counter = Counter()
    for counted in _get(
        [
            _count_words_task.remote(path, drops_ref, *content)
            for path, content in zip(ordered.paths, ordered.content, strict=True)
        ]
    ):
        corpus_counts.update(counted)
    counts_ref = ray.put(corpus_counts)
    del corpus_counts
    n_kept = ordered.counts["ordered"] - len(drops["doc"])
    n_buckets = max(1, math.ceil(n_kept / PARTITION_DOCS))
    tasks = [
        _pack_task_remote.options(num_returns=2 + n_buckets).remote(
            path,
            segments,
            home,
            params,
            label_field,
            counts_ref,
            drops_ref,
            n_buckets,
            n_content,
            *parts,
        )
        for home, path, segments, n_content, parts in homes
    ]
    summaries = []
    for done, task in enumerate(tasks, start=1):
        summaries.append(_get(task[1]))
        report(done, len(tasks) + 1)
    sep_tokens = len(stages.separator_for(params))
    random_parts = [
        _random_task.remote(
            params, counts_ref, sep_tokens, label_field is not None, *[t[2 + b] for t in tasks]
        )
        for b in range(n_buckets)
    ]
    n_contexts = sum(s["n_contexts"] for s in summaries)
    offsets = np.cumsum([0] + [s["n_contexts"] for s in summaries])
    new_ids = _global_context_ids(summaries, offsets, params)
    per_file = options.contexts_per_file
    n_files = max(1, math.ceil(n_contexts / per_file))
    split = [
        _refs(
            _split_task.options(num_returns=n_files).remote(
                rows, new_ids[offsets[p] : offsets[p + 1]], per_file, n_files
            ),
            n_files,
        )
        for p, (rows, *_) in enumerate(tasks)
    ]
    names = [f"train-{j:05d}-of-{n_files:05d}.parquet" for j in range(n_files)]
    (staging / export.DATA_FOLDER).mkdir()
    written = _get(
        [
            _write_task.remote(
                str(staging / export.DATA_FOLDER / name), *[parts[j] for parts in split]
            )
            for j, name in enumerate(names)
        ]
    )
    report(len(tasks) + 1, len(tasks) + 1)
    counts = {
        "contexts": n_contexts,
        "files": n_files,
        "pieces": int(sum(s["pieces"] for s in summaries)),
        "written_rows": int(sum(written)),
        "near_copies_dropped": len(drops["doc"]),
    }
    random = [part for part in _get(random_parts) if part is not None]
    return Packed(names, summaries, random, drops, counts)


def _global_context_ids(
    summaries: list[dict[str, Any]], offsets: np.ndarray, params: Params
) -> np.ndarray:
    """New ids for the partitions' contexts (concatenated): shuffled with the seed, except
    that short contexts (one per partition in `split` mode) take the last ids."""
    n_contexts = int(offsets[-1])
    short = np.zeros(n_contexts, dtype=bool)
    for summary, first in zip(summaries, offsets[:-1].tolist(), strict=False):
        short[first + np.asarray(summary["short_contexts"], dtype=np.int64)] = True
    full, partial = np.flatnonzero(~short), np.flatnonzero(short)
    if params.shuffle:
        full = full[np.random.default_rng(params.seed).permutation(len(full))]
    new_ids = np.empty(n_contexts, dtype=np.int64)
    new_ids[np.concatenate([full, partial])] = np.arange(n_contexts)
    return new_ids


# ---------------------------------------------------------------------------------------------
# metrics, export extras, the whole run
# ---------------------------------------------------------------------------------------------


def combine_metrics(
    summaries: list[dict[str, Any]],
    random_parts: list[tuple],
    corpus: Corpus,
    n_removed: int,
    params: Params,
) -> dict[str, Any]:
    """The metrics of DESIGN.md (the keys of `stages.compute_metrics`) from the partitions'
    and the random buckets' `metrics.packing_terms`: contexts never span partitions (nor
    buckets), so `metrics.combine_packing_metrics` gives the whole packing's metrics exactly."""
    n_kept = sum(s["n_docs"] for s in summaries)
    once = all(s["every_doc_once"] for s in summaries) and (
        n_kept + n_removed == corpus.n_documents
    )
    current = metrics.combine_packing_metrics([(s["metrics"], s["weights"]) for s in summaries])
    random = metrics.combine_packing_metrics(random_parts)
    counts = {
        "n_documents": corpus.n_documents,
        "n_rejected": corpus.rejects.num_rows,
        "n_duplicates": int(n_removed),
        "n_kept": int(n_kept),
        "n_contexts": int(sum(s["n_contexts"] for s in summaries)),
        "every_doc_once": bool(once),
    }
    return metrics.report(
        counts, current, random, corpus.label_field, stages.report_parameters(params)
    )


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "wb") as handle:
        for row in rows:
            handle.write(orjson.dumps(row) + b"\n")


def _write_removed(
    staging: Path, corpus: Corpus, removed: Removed, drops: dict[str, Any], params: Params
) -> None:
    """removed/ as the local export writes it: the duplicates, then the order stage's drops
    (with their reason), then the rejects."""
    by_doc = np.argsort(removed.doc)
    reason = f"semantic duplicate (cosine >= {params.dedup_threshold})"
    rows = [
        {
            "id": removed.ids[i],
            "kept_id": removed.kept_ids[i],
            "sim": float(removed.sim[i]),
            "reason": reason,
        }
        for i in by_doc
    ]
    rows += [
        {"id": doc_id, "kept_id": kept_id, "sim": float(sim), "reason": why}
        for _, doc_id, kept_id, sim, why in sorted(
            zip(
                drops["doc"].tolist(),
                drops["id"],
                drops["kept_id"],
                drops["sim"],
                drops["reason"],
                strict=True,
            )
        )
    ]
    folder = staging / export.REMOVED_FOLDER
    folder.mkdir()
    _write_jsonl(folder / "duplicates.jsonl", rows)
    _write_jsonl(folder / "rejects.jsonl", corpus.rejects.to_pylist())


def resolve_partitions(requested: int | None, n_kept: int, n_lists: int) -> int:
    """P: the requested count (at most one per IVF list), else one per PARTITION_DOCS."""
    if requested is not None and requested < 1:
        raise IcpError(f"--partitions {requested}: must be at least 1")
    wanted = requested or math.ceil(n_kept / PARTITION_DOCS)
    return max(1, min(wanted, n_lists))


def run_pipeline(
    inputs: list[str],
    params: Params,
    out: str | Path,
    options: RayOptions | None = None,
    overwrite: bool = False,
    progress: ProgressFactory = _no_progress,
) -> tuple[list[StageOutcome], dict[str, Any]]:
    """Run ingest .. pack on Ray and write the export folder `out`.

    `out` receives what `icp export --format parquet` writes (context rows in
    `data/train-*-of-*.parquet` shards, removed/, the dataset card, manifest.json), plus
    `embeddings.parquet/` when the run embedded (pass it back as --vectors to skip that).

    Returns:
        The stage outcomes and the manifest (whose "metrics" is what `icp metrics` reports).

    Raises:
        IcpError: bad parameters or input, `out` exists without overwrite, a task's input error.
    """
    options = options or RayOptions()
    params = params.validate()
    stages.lm_tokenizer(params)  # a missing tokenizer fails here, not in a task
    with export.staged_folder(out, overwrite) as staging, ray_session(options):
        outcomes, manifest = _run_stages(inputs, params, staging, options, progress)
    return outcomes, manifest


def _run_stages(
    inputs: list[str],
    params: Params,
    staging: Path,
    options: RayOptions,
    progress: ProgressFactory,
) -> tuple[list[StageOutcome], dict[str, Any]]:
    outcomes: list[StageOutcome] = []

    def timed(stage: str, counts: dict[str, Any], started: float) -> None:
        outcomes.append(StageOutcome(stage, "ran", time.time() - started, counts))
        log.info("%s: %s (%.1fs)", stage, counts, time.time() - started)

    started = time.time()
    corpus = ingest_stage(inputs, params, progress("ingest"))
    timed("ingest", corpus.counts, started)

    started = time.time()
    keep_embeddings = not params.vectors
    work = staging / "_work"  # removed before the folder gets its final name
    folder = staging / "embeddings.parquet" if keep_embeddings else work / "embeddings"

    embed_counts = embed_stage(corpus, params, options, folder, progress("embed"))
    timed("embed", embed_counts, started)

    started = time.time()
    searched, lists, knn_counts = knn_stage(corpus, params, folder, work, options, progress("knn"))
    timed("knn", knn_counts, started)

    started = time.time()
    removed = dedup_stage(searched, params, corpus.n_documents)
    groups = len(np.unique(removed.kept_doc))
    timed("dedup", {"duplicates": int(len(removed.doc)), "groups": groups}, started)

    started = time.time()
    n_partitions = resolve_partitions(
        options.partitions, corpus.n_documents - len(removed.doc), knn_counts["ivf_lists"]
    )
    ordered = order_stage(
        searched,
        lists,
        removed,
        params,
        knn_counts["k_max"],
        n_partitions,
        options.stitch,
        progress("order"),
    )
    timed("order", ordered.counts, started)

    started = time.time()
    packed = pack_stage(ordered, params, corpus.label_field, staging, options, progress("pack"))
    timed("pack", packed.counts, started)
    names, summaries = packed.names, packed.summaries

    started = time.time()
    n_removed = len(removed.doc) + len(packed.drops["doc"])
    result = combine_metrics(summaries, packed.random, corpus, n_removed, params)
    if any(s["over_length"] for s in summaries):
        raise IcpError("internal check failed: a context exceeds --context-length")
    _write_removed(staging, corpus, removed, packed.drops, params)
    shutil.rmtree(work, ignore_errors=True)
    export.write_dataset_card(
        staging, "parquet", params.context_length, stages.lm_tokenizer(params)
    )
    written = _manifest(staging, params, names, corpus, outcomes, result, embed_counts, knn_counts)
    manifest.write(staging, written)
    timed("metrics", {k: v for k, v in result.items() if not isinstance(v, dict)}, started)
    return outcomes, written


def _manifest(
    staging: Path,
    params: Params,
    names: list[str],
    corpus: Corpus,
    outcomes: list[StageOutcome],
    result: dict[str, Any],
    embed_counts: dict[str, Any],
    knn_counts: dict[str, Any],
) -> dict[str, Any]:
    """The same manifest the local export writes (`icp_core.manifest`), Ray's run details
    under `run`."""
    lm = stages.lm_tokenizer(params)
    sep_ids = lm.separator_ids(params.separator)
    resolved = params.to_dict()
    name, path = tokenizer.resolve(params.tokenizer)
    resolved.update(
        index=knn_counts["index"],
        device=None if params.vectors else embed_counts.get("device"),
        tokenizer=name if name in tokenizer.BUILTINS else str(path),
    )
    cpus, gpus = _cluster_cpus_gpus()
    return manifest.build(
        engine="ray",
        fmt="parquet",
        parameters=resolved,
        model=manifest.model_info(params),
        tokenizer=manifest.tokenizer_info(lm, sep_ids, lm.pad_id()),
        inputs=[
            {
                **source,
                "source": str(Path(source["source"]).resolve()),
                "hash_algorithm": "blake2b-128",
                "text_field": params.text_field,
                "id_field": params.id_field,
            }
            for source in corpus.sources
        ],
        counts={"n_contexts": result["n_contexts"], "shards": len(names)},
        metrics=result,
        folder=staging,
        extra={
            "export": {"shard_size": CONTEXTS_PER_FILE, "drop_last": False},
            "dropped_last": None,
            "run": {
                "stages": [
                    {"stage": o.stage, "seconds": round(o.seconds, 3), "counts": o.counts}
                    for o in outcomes
                ],
                "cluster": {"nodes": len(ray.nodes()), "cpus": cpus, "gpus": gpus},
            },
        },
    )
