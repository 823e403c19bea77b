"""Export round trips: every kept document's full text exactly once; token files; side files.

The real readers (datasets, pyarrow, datatrove, a trainer's DataLoader) are in
`test_export_readers.py` and `test_export_trainer.py`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import duckdb
import numpy as np
import pytest

from icp_core import stages
from icp_core.errors import IcpError
from icp_core.export import export_contexts
from icp_core.workspace import Workspace
from tests.conftest import TINY_PARAMS


def export(ws_path: Path, out: Path, fmt: str, **kwargs) -> dict:
    with Workspace(ws_path) as ws:
        return export_contexts(ws, TINY_PARAMS, out, fmt, **kwargs)


def kept_texts(ws_path: Path) -> dict[str, str]:
    with Workspace(ws_path, read_only=True) as ws:
        rows = ws.arrow(
            "SELECT d.id, d.text FROM ordering o JOIN documents d USING (doc)"
        ).to_pylist()
    return {row["id"]: row["text"] for row in rows}


def read_rows(out: Path) -> list[dict]:
    """Every context row of a Parquet or JSONL export folder, in context order."""
    rows = []
    for shard in sorted((out / "data").glob("train-*")):
        if shard.suffix == ".jsonl":
            rows += [json.loads(line) for line in shard.read_text().splitlines()]
        else:
            rows += duckdb.sql(f"SELECT * FROM '{shard}'").to_arrow_table().to_pylist()
    return sorted(rows, key=lambda row: row["context"])


def reassemble(rows: list[dict], separator: str) -> dict[str, str]:
    """Cut each context's text back into pieces and glue each document's pieces in token order."""
    pieces: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for row in rows:
        parts = row["text"].split(separator)
        if row["text"].endswith(separator):
            parts = parts[:-1]
        assert len(parts) == len(row["doc_ids"])
        for doc_id, start, part in zip(row["doc_ids"], row["doc_token_start"], parts, strict=True):
            pieces[doc_id].append((start, part))
    return {doc_id: "".join(p for _, p in sorted(parts)) for doc_id, parts in pieces.items()}


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_text_round_trip_gives_every_kept_document_once(tiny_workspace, tmp_path, fmt):
    manifest = export(tiny_workspace, tmp_path / "out", fmt)
    rows = read_rows(tmp_path / "out")
    assert len(rows) == manifest["counts"]["n_contexts"]
    assert [r["context"] for r in rows] == list(range(len(rows)))
    split_docs = [
        d for r in rows for d, s in zip(r["doc_ids"], r["doc_token_start"], strict=True) if s > 0
    ]
    assert split_docs, "the tiny corpus at 64 tokens must split some documents"
    assert reassemble(rows, "</s>") == kept_texts(tiny_workspace)
    assert all(r["n_tokens"] <= TINY_PARAMS.context_length for r in rows)
    # full contexts first, the path's short last context last
    assert all(r["n_tokens"] == TINY_PARAMS.context_length for r in rows[:-1])


def test_tokens_match_the_tokenizer(tiny_workspace, tmp_path):
    manifest = export(tiny_workspace, tmp_path / "out", "tokens")
    dtype = manifest["tokenizer"]["token_dtype"]
    tokens = np.memmap(tmp_path / "out" / "tokens.ds", dtype=dtype, mode="r")
    offsets = np.load(tmp_path / "out" / "offsets.npy")
    assert offsets[-1] == len(tokens) == manifest["counts"]["n_tokens"]
    lm = stages.lm_tokenizer(TINY_PARAMS)
    sep = stages.separator_for(TINY_PARAMS)
    with Workspace(tiny_workspace, read_only=True) as ws:
        packing = stages.read_packing(ws)
        texts = ws.arrow("SELECT text FROM documents ORDER BY doc").column("text").to_pylist()
    for c in range(packing.n_contexts):
        expected = []
        for row in np.flatnonzero(packing.context == c):
            ids = lm.encode(texts[packing.doc[row]])
            expected += ids[packing.start[row] : packing.end[row]] + sep[: packing.sep[row]]
        assert tokens[offsets[c] : offsets[c + 1]].tolist() == expected
    assert np.diff(offsets).max() <= TINY_PARAMS.context_length


def test_manifest_and_side_files(tiny_workspace, tmp_path):
    manifest = export(tiny_workspace, tmp_path / "out", "jsonl", metrics={"adjacent_sim_mean": 1})
    on_disk = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert on_disk == json.loads(json.dumps(manifest, default=str))
    assert on_disk["parameters"]["context_length"] == 64
    assert on_disk["metrics"] == {"adjacent_sim_mean": 1}
    assert set(on_disk["files"]) == {
        "README.md",
        "data/train-00000-of-00001.jsonl",
        "removed/duplicates.jsonl",
        "removed/rejects.jsonl",
    }


def test_duplicates_are_exported(tmp_path):
    from tests.conftest import run_duplicate_corpus

    with Workspace(run_duplicate_corpus(tmp_path)) as ws:
        export_contexts(ws, TINY_PARAMS, tmp_path / "out", "jsonl")
    lines = (tmp_path / "out" / "removed" / "duplicates.jsonl").read_text().splitlines()
    [duplicate] = [json.loads(line) for line in lines]
    assert (duplicate["id"], duplicate["kept_id"]) == ("b", "a")


def test_existing_output_needs_overwrite(tiny_workspace, tmp_path):
    export(tiny_workspace, tmp_path / "out", "jsonl")
    (tmp_path / "out" / "data" / "stale.jsonl").write_text("from before")
    with pytest.raises(IcpError, match="already exists"):
        export(tiny_workspace, tmp_path / "out", "jsonl")
    assert (tmp_path / "out" / "data" / "stale.jsonl").exists()
    export(tiny_workspace, tmp_path / "out", "parquet", overwrite=True)
    assert not (tmp_path / "out" / "data" / "stale.jsonl").exists()
    assert not list(tmp_path.glob(".out.partial-*"))
    assert not list(tmp_path.glob(".out.old-*"))
    # --overwrite replaces only an earlier export (tests/reliability/test_commands_hostile.py)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("mine")
    with pytest.raises(IcpError, match="not an earlier export of this tool"):
        export(tiny_workspace, tmp_path / "mine", "jsonl", overwrite=True)
    assert (tmp_path / "mine" / "keep.txt").read_text() == "mine"


def test_unknown_format(tiny_workspace, tmp_path):
    with pytest.raises(IcpError, match="unknown export format"):
        export(tiny_workspace, tmp_path / "out", "csv")
