"""Compiled kernels against plain-Python references, on seeded random and hand-made graphs."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from icp_core import _kernels
from icp_core.errors import IcpError
from icp_core.traverse import traverse

# ---------------------------------------------------------------------------------------------
# Plain-Python references, written from the docstrings of traverse.py and DESIGN.md
# ---------------------------------------------------------------------------------------------


def undirected_neighbours(ids, sims) -> list[dict[int, float]]:
    """Per document: neighbour -> weight, edge if either lists the other, weight = larger sim."""
    n = len(ids)
    neighbours: list[dict[int, float]] = [{} for _ in range(n)]
    for i in range(n):
        for j, w in zip(ids[i], sims[i], strict=True):
            j, w = int(j), float(w)
            if j < 0 or j == i:
                continue
            for a, b in ((i, j), (j, i)):
                if b not in neighbours[a] or w > neighbours[a][b]:
                    neighbours[a][b] = w
    return neighbours


def reference_icp(ids, sims) -> list[int]:
    """Algorithm 1: start at an unvisited document of minimum degree (ties: lowest id); step to
    the most similar unvisited neighbour (ties: lowest id); restart likewise when stuck."""
    neighbours = undirected_neighbours(ids, sims)
    n = len(ids)
    starts = sorted(range(n), key=lambda d: (len(neighbours[d]), d))
    visited = [False] * n
    order: list[int] = []
    cur = starts[0]
    while True:
        visited[cur] = True
        order.append(cur)
        if len(order) == n:
            return order
        free = [(w, -j) for j, w in neighbours[cur].items() if not visited[j]]
        cur = -max(free)[1] if free else next(d for d in starts if not visited[d])


def random_graph(seed: int, n: int, k: int, ties: bool = False):
    """Clustered kNN lists with the ugly cases: -1 holes, self entries, repeated neighbours,
    negative and signed-zero similarities, and (with ties) many equal weights."""
    rng = np.random.default_rng(seed)
    cluster = max(2, n // 5)
    base = (np.arange(n) // cluster) * cluster
    ids = (base[:, None] + rng.integers(0, cluster, size=(n, k))) % n
    far = rng.random((n, k)) < 0.2
    ids = np.where(far, rng.integers(0, n, size=(n, k)), ids)
    ids[rng.random((n, k)) < 0.1] = -1
    if ties:
        sims = rng.integers(-2, 3, size=(n, k)).astype(np.float32) / 2
        sims[sims == 0] = rng.choice(np.array([0.0, -0.0], dtype=np.float32), (sims == 0).sum())
    else:
        sims = rng.uniform(-0.2, 1.0, size=(n, k)).astype(np.float32)
    sims = -np.sort(-sims, axis=1)
    return ids.astype(np.int64), sims


# ---------------------------------------------------------------------------------------------
# traverse(method="icp") == Algorithm 1
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize(("n", "k"), [(1, 1), (2, 3), (7, 2), (40, 5), (300, 10)])
def test_icp_matches_reference_on_random_graphs(seed: int, n: int, k: int) -> None:
    ids, sims = random_graph(seed, n, k, ties=seed % 2 == 1)
    assert traverse(ids, sims, "icp").tolist() == reference_icp(ids, sims)


@settings(max_examples=150, deadline=None)
@given(st.data())
@pytest.mark.slow
def test_icp_matches_reference_on_arbitrary_lists(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 25))
    k = data.draw(st.integers(1, 6))
    ids = np.array(
        data.draw(
            st.lists(
                st.lists(st.integers(-1, n - 1), min_size=k, max_size=k), min_size=n, max_size=n
            )
        ),
        dtype=np.int64,
    )
    weights = st.sampled_from([-1.0, -0.5, -0.0, 0.0, 0.25, 0.5, 0.75, 1.0])
    sims = np.array(
        data.draw(st.lists(st.lists(weights, min_size=k, max_size=k), min_size=n, max_size=n)),
        dtype=np.float32,
    )
    # rows need not be sorted: the walk must not rely on the lists being best first
    assert traverse(ids, sims, "icp").tolist() == reference_icp(ids, sims)


def test_icp_docstring_example_and_hand_checked_ties() -> None:
    ids = np.array([[1, 2], [0, -1], [0, -1], [-1, -1]])
    sims = np.array([[0.9, 0.5], [0.9, 0], [0.5, 0], [0, 0]], dtype=np.float32)
    assert traverse(ids, sims).tolist() == [3, 1, 0, 2]
    # from doc 1 its own list offers 2 (0.5) before 0 (0.2), but 0 lists 1 at 0.8: the edge
    # 0-1 weighs 0.8, so the walk goes 3 -> 1 -> 0 -> 2 (own weights alone would give 2 first)
    ids = np.array([[1, 2, -1], [2, 0, 3], [-1, -1, -1], [-1, -1, -1]])
    sims = np.array([[0.8, 0.1, 0], [0.5, 0.2, 0.3], [0, 0, 0], [0, 0, 0]], dtype=np.float32)
    assert reference_icp(ids, sims) == [3, 1, 0, 2]
    assert traverse(ids, sims).tolist() == [3, 1, 0, 2]
    # all degrees 2: start at 0; 1 and 2 tie at 0.5 from 0 and the lower id wins, although
    # 0's list names 2 first
    ids = np.array([[2, 1], [2, -1], [-1, -1]])
    sims = np.array([[0.5, 0.5], [0.3, 0], [0, 0]], dtype=np.float32)
    assert reference_icp(ids, sims) == [0, 1, 2]
    assert traverse(ids, sims).tolist() == [0, 1, 2]


def test_icp_same_order_for_int32_int64_and_memmapped_inputs(tmp_path) -> None:
    ids, sims = random_graph(3, 500, 8)
    expected = traverse(ids, sims).tolist()
    assert traverse(ids.astype(np.int32), sims).tolist() == expected
    np.save(tmp_path / "ids.npy", ids.astype(np.int32))
    np.save(tmp_path / "sims.npy", sims)
    mapped = traverse(
        np.load(tmp_path / "ids.npy", mmap_mode="r"), np.load(tmp_path / "sims.npy", mmap_mode="r")
    )
    assert mapped.tolist() == expected
    assert mapped.dtype == np.int64


def test_icp_graph_without_edges_is_identity_order() -> None:
    ids = np.full((5, 3), -1)
    assert traverse(ids, np.zeros((5, 3), dtype=np.float32)).tolist() == [0, 1, 2, 3, 4]


def test_icp_order_refuses_more_documents_than_its_32_bit_keys_hold() -> None:
    huge = np.lib.stride_tricks.as_strided(np.zeros(1, dtype=np.int32), (2**32, 1), (0, 4))
    with pytest.raises(IcpError, match="2\\*\\*32"):
        _kernels.icp_order(huge, huge.view(np.float32))


def test_narrow_ids_copies_and_reports_the_range_before_narrowing() -> None:
    ids = np.array([[5, -1, 3], [2**40 + 1, 0, -(2**35)]], dtype=np.int64)[:, ::2]  # strided
    out = np.empty(ids.shape, dtype=np.int32)
    assert _kernels.narrow_ids(ids, out) == (-(2**35), 2**40 + 1)
    assert out.tolist() == ids.astype(np.int32).tolist()
    ids, _ = random_graph(4, 3000, 7)
    out = np.empty(ids.shape, dtype=np.int32)
    assert _kernels.narrow_ids(ids, out) == (ids.min(), ids.max())
    assert np.array_equal(out, ids)


@pytest.mark.parametrize("bad", [2**32, 2**32 + 1, -(2**32) + 1, -2, 10])
def test_ids_that_would_wrap_in_int32_are_refused_not_narrowed(bad: int) -> None:
    # 2**32 + 1 would become document 1 and -(2**32) + 1 document 1 after an int32 cast
    ids, sims = random_graph(2, 10, 3)
    ids[4, 1] = bad
    with pytest.raises(IcpError, match="must lie in -1..9"):
        traverse(ids, sims, "icp")


# ---------------------------------------------------------------------------------------------
# The kernels behind it, one by one
# ---------------------------------------------------------------------------------------------


def decode(key: int) -> tuple[float, int]:
    """(weight, doc) of a candidate key, inverting _edge_key."""
    high, low = key >> 32, key & 0xFFFFFFFF
    bits = high & 0x7FFFFFFF if high & 0x80000000 else ~high & 0xFFFFFFFF
    return float(np.array([bits], dtype=np.uint32).view(np.float32)[0]), 0xFFFFFFFF - low


def build_in_edges(ids, sims, pointer_type=np.uint32, blocks=2):
    cursors = np.zeros((blocks, len(ids)), dtype=pointer_type)
    _kernels.count_in_edges(ids, cursors)
    in_ptr = np.empty(len(ids) + 1, dtype=pointer_type)
    _kernels.in_edge_offsets(cursors, in_ptr)
    in_keys = np.empty(int(in_ptr[-1]), dtype=np.uint64)
    _kernels.fill_in_edges(ids, sims, cursors, in_keys)
    assert np.array_equal(cursors[-1], in_ptr[1:]), "the last block ends each document's slice"
    return in_ptr, in_keys


@pytest.mark.parametrize("blocks", [1, 2, 3, 64, 250])
@pytest.mark.parametrize("pointer_type", [np.uint32, np.int64])
@pytest.mark.parametrize("seed", range(5))
def test_in_edges_list_every_valid_entry_once_in_source_order(
    seed: int, pointer_type, blocks: int
) -> None:
    # any number of row blocks, more than threads or than rows included, gives the same lists
    ids, sims = random_graph(seed, 200, 7, ties=seed % 2 == 0)
    ids32 = ids.astype(np.int32)
    in_ptr, in_keys = build_in_edges(ids32, sims, pointer_type, blocks)
    assert in_ptr[0] == 0 and np.all(np.diff(in_ptr.astype(np.int64)) >= 0)
    for j in range(len(ids)):
        expected = [
            (float(sims[i, c]) + 0.0, i)
            for i in range(len(ids))
            for c in range(ids.shape[1])
            if ids[i, c] == j and i != j
        ]
        got = [decode(int(key)) for key in in_keys[in_ptr[j] : in_ptr[j + 1]]]
        assert got == expected


def test_edge_keys_order_by_weight_then_lowest_id() -> None:
    rng = np.random.default_rng(0)
    special = [0.0, -0.0, 1e-30, -1e-30, np.inf, -np.inf, 3.4e38, -3.4e38]
    weights = np.concatenate([rng.normal(size=300), special]).astype(np.float32)
    weights[:60] = weights[60:120]  # equal weights from different documents
    # documents 1..M each list document 0 with one weight: doc 0's in-edge keys hold them all
    n = weights.size + 1
    ids = np.zeros((n, 1), dtype=np.int32)
    ids[0, 0] = -1
    sims = np.concatenate([[0.0], weights]).astype(np.float32)[:, None]
    in_ptr, in_keys = build_in_edges(ids, sims)
    assert in_ptr[1] == weights.size
    decoded = [decode(int(key)) for key in in_keys]
    assert decoded == [(float(w) + 0.0, doc) for doc, w in enumerate(weights, start=1)]
    by_key = [decode(int(key)) for key in sorted(in_keys.tolist(), reverse=True)]
    assert by_key == sorted(decoded, key=lambda pair: (-pair[0], pair[1]))


@pytest.mark.parametrize("blocks", [1, 3])
@pytest.mark.parametrize("seed", range(6))
def test_degrees_and_best_in_match_the_undirected_graph(seed: int, blocks: int) -> None:
    ids, sims = random_graph(seed, 150, 6, ties=seed % 2 == 1)
    ids32 = ids.astype(np.int32)
    in_ptr, in_keys = build_in_edges(ids32, sims, blocks=blocks)
    degree = np.empty(len(ids), dtype=np.int32)
    best_in = np.empty(len(ids), dtype=np.uint64)
    _kernels.degrees_and_best_in(ids32, in_ptr, in_keys, degree, best_in)
    neighbours = undirected_neighbours(ids, sims)
    assert degree.tolist() == [len(nb) for nb in neighbours]
    for j in range(len(ids)):
        sources = [
            (float(sims[i, c]) + 0.0, -i)
            for i in range(len(ids))
            for c in range(ids.shape[1])
            if ids[i, c] == j and i != j
        ]
        if sources:
            weight, minus_id = max(sources)
            assert decode(int(best_in[j])) == (weight, -minus_id)
        else:
            assert best_in[j] == 0


def test_degrees_count_repeats_self_entries_and_mutual_pairs_once() -> None:
    # 0 lists 1 twice and itself; 1 lists 0 three times (a mutual pair, repeated both ways)
    # and 2 once; 2 lists 0 once and 1 twice; 3 lists nothing, 4 only itself and -1
    ids = np.array(
        [[1, 1, 0, -1], [0, 2, 0, 0], [0, 1, 1, -1], [-1, -1, -1, -1], [4, -1, 4, -1]],
        dtype=np.int32,
    )
    sims = np.full(ids.shape, 0.5, dtype=np.float32)
    in_ptr, in_keys = build_in_edges(ids, sims)
    degree = np.empty(len(ids), dtype=np.int32)
    best_in = np.empty(len(ids), dtype=np.uint64)
    _kernels.degrees_and_best_in(ids, in_ptr, in_keys, degree, best_in)
    assert degree.tolist() == [2, 2, 2, 0, 0]
    assert degree.tolist() == [len(nb) for nb in undirected_neighbours(ids, sims)]
    assert best_in[3] == 0 and best_in[4] == 0


@pytest.mark.parametrize("threads", [1, 2])
def test_icp_order_is_the_same_for_any_number_of_threads(threads: int) -> None:
    ids, sims = random_graph(7, 2000, 8, ties=True)
    expected = reference_icp(ids, sims)
    before = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        assert traverse(ids, sims, "icp").tolist() == expected
    finally:
        numba.set_num_threads(before)


def test_order_by_degree_is_a_stable_counting_sort() -> None:
    degree = np.random.default_rng(1).integers(0, 7, size=1000).astype(np.int32)
    out = np.empty(1000, dtype=np.int32)
    _kernels.order_by_degree(degree, out)
    assert out.tolist() == sorted(range(1000), key=lambda d: (degree[d], d))


# ---------------------------------------------------------------------------------------------
# Token export
# ---------------------------------------------------------------------------------------------


def reference_piece_tokens(doc_tokens, piece_doc, start, end, sep, sep_ids) -> list[int]:
    out: list[int] = []
    for d, a, b, s in zip(piece_doc, start, end, sep, strict=True):
        out += list(doc_tokens[d][a:b])
        continuation = a == b and a > 0
        out += list(sep_ids[len(sep_ids) - s :] if continuation else sep_ids[:s])
    return out


@pytest.mark.parametrize("seed", range(8))
def test_write_piece_tokens_matches_reference_on_random_packings(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_docs = int(rng.integers(1, 30))
    lengths = rng.integers(0, 40, size=n_docs)
    lengths[rng.random(n_docs) < 0.2] = 0  # empty documents carry only their separator
    doc_tokens = [rng.integers(0, 60000, size=n).astype(np.uint32) for n in lengths]
    sep_ids = rng.integers(0, 60000, size=int(rng.integers(1, 4))).astype(np.uint32)
    order = rng.permutation(n_docs).astype(np.int64)
    context_length = int(rng.integers(len(sep_ids) + 1, 50))
    _, piece_doc, start, end, sep = _kernels.pack_pieces(
        order, lengths.astype(np.int64), len(sep_ids), context_length, bool(seed % 2)
    )
    offsets = np.zeros(n_docs + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.concatenate(doc_tokens) if n_docs else np.zeros(0, dtype=np.uint32)
    expected = reference_piece_tokens(doc_tokens, piece_doc, start, end, sep, sep_ids)
    out = np.full(len(expected) + 5, 7, dtype=np.uint32)
    position = _kernels.write_piece_tokens(
        flat.astype(np.uint32), offsets, piece_doc, start, end, sep, sep_ids, out, 2
    )
    assert position == 2 + len(expected)
    assert out[2:position].tolist() == expected
    assert out[:2].tolist() == [7, 7] and out[position:].tolist() == [7] * 3
