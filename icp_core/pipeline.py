"""The executor: stage order, skip-if-unchanged, and one `stage_runs` row per stage.

Each stage declares the parameters it reads (`Stage.reads`); its key is built from them (and
its upstream stages' fingerprints), never written by hand, so a parameter a stage reads
cannot be missing from its key. When the stored key matches, the stage is skipped; so
changing k re-runs kNN filtering (dedup) and what follows, never the embedding.
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
from icp_core.ingest import reject_fix
from icp_core.params import Params
from icp_core.workspace import Workspace

log = logging.getLogger(__name__)

Report = Callable[[int, int], None]
ProgressFactory = Callable[[str], Report]


def _no_progress(stage: str) -> Report:
    return stages._noop


@dataclass(frozen=True)
class Stage:
    """A pipeline stage.

    reads: the `Params` fields its output depends on; its key is built from their values.
    resolve: turns those values (only those) into their effective form for the key, where
        spelling and effect differ (`auto`, a model folder's content); None: the values.
    covers: whether a stored result serves these parameters too (kNN lists searched deeper).
    records: values derived from the parameters that readers of the stage's output need,
        stored next to its key (kNN depth; the separator and pad ids).
    """

    name: str
    upstream: tuple[str, ...]
    reads: tuple[str, ...]
    run: Callable[[Workspace, Params, Report], dict]
    tables: tuple[str, ...]
    resolve: Callable[[Workspace, dict[str, Any]], dict[str, Any]] | None = None
    covers: Callable[[dict, Params], bool] | None = None
    records: Callable[[Params], dict[str, Any]] | None = None

    def key(self, ws: Workspace, params: Params) -> dict[str, Any]:
        values = {name: getattr(params, name) for name in self.reads}
        return self.resolve(ws, values) if self.resolve else values


STAGES: tuple[Stage, ...] = (
    Stage(
        "embed",
        ("ingest",),
        ("model", "max_tokens", "vectors"),
        stages.run_embed,
        ("embeddings",),
        stages.embed_resolve,
    ),
    Stage(
        "knn",
        ("embed",),
        ("index", "seed"),
        stages.run_knn,
        ("neighbors",),
        stages.knn_resolve,
        stages.knn_covers,  # k: lists are stored deeper than asked
        stages.knn_records,
    ),
    Stage("dedup", ("knn",), ("k", "dedup_threshold"), stages.run_dedup, ("duplicates",)),
    Stage(
        "order", ("dedup",), ("order", "k", "seed"), stages.run_order, ("ordering", "order_drops")
    ),
    Stage(
        "pack",
        ("order",),
        ("tokenizer", "separator", "context_length", "pack", "shuffle", "seed"),
        stages.run_pack,
        ("contexts",),
        stages.pack_resolve,
        records=stages.pack_records,
    ),
    Stage(
        "metrics",
        ("pack",),
        ("label_field", "k", "seed", "order", "context_length", "pack", "dedup_threshold"),
        stages.run_metrics,
        ("metrics",),
    ),
    # the app's map: after metrics so `icp run` (until="metrics") never waits for it
    Stage("layout", ("knn",), (), stages.run_layout, ("layout",), stages.layout_resolve),
)
STAGE_NAMES = ("ingest",) + tuple(stage.name for stage in STAGES)
# Parameters no stage's output depends on: how fast or where embedding runs, and ingest's
# fields (ingest keys sources by content and fields itself).
NOT_IN_KEYS = {"batch_size": "speed only", "device": "where embedding runs"} | {
    "text_field": "ingest",
    "id_field": "ingest",
}


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
    update: bool = False,
) -> StageOutcome:
    """Add documents from `inputs` (replacing changed ones with `update`, see
    `stages.run_ingest`) and record the documents table's fingerprint."""
    started = time.time()
    counts = stages.run_ingest(ws, inputs, params, progress("ingest"), update)
    state = stages.ingest_fingerprint_source(ws)
    status = "ran" if counts["sources_added"] else "skipped"
    asked = {"inputs": inputs, "update": update}
    return _store_outcome(ws, "ingest", status, state, asked, counts, started)


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
        IcpError: no documents yet (naming the rejects when every row was rejected), or a
            stage's input problem.
    """
    if until not in STAGE_NAMES[1:]:
        raise IcpError(f"unknown stage '{until}'")
    params = params.validate()
    if ws.stage_state("ingest") is None or ws.n_documents() == 0:
        raise _no_documents(ws)
    with ws.transaction():
        ws.save_settings(params.to_dict())
    outcomes = []
    for stage in STAGES:
        outcomes.append(_run_stage(ws, stage, params, force, progress))
        if stage.name == until:
            break
    return outcomes


def _no_documents(ws: Workspace) -> IcpError:
    """Why there is nothing to run on, with the option that fixes the most common reject an
    option can fix."""
    message = stages.no_documents_message(ws)
    reasons = ws.column("SELECT reason FROM rejects GROUP BY reason ORDER BY count(*) DESC, reason")
    fix = next(filter(None, map(reject_fix, reasons.tolist())), None)
    return IcpError(message) if fix is None else IcpError(f"{message}; {fix[0]}", fix=fix[1])


def _run_stage(
    ws: Workspace,
    stage: Stage,
    params: Params,
    force: bool | tuple[str, ...],
    progress: ProgressFactory,
) -> StageOutcome:
    started = time.time()
    key = {"upstream": {u: ws.stage_state(u)["fingerprint"] for u in stage.upstream}}
    key.update(stage.key(ws, params))
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
    stored = dict(key, **(stage.records(params) if stage.records else {}))
    return _store_outcome(ws, stage.name, "ran", stored, stored, counts, started)


def _store_outcome(
    ws: Workspace,
    stage: str,
    status: str,
    state: dict[str, Any],
    asked: dict[str, Any],
    counts: dict[str, Any],
    started: float,
) -> StageOutcome:
    """Store a stage's new state (its fingerprint is `state`'s) and its `stage_runs` row (with
    the parameters it was `asked`) in one transaction; log it."""
    stage_fp = fingerprint(state)
    with ws.transaction():
        ws.set_stage_state(stage, stage_fp, state, counts)
        ws.record_run(stage, status, stage_fp, asked, counts, started, time.time())
    log.info("%s: %s (%.1fs)", stage, counts, time.time() - started)
    return StageOutcome(stage, status, time.time() - started, counts)

