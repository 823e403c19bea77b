"""Pipeline jobs for the app: each runs in its own worker process that writes a status file.

Why a process and not a thread of the Streamlit server: DuckDB lets one process at a time
hold a workspace read-write, and within one process a read-write and a read-only connection
to the same file conflict. The server therefore only ever opens short-lived read-only
connections, and a job's worker (`icp job`) is the single writer; it waits for those readers to
close (`wait_s`). A job also survives page reruns and closed tabs, can be cancelled by killing
its process (the workspace rolls back to the last finished stage), and its progress is visible
to every session through the status file. To keep "change k, see the result" near one second,
one worker is started ahead of time: it loads its imports and compiled kernels, then blocks on
stdin until a job spec arrives.

No Streamlit here: `app/state.py` owns the one `JobRunner` of the server process.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import icp_core
from icp_core import sample
from icp_core.jobs import read_status, write_status
from icp_core.params import Params

# icp_core's folder's parent: the worker must import the same icp_core as the server
_CORE_ROOT = Path(icp_core.__file__).resolve().parent.parent


def sample_spec(workspace: str | Path) -> dict[str, Any]:
    """The job that builds the bundled sample when `python -m icp_core.sample --prepare`
    has not (scripts/app.sh runs it after the install)."""
    return sample.sample_spec(workspace)


def store_upload(name: str, data: bytes, folder: Path) -> tuple[Path, Path]:
    """Save an uploaded file under `folder`/uploads; returns (file, workspace path for it).
    Both are named by the content's hash, so uploading the same file again reopens its
    workspace instead of embedding it twice."""
    digest = hashlib.blake2b(data, digest_size=6).hexdigest()
    safe_name = "".join(c if c.isalnum() or c in "._-" else "_" for c in name) or "upload"
    upload = Path(folder) / "uploads" / f"{digest}-{safe_name}"
    upload.parent.mkdir(parents=True, exist_ok=True)
    upload.write_bytes(data)
    stem = safe_name.split(".")[0] or "upload"
    workspace = Path(folder) / "workspaces" / f"{stem}-{digest}.duckdb"
    return upload, workspace


def upload_spec(upload: Path, workspace: Path, text_field: str, id_field: str) -> dict[str, Any]:
    """The job that makes a workspace from an uploaded file: every stage and the map."""
    return {
        "workspace": str(workspace),
        "inputs": [str(upload)],
        "params": Params(text_field=text_field or "text", id_field=id_field or "id").to_dict(),
        "until": "layout",
        "description": f"Creating a workspace from {upload.name.split('-', 1)[-1]} "
        "(ingest, embed, order, pack, map)",
    }


def evaluation_spec(workspace: str | Path, params: Params) -> dict[str, Any]:
    """The job that computes and stores what `icp eval` computes at `params` (every ordering
    method × pack policy) without applying them."""
    return {
        "workspace": str(workspace),
        "params": params.to_dict(),
        "evaluate": True,
        "description": f"Evaluating every method × pack policy at k = {params.k}, "
        f"L = {params.context_length:,}",
    }


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class JobRunner:
    """Starts jobs in worker processes and reads their status files.

    Args:
        status_dir: where status files live, one per workspace.
    """

    def __init__(self, status_dir: Path):
        self.status_dir = Path(status_dir)
        self.status_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()  # start() asks status(), which reaps
        self._spare: subprocess.Popen | None = None
        self._spare_due = False  # a timer will start the spare
        self._workers: dict[Path, subprocess.Popen] = {}

    def status_path(self, workspace: str | Path) -> Path:
        key = hashlib.blake2b(str(Path(workspace).resolve()).encode(), digest_size=8).hexdigest()
        return self.status_dir / f"{Path(workspace).stem}-{key}.json"

    def plan_path(self, workspace: str | Path) -> Path:
        return self.status_path(workspace).with_suffix(".plan.json")

    def plan(self, workspace: str | Path) -> dict[str, float]:
        """The running job's plan: {step: expected seconds} (empty when it has none)."""
        try:
            return json.loads(self.plan_path(workspace).read_text())
        except (OSError, ValueError):
            return {}

    def reap(self) -> None:
        """Collect the exit status of every worker that has ended, so none lingers as a
        zombie process (Popen.poll waits for it without blocking)."""
        with self._lock:
            for worker in self._workers.values():
                worker.poll()
            if self._spare is not None and self._spare.poll() is not None:
                self._spare = None

    def _spawn(self) -> subprocess.Popen:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(_CORE_ROOT), env.get("PYTHONPATH", "")) if p
        )
        return subprocess.Popen(
            [sys.executable, "-m", "icp_core.cli", "job", "-"],
            stdin=subprocess.PIPE,
            env=env,
            text=True,
        )

    def prepare(self, delay_s: float = 0.0) -> None:
        """Have one warm worker waiting, started `delay_s` from now (no-op when there is one
        or one is due)."""
        self.reap()
        with self._lock:
            if self._spare_due or (self._spare is not None and self._spare.poll() is None):
                return
            if delay_s <= 0:
                self._spare = self._spawn()
                return
            self._spare_due = True
        timer = threading.Timer(delay_s, self._start_spare)
        timer.daemon = True
        timer.start()

    def _start_spare(self) -> None:
        with self._lock:
            self._spare_due = False
            if self._spare is None or self._spare.poll() is not None:
                self._spare = self._spawn()

    def start(self, spec: dict[str, Any]) -> Path:
        """Start a job on `spec["workspace"]` (`icp_core.jobs.run_job`); returns its status file.

        Raises:
            RuntimeError: a job on that workspace is still running.
        """
        status_file = self.status_path(spec["workspace"])
        self.reap()
        with self._lock:
            if self.running(spec["workspace"]):
                raise RuntimeError("a job on this workspace is still running")
            worker = self._spare if self._spare and self._spare.poll() is None else self._spawn()
            self._spare = None
            write_status(
                status_file,
                {
                    "state": "running",
                    "pid": worker.pid,
                    "workspace": str(spec["workspace"]),
                    "description": spec.get("description", ""),
                    "stage": "starting",
                    "done": 0,
                    "total": 0,
                    "stages": [],
                    "error": None,
                    "started_at": time.time(),
                    "updated_at": time.time(),
                },
            )
            self.plan_path(spec["workspace"]).write_text(json.dumps(spec.get("plan") or {}))
            worker.stdin.write(json.dumps(dict(spec, status_file=str(status_file))))
            worker.stdin.close()
            self._workers[status_file] = worker
        return status_file

    def status(self, workspace: str | Path) -> dict[str, Any] | None:
        """The last job's status on `workspace`; a "running" job whose process is gone is
        reported as failed."""
        self.reap()
        status_file = self.status_path(workspace)
        status = read_status(status_file)
        if status is None or status.get("state") != "running":
            return status
        worker = self._workers.get(status_file)
        ended = worker.poll() is not None if worker is not None else not _alive(status["pid"])
        if ended:
            status = read_status(status_file) or status  # it may have just finished
            if status.get("state") == "running":
                status.update(state="failed", error="the worker process ended unexpectedly")
                write_status(status_file, status)
        return status

    def running(self, workspace: str | Path) -> bool:
        status = self.status(workspace)
        return bool(status and status.get("state") == "running")

    def cancel(self, workspace: str | Path) -> None:
        """Stop the running job (its unfinished stage rolls back)."""
        status = self.status(workspace)
        if status and status.get("state") == "running":
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(status["pid"]), signal.SIGTERM)
            status.update(state="failed", error="cancelled")
            write_status(self.status_path(workspace), status)

    def wait(self, workspace: str | Path, timeout_s: float) -> dict[str, Any] | None:
        """Block until the job on `workspace` ends or `timeout_s` passes; returns its status."""
        deadline = time.monotonic() + timeout_s
        while self.running(workspace) and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.status(workspace)
