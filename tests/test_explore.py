"""icp_core.explore: the read-side views the app shows, checked against the stored tables."""

import numpy as np
import pandas as pd
import pytest

from icp_core import explore, pipeline, stages
from icp_core.errors import IcpError
from icp_core.params import DEFAULT_ORDER, Params
from icp_core.workspace import Workspace
from tests.app.workspaces import HOSTILE_TEXT, synthetic_workspace


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return synthetic_workspace(tmp_path_factory.mktemp("explore"))


@pytest.fixture
def reader(workspace):
    with Workspace(workspace, read_only=True) as ws:
        yield ws


def test_documents_and_placement_account_for_every_document(reader):
    docs = explore.document_frame(reader, "label")
    place = explore.placement_frame(reader)
    assert docs["doc"].tolist() == place["doc"].tolist() == list(range(reader.n_documents()))
    assert set(docs["label"]) == {"databases", "astronomy", "cooking"}
    removed = place[place["status"] != explore.STATUS_KEPT]
    assert removed[["doc", "kept_doc"]].astype(int).values.tolist() == [[36, 35]]
    assert place.loc[place["status"] == explore.STATUS_KEPT, "context"].notna().all()
    assert removed["context"].isna().all()
    assert docs.loc[0, "preview"] == HOSTILE_TEXT  # verbatim: showing it safely is the app's job


def test_context_documents_follow_the_stored_order_and_similarities(reader):
    vectors = np.load(reader.path.parent / "vectors.npy")
    summary = explore.context_summary(reader, "label")
    packing = stages.read_packing(reader)
    assert summary["context"].tolist() == list(range(packing.n_contexts))
    np.testing.assert_array_equal(summary["tokens"], packing.context_tokens())
    content = packing.content_pieces()  # a lone separator opening a context is not listed
    for context in summary["context"]:
        pieces = explore.context_documents(reader, context, "label")
        assert pieces["slot"].tolist() == content.slot[content.context == context].tolist()
        assert pieces["doc"].tolist() == content.doc[content.context == context].tolist()
        assert pd.isna(pieces.loc[0, "sim_to_prev"]) and pd.isna(pieces.loc[0, "jump"])
        docs = pieces["doc"].to_numpy()
        expected = np.einsum("ij,ij->i", vectors[docs[:-1]], vectors[docs[1:]])
        np.testing.assert_allclose(pieces["sim_to_prev"][1:].astype(float), expected, atol=1e-5)
        row = summary.set_index("context").loc[context]
        assert row["n_docs"] == len(pieces)
        assert row["jumps"] == int(pieces["jump"].fillna(False).sum())


def test_a_split_document_is_marked_with_its_parts(reader):
    packing = stages.read_packing(reader).content_pieces()
    doc = int(np.flatnonzero(np.bincount(packing.doc) > 1)[0])
    mine = packing.doc == doc
    contexts = packing.context[mine][np.argsort(packing.start[mine])]  # in reading order
    parts = [
        explore.context_documents(reader, c, None).set_index("doc").at[doc, "part"]
        for c in contexts
    ]
    assert parts == [f"{i + 1}/{len(contexts)}" for i in range(len(contexts))]


def test_adjacent_similarities_match_the_stored_metrics(reader):
    params = Params.from_dict(reader.load_settings())
    sims = explore.adjacent_similarities(reader, params)
    stored = stages.latest_metrics(reader, params)
    assert sims["current"].mean() == pytest.approx(stored["adjacent_sim_mean"], abs=1e-6)
    assert sims["random"].mean() == pytest.approx(stored["random_adjacent_sim_mean"], abs=1e-6)


def test_find_documents_by_number_id_and_text(reader):
    assert explore.find_documents(reader, "7", None)["doc"].iloc[0] == 7
    assert explore.find_documents(reader, "astronomy-3", None)["id"].iloc[0] == "astronomy-3"
    found = explore.find_documents(reader, "ALERT(1)", None)
    assert found["id"].tolist() == ["databases-0"]
    assert explore.find_documents(reader, "  ", None).empty
    assert explore.find_documents(reader, "no such words", None).empty


def test_neighborhood_edges_are_knn_edges_and_path_steps(reader):
    k = 5
    ids, sims = stages.read_neighbors(reader, k)
    order = reader.column("SELECT doc FROM ordering ORDER BY position").tolist()
    jumps = dict(reader.arrow("SELECT doc, is_jump FROM ordering").to_pandas().values.tolist())
    doc = order[10]
    hood = explore.neighborhood(reader, doc, k, hops=2)
    members = set(hood.nodes["doc"])
    assert set(ids[doc][ids[doc] >= 0]) <= members
    assert set(order[8:13]) <= members  # two path steps either side
    assert hood.nodes.set_index("doc").at[doc, "hop"] == 0
    for edge in hood.edges.itertuples():
        listed = edge.target in ids[edge.source] or edge.source in ids[edge.target]
        assert edge.knn == listed
        if edge.path:
            assert order.index(edge.target) == order.index(edge.source) + 1
            assert edge.jump == jumps[edge.target]
        else:
            assert not edge.jump
    steps = hood.edges[hood.edges["path"]]
    assert len(steps) >= 4
    assert np.isfinite(hood.nodes[["x", "y"]].to_numpy()).all()


def test_neighborhood_refuses_an_unknown_document(reader):
    with pytest.raises(IcpError, match="no document 999"):
        explore.neighborhood(reader, 999, 5)


def test_compare_runs_lists_other_methods_with_the_same_parameters(tmp_path):
    path = synthetic_workspace(tmp_path)
    with Workspace(path) as ws:
        params = Params.from_dict(ws.load_settings())
        pipeline.run(ws, params.updated(order="original"))
        pipeline.run(ws, params.updated(order="original", k=3))  # other k: not compared
        pipeline.run(ws, params)
        latest = stages.latest_metrics(ws, params)
        table = explore.compare_runs(latest, explore.metrics_history(ws))
        original = stages.latest_metrics(ws, params.updated(order="original"))
    assert list(table.columns) == [f"{DEFAULT_ORDER} (current)", "random packing", "original"]
    assert list(table.index) == list(explore.COMPARED_METRICS)
    assert table.at["adjacent_sim_mean", "original"] == original["adjacent_sim_mean"]
    assert table.at["jump_rate", "random packing"] == latest["random"]["jump_rate"]
