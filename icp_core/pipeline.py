"""The executor: stage order, skip-if-unchanged, and one `stage_runs` row per stage.

A stage's fingerprint hashes its upstream stages' fingerprints and its own parameters
(`stages.<stage>_key`). When the stored fingerprint matches, the stage is skipped; so changing
k re-runs kNN filtering (dedup) and what follows, never the embedding.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from icp_core import stages
from icp_core.errors import IcpError
from icp_core.params import Params
from icp_core.workspace import Workspace

log = logging.getLogger(__name__)

Report = Callable[[int, int], None]
ProgressFactory = Callable[[str], Report]


def _no_progress(stage: str) -> Report:
    return stages._noop


@dataclass(frozen=True)
class Stage:
    name: str
    upstream: tuple[str, ...]
    key: Callable[[Params], dict]
    run: Callable[[Workspace, Params, Report], dict]
    tables: tuple[str, ...]
    covers: Callable[[dict, Params], bool] | None = None


STAGES: tuple[Stage, ...] = (
    Stage("embed", ("ingest",), stages.embed_key, stages.run_embed, ("embeddings",)),
    Stage("knn", ("embed",), stages.knn_key, stages.run_knn, ("neighbors",), stages.knn_covers),
    Stage("dedup", ("knn",), stages.dedup_key, stages.run_dedup, ("duplicates",)),
    Stage("order", ("dedup",), stages.order_key, stages.run_order, ("ordering", "order_drops")),
    Stage("pack", ("order",), stages.pack_key, stages.run_pack, ("contexts",)),
    Stage("metrics", ("pack",), stages.metrics_key, stages.run_metrics, ("metrics",)),
)
STAGE_NAMES = ("ingest",) + tuple(stage.name for stage in STAGES)


@dataclass
class StageOutcome:
    stage: str
    status: str  # "ran" or "skipped"
    seconds: float
    counts: dict[str, Any]


def fingerprint(values: dict) -> str:
    return hashlib.blake2b(
        json.dumps(values, sort_keys=True, default=str).encode(), digest_size=12
    ).hexdigest()


def ingest(
    ws: Workspace,
    inputs: list[str],
    params: Params,
    progress: ProgressFactory = _no_progress,
) -> StageOutcome:
    """Add documents from `inputs` and record the documents table's fingerprint."""
    started = time.time()
    counts = stages.run_ingest(ws, inputs, params, progress("ingest"))
    state = stages.ingest_fingerprint_source(ws)
    status = "ran" if counts["sources_added"] else "skipped"
    with ws.transaction():
        ws.set_stage_state("ingest", fingerprint(state), state, counts)
        ws.record_run(
            "ingest", status, fingerprint(state), {"inputs": inputs}, counts, started, time.time()
        )
    log.info("ingest: %s", counts)
    return StageOutcome("ingest", status, time.time() - started, counts)


def run(
    ws: Workspace,
    params: Params,
    until: str = "metrics",
    force: bool | tuple[str, ...] = False,
    progress: ProgressFactory = _no_progress,
) -> list[StageOutcome]:
    """Bring every stage up to `until` up to date, skipping those whose inputs are unchanged.

    Args:
        ws: an open, writable workspace with ingested documents.
        params: the parameters; they are saved as the workspace's settings.
        until: the last stage to run.
        force: True re-runs every stage; a tuple names the stages to re-run.

    Raises:
        IcpError: no documents yet, or a stage's input problem.
    """
    if until not in STAGE_NAMES[1:]:
        raise IcpError(f"unknown stage '{until}'")
    params = params.validate()
    if ws.stage_state("ingest") is None or ws.n_documents() == 0:
        raise IcpError(
            f"{ws.path}: no documents ingested yet; run `icp ingest FILE --workspace {ws.path}`"
        )
    with ws.transaction():
        ws.save_settings(params.to_dict())
    outcomes = []
    for stage in STAGES:
        outcomes.append(_run_stage(ws, stage, params, force, progress))
        if stage.name == until:
            break
    return outcomes


def _run_stage(
    ws: Workspace,
    stage: Stage,
    params: Params,
    force: bool | tuple[str, ...],
    progress: ProgressFactory,
) -> StageOutcome:
    started = time.time()
    key = {"upstream": {u: ws.stage_state(u)["fingerprint"] for u in stage.upstream}}
    key.update(stage.key(params))
    state = ws.stage_state(stage.name)
    forced = force is True or (isinstance(force, tuple) and stage.name in force)
    tables_exist = all(ws.has_table(table) for table in stage.tables)
    if state is not None and tables_exist and not forced:
        # stored params = key + what the run added (e.g. knn's k_max); compare on the key
        same_key = {name: state["params"].get(name) for name in key} == key
        current = same_key and (stage.covers is None or stage.covers(state["params"], params))
        if current:
            ws.record_run(
                stage.name, "skipped", state["fingerprint"], key, {}, started, time.time()
            )
            return StageOutcome(stage.name, "skipped", time.time() - started, state["counts"])
    counts = stage.run(ws, params, progress(stage.name))
    stored = dict(key, **counts.pop("_stored", {}))
    stage_fp = fingerprint(stored)
    with ws.transaction():
        ws.set_stage_state(stage.name, stage_fp, stored, counts)
        ws.record_run(stage.name, "ran", stage_fp, stored, counts, started, time.time())
    log.info("%s: %s (%.1fs)", stage.name, counts, time.time() - started)
    return StageOutcome(stage.name, "ran", time.time() - started, counts)
