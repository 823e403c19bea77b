"""Run `icp` as a user does (a subprocess) or in this process (fast, for many cases), and the
assertions every hostile-command test shares."""

from __future__ import annotations

import contextlib
import io
import os
import random
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from icp_core.cli import run_cli


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def icp(*args: Any, env: dict[str, str] | None = None, **kwargs: Any) -> Result:
    """`python -m icp_core.cli ARGS` in a subprocess; `env` entries are added to os.environ."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ICP_CRASH")}
    full_env.update(env or {})
    done = subprocess.run(
        [sys.executable, "-m", "icp_core.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env=full_env,
        **kwargs,
    )
    return Result(done.returncode, done.stdout, done.stderr)


def icp_here(*args: Any) -> Result:
    """`icp ARGS` in this process (same exit code and output as the subprocess)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run_cli([str(a) for a in args])
    return Result(int(code), out.getvalue(), err.getvalue())


def hold_workspace(path: Path, seconds: float) -> subprocess.Popen:
    """Another process that opens `path` for writing and keeps it `seconds` seconds; returns
    once that process holds the write lock (`wait()` on it to let it finish)."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
                import time
                from icp_core.workspace import Workspace
                ws = Workspace({str(path)!r})
                print("holding", flush=True)
                time.sleep({seconds!r})
                ws.close()
            """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "holding"
    return holder


def no_bug(result: Result) -> None:
    """Never an internal error or a traceback."""
    assert "internal error" not in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr


def one_line(result: Result, code: int, fragment: str) -> None:
    """Exit `code` with exactly one `error: ...` line holding `fragment`."""
    no_bug(result)
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and fragment in lines[0], result.stderr


def corrupt_block_of(path: Path, table: str) -> int:
    """Overwrite 4 kB in the middle of the last storage block of `table` with random bytes;
    returns the file offset. DuckDB files are 3 headers of 4 kB, then fixed-size blocks."""
    import duckdb

    with duckdb.connect(str(path), read_only=True) as con:
        block_size = con.execute("SELECT block_size FROM pragma_database_size()").fetchone()[0]
        block = con.execute(
            f"SELECT max(block_id) FROM pragma_storage_info('{table}') WHERE persistent"
        ).fetchone()[0]
    offset = 3 * 4096 + int(block) * int(block_size) + int(block_size) // 2
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(random.Random(0).randbytes(4096))
    return offset
