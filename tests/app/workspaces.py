"""Workspaces the app and browser tests share: the bundled sample, built once per session with
the very job the app runs on first start."""

from __future__ import annotations

import shutil
from pathlib import Path

from app import jobs
from icp_core.jobs import run_job


def built_sample(base: Path) -> Path:
    """The sample workspace under `base` (pytest's session base folder), built on first use."""
    folder = base / "app-sample"
    path = folder / "sample.duckdb"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        spec = dict(jobs.sample_spec(path), status_file=str(folder / "status.json"))
        status = run_job(spec)
        assert status["state"] == "done", status["error"]
    return path


def copy_workspace(source: Path, folder: Path, name: str = "sample.duckdb") -> Path:
    """A private copy for a test that changes the workspace."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    shutil.copyfile(source, target)
    return target


TOPICS = {
    "databases": "sql query index table transaction join column row",
    "astronomy": "star galaxy orbit planet telescope comet nebula light",
    "cooking": "recipe flour oven butter salt bake dough sugar",
}
HOSTILE_TEXT = "<script>alert(1)</script> [click here](http://evil.example) **bold** <b>tag</b>"


def synthetic_workspace(
    folder: Path,
    n_per_topic: int = 12,
    params: dict | None = None,
    until: str = "metrics",
    labels: bool = True,
) -> Path:
    """A small corpus whose vectors are made for it (three well separated topics, labelled
    unless `labels` is False, one exact duplicate, one document full of HTML and markdown),
    imported with `--vectors` so no model runs; every stage up to `until`.

    Returns the workspace path; `folder/vectors.npy` holds the vectors in document order.
    """
    import json

    import numpy as np

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    rows, vectors = [], []
    for topic_index, (topic, words) in enumerate(TOPICS.items()):
        center = np.zeros(16, dtype=np.float32)
        center[topic_index * 4 : topic_index * 4 + 4] = 1.0
        for i in range(n_per_topic):
            text = f"{topic} note {i}: " + " ".join(rng.permutation(words.split()).tolist())
            if topic == "databases" and i == 0:
                text = HOSTILE_TEXT
            rows.append({"id": f"{topic}-{i}", "text": text} | ({"label": topic} if labels else {}))
            vectors.append(center + rng.normal(scale=0.35, size=16).astype(np.float32))
    rows.append(dict(rows[-1], id="cooking-copy", text=rows[-1]["text"] + " again"))
    vectors.append(vectors[-1].copy())
    vectors = np.asarray(vectors, dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    source = folder / "corpus.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    np.save(folder / "vectors.npy", vectors)
    path = folder / "synthetic.duckdb"
    spec = {
        "workspace": str(path),
        "inputs": [str(source)],
        "params": dict(
            {"vectors": str(folder / "vectors.npy"), "k": 5, "context_length": 64}, **(params or {})
        ),
        "until": until,
        "status_file": str(folder / "status.json"),
    }
    status = run_job(spec)
    assert status["state"] == "done", status["error"]
    return path
