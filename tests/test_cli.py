"""The `icp` command end to end, in subprocesses as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

# subprocess runs of the CLI (and a DataLoader with worker processes): the full tier
pytestmark = pytest.mark.slow

CONTRACT_KEYS = {
    "n_documents",
    "n_rejected",
    "n_duplicates",
    "n_contexts",
    "every_doc_once",
    "adjacent_sim_mean",
    "random_adjacent_sim_mean",
    "context_pairwise_sim_mean",
    "jump_rate",
    "token_efficiency",
    "label_agreement",
    "context_cache_gain",
}


def icp(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "icp_core.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"icp {' '.join(map(str, args))} failed:\n{result.stderr}")
    return result


def test_run_then_stage_commands(tiny_jsonl, tmp_path):
    ws = tmp_path / "w.duckdb"
    run = icp("run", tiny_jsonl, "-w", ws, "--k", 4, "--context-length", 64)
    printed = json.loads(run.stdout)
    assert set(printed) >= CONTRACT_KEYS and printed["every_doc_once"]
    assert printed["adjacent_sim_mean"] > printed["random_adjacent_sim_mean"]

    ingest = icp("ingest", tiny_jsonl, "-w", ws)
    assert ingest.stdout.startswith("0 documents, 0 rejected (see rejects)")

    knn = icp("knn", "-w", ws, "--k", 6)
    assert "embed    skipped" in knn.stderr and "knn      skipped" in knn.stderr

    order = icp("order", "-w", ws, "--order", "original")
    assert "dedup    ran" in order.stderr and "order    ran" in order.stderr

    metrics = json.loads(icp("metrics", "-w", ws, "--json").stdout)
    assert (metrics["k"], metrics["order"], metrics["context_length"]) == (6, "original", 64)
    assert set(metrics) >= CONTRACT_KEYS and metrics["label_agreement"] is not None

    icp("export", "-w", ws, "--format", "tokens", "--out", tmp_path / "out")
    assert (tmp_path / "out" / "tokens.ds").exists()
    assert icp("check", "-w", ws).stdout.startswith("ok")


def test_ingest_reports_rejects(tmp_path):
    corpus = tmp_path / "bad.jsonl"
    corpus.write_text('{"id": 1, "text": "good"}\nnot json\n{"id": 2}\n')
    result = icp("ingest", corpus, "-w", tmp_path / "w.duckdb")
    assert result.stdout.startswith("1 documents, 2 rejected (see rejects)")
    # the stored reason names no option; the command line adds its flag
    assert result.stdout.splitlines()[-1] == (
        "rejected rows: set --text-field to the field that holds the text"
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["ingest", "missing.jsonl"], "missing.jsonl: no such file or folder"),
        (["run", "{corpus}", "--k", "0"], "k must be at least 1"),
        (["run", "{corpus}", "--model", "/no/such/model"], "pass --model"),
        (["run", "{corpus}", "--tokenizer", "/no/tokenizer.json"], "set --tokenizer"),
        (["run", "{corpus}", "--order", "zigzag"], "--order zigzag"),
        (["metrics"], "no documents ingested yet"),
    ],
)
def test_bad_input_gives_one_line_and_no_traceback(tiny_jsonl, tmp_path, args, message):
    args = [a.replace("{corpus}", str(tiny_jsonl)) for a in args]
    result = icp(*args, "-w", tmp_path / "w.duckdb", check=False)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")


def test_workspace_that_is_not_duckdb(tiny_jsonl, tmp_path):
    fake = tmp_path / "notes.duckdb"
    fake.write_text("just some text, not a database" * 100)
    result = icp("ingest", tiny_jsonl, "-w", fake, check=False)
    assert result.returncode == 2 and "not a DuckDB workspace file" in result.stderr


def test_help_lists_the_contract_commands():
    out = icp("--help").stdout
    for command in (
        "run",
        "ingest",
        "embed",
        "knn",
        "dedup",
        "order",
        "pack",
        "export",
        "metrics",
        "app",
    ):
        assert command in out


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "icp"
    assert script.exists()
