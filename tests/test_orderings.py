"""The orderings beyond the paper (`greedy`, `greedy-lk`) and their numba kernels.

Invariants on ugly inputs, hand-checked graphs with known best paths, and each kernel
against a plain-Python reference on seeded random graphs.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from icp_core import _order_kernels as ok
from icp_core.params import DEFAULT_ORDER
from icp_core.traverse import METHODS, build_graph, traverse

NEW_METHODS = ("greedy", "greedy-lk")


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def graph_from_edges(n: int, edges: dict[tuple[int, int], float], k: int):
    """(n, k) ids/sims, best first, -1 padded, from undirected weighted edges."""
    lists: list[list[tuple[float, int]]] = [[] for _ in range(n)]
    for (a, b), w in edges.items():
        lists[a].append((w, b))
        lists[b].append((w, a))
    ids = np.full((n, k), -1, dtype=np.int64)
    sims = np.zeros((n, k), dtype=np.float32)
    for i, row in enumerate(lists):
        row.sort(key=lambda t: (-t[0], t[1]))
        for c, (w, j) in enumerate(row[:k]):
            ids[i, c] = j
            sims[i, c] = w
    return ids, sims


def weight_dict(ids: np.ndarray, sims: np.ndarray) -> dict[tuple[int, int], float]:
    """Undirected edge weights as the CSR graph defines them (max of both listings)."""
    weights: dict[tuple[int, int], float] = {}
    for i in range(ids.shape[0]):
        for j, s in zip(ids[i], sims[i], strict=True):
            if j >= 0 and j != i:
                key = (min(i, j), max(i, j))
                weights[key] = max(weights.get(key, -np.inf), float(s))
    return weights


def path_weight(order, weights) -> float:
    return sum(weights.get((min(a, b), max(a, b)), 0.0) for a, b in itertools.pairwise(order))


def random_graph(seed: int, n: int, k: int):
    """Seeded kNN-like lists: random neighbours (some -1, self and repeats included)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(-1, n, size=(n, k))
    sims = np.round(rng.uniform(0.05, 0.95, size=(n, k)), 3).astype(np.float32)
    sims = -np.sort(-sims, axis=1)
    return ids, sims


def link_set(links: np.ndarray) -> set[tuple[int, int]]:
    return {(min(a, b), max(a, b)) for a in range(len(links)) for b in links[a] if b >= 0}


def fragments(links: np.ndarray) -> list[list[int]]:
    """The paths of a linear forest, each from one end (asserts there is no cycle)."""
    n = len(links)
    seen = np.zeros(n, dtype=bool)
    paths = []
    for start in range(n):
        if seen[start] or (links[start] >= 0).sum() == 2:
            continue
        path, prev, cur = [], -1, start
        while cur >= 0:
            seen[cur] = True
            path.append(cur)
            nxt = [y for y in links[cur] if y >= 0 and y != prev]
            prev, cur = cur, (nxt[0] if nxt else -1)
        paths.append(path)
    assert seen.all(), "links hold a cycle"
    return paths


def assert_linear_forest(links: np.ndarray) -> None:
    for a in range(len(links)):
        linked = [b for b in links[a] if b >= 0]
        assert len(set(linked)) == len(linked) and a not in linked
        for b in linked:
            assert a in links[b]
    fragments(links)


# ---------------------------------------------------------------------------------------------
# invariants
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", NEW_METHODS)
class TestInvariants:
    def test_empty(self, method):
        order = traverse(np.zeros((0, 3), dtype=np.int64), np.zeros((0, 3)), method)
        assert order.dtype == np.int64 and order.shape == (0,)

    def test_one_document(self, method):
        assert traverse(np.array([[-1, -1]]), np.zeros((1, 2)), method).tolist() == [0]

    def test_all_neighbours_missing(self, method):
        order = traverse(np.full((5, 3), -1), np.zeros((5, 3)), method)
        assert sorted(order.tolist()) == list(range(5))

    def test_k_at_least_n(self, method):
        ids = np.array([[1, 2, -1, -1], [0, 2, -1, -1], [1, 0, -1, -1]])
        sims = np.array([[0.9, 0.2, 0, 0], [0.9, 0.8, 0, 0], [0.8, 0.2, 0, 0]], dtype=np.float32)
        order = traverse(ids, sims, method)
        assert order.tolist() in ([0, 1, 2], [2, 1, 0])

    def test_self_references_and_repeats(self, method):
        ids = np.array([[0, 1, 1], [1, 0, 2], [2, 2, 1], [3, 3, 3]])
        sims = np.array([[1.0, 0.7, 0.6]] * 4, dtype=np.float32)
        order = traverse(ids, sims, method)
        assert sorted(order.tolist()) == [0, 1, 2, 3]

    def test_deterministic(self, method):
        ids, sims = random_graph(3, 40, 5)
        assert np.array_equal(traverse(ids, sims, method, seed=0), traverse(ids, sims, method, 1))


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 30),
    k=st.integers(1, 6),
    seed=st.integers(0, 2**16),
    method=st.sampled_from(NEW_METHODS),
)
def test_permutation_on_random_lists(n, k, seed, method):
    ids, sims = random_graph(seed, n, k) if n else (np.zeros((0, k)), np.zeros((0, k)))
    order = traverse(ids, sims, method)
    assert order.dtype == np.int64
    assert sorted(order.tolist()) == list(range(n))


