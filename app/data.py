"""The app's data access: which workspace is open and every cached read of it. The only module
of the app that caches reads.

Reads use short-lived read-only connections and are cached by the fingerprint of the stage
that wrote the data (`stage_state`), so a page rerun reads nothing new unless a stage re-ran,
and a view re-reads only what the change touched. Writes happen only in job processes
(`app/jobs.py`, started from `app/progress.py`).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from icp_core import explore, sample, stages
from icp_core.errors import IcpError
from icp_core.params import Params
from icp_core.workspace import Workspace

HELP_DIR = Path(__file__).resolve().parent / "help"
READ_WAIT_S = 10.0


def cache_dir() -> Path:
    """Per-user folder for the sample workspace, uploads and job status files."""
    return sample.app_cache_dir()


def sample_path() -> Path:
    return cache_dir() / "sample.duckdb"


def _argv_workspace() -> str | None:
    """`streamlit run app/main.py -- --workspace WS` (what `icp app --workspace WS` runs)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--workspace")
    known, _ = parser.parse_known_args(sys.argv[1:])
    return known.workspace


def workspace_path() -> Path:
    """The open workspace: chosen in this session, else given on the command line, else the
    bundled sample."""
    chosen = st.session_state.get("workspace") or _argv_workspace()
    return Path(chosen).expanduser().resolve() if chosen else sample_path()


def help_text(name: str) -> str:
    return (HELP_DIR / f"{name}.md").read_text()


# ---------------------------------------------------------------------------------------------
# the open workspace and cached reads
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkspaceView:
    """The open workspace as of its last change: parameters and stage fingerprints."""

    path: Path
    params: Params
    fingerprints: dict[str, str] = field(hash=False)
    tables: frozenset[str]
    n_documents: int
    n_rejected: int
    label_field: str | None
    layout_knn: str | None  # the kNN fingerprint the stored map was built from
    is_sample: bool

    def key(self, *stage_names: str) -> str:
        """Cache key of data written by these stages (fingerprints chain upstream stages)."""
        return "|".join(self.fingerprints.get(name, "-") for name in stage_names)

    def ready(self) -> bool:
        return "metrics" in self.fingerprints and "contexts" in self.tables

    def layout_current(self) -> bool:
        """The stored map was built from the current kNN lists."""
        return "layout" in self.tables and self.layout_knn == self.fingerprints.get("knn")


def _reader(path: Path | str) -> Workspace:
    return Workspace(path, read_only=True, wait_s=READ_WAIT_S)


def _file_key(path: Path) -> tuple:
    """Changes whenever DuckDB writes the file (a checkpoint on close, or its WAL)."""
    wal = path.with_name(path.name + ".wal")
    stats = [p.stat() for p in (path, wal) if p.exists()]
    return tuple((s.st_mtime_ns, s.st_size) for s in stats)


@st.cache_data(max_entries=16, show_spinner=False)
def _snapshot(path: str, file_key: tuple) -> dict[str, Any]:
    with _reader(path) as ws:
        names = ws.column(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'"
        ).tolist()
        fingerprints = dict(
            zip(
                *(
                    ws.arrow("SELECT stage, fingerprint FROM stage_state").column(i).to_pylist()
                    for i in (0, 1)
                ),
                strict=True,
            )
        )
        params = Params.from_dict(ws.load_settings())
        try:
            label_field = stages.resolve_label_field(ws, params.label_field)
        except IcpError:
            label_field = None
        layout_state = ws.stage_state("layout")
        return {
            "params": params,
            "fingerprints": fingerprints,
            "layout_knn": (layout_state or {}).get("params", {}).get("upstream", {}).get("knn"),
            "tables": frozenset(names),
            "n_documents": ws.n_documents(),
            "n_rejected": int(ws.scalar("SELECT count(*) FROM rejects")),
            "label_field": label_field,
        }


def open_view(path: Path) -> WorkspaceView:
    snapshot = _snapshot(str(path), _file_key(path))
    return WorkspaceView(path=path, is_sample=path == sample_path(), **snapshot)


@st.cache_data(max_entries=64, show_spinner=False)
def _read_view(view: str, path: str, key: str, *args: Any) -> Any:
    """explore.<view>(workspace, *args); `key` names the data's version (not used inside)."""
    with _reader(path) as ws:
        return getattr(explore, view)(ws, *args)


def documents(ws: WorkspaceView) -> pd.DataFrame:
    return _read_view("document_frame", str(ws.path), ws.key("ingest"), ws.label_field)


def placement(ws: WorkspaceView) -> pd.DataFrame:
    return _read_view("placement_frame", str(ws.path), ws.key("pack"))


def contexts(ws: WorkspaceView) -> pd.DataFrame:
    return _read_view("context_summary", str(ws.path), ws.key("pack"), ws.label_field)


def context_documents(ws: WorkspaceView, context: int) -> pd.DataFrame:
    return _read_view(
        "context_documents", str(ws.path), ws.key("pack"), int(context), ws.label_field
    )


