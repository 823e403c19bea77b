"""Order: arrange documents in a path so that neighbours in the path are similar.

`traverse(neighbor_ids, neighbor_sims, method)` is the stable entry point; each method is one
private function. Graph conventions shared by every method:

- The graph is undirected: i and j are joined when either lists the other among its top-k;
  the weight is the larger of the two listed similarities.
- "Degree" is the number of distinct documents a document is joined to in that graph.
- Ties are broken by the lower document index (most similar first, then lowest id), so every
  method is deterministic for a given input and seed.

Beyond the paper (measured in benchmarks/results/quality.md):

- `greedy`: greedy-edge max-TSP. Take kNN edges best first, keep one when both documents have
  fewer than two links and it closes no cycle; the resulting path fragments are joined end to
  end, first where two ends share a kNN neighbour (best two-hop similarity first).
- `greedy-lk`: `greedy`, then local search on the fragments before joining them: 2-opt and
  Lin-Kernighan-style ejection chains from fragment ends (link a free end to a neighbour,
  which drops one of its links, whose other end continues), every move along kNN edges and
  accepted only when it raises the summed similarity. The default.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from icp_core import _kernels, _order_kernels
from icp_core.errors import IcpError

# The authors' script follows ranks 1..9 of a self-included faiss list: columns 0..8 here,
# and cuts chains at 21 documents.
ORIGINAL_MAX_RANK = 9
ORIGINAL_CHAIN_MAX = 21
# greedy-lk's ejection chains: candidates per level (the depth is the length). Wider or deeper
# searches, or chains that also start by unlinking a document, gained little for 3-15 times
# the time (benchmarks/results/quality.md).
CHAIN_BREADTH = (5, 3, 1)
# Two-hop fragment joins look at this many neighbours of an end and of each neighbour.
TWO_HOP_WIDTH = 10


def _validate(neighbor_ids: np.ndarray, neighbor_sims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids = np.asarray(neighbor_ids)
    sims = np.asarray(neighbor_sims)
    if ids.ndim != 2 or sims.shape != ids.shape:
        raise IcpError(
            f"neighbor_ids {ids.shape} and neighbor_sims {sims.shape} must be equal (N, k) arrays"
        )
    n_docs = ids.shape[0]
    # int32 halves the memory of every pass; ids beyond 2**31 need int64
    id_type = np.int32 if n_docs < 2**31 - 1 else np.int64
    if ids.size and ids.dtype == np.int64 and id_type == np.int32:
        narrow = np.empty(ids.shape, dtype=np.int32)
        low, high = _kernels.narrow_ids(ids, narrow)  # check and copy in one parallel pass
    else:
        low, high = (ids.min(), ids.max()) if ids.size else (-1, -1)
        narrow = np.ascontiguousarray(ids, dtype=id_type)
    if high >= n_docs or low < -1:
        raise IcpError(f"neighbor ids must lie in -1..{n_docs - 1}")
    return narrow, np.ascontiguousarray(sims, dtype=np.float32)


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


def _greedy_links(indptr: np.ndarray, nbr: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Greedy-edge linear forest: (N, 2) links, edges taken by weight desc, then ids asc."""
    n_docs = indptr.shape[0] - 1
    rows = np.repeat(np.arange(n_docs, dtype=np.int64), np.diff(indptr))
    upper = rows < nbr  # each undirected edge once
    edge_a, edge_b, edge_w = rows[upper], nbr[upper].astype(np.int64), weight[upper]
    # edges come by a, then weight desc and b asc: a stable sort on weight keeps ties by (a, b)
    best_first = np.argsort(-edge_w, kind="stable")
    links = np.full((n_docs, 2), -1, dtype=np.int64)
    _order_kernels.join_ends(links, edge_a[best_first], edge_b[best_first])
    return links


def _join_fragments(
    links: np.ndarray, indptr: np.ndarray, nbr: np.ndarray, weight: np.ndarray
) -> np.ndarray:
    """Join fragment ends by two-hop similarity, then chain what is left by lowest id."""
    pair_a, pair_b, score = _order_kernels.two_hop_end_pairs(
        links, indptr, nbr, weight, TWO_HOP_WIDTH
    )
    best_first = np.lexsort((pair_b, pair_a, -score))
    _order_kernels.join_ends(links, pair_a[best_first], pair_b[best_first])
    return _order_kernels.chain_fragments(links)


def _order_greedy(ids: np.ndarray, sims: np.ndarray, seed: int) -> np.ndarray:
    """Greedy-edge max-TSP, fragments joined by two-hop similarity."""
    indptr, nbr, weight = _kernels.build_undirected_csr(ids, sims)
    links = _greedy_links(indptr, nbr, weight)
    return _join_fragments(links, indptr, nbr, weight)


def _order_greedy_lk(ids: np.ndarray, sims: np.ndarray, seed: int) -> np.ndarray:
    """Greedy-edge max-TSP improved by 2-opt and ejection chains, then joined."""
    indptr, nbr, weight = _kernels.build_undirected_csr(ids, sims)
    links = _greedy_links(indptr, nbr, weight)
    _order_kernels.improve_forest(
        links, indptr, nbr, weight, np.array(CHAIN_BREADTH, dtype=np.int64)
    )
    return _join_fragments(links, indptr, nbr, weight)


