"""The `ivf` index behind `auto` for large corpora: exact similarities, order, recall."""

from __future__ import annotations

import numpy as np
import pytest

from icp_core import knn


def clustered_vectors(n: int, d: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(n // 40, 2), d))
    vectors = centres[rng.integers(0, len(centres), n)] + 0.6 * rng.normal(size=(n, d))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def test_auto_switches_to_ivf_above_the_exact_limit() -> None:
    assert knn.resolve_index("auto", knn.EXACT_MAX_DOCS) == "flat"
    assert knn.resolve_index("auto", knn.EXACT_MAX_DOCS + 1) == "ivf"
    assert knn.ivf_lists(1_000) == 1_000 // 39  # small corpora: enough points per list


@pytest.mark.parametrize("n_docs", [60_000, 300_000, 1_000_000, 10_000_000])
def test_ivf_settings_are_one_consistent_choice(n_docs: int) -> None:
    settings = knn.ivf_settings(n_docs, 384)
    assert settings.lists == knn.ivf_lists(n_docs) == int(2 * np.sqrt(n_docs))
    assert 32 * settings.lists <= settings.train_points <= n_docs  # 32 points per centroid
    assert knn.IVF_MIN_PROBES <= settings.nprobe <= settings.lists
    assert settings.candidates_per_k == knn.RERANK_FACTOR
    # the scan stays sub-linear: each query reads a shrinking share of the corpus
    assert settings.nprobe / settings.lists <= 0.06 or settings.nprobe == knn.IVF_MIN_PROBES


def test_ivf_settings_grow_slowly_with_the_corpus() -> None:
    small, large = knn.ivf_settings(100_000, 384), knn.ivf_settings(1_000_000, 384)
    assert small.lists < large.lists and small.nprobe <= large.nprobe
    assert knn.ivf_settings(1_000, 384).lists == 1_000 // 39


@pytest.mark.parametrize("k", [1, 10, 40])
def test_ivf_returns_exact_similarities_best_first_without_self(k: int) -> None:
    vectors = clustered_vectors(3000)
    ids, sims = knn.knn_search(vectors, k, index="ivf")
    assert ids.shape == sims.shape == (3000, k)
    assert not (ids == np.arange(3000)[:, None]).any()
    assert (ids >= 0).all()
    exact = np.einsum("nkd,nd->nk", vectors[ids], vectors)
    np.testing.assert_allclose(sims, exact, atol=1e-6)
    assert (np.diff(sims, axis=1) <= 1e-7).all()
    for row in ids[:200]:
        assert len(set(row.tolist())) == k


def test_ivf_recall_against_exact_search() -> None:
    vectors = clustered_vectors(4000, seed=3)
    exact_ids, _ = knn.knn_search(vectors, 10, index="flat")
    ivf_ids, _ = knn.knn_search(vectors, 10, index="ivf")
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact_ids, ivf_ids, strict=True)])
    assert recall >= 0.95


def test_ivf_equal_similarities_order_by_lower_id() -> None:
    # three exact copies of each of 400 vectors: a copy's neighbours start with the other two
    # copies, at similarity 1, and they must come lowest id first
    base = clustered_vectors(400, seed=5)
    vectors = np.repeat(base, 3, axis=0)
    ids, sims = knn.knn_search(vectors, 4, index="ivf")
    for row in range(0, 1200, 97):
        copies = sorted(set(range(row - row % 3, row - row % 3 + 3)) - {row})
        assert ids[row, :2].tolist() == copies
        np.testing.assert_allclose(sims[row, :2], 1.0, atol=1e-6)