def test_default_order_is_registered():
    assert DEFAULT_ORDER in METHODS
    for name in ("icp", "original", "random", *NEW_METHODS):
        assert name in METHODS


# ---------------------------------------------------------------------------------------------
# graphs with known best paths
# ---------------------------------------------------------------------------------------------


class TestKnownPaths:
    def test_chain_with_weaker_shortcuts(self):
        # chain 5-2-7-0-3-6-1-4 (strong), plus skip-one shortcuts (weak): the chain is best
        chain = [5, 2, 7, 0, 3, 6, 1, 4]
        edges = {}
        for i, (a, b) in enumerate(itertools.pairwise(chain)):
            edges[(a, b)] = 0.9 - 0.02 * i
        for a, b in zip(chain, chain[2:], strict=False):
            edges[(a, b)] = 0.4
        ids, sims = graph_from_edges(8, edges, 4)
        for method in NEW_METHODS:
            order = traverse(ids, sims, method).tolist()
            assert order in (chain, chain[::-1]), method

    def test_triangle_with_pendants_greedy_trap(self):
        # greedy takes 0-1 (0.9) and 1-2 (0.85), so 3 (only linked to 1) is stranded:
        # 0-1-2-4 + jump + 3 = 2.5. The best path 3-1-0-2-4 = 0.7 + 0.9 + 0.8 + 0.75 = 3.15.
        edges = {(0, 1): 0.9, (1, 2): 0.85, (0, 2): 0.8, (2, 4): 0.75, (1, 3): 0.7}
        ids, sims = graph_from_edges(5, edges, 3)
        weights = weight_dict(ids, sims)
        assert path_weight(traverse(ids, sims, "greedy"), weights) == pytest.approx(2.5)
        order = traverse(ids, sims, "greedy-lk").tolist()
        assert order in ([3, 1, 0, 2, 4], [4, 2, 0, 1, 3])

    def test_two_cliques_joined_by_one_weak_edge(self):
        # cliques {0..4} and {5..9} with strong varied weights; one weak bridge 2-7
        rng = np.random.default_rng(7)
        edges = {}
        for clique in (range(5), range(5, 10)):
            for a, b in itertools.combinations(clique, 2):
                edges[(a, b)] = round(float(rng.uniform(0.6, 0.95)), 3)
        edges[(2, 7)] = 0.3
        ids, sims = graph_from_edges(10, edges, 5)
        weights = weight_dict(ids, sims)

        def best_path(nodes, end=None):
            return max(
                path_weight(p, weights)
                for p in itertools.permutations(nodes)
                if end is None or p[-1] == end
            )

        through_bridge = best_path(range(5), end=2) + 0.3 + best_path(range(5, 10), end=7)
        with_jump = best_path(range(5)) + best_path(range(5, 10))
        best = max(through_bridge, with_jump)
        order = traverse(ids, sims, "greedy-lk").tolist()
        assert path_weight(order, weights) == pytest.approx(best, abs=1e-6)
        crossings = [(a, b) for a, b in itertools.pairwise(order) if (a < 5) != (b < 5)]
        assert crossings in ([(2, 7)], [(7, 2)])


def test_local_search_never_loses_weight():
    for seed in range(20):
        ids, sims = random_graph(seed, 60, 6)
        indptr, nbr, weight = build_graph(ids, sims)
        weights = weight_dict(ids, sims)
        links = greedy_reference(60, weights)
        before = sum(weights[e] for e in link_set(links))
        ok.improve_forest(links, indptr, nbr, weight, np.array([5, 3, 1], dtype=np.int64))
        assert_linear_forest(links)
        assert sum(weights[e] for e in link_set(links)) >= before - 1e-9


