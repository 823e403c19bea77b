"""Orderings: hand-checked graphs, plain-Python references, invariants for every method."""

from __future__ import annotations

import numpy as np
import pytest

from icp_core.errors import IcpError
from icp_core.traverse import (
    METHODS,
    build_graph,
    jumps_along,
    restrict_graph,
    transitions_on_edges,
    traverse,
    traverse_kept,
)


def random_graph(n: int, k: int, seed: int, missing: float = 0.1):
    """Random (N, k) neighbour lists, best first, some -1, sims with ties."""
    rng = np.random.default_rng(seed)
    ids = (
        np.stack(
            [
                rng.choice(np.delete(np.arange(n), i), size=min(k, n - 1), replace=False)
                for i in range(n)
            ]
        )
        if n > 1
        else np.full((n, k), -1)
    )
    if ids.shape[1] < k:
        ids = np.pad(ids, ((0, 0), (0, k - ids.shape[1])), constant_values=-1)
    sims = np.sort(rng.choice([0.2, 0.4, 0.5, 0.7, 0.9], size=(n, k)), axis=1)[:, ::-1]
    cut = rng.random((n, k)) < missing
    cut = np.maximum.accumulate(cut, axis=1)  # -1 only at the end of a row
    ids = np.where(cut, -1, ids)
    sims = np.where(cut, 0.0, sims).astype(np.float32)
    return ids.astype(np.int64), sims


def undirected(ids, sims) -> dict[int, dict[int, float]]:
    graph: dict[int, dict[int, float]] = {i: {} for i in range(len(ids))}
    for i, row in enumerate(ids):
        for c, j in enumerate(row):
            if j >= 0 and j != i:
                w = float(sims[i, c])
                graph[i][j] = max(graph[i].get(j, -np.inf), w)
                graph[j][i] = max(graph[j].get(i, -np.inf), w)
    return graph


def reference_icp(ids, sims) -> list[int]:
    """Algorithm 1 as the paper states it, written plainly."""
    graph = undirected(ids, sims)
    n = len(ids)
    visited: set[int] = set()
    order: list[int] = []

    def min_degree_start() -> int:
        return min((i for i in range(n) if i not in visited), key=lambda i: (len(graph[i]), i))

    current = min_degree_start()
    while True:
        visited.add(current)
        order.append(current)
        if len(order) == n:
            return order
        options = [(-w, j) for j, w in graph[current].items() if j not in visited]
        current = min(options)[1] if options else min_degree_start()


def reference_original(ids, max_rank: int = 9, chain_max: int = 21) -> list[int]:
    """The authors' script: chains along own lists, lowest-id restarts, then merge."""
    n = len(ids)
    visited: set[int] = set()
    chains: list[list[int]] = []
    current = None
    while len(visited) < n:
        step = None
        if current is not None and len(chains[-1]) < chain_max:
            step = next(
                (int(j) for j in ids[current, :max_rank] if j >= 0 and j not in visited), None
            )
        if step is None:
            step = min(i for i in range(n) if i not in visited)
            chains.append([])
        chains[-1].append(step)
        visited.add(step)
        current = step
    chain_of = {d: c for c, chain in enumerate(chains) for d in chain}
    snapshot = [list(chain) for chain in chains]
    for chain in snapshot:
        if len(chain) >= chain_max:
            continue
        for d in chain:
            target = next(
                (int(j) for j in ids[d, :max_rank] if j >= 0 and chain_of[int(j)] != chain_of[d]),
                None,
            )
            if target is None:
                continue
            chains[chain_of[d]].remove(d)
            dest = chains[chain_of[target]]
            dest.insert(dest.index(target), d)
            chain_of[d] = chain_of[target]
    return [d for chain in chains for d in chain]


def is_permutation(order: np.ndarray, n: int) -> bool:
    return order.dtype == np.int64 and np.array_equal(np.sort(order), np.arange(n))


class TestIcp:
    def test_chain_is_walked_end_to_end(self):
        # 0-1-2-3-4 chain with decreasing weights; the ends have degree 1, start at 0
        ids = np.array([[1, -1], [0, 2], [1, 3], [2, 4], [3, -1]])
        sims = np.array([[0.9, 0], [0.9, 0.8], [0.8, 0.7], [0.7, 0.6], [0.6, 0]], np.float32)
        assert traverse(ids, sims).tolist() == [0, 1, 2, 3, 4]

    def test_two_cliques_joined_by_a_weak_edge(self):
        clique_a, clique_b = [0, 1, 2], [3, 4, 5]
        rows = []
        for members in (clique_a, clique_b):
            for i in members:
                rows.append([j for j in members if j != i])
        ids = np.array(rows)
        sims = np.full(ids.shape, 0.9, np.float32)
        ids = np.concatenate([ids, np.full((6, 1), -1)], axis=1)
        sims = np.concatenate([sims, np.zeros((6, 1), np.float32)], axis=1)
        ids[2, 2], sims[2, 2] = 3, 0.1  # weak bridge 2-3
        order = traverse(ids, sims).tolist()
        # each clique stays contiguous: the walk crosses between them once
        assert sorted(order[:3]) in (clique_a, clique_b)
        assert sorted(order[3:]) in (clique_a, clique_b)

    def test_isolated_documents_and_all_missing(self):
        ids = np.full((4, 3), -1)
        sims = np.zeros((4, 3), np.float32)
        assert traverse(ids, sims).tolist() == [0, 1, 2, 3]

    def test_matches_reference_on_random_graphs(self):
        for seed in range(30):
            n = int(np.random.default_rng(seed).integers(1, 60))
            ids, sims = random_graph(n, 5, seed)
            assert traverse(ids, sims).tolist() == reference_icp(ids, sims), seed

    def test_asymmetric_lists_use_the_larger_similarity(self):
        # 0 lists 1 at 0.3 but 1 lists 0 at 0.9: the edge weighs 0.9 and beats 0-2 at 0.5
        ids = np.array([[2, 1], [0, -1], [0, -1]])
        sims = np.array([[0.5, 0.3], [0.9, 0], [0.5, 0]], np.float32)
        graph = build_graph(ids, sims)
        indptr, nbr, weight = graph
        assert nbr[indptr[0] : indptr[1]].tolist() == [1, 2]
        assert weight[indptr[0] : indptr[1]].tolist() == pytest.approx([0.9, 0.5])


