"""The app's words for the engine's messages: an `IcpError` names the setting that fixes it
(`fix`, a `Params` field or option), which the command line shows as its flag and the app as
the control that sets it. No Streamlit here; the widgets take their labels from `LABELS`."""

from __future__ import annotations

from typing import Any

from icp_core.errors import IcpError, render

# the label of each control that sets an option
LABELS = {
    "k": "k (neighbours per document)",
    "order": "Ordering method",
    "dedup_threshold": "Dedup threshold (cosine ≥)",
    "context_length": "Context length (tokens)",
    "pack": "Pack policy",
    "tokenizer": "Tokenizer",
    "text_field": "Text field",
    "id_field": "Id field",
    "workspace": "Workspace file (.duckdb)",
    "out": "Output folder",
    "overwrite": "Replace the folder if it exists",
}
# where each labelled control is
PLACES = {
    **dict.fromkeys(
        ("k", "order", "dedup_threshold", "context_length", "pack", "tokenizer"),
        "in the sidebar's Parameters",
    ),
    **dict.fromkeys(("text_field", "id_field", "workspace"), "in the sidebar's Data panel"),
    **dict.fromkeys(("out", "overwrite"), "on the Export page"),
}
# options the app has no control for: what does their job here
INSTEAD = {
    "separator": "the Tokenizer (one with an end-of-document token) in the sidebar's Parameters",
    "update": "a new workspace from the changed file (Data panel)",
    "model": "the command line (`icp run`), then open the workspace",
    "vectors": "the command line (`icp run`), then open the workspace",
    "max_tokens": "the command line (`icp run`), then open the workspace",
}


def control(option: str) -> str:
    """How the app names the setting `option`: “Label” and where it is."""
    if option in LABELS:
        return f"“{LABELS[option]}” {PLACES[option]}"
    return INSTEAD.get(option, option.replace("_", " "))


def app_words(err: IcpError) -> str:
    """An engine error as the app says it."""
    return err.render(control)


def job_error(status: dict[str, Any]) -> str:
    """Why a job (`icp_core.jobs.run_job`'s status) failed, as the app says it."""
    problem = status.get("problem")
    if problem:
        return render(problem["message"], problem["fix"], control)
    return str(status.get("error") or "stopped")
