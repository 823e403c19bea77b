"""Careless commands and hostile files: each ends in one line and its documented exit code
(icp_core/errors.py), and nothing the user had is lost. docs/reliability.md, "Commands,
round 2", lists every case."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from icp_core.errors import ExitCode
from icp_core.export import is_icp_export, staged_folder
from icp_core.workspace import Workspace
from tests.reliability.cli_runner import (
    Result,
    corrupt_block_of,
    hold_workspace,
    icp,
    icp_here,
    no_bug,
    one_line,
)

USAGE, BUSY, DAMAGED, NO_SPACE = ExitCode.USAGE, ExitCode.BUSY, ExitCode.DAMAGED, ExitCode.NO_SPACE


def settings_of(path: Path) -> dict:
    with Workspace(path, read_only=True) as ws:
        return ws.load_settings()


def assert_usable(path: Path) -> None:
    """The workspace exports (bringing every stage up to date) and then passes `icp check`."""
    out = path.parent / f"usable-{time.monotonic_ns()}"
    exported = icp("export", "-w", path, "--out", out, "--format", "jsonl")
    assert exported.returncode == 0, exported.stderr
    result = icp("check", "-w", path)
    assert result.returncode == 0, result.stderr


# -- the workspace path ------------------------------------------------------------------------


class TestWorkspacePath:
    def test_a_directory(self, tmp_path):
        one_line(icp("knn", "-w", tmp_path), USAGE, "a folder, not a workspace file")

    def test_in_a_missing_folder_for_a_reader(self, tmp_path):
        one_line(icp("check", "-w", tmp_path / "no" / "w.duckdb"), USAGE, "no such workspace")

    @pytest.mark.parametrize(
        "content", [b"", b"just some notes\n" * 200, b"\x00" * 8192], ids=["empty", "text", "zeros"]
    )
    def test_a_file_that_is_not_duckdb(self, tmp_path, content):
        path = tmp_path / "w.duckdb"
        path.write_bytes(content)
        one_line(icp("knn", "-w", path), USAGE, "not a DuckDB workspace file")
        assert path.read_bytes() == content

    def test_a_sqlite_file(self, tmp_path):
        path = tmp_path / "w.duckdb"
        with sqlite3.connect(path) as con:
            con.execute("CREATE TABLE t (x)")
        before = path.read_bytes()
        one_line(icp("metrics", "-w", path), USAGE, "not a DuckDB workspace file")
        assert path.read_bytes() == before

    def test_a_read_only_file_for_a_write_command(self, tiny_workspace):
        tiny_workspace.chmod(0o444)
        before = tiny_workspace.read_bytes()
        one_line(icp("knn", "-w", tiny_workspace, "--k", 5), USAGE, "not writable")
        assert tiny_workspace.read_bytes() == before
        assert icp("check", "-w", tiny_workspace).returncode == 0  # reading is fine

    def test_unicode_and_spaces_in_paths(self, tiny_workspace, tmp_path):
        folder = tmp_path / "mes données é 🙂"
        folder.mkdir()
        path = folder / "w s.duckdb"
        path.write_bytes(tiny_workspace.read_bytes())
        assert icp("knn", "-w", path, "--k", 3).returncode == 0
        result = icp("export", "-w", path, "--out", folder / "ex port ü")
        assert result.returncode == 0, result.stderr
        assert is_icp_export(folder / "ex port ü")

    def test_check_on_a_never_run_workspace(self, tiny_jsonl, tmp_path):
        path = tmp_path / "w.duckdb"
        assert icp("ingest", tiny_jsonl, "-w", path).returncode == 0
        result = icp("check", "-w", path)
        no_bug(result)
        assert result.returncode == ExitCode.PROBLEMS and "run `icp run` first" in result.stderr


# -- damaged workspaces and full disks ---------------------------------------------------------


class TestDamage:
    def test_truncated_workspace(self, tiny_workspace):
        os.truncate(tiny_workspace, tiny_workspace.stat().st_size // 3)
        for command in ("check", "knn", "export"):
            extra = ["--out", tiny_workspace.parent / "out"] if command == "export" else []
            result = icp(command, "-w", tiny_workspace, *extra)
            one_line(result, DAMAGED, "is damaged")
            assert "restore it from a copy or delete it and re-run" in result.stderr

    def test_random_bytes_in_a_block_fail_check_deep(self, tiny_workspace):
        assert icp("check", "--deep", "-w", tiny_workspace).returncode == 0
        corrupt_block_of(tiny_workspace, "documents")
        one_line(icp("check", "--deep", "-w", tiny_workspace), DAMAGED, "table documents")
        out = tiny_workspace.parent / "out"
        one_line(icp("export", "-w", tiny_workspace, "--out", out), DAMAGED, "is damaged")
        assert not out.exists()

    def test_deep_check_reads_blocks_plain_check_skips(self, tiny_workspace):
        """Damage in a table the invariants do not read: only --deep sees it."""
        corrupt_block_of(tiny_workspace, "stage_runs")
        assert icp("check", "-w", tiny_workspace).returncode == 0
        one_line(icp("check", "--deep", "-w", tiny_workspace), DAMAGED, "table stage_runs")

    def test_full_disk_while_writing_the_workspace(self, tiny_workspace):
        """RLIMIT_FSIZE: the write-ahead log cannot grow past 1 kB, like a full disk."""
        import resource

        def limit() -> None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))

        result = icp("pack", "-w", tiny_workspace, "--context-length", 100, preexec_fn=limit)
        one_line(result, NO_SPACE, "no space to write (")
        assert "File too large" in result.stderr
        assert icp("check", "-w", tiny_workspace).returncode == 0  # the old contexts, intact
        again = icp("pack", "-w", tiny_workspace, "--context-length", 100)
        assert again.returncode == 0, again.stderr
        assert_usable(tiny_workspace)


# -- two commands, signals -----------------------------------------------------------------------


def test_two_commands_at_once(tiny_workspace):
    holder = hold_workspace(tiny_workspace, 3)
    one_line(icp("knn", "-w", tiny_workspace, "--k", 5), BUSY, "workspace is busy")
    holder.wait(timeout=30)
    waited = icp("knn", "-w", tiny_workspace, "--k", 5, "--wait", 30)
    assert waited.returncode == 0, waited.stderr
    assert_usable(tiny_workspace)


@pytest.mark.parametrize(
    "command, point, signame, stage",
    [
        (["knn", "--k", "7", "--force"], "neighbors.commit", "TERM", "knn"),
        (["pack", "--context-length", "100"], "contexts.commit", "INT", "pack"),
        (["order", "--order", "icp"], "ordering.commit", "TERM", "order"),
    ],
)
def test_signal_inside_a_stage_write(tiny_workspace, command, point, signame, stage):
    before = settings_of(tiny_workspace)
    result = icp(
        *command, "-w", tiny_workspace, env={"ICP_CRASH_AT": point, "ICP_CRASH_SIGNAL": signame}
    )
    no_bug(result)
    expected = ExitCode.TERMINATED if signame == "TERM" else ExitCode.INTERRUPTED
    assert result.returncode == expected, result.stderr
    assert "re-run to resume" in result.stderr.splitlines()[-1]
    assert icp("check", "-w", tiny_workspace).returncode == 0  # the old result, intact
    assert settings_of(tiny_workspace) != before  # the new settings were saved ...
    rerun = icp(*command, "-w", tiny_workspace)
    assert rerun.returncode == 0, rerun.stderr  # ... and the re-run finishes the stage
    assert f"{stage:8s} ran" in rerun.stderr
    assert_usable(tiny_workspace)


def test_ctrl_c_while_embedding_keeps_finished_batches(tiny_workspace):
    args = ["embed", "-w", tiny_workspace, "--max-tokens", 128, "--batch-size", 1]
    # the first batch of 16 commits, Ctrl-C comes as the second is about to
    crash = {"ICP_CRASH_AT": "embedding_cache.commit:2", "ICP_CRASH_SIGNAL": "INT"}
    result = icp(*args, env=crash)
    no_bug(result)
    assert result.returncode == ExitCode.INTERRUPTED
    rerun = icp(*args)
    assert rerun.returncode == 0 and "embedded=2, cached=16" in rerun.stderr


def test_sigterm_while_exporting_leaves_nothing(tiny_workspace, tmp_path):
    out = tmp_path / "out"
    result = icp(
        "export",
        "-w",
        tiny_workspace,
        "--out",
        out,
        env={"ICP_CRASH_AT": "export.staged", "ICP_CRASH_SIGNAL": "TERM"},
    )
    no_bug(result)
    assert result.returncode == ExitCode.TERMINATED
    assert not out.exists() and not list(tmp_path.glob(".out.*"))
    assert icp("export", "-w", tiny_workspace, "--out", out).returncode == 0


def test_sigint_at_a_real_moment_while_embedding(tiny_workspace):
    """A real asynchronous Ctrl-C once the model is loading: interrupted or finished, never a
    traceback, and the workspace stays usable."""
    process = subprocess.Popen(
        [sys.executable, "-m", "icp_core.cli", "embed", "-w", str(tiny_workspace)]
        + ["--max-tokens", "64", "--batch-size", "1"],
        stderr=subprocess.PIPE,
    )
    seen = b""
    while b"Loading" not in seen and b"embed" not in seen and process.poll() is None:
        seen += os.read(process.stderr.fileno(), 256)
    process.send_signal(signal.SIGINT)
    seen += process.stderr.read()
    process.wait(timeout=120)
    stderr = seen.decode(errors="replace")
    assert process.returncode in (0, ExitCode.INTERRUPTED), stderr
    assert "Traceback" not in stderr and "internal error" not in stderr
    assert icp("embed", "-w", tiny_workspace, "--max-tokens", 64).returncode == 0
    assert_usable(tiny_workspace)


# -- --out ---------------------------------------------------------------------------------------


class TestExportTarget:
    def test_a_file_is_never_replaced(self, tiny_workspace, tmp_path):
        target = tmp_path / "notes.txt"
        target.write_text("mine")
        one_line(icp("export", "-w", tiny_workspace, "--out", target), USAGE, "already exists")
        result = icp("export", "-w", tiny_workspace, "--out", target, "--overwrite")
        one_line(result, USAGE, "not an earlier export of this tool")
        assert target.read_text() == "mine"

    def test_current_folder(self, tiny_workspace, tmp_path):
        (tmp_path / "keep.txt").write_text("mine")
        result = icp("export", "-w", tiny_workspace, "--out", ".", "--overwrite", cwd=tmp_path)
        one_line(result, USAGE, "the current folder")
        assert (tmp_path / "keep.txt").read_text() == "mine"

    @pytest.mark.parametrize("where", ["/", "~"])
    def test_root_and_home(self, tiny_workspace, where):
        target = Path(where).expanduser()
        result = icp("export", "-w", tiny_workspace, "--out", target, "--overwrite")
        one_line(result, USAGE, "not replaced, it is")

    def test_the_workspace_and_its_folder(self, tiny_workspace):
        before = tiny_workspace.read_bytes()  # refused before the workspace is even opened
        for target in (tiny_workspace, tiny_workspace.parent):
            result = icp("export", "-w", tiny_workspace, "--out", target, "--overwrite")
            one_line(result, USAGE, "not replaced, it is")
        assert tiny_workspace.read_bytes() == before

    def test_a_foreign_manifest_is_not_ours(self, tiny_workspace, tmp_path):
        other = tmp_path / "other"
        other.mkdir()
        (other / "manifest.json").write_text(json.dumps({"tool": "someone-else"}))
        result = icp("export", "-w", tiny_workspace, "--out", other, "--overwrite")
        one_line(result, USAGE, "not an earlier export")
        assert (other / "manifest.json").exists()

    def test_inside_the_workspace_path(self, tiny_workspace):
        result = icp("export", "-w", tiny_workspace, "--out", tiny_workspace / "sub")
        one_line(result, USAGE, "is a file, not a folder")

    def test_trailing_slash_and_overwrite_of_an_earlier_export(self, tiny_workspace, tmp_path):
        result = icp("export", "-w", tiny_workspace, "--out", f"{tmp_path / 'ex'}/")
        assert result.returncode == 0, result.stderr
        assert is_icp_export(tmp_path / "ex")
        again = icp("export", "-w", tiny_workspace, "--out", tmp_path / "ex", "--overwrite")
        assert again.returncode == 0, again.stderr
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []

    @pytest.mark.parametrize("umask, folder, file", [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600)])
    def test_permissions_follow_the_umask(self, tiny_workspace, tmp_path, umask, folder, file):
        out = tmp_path / "out"
        result = icp(
            "export", "-w", tiny_workspace, "--out", out, preexec_fn=lambda: os.umask(umask)
        )
        assert result.returncode == 0, result.stderr
        inside = list(out.rglob("*"))
        assert {p.stat().st_mode & 0o777 for p in [out, *inside] if p.is_dir()} == {folder}
        assert {p.stat().st_mode & 0o777 for p in inside if p.is_file()} == {file}

    def test_stale_partials_only_when_provably_ours(self, tmp_path):
        mine = tmp_path / ".out.partial-user"  # a folder of the user's that matches the pattern
        mine.mkdir()
        dead = tmp_path / ".out.partial-dead"
        dead.mkdir()
        finished = subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
        )
        owner = tmp_path / ".out.partial-dead.owner"
        owner.write_text(finished.stdout.strip())  # its writer is gone
        with staged_folder(tmp_path / "out") as staging:
            (staging / "manifest.json").write_text('{"tool": "icp-workbench"}')
        assert mine.exists() and not dead.exists() and not owner.exists()
        assert is_icp_export(tmp_path / "out")
        assert sorted(p.name for p in tmp_path.iterdir()) == [".out.partial-user", "out"]


# -- options -------------------------------------------------------------------------------------


class TestOptions:
    @pytest.mark.parametrize(
        "args, fragment",
        [
            (["knn", "--kk", "3"], "No such option: --kk"),
            (["knn", "--k", "abc"], "Invalid value for '--k'"),
            (["export"], "Missing option '--out'"),
            (["frobnicate"], "No such command 'frobnicate'"),
        ],
    )
    def test_usage_errors_exit_2_with_click_usage(self, tiny_workspace, args, fragment):
        result = icp(*args, "-w", tiny_workspace)
        no_bug(result)
        assert result.returncode == USAGE and fragment in result.stderr
        assert "Usage: icp" in result.stderr

    def test_no_arguments_shows_help(self):
        result = icp()
        no_bug(result)
        assert result.returncode == USAGE and "Usage: icp" in result.stderr + result.stdout

    def test_help_keeps_bracketed_defaults(self):
        out = icp("knn", "--help").stdout
        assert "Neighbours per document [10]." in out and "[auto]" in out

    @pytest.mark.parametrize(
        "args, fragment",
        [
            (["export", "--out", "x", "--format", "jsnl"], "did you mean jsonl?"),
            (["order", "--order", "greedy_lk"], "did you mean greedy-lk?"),
            (["dedup", "--dedup-threshold", "-0.5"], "must lie in (0, 1]"),
            (["dedup", "--dedup-threshold", "nan"], "must lie in (0, 1]"),
            (["dedup", "--dedup-threshold", "inf"], "must lie in (0, 1]"),
            (["embed", "--batch-size", "1000000000"], "batch size must be at most"),
            (["embed", "--max-tokens", "600"], "the model reads at most 512 tokens"),
            (["order", "--seed", "-5"], "seed must be at least 0"),
            (["pack", "--context-length", str(2**31)], "context length must be at most"),
            (["knn", "--k", "1000000000"], "k must be at most 1024"),
            (["pack", "--separator", ""], "--separator '': must be a non-empty text"),
            (["metrics", "--label-field", "colour"], "--label-field colour"),
            (["knn", "--wait", "-1"], "--wait -1.0: must be 0 or more"),
        ],
    )
    def test_bad_values_change_nothing(self, tiny_workspace, args, fragment):
        before = tiny_workspace.read_bytes()
        one_line(icp_here(*args, "-w", tiny_workspace), USAGE, fragment)
        assert tiny_workspace.read_bytes() == before
        assert (
            icp_here(
                "export", "-w", tiny_workspace, "--out", tiny_workspace.parent / "o"
            ).returncode
            == 0
        )

    def test_bad_stored_setting_names_the_option_and_is_fixed_by_it(self, tiny_workspace):
        with Workspace(tiny_workspace) as ws:  # as an older version could have stored it
            ws.save_settings({"seed": -5})
        result = icp("metrics", "-w", tiny_workspace)
        one_line(result, USAGE, "the workspace's stored setting --seed -5")
        assert "give --seed a valid value" in result.stderr
        assert icp("order", "-w", tiny_workspace, "--seed", 3).returncode == 0
        assert_usable(tiny_workspace)

    def test_metrics_with_a_present_label_field(self, tiny_workspace):
        result = icp_here("metrics", "-w", tiny_workspace, "--json", "--label-field", "label")
        assert result.returncode == 0 and json.loads(result.stdout)["label_agreement"] is not None


def test_an_internal_error_is_a_bug_line_and_70(tiny_workspace, monkeypatch):
    from icp_core import check

    def broken(ws):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(check, "check_invariants", broken)
    result: Result = icp_here("check", "-w", tiny_workspace)
    assert result.returncode == ExitCode.INTERNAL
    assert result.stderr.startswith("internal error: ZeroDivisionError: boom (a bug;")


def test_a_full_disk_while_writing_another_file_names_that_file(tiny_workspace, monkeypatch):
    """ENOSPC from a file other than the workspace (a cache, a temporary file) is exit 5 and
    names that file."""
    import errno

    from icp_core import check

    def full(ws):
        raise OSError(errno.ENOSPC, "No space left on device", "/tmp/some-cache")

    monkeypatch.setattr(check, "check_invariants", full)
    result = icp_here("check", "-w", tiny_workspace)
    one_line(result, NO_SPACE, "/tmp/some-cache: no space to write (No space left on device)")
