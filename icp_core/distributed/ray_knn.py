"""Ray kNN: the local engine's index (`knn.new_ivf_index` sized by `knn.ivf_settings`: IVF lists,
4-bit fast-scan PQ codes, exact re-ranking of `RERANK_FACTOR` x (k + 1) candidates), cut into
shards so that no process holds the whole index, the driver least of all.

1. Sample tasks draw the training sample from the embedding blocks; one task trains the empty
   index on it (coarse centroids and PQ codebooks). The driver holds only that trained, empty
   index (the centroids: lists x d floats), never vectors.
2. One task per shard (consecutive blocks, at most `shard_docs` documents) adds its vectors to
   a copy of the trained index and writes three files: the index, the shard's float vectors
   and each document's IVF list (rows = doc - the shard's first doc). An exact (`flat`) run
   writes a flat index instead and needs no re-ranking.
3. One task per block assigns its queries' lists once and searches every shard (memory-mapped,
   so the tasks of a node share one copy); as in the local search, the 6 x (k + 1) best
   candidates by the codes, now merged over all shards, are re-ranked exactly (`knn.rerank`)
   from the shards' float vectors, ties to the lower doc. Results stay in the object store,
   keyed by doc; the driver gets per block the near-duplicate pairs and the kNN edge counts
   between IVF lists (the order stage's partitions group lists that share many edges).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from icp_core import knn, stages
from icp_core.distributed.ray_embed import block_content, block_dir, block_ranges, overlapping
from icp_core.distributed.ray_ingest import Corpus
from icp_core.distributed.ray_util import (
    RayOptions,
    Report,
    cluster_cpus_gpus,
    fetch,
    fixed_lists,
    to_array,
    to_matrix,
)
from icp_core.errors import IcpError
from icp_core.params import Params

_QUERY_BATCH = 8192
_RERANK_BATCH = 1024  # queries whose candidates' vectors are read at once (<= 200k rows)


@dataclass
class Searched:
    """One block's search result: `ref` holds (doc, id, text, label, vector, list, nbr_ids,
    nbr_sims) sorted by doc; the summary holds what the driver needs (n_docs, the
    near-duplicate pairs and their lists)."""

    ref: Any
    summary: dict[str, Any]


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


def _read_block(directory: Path) -> tuple[np.ndarray, np.ndarray]:
    """(doc, vectors) of one block, sorted by doc."""
    table = pq.read_table(directory, columns=["doc", "vector"])
    doc = to_array(table, "doc")
    by_doc = np.argsort(doc, kind="stable")
    return doc[by_doc], to_matrix(table.column("vector"), np.float32)[by_doc]


def _task_threads() -> None:
    import faiss

    faiss.omp_set_num_threads(
        max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
    )


@ray.remote
def _sample_task(directory: str, n_take: int, seed: int) -> np.ndarray:
    vectors = to_matrix(pq.read_table(directory, columns=["vector"]).column("vector"), np.float32)
    rows = np.random.default_rng(seed).choice(len(vectors), min(n_take, len(vectors)), False)
    return vectors[np.sort(rows)]


@ray.remote
def _train_task(n_lists: int, *samples: np.ndarray) -> np.ndarray:
    """`knn.new_ivf_index` trained on the sample, empty, serialised (faiss bytes)."""
    import faiss

    _task_threads()
    sample = np.concatenate(samples)
    index = knn.new_ivf_index(sample.shape[1], n_lists)
    index.train(sample)  # its coarse lists also define the order stage's partitions
    return faiss.serialize_index(index)


@ray.remote
def _shard_task(trained: np.ndarray, kind: str, directories: list[str], path: str) -> int:
    """Build one index shard over consecutive blocks and write it to `path`, with the shard's
    vectors (`path`.vectors.npy) and IVF lists (`path`.lists.npy), rows in doc order."""
    import faiss

    _task_threads()
    ivf = faiss.deserialize_index(trained)
    quantizer = ivf.quantizer  # owned by `ivf`, which must outlive it
    index = faiss.IndexIDMap(faiss.IndexFlatIP(ivf.d)) if kind == "flat" else ivf
    blocks = [_read_block(Path(directory)) for directory in directories]
    n_docs = sum(len(doc) for doc, _ in blocks)
    vectors_out = np.lib.format.open_memmap(
        path + ".vectors.npy", mode="w+", dtype=np.float32, shape=(n_docs, index.d)
    )
    lists_out = np.zeros(n_docs, dtype=np.int32)
    row = 0
    for doc, vectors in blocks:
        index.add_with_ids(vectors, doc)
        vectors_out[row : row + len(doc)] = vectors
        lists_out[row : row + len(doc)] = quantizer.search(vectors, 1)[1][:, 0]
        row += len(doc)
    vectors_out.flush()
    np.save(path + ".lists.npy", lists_out)
    faiss.write_index(index, path)
    return n_docs


def _merge_top(ids: np.ndarray, sims: np.ndarray, keep: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's best `keep` candidates, ties to the lower id, -1 last."""
    by_id = np.argsort(np.where(ids < 0, np.iinfo(np.int64).max, ids), axis=1, kind="stable")
    best = np.argsort(-np.take_along_axis(sims, by_id, axis=1), axis=1, kind="stable")
    pick = np.take_along_axis(by_id, best[:, :keep], axis=1)
    return np.take_along_axis(ids, pick, axis=1), np.take_along_axis(sims, pick, axis=1)


