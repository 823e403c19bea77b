"""icp_core.layout and the `layout` stage: a 2-D map from the stored kNN lists."""

import io
import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from icp_core import layout, pipeline, stages
from icp_core.knn import knn_search
from icp_core.params import Params
from icp_core.workspace import Workspace
from tests.app.workspaces import synthetic_workspace


def clustered_vectors(n_per_cluster: int = 20, n_clusters: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = np.eye(16, dtype=np.float32)[:n_clusters] * 3
    labels = np.repeat(np.arange(n_clusters), n_per_cluster)
    vectors = centers[labels] + rng.normal(size=(len(labels), 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors, labels


class TestLayout2d:
    @pytest.mark.slow
    def test_reproducible_finite_and_one_point_per_document(self):
        vectors, _ = clustered_vectors()
        ids, sims = knn_search(vectors, 10)
        first = layout.layout_2d(ids, sims, vectors)
        second = layout.layout_2d(ids, sims, vectors)
        assert first.shape == (60, 2) and first.dtype == np.float32
        assert np.isfinite(first).all()
        np.testing.assert_array_equal(first, second)

    def test_neighbours_sit_closer_than_other_clusters(self):
        vectors, labels = clustered_vectors()
        ids, sims = knn_search(vectors, 10)
        coords = layout.layout_2d(ids, sims, vectors)
        distance = np.linalg.norm(coords[:, None] - coords[None], axis=2)
        same = labels[:, None] == labels[None]
        off_diagonal = ~np.eye(len(labels), dtype=bool)
        assert distance[same & off_diagonal].mean() < 0.5 * distance[~same].mean()

    def test_padded_lists_still_give_finite_coordinates(self):
        vectors, _ = clustered_vectors()
        ids, sims = knn_search(vectors, 10)
        ids[::3, 4:] = -1  # every third document has only 4 neighbours
        sims[::3, 4:] = 0.0
        assert np.isfinite(layout.layout_2d(ids, sims, vectors)).all()

    @pytest.mark.parametrize("n_docs", [0, 1, 2, 4])
    def test_few_documents_fall_back_to_principal_components(self, n_docs):
        vectors, _ = clustered_vectors(n_per_cluster=2, n_clusters=2)
        vectors = vectors[:n_docs]
        ids = np.full((n_docs, 3), -1)
        sims = np.zeros((n_docs, 3), dtype=np.float32)
        coords = layout.layout_2d(ids, sims, vectors)
        assert coords.shape == (n_docs, 2) and np.isfinite(coords).all()
        if n_docs >= 2:  # distinct vectors stay distinct points
            assert len(np.unique(coords.round(6), axis=0)) == n_docs

    def test_mismatched_shapes_are_refused(self):
        vectors, _ = clustered_vectors()
        ids, sims = knn_search(vectors, 5)
        with pytest.raises(ValueError, match="do not match"):
            layout.layout_2d(ids[:-1], sims[:-1], vectors)


class TestLayoutStage:
    def test_computed_once_per_knn_search(self, tmp_path):
        path = synthetic_workspace(tmp_path, until="layout")
        with Workspace(path) as ws:
            params = Params.from_dict(ws.load_settings())
            coords = ws.arrow("SELECT doc, x, y FROM layout ORDER BY doc").to_pandas()
            assert coords["doc"].tolist() == list(range(ws.n_documents()))
            status = {
                o.stage: o.status
                for o in pipeline.run(ws, params.updated(k=3, order="random"), until="layout")
            }
            assert status["layout"] == "skipped" and status["order"] == "ran"
            # more neighbours than stored: a new kNN search, so a new map
            status = {
                o.stage: o.status for o in pipeline.run(ws, params.updated(k=40), until="layout")
            }
            assert status["knn"] == "ran" and status["layout"] == "ran"

    def test_icp_run_does_not_compute_it(self, tmp_path):
        path = synthetic_workspace(tmp_path, until="metrics")
        with Workspace(path, read_only=True) as ws:
            assert not ws.has_table("layout")


class TestLayoutCache:
    """A map drawn elsewhere from the same neighbour lists (the sample ships one) is reused;
    any other lists get UMAP's own map."""

    def test_a_seeded_map_of_the_same_lists_is_reused(self, tmp_path):
        first = synthetic_workspace(tmp_path / "a", until="layout")
        shipped = tmp_path / "layout.parquet"
        with Workspace(first, read_only=True) as ws:
            assert ws.stage_state("layout")["counts"]["map"] == "umap"
            assert stages.export_layout_cache(ws, shipped) == ws.n_documents()
            drawn = ws.arrow("SELECT x, y FROM layout ORDER BY doc").to_pandas().to_numpy()
        second = synthetic_workspace(tmp_path / "b", until="dedup")
        with Workspace(second) as ws:
            # a recognisable map, so reuse cannot be mistaken for a fresh UMAP run
            table = pq.read_table(shipped)
            table = table.set_column(2, "x", pa.array(np.arange(table.num_rows) * 10.0))
            pq.write_table(table, shipped)
            assert stages.seed_layout_cache(ws, shipped) == ws.n_documents()
            assert stages.seed_layout_cache(ws, shipped) == 0  # a known map is not added twice
            params = Params.from_dict(ws.load_settings())
            outcome = {o.stage: o for o in pipeline.run(ws, params, until="layout")}
            assert outcome["layout"].counts["map"] == "cached"
            reused = ws.arrow("SELECT x, y FROM layout ORDER BY doc").to_pandas().to_numpy()
        assert reused[:, 0].tolist() == (np.arange(len(reused)) * 10.0).tolist()
        assert np.allclose(reused[:, 1], drawn[:, 1])

    def test_a_map_of_other_lists_is_not_used(self, tmp_path):
        first = synthetic_workspace(tmp_path / "a", until="layout")
        shipped = tmp_path / "layout.parquet"
        with Workspace(first, read_only=True) as ws:
            stages.export_layout_cache(ws, shipped)
        # other parameters of the kNN search: the lists (and their key) differ
        other = synthetic_workspace(tmp_path / "b", n_per_topic=11, until="dedup")
        with Workspace(other) as ws:
            stages.seed_layout_cache(ws, shipped)
            params = Params.from_dict(ws.load_settings())
            outcome = {o.stage: o for o in pipeline.run(ws, params, until="layout")}
            assert outcome["layout"].counts["map"] == "umap"
            assert ws.n_documents() == int(ws.scalar("SELECT count(*) FROM layout"))

    @pytest.mark.parametrize("damage", ["not parquet", "missing column", "empty cells"])
    def test_a_broken_map_file_is_skipped_with_a_warning(self, tmp_path, caplog, damage):
        shipped = tmp_path / "layout.parquet"
        if damage == "not parquet":
            shipped.write_bytes(b"PAR1 this is not a parquet file")
        else:
            x = [1.0, None] if damage == "empty cells" else [1.0, 2.0]
            columns = {"graph_key": ["k", "k"], "doc": [0, 1], "x": x, "y": [0.0, 1.0]}
            if damage == "missing column":
                del columns["y"]
            pq.write_table(pa.table(columns), shipped)
        workspace = synthetic_workspace(tmp_path / "w", until="dedup")
        with Workspace(workspace) as ws, caplog.at_level(logging.WARNING):
            assert stages.seed_layout_cache(ws, shipped) == 0
            assert int(ws.scalar("SELECT count(*) FROM layout_cache")) == 0
        assert f"{shipped}: not a usable map" in caplog.text

    def test_the_key_names_the_lists(self):
        ids = np.array([[1, 2], [0, 2], [0, 1]])
        assert stages.graph_key(ids) == stages.graph_key(ids.astype(np.int32))
        assert stages.graph_key(ids) != stages.graph_key(ids[:, ::-1])
        assert stages.graph_key(ids) != stages.graph_key(ids.reshape(2, 3))

    @pytest.mark.slow
    def test_the_shipped_sample_map_matches_the_sample(self, tmp_path):
        """The bundled sample's map is the one its kNN lists give, so the app's first start
        reuses it (no UMAP): built as `python -m icp_core.sample --prepare` builds it."""
        from icp_core import sample

        path = tmp_path / "sample.duckdb"
        sample.prepare(path, out=io.StringIO())
        with Workspace(path, read_only=True) as ws:
            assert ws.stage_state("layout")["counts"]["map"] == "cached"
