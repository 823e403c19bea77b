"""Ingest adapter: parse sources (`icp_core.ingest`) and match their rows against the stored
documents by id, then write documents, rejects and the `sources` row in one transaction."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from icp_core.ingest import (
    FIELDS_DIFFER,
    RAW_PREVIEW_CHARS,
    TEXT_DIFFERS,
    ParsedSource,
    duplicate_id_reason,
    hash_text,
    id_names,
    parse_source,
    source_fingerprint,
)
from icp_core.params import Params
from icp_core.stages._report import Report, _noop
from icp_core.workspace import Workspace, _now

log = logging.getLogger(__name__)


def run_ingest(
    ws: Workspace,
    inputs: list[str],
    params: Params,
    report: Report = _noop,
    update: bool = False,
) -> dict:
    """Add the documents of `inputs`; every row becomes a document, an update or a reject.

    A source whose content is what was last ingested from some path (with the same text and
    id fields) is skipped, unless `update` (so that rows a read rejected as differing can be
    replaced by running it again with --update). Otherwise each row is matched by id:
    - a new id adds a document;
    - a known id from the same file with the same text and fields is unchanged (no reject);
    - a known id whose text or fields differ replaces the stored document in place (same
      doc number) with `update`, else is rejected (TEXT_DIFFERS or FIELDS_DIFFER);
    - a known id from another file is a duplicate-id reject (replaced with `update`).
    A re-read source's earlier rejects are replaced by this read's, so a row fixed by a retry
    (say, with the right --text-field) is no longer also counted as rejected.
    """
    counts = {
        "documents": 0,
        "updated": 0,
        "unchanged": 0,
        "rejected": 0,
        "rejects_cleared": 0,
        "sources_skipped": 0,
        "sources_added": 0,
    }
    current = _current_sources(ws)
    names = id_names(inputs)
    parsed_sources: list[ParsedSource] = []
    seen: set[str] = set()
    for number, path in enumerate(inputs, start=1):
        content_hash = source_fingerprint(Path(path))
        read_before = (content_hash, params.text_field, params.id_field) in current
        if content_hash in seen or (read_before and not update):
            counts["sources_skipped"] += 1
            log.info("ingest: %s already ingested, skipped", path)
            continue
        seen.add(content_hash)
        parsed_sources.append(
            parse_source(
                path, params.text_field, params.id_field, content_hash, names.get(str(path))
            )
        )
        report(number, len(inputs))
    with ws.transaction():
        for parsed in parsed_sources:
            for key, value in _store_source(ws, parsed, params, update).items():
                counts[key] += value
            counts["sources_added"] += 1
    counts["total_documents"] = ws.n_documents()
    counts["total_rejected"] = int(ws.scalar("SELECT count(*) FROM rejects"))
    return counts


def _current_sources(ws: Workspace) -> set[tuple[str, str, str]]:
    """(content hash, text field, id field) of what each source path held when last read."""
    rows = ws.con.execute(
        """SELECT content_hash, text_field, id_field FROM (
               SELECT *, row_number() OVER (
                   PARTITION BY source ORDER BY ingested_at DESC, rowid DESC) AS newest
               FROM sources)
           WHERE newest = 1"""
    ).fetchall()
    return {tuple(row) for row in rows}


@dataclass
class _RowFates:
    """What `_store_source` decided for each accepted row of a parse (by row number)."""

    rejected: dict[int, str]
    new: list[int]
    replaced: list[tuple[int, int]]  # (row, doc): text, fields or file replaced (--update)
    moved: list[tuple[int, int]]  # (row, doc): unchanged, but now on another line
    unchanged: int


def _row_fates(ws: Workspace, parsed: ParsedSource, hashes: list[str], update: bool) -> _RowFates:
    """Match a parse's rows by id against each other and the stored documents (the rules are
    `run_ingest`'s); `hashes` are the rows' text hashes."""
    candidate = pa.table(
        {"row": np.arange(len(parsed.ids)), "id": pa.array(parsed.ids, pa.string())}
    )
    ws.con.register("_candidate", candidate)
    try:
        stored = ws.arrow(
            """SELECT c.row, d.doc, d.source, d.line, d.text_hash, d.meta::VARCHAR AS meta
               FROM _candidate c JOIN documents d ON d.id = c.id ORDER BY c.row"""
        ).to_pylist()
        inner = ws.arrow(
            """SELECT row, first_row FROM (
                   SELECT row, min(row) OVER (PARTITION BY id) AS first_row FROM _candidate)
               WHERE row <> first_row"""
        ).to_pylist()
    finally:
        ws.con.unregister("_candidate")
    rejected = {}
    for pair in inner:
        row, first = pair["row"], pair["first_row"]
        first_place = f"{parsed.files[first]}:{parsed.lines[first]}"
        rejected[row] = duplicate_id_reason(parsed.ids[row], first_place)
    replaced: list[tuple[int, int]] = []
    moved: list[tuple[int, int]] = []
    unchanged = 0
    known = set()
    for match in stored:
        row = match["row"]
        known.add(row)
        if row in rejected:
            continue
        same_file = match["source"] == parsed.files[row]
        same_text = match["text_hash"] == hashes[row]
        same_fields = (match["meta"] or None) == parsed.metas[row]
        if same_file and same_text and same_fields:
            unchanged += 1
            if match["line"] != parsed.lines[row]:  # rows above it were added or removed
                moved.append((row, match["doc"]))
        elif update:
            replaced.append((row, match["doc"]))
        elif not same_file:
            first_place = f"{match['source']}:{match['line']}"
            rejected[row] = duplicate_id_reason(parsed.ids[row], first_place)
        elif not same_text:
            rejected[row] = TEXT_DIFFERS
        else:
            rejected[row] = FIELDS_DIFFER
    new = [row for row in range(len(parsed.ids)) if row not in known and row not in rejected]
    return _RowFates(rejected, new, replaced, moved, unchanged)


def _store_source(
    ws: Workspace, parsed: ParsedSource, params: Params, update: bool = False
) -> dict[str, int]:
    """Write one parse: new documents, replaced ones, rejects (replacing the file's earlier
    rejects) and its `sources` row. Returns the counts `run_ingest` sums."""
    hashes = [hash_text(text) for text in parsed.texts]
    fates = _row_fates(ws, parsed, hashes, update)
    first_doc = int(ws.scalar("SELECT coalesce(max(doc) + 1, 0) FROM documents"))
    new_docs = np.arange(first_doc, first_doc + len(fates.new))
    ws.append_table("documents", _documents_table(parsed, hashes, fates.new, new_docs))
    if fates.replaced or fates.moved:
        rows, docs = zip(*fates.replaced, *fates.moved, strict=True)
        ws.con.register("_replaced", _documents_table(parsed, hashes, list(rows), docs))
        try:
            ws.execute(
                """UPDATE documents SET text = r.text, text_hash = r.text_hash, meta = r.meta,
                       source = r.source, line = r.line
                   FROM _replaced r WHERE documents.doc = r.doc"""
            )
        finally:
            ws.con.unregister("_replaced")
    # this read accounts for every row of the source again: its earlier rejects are stale
    # (a folder's rejects name the files below it)
    below = parsed.source + "/" if parsed.format == "folder" else None
    stale = "FROM rejects WHERE source = ? OR starts_with(source, ?)"
    cleared = int(ws.scalar(f"SELECT count(*) {stale}", [parsed.source, below]))
    ws.execute(f"DELETE {stale}", [parsed.source, below])
    for row, reason in sorted(fates.rejected.items()):
        raw = parsed.texts[row][:RAW_PREVIEW_CHARS]
        parsed.reject(parsed.lines[row], reason, raw, parsed.ids[row], parsed.files[row])
    rejects = parsed.rejects
    ws.append_table(
        "rejects",
        pa.table(
            {
                "source": pa.array([r.file or parsed.source for r in rejects], pa.string()),
                "line": pa.array([r.line for r in rejects], pa.int64()),
                "id": pa.array([r.id for r in rejects], pa.string()),
                "reason": pa.array([r.reason for r in rejects], pa.string()),
                "raw": pa.array([r.raw for r in rejects], pa.string()),
            }
        ),
    )
    updated = len(fates.replaced)
    kept = len(fates.new) + updated + fates.unchanged
    ws.execute(
        "INSERT INTO sources VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            parsed.source,
            parsed.content_hash,
            parsed.format,
            params.text_field,
            params.id_field,
            kept,
            len(rejects),
            _now(),
        ],
    )
    return {
        "documents": len(fates.new),
        "updated": updated,
        "unchanged": fates.unchanged,
        "rejected": len(rejects),
        "rejects_cleared": cleared,
    }


def _documents_table(
    parsed: ParsedSource, hashes: list[str], rows: list[int], docs: Any
) -> pa.Table:
    """`documents` rows for the given rows of a parse, numbered `docs`."""
    return pa.table(
        {
            "doc": pa.array(np.asarray(docs, dtype=np.int64), pa.int64()),
            "id": pa.array([parsed.ids[i] for i in rows], pa.string()),
            "text": pa.array([parsed.texts[i] for i in rows], pa.string()),
            "text_hash": pa.array([hashes[i] for i in rows], pa.string()),
            "source": pa.array([parsed.files[i] for i in rows], pa.string()),
            "line": pa.array([parsed.lines[i] for i in rows], pa.int64()),
            "meta": pa.array([parsed.metas[i] for i in rows], pa.string()),
        }
    )


def ingest_fingerprint_source(ws: Workspace) -> dict:
    """What the documents table depends on: the ordered content hashes of its sources, and
    its rows' ids, text hashes and fields (so a document replaced in place changes it)."""
    hashes = ws.column("SELECT content_hash FROM sources ORDER BY ingested_at, rowid").tolist()
    content = ws.scalar(
        "SELECT coalesce(sum(hash(doc, id, text_hash, meta::VARCHAR)), 0)::VARCHAR FROM documents"
    )
    return {"sources": hashes, "n_documents": ws.n_documents(), "documents": content}


def no_documents_message(ws: Workspace) -> str:
    """Why a workspace holds no documents, in one line: nothing ingested yet, or every row
    rejected (how many, from which sources, the most common reasons)."""
    n_rejected = int(ws.scalar("SELECT count(*) FROM rejects"))
    if not n_rejected:
        return f"{ws.path}: no documents ingested yet; run `icp ingest FILE --workspace {ws.path}`"
    sources = ws.column("SELECT DISTINCT source FROM sources ORDER BY source").tolist()
    named = ", ".join(sources[:3]) + (f" and {len(sources) - 3} more" if len(sources) > 3 else "")
    reasons = ws.con.execute(
        "SELECT count(*) AS n, reason FROM rejects GROUP BY reason ORDER BY n DESC, reason"
    ).fetchall()
    shown = "; ".join(f"{n} × {reason}" for n, reason in reasons[:3])
    others = sum(n for n, _ in reasons[3:])
    if others:
        shown += f"; {others} × other reasons"
    return (
        f"{ws.path}: no documents: all {n_rejected} rows of {named} were rejected: {shown}; "
        "see the rejects table"
    )
