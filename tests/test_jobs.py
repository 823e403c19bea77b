"""jobs.run_job: what the app's worker runs, and the status file it keeps."""

import json

from icp_core import jobs
from icp_core.params import Params
from icp_core.workspace import Workspace
from tests.app.workspaces import synthetic_workspace


def test_a_job_records_each_stage_and_reuses_unchanged_ones(tmp_path):
    path = synthetic_workspace(tmp_path)
    status_file = tmp_path / "job.json"
    status = jobs.run_job(
        {
            "workspace": str(path),
            "params": dict(Params.from_dict(_settings(path)).to_dict(), k=3),
            "until": "metrics",
            "status_file": str(status_file),
            "description": "k=3",
        }
    )
    assert status == json.loads(status_file.read_text())
    assert status["state"] == "done" and status["error"] is None
    ran = {s["stage"]: s["status"] for s in status["stages"]}
    assert ran == {
        "embed": "skipped",
        "knn": "skipped",
        "dedup": "ran",
        "order": "ran",
        "pack": "ran",
        "metrics": "ran",
    }


def test_a_failing_job_reports_one_line_and_keeps_the_workspace(tmp_path):
    path = synthetic_workspace(tmp_path)
    settings = _settings(path)
    status = jobs.run_job(
        {
            "workspace": str(path),
            "params": dict(settings, tokenizer=str(tmp_path / "missing.json")),
            "status_file": str(tmp_path / "job.json"),
        }
    )
    assert status["state"] == "failed"
    assert "missing.json" in status["error"] and "\n" not in status["error"]
    with Workspace(path, read_only=True) as ws:
        assert ws.has_table("contexts")


def test_invalid_parameters_fail_the_job_before_touching_the_workspace(tmp_path):
    status = jobs.run_job(
        {
            "workspace": str(tmp_path / "new.duckdb"),
            "params": {"k": 0},
            "status_file": str(tmp_path / "job.json"),
        }
    )
    assert status["state"] == "failed" and "--k 0" in status["error"]
    assert not (tmp_path / "new.duckdb").exists()


def _settings(path) -> dict:
    with Workspace(path, read_only=True) as ws:
        return ws.load_settings()


def test_an_evaluation_job_stores_every_combination_and_applies_nothing(tmp_path):
    """The Compare page's job: `icp eval` at another k, kept in the workspace, while the
    applied settings and stages stay as they were."""
    from icp_core import evaluate

    path = synthetic_workspace(tmp_path)
    before = _settings(path)
    with Workspace(path, read_only=True) as ws:
        stages_before = ws.arrow("SELECT * FROM stage_state ORDER BY stage").to_pylist()
    compared = Params.from_dict(before).updated(k=3)
    status = jobs.run_job(
        {
            "workspace": str(path),
            "params": compared.to_dict(),
            "evaluate": True,
            "status_file": str(tmp_path / "job.json"),
        }
    )
    assert status["state"] == "done", status["error"]
    assert (status["stage"], status["done"]) == ("eval", status["total"])
    with Workspace(path, read_only=True) as ws:
        assert ws.load_settings() == before
        assert ws.arrow("SELECT * FROM stage_state ORDER BY stage").to_pylist() == stages_before
        stored = evaluate.stored(ws, compared)
        assert evaluate.stored(ws, Params.from_dict(before)) is None
    assert stored["params"]["k"] == 3
    assert len(stored["rows"]) == status["total"]
