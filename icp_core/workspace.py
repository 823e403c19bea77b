"""The workspace: one DuckDB file that holds every stage's output and the runs that made it.

Stages never see SQL beyond this module and the `stages` adapters: they get numpy arrays and Arrow
tables in, and hand Arrow tables back. Writes go through `transaction()`, so a stage's tables
and its bookkeeping row land together or not at all (an interrupted run leaves the previous
state intact).
"""

from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from icp_core.errors import IcpError, NoSpace, WorkspaceBusy, WorkspaceDamaged
from icp_core.faults import crash_point

FORMAT_VERSION = 1
# DuckDB keeps the blocks it reads cached up to its memory limit (80% of RAM by default); on a
# large corpus that cache is most of a stage's memory (BENCHMARKS.md, issue 15). This variable
# caps it (for example 2GB): what does not fit spills to a temporary folder.
MEMORY_LIMIT_VARIABLE = "ICP_DUCKDB_MEMORY"

# DuckDB messages that mean the file cannot be read back (cut short, blocks whose checksums
# fail, a write-ahead log that does not replay); matched on text as DuckDB raises them as
# IOException or plain Error alike.
_DAMAGE_MARKERS = (
    "Corrupt database file",
    "Could not read enough bytes",
    "Failure while replaying WAL",
    "Serialization Error",
)
_NO_SPACE_MARKERS = ("No space left on device", "File too large", "Disk quota exceeded")
_NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def storage_error(
    path: str | os.PathLike, err: BaseException, where: str = ""
) -> IcpError | None:
    """The one-line error for a failure to read or write the workspace at `path`, or None
    when `err` is not one (a bug, or a problem of another file).

    A damaged file gives `WorkspaceDamaged`, a full disk or a file size limit `NoSpace`
    (also for an `OSError` of another file written meanwhile, which it then names);
    `where` (e.g. "table documents") is put in front of DuckDB's reason.
    """
    message = str(err).strip()
    reason = message.splitlines()[0] if message else type(err).__name__
    if isinstance(err, OSError) and err.errno in _NO_SPACE_ERRNOS:
        return NoSpace(
            f"{err.filename or path}: no space to write ({err.strerror or reason}); "
            "the unfinished stage was rolled back, free space and re-run"
        )
    if not isinstance(err, duckdb.Error):
        return None
    if where:
        reason = f"{where}: {reason}"
    if any(marker in message for marker in _DAMAGE_MARKERS):
        return WorkspaceDamaged(
            f"workspace {path} is damaged ({reason}); restore it from a copy or delete it "
            "and re-run"
        )
    if any(marker in message for marker in _NO_SPACE_MARKERS):
        return NoSpace(
            f"workspace {path}: no space to write ({reason}); the unfinished stage was rolled "
            "back, free space and re-run"
        )
    return None

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS workspace_info (key VARCHAR PRIMARY KEY, value VARCHAR)""",
    """CREATE TABLE IF NOT EXISTS documents (
        doc BIGINT PRIMARY KEY, id VARCHAR NOT NULL, text VARCHAR NOT NULL,
        text_hash VARCHAR NOT NULL, source VARCHAR NOT NULL, line BIGINT NOT NULL, meta JSON)""",
    """CREATE TABLE IF NOT EXISTS rejects (
        source VARCHAR NOT NULL, line BIGINT, id VARCHAR, reason VARCHAR NOT NULL, raw VARCHAR)""",
    """CREATE TABLE IF NOT EXISTS sources (
        source VARCHAR NOT NULL, content_hash VARCHAR NOT NULL, format VARCHAR NOT NULL,
        text_field VARCHAR, id_field VARCHAR, n_documents BIGINT, n_rejected BIGINT,
        ingested_at TIMESTAMP)""",
    """CREATE TABLE IF NOT EXISTS embedding_cache (
        model_key VARCHAR NOT NULL, text_hash VARCHAR NOT NULL, vector FLOAT[] NOT NULL)""",
    # maps drawn elsewhere (the bundled sample's ships one), keyed by the neighbour lists they
    # were drawn from: a workspace whose lists match reuses the map instead of running UMAP
    """CREATE TABLE IF NOT EXISTS layout_cache (
        graph_key VARCHAR NOT NULL, doc BIGINT NOT NULL, x FLOAT NOT NULL, y FLOAT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS token_cache (
        tokenizer_key VARCHAR NOT NULL, text_hash VARCHAR NOT NULL, n_tokens BIGINT NOT NULL,
        ids UINTEGER[])""",
    # workspaces from before the export wrote token ids: their rows count as not cached
    """ALTER TABLE token_cache ADD COLUMN IF NOT EXISTS ids UINTEGER[]""",
    """CREATE TABLE IF NOT EXISTS settings (key VARCHAR PRIMARY KEY, value JSON)""",
    """CREATE TABLE IF NOT EXISTS stage_state (
        stage VARCHAR PRIMARY KEY, fingerprint VARCHAR NOT NULL, params JSON,
        counts JSON, updated_at TIMESTAMP)""",
    """CREATE TABLE IF NOT EXISTS stage_runs (
        stage VARCHAR NOT NULL, status VARCHAR NOT NULL, fingerprint VARCHAR, params JSON,
        counts JSON, started_at TIMESTAMP, ended_at TIMESTAMP, seconds DOUBLE)""",
]


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _has_duckdb_magic(path: Path) -> bool:
    """Whether the file starts like a DuckDB database ("DUCK" at byte 8); checked before
    connecting, since DuckDB would try to open e.g. a SQLite file through an extension."""
    try:
        with open(path, "rb") as handle:
            return handle.read(12)[8:12] == b"DUCK"
    except OSError:
        return True  # unreadable: let the connection report why


class Workspace:
    """A DuckDB workspace file.

    Args:
        path: the `.duckdb` file; created (with its folder) when missing and not read-only.
        read_only: open without the write lock, so several readers can share the file.
        wait_s: how long to keep retrying while another process holds the write lock.

    Raises:
        IcpError: the file is not a workspace, or its folder is not writable.
        WorkspaceBusy: another process holds the write lock (past `wait_s`).
        WorkspaceDamaged: the file is cut short or its blocks fail their checksums.
        NoSpace: the schema of a new workspace could not be written.
    """

    def __init__(self, path: str | os.PathLike, read_only: bool = False, wait_s: float = 0.0):
        self.path = Path(path)
        self.read_only = read_only
        self.con = self._connect(wait_s)
        self._in_transaction = False
        self._written: set[str] = set()  # tables written in the open transaction
        try:
            if read_only:
                self._check_format()
            else:
                self._create_schema()
        except BaseException as err:
            self.con.close()
            translated = storage_error(self.path, err)
            if translated is None:
                raise
            raise translated from None

    def _connect(self, wait_s: float) -> duckdb.DuckDBPyConnection:
        if self.read_only and not self.path.exists():
            raise IcpError(
                f"{self.path}: no such workspace; create it with `icp run` or `icp ingest`"
            )
        if self.path.is_dir():
            raise IcpError(
                f"{self.path}: a folder, not a workspace file; pass a file path such as "
                f"{self.path / 'workspace.duckdb'} to --workspace"
            )
        if not self.read_only:
            folder = self.path.parent if str(self.path.parent) else Path(".")
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise IcpError(
                    f"{self.path}: cannot create folder {folder} ({err.strerror}); "
                    "choose a writable --workspace path"
                ) from None
            # the mode bits too: root may write anything, but a file marked read-only is meant
            # to stay as it is
            if not os.access(folder, os.W_OK) or (
                self.path.exists()
                and (not os.access(self.path, os.W_OK) or not self.path.stat().st_mode & 0o222)
            ):
                raise IcpError(
                    f"{self.path}: folder or file is not writable; "
                    "choose a writable --workspace path"
                )
        if self.path.exists() and not _has_duckdb_magic(self.path):
            raise IcpError(
                f"{self.path}: not a DuckDB workspace file; "
                "pass a new path or an existing workspace to --workspace"
            )
        # never fetch extensions: a SQLite or other file must not trigger a download
        config: dict[str, Any] = {"autoinstall_known_extensions": False}
        memory = os.environ.get(MEMORY_LIMIT_VARIABLE)
        if memory:
            config["memory_limit"] = memory
        deadline = time.monotonic() + wait_s
        while True:
            try:
                return duckdb.connect(str(self.path), read_only=self.read_only, config=config)
            except duckdb.Error as err:
                message = str(err)
                if memory and "memory" in message.lower():
                    raise IcpError(
                        f"{MEMORY_LIMIT_VARIABLE}={memory}: not a memory size DuckDB reads; "
                        "set it like 2GB or 512MB, or unset it"
                    ) from None
                if "not a valid DuckDB database" in message or "Magic" in message:
                    raise IcpError(
                        f"{self.path}: not a DuckDB workspace file; "
                        "pass a new path or an existing workspace to --workspace"
                    ) from None
                damaged = storage_error(self.path, err)
                if damaged is not None:
                    raise damaged from None
                if "lock" in message.lower():
                    if time.monotonic() < deadline:
                        time.sleep(0.25)
                        continue
                    holder = message.split("Conflicting lock is held in", 1)[-1].split("See")[0]
                    raise WorkspaceBusy(
                        f"{self.path}: workspace is busy, another process holds its write lock "
                        f"({holder.strip() or 'unknown'}); wait for it to finish or use --wait"
                    ) from None
                if "Read-only file system" in message or "Permission denied" in message:
                    raise IcpError(
                        f"{self.path}: cannot open for writing ({message.splitlines()[0]}); "
                        "choose a writable --workspace path"
                    ) from None
                raise IcpError(
                    f"{self.path}: cannot open workspace: {message.splitlines()[0]}"
                ) from None

    def _create_schema(self) -> None:
        existing = self._info("format_version")
        has_tables = self.one(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'main'"
        )[0]
        if existing is None and has_tables:
            raise IcpError(
                f"{self.path}: a DuckDB file but not an icp workspace; "
                "pass another --workspace path"
            )
        for statement in _SCHEMA:
            self.execute(statement)
        if existing is None:
            self.execute(
                "INSERT OR REPLACE INTO workspace_info VALUES ('format_version', ?)",
                [str(FORMAT_VERSION)],
            )

    def _check_format(self) -> None:
        if self._info("format_version") is None:
            raise IcpError(f"{self.path}: not an icp workspace; pass another --workspace path")

    def _info(self, key: str) -> str | None:
        try:
            row = self.one("SELECT value FROM workspace_info WHERE key = ?", [key])
        except duckdb.CatalogException:
            return None
        return row[0] if row else None

    # -- connection lifecycle -------------------------------------------------------------
    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All writes inside land together; an exception (or a kill) rolls them all back."""
        if self._in_transaction:
            yield
            return
        self.execute("BEGIN TRANSACTION")
        self._in_transaction = True
        self._written = set()
        try:
            yield
            for table in sorted(self._written):  # the one fault-injection point of the stages
                crash_point(f"{table}.commit")
        except BaseException:
            self.execute("ROLLBACK")
            raise
        else:
            self.execute("COMMIT")
        finally:
            self._in_transaction = False

    def execute(self, sql: str, params: list[Any] | None = None) -> None:
        """Run a statement and consume its result (DuckDB keeps a connection busy until then)."""
        self.con.execute(sql, params or []).fetchall()

    def one(self, sql: str, params: list[Any] | None = None) -> tuple | None:
        """The first row of a query, or None; the result is consumed whole."""
        rows = self.con.execute(sql, params or []).fetchall()
        return rows[0] if rows else None

    # -- reading --------------------------------------------------------------------------
    def has_table(self, name: str) -> bool:
        return bool(
            self.one(
                "SELECT count(*) FROM information_schema.tables "
                "WHERE table_schema = 'main' AND table_name = ?",
                [name],
            )[0]
        )

    def arrow(self, sql: str, params: list[Any] | None = None) -> pa.Table:
        """Run a query and return its result as an Arrow table (one bulk transfer)."""
        return self.con.sql(sql, params=params or None).to_arrow_table()

    def arrow_batches(
        self, sql: str, params: list[Any] | None = None, rows: int = 4096
    ) -> Iterator[pa.RecordBatch]:
        """Stream a query's result as Arrow record batches of up to `rows` rows, on a cursor
        of its own so that other queries may run while it is read."""
        cursor = self.con.cursor()
        try:
            yield from cursor.sql(sql, params=params or None).to_arrow_reader(rows)
        finally:
            cursor.close()

    def scalar(self, sql: str, params: list[Any] | None = None) -> Any:
        row = self.one(sql, params)
        return row[0] if row else None

    def column(self, sql: str, params: list[Any] | None = None, dtype: Any = None) -> np.ndarray:
        """First column of a query as a numpy array."""
        table = self.arrow(sql, params)
        array = table.column(0).to_numpy()
        return array.astype(dtype, copy=False) if dtype is not None else array

    def n_documents(self) -> int:
        return int(self.scalar("SELECT count(*) FROM documents"))

    # -- writing --------------------------------------------------------------------------
    def replace_table(self, name: str, table: pa.Table) -> None:
        """Replace table `name` with an Arrow table in one insert (callers wrap a transaction)."""
        view = f"_arrow_{name}"
        self._note_write(name)
        self.con.register(view, table)
        try:
            self.execute(f'CREATE OR REPLACE TABLE "{name}" AS SELECT * FROM "{view}"')
        finally:
            self.con.unregister(view)

    def _note_write(self, name: str) -> None:
        if self._in_transaction:
            self._written.add(name)

    def append_table(self, name: str, table: pa.Table) -> None:
        """Append an Arrow table to an existing table whose columns it names."""
        if table.num_rows == 0:
            return
        view = f"_arrow_{name}"
        self._note_write(name)
        columns = ", ".join(f'"{c}"' for c in table.column_names)
        self.con.register(view, table)
        try:
            self.execute(f'INSERT INTO "{name}" ({columns}) SELECT {columns} FROM "{view}"')
        finally:
            self.con.unregister(view)

    # -- settings and stage bookkeeping ---------------------------------------------------
    def load_settings(self) -> dict[str, Any]:
        rows = self.con.execute("SELECT key, value FROM settings").fetchall()
        return {key: json.loads(value) for key, value in rows}

    def save_settings(self, settings: dict[str, Any]) -> None:
        for key, value in settings.items():
            self.execute("INSERT OR REPLACE INTO settings VALUES (?, ?)", [key, json.dumps(value)])

    def stage_state(self, stage: str) -> dict[str, Any] | None:
        row = self.one(
            "SELECT fingerprint, params, counts, updated_at FROM stage_state WHERE stage = ?",
            [stage],
        )
        if row is None:
            return None
        return {
            "fingerprint": row[0],
            "params": json.loads(row[1]) if row[1] else {},
            "counts": json.loads(row[2]) if row[2] else {},
            "updated_at": row[3],
        }

    def set_stage_state(
        self, stage: str, fingerprint: str, params: dict[str, Any], counts: dict[str, Any]
    ) -> None:
        self.execute(
            "INSERT OR REPLACE INTO stage_state VALUES (?, ?, ?, ?, ?)",
            [stage, fingerprint, json.dumps(params), json.dumps(counts), _now()],
        )

    def record_run(
        self,
        stage: str,
        status: str,
        fingerprint: str | None,
        params: dict[str, Any],
        counts: dict[str, Any],
        started: float,
        ended: float,
    ) -> None:
        self.execute(
            "INSERT INTO stage_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                stage,
                status,
                fingerprint,
                json.dumps(params),
                json.dumps(counts),
                datetime.fromtimestamp(started, UTC).replace(tzinfo=None),
                datetime.fromtimestamp(ended, UTC).replace(tzinfo=None),
                ended - started,
            ],
        )

    # -- arrays ---------------------------------------------------------------------------
    def vectors(self, sql: str, params: list[Any] | None = None) -> np.ndarray:
        """A query whose only column is a FLOAT[] list, as an (N, d) float32 array."""
        column = self.arrow(sql, params).column(0).combine_chunks()
        if len(column) == 0:
            return np.zeros((0, 0), dtype=np.float32)
        values = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        return values.reshape(len(column), -1)
