"""`icp check --deep`: read the whole workspace back before trusting it.

DuckDB checksums every 256 kB block and verifies the checksum when it reads the block, so a
block is only known good once something has read it. `icp check` reads what the invariants
need; `icp check --deep` first reads every column of every table (every data block) and looks
up one key through each primary-key index (index blocks are read only through the index),
then runs the same checks.
"""

from __future__ import annotations

import json

import duckdb
import numpy as np

from icp_core import metrics
from icp_core.stages.pack import packed_document_tokens, read_packing
from icp_core.workspace import Workspace, storage_error


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def read_every_block(ws: Workspace) -> dict[str, int]:
    """Read every column of every table and one key through every primary-key index.

    Returns:
        table name -> row count.

    Raises:
        WorkspaceDamaged: a block could not be read (cut short, or its checksum fails),
            naming the table.
    """
    tables = [
        row[0]
        for row in ws.con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main' ORDER BY 1"
        ).fetchall()
    ]
    keys = {
        row[0]: row[1][0]
        for row in ws.con.execute(
            "SELECT table_name, constraint_column_names FROM duckdb_constraints() "
            "WHERE schema_name = 'main' AND constraint_type = 'PRIMARY KEY'"
        ).fetchall()
    }
    counts = {}
    for table in tables:
        name = _quote(table)
        try:
            # one aggregate per column (COLUMNS(*)) makes DuckDB read every column's segments
            row = ws.one(f"SELECT count(*), bit_xor(hash(COLUMNS(*))) FROM {name}")
            counts[table] = int(row[0]) if row else 0
            if table in keys and counts[table]:
                key = _quote(keys[table])
                first = ws.one(f"SELECT {key} FROM {name} LIMIT 1")
                ws.one(f"SELECT count(*) FROM {name} WHERE {key} = ?", [first[0]])
        except duckdb.Error as err:
            damaged = storage_error(ws.path, err, where=f"table {table}")
            if damaged is None:
                raise
            raise damaged from None
    return counts


# stages that only describe the data (the metrics table, the app's map): stale ones are
# recomputed on demand and cannot make the data inconsistent, so `icp check` does not flag them
_REPORTS = ("metrics", "layout")


def stale_stages(ws: Workspace) -> list[str]:
    """One problem per data stage computed from an older result of a stage it reads (a stage
    command brings only the stages before it up to date: after `icp dedup`, the ordering is
    stale until `icp order`, `icp pack` or `icp export` runs)."""
    rows = ws.con.execute("SELECT stage, fingerprint, params FROM stage_state").fetchall()
    current = {stage: fingerprint for stage, fingerprint, _ in rows}
    problems = []
    for stage, _, params in sorted(rows):
        if stage in _REPORTS:
            continue
        upstream = (json.loads(params) if params else {}).get("upstream") or {}
        changed = sorted(name for name, seen in upstream.items() if current.get(name) != seen)
        if changed:
            problems.append(
                f"stage {stage} is out of date ({', '.join(changed)} changed since it ran); "
                f"run `icp {stage} -w {ws.path}` or `icp export` to bring it up to date"
            )
    return problems


def check_invariants(ws: Workspace) -> list[str]:
    """Problems found (empty = all good): every input row is a kept document, a recorded
    duplicate or a reject; every kept document is in the path once and its tokens are packed
    exactly once; no context exceeds the context length; no input row is both a document
    and a reject."""
    problems = []
    both = ws.one(
        """SELECT count(*), min(r.source || ':' || r.line) FROM rejects r
           JOIN documents d ON d.source = r.source AND d.line = r.line"""
    )
    if both[0]:
        problems.append(
            f"{both[0]} input rows are both a document and a reject (first: {both[1]}); "
            "ingest that file again with the --text-field/--id-field it was ingested with"
        )
    for table in ("ordering", "contexts", "duplicates", "order_drops"):
        if not ws.has_table(table):
            return [*problems, f"table {table} missing: run `icp run` first"]
    n_docs = ws.n_documents()
    removed = ws.column("SELECT doc FROM duplicates UNION ALL SELECT doc FROM order_drops")
    ordered = ws.column("SELECT doc FROM ordering")
    if len(np.unique(removed)) != len(removed):
        problems.append("a document is recorded as removed twice")
    if len(np.unique(ordered)) != len(ordered):
        problems.append("a document appears twice in the ordering")
    accounted = np.concatenate([removed, ordered]).astype(np.int64)
    if len(accounted) != n_docs or not np.array_equal(np.sort(accounted), np.arange(n_docs)):
        problems.append(
            f"documents in ({n_docs}) != kept ({len(ordered)}) + removed ({len(removed)})"
        )
    pack_state = ws.stage_state("pack")
    if pack_state is None:
        return problems + ["pack stage never ran"]
    length = pack_state["params"]["context_length"]
    sep_tokens = len(pack_state["params"].get("separator_ids") or [1])
    packing = read_packing(ws)
    over = int((packing.context_tokens() > length).sum())
    if over:
        problems.append(f"{over} contexts exceed {length} tokens")
    doc_tokens = packed_document_tokens(ws)
    if not metrics.every_doc_once(
        packing, np.sort(ordered.astype(np.int64)), doc_tokens, sep_tokens
    ):
        problems.append("packed pieces do not cover every kept document's tokens exactly once")
    return problems


def check_workspace(ws: Workspace, deep: bool = False) -> list[str]:
    """Problems found (empty = all good): stale stages, else the invariants of
    `check_invariants` (which a half-updated workspace would fail misleadingly).

    Args:
        deep: first read every block back (`read_every_block`).

    Raises:
        WorkspaceDamaged: a block could not be read back.
    """
    if deep:
        read_every_block(ws)
    return stale_stages(ws) or check_invariants(ws)
