"""`icp check --deep`: read the whole workspace back before trusting it.

DuckDB checksums every 256 kB block and verifies the checksum when it reads the block, so a
block is only known good once something has read it. `icp check` reads what the invariants
need; `deep_check` first reads every column of every table (every data block) and looks up
one key through each primary-key index (index blocks are read only through the index), then
runs the same invariants.
"""

from __future__ import annotations

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


def deep_check(ws: Workspace) -> list[str]:
    """Problems found after reading the whole workspace (empty = all good): the invariants of
    `stages.check_invariants`, once every block has been read back.

    Raises:
        WorkspaceDamaged: a block could not be read back.
    """
    read_every_block(ws)
    return stages.check_invariants(ws)