def adjacent_similarities(ws: WorkspaceView) -> dict:
    return _read_view("adjacent_similarities", str(ws.path), ws.key("pack"), ws.params)


def metrics_history(ws: WorkspaceView) -> pd.DataFrame:
    return _read_view("metrics_history", str(ws.path), ws.key("metrics"))


def find_documents(ws: WorkspaceView, query: str) -> pd.DataFrame:
    return _read_view("find_documents", str(ws.path), ws.key("ingest"), query, ws.label_field)


def document_text(ws: WorkspaceView, doc: int) -> str:
    return _read_view("document_text", str(ws.path), ws.key("ingest"), int(doc))


def neighborhood(
    ws: WorkspaceView, doc: int, hops: int, fanout: int | None = None
) -> explore.Neighborhood:
    return _read_view(
        "neighborhood", str(ws.path), ws.key("knn", "order"), int(doc), ws.params.k, int(hops),
        2, fanout,
    )  # fmt: skip


def removed(ws: WorkspaceView) -> pd.DataFrame:
    return _read_view("removed_frame", str(ws.path), ws.key("order"))


def rejects(ws: WorkspaceView) -> pd.DataFrame:
    return _read_view("reject_frame", str(ws.path), ws.key("ingest"))


def stage_runs(ws: WorkspaceView) -> pd.DataFrame:
    return _read_view("stage_runs", str(ws.path), str(_file_key(ws.path)))


def annotate(ws: WorkspaceView, frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` (with a doc column) plus each document's id, label, preview, status, context
    and slot."""
    docs = documents(ws)[["doc", "id", "label", "preview"]]
    place = placement(ws)[["doc", "status", "context", "slot", "position"]]
    return frame.merge(docs, on="doc", how="left").merge(place, on="doc", how="left")


@st.cache_data(max_entries=16, show_spinner=False)
def _latest_metrics(path: str, key: str, params: Params) -> dict[str, Any]:
    with _reader(path) as ws:
        return stages.latest_metrics(ws, params)


def latest_metrics(ws: WorkspaceView) -> dict[str, Any]:
    return _latest_metrics(str(ws.path), ws.key("metrics"), ws.params)


@st.cache_data(max_entries=4, show_spinner=False)
def _layout(path: str, key: str) -> pd.DataFrame:
    with _reader(path) as ws:
        return ws.arrow("SELECT doc, x, y FROM layout ORDER BY doc").to_pandas()


def layout(ws: WorkspaceView) -> pd.DataFrame | None:
    """Map coordinates by doc (x, y), or None when there is no map for these kNN lists."""
    if not ws.layout_current():
        return None
    return _layout(str(ws.path), ws.key("layout"))


def export(ws: WorkspaceView, out: Path, fmt: str, overwrite: bool, report) -> dict[str, Any]:
    """Write the contexts with icp_core.export (reading only); returns the manifest."""
    from icp_core.export import export_contexts

    with _reader(ws.path) as reader:
        return export_contexts(reader, ws.params, out, fmt, overwrite, latest_metrics(ws), report)


def knn_depth(ws: WorkspaceView) -> int:
    """Neighbours per document the stored kNN lists hold: any k up to it reuses them."""
    return _read_view("knn_depth", str(ws.path), ws.key("knn"))


def stage_seconds(ws: WorkspaceView) -> dict[str, float]:
    """Seconds each stage took the last time it ran here (the estimates' source)."""
    return _read_view("stage_seconds", str(ws.path), ws.key(*ws.fingerprints))


def rejects_at(path: Path) -> pd.DataFrame | None:
    """The rejected rows of the workspace at `path` (one the app does not have open)."""
    try:
        with _reader(path) as ws:
            return explore.reject_frame(ws)
    except IcpError:
        return None


@st.cache_data(max_entries=8, show_spinner="Packing both settings…")
def _compare(path: str, key: str, params: Params, other_name: str, other: Params) -> list:
    with _reader(path) as ws:
        return explore.compare_settings(ws, params, {other_name: other})


def compare(ws: WorkspaceView, name: str, other: Params) -> list[explore.Setting]:
    """[current, other]: the stored contexts and `other` computed in memory, both measured."""
    return _compare(str(ws.path), ws.key("pack", "metrics"), ws.params, name, other)


def comparable(ws: WorkspaceView, other: Params) -> str | None:
    return _read_view("comparable", str(ws.path), ws.key("knn", "pack"), ws.params, other)


@st.cache_data(max_entries=8, show_spinner=False)
def _stored_evaluation(path: str, file_key: tuple, params: Params) -> dict[str, Any] | None:
    from icp_core import evaluate

    with _reader(path) as ws:
        return evaluate.stored(ws, params)


def stored_evaluation(ws: WorkspaceView, params: Params) -> dict[str, Any] | None:
    """What `icp eval` (or the Compare page's job) stored for `params` on the current data:
    every ordering method × pack policy with the upper bounds; None when not computed yet."""
    return _stored_evaluation(str(ws.path), _file_key(ws.path), params)
