"""SIGKILL the CLI inside each stage's write, re-run, and get exactly the uninterrupted result.

The kill comes from the ICP_CRASH_AT hook (icp_core/faults.py) so it lands at a known point:
just before a stage's write transaction commits (`<table>.commit`), or before the commit of
the third batch of vectors (`embedding_cache.commit:3`).
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from icp_core.sample import SAMPLE_DOCUMENTS
from icp_core.workspace import Workspace

N_DOCS = 40
BATCH = 1  # a checkpoint every 1 * 16 = 16 documents
RUN_ARGS = ["--k", "5", "--context-length", "512", "--batch-size", str(BATCH)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The sample's first short Debian descriptions (not in the shipped embedding cache path)."""
    rows = []
    with gzip.open(SAMPLE_DOCUMENTS, "rt") as handle:
        for line in handle:
            row = json.loads(line)
            if row["id"].startswith("debpkg:") and len(row["text"]) < 600:
                rows.append(row)
            if len(rows) == N_DOCS:
                break
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def icp(*args, crash_at: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("ICP_CRASH_AT", None)
    if crash_at:
        env["ICP_CRASH_AT"] = crash_at
    return subprocess.run(
        [sys.executable, "-m", "icp_core.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def snapshot(ws_path: Path) -> dict:
    with Workspace(ws_path, read_only=True) as ws:
        return {
            "ordering": ws.arrow(
                "SELECT position, doc, is_jump FROM ordering ORDER BY position"
            ).to_pylist(),
            "contexts": ws.arrow("SELECT * FROM contexts ORDER BY context, slot").to_pylist(),
            "duplicates": ws.arrow("SELECT doc, kept_doc FROM duplicates ORDER BY doc").to_pylist(),
        }


@pytest.fixture(scope="module")
def embedded(corpus, tmp_path_factory) -> Path:
    """A workspace with the corpus ingested and embedded (the slow part, done once)."""
    ws = tmp_path_factory.mktemp("embedded") / "w.duckdb"
    assert icp("ingest", corpus, "-w", ws).returncode == 0
    result = icp("embed", "-w", ws, "--batch-size", BATCH)
    assert result.returncode == 0, result.stderr
    return ws


def copy_of(template: Path, folder: Path) -> Path:
    path = folder / "w.duckdb"
    path.write_bytes(template.read_bytes())
    return path


@pytest.fixture(scope="module")
def uninterrupted(corpus, embedded, tmp_path_factory) -> dict:
    ws = copy_of(embedded, tmp_path_factory.mktemp("clean"))
    result = icp("run", corpus, "-w", ws, *RUN_ARGS)
    assert result.returncode == 0, result.stderr
    return snapshot(ws)


@pytest.mark.slow
@pytest.mark.parametrize(
    "point, stage",
    [
        ("neighbors.commit", "knn"),
        ("duplicates.commit", "dedup"),
        ("ordering.commit", "order"),
        ("contexts.commit", "pack"),
    ],
)
def test_killed_inside_a_stage_write_then_rerun(
    corpus, embedded, uninterrupted, tmp_path, point, stage
):
    ws = copy_of(embedded, tmp_path)
    killed = icp("run", corpus, "-w", ws, *RUN_ARGS, crash_at=point)
    assert killed.returncode == -signal.SIGKILL
    with Workspace(ws, read_only=True) as opened:  # the killed write left no trace
        assert opened.stage_state(stage) is None
    rerun = icp("run", corpus, "-w", ws, *RUN_ARGS)
    assert rerun.returncode == 0, rerun.stderr
    assert "embed    skipped" in rerun.stderr  # finished stages are not redone
    assert snapshot(ws) == uninterrupted


@pytest.mark.slow
def test_killed_while_embedding_keeps_finished_batches(corpus, uninterrupted, tmp_path):
    ws = tmp_path / "w.duckdb"
    # killed as the third batch is about to commit: the first two are kept
    killed = icp("run", corpus, "-w", ws, *RUN_ARGS, crash_at="embedding_cache.commit:3")
    assert killed.returncode == -signal.SIGKILL
    with Workspace(ws, read_only=True) as opened:
        assert opened.scalar("SELECT count(*) FROM embedding_cache") == 2 * BATCH * 16
    rerun = icp("run", corpus, "-w", ws, *RUN_ARGS)
    assert rerun.returncode == 0, rerun.stderr
    assert f"embedded={N_DOCS - 2 * BATCH * 16}, cached={2 * BATCH * 16}" in rerun.stderr
    assert snapshot(ws) == uninterrupted


@pytest.mark.slow
def test_killed_export_leaves_nothing_under_the_final_name(corpus, embedded, tmp_path):
    ws = copy_of(embedded, tmp_path)
    assert icp("run", corpus, "-w", ws, *RUN_ARGS).returncode == 0
    out = tmp_path / "export"
    killed = icp("export", "-w", ws, "--out", out, "--format", "jsonl", crash_at="export.staged")
    assert killed.returncode == -signal.SIGKILL
    assert not out.exists()
    again = icp("export", "-w", ws, "--out", out, "--format", "jsonl")
    assert again.returncode == 0, again.stderr
    assert (out / "manifest.json").exists()
    assert not list(tmp_path.glob(".export.partial-*"))
