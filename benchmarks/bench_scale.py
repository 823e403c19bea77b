"""1M documents through every stage of the local engine with `--vectors`: time and memory.

Question: with embedding taken out (vectors imported), what does each remaining stage cost at
1M documents on a 2-core machine, and how long would embedding itself take with each
embedding option?

Input (written once into --work): synthetic clustered unit vectors (`synth_vectors.clustered`,
384-d, rows in corpus order) and a JSONL of one text per vector, words drawn from a fixed
pseudo-vocabulary with log-normal lengths (median `--words` words), so packing tokenizes a
realistic volume of text.

Each stage runs as its own `icp` subprocess (ingest, embed --vectors, knn, dedup, order, pack,
metrics, export), like a user would run them, started by a small launcher process whose
`os.wait4` gives the stage's own resource usage: wall time, CPU time (user + system) and peak
RSS (ru_maxrss) per stage. After the kNN
stage, recall@10 of the stored lists is measured against exact search (faiss IndexFlatIP) for
`--recall-sample` random documents.

The embedding time per option is extrapolated from a measured docs/s (bench_embed.py, on the
shared corpora), given with `--embed-rate NAME=DOCS_PER_S` (repeatable).

Run (2 shared cores; the 1M run takes about 20 minutes):
    PYTHONPATH=. python benchmarks/bench_scale.py --docs 1000000 --work /tmp/icp_scale
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_util import ROOT, machine  # noqa: E402
from synth_vectors import clustered  # noqa: E402

STAGES = ("ingest", "embed", "knn", "dedup", "order", "pack", "metrics", "export")
_VOCABULARY = 20_000


def write_inputs(folder: Path, n_docs: int, words: int, seed: int) -> tuple[Path, Path]:
    """`vectors-N.npy` and `corpus-N.jsonl` in folder (kept: a rerun reuses them)."""
    vectors = folder / f"vectors-{n_docs}.npy"
    corpus = folder / f"corpus-{n_docs}.jsonl"
    if vectors.exists() and corpus.exists():
        return corpus, vectors
    folder.mkdir(parents=True, exist_ok=True)
    np.save(vectors, clustered(n_docs, seed=seed))
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    lengths = rng.integers(2, 10, _VOCABULARY)
    vocabulary = ["".join(rng.choice(letters, n)) for n in lengths]
    # Zipf-like word frequencies, as in natural text
    weights = 1.0 / np.arange(1, _VOCABULARY + 1)
    weights /= weights.sum()
    sizes = np.maximum(5, rng.lognormal(np.log(words), 0.8, n_docs).astype(np.int64))
    with open(corpus, "w") as handle:
        for start in range(0, n_docs, 50_000):
            stop = min(n_docs, start + 50_000)
            drawn = rng.choice(_VOCABULARY, int(sizes[start:stop].sum()), p=weights)
            cuts = np.cumsum(sizes[start:stop])[:-1]
            for i, row in enumerate(np.split(drawn, cuts), start):
                text = f"d{i} " + " ".join(vocabulary[w] for w in row)
                handle.write(json.dumps({"id": f"d{i}", "text": text}) + "\n")
    return corpus, vectors


# A child's ru_maxrss starts from its parent's peak RSS at the exec (the kernel carries the
# forking process's high-water mark over), and this process holds the corpus and the vectors:
# each stage is therefore started by a small launcher, whose own child's usage is the stage's.
_LAUNCHER = """
import json, os, subprocess, sys
child = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(child.pid, 0)
with open(sys.argv[1], "w") as out:
    json.dump({"cpu_s": usage.ru_utime + usage.ru_stime, "maxrss_kib": usage.ru_maxrss}, out)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_stage(argv: list[str], log: Path) -> dict[str, float]:
    """Run one `icp` command as a child; its wall s, CPU s and peak RSS (MiB)."""
    usage_file = log.with_suffix(".usage.json")
    command = [sys.executable, "-c", _LAUNCHER, str(usage_file)]
    command += [sys.executable, "-m", "icp_core.cli", *argv]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    with open(log, "a") as out:
        out.write(f"$ icp {' '.join(argv)}\n")
        out.flush()
        code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
    wall = time.perf_counter() - started
    if code != 0:
        sys.exit(f"icp {' '.join(argv)} failed; see {log}")
    usage = json.loads(usage_file.read_text())
    return {
        "wall_s": wall,
        "cpu_s": usage["cpu_s"],
        "peak_rss_mib": usage["maxrss_kib"] / 1024,
        "load": os.getloadavg()[0],
    }


