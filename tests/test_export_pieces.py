"""Export of packed pieces against a plain per-piece reference; export never tokenizes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import orjson
import pyarrow.parquet as pq
import pytest

from icp_core import export, pipeline, stages, tokenizer
from icp_core.params import Params
from icp_core.workspace import Workspace

CORPUS = Path("/work/shared/corpora/pydocs.jsonl")
SEPARATOR = "<< end >>"  # several tokens, so context boundaries can cut it


def _texts() -> list[str]:
    rng = np.random.default_rng(5)
    if CORPUS.exists():
        lines = CORPUS.read_text().splitlines()[:40]
        texts = [json.loads(line)["text"] for line in lines]
    else:
        texts = [" ".join(f"word{i}-{j}" for j in range(300)) for i in range(40)]
    # lengths from a few characters to a few thousand: whole, split and many-piece documents
    return [text[: int(rng.integers(3, 3000))] for text in texts] + [
        "a",
        "\u00e9t\u00e9 \U0001f600",
    ]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> tuple[Path, Params]:
    folder = tmp_path_factory.mktemp("export")
    corpus = folder / "docs.jsonl"
    texts = _texts()
    corpus.write_bytes(
        b"".join(orjson.dumps({"id": f"d{i}", "text": t}) + b"\n" for i, t in enumerate(texts))
    )
    vectors = np.random.default_rng(0).normal(size=(len(texts), 16)).astype(np.float32)
    np.save(folder / "vectors.npy", vectors)
    params = Params(
        vectors=str(folder / "vectors.npy"), context_length=48, separator=SEPARATOR, k=5
    )
    path = folder / "ws.duckdb"
    with Workspace(path) as ws:
        pipeline.ingest(ws, [str(corpus)], params)
        pipeline.run(ws, params, until="pack")
    return path, params


def reference_export(ws: Workspace, params: Params) -> tuple[list[dict], list[int]]:
    """Context rows and the flat token stream, built piece by piece with single encodes."""
    lm = stages.lm_tokenizer(params)
    sep_ids = stages.separator_for(params)
    rows = ws.arrow(
        """SELECT c.context, c.token_start, c.token_end, c.sep_tokens, d.id, d.text
           FROM contexts c JOIN documents d USING (doc) ORDER BY c.context, c.slot"""
    ).to_pylist()
    contexts: dict[int, dict] = {}
    tokens: list[int] = []
    for row in rows:
        ids = lm.encode(row["text"])
        n, start, end, sep = (len(ids), row["token_start"], row["token_end"], row["sep_tokens"])

        def char_at(token: int, text: str = row["text"], n: int = n) -> int:
            return 0 if token == 0 else len(text) if token >= n else lm.char_starts(text)[token]

        lo, hi = (
            (0, len(row["text"])) if start == 0 and end == n else (char_at(start), char_at(end))
        )
        tail = start == end and start > 0
        sep_part = sep_ids[len(sep_ids) - sep :] if tail else sep_ids[:sep]
        sep_text = lm.decode(sep_part) if sep else ""
        context = contexts.setdefault(
            row["context"],
            {
                "context": row["context"],
                "doc_ids": [],
                "text": "",
                "input_ids": [],
                "doc_lengths": [],
                "doc_token_start": [],
                "doc_token_end": [],
                "n_tokens": 0,
            },
        )
        context["text"] += row["text"][lo:hi] + sep_text
        context["input_ids"] += ids[start:end] + list(sep_part)
        context["doc_lengths"].append(end - start + sep)
        context["doc_ids"].append(row["id"])
        context["doc_token_start"].append(start)
        context["doc_token_end"].append(end)
        context["n_tokens"] += end - start + sep
        tokens += ids[start:end] + list(sep_part)
    return [contexts[c] for c in sorted(contexts)], tokens


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "tokens"])
def test_export_matches_piece_by_piece_reference(workspace, tmp_path, fmt: str) -> None:
    path, params = workspace
    with Workspace(path) as ws:
        expected_rows, expected_tokens = reference_export(ws, params)
        assert len(expected_rows) > 10  # the fixture really cuts documents
        export.export_contexts(ws, params, tmp_path / "out", fmt)
    out = tmp_path / "out"
    if fmt == "jsonl":
        [shard] = (out / "data").glob("train-*.jsonl")
        rows = [json.loads(line) for line in shard.read_text().splitlines()]
        assert rows == expected_rows
    elif fmt == "parquet":
        [shard] = (out / "data").glob("train-*.parquet")
        assert pq.read_table(shard).to_pylist() == expected_rows
    else:
        manifest = json.loads((out / "manifest.json").read_text())
        tokens = np.fromfile(out / "tokens.ds", dtype=manifest["tokenizer"]["token_dtype"])
        offsets = np.load(out / "offsets.npy")
        assert tokens.tolist() == expected_tokens
        assert np.diff(offsets).tolist() == [row["n_tokens"] for row in expected_rows]


def test_piece_char_spans_tile_each_document(workspace) -> None:
    path, params = workspace
    lm = stages.lm_tokenizer(params)
    with Workspace(path, read_only=True) as ws:
        table = ws.arrow(
            """SELECT c.doc, c.token_start, c.token_end,
                      max(c.token_end) OVER (PARTITION BY c.doc) AS n_tokens, d.text
               FROM contexts c JOIN documents d USING (doc) ORDER BY c.doc, c.token_start,
               c.token_end"""
        )
    docs, start, end, n_tokens = (
        table.column(name).to_numpy().astype(np.int64)
        for name in ("doc", "token_start", "token_end", "n_tokens")
    )
    texts = table.column("text").to_pylist()
    split = {int(d): t for d, t in zip(docs.tolist(), texts, strict=True)}
    lo, hi = export.piece_char_spans(lm, [None] * len(texts), docs, start, end, n_tokens, split)
    assert (np.bincount(docs) > 1).sum() > 5  # several documents are cut
    for doc in np.unique(docs):
        rows = np.flatnonzero(docs == doc)
        assert lo[rows[0]] == 0 and hi[rows[-1]] == len(texts[rows[0]])
        assert (lo[rows[1:]] == hi[rows[:-1]]).all() and (lo[rows] <= hi[rows]).all()


def test_export_reads_the_packed_ids_and_never_tokenizes(workspace, tmp_path, monkeypatch):
    """The pack stage keeps every text's ids; export slices them (no second tokenization,
    so what is written is exactly what was counted)."""
    path, params = workspace

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("export tokenized a text although the pack stage kept its ids")

    with Workspace(path) as ws:
        export.export_contexts(ws, params, tmp_path / "before", "tokens")
        monkeypatch.setattr(tokenizer.LMTokenizer, "token_ids", no_tokenizing)
        export.export_contexts(ws, params, tmp_path / "after", "tokens")
    for name in ("tokens.ds", "tokens.ds.index", "offsets.npy"):
        assert (tmp_path / "after" / name).read_bytes() == (tmp_path / "before" / name).read_bytes()
