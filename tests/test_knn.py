"""kNN search: exact results, self exclusion, padding, approximate recall."""

from __future__ import annotations

import numpy as np
import pytest

from icp_core import knn
from icp_core.errors import IcpError
from icp_core.knn import knn_search


def unit_rows(n: int, d: int = 16, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def brute_force(vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    ids = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return ids, np.take_along_axis(sims, ids, axis=1)


class TestExact:
    def test_matches_brute_force(self):
        vectors = unit_rows(200)
        ids, sims = knn_search(vectors, 7, index="flat")
        expected_ids, expected_sims = brute_force(vectors, 7)
        np.testing.assert_allclose(sims, expected_sims, atol=1e-5)
        assert (ids == expected_ids).mean() > 0.99  # float ties may swap

    def test_self_is_excluded_even_with_identical_vectors(self):
        vectors = np.repeat(unit_rows(5), 3, axis=0)  # every vector three times
        ids, sims = knn_search(vectors, 4, index="flat")
        assert not (ids == np.arange(15)[:, None]).any()
        for row in range(15):
            twins = {t for t in range(row - row % 3, row - row % 3 + 3) if t != row}
            assert set(ids[row, :2].tolist()) == twins
        np.testing.assert_allclose(sims[:, :2], 1.0, atol=1e-5)

    def test_k_at_least_n_pads_with_minus_one(self):
        ids, sims = knn_search(unit_rows(4), 10)
        assert ids.shape == (4, 10)
        assert (ids[:, 3:] == -1).all() and (sims[:, 3:] == 0).all()
        for row in range(4):
            assert sorted(ids[row, :3].tolist()) == [i for i in range(4) if i != row]

    def test_one_document(self):
        ids, sims = knn_search(unit_rows(1), 3)
        assert ids.tolist() == [[-1, -1, -1]]

    def test_no_documents(self):
        ids, sims = knn_search(np.zeros((0, 8), dtype=np.float32), 3)
        assert ids.shape == (0, 3) and sims.shape == (0, 3)

    @pytest.mark.parametrize("k", [0, -2])
    def test_k_below_one_is_an_error(self, k):
        with pytest.raises(IcpError, match="k must be at least 1"):
            knn_search(unit_rows(3), k)

    def test_non_finite_vectors_are_an_error(self):
        vectors = unit_rows(5)
        vectors[2, 0] = np.nan
        with pytest.raises(IcpError, match="NaN or inf"):
            knn_search(vectors, 2)

    def test_unknown_index_is_an_error(self):
        with pytest.raises(IcpError, match="unknown index"):
            knn_search(unit_rows(5), 2, index="annoy")


@pytest.mark.parametrize("index", ["ivf", "hnsw"])
def test_approximate_indexes_find_most_true_neighbours(index):
    rng = np.random.default_rng(1)
    centres = unit_rows(40, 32, seed=2)
    vectors = centres[rng.integers(0, 40, 4000)] + 0.15 * rng.normal(size=(4000, 32))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    ids, _ = knn_search(vectors, 10, index=index)
    truth, _ = brute_force(vectors, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, truth, strict=True)])
    assert recall > 0.9
    assert not (ids == np.arange(4000)[:, None]).any()


def reference_rerank(queries, candidates, base, keep):
    """Per query: its candidates by exact similarity (float64), ties to the lower id, -1 last."""
    picks, sims = [], []
    for query, row in zip(queries, candidates, strict=True):
        scored = [
            (
                -float(np.dot(query.astype(np.float64), base[doc])) if doc >= 0 else np.inf,
                doc if doc >= 0 else np.iinfo(np.int64).max,
                col,
            )
            for col, doc in enumerate(row.tolist())
        ]
        best = sorted(scored)[:keep]
        picks.append([col for _, _, col in best])
        sims.append([-score for score, _, _ in best])
    return np.array(picks), np.array(sims)


@pytest.mark.parametrize("seed", range(4))
def test_rerank_matches_reference_with_ties_and_missing_candidates(seed):
    rng = np.random.default_rng(seed)
    base = unit_rows(60, d=24, seed=seed)
    base[30:40] = base[20:30]  # exact twins: equal sims, the lower id must come first
    queries = unit_rows(50, d=24, seed=seed + 100)
    candidates = np.stack([rng.permutation(60)[:25] for _ in range(50)])
    candidates[rng.random(candidates.shape) < 0.2] = -1  # absent candidates rank last
    pick, sims = knn.rerank(queries, candidates, base, 12)
    expected_pick, expected_sims = reference_rerank(queries, candidates, base, 12)
    np.testing.assert_array_equal(pick, expected_pick)
    np.testing.assert_allclose(sims, expected_sims, atol=1e-5)


def test_rerank_of_a_memory_map_equals_in_memory(tmp_path):
    base = unit_rows(40, d=8)
    np.save(tmp_path / "base.npy", base)
    candidates = np.tile(np.arange(40), (5, 1))
    mapped = np.load(tmp_path / "base.npy", mmap_mode="r")
    for got, want in zip(
        knn.rerank(base[:5], candidates, mapped, 6),
        knn.rerank(base[:5], candidates, base, 6),
        strict=True,
    ):
        np.testing.assert_array_equal(got, want)
    assert (knn.rerank(base[:5], candidates, base, 6)[0][:, 0] == np.arange(5)).all()