def test_local_search_reaches_the_best_path_on_small_graphs():
    """On small random graphs the best linear forest is known by brute force; greedy-lk must
    never exceed it, and should usually reach it."""
    reached = 0
    for seed in range(30):
        ids, sims = random_graph(seed, 7, 3)
        weights = weight_dict(ids, sims)
        best = max(path_weight(p, weights) for p in itertools.permutations(range(7)))
        found = path_weight(traverse(ids, sims, "greedy-lk"), weights)
        assert found <= best + 1e-6
        reached += found >= best - 1e-6
    assert reached >= 27


# ---------------------------------------------------------------------------------------------
# kernels against plain-Python references
# ---------------------------------------------------------------------------------------------


def greedy_reference(n: int, weights: dict[tuple[int, int], float]) -> np.ndarray:
    """Greedy-edge: edges by weight desc, then (a, b) asc; degree < 2 and no cycle."""
    parent = list(range(n))

    def root(x):
        while parent[x] != x:
            x = parent[x]
        return x

    links = np.full((n, 2), -1, dtype=np.int64)
    for (a, b), _ in sorted(weights.items(), key=lambda item: (-item[1], item[0])):
        if (links[a] >= 0).all() or (links[b] >= 0).all() or root(a) == root(b):
            continue
        parent[root(a)] = root(b)
        links[a, (links[a] >= 0).sum()] = b
        links[b, (links[b] >= 0).sum()] = a
    return links


@pytest.mark.parametrize("seed", range(8))
def test_greedy_edge_matches_reference(seed):
    from icp_core.traverse import _greedy_links

    ids, sims = random_graph(seed, 50, 5)
    weights = weight_dict(ids, sims)
    links = _greedy_links(*build_graph(ids, sims))
    assert link_set(links) == link_set(greedy_reference(50, weights))
    assert_linear_forest(links)


@pytest.mark.parametrize("seed", range(8))
def test_edge_weight_matches_reference(seed):
    ids, sims = random_graph(seed, 30, 4)
    indptr, nbr, weight = build_graph(ids, sims)
    weights = weight_dict(ids, sims)
    for a in range(-1, 30):
        for b in range(-1, 30):
            expected = 0.0 if min(a, b) < 0 else weights.get((min(a, b), max(a, b)), 0.0)
            assert ok.edge_weight(indptr, nbr, weight, a, b) == pytest.approx(expected)


@pytest.mark.parametrize("seed", range(8))
def test_two_hop_pairs_match_reference(seed):
    ids, sims = random_graph(seed, 40, 4)
    indptr, nbr, weight = build_graph(ids, sims)
    links = greedy_reference(40, weight_dict(ids, sims))
    width = 3
    frag_of = {d: i for i, path in enumerate(fragments(links)) for d in path}
    is_end = (links < 0).any(axis=1)
    expected = []
    for u in range(40):
        if not is_end[u]:
            continue
        for e in range(indptr[u], min(indptr[u + 1], indptr[u] + width)):
            m = nbr[e]
            for f in range(indptr[m], min(indptr[m + 1], indptr[m] + width)):
                z = nbr[f]
                if z > u and is_end[z] and frag_of[z] != frag_of[u]:
                    expected.append((u, int(z), round(float(weight[e]) * float(weight[f]), 6)))
    pair_a, pair_b, score = ok.two_hop_end_pairs(links, indptr, nbr, weight, width)
    got = [
        (int(a), int(b), round(float(s), 6)) for a, b, s in zip(pair_a, pair_b, score, strict=True)
    ]
    assert sorted(got) == sorted(expected)


@pytest.mark.parametrize("seed", range(8))
def test_join_ends_matches_reference(seed):
    rng = np.random.default_rng(seed)
    links = greedy_reference(40, weight_dict(*random_graph(seed, 40, 3)))
    before = link_set(links)
    pairs = rng.integers(0, 40, size=(60, 2))
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    expected = links.copy()
    for a, b in pairs:  # add when both have a free slot and the link closes no cycle
        if (expected[a] >= 0).all() or (expected[b] >= 0).all():
            continue
        if any(a in path and b in path for path in fragments(expected)):
            continue
        expected[a, np.flatnonzero(expected[a] < 0)[0]] = b
        expected[b, np.flatnonzero(expected[b] < 0)[0]] = a
    added = ok.join_ends(links, pairs[:, 0].copy(), pairs[:, 1].copy())
    assert link_set(links) == link_set(expected)
    assert added == len(link_set(expected) - before)
    assert_linear_forest(links)


@pytest.mark.parametrize("seed", range(8))
def test_chain_fragments_matches_reference(seed):
    links = greedy_reference(40, weight_dict(*random_graph(seed, 40, 3)))
    path_of = {d: path for path in fragments(links) for d in path}
    order = ok.chain_fragments(links).tolist()
    position = 0
    placed: set[int] = set()
    for start in range(40):  # fragments in the order of their lowest document, end to end
        if start in placed:
            continue
        path = path_of[start]
        assert order[position : position + len(path)] in (path, path[::-1])
        placed.update(path)
        position += len(path)
    assert position == 40


