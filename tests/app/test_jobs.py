"""app.jobs: worker processes that run the pipeline and report in a status file."""

import os
import time

import pytest

from app import jobs
from icp_core.jobs import write_status
from icp_core.params import Params
from icp_core.workspace import Workspace


@pytest.fixture
def runner(tmp_path):
    return jobs.JobRunner(tmp_path / "jobs")


def settings(path) -> dict:
    with Workspace(path, read_only=True) as ws:
        return ws.load_settings()


def test_a_prepared_worker_runs_the_job_and_only_dependent_stages(runner, sample_copy):
    runner.prepare()
    spare = runner._spare
    runner.start(
        {
            "workspace": str(sample_copy),
            "params": dict(settings(sample_copy), k=4),
            "until": "metrics",
        }
    )
    status = runner.wait(sample_copy, timeout_s=180)
    assert status["state"] == "done", status["error"]
    assert status["pid"] == spare.pid
    assert {s["stage"]: s["status"] for s in status["stages"]} == {
        "embed": "skipped",
        "knn": "skipped",
        "dedup": "ran",
        "order": "ran",
        "pack": "ran",
        "metrics": "ran",
    }
    assert settings(sample_copy)["k"] == 4


def test_a_second_job_on_the_same_workspace_is_refused_while_one_runs(runner, sample_copy):
    spec = {
        "workspace": str(sample_copy),
        "params": dict(settings(sample_copy), k=40),
        "until": "layout",
    }  # k above the stored depth: a new search and a new map
    runner.start(spec)
    with pytest.raises(RuntimeError, match="still running"):
        runner.start(spec)
    runner.cancel(sample_copy)
    status = runner.status(sample_copy)
    assert status["state"] == "failed" and status["error"] == "cancelled"
    runner._workers[runner.status_path(sample_copy)].wait(timeout=10)
    with Workspace(sample_copy, read_only=True) as ws:  # not locked, still a workspace
        assert ws.n_documents() == 2000


def test_a_vanished_worker_is_reported(runner, tmp_path):
    workspace = tmp_path / "ws.duckdb"
    write_status(
        runner.status_path(workspace),
        {"state": "running", "pid": 2**22 + 12345, "started_at": time.time()},
    )
    assert not runner.running(workspace)
    assert runner.status(workspace)["error"] == "the worker process ended unexpectedly"


def test_an_upload_becomes_a_workspace_with_embeddings_and_a_map(runner, tmp_path):
    data = (
        b"".join(
            b'{"id": "%d", "body": "%s"}\n' % (i, text.encode())
            for i, text in enumerate(
                [
                    "SQL joins combine rows of two tables.",
                    "An index makes a query faster.",
                    "Galaxies hold billions of stars.",
                    "Telescopes collect light from planets.",
                    "Knead the dough and bake it.",
                    "Butter and sugar make the cake.",
                    "Transactions keep a database consistent.",
                    "Comets orbit the sun.",
                ]
            )
        )
        + b"not json\n"
    )
    upload, workspace = jobs.store_upload("my corpus.jsonl", data, tmp_path)
    assert upload.read_bytes() == data and workspace.suffix == ".duckdb"
    assert jobs.store_upload("my corpus.jsonl", data, tmp_path) == (upload, workspace)
    runner.start(jobs.upload_spec(upload, workspace, "body", "id"))
    status = runner.wait(workspace, timeout_s=120)
    assert status["state"] == "done", status["error"]
    with Workspace(workspace, read_only=True) as ws:
        assert ws.n_documents() == 8
        assert ws.scalar("SELECT count(*) FROM rejects") == 1
        assert ws.scalar("SELECT count(*) FROM layout") == 8
        assert ws.stage_state("embed")["counts"]["embedded"] == 8


def test_status_files_are_per_workspace(runner, tmp_path):
    a, b = tmp_path / "a" / "ws.duckdb", tmp_path / "b" / "ws.duckdb"
    assert runner.status_path(a) != runner.status_path(b)
    assert runner.status_path(a) == runner.status_path(tmp_path / "a" / ".." / "a" / "ws.duckdb")
    assert os.path.dirname(runner.status_path(a)) == str(tmp_path / "jobs")


def test_sample_spec_builds_from_the_shipped_data():
    spec = jobs.sample_spec("/somewhere/sample.duckdb")
    assert spec["seed_cache"] and spec["until"] == "layout"
    assert Params.from_dict(spec["params"]) == Params()


def test_an_upload_that_is_not_a_corpus_fails_with_one_line(runner, tmp_path):
    upload, workspace = jobs.store_upload("table.parquet", b"PAR1 this is no parquet", tmp_path)
    runner.start(jobs.upload_spec(upload, workspace, "text", "id"))
    status = runner.wait(workspace, timeout_s=120)
    assert status["state"] == "failed"
    assert "not a readable Parquet file" in status["error"] and "\n" not in status["error"]
    assert "Traceback" not in status["error"]
