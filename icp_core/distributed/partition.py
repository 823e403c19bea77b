"""Partitioned ordering: pure array functions behind the Ray engine's order stage.

The global ordering needs the whole kNN graph in one process. The Ray engine instead groups the
IVF coarse lists into P partitions that share few kNN edges and orders each partition on its
own (`traverse.traverse`). That loses the kNN edges the partition boundaries cut, so each
partition's path is then cut into fragments (`cut_path`): at its jumps, and at the links that
are weaker than a kNN edge its documents have into another partition. Only the fragments'
end documents and their kNN lists go to the driver, which stitches fragments end to end across
partitions (`plan_stitching`): greedy matching of ends by similarity, as greedy-edge max-TSP
does globally, then the partitions' own joins where ends are still free. Each chain of
fragments is packed by the partition that holds most of its documents.

On the Debian descriptions at P = 16 (benchmarks/results/partitioned.md) this is what keeps
the loss against the global ordering under the 2 % target.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np

from icp_core import _kernels, _order_kernels, traverse

# Groups may grow to this multiple of the mean partition size while merging: a looser cap
# keeps more edges inside partitions, a tighter one balances the traversal tasks.
PARTITION_SLACK = 1.1
# A fragment's body, seen from the driver: a link between its two ends heavier than the links
# (cosines <= 1) of any ejection chain or 2-opt move that would cut it, so none does.
FIXED_LINK_WEIGHT = 8.0


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

    The global counterpart of `traverse.restrict_graph` for rows that hold global ids: the removed
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


def random_bucket(doc: np.ndarray, seed: int, n_buckets: int) -> np.ndarray:
    """Each document's seeded random bucket in 0..n_buckets-1: a hash of the document number,
    so buckets mix partitions and need no shuffle of a global order.

    >>> random_bucket(np.arange(4), 0, 1).tolist()
    [0, 0, 0, 0]
    """
    if n_buckets == 1:
        return np.zeros(len(doc), dtype=np.int64)
    mixed = (np.asarray(doc).astype(np.uint64) + np.uint64(seed)) * np.uint64(0x9E3779B97F4A7C15)
    mixed ^= mixed >> np.uint64(31)
    return (mixed % np.uint64(n_buckets)).astype(np.int64)


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


def cut_path(
    order: np.ndarray, local_ids: np.ndarray, sims: np.ndarray, outside: np.ndarray
) -> tuple[np.ndarray, int]:
    """Where a partition's path is cut into fragments for stitching.

    A step is cut when one of its two documents has a kNN neighbour in another partition more
    similar than the step's edge (any neighbour, for a jump): stitching may then link it there
    instead (and re-link the step when nothing better comes). Other steps, the method's own
    jumps among them, stay: with no neighbour outside (P = 1) the path is the local engine's.

    Args:
        order: (M,) int64 the path, positions in the partition's documents.
        local_ids: (M, k) int64 kNN lists as positions in the partition, -1 = none or outside.
        sims: (M, k) float32 their similarities.
        outside: (M, k) bool, the neighbours that live in another partition.

    Returns:
        The fragments' start positions in the path (F,) int64 (0 first when M > 0) and the
        number of jumps.

    >>> ids = np.array([[1, -1], [0, -1], [-1, -1]])
    >>> sims = np.array([[0.9, 0.95], [0.9, 0], [0, 0]], dtype=np.float32)
    >>> outside = np.array([[False, True], [False, False], [False, False]])
    >>> starts, jumps = cut_path(np.array([0, 1, 2]), ids, sims, outside)
    >>> starts.tolist(), jumps
    ([0, 1], 1)
    """
    if len(order) == 0:
        return np.zeros(0, dtype=np.int64), 0
    ids, sims = local_ids[order], sims[order]
    # the step's weight: the larger listed similarity in either direction, -inf off the graph
    forward = np.where(ids[:-1] == order[1:, None], sims[:-1], -np.inf).max(axis=1)
    backward = np.where(ids[1:] == order[:-1, None], sims[1:], -np.inf).max(axis=1)
    step = np.maximum(forward, backward)
    best_outside = np.where(outside[order], sims, -np.inf).max(axis=1)
    jump = np.isneginf(step)
    cut = (best_outside[:-1] > step) | (best_outside[1:] > step)
    return np.r_[0, np.flatnonzero(cut) + 1].astype(np.int64), int(jump.sum())


def expand_segments(start: np.ndarray, length: np.ndarray, reverse: np.ndarray) -> np.ndarray:
    """Positions of segments laid end to end, each walked backwards where `reverse`.

    >>> expand_segments(np.array([5, 0]), np.array([2, 3]), np.array([False, True])).tolist()
    [5, 6, 2, 1, 0]
    """
    start = np.asarray(start, dtype=np.int64)
    length = np.asarray(length, dtype=np.int64)
    segment = np.repeat(np.arange(len(start)), length)
    within = np.arange(int(length.sum())) - np.repeat(np.cumsum(length) - length, length)
    first = start[segment]
    return np.where(reverse[segment], first + length[segment] - 1 - within, first + within)


@dataclass(frozen=True)
class Stitching:
    """The final layout: segments of the partitions' paths, grouped by the partition `home`
    that packs them, in path order within each. Segment s is positions start[s] ..
    start[s] + length[s] - 1 of partition origin[s]'s path, walked backwards where reverse[s].
    `links` counts the joins made along kNN edges, `across` those between partitions."""

    home: np.ndarray
    origin: np.ndarray
    start: np.ndarray
    length: np.ndarray
    reverse: np.ndarray
    links: int
    across: int

    def moved_docs(self) -> int:
        """Documents packed by another partition than the one that ordered them."""
        return int(self.length[self.home != self.origin].sum())


def plan_stitching(
    fragment_partition: np.ndarray,
    fragment_start: np.ndarray,
    fragment_length: np.ndarray,
    end_doc: np.ndarray,
    end_ids: np.ndarray,
    end_sims: np.ndarray,
    n_partitions: int,
    improve: bool = True,
) -> Stitching:
    """Join fragments end to end: `traverse`'s greedy-lk on the graph of the fragments' ends
    (greedy matching of ends along kNN edges, best first, no cycles, then 2-opt and ejection
    chains), each fragment a fixed link between its two ends; then each partition's own joins
    (its path order) where both ends are still free. Each chain of fragments goes whole to the
    partition that holds most of its documents (lowest on ties), walked in the direction most
    of its documents had (`_forward_chains`); a partition's chains come in the order of their
    lowest end (`chain_fragments`).

    Args:
        fragment_partition, fragment_start, fragment_length: (F,) fragments, partition by
            partition and in path order within each.
        end_doc: (2F,) documents at the ends: 2f the head (first) of fragment f, 2f + 1 its
            tail (the same document for a fragment of one).
        end_ids, end_sims: (2F, k) their kNN lists (global ids, -1 = none).
        n_partitions: P.
        improve: run the local search after the greedy matching (off only to measure it).

    Returns:
        The layout.

    >>> plan = plan_stitching(np.array([0, 1]), np.array([0, 0]), np.array([2, 1]),
    ...     np.array([10, 11, 20, 20]), np.array([[-1], [20], [11], [11]]),
    ...     np.array([[0], [0.8], [0.8], [0.8]]), 2)
    >>> plan.home.tolist(), plan.origin.tolist(), plan.reverse.tolist(), plan.across
    ([0, 0], [0, 1], [False, False], 1)
    """
    n_fragments = len(fragment_partition)
    n_ends = 2 * n_fragments
    if n_fragments == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Stitching(empty, empty, empty, empty, np.zeros(0, dtype=bool), 0, 0)
    neighbor_end, neighbor_sims = _end_neighbors(end_doc, end_ids, end_sims)
    # the graph of the ends: the candidate joins, and each fragment as one link between its
    # two ends, heavier than any move of the local search could win by cutting it
    indptr, nbr, edge_weight = _kernels.build_undirected_csr(
        np.column_stack([neighbor_end, np.arange(n_ends) ^ 1]).astype(np.int32),
        np.column_stack([neighbor_sims, np.full(n_ends, FIXED_LINK_WEIGHT)]).astype(np.float32),
    )
    row, column = np.nonzero(neighbor_end >= 0)
    best_first = np.argsort(-neighbor_sims[row, column], kind="stable")
    pair_a, pair_b = row[best_first], neighbor_end[row, column][best_first]
    partition_of = np.asarray(fragment_partition, dtype=np.int64)
    # the partitions' own joins: tail of fragment f - 1 to head of fragment f
    same = np.flatnonzero(partition_of[1:] == partition_of[:-1]) + 1
    links = np.full((n_ends, 2), -1, dtype=np.int64)
    head, tail = np.arange(0, n_ends, 2), np.arange(1, n_ends, 2)
    links[head, 0], links[tail, 0] = tail, head
    _order_kernels.join_ends(links, pair_a, pair_b)
    if improve:
        _order_kernels.improve_forest(
            links, indptr, nbr, edge_weight, np.array(traverse.CHAIN_BREADTH, dtype=np.int64)
        )
    joined = int((links >= 0).sum()) // 2 - n_fragments
    _order_kernels.join_ends(links, 2 * same - 1, 2 * same)
    order = _order_kernels.chain_fragments(links)
    # a fragment's two ends are always walked one after the other
    fragment = order[0::2] // 2
    reverse = order[0::2] % 2 == 1
    chained = (links[order[1:-1:2]] == order[2::2, None]).any(axis=1)
    chain = np.r_[0, np.cumsum(~chained)].astype(np.int64)
    fragment, reverse = _forward_chains(fragment, reverse, chain, fragment_length)
    origin = partition_of[fragment]
    length = np.asarray(fragment_length, dtype=np.int64)[fragment]
    home = _majority(chain, origin, length, n_partitions)[chain]
    final = np.argsort(home, kind="stable")
    across = int((chained & (origin[1:] != origin[:-1])).sum()) if len(chained) else 0
    return Stitching(
        home=home[final],
        origin=origin[final],
        start=np.asarray(fragment_start, dtype=np.int64)[fragment][final],
        length=length[final],
        reverse=reverse[final],
        links=int(joined),
        across=across,
    )


def _forward_chains(
    fragment: np.ndarray, reverse: np.ndarray, chain: np.ndarray, fragment_length: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Walk each chain in the direction most of its documents have in their partition's path
    (a chain of one partition's own joins is then that path as it was ordered).

    >>> f, r = _forward_chains(np.array([1, 0, 2]), np.array([True, True, False]),
    ...     np.array([0, 0, 1]), np.array([3, 4, 5]))
    >>> f.tolist(), r.tolist()
    ([0, 1, 2], [False, False, False])
    """
    length = np.asarray(fragment_length, dtype=np.float64)[fragment]
    backward = np.bincount(chain, weights=length * reverse)
    forward = np.bincount(chain, weights=length * ~reverse)
    flip = backward > forward
    if not flip.any():
        return fragment, reverse
    first = np.searchsorted(chain, np.arange(len(flip)))
    size = np.bincount(chain, minlength=len(flip))
    at = np.arange(len(fragment))
    source = np.where(flip[chain], first[chain] + size[chain] - 1 - (at - first[chain]), at)
    return fragment[source], reverse[source] ^ flip[chain]