def knn_recall(workspace: Path, vectors_path: Path, sample: int, k: int, seed: int) -> float:
    """recall@k of the stored neighbour lists against exact inner-product search, on `sample`
    random documents (self excluded on both sides)."""
    import faiss

    from icp_core import stages
    from icp_core.workspace import Workspace

    vectors = np.load(vectors_path, mmap_mode="r")
    rng = np.random.default_rng(seed)
    queries = np.sort(rng.choice(len(vectors), sample, replace=False))
    with Workspace(workspace, read_only=True) as ws:
        found, _ = stages.read_neighbors(ws, k)
    index = faiss.IndexFlatIP(vectors.shape[1])
    for start in range(0, len(vectors), 200_000):
        index.add(np.ascontiguousarray(vectors[start : start + 200_000]))
    _, exact = index.search(np.ascontiguousarray(vectors[queries]), k + 1)
    hits = 0
    for row, query in enumerate(queries):
        truth = [j for j in exact[row] if j != query][:k]
        hits += len(set(truth) & set(found[query].tolist()))
    return hits / (k * len(queries))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--words", type=int, default=60, help="median words per text")
    parser.add_argument("--work", type=Path, default=Path("/tmp/icp_scale"))
    parser.add_argument("--recall-sample", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--embed-rate",
        action="append",
        default=[],
        metavar="NAME=DOCS_PER_S",
        help="a measured embedding throughput to extrapolate (repeatable)",
    )
    args = parser.parse_args()

    print(machine())
    started = time.perf_counter()
    corpus, vectors = write_inputs(args.work, args.docs, args.words, args.seed)
    print(f"inputs ready in {time.perf_counter() - started:.0f} s: {corpus}, {vectors}")
    workspace = args.work / f"ws-{args.docs}.duckdb"
    out = args.work / f"export-{args.docs}"
    for stale in (workspace, Path(f"{workspace}.wal")):
        stale.unlink(missing_ok=True)
    shutil.rmtree(out, ignore_errors=True)
    log = args.work / f"stages-{args.docs}.log"
    log.unlink(missing_ok=True)

    ws = ["--workspace", str(workspace)]
    commands = {
        "ingest": ["ingest", str(corpus), *ws],
        "embed": ["embed", *ws, "--vectors", str(vectors)],
        "knn": ["knn", *ws],
        "dedup": ["dedup", *ws],
        "order": ["order", *ws],
        "pack": ["pack", *ws],
        "metrics": ["metrics", *ws],
        "export": ["export", *ws, "--out", str(out)],
    }
    results: dict[str, dict[str, float]] = {}
    recall = None
    for stage in STAGES:
        results[stage] = run_stage(commands[stage], log)
        row = results[stage]
        print(
            f"{stage:8s} wall {row['wall_s']:7.1f} s  cpu {row['cpu_s']:7.1f} s  "
            f"peak RSS {row['peak_rss_mib']:7.0f} MiB  load {row['load']:.2f}",
            flush=True,
        )
        if stage == "knn" and args.recall_sample:
            recall = knn_recall(workspace, vectors, args.recall_sample, 10, args.seed)
            print(f"knn recall@10 vs exact on {args.recall_sample} documents: {recall:.4f}")

    summary = {"docs": args.docs, "stages": results, "recall_at_10": recall}
    (args.work / f"results-{args.docs}.json").write_text(json.dumps(summary, indent=1))
    total_wall = sum(r["wall_s"] for r in results.values())
    total_cpu = sum(r["cpu_s"] for r in results.values())
    print(f"\n{machine()}")
    print("\n| stage | wall s | CPU s | peak RSS MiB | load (1 min) at end |")
    print("|---|---:|---:|---:|---:|")
    for stage, row in results.items():
        print(
            f"| {stage} | {row['wall_s']:.1f} | {row['cpu_s']:.1f} | "
            f"{row['peak_rss_mib']:.0f} | {row['load']:.2f} |"
        )
    print(f"| **all (embedding imported)** | {total_wall:.1f} | {total_cpu:.1f} | | |")
    if recall is not None:
        print(f"\nkNN recall@10 vs exact on {args.recall_sample:,} documents: {recall:.4f}")
    if args.embed_rate:
        print("\n| embedding option | docs/s (measured) | embed time at N | whole run at N |")
        print("|---|---:|---:|---:|")
        for given in args.embed_rate:
            name, _, rate = given.partition("=")
            seconds = args.docs / float(rate)
            print(
                f"| {name} | {float(rate):.0f} | {seconds / 3600:.2f} h | "
                f"{(seconds + total_wall - results['embed']['wall_s']) / 3600:.2f} h |"
            )


if __name__ == "__main__":
    main()