def _shard_candidates(
    shard: str, vectors: np.ndarray, probes: tuple, n_probe: int, n_candidates: int
) -> tuple[np.ndarray, np.ndarray]:
    """One shard's best `n_candidates` docs for each query by the index's own scores (the PQ
    codes' estimates in an IVF shard, exact in a flat one), -inf where there is none."""
    import faiss

    index = faiss.read_index(shard, faiss.IO_FLAG_MMAP)
    ids = np.empty((len(vectors), n_candidates), dtype=np.int64)
    sims = np.empty((len(vectors), n_candidates), dtype=np.float32)
    for lo in range(0, len(vectors), _QUERY_BATCH):
        hi = min(lo + _QUERY_BATCH, len(vectors))
        if isinstance(index, faiss.IndexIVF):
            index.nprobe = n_probe
            sims[lo:hi], ids[lo:hi] = index.search_preassigned(
                vectors[lo:hi], n_candidates, probes[1][lo:hi], probes[0][lo:hi]
            )
        else:
            sims[lo:hi], ids[lo:hi] = index.search(vectors[lo:hi], n_candidates)
    sims[ids < 0] = -np.inf
    return ids, sims


class _ShardRows:
    """The shards' per-document files (`path`.vectors.npy, `path`.lists.npy), memory-mapped,
    read by doc."""

    def __init__(self, shards: list[tuple[str, int]]):
        self.firsts = np.asarray([first for _, first in shards], dtype=np.int64)
        self.files = {
            name: [np.load(f"{path}.{name}.npy", mmap_mode="r") for path, _ in shards]
            for name in ("vectors", "lists")
        }

    def read(self, name: str, docs: np.ndarray) -> np.ndarray:
        """File `name`'s rows of `docs` (every doc >= 0)."""
        files = self.files[name]
        shard = np.searchsorted(self.firsts, docs, side="right") - 1
        rows = np.empty((len(docs), *files[0].shape[1:]), dtype=files[0].dtype)
        for s in np.unique(shard).tolist():
            mine = shard == s
            rows[mine] = files[s][docs[mine] - self.firsts[s]]
        return rows


def _rerank(
    vectors: np.ndarray, candidates: np.ndarray, shard_rows: _ShardRows, keep: int
) -> tuple[np.ndarray, np.ndarray]:
    """`knn.rerank` of the candidates (docs, -1 = none) merged over every shard, with their
    vectors read from the shards' files: the best `keep` docs and exact similarities."""
    ids = np.empty((len(vectors), keep), dtype=np.int64)
    sims = np.empty((len(vectors), keep), dtype=np.float32)
    for lo in range(0, len(vectors), _RERANK_BATCH):
        block = candidates[lo : lo + _RERANK_BATCH]
        valid = block >= 0
        needed, local = np.unique(block[valid], return_inverse=True)
        rows = np.full(block.shape, -1, dtype=np.int64)
        rows[valid] = local
        base = shard_rows.read("vectors", needed)
        pick, exact = knn.rerank(vectors[lo : lo + len(block)], rows, base, keep)
        ids[lo : lo + len(block)] = np.take_along_axis(block, pick, axis=1)
        sims[lo : lo + len(block)] = exact
    return ids, sims


