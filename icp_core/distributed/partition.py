"""Partitioned ordering: pure array functions behind the Ray engine's order stage.

The global walk of Algorithm 1 needs the whole kNN graph in one process. The Ray engine instead
groups the IVF coarse lists into P partitions that share few kNN edges, walks each partition on
its own (`traverse.traverse`), then re-attaches the leftovers: documents that sit alone between
two jumps, typically because their neighbours landed in another partition. Each moves next to a
neighbour that ends a chain (a tail: after it, a head: before it), in whichever partition that
chain lives, so a jump becomes a kNN edge.

On the Debian descriptions at P = 16 (benchmarks/results/partitioned.md) the partitions cost
2.2 % of the global walk's adjacent similarity and the re-attachment wins half of it back.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np

from icp_core.distributed import _kernels

# Groups may grow to this multiple of the mean partition size while merging: a looser cap
# keeps more edges inside partitions, a tighter one balances the traversal tasks.
PARTITION_SLACK = 1.1


def ivf_list_count(n_docs: int) -> int:
    """Coarse lists of the IVF index: the sizing of `icp_core.knn` (4 sqrt(N), >= 39 docs each)."""
    return max(1, min(int(4 * math.sqrt(n_docs)), n_docs // 39))


def localize(neighbor_ids: np.ndarray, members: np.ndarray) -> np.ndarray:
    """Global neighbour ids mapped to positions in `members`, -1 for non-members.

    Args:
        neighbor_ids: (M, k) int, global document ids, -1 = none.
        members: (M',) int64 sorted global ids.

    Returns:
        (M, k) int64.

    >>> localize(np.array([[7, 3, -1]]), np.array([3, 5, 7])).tolist()
    [[2, 0, -1]]
    """
    ids = np.asarray(neighbor_ids, dtype=np.int64)
    if len(members) == 0:
        return np.full(ids.shape, -1, dtype=np.int64)
    position = np.minimum(np.searchsorted(members, ids), len(members) - 1)
    return np.where((ids >= 0) & (members[position] == ids), position, -1)


def drop_removed(
    neighbor_ids: np.ndarray, neighbor_sims: np.ndarray, removed: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's first k neighbours that are not removed (duplicates), best first.

    The global counterpart of `stages.restrict_graph` for rows that hold global ids: the removed
    neighbours leave and the next ones move up.

    Args:
        neighbor_ids: (M, K) int64 global ids, -1 = none; neighbor_sims: (M, K) float32.
        removed: sorted global ids of removed documents.
        k: columns to keep (<= K).

    Returns:
        ids (M, k) int64 and sims (M, k) float32, -1 / 0 where a row has fewer neighbours.
    """
    ids = np.asarray(neighbor_ids, dtype=np.int64)
    valid = (ids >= 0) & ~np.isin(ids, removed)
    moved = np.argsort(~valid, axis=1, kind="stable")[:, :k]
    valid = np.take_along_axis(valid, moved, axis=1)
    kept_ids = np.where(valid, np.take_along_axis(ids, moved, axis=1), -1)
    kept_sims = np.where(valid, np.take_along_axis(neighbor_sims, moved, axis=1), 0.0)
    return kept_ids, kept_sims.astype(np.float32)


def group_lists(
    first: np.ndarray,
    second: np.ndarray,
    edges: np.ndarray,
    list_sizes: np.ndarray,
    n_partitions: int,
    slack: float = PARTITION_SLACK,
) -> np.ndarray:
    """Group IVF lists into partitions of about equal size that share few kNN edges.

    Agglomerative: repeatedly merge the two groups with the strongest normalised link
    (edges / sqrt(size_a * size_b)) while the merged group stays under `slack` times the mean
    partition size; the groups left are then packed into the partitions largest first.

    Args:
        first, second, edges: kNN edge counts between lists (first[i], second[i]), any order,
            repeats summed.
        list_sizes: (L,) documents per list.
        n_partitions: P.

    Returns:
        (L,) int64 partition of each list, in 0..P-1.

    >>> group_lists(np.array([0, 2]), np.array([1, 3]), np.array([5, 5]), np.ones(4), 2).tolist()
    [0, 0, 1, 1]
    """
    n_lists = len(list_sizes)
    if n_partitions <= 1 or n_lists <= 1:
        return np.zeros(n_lists, dtype=np.int64)
    size = np.asarray(list_sizes, dtype=np.float64).copy()
    cap = slack * size.sum() / n_partitions
    links: list[dict[int, float]] = [{} for _ in range(n_lists)]
    for a, b, w in zip(first.tolist(), second.tolist(), edges.tolist(), strict=True):
        if a != b:
            links[a][b] = links[a].get(b, 0.0) + w
            links[b][a] = links[b].get(a, 0.0) + w

    def score(a: int, b: int) -> float:
        return -links[a][b] / math.sqrt((size[a] + 1.0) * (size[b] + 1.0))

    heap = [(score(a, b), a, b) for a in range(n_lists) for b in links[a] if a < b]
    heapq.heapify(heap)
    owner = np.arange(n_lists)
    alive = n_lists
    while heap and alive > n_partitions:
        stale, a, b = heapq.heappop(heap)
        if owner[a] != a or owner[b] != b or b not in links[a] or stale != score(a, b):
            continue  # an entry from before one of the two groups changed
        if size[a] + size[b] > cap:
            continue
        if len(links[a]) < len(links[b]):
            a, b = b, a  # fold the group with fewer links into the other
        for c, w in links[b].items():
            if c != a:
                links[a][c] = links[a].get(c, 0.0) + w
                links[c][a] = links[a][c]
                del links[c][b]
        links[a].pop(b, None)
        links[b] = {}
        size[a] += size[b]
        owner[b] = a
        alive -= 1
        for c in links[a]:
            heapq.heappush(heap, (score(min(a, c), max(a, c)), min(a, c), max(a, c)))
    root = owner.copy()
    while (root[root] != root).any():
        root = root[root]
    groups = np.flatnonzero(owner == np.arange(n_lists))
    load = np.zeros(n_partitions)
    partition_of_group = np.zeros(n_lists, dtype=np.int64)
    for group in groups[np.argsort(-size[groups], kind="stable")]:
        target = int(np.argmin(load))
        partition_of_group[group] = target
        load[target] += size[group]
    return partition_of_group[root]


@dataclass(frozen=True)
class PathEnds:
    """Where a partition's path breaks: per position, whether the document is a leftover (a
    jump on both sides), or starts (head) or ends (tail) a chain of two or more documents."""

    single: np.ndarray
    head: np.ndarray
    tail: np.ndarray


def path_ends(on_edge: np.ndarray) -> PathEnds:
    """Classify path positions from `on_edge` (step i-1 -> i follows a kNN edge; [0] ignored).

    >>> ends = path_ends(np.array([False, True, False, False, True]))
    >>> [np.flatnonzero(mask).tolist() for mask in (ends.single, ends.head, ends.tail)]
    [[2], [0, 3], [1, 4]]
    """
    n = len(on_edge)
    starts = np.ones(n, dtype=bool)
    starts[1:] = ~np.asarray(on_edge[1:], dtype=bool)
    ends = np.ones(n, dtype=bool)
    ends[:-1] = starts[1:]
    single = starts & ends
    return PathEnds(single=single, head=starts & ~single, tail=ends & ~single)


@dataclass(frozen=True)
class Reattachment:
    """Leftovers that move: `doc` from partition `origin` goes next to `target` in partition
    `partition`, before it when `before` (the target heads a chain) else after it."""

    doc: np.ndarray
    origin: np.ndarray
    target: np.ndarray
    partition: np.ndarray
    before: np.ndarray


def plan_reattachment(
    single_doc: np.ndarray,
    single_partition: np.ndarray,
    candidate_ids: np.ndarray,
    candidate_sims: np.ndarray,
    end_doc: np.ndarray,
    end_partition: np.ndarray,
    end_is_head: np.ndarray,
) -> Reattachment:
    """Pair leftovers with chain ends, most similar pairs first, each end taking one leftover.

    Args:
        single_doc, single_partition: (S,) leftover documents and their partitions.
        candidate_ids, candidate_sims: (S, k) each leftover's kNN list (global ids, -1 = none).
        end_doc, end_partition, end_is_head: (E,) chain ends over all partitions.

    Returns:
        The moves; a leftover none of whose neighbours ends a chain stays where it is.

    >>> plan = plan_reattachment(np.array([9]), np.array([1]), np.array([[4, 5]]),
    ...     np.array([[0.8, 0.9]]), np.array([4, 5]), np.array([0, 0]), np.array([True, False]))
    >>> plan.doc.tolist(), plan.target.tolist(), plan.before.tolist()
    ([9], [5], [False])
    """
    by_doc = np.argsort(end_doc, kind="stable")
    sorted_ends = np.asarray(end_doc, dtype=np.int64)[by_doc]
    ids = np.asarray(candidate_ids, dtype=np.int64)
    slot = np.searchsorted(sorted_ends, ids)
    slot = np.minimum(slot, max(len(sorted_ends) - 1, 0))
    hit = (ids >= 0) & (sorted_ends[slot] == ids) if len(sorted_ends) else np.zeros_like(ids, bool)
    item, column = np.nonzero(hit)
    best_first = np.argsort(-candidate_sims[item, column], kind="stable")
    item, column = item[best_first], column[best_first]
    end = by_doc[slot[item, column]]
    chosen = _kernels.greedy_assign(
        item.astype(np.int64), end.astype(np.int64), len(single_doc), len(end_doc)
    )
    moved = np.flatnonzero(chosen >= 0)
    target_end = end[chosen[moved]]
    return Reattachment(
        doc=np.asarray(single_doc, dtype=np.int64)[moved],
        origin=np.asarray(single_partition, dtype=np.int64)[moved],
        target=np.asarray(end_doc, dtype=np.int64)[target_end],
        partition=np.asarray(end_partition, dtype=np.int64)[target_end],
        before=np.asarray(end_is_head, dtype=bool)[target_end],
    )


def merge_moves(
    path: np.ndarray,
    leaving: np.ndarray,
    arriving: np.ndarray,
    target: np.ndarray,
    before: np.ndarray,
) -> np.ndarray:
    """A partition's final path: `leaving` documents removed, each `arriving` document placed
    right before or after its `target` (a document of `path`).

    Returns:
        Indices into the concatenation [path, arriving] in final order.

    >>> merge_moves(np.array([10, 11, 12]), np.array([11]), np.array([20]), np.array([12]),
    ...     np.array([True])).tolist()
    [0, 3, 2]
    """
    position = np.arange(len(path), dtype=np.float64)
    by_doc = np.argsort(path, kind="stable")
    target_position = by_doc[np.searchsorted(path[by_doc], target)].astype(np.float64)
    key = np.concatenate([position, target_position + np.where(before, -0.5, 0.5)])
    stays = np.concatenate([~np.isin(path, leaving), np.ones(len(arriving), dtype=bool)])
    final = np.argsort(key, kind="stable")
    return final[stays[final]]