class ForestModel:
    """Plain-Python reference of the forest moves: a set of links; each move's effect on it."""

    def __init__(self, links: np.ndarray):
        self.links = link_set(links)

    def apply(self, remove, add):
        for a, b in remove:
            if a >= 0 and b >= 0:
                self.links.remove((min(a, b), max(a, b)))
        for a, b in add:
            if a >= 0 and b >= 0:
                self.links.add((min(a, b), max(a, b)))


def assert_forest_state(f) -> None:
    """Labels are the fragments, ranks run monotonically along each, sizes and ends agree."""
    links = f.links
    paths = fragments(links)
    live = set()
    for path in paths:
        labels = {int(f.frag[d]) for d in path}
        assert len(labels) == 1
        label = labels.pop()
        live.add(label)
        ranks = [int(f.rank[d]) for d in path]
        if ranks[0] > ranks[-1]:
            path, ranks = path[::-1], ranks[::-1]
        assert all(a < b for a, b in itertools.pairwise(ranks))
        assert f.fsize[label] == len(path)
        assert (f.fmin[label], f.fmax[label]) == (path[0], path[-1])
    free = set(f.free[: f.n_free[0]].tolist())
    assert not free & live and len(free) + len(live) == len(links)


def at(paths, i, j):
    """Document j of path i, -1 past either end."""
    return paths[i][j] if 0 <= j < len(paths[i]) else -1


def positions(paths):
    return {d: (i, j) for i, path in enumerate(paths) for j, d in enumerate(path)}


@pytest.mark.parametrize("seed", range(6))
def test_forest_moves_match_reference(seed):
    """Random valid moves through the numba primitives change the links exactly as the
    reference says and keep labels, ranks, sizes and ends consistent."""
    rng = np.random.default_rng(seed)
    n = 30
    perm = rng.permutation(n)
    links = np.full((n, 2), -1, dtype=np.int64)
    for a, b in itertools.pairwise(perm):
        if rng.random() < 0.8:
            links[a, (links[a] >= 0).sum()] = b
            links[b, (links[b] >= 0).sum()] = a
    f = ok._forest(links)
    model = ForestModel(links)
    assert_forest_state(f)
    applied = 0
    for _ in range(400):
        paths = fragments(f.links)
        where = positions(paths)
        kind = rng.integers(4)
        if kind == 0:  # cut a random link
            if not model.links:
                continue
            a, b = sorted(model.links)[rng.integers(len(model.links))]
            ok._cut(f, a, b)
            model.apply([(a, b)], [])
        elif kind == 1:  # join two ends of different fragments
            if len(paths) < 2:
                continue
            i, j = rng.choice(len(paths), 2, replace=False)
            a = paths[i][0] if rng.random() < 0.5 else paths[i][-1]
            b = paths[j][0] if rng.random() < 0.5 else paths[j][-1]
            ok._join(f, a, b)
            model.apply([], [(a, b)])
        elif kind == 2:  # 2-opt: t2, t4 on the same side in one fragment, any side across
            t1, t3 = (int(x) for x in rng.choice(n, 2, replace=False))
            (i1, j1), (i3, j3) = where[t1], where[t3]
            side = 1 if rng.random() < 0.5 else -1
            t2 = at(paths, i1, j1 + side)
            side3 = side if i1 == i3 else (1 if rng.random() < 0.5 else -1)
            t4 = at(paths, i3, j3 + side3)
            if {t2, t4} & {t1, t3} or t3 in f.links[t1] or (t2 < 0 and t4 < 0 and i1 == i3):
                continue
            ok._two_opt(f, t1, t2, t3, t4)
            model.apply([(t1, t2), (t3, t4)], [(t1, t3), (t2, t4)])
        else:  # shift: an end u takes x, which drops y (on u's side when they share a path)
            ends = [p[0] for p in paths] + [p[-1] for p in paths]
            u = int(rng.choice(ends))
            x = int(rng.integers(n))
            if x == u or x in f.links[u]:
                continue
            (iu, ju), (ix, jx) = where[u], where[x]
            if iu == ix:
                y = paths[ix][jx + (1 if ju > jx else -1)]
            else:
                options = [d for d in f.links[x] if d >= 0]
                if not options:
                    continue
                y = int(rng.choice(options))
            ok._shift(f, u, x, y)
            model.apply([(x, y)], [(u, x)])
        applied += 1
        assert link_set(f.links) == model.links
        assert_forest_state(f)
    assert applied > 200
