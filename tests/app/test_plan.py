"""What an edit re-runs (explore.stages_to_rerun), the progress bar's arithmetic, and workers
that never linger as zombies."""

import os
import time

from app import jobs, progress, words
from icp_core import explore
from icp_core.errors import IcpError
from icp_core.jobs import run_job
from icp_core.params import Params


def test_stages_to_rerun_follow_what_each_stage_reads():
    old = Params()
    assert explore.stages_to_rerun(old, old, 32, "layout") == []
    assert explore.stages_to_rerun(old, old.updated(k=20), 32, "layout") == [
        "dedup", "order", "pack", "metrics",
    ]  # fmt: skip
    assert explore.stages_to_rerun(old, old.updated(k=40), 32, "layout") == [
        "knn", "dedup", "order", "pack", "metrics", "layout",
    ]  # fmt: skip
    assert explore.stages_to_rerun(old, old.updated(context_length=512), 32) == [
        "pack", "metrics",
    ]  # fmt: skip
    assert explore.stages_to_rerun(old, old.updated(order="random"), 32) == [
        "order", "pack", "metrics",
    ]  # fmt: skip


def test_the_bar_weighs_stages_by_their_expected_seconds():
    plan = {"starting": 1.0, "order": 1.0, "layout": 8.0}
    status = {"stage": "layout", "done": 0, "total": 0, "started_at": 100.0}
    fraction, text = progress.progress_line(status, plan, stage_started=102.0, now=104.0)
    assert fraction == (2.0 + 2.0) / 10.0
    assert text == "computing the map (UMAP) · 4 s · about 6 s left"
    status = {"stage": "embed", "done": 50, "total": 100, "started_at": 100.0}
    _, text = progress.progress_line({**status}, {"embed": 20.0}, 100.0, 110.0)
    assert text.endswith("50 of 100 · 10 s · about 10 s left")


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1].startswith("Z")
    except FileNotFoundError:
        return False


def test_ended_workers_are_reaped(tmp_path):
    runner = jobs.JobRunner(tmp_path / "jobs")
    runner.prepare()
    spare = runner._spare
    spare.stdin.close()  # no job: the worker exits and, until reaped, is a zombie
    deadline = time.monotonic() + 60
    while not _zombie(spare.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _zombie(spare.pid)
    # without a reap it would stay a zombie for as long as the server runs
    while os.path.exists(f"/proc/{spare.pid}") and time.monotonic() < deadline:
        runner.reap()
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{spare.pid}")
    assert runner._spare is None


def test_an_engine_error_names_the_flag_on_the_command_line_and_the_control_in_the_app(
    tmp_path,
):
    err = IcpError("/o: already exists; use {fix} to replace an earlier export", fix="overwrite")
    assert str(err) == "/o: already exists; use --overwrite to replace an earlier export"
    assert words.app_words(err) == (
        "/o: already exists; use “Replace the folder if it exists” on the Export page to "
        "replace an earlier export"
    )
    # a job's failure reaches the app through the status file, with its parts
    notes = tmp_path / "notes.jsonl"
    notes.write_text('{"id": "n1", "body": "no text field"}\n')
    status = run_job(
        {
            "workspace": str(tmp_path / "w.duckdb"),
            "inputs": [str(notes)],
            "status_file": str(tmp_path / "status.json"),
        }
    )
    assert status["error"].endswith("; set --text-field to the field that holds the text")
    shown = words.job_error(status)
    assert "--" not in shown and "icp " not in shown
    assert shown.endswith(
        "set “Text field” in the sidebar's Data panel to the field that holds the text"
    )
