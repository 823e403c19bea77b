"""What an edit re-runs (explore.stages_to_rerun), the progress bar's arithmetic, and workers
that never linger as zombies."""

import os
import time

from app import jobs, progress
from icp_core import explore
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


def test_engine_advice_names_the_app_control_not_a_flag():
    from app.sidebar import in_app_words

    message = in_app_words(
        "no documents: all 3 rows of /c/uploads/54070ba3c49e-notes.jsonl were rejected: "
        "3 × missing text field 'text' (set --text-field); see the rejects table"
    )
    assert "--" not in message and "notes.jsonl" in message and "/c/uploads" not in message
    assert "(set “Text field” in the sidebar's Data panel and upload again)" in message
    assert in_app_words("/o: already exists; pass --overwrite to replace it") == (
        "/o: already exists; tick “Replace the folder if it exists” below the Output folder"
    )
    assert in_app_words("'x' not found; pass --tokenizer with a tokenizer.json (or a name)") == (
        "'x' not found; set the Tokenizer box in the sidebar's Parameters"
    )