def _end_neighbors(
    end_doc: np.ndarray, end_ids: np.ndarray, end_sims: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The ends' kNN lists as lists of ends: (2F, 2k) end indices (-1 = not an end) and sims.

    A fragment of one has two ends on one document, so each listed document may stand for two
    ends: columns 0..k-1 hold the first, k..2k-1 the second.
    """
    end_doc = np.asarray(end_doc, dtype=np.int64)
    ids = np.asarray(end_ids, dtype=np.int64)
    sims = np.asarray(end_sims, dtype=np.float64)
    by_doc = np.argsort(end_doc, kind="stable")
    sorted_doc = end_doc[by_doc]
    found, found_sims = [], []
    for shift in (0, 1):
        slot = np.minimum(np.searchsorted(sorted_doc, ids) + shift, len(end_doc) - 1)
        hit = (ids >= 0) & (sorted_doc[slot] == ids)
        found.append(np.where(hit, by_doc[slot], -1))
        found_sims.append(np.where(hit, sims, 0.0))
    return np.hstack(found), np.hstack(found_sims)


def _majority(
    group: np.ndarray, label: np.ndarray, weight: np.ndarray, n_labels: int
) -> np.ndarray:
    """Per group (0..G-1, sorted), the label of most weight; the lowest label on ties."""
    key = group * n_labels + label
    keys, inverse = np.unique(key, return_inverse=True)
    total = np.bincount(inverse, weights=weight)
    best = np.lexsort((keys % n_labels, -total, keys // n_labels))
    group_of = keys[best] // n_labels
    first = np.r_[True, group_of[1:] != group_of[:-1]]
    return (keys[best] % n_labels)[first]


def assembly(
    origin: np.ndarray,
    start: np.ndarray,
    length: np.ndarray,
    reverse: np.ndarray,
    home: int,
    n_path: int,
) -> np.ndarray:
    """Row order of a home partition's final path.

    Rows are those of [its own path (n_path rows), then the rows each other partition sends,
    senders in ascending order, each sender's rows already laid out and oriented in the order
    of the home's segments].

    Args:
        origin, start, length, reverse: (S,) the home's segments in final order.

    Returns:
        (sum(length),) int64 row indices.

    >>> assembly(np.array([1, 0, 1]), np.array([4, 2, 0]), np.array([2, 1, 1]),
    ...     np.array([True, False, False]), 1, 6).tolist()
    [5, 4, 6, 0]
    """
    origin = np.asarray(origin, dtype=np.int64)
    length = np.asarray(length, dtype=np.int64)
    own = origin == home
    _, sender = np.unique(origin[~own], return_inverse=True)
    # each sender's rows come in segment order: a segment starts after its sender's earlier
    # ones (a stable sort by sender lays the senders' blocks end to end from n_path)
    by_sender = np.argsort(sender, kind="stable")
    sorted_length = length[~own][by_sender]
    offset = np.empty(len(by_sender), dtype=np.int64)
    offset[by_sender] = np.cumsum(sorted_length) - sorted_length
    first = np.asarray(start, dtype=np.int64).copy()
    first[~own] = n_path + offset
    flip = np.asarray(reverse, dtype=bool) & own
    return expand_segments(first, length, flip)
