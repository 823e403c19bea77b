"""Order: arrange documents in a path so that neighbours in the path are similar.

`traverse(neighbor_ids, neighbor_sims, method)` is the stable entry point; each method is one
private function. Graph conventions shared by every method:

- The graph is undirected: i and j are joined when either lists the other among its top-k;
  the weight is the larger of the two listed similarities.
- "Degree" is the number of distinct documents a document is joined to in that graph.
- Ties are broken by the lower document index (most similar first, then lowest id), so every
  method is deterministic for a given input and seed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from icp_core import _kernels
from icp_core.errors import IcpError

# The authors' script follows ranks 1..9 of a self-included faiss list: columns 0..8 here,
# and cuts chains at 21 documents.
ORIGINAL_MAX_RANK = 9
ORIGINAL_CHAIN_MAX = 21


def _validate(neighbor_ids: np.ndarray, neighbor_sims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids = np.asarray(neighbor_ids)
    sims = np.asarray(neighbor_sims)
    if ids.ndim != 2 or sims.shape != ids.shape:
        raise IcpError(
            f"neighbor_ids {ids.shape} and neighbor_sims {sims.shape} must be equal (N, k) arrays"
        )
    n_docs = ids.shape[0]
    if ids.size and (ids.max() >= n_docs or ids.min() < -1):
        raise IcpError(f"neighbor ids must lie in -1..{n_docs - 1}")
    # int32 halves the memory of every pass; ids beyond 2**31 need int64
    id_type = np.int32 if n_docs < 2**31 - 1 else np.int64
    return (
        np.ascontiguousarray(ids, dtype=id_type),
        np.ascontiguousarray(sims, dtype=np.float32),
    )


def build_graph(
    neighbor_ids: np.ndarray, neighbor_sims: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The undirected kNN graph as CSR: (indptr, neighbors, weights), rows best first."""
    ids, sims = _validate(neighbor_ids, neighbor_sims)
    return _kernels.build_undirected_csr(ids, sims)


def _order_icp(ids: np.ndarray, sims: np.ndarray, seed: int) -> np.ndarray:
    """Algorithm 1 of Shi et al.: greedy max-similarity walk with min-degree restarts."""
    return _kernels.icp_order(ids, sims)


def _order_original(ids: np.ndarray, sims: np.ndarray, seed: int) -> np.ndarray:
    """The authors' released sort.py: own list ranks 1..9, lowest-id restarts, chains of at
    most 21 docs, then short chains' docs re-inserted before a neighbour in another chain.

    The script's near-copy text filter needs the texts; `stages.run_order` applies it.
    """
    order, chain_starts = _kernels.original_chains(ids, ORIGINAL_MAX_RANK, ORIGINAL_CHAIN_MAX)
    return _kernels.original_merge(ids, order, chain_starts, ORIGINAL_MAX_RANK, ORIGINAL_CHAIN_MAX)


def _order_random(ids: np.ndarray, sims: np.ndarray, seed: int) -> np.ndarray:
    """A seeded random permutation: what the usual pretraining pipeline does."""
    return np.random.default_rng(seed).permutation(ids.shape[0]).astype(np.int64)


METHODS: dict[str, Callable[[np.ndarray, np.ndarray, int], np.ndarray]] = {
    "icp": _order_icp,
    "original": _order_original,
    "random": _order_random,
}


def traverse(
    neighbor_ids: np.ndarray, neighbor_sims: np.ndarray, method: str = "icp", seed: int = 0
) -> np.ndarray:
    """Order documents by a walk over their kNN graph.

    Args:
        neighbor_ids: (N, k) int, row i = doc i's neighbours best first, -1 = none.
        neighbor_sims: (N, k) float similarities matching neighbor_ids.
        method: one of `METHODS` ("icp" = Algorithm 1 of the paper, "original" = the authors'
            released script, "random").
        seed: used by methods with randomness.

    Returns:
        (N,) int64 permutation of 0..N-1.

    >>> ids = np.array([[1, 2], [0, -1], [0, -1], [-1, -1]])
    >>> sims = np.array([[0.9, 0.5], [0.9, 0], [0.5, 0], [0, 0]], dtype=np.float32)
    >>> traverse(ids, sims).tolist()
    [3, 1, 0, 2]
    """
    if method not in METHODS:
        raise IcpError(f"unknown order method '{method}'; choose one of {', '.join(METHODS)}")
    ids, sims = _validate(neighbor_ids, neighbor_sims)
    if ids.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    return METHODS[method](ids, sims, seed)


def transitions_on_edges(
    order: np.ndarray, neighbor_ids: np.ndarray, neighbor_sims: np.ndarray
) -> np.ndarray:
    """(len(order),) bool: whether each step of `order` follows a kNN edge (False at 0)."""
    indptr, nbr, _ = build_graph(neighbor_ids, neighbor_sims)
    return _kernels.transitions_on_edges(indptr, nbr, np.ascontiguousarray(order, dtype=np.int64))
