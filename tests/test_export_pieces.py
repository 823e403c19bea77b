"""Export of packed pieces against a plain per-piece reference, and the reuse of token ids."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import orjson
import pyarrow.parquet as pq
import pytest

from icp_core import export, pack, pipeline, stages
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
    tokenizer = pack.load_tokenizer(str(stages._tokenizer_for(params)))
    sep_ids = stages.separator_for(params)
    rows = ws.arrow(
        """SELECT c.context, c.token_start, c.token_end, c.sep_tokens, d.id, d.text
           FROM contexts c JOIN documents d USING (doc) ORDER BY c.context, c.slot"""
    ).to_pylist()
    contexts: dict[int, dict] = {}
    tokens: list[int] = []
    for row in rows:
        encoding = tokenizer.encode(row["text"], add_special_tokens=False)
        n, start, end, sep = (
            len(encoding.ids),
            row["token_start"],
            row["token_end"],
            row["sep_tokens"],
        )

        def char_at(token: int, text: str = row["text"], n: int = n, enc=encoding) -> int:
            return 0 if token == 0 else len(text) if token >= n else enc.offsets[token][0]

        lo, hi = (
            (0, len(row["text"])) if start == 0 and end == n else (char_at(start), char_at(end))
        )
        tail = start == end and start > 0
        sep_part = sep_ids[len(sep_ids) - sep :] if tail else sep_ids[:sep]
        sep_text = tokenizer.decode(sep_part, skip_special_tokens=False) if sep else ""
        context = contexts.setdefault(
            row["context"],
            {
                "context": row["context"],
                "text": "",
                "doc_ids": [],
                "doc_token_start": [],
                "doc_token_end": [],
                "n_tokens": 0,
            },
        )
        context["text"] += row["text"][lo:hi] + sep_text
        context["doc_ids"].append(row["id"])
        context["doc_token_start"].append(start)
        context["doc_token_end"].append(end)
        context["n_tokens"] += end - start + sep
        tokens += encoding.ids[start:end] + list(sep_part)
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
        rows = [json.loads(line) for line in (out / "contexts.jsonl").read_text().splitlines()]
        assert rows == expected_rows
    elif fmt == "parquet":
        assert pq.read_table(out / "contexts.parquet").to_pylist() == expected_rows
    else:
        manifest = json.loads((out / "manifest.json").read_text())
        tokens = np.fromfile(out / "tokens.bin", dtype=manifest["counts"]["dtype"])
        offsets = np.load(out / "offsets.npy")
        assert tokens.tolist() == expected_tokens
        assert np.diff(offsets).tolist() == [row["n_tokens"] for row in expected_rows]


def test_piece_char_spans_tile_each_document(workspace) -> None:
    path, params = workspace
    tokenizer = pack.load_tokenizer(str(stages._tokenizer_for(params)))
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
    lo, hi = export.piece_char_spans(tokenizer, texts, docs, start, end, n_tokens)
    assert (np.bincount(docs) > 1).sum() > 5  # several documents are cut
    for doc in np.unique(docs):
        rows = np.flatnonzero(docs == doc)
        assert lo[rows[0]] == 0 and hi[rows[-1]] == len(texts[rows[0]])
        assert (lo[rows[1:]] == hi[rows[:-1]]).all() and (lo[rows] <= hi[rows]).all()


def test_export_after_pack_reuses_the_token_ids(workspace, tmp_path, monkeypatch) -> None:
    path, params = workspace
    with Workspace(path) as ws:
        export.export_contexts(ws, params, tmp_path / "cold", "tokens")
        ws.execute("DELETE FROM token_cache")
        pipeline.run(ws, params, until="pack", force=("pack",))  # counts: keeps the ids

        def no_tokenizing(*args, **kwargs):
            raise AssertionError("export tokenized again although the pack stage kept the ids")

        monkeypatch.setattr(pack, "token_ids", no_tokenizing)
        export.export_contexts(ws, params, tmp_path / "warm", "tokens")
    for name in ("tokens.bin", "offsets.npy"):
        assert (tmp_path / "warm" / name).read_bytes() == (tmp_path / "cold" / name).read_bytes()


def test_recent_token_ids_keep_within_budget_and_per_tokenizer() -> None:
    recent = pack.RecentTokenIds(max_tokens=10)
    ids = np.arange(12, dtype=np.uint32)
    offsets = np.array([0, 4, 8, 12])
    recent.keep("tok-a", ["h0", "h1", "h2"], ids, offsets)
    assert recent.get("tok-a", "h0").tolist() == [0, 1, 2, 3]
    assert recent.get("tok-a", "h1").tolist() == [4, 5, 6, 7]
    assert recent.get("tok-a", "h2") is None  # would exceed 10 tokens
    assert recent.get("tok-b", "h0") is None  # other tokenizer, other ids
    recent.keep("tok-b", ["h9"], ids[:2], np.array([0, 2]))
    assert recent.get("tok-a", "h0") is None and recent.get("tok-b", "h9").tolist() == [0, 1]
