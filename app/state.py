"""The one call at the top of every page: `page_setup()` draws the sidebar, follows a job in
progress, does the first-start work and returns the open workspace, ready to show.

What it uses lives by concern: `app/data.py` (the open workspace and cached reads),
`app/progress.py` (jobs as the user sees them), `app/sidebar.py` (Data and Parameters).
"""

from __future__ import annotations

import re
from pathlib import Path

import streamlit as st

from app import data, jobs, progress, sidebar, words
from icp_core import sample
from icp_core.errors import IcpError


def page_setup() -> data.WorkspaceView:
    """Sidebar, job progress and first-start work; returns the open workspace, ready to show.
    Stops the page (st.stop) while there is nothing to show yet."""
    runner = progress.job_runner()
    path = data.workspace_path()
    sidebar.data_panel(path)
    _follow_upload()
    show_upload_failure()
    if runner.running(path):
        progress.follow_job(path)
    # the next job's worker warms up once this page is drawn (it would slow the drawing)
    runner.prepare(delay_s=progress.SPARE_DELAY_S)
    progress.report_last_job(path)
    if path == data.sample_path() and not _sample_ready(path):
        _build_sample(path)
    if not path.exists():
        st.error(f"{path}: no such workspace. Open another one in the sidebar (Data).")
        st.stop()
    try:
        ws = data.open_view(path)
    except IcpError as err:
        st.error(words.app_words(err))
        st.stop()
    sidebar.parameters_panel(ws)
    if not ws.ready():
        _offer_run(ws)
        st.stop()
    st.caption(header(ws) + _unapplied_marker(ws))
    return ws


def header(ws: data.WorkspaceView) -> str:
    """The open workspace and its applied parameters."""
    p = ws.params
    dedup = f"dedup ≥ {p.dedup_threshold:g}" if p.dedup_threshold is not None else "no dedup"
    return (
        f"**{ws.path.name}**{' (bundled sample)' if ws.is_sample else ''} · "
        f"{plural(ws.n_documents, 'document')} · k = {p.k} · order = {p.order} · {dedup} · "
        f"L = {p.context_length:,} · pack = {p.pack}"
    )


def _unapplied_marker(ws: data.WorkspaceView) -> str:
    try:
        changed = sidebar.changes(ws.params, sidebar.edited_params(ws))
    except (KeyError, ValueError, TypeError):
        return ""
    if not changed:
        return ""
    return f" · :orange[**{plural(len(changed), 'edit')} in the sidebar not applied**]"


def plural(n: int, word: str, words: str | None = None) -> str:
    """'1 document', '2,000 documents'."""
    return f"{n:,} {word if n == 1 else (words or word + 's')}"


def _follow_upload() -> None:
    """An upload's job: follow it; when it is done open its workspace, when it failed keep the
    open one and show why, with the rejected rows."""
    pending = st.session_state.get("pending_upload")
    if not pending:
        return
    target = Path(pending)
    runner = progress.job_runner()
    if runner.running(target):
        progress.follow_job(target)
    del st.session_state["pending_upload"]
    status = runner.status(target) or {}
    if status.get("state") == "done":
        st.session_state["workspace"] = str(target)
        st.rerun()
    st.session_state.setdefault("seen_failures", set()).add(status.get("started_at"))
    st.session_state["upload_failure"] = {
        "error": _upload_name(words.job_error(status).replace(f"{target}: ", "")),
        "rejects": _in_app_rejects(data.rejects_at(target)) if target.exists() else None,
        "name": target.name,
    }


def _upload_name(text: str) -> str:
    """`text` with the app's stored copy of an upload (<folder>/uploads/<hash>-<name>) named
    by the name the user knows it by."""
    return re.sub(r"\S*/uploads/[0-9a-f]{12}-([^\s/]+)", r"\1", text)


def _in_app_rejects(rejects):
    """The rejects table with the upload's file name."""
    if rejects is None:
        return None
    rejects = rejects.copy()
    rejects["source"] = rejects["source"].map(_upload_name)
    return rejects


def show_upload_failure() -> None:
    failure = st.session_state.get("upload_failure")
    if not failure:
        return
    st.error(
        f"The upload did not make a workspace: {failure['error'].rstrip('.')}. "
        "The workspace you had open "
        "stays open; fix the file (or the Text field / Id field in the sidebar's Data panel) "
        "and upload it again.",
        icon=":material/upload_file:",
    )
    rejects = failure["rejects"]
    if rejects is not None and len(rejects):
        st.caption(f"Rejected rows of the upload ({plural(len(rejects), 'row')} shown)")
        # as tall as its rows, up to about five (no empty rows below a short list)
        height = min(38 + 35 * len(rejects), 213)
        st.dataframe(rejects, hide_index=True, width="stretch", height=height)
    if st.button("Dismiss", key="dismiss_upload_failure"):
        del st.session_state["upload_failure"]
        st.rerun()


def _sample_ready(path: Path) -> bool:
    if not path.exists():
        return False
    try:
        view = data.open_view(path)
    except IcpError:
        return False
    return view.ready() and view.layout_current()


def _build_sample(path: Path) -> None:
    runner = progress.job_runner()
    last = runner.status(path)
    if last and last.get("state") == "failed" and not st.button("Build the sample again"):
        st.error(f"Building the bundled sample failed: {last.get('error')}")
        st.stop()
    progress.start_job(jobs.sample_spec(path), sample.SAMPLE_SECONDS)
    progress.follow_job(path)


def _offer_run(ws: data.WorkspaceView) -> None:
    if ws.n_documents == 0:
        st.warning(
            f"{ws.path.name} holds no documents. Make a workspace from a file in the sidebar "
            "(Data), or go back to the bundled sample there."
        )
        return
    st.info(f"{ws.path.name} has {plural(ws.n_documents, 'document')} but no contexts yet.")
    if st.button("Run every stage", type="primary"):
        progress.start_job(
            {
                "workspace": str(ws.path),
                "params": ws.params.to_dict(),
                "until": "metrics",
                "description": "Running every stage",
            }
        )
        st.rerun()
