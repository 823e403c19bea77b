"""The Ray engine: every stage of `icp run` as Ray tasks and actors, writing the export folder.

The stages call the same pure functions as the local engine; only where the data lives changes.
This module runs them in the local pipeline's stage order (`pipeline.STAGE_NAMES`), times each
one into a `pipeline.StageOutcome`, and writes what the local export writes: the metrics
(`metrics.report`), removed/ (`export.write_removed`), the dataset card and the manifest
(`manifest.build` with `export.resolve_parameters`). Each stage lives in its own module:

- `ray_ingest`: one task per input file (`ingest.parse_source`), repeated ids from id hashes;
- `ray_embed`: Ray Data over an actor pool that loads the model once, or imported vectors;
- `ray_knn`: the local IVF index trained on a sample (all the driver holds), sharded, built
  and searched in tasks;
- `ray_dedup`: the near-duplicate pairs grouped on the driver;
- `ray_order`: partitions of IVF lists ordered in tasks, stitched across partitions;
- `ray_pack`: each partition packed, measured and rendered; the random baseline; the files;
- `ray_util`: options, the Ray session, errors, Arrow helpers.

Intermediate tables travel through the Ray object store (spilled to disk when full). Input
files, `--vectors` and `--out` must be visible at the same path on every node (a shared mount),
as for Ray Data's own readers and writers.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from icp_core import export, manifest, metrics, stages
from icp_core.distributed.ray_dedup import Removed, dedup_stage
from icp_core.distributed.ray_embed import embed_stage
from icp_core.distributed.ray_ingest import Corpus, ingest_stage
from icp_core.distributed.ray_knn import ListGraph, Searched, knn_stage
from icp_core.distributed.ray_order import Ordered, order_stage, resolve_partitions
from icp_core.distributed.ray_pack import Packed, pack_stage
from icp_core.distributed.ray_util import (
    ProgressFactory,
    RayOptions,
    Report,
    cluster_cpus_gpus,
    no_progress,
    ray_session,
)
from icp_core.errors import IcpError
from icp_core.params import Params
from icp_core.pipeline import StageOutcome

__all__ = ["RAY_STAGES", "RayOptions", "combine_metrics", "run_pipeline"]

log = logging.getLogger(__name__)


@dataclass
class _Run:
    """What the stages of one run hand each other: each stage fills its fields."""

    inputs: list[str]
    params: Params
    options: RayOptions
    staging: Path
    corpus: Corpus | None = None
    embed_counts: dict[str, Any] = field(default_factory=dict)
    searched: list[Searched] = field(default_factory=list)
    lists: ListGraph | None = None
    knn_counts: dict[str, Any] = field(default_factory=dict)
    removed: Removed | None = None
    ordered: Ordered | None = None
    packed: Packed | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def work(self) -> Path:
        """Scratch files (index shards), removed before the folder gets its final name."""
        return self.staging / "_work"

    @property
    def embeddings(self) -> Path:
        """Kept in the export when the run embedded (pass it back as --vectors)."""
        if self.params.vectors:
            return self.work / "embeddings"
        return self.staging / "embeddings.parquet"


def _ingest(run: _Run, report: Report) -> dict[str, Any]:
    run.corpus = ingest_stage(run.inputs, run.params, report)
    return run.corpus.counts


def _embed(run: _Run, report: Report) -> dict[str, Any]:
    run.embed_counts = embed_stage(run.corpus, run.params, run.options, run.embeddings, report)
    return run.embed_counts


def _knn(run: _Run, report: Report) -> dict[str, Any]:
    run.searched, run.lists, run.knn_counts = knn_stage(
        run.corpus, run.params, run.embeddings, run.work, run.options, report
    )
    return run.knn_counts


def _dedup(run: _Run, report: Report) -> dict[str, Any]:
    run.removed = dedup_stage(run.searched, run.params)
    return {"duplicates": int(len(run.removed.doc)), "groups": len(np.unique(run.removed.kept_doc))}


def _order(run: _Run, report: Report) -> dict[str, Any]:
    n_kept = run.corpus.n_documents - len(run.removed.doc)
    n_partitions = resolve_partitions(run.options.partitions, n_kept, run.lists.n_lists)
    run.ordered = order_stage(
        run.searched,
        run.lists,
        run.removed,
        run.params,
        run.knn_counts["k_max"],
        n_partitions,
        run.options.stitch,
        report,
    )
    run.searched = []  # the partitions hold the blocks' rows now
    return run.ordered.counts


def _pack(run: _Run, report: Report) -> dict[str, Any]:
    label_field = run.corpus.label_field
    run.packed = pack_stage(run.ordered, run.params, label_field, run.staging, run.options, report)
    run.ordered = None
    return run.packed.counts


def _metrics(run: _Run, report: Report) -> dict[str, Any]:
    """The metrics, then everything else the export folder holds but the manifest."""
    corpus, removed, packed = run.corpus, run.removed, run.packed
    if any(s["over_length"] for s in packed.summaries):
        raise IcpError("internal check failed: a context exceeds --context-length")
    n_removed = len(removed.doc) + len(packed.drops["doc"])
    run.metrics = combine_metrics(packed.summaries, packed.random, corpus, n_removed, run.params)
    export.write_removed(run.staging, _removed_table(removed, packed, run.params), corpus.rejects)
    shutil.rmtree(run.work, ignore_errors=True)
    lm = stages.lm_tokenizer(run.params)
    export.write_dataset_card(run.staging, "parquet", run.params.context_length, lm)
    return {k: v for k, v in run.metrics.items() if not isinstance(v, dict)}


# The local pipeline's stages (`pipeline.STAGE_NAMES`, in its order) as the Ray engine runs them.
RAY_STAGES: tuple[tuple[str, Callable[[_Run, Report], dict[str, Any]]], ...] = (
    ("ingest", _ingest),
    ("embed", _embed),
    ("knn", _knn),
    ("dedup", _dedup),
    ("order", _order),
    ("pack", _pack),
    ("metrics", _metrics),
)


def run_pipeline(
    inputs: list[str],
    params: Params,
    out: str | Path,
    options: RayOptions | None = None,
    overwrite: bool = False,
    progress: ProgressFactory = no_progress,
) -> tuple[list[StageOutcome], dict[str, Any]]:
    """Run ingest .. metrics on Ray and write the export folder `out`.

    `out` receives what `icp export --format parquet` writes (context rows in
    `data/train-*-of-*.parquet` shards, removed/, the dataset card, manifest.json), plus
    `embeddings.parquet/` when the run embedded (pass it back as --vectors to skip that).

    Returns:
        The stage outcomes and the manifest (whose "metrics" is what `icp metrics` reports).

    Raises:
        IcpError: bad parameters or input, `out` exists without overwrite, a task's input error.
    """
    options = options or RayOptions()
    params = params.validate()
    stages.lm_tokenizer(params)  # a missing tokenizer fails here, not in a task
    with export.staged_folder(out, overwrite) as staging, ray_session(options):
        run = _Run(list(map(str, inputs)), params, options, staging)
        outcomes = []
        for name, stage in RAY_STAGES:
            started = time.time()
            counts = stage(run, progress(name))
            outcomes.append(StageOutcome(name, "ran", time.time() - started, counts))
            log.info("%s: %s (%.1fs)", name, counts, time.time() - started)
        written = _manifest(run, outcomes)
        manifest.write(staging, written)
    return outcomes, written


def combine_metrics(
    summaries: list[dict[str, Any]],
    random_parts: list[tuple],
    corpus: Corpus,
    n_removed: int,
    params: Params,
) -> dict[str, Any]:
    """The metrics of DESIGN.md (`metrics.report`, as the local engine reports them) from the
    partitions' and the random buckets' `metrics.packing_terms`: contexts never span
    partitions (nor buckets), so `metrics.combine_packing_metrics` gives them exactly."""
    n_kept = sum(s["n_docs"] for s in summaries)
    once = all(s["every_doc_once"] for s in summaries) and (
        n_kept + n_removed == corpus.n_documents
    )
    current = metrics.combine_packing_metrics([(s["metrics"], s["weights"]) for s in summaries])
    random = metrics.combine_packing_metrics(random_parts)
    counts = {
        "n_documents": corpus.n_documents,
        "n_rejected": corpus.rejects.num_rows,
        "n_duplicates": int(n_removed),
        "n_kept": int(n_kept),
        "n_contexts": int(sum(s["n_contexts"] for s in summaries)),
        "every_doc_once": bool(once),
    }
    return metrics.report(
        counts, current, random, corpus.label_field, stages.report_parameters(params)
    )


def _removed_table(removed: Removed, packed: Packed, params: Params) -> pa.Table:
    """The duplicates, then the order stage's drops (with their reason), by document number:
    the rows of removed/duplicates.jsonl as the local export writes them."""
    drops = packed.drops
    reason = f"semantic duplicate (cosine >= {params.dedup_threshold})"
    table = pa.table(
        {
            "doc": np.concatenate([removed.doc, drops["doc"]]).astype(np.int64),
            "id": pa.array(removed.ids + list(drops["id"]), pa.string()),
            "kept_id": pa.array(removed.kept_ids + list(drops["kept_id"]), pa.string()),
            "sim": pa.array(np.r_[removed.sim, drops["sim"]].astype(np.float32), pa.float32()),
            "reason": pa.array([reason] * len(removed.doc) + list(drops["reason"]), pa.string()),
        }
    )
    return table.sort_by("doc").drop_columns(["doc"])


def _manifest(run: _Run, outcomes: list[StageOutcome]) -> dict[str, Any]:
    """The same manifest the local export writes (`icp_core.manifest`), Ray's run details
    under `run`."""
    params, corpus, result = run.params, run.corpus, run.metrics
    lm = stages.lm_tokenizer(params)
    cpus, gpus = cluster_cpus_gpus()
    return manifest.build(
        engine="ray",
        fmt="parquet",
        parameters=export.resolve_parameters(params, run.embed_counts, run.knn_counts),
        model=manifest.model_info(params),
        tokenizer=manifest.tokenizer_info(lm, lm.separator_ids(params.separator), lm.pad_id()),
        inputs=[
            {
                **source,
                "source": str(Path(source["source"]).resolve()),
                "hash_algorithm": "blake2b-128",
                "text_field": params.text_field,
                "id_field": params.id_field,
            }
            for source in corpus.sources
        ],
        counts={"n_contexts": result["n_contexts"], "shards": len(run.packed.names)},
        metrics=result,
        folder=run.staging,
        extra={
            "export": {"shard_size": run.options.contexts_per_file, "drop_last": False},
            "dropped_last": None,
            "run": {
                "stages": [
                    {"stage": o.stage, "seconds": round(o.seconds, 3), "counts": o.counts}
                    for o in outcomes
                ],
                "cluster": {"nodes": len(ray.nodes()), "cpus": cpus, "gpus": gpus},
            },
        },
    )
