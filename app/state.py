"""What every page shares: which workspace is open, the sidebar (data and parameters), jobs in
progress, and every cached read. The only module of the app that caches.

Reads use short-lived read-only connections and are cached by the fingerprint of the stage
that wrote the data (`stage_state`), so a page rerun reads nothing new unless a stage re-ran,
and a view re-reads only what the change touched. Writes happen only in job processes
(`app/jobs.py`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from app import jobs
from icp_core import explore, pack, pipeline, stages, tokenizer
from icp_core.errors import IcpError
from icp_core.params import Params
from icp_core.traverse import METHODS
from icp_core.workspace import Workspace

HELP_DIR = Path(__file__).resolve().parent / "help"
UPLOAD_LIMIT_MB = 50
READ_WAIT_S = 10.0
SPARE_DELAY_S = 2.0
# what the progress bar says while a stage runs
STAGE_WORDS = {
    "starting": "starting a worker",
    "open": "opening the workspace",
    "ingest": "reading the input",
    "embed": "embedding documents",
    "knn": "finding neighbours",
    "dedup": "removing near-duplicates",
    "order": "ordering",
    "pack": "counting tokens and packing contexts",
    "metrics": "measuring",
    "layout": "computing the map (UMAP)",
}
PARAM_KEYS = ("k", "order", "dedup", "dedup_threshold", "context_length", "pack", "tokenizer")


# ---------------------------------------------------------------------------------------------
# where things live
# ---------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Per-user folder for the sample workspace, uploads and job status files
    ($ICP_APP_CACHE, else $XDG_CACHE_HOME/icp-workbench, else ~/.cache/icp-workbench)."""
    explicit = os.environ.get("ICP_APP_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "icp-workbench"


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


@st.cache_resource
def job_runner() -> jobs.JobRunner:
    return jobs.JobRunner(cache_dir() / "jobs")


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


def neighborhood(ws: WorkspaceView, doc: int, hops: int) -> explore.Neighborhood:
    return _read_view(
        "neighborhood", str(ws.path), ws.key("knn", "order"), int(doc), ws.params.k, int(hops)
    )


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


# ---------------------------------------------------------------------------------------------
# jobs
# ---------------------------------------------------------------------------------------------


def start_job(spec: dict[str, Any]) -> None:
    """Start a job and remember that this session follows it."""
    try:
        job_runner().start(spec)
    except RuntimeError as err:
        st.warning(str(err))


def _follow_job(path: Path) -> None:
    """Show the running job's progress until it ends, then rerun the page on the new data."""
    runner = job_runner()
    status = runner.status(path) or {}
    stage_names = pipeline.STAGE_NAMES
    shown_from = time.time()
    with st.status(status.get("description") or "Working on the workspace…", expanded=True) as box:
        st.caption(f"{path}")
        bar = st.progress(0.0)
        if st.button("Cancel", key="cancel_job", help="Stop the job; finished stages are kept."):
            runner.cancel(path)
        while status.get("state") == "running":
            stage = status.get("stage", "")
            done, total = status.get("done", 0), status.get("total", 0)
            index = stage_names.index(stage) if stage in stage_names else 0
            within = done / total if total else 0.0
            fraction = min(1.0, (index + within) / len(stage_names))
            counter = f": {done:,} of {total:,}" if total > 1 else ""
            elapsed = time.time() - min(status.get("started_at", shown_from), shown_from)
            note = f" · {status['note']}" if status.get("note") else ""  # "loading model", ETA
            bar.progress(
                fraction, text=f"{STAGE_WORDS.get(stage, stage)}{counter} · {elapsed:.0f} s{note}"
            )
            time.sleep(0.1)
            status = runner.status(path) or {}
        box.update(
            label="Done" if status.get("state") == "done" else "Stopped",
            state="complete" if status.get("state") == "done" else "error",
        )
    st.rerun()


def _report_last_job(path: Path) -> None:
    status = job_runner().status(path)
    if not status:
        return
    if status.get("state") == "failed":
        seen = st.session_state.setdefault("seen_failures", set())
        if status.get("started_at") not in seen:
            seen.add(status.get("started_at"))
            st.error(f"{status.get('description') or 'Job'} failed: {status.get('error')}")
    elif status.get("state") == "done" and status.get("stages"):
        ran = [s["stage"] for s in status["stages"] if s["status"] == "ran"]
        reused = [s["stage"] for s in status["stages"] if s["status"] == "skipped"]
        seconds = (status.get("updated_at") or 0) - (status.get("started_at") or 0)
        st.sidebar.caption(
            f"Last run ({seconds:.1f} s): re-ran {', '.join(ran) or 'nothing'}"
            + (f"; reused {', '.join(reused)}" if reused else "")
        )


# ---------------------------------------------------------------------------------------------
# sidebar: data
# ---------------------------------------------------------------------------------------------


def _data_sidebar(path: Path) -> None:
    with st.sidebar.expander("Data", expanded=False, icon=":material/database:"):
        st.caption("Open another workspace, or make one from a file.")
        with st.form("open_workspace", border=False):
            typed = st.text_input("Workspace file (.duckdb)", key="open_path")
            if st.form_submit_button("Open workspace"):
                candidate = Path(typed).expanduser()
                if candidate.is_file():
                    st.session_state["workspace"] = str(candidate.resolve())
                    st.rerun()
                st.error(f"{typed}: no such file; give the path of a workspace `icp run` made")
        uploaded = st.file_uploader(
            "New workspace from a JSONL or Parquet file",
            type=["jsonl", "json", "ndjson", "gz", "parquet"],
            max_upload_size=UPLOAD_LIMIT_MB,
            help=f"Up to {UPLOAD_LIMIT_MB} MB. Embedding runs at about 20 documents/s on a "
            "laptop CPU; for large corpora use `icp run FILE --workspace WS` and "
            "`icp app --workspace WS`.",
        )
        text_field = st.text_input("Text field", value="text", key="upload_text_field")
        id_field = st.text_input("Id field", value="id", key="upload_id_field")
        if uploaded is not None and st.button("Create workspace", type="primary"):
            _create_from_upload(uploaded, text_field, id_field)
        if path != sample_path() and st.button("Back to the bundled sample"):
            st.session_state["workspace"] = str(sample_path())
            st.rerun()


def _create_from_upload(uploaded, text_field: str, id_field: str) -> None:
    if uploaded.size > UPLOAD_LIMIT_MB * 2**20:
        st.error(
            f"{uploaded.name} is {uploaded.size / 2**20:.0f} MB; the app takes files up to "
            f"{UPLOAD_LIMIT_MB} MB. Run `icp run {uploaded.name} --workspace WS` and open it "
            "with `icp app --workspace WS`."
        )
        return
    upload, target = jobs.store_upload(uploaded.name, uploaded.getvalue(), cache_dir())
    st.session_state["workspace"] = str(target)
    start_job(jobs.upload_spec(upload, target, text_field, id_field))
    st.rerun()


# ---------------------------------------------------------------------------------------------
# sidebar: parameters
# ---------------------------------------------------------------------------------------------


def _sync_parameter_widgets(ws: WorkspaceView) -> None:
    """Show the workspace's parameters in the form when the workspace or its settings change
    (edits not yet applied survive page switches)."""
    marker = (str(ws.path), ws.params)
    if st.session_state.get("_synced") == marker and all(k in st.session_state for k in PARAM_KEYS):
        # Streamlit drops a widget's value when another page draws the "same" widget; writing
        # the values back keeps them (its documented way to carry widgets across pages)
        for key in PARAM_KEYS:
            st.session_state[key] = st.session_state[key]
        return
    p = ws.params
    st.session_state.update(
        k=p.k,
        order=p.order,
        dedup=p.dedup_threshold is not None,
        dedup_threshold=p.dedup_threshold if p.dedup_threshold is not None else 0.95,
        context_length=p.context_length,
        pack=p.pack,
        tokenizer=p.tokenizer or "",
    )
    st.session_state["_synced"] = marker


def _parameters_sidebar(ws: WorkspaceView) -> None:
    _sync_parameter_widgets(ws)
    with st.sidebar.form("parameters"):
        st.markdown("**Parameters**")
        st.number_input("k (neighbours per document)", 1, 200, step=1, key="k")
        st.selectbox("Ordering method", list(METHODS), key="order")
        st.checkbox("Remove near-duplicates", key="dedup")
        st.number_input(
            "Dedup threshold (cosine ≥)", 0.5, 1.0, step=0.01, format="%.2f", key="dedup_threshold"
        )
        st.number_input("Context length (tokens)", 32, 1_048_576, step=256, key="context_length")
        st.selectbox("Pack policy", list(pack.PACK_MODES), key="pack")
        st.text_input(
            "Tokenizer",
            key="tokenizer",
            placeholder=tokenizer.DEFAULT_TOKENIZER,
            help="Your LM's tokenizer: a built-in name ("
            + ", ".join(tokenizer.BUILTINS)
            + "), or the path of a tokenizer.json, SentencePiece .model or .tiktoken file; "
            f"empty: {tokenizer.DEFAULT_TOKENIZER}.",
        )
        applied = st.form_submit_button("Apply", type="primary", width="stretch")
    with st.sidebar.expander("About the parameters"):
        st.markdown(help_text("parameters"))
    if applied:
        _apply(ws)


def _apply(ws: WorkspaceView) -> None:
    values = st.session_state
    lm_tokenizer = values["tokenizer"].strip() or None
    try:
        tokenizer.resolve(lm_tokenizer)
        params = ws.params.updated(
            k=int(values["k"]),
            order=values["order"],
            dedup_threshold=float(values["dedup_threshold"]) if values["dedup"] else None,
            context_length=int(values["context_length"]),
            pack=values["pack"],
            tokenizer=lm_tokenizer,
        ).validate()
    except IcpError as err:
        st.sidebar.error(str(err))
        return
    changed = {
        name: value
        for name, value in params.to_dict().items()
        if value != ws.params.to_dict()[name]
    }
    if not changed and ws.ready():
        st.sidebar.info("Nothing changed.")
        return
    described = ", ".join(f"{name}={value}" for name, value in changed.items()) or "re-run"
    start_job(
        {
            "workspace": str(ws.path),
            "params": params.to_dict(),
            "until": "layout" if "layout" in ws.tables else "metrics",
            "description": f"Applying {described}",
        }
    )
    st.rerun()


# ---------------------------------------------------------------------------------------------
# the one call at the top of every page
# ---------------------------------------------------------------------------------------------


def page_setup() -> WorkspaceView:
    """Sidebar, job progress and first-start work; returns the open workspace, ready to show.
    Stops the page (st.stop) while there is nothing to show yet."""
    runner = job_runner()
    path = workspace_path()
    _data_sidebar(path)
    if runner.running(path):
        _follow_job(path)
    # the next job's worker warms up once this page is drawn (it would slow the drawing)
    runner.prepare(delay_s=SPARE_DELAY_S)
    _report_last_job(path)
    if path == sample_path() and not _sample_ready(path):
        last = runner.status(path)
        if last and last.get("state") == "failed" and not st.button("Build the sample again"):
            st.error(f"Building the bundled sample failed: {last.get('error')}")
            st.stop()
        start_job(jobs.sample_spec(path))
        _follow_job(path)
    if not path.exists():
        st.error(f"{path}: no such workspace. Open another one in the sidebar (Data).")
        st.stop()
    try:
        ws = open_view(path)
    except IcpError as err:
        st.error(str(err))
        st.stop()
    _parameters_sidebar(ws)
    if not ws.ready():
        _offer_run(ws)
        st.stop()
    p = ws.params
    dedup = f"dedup ≥ {p.dedup_threshold:g}" if p.dedup_threshold is not None else "no dedup"
    st.caption(
        f"**{ws.path.name}**{' (bundled sample)' if ws.is_sample else ''} · "
        f"{ws.n_documents:,} documents · k = {p.k} · order = {p.order} · {dedup} · "
        f"L = {p.context_length:,} · pack = {p.pack}"
    )
    return ws


def _sample_ready(path: Path) -> bool:
    if not path.exists():
        return False
    try:
        view = open_view(path)
    except IcpError:
        return False
    return view.ready() and "layout" in view.tables


def _offer_run(ws: WorkspaceView) -> None:
    if ws.n_documents == 0:
        st.warning(
            f"{ws.path.name} holds no documents yet (see the error above, if any). Make a "
            "workspace from a file in the sidebar (Data), or run `icp ingest`."
        )
        return
    st.info(f"{ws.path.name} has {ws.n_documents:,} documents but no contexts yet.")
    if st.button("Run every stage", type="primary"):
        start_job(
            {
                "workspace": str(ws.path),
                "params": ws.params.to_dict(),
                "until": "metrics",
                "description": "Running every stage",
            }
        )
        st.rerun()