class TestOriginal:
    def test_matches_reference_on_random_graphs(self):
        for seed in range(30):
            n = int(np.random.default_rng(100 + seed).integers(1, 120))
            ids, sims = random_graph(n, 12, 100 + seed, missing=0.3)
            assert traverse(ids, sims, "original").tolist() == reference_original(ids), seed

    def test_ignores_similarities(self):
        ids, sims = random_graph(50, 10, 7)
        shuffled = np.random.default_rng(0).permutation(sims.ravel()).reshape(sims.shape)
        assert np.array_equal(traverse(ids, sims, "original"), traverse(ids, shuffled, "original"))

    def test_long_chains_are_cut_at_21(self):
        n = 50  # a ring: each doc's first neighbour is the next one
        ids = np.stack([(np.arange(n) + 1) % n, (np.arange(n) - 1) % n], axis=1)
        sims = np.ones(ids.shape, np.float32)
        order = traverse(ids, sims, "original").tolist()
        # chains 0..20 and 21..41 are full; the short chain 42..49 merges into them
        # (49 lists 0 first, so it lands just before 0)
        start = order.index(0)
        assert order[start : start + 21] == list(range(21))
        assert order[start - 1] == 49
        assert is_permutation(np.array(order), n)


class TestRandom:
    def test_seeded(self):
        ids, sims = random_graph(30, 4, 0)
        assert np.array_equal(traverse(ids, sims, "random", 3), traverse(ids, sims, "random", 3))
        assert not np.array_equal(
            traverse(ids, sims, "random", 3), traverse(ids, sims, "random", 4)
        )


@pytest.mark.parametrize("method", sorted(METHODS))
class TestEveryMethod:
    @pytest.mark.parametrize("n, k", [(0, 3), (1, 3), (2, 5), (7, 10), (200, 8)])
    def test_returns_a_permutation(self, method, n, k):
        ids, sims = random_graph(n, k, n + k)
        assert is_permutation(traverse(ids, sims, method), n)

    def test_all_missing_neighbours(self, method):
        order = traverse(np.full((9, 4), -1), np.zeros((9, 4), np.float32), method)
        assert is_permutation(order, 9)


def test_unknown_method_and_bad_shapes_are_errors():
    ids, sims = random_graph(5, 2, 0)
    with pytest.raises(IcpError, match="unknown order method"):
        traverse(ids, sims, "zigzag")
    with pytest.raises(IcpError, match="must be equal"):
        traverse(ids, sims[:, :1])
    with pytest.raises(IcpError, match="must lie in"):
        traverse(ids + 10, sims)


def test_transitions_on_edges_flags_jumps():
    ids = np.array([[1, -1], [0, -1], [3, -1], [2, -1]])
    assert transitions_on_edges(np.array([0, 1, 2, 3]), ids).tolist() == [
        False,
        True,
        False,
        True,
    ]


class TestKeptGraph:
    """Documents 0..3, doc 1 removed (a duplicate): lists among 0, 2, 3 as local 0, 1, 2."""

    ids = np.array([[1, 2], [0, 3], [3, 0], [2, -1]])
    sims = np.array([[0.9, 0.5], [0.9, 0.4], [0.8, 0.5], [0.8, 0.0]], np.float32)
    kept = np.array([0, 2, 3])

    def test_removed_neighbours_drop_out_and_the_next_move_up(self):
        sub_ids, sub_sims = restrict_graph(self.ids, self.sims, self.kept, 2)
        assert sub_ids.tolist() == [[1, -1], [2, 0], [1, -1]]
        np.testing.assert_allclose(sub_sims, [[0.5, 0.0], [0.8, 0.5], [0.8, 0.0]])

    def test_lists_narrower_than_k_are_padded(self):
        sub_ids, sub_sims = restrict_graph(self.ids, self.sims, self.kept, 3)
        assert sub_ids.tolist() == [[1, -1, -1], [2, 0, -1], [1, -1, -1]]
        assert sub_sims.shape == (3, 3)

    def test_traverse_kept_orders_the_kept_documents_only(self):
        for method in METHODS:
            order = traverse_kept(self.ids, self.sims, self.kept, 2, method)
            assert sorted(order.tolist()) == [0, 2, 3]

    def test_jumps_are_steps_off_the_kept_graph(self):
        # 0 -> 3 is no edge once 1 is gone; 3 -> 2 is one
        assert jumps_along(np.array([0, 3, 2]), self.ids, self.sims, 2).tolist() == [
            False,
            True,
            False,
        ]
