"""icp_core.layout and the `layout` stage: a 2-D map from the stored kNN lists."""

import numpy as np
import pytest

from icp_core import layout, pipeline
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
