"""Embedding with the real packaged model: unit vectors, cache, imports, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from icp_core import embed, pipeline, stages
from icp_core.errors import IcpError
from icp_core.params import Params
from icp_core.workspace import Workspace


def runs_of(ws: Workspace, stage: str) -> list[dict]:
    return ws.arrow(
        "SELECT status, counts FROM stage_runs WHERE stage = ? ORDER BY started_at", [stage]
    ).to_pylist()


@pytest.mark.model
def test_vectors_are_unit_length_and_similar_texts_are_close():
    model = embed.load_model(str(embed.resolve_model_path(None)))
    vectors = embed.embed_texts(
        model, ["Bake the bread in a hot oven.", "Put the loaf in the oven to bake.", "Galaxies"]
    )
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3


@pytest.mark.model
def test_second_run_embeds_nothing_and_new_documents_only_are_embedded(tiny_jsonl, tmp_path):
    ws_path = tmp_path / "w.duckdb"
    params = Params(k=3)
    with Workspace(ws_path) as ws:
        pipeline.ingest(ws, [str(tiny_jsonl)], params)
        first = pipeline.run(ws, params, until="embed")[-1]
        again = pipeline.run(ws, params, until="embed", force=True)[-1]
        extra = tmp_path / "extra.jsonl"
        extra.write_text(json.dumps({"id": "new", "text": "A brand new document."}) + "\n")
        pipeline.ingest(ws, [str(extra)], params)
        added = pipeline.run(ws, params, until="embed")[-1]
        assert first.counts["embedded"] == 18
        assert again.counts["embedded"] == 0 and again.counts["cached"] == 18
        assert added.counts["embedded"] == 1 and added.counts["cached"] == 18
        assert stages.read_vectors(ws).shape == (19, 384)


def test_missing_model_names_the_option():
    with pytest.raises(IcpError, match="never downloads models: pass --model"):
        embed.resolve_model_path("sentence-transformers/all-mpnet-base-v2")


def test_folder_that_is_not_a_model(tmp_path):
    with pytest.raises(IcpError, match="not a sentence-transformers model folder"):
        embed.resolve_model_path(str(tmp_path))


def test_max_tokens_changes_the_cache_key():
    path = str(embed.resolve_model_path(None))
    assert embed.model_key(path, 128) != embed.model_key(path, None)


@pytest.mark.model
def test_huge_document_is_cut_before_tokenizing():
    model = embed.load_model(str(embed.resolve_model_path(None)))
    huge = "astronomy telescopes and galaxies " * 400_000  # 13 MB
    # 3,000 characters already hold more than the model's 256 tokens: same embedding
    vectors = embed.embed_texts(model, [huge, huge[:3000]])
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-5)


class TestImportedVectors:
    def ids(self):
        return np.array(["a", "b", "c"], dtype=object)

    def test_npy_in_ingest_order(self, tmp_path):
        path = tmp_path / "v.npy"
        np.save(path, np.array([[3, 4], [1, 0], [0, 2]], dtype=np.float32))
        vectors = embed.read_vectors_file(path, self.ids())
        np.testing.assert_allclose(vectors, [[0.6, 0.8], [1, 0], [0, 1]])

    def test_parquet_by_id(self, tmp_path):
        path = tmp_path / "v.parquet"
        pq.write_table(
            pa.table({"id": ["c", "a", "b"], "vec": [[0, 2.0], [3.0, 4], [1.0, 0]]}), path
        )
        np.testing.assert_allclose(
            embed.read_vectors_file(path, self.ids()), [[0.6, 0.8], [1, 0], [0, 1]]
        )

    @pytest.mark.parametrize(
        "table, message",
        [
            ({"id": ["a", "b"], "vec": [[1.0], [2.0]]}, "no vector for 1 documents"),
            ({"id": ["a", "b", "c"], "vec": [[1.0], [2.0, 1.0], [1.0]]}, "different lengths"),
            ({"id": ["a", "a", "c"], "vec": [[1.0], [2.0], [1.0]]}, "ids repeat"),
            ({"key": ["a", "b", "c"], "vec": [[1.0], [2.0], [1.0]]}, "no 'id' column"),
            ({"id": ["a", "b", "c"], "vec": [[1.0], [float("nan")], [1.0]]}, "NaN or inf"),
        ],
    )
    def test_bad_parquet(self, tmp_path, table, message):
        path = tmp_path / "v.parquet"
        pq.write_table(pa.table(table), path)
        with pytest.raises(IcpError, match=message):
            embed.read_vectors_file(path, self.ids())

    def test_bad_npy_shape(self, tmp_path):
        path = tmp_path / "v.npy"
        np.save(path, np.ones((2, 4), np.float32))
        with pytest.raises(IcpError, match=r"expected \(3, d\) rows in ingest order"):
            embed.read_vectors_file(path, self.ids())

    def test_pipeline_uses_imported_vectors(self, tiny_jsonl, tmp_path):
        vectors = np.random.default_rng(0).normal(size=(18, 8)).astype(np.float32)
        np.save(tmp_path / "v.npy", vectors)
        params = Params(k=3, vectors=str(tmp_path / "v.npy"), context_length=64)
        with Workspace(tmp_path / "w.duckdb") as ws:
            pipeline.ingest(ws, [str(tiny_jsonl)], params)
            pipeline.run(ws, params)
            stored = stages.read_vectors(ws)
        np.testing.assert_allclose(
            stored, vectors / np.linalg.norm(vectors, axis=1, keepdims=True), atol=1e-6
        )


@pytest.mark.model
def test_shipped_sample_cache_matches_a_fresh_embedding(sample_workspace_template):
    from icp_core.sample import sample_vectors_match

    with Workspace(sample_workspace_template, read_only=True) as ws:
        assert ws.scalar("SELECT count(*) FROM embeddings") == 2000
        assert sample_vectors_match(ws, 6) < 1e-4


@pytest.mark.model
def test_tiny_cache_matches_a_fresh_embedding():
    """The vectors the fast tier seeds instead of loading the model are the model's."""
    from icp_core.ingest import hash_text
    from tests.conftest import DUPLICATE_ROWS, TINY_EMBEDDINGS, tiny_rows

    cache = pq.read_table(TINY_EMBEDDINGS).to_pydict()
    texts = [row["text"] for row in tiny_rows() + DUPLICATE_ROWS]
    model_key = embed.model_key(str(embed.resolve_model_path(None)), None)
    assert set(cache["model_key"]) == {model_key}
    by_hash = dict(zip(cache["text_hash"], cache["vector"], strict=True))
    shipped = np.asarray([by_hash[hash_text(text)] for text in texts], dtype=np.float32)
    model = embed.load_model(str(embed.resolve_model_path(None)))
    assert np.abs(embed.embed_texts(model, texts) - shipped).max() < 1e-4
