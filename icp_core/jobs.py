"""The app's job worker: runs the pipeline in its own process and reports to a status file.

A page cannot hold the workspace while a run writes it (one DuckDB writer per file), so the app
starts `icp job -` (a worker that has run `warm_up` ahead of time), sends it a job spec, and
polls the JSON status file `run_job` keeps up to date.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from icp_core import pipeline, stages
from icp_core.errors import IcpError
from icp_core.params import Params
from icp_core.stages._report import Report, _noop
from icp_core.workspace import Workspace

log = logging.getLogger(__name__)

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
            "inputs": files to ingest first (optional), "seed_cache": an embedding-cache
            Parquet whose rows to add first (optional; the bundled sample's), "seed_layout": a
            map Parquet to add to the layout cache first (optional; the sample's), "wait_s":
            seconds to wait for the workspace's write lock (default 60), "evaluate": instead of
            running stages, evaluate every ordering method × pack policy at "params" on the
            stored kept documents and store the result (`evaluate.store`), "status_file": path}.

    The status file holds {"state": "running" | "done" | "failed", "stage", "done", "total",
    "stages": [{"stage", "status", "seconds"}], "error", "problem" (a failure's message and fix,
    for the app's words), "pid", "started_at", "updated_at"}.
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
                    outcomes.append(pipeline.ingest(ws, list(spec["inputs"]), params, reporter))
                if spec.get("seed_cache"):
                    stages.seed_embedding_cache(ws, Path(spec["seed_cache"]))
                if spec.get("seed_layout"):
                    stages.seed_layout_cache(ws, Path(spec["seed_layout"]))
                until = spec.get("until", "metrics")
                outcomes += pipeline.run(ws, params, until=until, progress=reporter)
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


def _evaluate(
    path: Path, params: Params, wait_s: float, progress: pipeline.ProgressFactory
) -> None:
    """`icp eval` for the app: every method × policy at `params` on the stored kept documents,
    stored in the workspace. The settings and stages stay as they are (the compared setting
    is not applied), and the workspace is free for readers while the combinations run."""
    from icp_core import evaluate

    with Workspace(path, wait_s=wait_s) as ws:
        corpus = evaluate.load_corpus(ws, params, progress("tokens"))
    result = evaluate.evaluate(corpus, report=progress("eval"))
    with Workspace(path, wait_s=wait_s) as ws:
        evaluate.store(ws, corpus, result)


def warm_up(report: Report = _noop, methods: tuple[str, ...] | None = None) -> None:
    """Load the imports and compiled kernels a run needs, on a 4-document graph, so that a
    worker started ahead of time answers a job without that start-up cost (~1 s here with
    numba's cache warm; about 45 CPU-seconds to compile into an empty cache, the ordering
    methods most of it). `methods`: the ordering methods to compile (default: all).
    Reports (step, steps) as each part is ready."""
    import tempfile

    import numpy as np

    from icp_core import dedup, metrics, pack, traverse

    def load_workspace_extensions() -> None:
        # a scratch workspace loads DuckDB's JSON extension and the pandas conversion stages use
        with tempfile.TemporaryDirectory() as folder, Workspace(Path(folder) / "w.duckdb") as ws:
            ws.arrow("""SELECT json_extract_string('{"label": "x"}', '$.label') AS v""").to_pandas()

    ids = np.array([[1, 2], [0, 2], [0, 1], [2, -1]], dtype=np.int64)
    sims = np.array([[0.9, 0.5], [0.9, 0.4], [0.5, 0.4], [0.3, 0.0]], dtype=np.float32)
    doc_tokens = np.array([3, 2, 4, 1], dtype=np.int64)

    def pack_and_measure() -> None:
        packing = pack.pack_contexts(np.arange(4), doc_tokens, 6)
        words = metrics.word_ids(["a b", "b c", "c d", "d e"])
        labels = np.array(["x", "x", "y", "y"], dtype=object)
        vectors = np.eye(4, dtype=np.float32)
        metrics.packing_terms(packing, vectors, doc_tokens, 6, ids, labels, words)

    steps = [
        load_workspace_extensions,
        lambda: stages.separator_for(Params()),  # loads (and caches) the default tokenizer
        *(lambda m=m: traverse.traverse(ids, sims, m) for m in methods or traverse.METHODS),
        lambda: dedup.find_duplicates(ids, sims, 0.95),
        lambda: dedup.find_near_copies(["a b", "a b", "c", "d"], np.arange(4)),
        pack_and_measure,
    ]
    report(0, len(steps))
    for done, step in enumerate(steps, start=1):
        step()
        report(done, len(steps))
