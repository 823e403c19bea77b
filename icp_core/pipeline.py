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
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
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
    with ws.transaction():
        ws.set_stage_state("ingest", fingerprint(state), state, counts)
        ws.record_run(
            "ingest",
            status,
            fingerprint(state),
            {"inputs": inputs, "update": update},
            counts,
            started,
            time.time(),
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
    stage_fp = fingerprint(stored)
    with ws.transaction():
        ws.set_stage_state(stage.name, stage_fp, stored, counts)
        ws.record_run(stage.name, "ran", stage_fp, stored, counts, started, time.time())
    log.info("%s: %s (%.1fs)", stage.name, counts, time.time() - started)
    return StageOutcome(stage.name, "ran", time.time() - started, counts)


# ---------------------------------------------------------------------------------------------
# jobs: the app runs the pipeline in a worker process that reports to a status file
# ---------------------------------------------------------------------------------------------

# Seconds between status-file writes while a stage reports progress (stage changes always write).
_STATUS_INTERVAL_S = 0.2


def write_status(path: str | Path, status: dict[str, Any]) -> None:
    """Replace the JSON status file atomically, so a reader never sees half a file."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(json.dumps(status, default=str))
    os.replace(partial, path)


def read_status(path: str | Path) -> dict[str, Any] | None:
    """The status a job wrote, or None when there is none (or it cannot be read)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


class _JobReporter:
    """Progress factory for `run` that records the current stage and its done/total."""

    def __init__(self, path: Path, status: dict[str, Any]):
        self.path = path
        self.status = status
        self.written = 0.0

    def write(self, force: bool = False) -> None:
        now = time.time()
        if force or now - self.written >= _STATUS_INTERVAL_S:
            self.status["updated_at"] = now
            write_status(self.path, self.status)
            self.written = now

    def __call__(self, stage: str) -> Report:
        self.status.update(stage=stage, done=0, total=0)
        self.status.pop("note", None)
        self.write(force=True)

        def report(done: int, total: int) -> None:
            self.status.update(done=int(done), total=int(total))
            self.write(force=done >= total)

        def note(text: str) -> None:  # a phase or an ETA (see embed.note)
            self.status["note"] = text
            self.write()

        report.note = note  # type: ignore[attr-defined]
        return report


def run_job(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one job for the app and report it in `spec["status_file"]`; returns the last status.

    Args:
        spec: {"workspace": path, "params": Params dict, "until": last stage,
            "inputs": files to ingest first (optional), "seed_sample_cache": add the bundled
            sample's embedding cache first (optional), "wait_s": seconds to wait for the
            workspace's write lock (default 60), "evaluate": instead of running stages,
            evaluate every ordering method × pack policy at "params" on the stored kept
            documents and store the result (`evaluate.store`), "status_file": path}.

    The status file holds {"state": "running" | "done" | "failed", "stage", "done", "total",
    "stages": [{"stage", "status", "seconds"}], "error", "pid", "started_at", "updated_at"}.
    Errors end up in it as one line (never raised), so the app can show them.
    """
    status: dict[str, Any] = {
        "state": "running",
        "pid": os.getpid(),
        "workspace": spec["workspace"],
        "description": spec.get("description", ""),
        "stage": "open",
        "done": 0,
        "total": 0,
        "stages": [],
        "error": None,
        "started_at": time.time(),
    }
    reporter = _JobReporter(Path(spec["status_file"]), status)
    reporter.write(force=True)
    try:
        params = Params.from_dict(spec.get("params") or {}).validate()
        wait_s = float(spec.get("wait_s", 60.0))
        outcomes = []
        if spec.get("evaluate"):
            _evaluate(Path(spec["workspace"]), params, wait_s, reporter)
        else:
            with Workspace(spec["workspace"], wait_s=wait_s) as ws:
                if spec.get("inputs"):
                    outcomes.append(ingest(ws, list(spec["inputs"]), params, reporter))
                if spec.get("seed_sample_cache"):
                    from icp_core import sample

                    sample.seed_embedding_cache(ws)
                outcomes += run(ws, params, until=spec.get("until", "metrics"), progress=reporter)
        status["stages"] = [
            {"stage": o.stage, "status": o.status, "seconds": round(o.seconds, 3)} for o in outcomes
        ]
        status["state"] = "done"
    except IcpError as err:
        # the message as the command line words it, and its parts for the app's words
        status.update(
            state="failed", error=str(err), problem={"message": err.message, "fix": err.fix}
        )
    except Exception as err:  # a bug: report it as one line rather than die silently
        log.exception("job failed")
        status.update(state="failed", error=f"internal error: {type(err).__name__}: {err}")
    reporter.write(force=True)
    return status


def _evaluate(path: Path, params: Params, wait_s: float, progress: ProgressFactory) -> None:
    """`icp eval` for the app: every method × policy at `params` on the stored kept documents,
    stored in the workspace. The settings and stages stay as they are (the compared setting
    is not applied), and the workspace is free for readers while the combinations run."""
    from icp_core import evaluate

    with Workspace(path, wait_s=wait_s) as ws:
        corpus = evaluate.load_corpus(ws, params, progress("tokens"))
    result = evaluate.evaluate(corpus, report=progress("eval"))
    with Workspace(path, wait_s=wait_s) as ws:
        evaluate.store(ws, corpus, result)


def warm_up() -> None:
    """Load the imports and compiled kernels a run needs, on a 4-document graph, so that a
    worker started ahead of time answers a job without that start-up cost (~1 s here)."""
    import tempfile

    import numpy as np

    from icp_core import dedup, metrics, pack, traverse

    # a scratch workspace loads DuckDB's JSON extension and the pandas conversion stages use
    with tempfile.TemporaryDirectory() as folder, Workspace(Path(folder) / "warm.duckdb") as ws:
        ws.arrow("""SELECT json_extract_string('{"label": "x"}', '$.label') AS v""").to_pandas()
    stages.separator_for(Params())  # loads (and caches) the default tokenizer

    ids = np.array([[1, 2], [0, 2], [0, 1], [2, -1]], dtype=np.int64)
    sims = np.array([[0.9, 0.5], [0.9, 0.4], [0.5, 0.4], [0.3, 0.0]], dtype=np.float32)
    for method in traverse.METHODS:
        traverse.traverse(ids, sims, method)
    dedup.find_duplicates(ids, sims, 0.95)
    dedup.find_near_copies(["alpha beta", "alpha beta", "gamma", "delta"], np.arange(4))
    doc_tokens = np.array([3, 2, 4, 1], dtype=np.int64)
    packing = pack.pack_contexts(np.arange(4), doc_tokens, 6)
    vectors = np.eye(4, dtype=np.float32)
    words = metrics.word_ids(["a b", "b c", "c d", "d e"])
    labels = np.array(["x", "x", "y", "y"], dtype=object)
    metrics.packing_metrics(packing, vectors, doc_tokens, 6, ids, labels, words)
