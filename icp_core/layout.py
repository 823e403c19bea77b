"""Layout: 2-D coordinates of every document for the app's map, from the stored kNN graph.

UMAP (umap-learn) is given the kNN lists the `knn` stage already stored (`precomputed_knn`),
so it never searches neighbours again; the result depends only on the neighbour lists, which
is why the `layout` stage runs once per embedding set / neighbour search and is reused when
k, the ordering or the packing change.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable

import numpy as np

log = logging.getLogger(__name__)

Report = Callable[[int, int], None]
# UMAP's own default neighbourhood; the stored lists are at least 32 deep, so it is a slice.
LAYOUT_NEIGHBORS = 15
# Below this, UMAP's spectral start fails (k >= N) and a 2-D map says little anyway: the two
# principal components of the vectors are shown instead.
MIN_UMAP_DOCS = 10


def _noop(done: int, total: int) -> None:
    return None


def layout_2d(
    neighbor_ids: np.ndarray,
    neighbor_sims: np.ndarray,
    vectors: np.ndarray,
    n_neighbors: int = LAYOUT_NEIGHBORS,
    seed: int = 0,
    report: Report = _noop,
) -> np.ndarray:
    """2-D map coordinates: UMAP over the given kNN lists (cosine distance = 1 - sim).

    Args:
        neighbor_ids: (N, k) int, row i = document i's neighbours best first, self excluded,
            -1 = none. Only the first `n_neighbors - 1` columns are used.
        neighbor_sims: (N, k) float, matching similarities.
        vectors: (N, d) float32 unit vectors (UMAP places disconnected parts of the graph
            with them).
        n_neighbors: UMAP's neighbourhood size, self included.
        seed: UMAP's random state (the map is reproducible).

    Returns:
        (N, 2) float32 coordinates, finite.
    """
    ids = np.asarray(neighbor_ids)
    sims = np.asarray(neighbor_sims, dtype=np.float32)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n_docs = len(vectors)
    if ids.shape[0] != n_docs or sims.shape != ids.shape:
        raise ValueError(f"neighbor arrays {ids.shape}/{sims.shape} do not match {n_docs} vectors")
    report(0, 1)
    started = time.monotonic()
    if n_docs < MIN_UMAP_DOCS:
        coords = _principal_components(vectors)
    else:
        coords = _umap(ids, sims, vectors, n_neighbors, seed)
    log.info("layout: %d documents, %.1f s", n_docs, time.monotonic() - started)
    report(1, 1)
    return coords


def _umap(
    ids: np.ndarray, sims: np.ndarray, vectors: np.ndarray, n_neighbors: int, seed: int
) -> np.ndarray:
    import umap

    n_docs = len(vectors)
    width = max(2, min(n_neighbors, n_docs - 1, ids.shape[1] + 1))
    # UMAP expects each point to be its own first neighbour, at distance 0
    knn_ids = np.concatenate(
        [np.arange(n_docs, dtype=np.int64)[:, None], ids[:, : width - 1].astype(np.int64)], axis=1
    )
    knn_dists = np.concatenate(
        [np.zeros((n_docs, 1), np.float32), 1.0 - sims[:, : width - 1]], axis=1
    )
    knn_dists = np.maximum(knn_dists, 0.0)
    knn_dists[knn_ids < 0] = np.inf  # padding: never a neighbour
    with warnings.catch_warnings():
        # umap warns that a precomputed graph cannot transform new data and that a fixed
        # random_state runs single-threaded: both are what we want
        warnings.simplefilter("ignore")
        reducer = umap.UMAP(
            n_neighbors=width,
            metric="cosine",
            precomputed_knn=(knn_ids, knn_dists),
            random_state=seed,
        )
        coords = reducer.fit_transform(vectors)
    return np.ascontiguousarray(coords, dtype=np.float32)


def _principal_components(vectors: np.ndarray) -> np.ndarray:
    coords = np.zeros((len(vectors), 2), dtype=np.float32)
    if len(vectors) < 2:
        return coords
    centered = vectors - vectors.mean(axis=0)
    _, _, components = np.linalg.svd(centered, full_matrices=False)
    projected = centered @ components[:2].T
    coords[:, : projected.shape[1]] = projected
    return coords
