"""kNN: each document's top-k most similar documents (inner product of unit vectors = cosine).

`auto` searches exactly (faiss IndexFlatIP) up to `EXACT_MAX_DOCS` documents and with an
inverted-file index above (`ivf`); its settings come from one function, `ivf_settings(n, d)`,
which the Ray engine uses too. Measured in benchmarks/bench_knn.py (BENCHMARKS.md):

- `ivf` = IndexIVFPQFastScan: 4-bit product-quantizer codes of 4 dimensions each (48 bytes
  per 384-d vector, by residual), scanned 32 at a time in SIMD registers. Every document is
  a query, so the scan is most of the work: the 8-bit scalar codes used before took ~0.5 ms
  per query at 1M (about 20 minutes on two cores), the 4-bit codes ~7x less.
- lists = 2 sqrt(N) (2,000 at 1M): the coarse search (each document against every centroid,
  once to file it and once to query) costs N x lists dot products, the dominant cost at 1M
  with the 4 sqrt(N) lists used before; fewer lists make each probe read more codes, which
  the fast scan affords.
- k-means on 32 points per list, 10 iterations; nprobe = max(32, lists / 64): recall@10
  depends mostly on nprobe (real all-MiniLM vectors, 47k: 0.94 at 16, 0.96 at 32 probes).
- the codes pick RERANK_FACTOR x (k + 1) candidates, whose similarities are then computed
  exactly from the float vectors: the stored sims are exact (dedup thresholds and edge
  weights depend on them) and the codes' rounding no longer reorders near ties. The re-rank
  is a compiled kernel reading the candidates' vectors in place: as a numpy einsum over
  gathered rows it was over half of the 1M run (311 s; 144 s with the kernel).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from icp_core import _kernels
from icp_core.errors import IcpError

log = logging.getLogger(__name__)

INDEXES = ("auto", "flat", "ivf", "hnsw")
EXACT_MAX_DOCS = 50_000
IVF_MIN_PROBES = 32
RERANK_FACTOR = 6
_QUERY_BATCH = 8192

Report = Callable[[int, int], None]


def _noop(done: int, total: int) -> None:
    return None


# indexes whose build draws random numbers (the IVF training sample): their results depend
# on the seed
SEEDED_INDEXES = ("ivf",)


def resolve_index(index: str, n_docs: int) -> str:
    """The concrete index `auto` stands for at this corpus size."""
    if index not in INDEXES:
        raise IcpError(f"unknown index '{index}'; choose one of {', '.join(INDEXES)}")
    if index != "auto":
        return index
    return "flat" if n_docs <= EXACT_MAX_DOCS else "ivf"


@dataclass(frozen=True)
class IvfSettings:
    """How the `ivf` index is built and searched for one corpus (see `ivf_settings`)."""

    lists: int  # inverted lists (k-means centroids)
    train_points: int  # vectors sampled to train the centroids and the 4-bit codes
    nprobe: int  # lists searched per query
    candidates_per_k: int  # candidates per wanted neighbour, re-ranked exactly


def ivf_settings(n_docs: int, dim: int) -> IvfSettings:
    """The `ivf` index's settings for n_docs vectors of dimension dim: the one place that
    decides them, for the single-machine kNN and the Ray engine alike (see the module
    docstring for the measurements behind each number)."""
    del dim  # measured at 384; the settings do not depend on it there
    lists = max(1, min(int(2 * math.sqrt(n_docs)), n_docs // 39))
    train_points = min(n_docs, max(32 * lists, 10_000))
    nprobe = min(lists, max(IVF_MIN_PROBES, lists // 64))
    return IvfSettings(lists, train_points, nprobe, RERANK_FACTOR)


def ivf_lists(n_docs: int) -> int:
    """Inverted lists of the `ivf` index for a corpus of n_docs (see `ivf_settings`)."""
    return ivf_settings(n_docs, 384).lists


def _build_index(vectors: np.ndarray, kind: str) -> Any:
    import faiss

    dim = vectors.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    else:  # hnsw
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = 128
    index.add(vectors)
    return index


def new_ivf_index(dim: int, lists: int) -> Any:
    """An untrained `ivf` index: `lists` coarse lists, 4-bit fast-scan PQ codes by residual,
    with the k-means settings of `ivf_settings` (train it on `train_points` vectors)."""
    import faiss

    # 4 dimensions per 4-bit code at 384 (96 codes, 48 bytes); 2 below 128 dimensions
    per_code = 4 if dim >= 128 else 2
    sub_quantizers = next(m for m in (dim // per_code, dim // 2, dim) if m and dim % m == 0)
    index = faiss.IndexIVFPQFastScan(
        faiss.IndexFlatIP(dim), dim, lists, sub_quantizers, 4, faiss.METRIC_INNER_PRODUCT
    )
    index.cp.niter = 10
    index.cp.min_points_per_centroid = 16  # the sample is enough; no faiss warning
    return index


def _build_ivf(vectors: np.ndarray, seed: int) -> Any:
    """An IVF index of 4-bit fast-scan PQ codes (by residual) over `vectors`."""
    n_docs, dim = vectors.shape
    settings = ivf_settings(n_docs, dim)
    index = new_ivf_index(dim, settings.lists)
    rng = np.random.default_rng(seed)
    sample = vectors[np.sort(rng.choice(n_docs, settings.train_points, replace=False))]
    index.train(sample)
    index.nprobe = settings.nprobe
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
        index: "auto" (exact up to 50k documents, IVF above; see the module docstring),
            "flat", "ivf" or "hnsw".
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
    searched = min(k, n_docs - 1) + 1  # one extra column for the document itself
    if kind == "ivf":
        faiss_index = _build_ivf(vectors, seed)
        candidates = min(searched * RERANK_FACTOR, n_docs)
    else:
        faiss_index = _build_index(vectors, kind)
        candidates = searched
    for start in range(0, n_docs, _QUERY_BATCH):
        stop = min(start + _QUERY_BATCH, n_docs)
        found_sims, found_ids = faiss_index.search(vectors[start:stop], candidates)
        if kind == "ivf":
            pick, found_sims = rerank(vectors[start:stop], found_ids, vectors, searched)
            found_ids = np.take_along_axis(found_ids, pick, axis=1)
            found_sims[found_ids < 0] = 0.0
        kept_ids, kept_sims = drop_self(found_ids, found_sims, np.arange(start, stop))
        ids[start:stop, : searched - 1] = kept_ids
        sims[start:stop, : searched - 1] = kept_sims
        report(stop, n_docs)
    sims[ids < 0] = 0.0
    log.info("knn: %d docs, k=%d, index=%s, %.1fs", n_docs, k, kind, time.perf_counter() - started)
    return ids, sims


def rerank(
    queries: np.ndarray, candidates: np.ndarray, base: np.ndarray, keep: int
) -> tuple[np.ndarray, np.ndarray]:
    """The exact best `keep` of each query's candidates (ties to the lower candidate, -1 last).

    Args:
        queries: (n, d) float32; candidates: (n, c) int64 rows of `base`, -1 = none.
        base: (m, d) float32 (a memory map is fine: only the candidates' rows are read).

    Returns:
        pick: (n, keep) columns of `candidates`, best first; sims: (n, keep) float32 exact
        similarities (-inf where the candidate is -1).
    """
    if keep > candidates.shape[1]:
        raise ValueError(f"keep = {keep} exceeds the {candidates.shape[1]} candidates")
    pick = np.empty((len(candidates), keep), dtype=np.int64)
    sims = np.empty((len(candidates), keep), dtype=np.float32)
    _kernels.rerank_candidates(
        np.ascontiguousarray(queries, dtype=np.float32),
        np.ascontiguousarray(candidates, dtype=np.int64),
        np.asarray(base, dtype=np.float32),
        pick,
        sims,
    )
    return pick, sims


def drop_self(
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
