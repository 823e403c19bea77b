"""Per-core throughput of each stage's work unit: the measured inputs of docs/scaling.md.

Each figure is one pure function on one thread, as one Ray task runs it: parsing a JSONL.gz
shard, exact (flat) and IVF kNN search, IVF-PQ code scanning, the partition walk on a
2M-document graph (the auto partition size) and token counting. Embedding is not measured here:
it needs the model on a GPU (see docs/scaling.md for the CPU figure and what to measure).

Run (about 2 minutes): PYTHONPATH=. python benchmarks/bench_stage_throughput.py \
    --corpus ../shared/corpora/debian_pkgdesc.jsonl.gz --vectors /work/cache/debian.npy
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # the tokenizer's thread pool: one thread too
sys.path.insert(0, str(Path(__file__).resolve().parent))
from synth_knn import synth  # noqa: E402

from icp_core import embed, pack, traverse  # noqa: E402
from icp_core.ingest import parse_source  # noqa: E402


def timed(function, *args):
    started = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--vectors", type=Path, required=True)
    parser.add_argument("--walk-docs", type=int, default=2_000_000)
    args = parser.parse_args()
    import faiss

    faiss.omp_set_num_threads(1)
    rows = []

    parsed, seconds = timed(parse_source, args.corpus)
    n_docs = len(parsed.ids)
    rows.append(("ingest: parse_source", n_docs / seconds, "docs/s"))

    vectors = np.ascontiguousarray(np.load(args.vectors), dtype=np.float32)
    queries = vectors[:2000]
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    _, seconds = timed(flat.search, queries, 33)
    rows.append(("knn flat: 384-d dot products", len(queries) * len(vectors) / seconds, "/s"))

    # long lists, as at 1B documents (thousands of vectors each): the scan dominates, not the
    # per-list overhead that 846 lists of 53 vectors would measure
    n_lists, nprobe = 64, 8
    quantizer = faiss.IndexFlatIP(vectors.shape[1])
    ivf = faiss.IndexIVFFlat(quantizer, vectors.shape[1], n_lists, faiss.METRIC_INNER_PRODUCT)
    ivf.train(vectors)
    ivf.add(vectors)
    ivf.nprobe = nprobe
    _, seconds = timed(ivf.search, queries, 33)
    scanned = len(queries) * nprobe * len(vectors) / n_lists
    rows.append(("knn ivf-flat: vectors scanned", scanned / seconds, "/s"))

    pq_index = faiss.IndexIVFPQ(
        faiss.IndexFlatIP(vectors.shape[1]), vectors.shape[1], n_lists, 48, 8,
        faiss.METRIC_INNER_PRODUCT,
    )  # fmt: skip
    pq_index.train(vectors)
    pq_index.add(vectors)
    pq_index.nprobe = nprobe
    _, seconds = timed(pq_index.search, queries, 33)
    rows.append(("knn ivf-pq48: codes scanned", scanned / seconds, "/s"))

    ids, sims, _ = synth(args.walk_docs, 10)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _, seconds = timed(traverse.traverse, ids, sims)
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    rows.append((f"order: traverse() on {args.walk_docs:,} docs, k=10", args.walk_docs / seconds,
                 f"docs/s (peak RSS grew {grown:.0f} MB)"))  # fmt: skip

    tokenizer = pack.load_tokenizer(str(embed.resolve_model_path(None) / "tokenizer.json"))
    counts, seconds = timed(pack.count_tokens, tokenizer, parsed.texts)
    rows.append(("pack: count_tokens", counts.sum() / seconds, "tokens/s"))
    rows.append(("  (mean tokens per document)", counts.mean(), ""))

    width = max(len(name) for name, _, _ in rows)
    print(f"one thread each, {n_docs:,} documents of {args.corpus.name}\n")
    for name, value, unit in rows:
        print(f"{name:{width}s}  {value:14,.0f} {unit}")


if __name__ == "__main__":
    main()