METHODS: dict[str, Callable[[np.ndarray, np.ndarray, int], np.ndarray]] = {
    "icp": _order_icp,
    "original": _order_original,
    "random": _order_random,
    "greedy": _order_greedy,
    "greedy-lk": _order_greedy_lk,
}


def traverse(
    neighbor_ids: np.ndarray, neighbor_sims: np.ndarray, method: str = "icp", seed: int = 0
) -> np.ndarray:
    """Order documents by a walk over their kNN graph.

    Args:
        neighbor_ids: (N, k) int, row i = doc i's neighbours best first, -1 = none.
        neighbor_sims: (N, k) float similarities matching neighbor_ids.
        method: one of `METHODS` ("icp" = Algorithm 1 of the paper, "original" = the authors'
            released script, "random", "greedy" = greedy-edge max-TSP, "greedy-lk" = greedy
            improved by local search; see the module docstring).
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


def are_knn_edges(first: np.ndarray, second: np.ndarray, neighbor_ids: np.ndarray) -> np.ndarray:
    """(P,) bool: whether each pair (first[p], second[p]) is an edge of the undirected kNN
    graph, i.e. either lists the other. Reads the lists directly (no graph build), in blocks.
    """
    ids = np.asarray(neighbor_ids)
    first = np.asarray(first, dtype=np.int64)
    second = np.asarray(second, dtype=np.int64)
    out = np.zeros(len(first), dtype=bool)
    block = max(1, (1 << 22) // max(ids.shape[1], 1))
    for lo in range(0, len(first), block):
        a, b = first[lo : lo + block], second[lo : lo + block]
        out[lo : lo + block] = (ids[a] == b[:, None]).any(axis=1) | (ids[b] == a[:, None]).any(
            axis=1
        )
    return out


def transitions_on_edges(order: np.ndarray, neighbor_ids: np.ndarray) -> np.ndarray:
    """(len(order),) bool: whether each step of `order` follows a kNN edge (False at 0)."""
    order = np.asarray(order, dtype=np.int64)
    out = np.zeros(len(order), dtype=bool)
    if len(order) > 1:
        out[1:] = are_knn_edges(order[:-1], order[1:], neighbor_ids)
    return out


def restrict_graph(
    ids: np.ndarray, sims: np.ndarray, kept: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The kNN lists among kept documents only, renumbered 0..M-1 in document order.

    Removed neighbours are dropped from each list and the next ones move up, so each kept
    document keeps up to k neighbours.

    Args:
        ids, sims: (N, k_stored) lists of every document, best first, -1 = none.
        kept: (M,) sorted document numbers to keep.
        k: columns of the result (padded with -1 when fewer documents remain).

    Returns:
        (M, k) ids (local numbers) and sims.
    """
    keep_mask = np.zeros(len(ids), dtype=bool)
    keep_mask[kept] = True
    sub_ids, sub_sims = ids[kept], sims[kept]
    valid = (sub_ids >= 0) & keep_mask[np.maximum(sub_ids, 0)]
    moved = np.argsort(~valid, axis=1, kind="stable")[:, :k]
    sub_ids = np.take_along_axis(sub_ids, moved, axis=1)
    sub_sims = np.take_along_axis(sub_sims, moved, axis=1)
    valid = np.take_along_axis(valid, moved, axis=1)
    new_index = np.cumsum(keep_mask) - 1
    sub_ids = np.where(valid, new_index[np.maximum(sub_ids, 0)], -1)
    sub_sims = np.where(valid, sub_sims, 0.0).astype(np.float32)
    if sub_ids.shape[1] < k:  # fewer documents than k: pad
        pad = k - sub_ids.shape[1]
        sub_ids = np.pad(sub_ids, ((0, 0), (0, pad)), constant_values=-1)
        sub_sims = np.pad(sub_sims, ((0, 0), (0, pad)))
    return sub_ids, sub_sims


def traverse_kept(
    ids: np.ndarray, sims: np.ndarray, kept: np.ndarray, k: int, method: str = "icp", seed: int = 0
) -> np.ndarray:
    """`traverse` over the kNN graph of the kept documents (their first k neighbours among
    themselves); returns the kept document numbers in path order."""
    sub_ids, sub_sims = restrict_graph(ids, sims, kept, k)
    return kept[traverse(sub_ids, sub_sims, method, seed)]


def jumps_along(order: np.ndarray, ids: np.ndarray, sims: np.ndarray, k: int) -> np.ndarray:
    """(len(order),) bool: steps that do not follow an edge of the kNN graph (among the
    documents of `order`, first k neighbours); False at position 0."""
    members = np.sort(order)
    sub_ids, _ = restrict_graph(ids, sims, members, k)
    local = np.searchsorted(members, order)
    is_jump = ~transitions_on_edges(local, sub_ids)
    if len(is_jump):
        is_jump[0] = False
    return is_jump
