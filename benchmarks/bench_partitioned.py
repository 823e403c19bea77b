"""Partitioned ordering on Ray (P = 1, 4, 16) against the local engine's global ordering.

Question: how much adjacent similarity does cutting the corpus into P partitions (one ordering
task each, path fragments stitched across partitions) cost, and what does it buy in time?
Target: at most 2% loss of adjacent_sim_mean at P = 16.

Both engines start from the same precomputed vectors (`--vectors`), so nothing is re-embedded.
The local engine runs every stage in a DuckDB workspace (global Algorithm 1). Each Ray run writes
its export folder; its contexts are then imported into a copy of the local workspace and scored
by the tool's own `stages.compute_metrics`, so both columns come from one metrics code path on
one kNN graph (the Ray engine's own manifest metrics are printed next to them as a check).

Run (about 3 minutes on 2 idle cores):
    PYTHONPATH=. python benchmarks/bench_partitioned.py \
        --corpus ../shared/corpora/debian_pkgdesc.jsonl.gz --vectors /work/cache/debian.npy
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from icp_core import pipeline, stages
from icp_core.distributed import ray_engine
from icp_core.params import DEFAULT_ORDER, Params
from icp_core.workspace import Workspace

SHOWN = ("adjacent_sim_mean", "label_agreement", "context_pairwise_sim_mean", "jump_rate")


def run_local(corpus: Path, params: Params, folder: Path) -> tuple[Path, dict, dict]:
    """Every stage on the local engine; returns the workspace, its metrics and stage seconds."""
    path = folder / "local.duckdb"
    with Workspace(path) as ws:
        outcomes = [pipeline.ingest(ws, [str(corpus)], params)]
        outcomes += pipeline.run(ws, params)
        result = stages.latest_metrics(ws, params)
    return path, result, {o.stage: o.seconds for o in outcomes}


def packing_table(out: Path, ws: Workspace) -> pa.Table:
    """The Ray export's contexts as rows of the workspace's `contexts` table (doc numbers from
    the workspace, separator tokens from the token spans)."""
    rows = pq.read_table(sorted(str(p) for p in out.glob("data/train-*.parquet"))).to_pylist()
    ids = ws.arrow("SELECT id, doc FROM documents").to_pydict()
    doc_of = dict(zip(ids["id"], ids["doc"], strict=True))
    key = ws.stage_state("pack")["params"]["tokenizer_key"]
    tokens = ws.arrow(
        """SELECT d.doc, t.n_tokens FROM documents d JOIN (SELECT text_hash, any_value(n_tokens)
           AS n_tokens FROM token_cache WHERE tokenizer_key = ? GROUP BY text_hash) t
           USING (text_hash) ORDER BY d.doc""",
        [key],
    )
    n_tokens = tokens.column("n_tokens").to_numpy()
    sep_ids = ws.stage_state("pack")["params"]["separator_ids"]
    columns: dict[str, list] = {n: [] for n in ("context", "slot", "doc", "start", "end")}
    for row in rows:
        for slot, (doc_id, start, end) in enumerate(
            zip(row["doc_ids"], row["doc_token_start"], row["doc_token_end"], strict=True)
        ):
            columns["context"].append(row["context"])
            columns["slot"].append(slot)
            columns["doc"].append(doc_of[doc_id])
            columns["start"].append(start)
            columns["end"].append(end)
    doc = np.asarray(columns["doc"], dtype=np.int64)
    end = np.asarray(columns["end"], dtype=np.int64)
    # a document's last piece carries the (single-token) separator
    sep = np.where(end == n_tokens[doc], len(sep_ids), 0)
    return pa.table(
        {
            "context": np.asarray(columns["context"], dtype=np.int64),
            "slot": np.asarray(columns["slot"], dtype=np.int32),
            "doc": doc,
            "token_start": np.asarray(columns["start"], dtype=np.int64),
            "token_end": end,
            "sep_tokens": sep.astype(np.int32),
        }
    )


def score_ray_output(local_ws: Path, out: Path, params: Params, folder: Path) -> dict:
    """Import the Ray export's contexts into a copy of the local workspace and score them."""
    copy = folder / f"scored-{out.name}.duckdb"
    shutil.copy(local_ws, copy)
    with Workspace(copy) as ws:
        removed_local = set(ws.column("SELECT d.id FROM duplicates JOIN documents d USING (doc)"))
        duplicates = (out / "removed" / "duplicates.jsonl").read_text().splitlines()
        removed_ray = {json.loads(line)["id"] for line in duplicates}
        if removed_local != removed_ray:
            raise SystemExit(
                f"the engines removed different duplicates ({len(removed_local ^ removed_ray)} "
                "differ): the kNN graphs differ, the comparison would be unfair"
            )
        with ws.transaction():
            ws.replace_table("contexts", packing_table(out, ws))
        return stages.compute_metrics(ws, params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--vectors", type=Path, required=True)
    parser.add_argument("--partitions", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--order", default=DEFAULT_ORDER, help="ordering method of both engines")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--block-docs", type=int, default=8192)
    args = parser.parse_args()
    params = Params(k=args.k, vectors=str(args.vectors), order=args.order)
    folder = Path(tempfile.mkdtemp(prefix="bench_partitioned-"))
    try:
        started = time.perf_counter()
        local_ws, local, local_seconds = run_local(args.corpus, params, folder)
        local_total = time.perf_counter() - started
        print(
            f"order = {params.order}; local engine: {local['n_documents']} docs, "
            f"{local['n_kept']} kept, "
            f"{local_total:.1f}s (order {local_seconds['order']:.2f}s, "
            f"knn {local_seconds['knn']:.1f}s)",
            flush=True,
        )
        import ray

        ray.init(
            num_cpus=args.cpus,
            include_dashboard=False,
            logging_level="ERROR",
            object_store_memory=1 << 30,
        )
        results = []
        # every P with stitching, then the largest P without it (what stitching brings)
        runs = [(p, True) for p in args.partitions] + [(max(args.partitions), False)]
        try:
            for n_partitions, stitch in runs:
                out = folder / f"ray-p{n_partitions}-{'stitched' if stitch else 'plain'}"
                options = ray_engine.RayOptions(
                    partitions=n_partitions, block_docs=args.block_docs, stitch=stitch
                )
                started = time.perf_counter()
                outcomes, manifest = ray_engine.run_pipeline(
                    [str(args.corpus)], params, out, options
                )
                total = time.perf_counter() - started
                seconds = {o.stage: o.seconds for o in outcomes}
                scored = score_ray_output(local_ws, out, params, folder)
                name = "ray" if stitch else "ray, no stitching"
                results.append(
                    (name, n_partitions, scored, manifest["metrics"], seconds, total,
                     manifest["stages"])
                )  # fmt: skip
                print(
                    f"{name} P={n_partitions}: {total:.1f}s (order {seconds['order']:.2f}s), "
                    f"adjacent {scored['adjacent_sim_mean']:.4f}",
                    flush=True,
                )
        finally:
            ray.shutdown()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    report(local, local_seconds, local_total, results)


def report(local: dict, local_seconds: dict, local_total: float, results: list) -> None:
    base = local["adjacent_sim_mean"]
    print(
        "\n| engine | P | adjacent_sim_mean | loss vs global | label_agreement | "
        "context_pairwise_sim_mean | jump_rate | order s | total s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| local (global) | 1 | {base:.4f} | 0 | {local['label_agreement']:.4f} | "
        f"{local['context_pairwise_sim_mean']:.4f} | {local['jump_rate']:.4f} | "
        f"{local_seconds['order']:.2f} | {local_total:.1f} |"
    )
    for name, n_partitions, scored, _own, seconds, total, _ in results:
        loss = 100 * (base - scored["adjacent_sim_mean"]) / base
        print(
            f"| {name} | {n_partitions} | {scored['adjacent_sim_mean']:.4f} | {loss:+.2f}% | "
            f"{scored['label_agreement']:.4f} | {scored['context_pairwise_sim_mean']:.4f} | "
            f"{scored['jump_rate']:.4f} | {seconds['order']:.2f} | {total:.1f} |"
        )
    print(f"\nrandom packing: adjacent_sim_mean {local['random_adjacent_sim_mean']:.4f}")
    print("\nthe Ray engine's own manifest metrics (per-partition, combined) for comparison:")
    for name, n_partitions, scored, own, _, _, _ in results:
        gaps = {key: own[key] - scored[key] for key in SHOWN}
        print(
            f"  {name} P={n_partitions}: "
            + ", ".join(
                f"{k} {own[k]:.4f} (diff {v:+.1e})"
                for k, v in zip(SHOWN, gaps.values(), strict=True)
            )
        )
    print("\nstage seconds of the Ray runs:")
    for name, n_partitions, _, _, _, _, stage_rows in results:
        print(
            f"  {name} P={n_partitions}: "
            + ", ".join(f"{s['stage']} {s['seconds']:.1f}" for s in stage_rows)
        )
        order_counts = next(s["counts"] for s in stage_rows if s["stage"] == "order")
        print(f"        order: {json.dumps(order_counts)}")
    print(
        "\nlocal engine stage seconds: "
        + ", ".join(f"{k} {v:.1f}" for k, v in local_seconds.items())
    )


if __name__ == "__main__":
    main()
