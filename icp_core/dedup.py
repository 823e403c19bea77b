"""Dedup: semantic near-duplicates from the kNN similarities, grouped transitively.

Two documents are duplicates when one lists the other among its neighbours with similarity
>= threshold; groups are the connected components of those pairs, and each group keeps its
earliest-ingested document. The removed ones are recorded with the kept document, never lost.

The default threshold, 0.95, was chosen on the shared corpora (see BENCHMARKS.md, "Choosing
the dedup threshold"): above it, pairs are near-verbatim copies (versioned package
descriptions, repeated doc sections); below it, distinct documents on one topic start to merge.
"""

from __future__ import annotations

import numpy as np

from icp_core import _kernels
from icp_core.errors import IcpError
from icp_core.metrics import pair_similarity

DEFAULT_THRESHOLD = 0.95
NEAR_COPY_PREFIX_CHARS = 100
NEAR_COPY_JACCARD = 0.85


def find_duplicates(
    neighbor_ids: np.ndarray, neighbor_sims: np.ndarray, threshold: float
) -> np.ndarray:
    """Group near-duplicates and pick one document to keep per group.

    Args:
        neighbor_ids: (N, k) int, -1 = none.
        neighbor_sims: (N, k) float cosine similarities.
        threshold: pairs with similarity >= threshold are duplicates (0 < threshold <= 1).

    Returns:
        kept_doc: (N,) int64; kept_doc[i] == i when i is kept, else the kept document of i's group
        (the lowest index in the group).

    >>> ids = np.array([[1], [0], [1], [-1]])
    >>> sims = np.array([[0.99], [0.99], [0.97], [0.0]], dtype=np.float32)
    >>> find_duplicates(ids, sims, 0.95).tolist()
    [0, 0, 0, 3]
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if not 0.0 < threshold <= 1.0:
        raise IcpError(
            f"dedup threshold {threshold} must lie in (0, 1]; use --no-dedup to turn it off"
        )
    ids = np.asarray(neighbor_ids, dtype=np.int64)
    sims = np.asarray(neighbor_sims, dtype=np.float32)
    n_docs = ids.shape[0]
    rows, cols = np.nonzero((ids >= 0) & (sims >= threshold))
    targets = ids[rows, cols]
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, targets)), shape=(n_docs, n_docs))
    _, labels = connected_components(graph, directed=True, connection="weak")
    keeper = np.full(labels.max() + 1 if n_docs else 0, n_docs, dtype=np.int64)
    np.minimum.at(keeper, labels, np.arange(n_docs))
    return keeper[labels]


def find_near_copies(
    texts: list[str], order: np.ndarray, threshold: float = NEAR_COPY_JACCARD
) -> tuple[np.ndarray, np.ndarray]:
    """The authors' text filter: drop a document whose first 100 characters are a near copy
    (character-trigram Jaccard > threshold) of the previous kept document in `order`.

    Args:
        texts: document texts indexed by document (only the first 100 characters are read).
        order: (M,) path over document indices.

    Returns:
        drop: (M,) bool per path position; copy_of: (M,) int64 kept document it copies (-1).
    """
    prefixes = [text[:NEAR_COPY_PREFIX_CHARS] for text in texts]
    lengths = np.fromiter((len(p) for p in prefixes), dtype=np.int64, count=len(prefixes))
    offsets = np.zeros(len(prefixes) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    joined = "".join(prefixes)
    codes = np.frombuffer(joined.encode("utf-32-le", errors="surrogatepass"), dtype=np.uint32)
    return _kernels.trigram_near_copies(
        codes.astype(np.int64), offsets, np.ascontiguousarray(order, dtype=np.int64), threshold
    )


def near_copy_filter(
    texts: list[str], order: np.ndarray, vectors: np.ndarray
) -> tuple[np.ndarray, dict[str, list]]:
    """`order` without the near copies of their previous kept document (`find_near_copies`),
    and the drops (doc, kept_doc, sim, reason) as the order_drops table records them.

    Args:
        texts: document texts by document (only the first 100 characters are read).
        order: (M,) path over document numbers.
        vectors: (N, d) unit vectors by document, for the drops' similarity.
    """
    drop, copy_of = find_near_copies(texts, order)
    dropped, kept_for = order[drop], copy_of[drop]
    sims = pair_similarity(vectors, dropped, kept_for) if len(dropped) else np.zeros(0)
    drops = {
        "doc": dropped.tolist(),
        "kept_doc": kept_for.tolist(),
        "sim": sims.tolist(),
        "reason": [
            f"near copy of the previous document (first {NEAR_COPY_PREFIX_CHARS} characters,"
            f" trigram Jaccard > {NEAR_COPY_JACCARD}; authors' filter)"
        ]
        * len(dropped),
    }
    return order[~drop], drops


def duplicates_among_pairs(
    first: np.ndarray, second: np.ndarray, sims: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """`find_duplicates` over only the documents that occur in a pair, for a corpus too large
    to hold every document's list (the Ray engine gathers just the pairs at or above the
    threshold from its search tasks).

    Args:
        first, second: (P,) int64 documents: `first` lists `second` among its neighbours.
        sims: (P,) float32 their similarity.

    Returns:
        doc, kept_doc: (R,) int64 the removed documents (ascending) and the one each copies,
        as `find_duplicates` would remove them from the whole graph.

    >>> duplicates_among_pairs(np.array([7, 9]), np.array([3, 7]), np.array([0.99, 0.97]), 0.95)
    (array([7, 9]), array([3, 3]))
    """
    first = np.asarray(first, dtype=np.int64)
    second = np.asarray(second, dtype=np.int64)
    none = np.zeros(0, dtype=np.int64)
    if not len(first):
        return none, none
    involved = np.unique(np.concatenate([first, second]))
    row = np.searchsorted(involved, first)
    by_row = np.argsort(row, kind="stable")
    row, column_doc = row[by_row], np.searchsorted(involved, second)[by_row]
    row_start = np.searchsorted(row, np.arange(len(involved)))
    column = np.arange(len(row)) - row_start[row]
    sub_ids = np.full((len(involved), int(column.max()) + 1), -1, dtype=np.int64)
    sub_sims = np.zeros(sub_ids.shape, dtype=np.float32)
    sub_ids[row, column] = column_doc
    sub_sims[row, column] = np.asarray(sims, dtype=np.float32)[by_row]
    keeper = involved[find_duplicates(sub_ids, sub_sims, threshold)]
    moved = keeper != involved
    return involved[moved], keeper[moved]
