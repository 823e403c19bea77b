"""The embed stage's progress: shown at once (model loading as its own phase), one report per
batch in documents, an ETA from the tokens done, and the `report(done, total)` contract kept
for the CLI bars and the app's job status file."""

from __future__ import annotations

import json

import numpy as np

from icp_core import embed, jobs, pipeline
from icp_core.params import Params
from icp_core.stages.embed import _embed_missing
from icp_core.workspace import Workspace


class Recorder:
    """A progress callback with a `note` hook, recording both in order."""

    def __init__(self):
        self.events: list[tuple] = []

    def __call__(self, done: int, total: int) -> None:
        self.events.append(("report", done, total))

    def note(self, text: str) -> None:
        self.events.append(("note", text))


class FakeModel:
    max_seq_length = 256

    def __init__(self, events: list | None = None):
        self.events = events if events is not None else []

    def get_sentence_embedding_dimension(self) -> int:
        return 4

    def encode(self, texts, batch_size, **_):
        self.events.append(("encode", len(texts)))
        rng = np.random.default_rng(len(texts))
        vectors = rng.normal(size=(len(texts), 4)).astype(np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_eta_comes_from_tokens_not_documents():
    now = [0.0]
    recorder = Recorder()
    progress = embed.EmbedProgress(recorder, np.array([90, 90, 10, 10]), clock=lambda: now[0])
    progress.loading()
    assert recorder.events == [("report", 0, 4), ("note", "loading model")]
    now[0] = 5.0  # loading took 5 s: not part of the embedding rate
    progress.start()
    now[0] = 14.0
    progress.advance(1)  # 90 of 200 tokens in 9 s -> 110 tokens left take 11 s
    assert recorder.events[-2] == ("report", 1, 4)
    assert progress.eta_s() == 11.0
    assert recorder.events[-1] == ("note", "ETA 11s")
    now[0] = 23.0
    progress.advance(2)
    assert progress.eta_s() == 18.0 * 10 / 190
    progress.advance(1)
    assert recorder.events[-2:] == [("report", 4, 4), ("note", "done")]


def test_a_plain_callable_still_works_and_reports_every_batch():
    calls = []
    texts = [f"document number {i}" for i in range(10)]
    vectors = embed.embed_texts(
        FakeModel(), texts, batch_size=3, report=lambda d, t: calls.append((d, t))
    )
    assert vectors.shape == (10, 4)
    assert calls == [(3, 10), (6, 10), (9, 10), (10, 10)]


def test_format_seconds():
    assert embed.format_seconds(42) == "42s"
    assert embed.format_seconds(125) == "2m05s"
    assert embed.format_seconds(3 * 3600 + 7 * 60) == "3h07m"


def test_stage_shows_progress_before_loading_the_model(tiny_jsonl, tmp_path, monkeypatch):
    events: list = []
    recorder = Recorder()
    recorder.events = events

    def fake_load(path, device="auto", max_tokens=None):
        events.append(("load",))
        return FakeModel(events)

    monkeypatch.setattr(embed, "load_model", fake_load)
    params = Params(k=3, batch_size=4)
    with Workspace(tmp_path / "w.duckdb") as ws:
        pipeline.ingest(ws, [str(tiny_jsonl)], params)
        n_new = _embed_missing(ws, params, "test-key", recorder)
    assert n_new == 18
    assert events[:3] == [("report", 0, 18), ("note", "loading model"), ("load",)]
    reports = [e for e in events if e[0] == "report"]
    assert [r[1] for r in reports] == [0, 4, 8, 12, 16, 18]  # one per batch of 4
    assert all(r[2] == 18 for r in reports)
    assert any(e[0] == "note" and e[1].startswith("ETA") for e in events)


def test_job_status_file_carries_the_note(tmp_path):
    status_file = tmp_path / "status.json"
    reporter = jobs._JobReporter(status_file, {"state": "running"})
    report = reporter("embed")
    report(0, 100)
    embed.note(report, "loading model")
    reporter.write(force=True)
    status = json.loads(status_file.read_text())
    assert (status["stage"], status["done"], status["total"]) == ("embed", 0, 100)
    assert status["note"] == "loading model"
    report(100, 100)
    reporter("knn")  # a new stage starts without the old note
    assert "note" not in json.loads(status_file.read_text())


class EchoModel(FakeModel):
    """Vector = one-hot of the text's length, so rows can be traced back to texts."""

    def get_sentence_embedding_dimension(self) -> int:
        return 32

    def encode(self, texts, batch_size, **_):
        self.events.append(("encode", [len(t) for t in texts]))
        return np.eye(32, dtype=np.float32)[[len(t) for t in texts]]


def test_batches_are_length_bucketed_and_rows_keep_the_input_order():
    model = EchoModel()
    texts = ["x" * n for n in (3, 17, 1, 30, 8, 8, 25)]
    vectors = embed.embed_texts(model, texts, batch_size=3)
    assert vectors.argmax(axis=1).tolist() == [3, 17, 1, 30, 8, 8, 25]
    assert [e[1] for e in model.events] == [[30, 25, 17], [8, 8, 3], [1]]
