"""kNN: each document's top-k most similar documents (inner product of unit vectors = cosine).

Exact search below `EXACT_MAX_DOCS`, an IVF index above it (trained on a sample, probed
widely enough for recall@10 >= 0.95 on real embeddings; see benchmarks/bench_knn.py).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import numpy as np

from icp_core.errors import IcpError

log = logging.getLogger(__name__)

INDEXES = ("auto", "flat", "ivf", "hnsw")
EXACT_MAX_DOCS = 50_000
_QUERY_BATCH = 8192

Report = Callable[[int, int], None]


def _noop(done: int, total: int) -> None:
    return None


def resolve_index(index: str, n_docs: int) -> str:
    """The concrete index `auto` stands for at this corpus size."""
    if index not in INDEXES:
        raise IcpError(f"unknown index '{index}'; choose one of {', '.join(INDEXES)}")
    if index != "auto":
        return index
    return "flat" if n_docs <= EXACT_MAX_DOCS else "ivf"


def _build_index(vectors: np.ndarray, kind: str, seed: int):
    import faiss

    n_docs, dim = vectors.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = 128
    else:
        n_lists = max(1, min(int(4 * math.sqrt(n_docs)), n_docs // 39))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, n_lists, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        sample_size = min(n_docs, 64 * n_lists)
        sample = vectors[np.sort(rng.choice(n_docs, sample_size, replace=False))]
        index.train(sample)
        index.nprobe = min(n_lists, max(8, n_lists // 16))
    index.add(vectors)
    return index


def knn_search(
    vectors: np.ndarray,
    k: int,
    index: str = "auto",
    seed: int = 0,
    report: Report = _noop,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k neighbours of every row, self excluded, best first.

    Args:
        vectors: (N, d) float32, rows L2-normalised.
        k: neighbours per document (>= 1). When k >= N, the missing columns are -1.
        index: "auto" (exact up to 50k documents, IVF above), "flat", "ivf" or "hnsw".
        seed: seed for the IVF training sample.
        report: `report(done, total)` after each query batch.

    Returns:
        ids: (N, k) int64, -1 where there is no neighbour.
        sims: (N, k) float32 cosine similarities, 0 where ids is -1.

    Raises:
        IcpError: k < 1, an unknown index, or vectors that are not a finite 2-D array.

    >>> v = np.array([[1, 0], [0.8, 0.6], [0, 1]], dtype=np.float32)
    >>> knn_search(v, 3)[0]
    array([[ 1,  2, -1],
           [ 0,  2, -1],
           [ 1,  0, -1]])
    """
    if k < 1:
        raise IcpError(f"k = {k}: k must be at least 1")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise IcpError(f"vectors must be a 2-D array, got shape {vectors.shape}")
    n_docs = vectors.shape[0]
    ids = np.full((n_docs, k), -1, dtype=np.int64)
    sims = np.zeros((n_docs, k), dtype=np.float32)
    if n_docs <= 1:
        return ids, sims
    if not np.isfinite(vectors).all():
        raise IcpError("vectors hold NaN or inf; re-embed or fix the imported vectors")
    kind = resolve_index(index, n_docs)
    started = time.perf_counter()
    faiss_index = _build_index(vectors, kind, seed)
    searched = min(k, n_docs - 1) + 1  # one extra column for the document itself
    for start in range(0, n_docs, _QUERY_BATCH):
        stop = min(start + _QUERY_BATCH, n_docs)
        found_sims, found_ids = faiss_index.search(vectors[start:stop], searched)
        kept_ids, kept_sims = _drop_self(found_ids, found_sims, np.arange(start, stop))
        ids[start:stop, : searched - 1] = kept_ids
        sims[start:stop, : searched - 1] = kept_sims
        report(stop, n_docs)
    sims[ids < 0] = 0.0
    log.info("knn: %d docs, k=%d, index=%s, %.1fs", n_docs, k, kind, time.perf_counter() - started)
    return ids, sims


def _drop_self(
    found_ids: np.ndarray, found_sims: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Remove each row's own id (or, when absent, its last column), keeping order."""
    is_self = found_ids == rows[:, None]
    # rows without themselves (exact ties, approximate search) lose their last column instead
    is_self[~is_self.any(axis=1), -1] = True
    keep = np.argsort(is_self, axis=1, kind="stable")[:, :-1]
    return (
        np.take_along_axis(found_ids, keep, axis=1),
        np.take_along_axis(found_sims, keep, axis=1),
    )
