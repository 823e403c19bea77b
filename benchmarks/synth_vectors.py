"""Synthetic clustered unit vectors for kNN speed checks (no model needed).

A two-level mixture of Gaussians on the unit sphere: `topics` random directions, each with
`subtopics` sub-centres around it, documents around the sub-centres. The noise is anisotropic
(variance decaying with the dimension index, as the spectrum of real sentence embeddings
does), so neighbourhoods are neither trivially separated nor uniform noise. With the defaults
at 1M documents the mean top-1 / top-10 similarity is close to that of real all-MiniLM-L6-v2
vectors of the shared corpora (about 0.75 / 0.6; `bench_knn.py` prints both).
"""

from __future__ import annotations

import numpy as np


def _noise(rng: np.random.Generator, n: int, dim: int, scale: float) -> np.ndarray:
    spectrum = 1.0 / np.sqrt(np.arange(1, dim + 1, dtype=np.float32))
    spectrum *= np.sqrt(dim) / np.linalg.norm(spectrum)  # E|row|^2 = scale^2
    basis = np.linalg.qr(np.random.default_rng(12345).normal(size=(dim, dim)))[0]
    out = rng.standard_normal((n, dim), dtype=np.float32) * (spectrum * scale / np.sqrt(dim))
    return out @ basis.astype(np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def clustered(
    n: int,
    dim: int = 384,
    seed: int = 0,
    docs_per_subtopic: int = 100,
    subtopics: int = 10,
    topic_spread: float = 0.8,
    doc_spread: float = 0.75,
) -> np.ndarray:
    """(n, dim) float32 unit rows, in random order (not grouped by cluster)."""
    rng = np.random.default_rng(seed)
    n_sub = max(1, n // docs_per_subtopic)
    n_topics = max(1, n_sub // subtopics)
    topics = _unit(rng.standard_normal((n_topics, dim), dtype=np.float32))
    parent = rng.integers(0, n_topics, n_sub)
    subs = _unit(topics[parent] + _noise(rng, n_sub, dim, topic_spread))
    out = np.empty((n, dim), dtype=np.float32)
    owner = rng.integers(0, n_sub, n)
    step = 200_000
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        out[lo:hi] = _unit(subs[owner[lo:hi]] + _noise(rng, hi - lo, dim, doc_spread))
    return out
