"""Export: write the contexts (JSONL, Parquet or token ids) with their manifest."""

import io
import shutil
import tempfile
import zipfile
from pathlib import Path

import streamlit as st

from app import data, state
from app.words import LABELS, app_words
from icp_core.errors import IcpError
from icp_core.export import FORMATS

# a download is built in memory; larger exports go to a folder
DOWNLOAD_LIMIT_MB = 200
FORMAT_NOTES = {
    "jsonl": "a dataset folder: `data/train-*.jsonl` shards, one context per line with "
    "`input_ids`, `doc_lengths`, `doc_ids` and `text`",
    "parquet": "the same as Parquet shards: `datasets.load_dataset(folder)` reads them",
    "tokens": "`tokens.ds` (every context exactly its length, the short last one at the end), "
    "`tokens.ds.index` (document ends) and `offsets.npy`, for fixed-stride readers",
}

ws = state.page_setup()
st.title("Export")
fmt = st.radio("Format", FORMATS, key="export_format", captions=[FORMAT_NOTES[f] for f in FORMATS])
st.caption(
    "Every export also holds manifest.json (model, tokenizer, parameters, library versions, "
    "checksums, metrics) and removed/ (duplicates and rejects). Tokens are your LM's, from the "
    "Tokenizer box in the sidebar."
)


def _run_export(out: Path, overwrite: bool) -> dict | None:
    bar = st.progress(0.0, text="exporting…")
    try:
        manifest = data.export(
            ws,
            out,
            fmt,
            overwrite,
            lambda done, total: bar.progress(
                done / total if total else 1.0, text=f"{done:,}/{total:,} contexts"
            ),
        )
    except IcpError as err:
        bar.empty()
        st.error(app_words(err))
        return None
    bar.empty()
    return manifest


write_tab, download_tab = st.tabs(["Write to a folder", "Download"])
with write_tab:
    default = Path.cwd() / "out" / f"{ws.path.stem}-{fmt}"
    out = st.text_input(LABELS["out"], value=str(default), key=f"export_out_{fmt}")
    target = Path(out).expanduser()
    st.caption(
        f"Writes the folder {target}"
        + (
            " — it exists: tick the box below to replace an earlier export"
            if target.exists()
            else ""
        )
    )
    overwrite = st.checkbox(LABELS["overwrite"], key="export_overwrite")
    if st.button("Write", type="primary", key="export_write"):
        manifest = _run_export(Path(out).expanduser(), overwrite)
        if manifest is not None:
            st.session_state["export_manifest"] = manifest
            st.success(f"Wrote {out}")
with download_tab:
    if st.button("Prepare a .zip download", key="export_prepare"):
        folder = Path(tempfile.mkdtemp(prefix="icp-export-"))
        try:
            manifest = _run_export(folder / "export", overwrite=False)
            if manifest is not None:
                written = sorted(p for p in (folder / "export").rglob("*") if p.is_file())
                size = sum(p.stat().st_size for p in written)
                if size > DOWNLOAD_LIMIT_MB * 2**20:
                    st.error(
                        f"The export is {size / 2**20:.0f} MB, over the {DOWNLOAD_LIMIT_MB} MB "
                        "download limit; write it to a folder instead."
                    )
                else:
                    buffer = io.BytesIO()
                    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
                        for file in written:  # data/ shards, removed/, card, manifest
                            archive.write(file, file.relative_to(folder / "export"))
                    st.session_state["export_zip"] = (fmt, ws.key("pack"), buffer.getvalue())
                    st.session_state["export_manifest"] = manifest
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    prepared = st.session_state.get("export_zip")
    if prepared and prepared[:2] == (fmt, ws.key("pack")):
        st.download_button(
            f"Download {ws.path.stem}-{fmt}.zip ({len(prepared[2]) / 2**20:.1f} MB)",
            prepared[2],
            file_name=f"{ws.path.stem}-{fmt}.zip",
            mime="application/zip",
            type="primary",
        )

manifest = st.session_state.get("export_manifest")
if manifest:
    st.subheader("Manifest")
    files, counts = st.columns(2)
    entries = manifest["files"].values()  # {name: {"bytes", "sha256"}}
    files.dataframe(
        {
            "file": list(manifest["files"]),
            "bytes": [entry["bytes"] for entry in entries],
            "sha256": [entry["sha256"] for entry in entries],
        },
        hide_index=True,
        width="stretch",
    )
    counts.dataframe(
        {"count": list(manifest["counts"]), "value": [str(v) for v in manifest["counts"].values()]},
        hide_index=True,
        width="stretch",
    )
    st.json(manifest, expanded=2)
