"""kNN search: exact results, self exclusion, padding, approximate recall."""

from __future__ import annotations

import numpy as np
import pytest

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
