"""Quality of every ordering method and packing policy on the shared corpora, one table each.

For each corpus: ingest it into a workspace, import its precomputed embeddings (nothing is
re-embedded), dedup, then run the quality harness (`icp_core.evaluate`, the same code as
`icp eval`) at each k. Prints the tables in Markdown with the machine and the date, and the
ordering time of each method as a ratio to Algorithm 1 (`icp`) run side by side.

    python benchmarks/eval_quality.py                        # both corpora, k = 10 and 30
    python benchmarks/eval_quality.py --corpus pydocs --k 10 --no-dedup

Workspaces are kept in --workspaces (re-runs skip ingest and import).
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from _bench_util import CORPORA, CORPUS_FILES, corpus_path, corpus_vectors, machine

from icp_core import evaluate, pipeline
from icp_core.params import Params
from icp_core.workspace import Workspace

REPEATS = 3  # ordering runs per method; the fastest is reported


def run_corpus(name: str, ks: list[int], dedup: bool, folder: Path, corpora: Path) -> None:
    source = str(corpus_path(name, corpora))
    vectors = str(corpus_vectors(name, corpora))
    suffix = "" if dedup else "-nodedup"
    params = Params(vectors=vectors, dedup_threshold=Params().dedup_threshold if dedup else None)
    with Workspace(folder / f"{name}{suffix}.duckdb") as ws:
        pipeline.ingest(ws, [source], params)
        for k in ks:
            params = params.updated(k=k)
            pipeline.run(ws, params, until="dedup")
            corpus = evaluate.load_corpus(ws, params)
            started = time.perf_counter()
            result = evaluate.evaluate(corpus, repeats=REPEATS)
            seconds = time.perf_counter() - started
            dedup_note = f"dedup {params.dedup_threshold}" if dedup else "no dedup"
            print(f"\n### {name}, k = {k}, {dedup_note} (harness {seconds:.0f} s)\n")
            print(evaluate.format_table(result))
            times = {r["order"]: r["order_s"] for r in result["rows"]}
            ratios = ", ".join(
                f"{method} {t * 1000:.1f} ms ({t / times['icp']:.1f}x icp)"
                for method, t in times.items()
            )
            print(f"\nOrdering time, fastest of {REPEATS}: {ratios}")
            sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", choices=sorted(CORPUS_FILES), action="append")
    parser.add_argument("--corpora", type=Path, default=CORPORA)
    parser.add_argument("--k", type=int, action="append")
    parser.add_argument("--no-dedup", action="store_true", help="keep semantic duplicates")
    parser.add_argument("--workspaces", type=Path, default=Path("workspaces"))
    args = parser.parse_args()
    args.workspaces.mkdir(parents=True, exist_ok=True)
    print(f"# Ordering and packing quality, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(f"\nMachine: {machine()}")
    print(f"Command: python benchmarks/eval_quality.py {' '.join(sys.argv[1:])}".rstrip())
    for name in args.corpus or list(CORPUS_FILES):
        run_corpus(name, args.k or [10, 30], not args.no_dedup, args.workspaces, args.corpora)


if __name__ == "__main__":
    main()
