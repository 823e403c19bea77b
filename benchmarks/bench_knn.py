"""kNN: `knn_search(index="auto")` vs exact faiss IndexFlatIP at N = 100k, 300k and 1M, d = 384.

Vectors: `synth_vectors.clustered(N)`, a two-level mixture of Gaussians on the unit sphere
(topics, sub-topics of ~100 documents, anisotropic noise), made for each size; the script
prints their mean top-1 and top-10 similarity (real all-MiniLM-L6-v2 vectors of the shared
corpora: about 0.72-0.79 and 0.6). No model and no cached embeddings are needed.

Exact search of 1M x 1M takes hours on two cores, so it runs on a random sample of queries
(--queries) against all N vectors and its time is scaled by N / queries; recall@10 (self
excluded) is measured on the same queries. `knn_search` runs in full, index build included,
and the IVF settings it used (`knn.ivf_settings`) are printed.

    python benchmarks/bench_knn.py                          # 100k, 300k, 1M: ~10 minutes
    python benchmarks/bench_knn.py --sizes 1000000 --queries 10000
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from _bench_util import machine, memory_mib, ratio, timed
from synth_vectors import clustered

from icp_core import knn
from icp_core.stages import KNN_MIN_STORED

K = 10


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
    parser.add_argument("--sizes", default="100000,300000,1000000")
    parser.add_argument("--queries", type=int, default=2000, help="exact-search query sample")
    parser.add_argument(
        "--k", type=int, default=KNN_MIN_STORED, help="neighbours searched (icp knn stores 32)"
    )
    args = parser.parse_args()
    import faiss

    print(f"machine: {machine()}; faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads")
    rng = np.random.default_rng(0)
    print(f"knn_search(k={args.k}); recall@{K} against exact search")
    print("| N | ivf settings | knn_search wall | CPU | exact (scaled) | speed-up | recall@10 |")
    print("|---|---|---|---|---|---|---|")
    for n in (int(size) for size in args.sizes.split(",")):
        started = time.perf_counter()
        vectors = clustered(n, seed=n)
        queries = np.sort(rng.choice(n, min(args.queries, n), replace=False))
        exact, exact_time = exact_on_queries(vectors, queries)
        scale = n / len(queries)
        # searched as deep as `icp knn` stores (k_max), recall measured on the first K
        (ids, _), auto_time = timed(lambda v=vectors: knn.knn_search(v, args.k, index="auto"))
        kind = knn.resolve_index("auto", n)
        recall = recall_at_k(ids, exact, queries)
        exact_wall = exact_time["wall_min"] * scale
        settings = knn.ivf_settings(n, vectors.shape[1])
        shown = (
            f"{settings.lists} lists, {settings.train_points:,} train, nprobe {settings.nprobe}"
            if kind == "ivf"
            else kind
        )
        print(
            f"| {n:,} | {shown} | {auto_time['wall_min']:.0f} s | {auto_time['cpu_min']:.0f} s "
            f"| {exact_wall:.0f} s | {ratio(exact_wall, auto_time['wall_min'])} | {recall:.4f} |"
        )
        print(
            f"  ({neighbourhood(vectors, queries, exact)}; exact measured on {len(queries):,} "
            f"queries; peak RSS {memory_mib()['VmHWM']:.0f} MiB; "
            f"elapsed {time.perf_counter() - started:.0f} s; load {os.getloadavg()[0]:.1f})",
            flush=True,
        )


if __name__ == "__main__":
    main()
