"""kNN: `knn_search(index="auto")` vs exact faiss IndexFlatIP, N = 100k and 300k, d = 384.

Vectors: real embeddings are clustered, so the vectors are made from the real all-MiniLM-L6-v2
embeddings of the shared corpora (debian + pydocs, 46,899 documents; --cache holds their .npy):
vector = normalise((1 - t) x_i + t x_j + e), with x_i a random real vector, x_j one of its
10 nearest real neighbours (uniform), t ~ U(0, 0.5) and e ~ N(0, (0.5^2 / 384) I), i.e.
noise of norm about 0.5. The script prints the mean top-1 and top-10 similarity of the real
and the made vectors, so one can see how alike their neighbourhoods are.

Exact search of 300k x 300k takes about half an hour on two cores, so it runs on a random
subset of queries against all N vectors and its time is scaled by N / queries (exact search
time is linear in the number of queries); recall@10 (self excluded) is measured on the same
queries. `knn_search` runs in full, index build included.

Also: recall of the `ivf` index on the real vectors alone (forced, 47k), which are harder
than the made ones.

    python benchmarks/bench_knn.py                    # 100k and 300k, ~10 minutes
    python benchmarks/bench_knn.py --sizes 100000     # one size
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from _bench_util import CORPORA, VECTOR_CACHE, corpus_vectors, machine, ratio, timed

from icp_core import knn

K = 10


def real_vectors(corpora: Path, cache: Path) -> np.ndarray:
    parts = [np.load(corpus_vectors(name, corpora, cache)) for name in ("debian", "pydocs")]
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)


def made_vectors(real: np.ndarray, real_neighbors: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n unit vectors around the real ones (see the module docstring)."""
    rng = np.random.default_rng(seed)
    source = rng.integers(0, len(real), n)
    toward = real_neighbors[source, rng.integers(0, real_neighbors.shape[1], n)]
    t = rng.uniform(0.0, 0.5, (n, 1)).astype(np.float32)
    noise = rng.normal(0.0, 0.5 / np.sqrt(real.shape[1]), (n, real.shape[1]))
    vectors = (1 - t) * real[source] + t * real[toward] + noise.astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def exact_on_queries(vectors: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, dict]:
    """Exact top-(K+1) of the query rows against all vectors, and its timing."""
    import faiss

    def search() -> np.ndarray:
        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(vectors)
        return index.search(vectors[queries], K + 1)[1]

    return timed(search, repeat=1)


def recall_at_k(found: np.ndarray, exact_with_self: np.ndarray, queries: np.ndarray) -> float:
    hits = 0
    for row, query in enumerate(queries):
        truth = [j for j in exact_with_self[row] if j != query][:K]
        hits += len(set(truth) & set(found[query, :K].tolist()))
    return hits / (K * len(queries))


def neighbourhood(vectors: np.ndarray, queries: np.ndarray, exact: np.ndarray) -> str:
    sims = np.einsum("qkd,qd->qk", vectors[exact[:, 1 : K + 1]], vectors[queries])
    return f"mean top-1 sim {sims[:, 0].mean():.3f}, top-10 {sims[:, K - 1].mean():.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,300000")
    parser.add_argument("--queries", type=int, default=4000, help="exact-search query sample")
    parser.add_argument("--corpora", type=Path, default=CORPORA)
    parser.add_argument("--cache", type=Path, default=VECTOR_CACHE, help="embeddings .npy folder")
    args = parser.parse_args()
    import faiss

    print(f"machine: {machine()}; faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads")
    real = real_vectors(args.corpora, args.cache)
    rng = np.random.default_rng(0)
    real_queries = np.sort(rng.choice(len(real), min(args.queries, len(real)), replace=False))
    real_exact, real_exact_time = exact_on_queries(real, real_queries)
    index = faiss.IndexFlatIP(real.shape[1])
    index.add(real)
    real_neighbors = index.search(real, K + 1)[1][:, 1:]
    print(f"real vectors: {len(real):,} ({neighbourhood(real, real_queries, real_exact)})")
    (ids, _), ivf_time = timed(lambda: knn.knn_search(real, K, index="ivf"))
    real_exact_s = real_exact_time["wall_min"] * len(real) / len(real_queries)
    print(
        f"  ivf forced on them: n_lists {knn.ivf_lists(len(real))}, "
        f"recall@10 {recall_at_k(ids, real_exact, real_queries):.4f}, "
        f"{ivf_time['wall_min']:.1f}s vs exact {real_exact_s:.1f}s (scaled)"
    )
    for n in (int(size) for size in args.sizes.split(",")):
        vectors = made_vectors(real, real_neighbors, n, seed=n)
        queries = np.sort(rng.choice(n, min(args.queries, n), replace=False))
        exact, exact_time = exact_on_queries(vectors, queries)
        scale = n / len(queries)
        started = time.perf_counter()
        (ids, _), auto_time = timed(lambda v=vectors: knn.knn_search(v, K, index="auto"))
        kind = knn.resolve_index("auto", n)
        recall = recall_at_k(ids, exact, queries)
        exact_wall, exact_cpu = exact_time["wall_min"] * scale, exact_time["cpu_min"] * scale
        print(f"\nN = {n:,}, d = {vectors.shape[1]} ({neighbourhood(vectors, queries, exact)})")
        print(
            f"  exact IndexFlatIP: {exact_wall:.0f}s wall, {exact_cpu:.0f}s CPU "
            f"(measured on {len(queries):,} queries: {exact_time['wall_min']:.1f}s, x{scale:.0f})"
        )
        print(
            f"  knn_search(auto -> {kind}): {auto_time['wall_min']:.0f}s wall, "
            f"{auto_time['cpu_min']:.0f}s CPU, build included"
            + (f", n_lists {knn.ivf_lists(n)}" if kind == "ivf" else "")
        )
        print(
            f"  speed-up {ratio(exact_wall, auto_time['wall_min'])} wall, "
            f"{ratio(exact_cpu, auto_time['cpu_min'])} CPU; recall@10 {recall:.4f} "
            f"(targets at 300k: >= 5x, >= 0.95); elapsed {time.perf_counter() - started:.0f}s"
        )


if __name__ == "__main__":
    main()
