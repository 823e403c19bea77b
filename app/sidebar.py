"""The sidebar: the Data panel (open a workspace, make one from a file) and the parameters,
with what an edit would re-run, and for about how long, before Apply."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app import data, jobs, progress
from app.words import LABELS, app_words
from icp_core import explore, pack, tokenizer
from icp_core.errors import IcpError
from icp_core.params import Params, default_dedup_threshold
from icp_core.traverse import METHODS

UPLOAD_LIMIT_MB = 50
PARAM_KEYS = ("k", "order", "dedup", "dedup_threshold", "context_length", "pack", "tokenizer")


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def data_panel(path: Path) -> None:
    with st.sidebar.expander("Data", expanded=False, icon=":material/database:"):
        st.caption("Open another workspace, or make one from a file.")
        with st.form("open_workspace", border=False):
            typed = st.text_input(LABELS["workspace"], key="open_path")
            if st.form_submit_button("Open workspace"):
                candidate = Path(typed).expanduser()
                if candidate.is_file():
                    st.session_state["workspace"] = str(candidate.resolve())
                    st.rerun()
                st.error(f"{typed}: no such file. Give the path of a workspace (.duckdb) file.")
        uploaded = st.file_uploader(
            "New workspace from a JSONL or Parquet file",
            type=["jsonl", "json", "ndjson", "gz", "parquet"],
            max_upload_size=UPLOAD_LIMIT_MB,
            help=f"Up to {UPLOAD_LIMIT_MB} MB; embedding runs at about 20 documents/s on a "
            "laptop CPU. The workspace you have open stays open until the new one is ready.",
        )
        text_field = st.text_input(LABELS["text_field"], value="text", key="upload_text_field")
        id_field = st.text_input(LABELS["id_field"], value="id", key="upload_id_field")
        if uploaded is not None and st.button("Create workspace", type="primary"):
            _create_from_upload(uploaded, text_field, id_field)
        if path != data.sample_path() and st.button("Back to the bundled sample"):
            st.session_state["workspace"] = str(data.sample_path())
            st.rerun()


def _create_from_upload(uploaded, text_field: str, id_field: str) -> None:
    if uploaded.size > UPLOAD_LIMIT_MB * 2**20:
        st.sidebar.error(
            f"{uploaded.name} is {uploaded.size / 2**20:.0f} MB; the app takes files up to "
            f"{UPLOAD_LIMIT_MB} MB. Split it, or build the workspace on the command line "
            "and open it with “Workspace file” above."
        )
        return
    upload, target = jobs.store_upload(uploaded.name, uploaded.getvalue(), data.cache_dir())
    # the open workspace stays open until the new one is ready (page_setup switches then)
    st.session_state["pending_upload"] = str(target)
    progress.start_job(jobs.upload_spec(upload, target, text_field, id_field))
    st.rerun()


# ---------------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------------


def _sync_parameter_widgets(ws: data.WorkspaceView) -> None:
    """Show the workspace's parameters in the widgets when the workspace or its settings
    change (edits not yet applied survive page switches)."""
    marker = (str(ws.path), ws.params)
    if st.session_state.get("_synced") == marker and all(k in st.session_state for k in PARAM_KEYS):
        # Streamlit drops a widget's value when another page draws the "same" widget; writing
        # the values back keeps them (its documented way to carry widgets across pages)
        for key in PARAM_KEYS:
            st.session_state[key] = st.session_state[key]
        return
    _reset_widgets(ws.params)
    st.session_state["_synced"] = marker


def _reset_widgets(p: Params) -> None:
    st.session_state.update(
        k=p.k,
        order=p.order,
        dedup=p.dedup_threshold is not None,
        dedup_threshold=p.dedup_threshold
        if p.dedup_threshold is not None
        else default_dedup_threshold(p.model, p.vectors),
        context_length=p.context_length,
        pack=p.pack,
        tokenizer=p.tokenizer or "",
    )


def edited_params(ws: data.WorkspaceView) -> Params:
    """The parameters as the sidebar shows them (not yet validated)."""
    values = st.session_state
    return ws.params.updated(
        k=int(values["k"]),
        order=values["order"],
        dedup_threshold=float(values["dedup_threshold"]) if values["dedup"] else None,
        context_length=int(values["context_length"]),
        pack=values["pack"],
        tokenizer=values["tokenizer"].strip() or None,
    )


def changes(old: Params, new: Params) -> dict[str, tuple]:
    """{field: (applied, edited)} for every field the edit changes."""
    before, after = old.to_dict(), new.to_dict()
    return {name: (before[name], after[name]) for name in after if before[name] != after[name]}


def plan(ws: data.WorkspaceView, new: Params) -> dict[str, float]:
    """{stage: expected seconds} for the stages applying `new` re-runs."""
    until = "layout" if "layout" in ws.tables else "metrics"
    rerun = explore.stages_to_rerun(ws.params, new, data.knn_depth(ws), until)
    seconds = data.stage_seconds(ws)
    return {stage: seconds.get(stage, 1.0) for stage in rerun}


def describe_plan(ws: data.WorkspaceView, stages: dict[str, float]) -> str:
    if not stages:
        return "re-runs nothing (the stored results serve these values)"
    total = sum(stages.values()) + progress.WORKER_START_S
    words = f"re-runs {', '.join(stages)}"
    if "knn" in stages and "layout" in stages:
        words += f" — a new kNN search (k above the {data.knn_depth(ws)} stored) and map"
    elif "knn" in stages:
        words += f" — a new kNN search (k above the {data.knn_depth(ws)} stored)"
    return f"{words}, about {max(1, round(total))} s"


def parameters_panel(ws: data.WorkspaceView) -> None:
    _sync_parameter_widgets(ws)
    box = st.sidebar.container(border=True)
    box.markdown("**Parameters**")
    # the widgets' values are in session_state before they are drawn: the marker and Apply
    # go first, where a laptop screen shows them
    edited = edited_params(ws)
    changed = changes(ws.params, edited)
    stages: dict[str, float] = {}
    if changed:
        stages = plan(ws, edited)
        lines = "\n".join(f"- {name}: {old} → **{new}**" for name, (old, new) in changed.items())
        box.warning(
            f"**Not applied yet**\n\n{lines}\n\nApply {describe_plan(ws, stages)}.",
            icon=":material/edit:",
        )
    cols = box.columns([3, 2])
    applied = cols[0].button(
        "Apply", type="primary", width="stretch", disabled=not changed and ws.ready(),
        help="Re-run the stages these changes touch, in the background",
    )  # fmt: skip
    cols[1].button(
        "Undo", width="stretch", disabled=not changed, help="Back to the applied values",
        on_click=_reset_widgets, args=(ws.params,),
    )  # fmt: skip
    box.number_input(LABELS["k"], 1, 200, step=1, key="k")
    box.selectbox(LABELS["order"], list(METHODS), key="order")
    box.checkbox("Remove near-duplicates", key="dedup")
    box.number_input(
        LABELS["dedup_threshold"], 0.5, 1.0, step=0.01, format="%.2f", key="dedup_threshold",
        disabled=not st.session_state.get("dedup"),
    )  # fmt: skip
    box.number_input(
        LABELS["context_length"], 32, 1_048_576, step=256, key="context_length"
    )
    box.selectbox(LABELS["pack"], list(pack.PACK_MODES), key="pack")
    box.text_input(
        LABELS["tokenizer"],
        key="tokenizer",
        placeholder=tokenizer.DEFAULT_TOKENIZER,
        help="Your LM's tokenizer: a built-in name ("
        + ", ".join(tokenizer.BUILTINS)
        + "), or the path of a tokenizer.json, SentencePiece .model or .tiktoken file; "
        f"empty: {tokenizer.DEFAULT_TOKENIZER}.",
    )
    with st.sidebar.expander("About the parameters"):
        st.markdown(data.help_text("parameters"))
    if applied:
        _apply(ws, edited, changed, stages)


def _apply(ws: data.WorkspaceView, edited: Params, changed: dict, stages: dict) -> None:
    try:
        tokenizer.resolve(edited.tokenizer)
        params = edited.validate()
    except IcpError as err:
        st.sidebar.error(app_words(err))
        return
    described = ", ".join(f"{name} = {new}" for name, (_, new) in changed.items()) or "re-run"
    progress.start_job(
        {
            "workspace": str(ws.path),
            "params": params.to_dict(),
            "until": "layout" if "layout" in ws.tables else "metrics",
            "description": f"Applying {described}",
        },
        stages,
    )
    st.rerun()
