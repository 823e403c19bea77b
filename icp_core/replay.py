"""`icp replay`: re-run an export from its manifest and compare the files it writes."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from icp_core import export, manifest, pipeline, stages
from icp_core.errors import IcpError
from icp_core.ingest import source_fingerprint
from icp_core.params import Params
from icp_core.workspace import Workspace


def replay(
    manifest_path: str | Path,
    out: str | Path,
    workspace: str | Path | None = None,
    overwrite: bool = False,
    progress: Callable[[str], Callable[[int, int], None]] = pipeline._no_progress,
) -> list[str]:
    """Ingest the manifest's inputs, run every stage with its parameters and export to `out`
    in the same format; returns the files whose sha256 differs from the manifest's (empty:
    byte-identical, as expected on the same machine with the same library versions).

    Raises:
        IcpError: the manifest is unreadable, or an input is missing or changed since.
    """
    recorded = manifest.read(Path(manifest_path))
    for source in recorded["inputs"]:
        path = Path(source["source"])
        if not path.exists():
            raise IcpError(f"{path}: input of this manifest is missing; restore it to replay")
        if source_fingerprint(path) != source["content_hash"]:
            raise IcpError(f"{path}: changed since the export (content hash differs)")
    # a null device says no model ran (imported or cached vectors): any device will do
    values = {k: v for k, v in recorded["parameters"].items() if v is not None or k != "device"}
    params = Params.from_dict(values).validate()
    with (
        tempfile.TemporaryDirectory(prefix="icp-replay-") as scratch,
        Workspace(Path(workspace or Path(scratch) / "replay.duckdb")) as ws,
    ):
        for source in recorded["inputs"]:  # one at a time: documents keep their numbers
            fields = {"text_field": source["text_field"], "id_field": source["id_field"]}
            pipeline.ingest(ws, [source["source"]], params.updated(**fields), progress)
        pipeline.run(ws, params, progress=progress)
        written = export.export_contexts(
            ws,
            params,
            out,
            recorded["format"],
            overwrite,
            stages.latest_metrics(ws, params),
            progress("export"),
            shard_size=recorded["export"]["shard_size"],
            drop_last=recorded["export"]["drop_last"],
        )
    names = set(recorded["files"]) | set(written["files"])
    return sorted(
        name
        for name in names
        if (recorded["files"].get(name) or {}).get("sha256")
        != (written["files"].get(name) or {}).get("sha256")
    )