@ray.remote(num_returns=2)
def _search_task(
    shards: list[tuple[str, int]],
    trained: np.ndarray,
    rerank: bool,
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
    ivf = faiss.deserialize_index(trained)  # owns the quantizer: keep it while searching
    n_lists = ivf.nlist
    probes = ivf.quantizer.search(vectors, n_probe)
    own_list = probes[1][:, 0]
    searched = min(k_max, n_docs - 1) + 1  # one extra column for the document itself
    ids = np.full((len(doc), k_max), -1, dtype=np.int64)
    sims = np.zeros((len(doc), k_max), dtype=np.float32)
    lists = np.full((len(doc), k_max), -1, dtype=np.int64)
    if n_docs > 1:
        # the local search's candidates: the best by the codes over all shards, then exact
        n_candidates = min(searched * knn.RERANK_FACTOR if rerank else searched, n_docs)
        top_ids = np.full((len(doc), n_candidates), -1, dtype=np.int64)
        top_sims = np.full((len(doc), n_candidates), -np.inf, dtype=np.float32)
        for shard, _ in shards:
            found, found_sims = _shard_candidates(shard, vectors, probes, n_probe, n_candidates)
            top_ids, top_sims = _merge_top(
                np.hstack([top_ids, found]), np.hstack([top_sims, found_sims]), n_candidates
            )
        shard_rows = _ShardRows(shards)
        if rerank:
            top_ids, top_sims = _rerank(vectors, top_ids, shard_rows, searched)
        kept_docs, kept_sims = knn.drop_self(top_ids[:, :searched], top_sims[:, :searched], doc)
        ids[:, : searched - 1] = kept_docs
        sims[:, : searched - 1] = kept_sims
        valid = kept_docs >= 0
        lists[:, : searched - 1][valid] = shard_rows.read("lists", kept_docs[valid])
    sims[ids < 0] = 0.0
    content = block_content(pieces, start, stop)
    table = pa.table(
        {
            "doc": doc,
            "id": content.column("id"),
            "text": content.column("text"),
            "label": content.column("label"),
            "vector": fixed_lists(vectors),
            "list": own_list,
            "nbr_ids": fixed_lists(ids),
            "nbr_sims": fixed_lists(sims),
        }
    )
    # kNN edges between IVF lists: the order stage groups lists that share many
    head_ids, head_sims, head_lists = ids[:, :k], sims[:, :k], lists[:, :k]
    valid = head_ids >= 0
    query_list = np.repeat(own_list.astype(np.int64), k)[valid.ravel()]
    pair_key, pair_count = np.unique(query_list * n_lists + head_lists[valid], return_counts=True)
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


def _shard_groups(blocks: list[tuple[int, int]], shard_docs: int) -> list[list[int]]:
    """Consecutive blocks grouped into shards of at most shard_docs documents (one at least)."""
    groups: list[list[int]] = [[]]
    filled = 0
    for block, (start, stop) in enumerate(blocks):
        if groups[-1] and filled + stop - start > shard_docs:
            groups.append([])
            filled = 0
        groups[-1].append(block)
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
    """Train the index on a sample (the trained, empty index is all the driver holds), build
    the index shards in tasks, and search every block against every shard in a task.

    Returns:
        The searched blocks, the IVF lists' sizes and edges, and the stage counts.
    """
    n_docs = corpus.n_documents
    kind = knn.resolve_index(params.index, n_docs)
    if kind == "hnsw":
        raise IcpError("--index hnsw is not available on the ray engine; use auto, flat or ivf")
    blocks = block_ranges(n_docs, options.block_docs)
    directories = [block_dir(folder, block) for block in range(len(blocks))]
    settings = knn.ivf_settings(n_docs, 384)  # measured at 384-d; d does not change them
    samples = [
        _sample_task.remote(
            str(directory),
            math.ceil(settings.train_points * (stop - start) / n_docs),
            params.seed + block,
        )
        for block, (directory, (start, stop)) in enumerate(zip(directories, blocks, strict=True))
    ]
    trained = fetch(
        _train_task.options(num_cpus=cluster_cpus_gpus()[0]).remote(settings.lists, *samples)
    )
    trained_ref = ray.put(trained)
    work.mkdir(parents=True, exist_ok=True)
    groups = _shard_groups(blocks, options.shard_docs)
    # (index file, first doc) per shard
    shards = [
        (str(work / f"knn-shard-{s:05d}.index"), blocks[g[0]][0]) for s, g in enumerate(groups)
    ]
    fetch(
        [
            _shard_task.remote(trained_ref, kind, [str(directories[b]) for b in group], path)
            for group, (path, _) in zip(groups, shards, strict=True)
        ]
    )
    # exact (flat) search probes no lists (one: the document's own, for the partitions)
    n_probe = 1 if kind == "flat" else settings.nprobe
    k_max = max(params.k, stages.KNN_MIN_STORED)
    tasks = [
        _search_task.remote(
            shards,
            trained_ref,
            kind == "ivf",
            n_probe,
            n_docs,
            str(directory),
            start,
            stop,
            k_max,
            params.k,
            params.dedup_threshold,
            *overlapping(corpus.shards, start, stop),
        )
        for directory, (start, stop) in zip(directories, blocks, strict=True)
    ]
    n_lists = settings.lists
    graph = ListGraph(
        n_lists, np.zeros(n_lists, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    )
    searched = []
    for table_ref, summary_ref in tasks:
        summary = fetch(summary_ref)
        graph.add(summary)
        searched.append(Searched(table_ref, summary))
        report(sum(s.summary["n_docs"] for s in searched), n_docs)
    counts = {
        "documents": n_docs,
        "k_max": k_max,
        "index": kind,
        "ivf_lists": n_lists,
        "ivf_probes": n_probe,
        "shards": len(shards),
    }
    return searched, graph, counts
