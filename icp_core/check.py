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

from icp_core import stages
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


def check_workspace(ws: Workspace, deep: bool = False) -> list[str]:
    """Problems found (empty = all good): stale stages, else the invariants of
    `stages.check_invariants` (which a half-updated workspace would fail misleadingly).

    Args:
        deep: first read every block back (`read_every_block`).

    Raises:
        WorkspaceDamaged: a block could not be read back.
    """
    if deep:
        read_every_block(ws)
    return stale_stages(ws) or stages.check_invariants(ws)
