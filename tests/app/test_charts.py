"""app.charts: figures from frames; document text in hover labels is escaped."""

import numpy as np
import pandas as pd

from app import charts
from tests.app.workspaces import HOSTILE_TEXT


def points(n: int = 6) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "doc": np.arange(n),
            "x": np.linspace(0, 1, n),
            "y": np.linspace(1, 0, n),
            "id": [f"doc-{i}" for i in range(n)],
            "label": ["a", "b"] * (n // 2),
            "context": [0, 0, 1, 1, None, 2][:n],
            "status": ["kept"] * (n - 1) + ["duplicate"],
            "preview": [HOSTILE_TEXT] + ["plain"] * (n - 1),
        }
    )


def test_hover_text_escapes_markup():
    text = charts.hover_text(points())[0]
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert "&lt;b&gt;tag&lt;/b&gt;" in text


def test_map_colours_and_path():
    frame = points()
    by_status = charts.document_map(frame, "status")
    assert [t.name for t in by_status.data] == ["kept", "duplicate"]
    assert sum(len(t.x) for t in by_status.data) == len(frame)
    path = frame.iloc[:4].assign(slot=range(4), jump=[None, False, True, False])
    with_path = charts.document_map(frame, "context", path, highlight=[0])
    names = [t.name for t in with_path.data]
    assert names == [
        "other documents",  # grey
        "context 0",
        "path",
        "jump (not a kNN edge)",
        "documents in order",
    ]
    jump_trace = with_path.data[3]
    assert list(jump_trace.x) == [frame.x[1], frame.x[2], None]  # the step into slot 2
    assert with_path.data[-1].marker.symbol == ("star", "arrow", "arrow", "arrow")
    # step numbers are annotations on a white ground, one per step here
    assert [a.text for a in with_path.layout.annotations] == ["1", "2", "3", "4"]


def test_labels_beyond_the_palette_are_grouped_and_said(tmp_path):
    frame = pd.DataFrame(
        {
            "doc": range(30),
            "x": 0.0,
            "y": 0.0,
            "id": "d",
            "context": 0,
            "status": "kept",
            "preview": "",
            "label": [f"l{i}" for i in range(30)],
        }
    )
    names = [t.name for t in charts.document_map(frame, "label").data]
    assert len(names) == charts.MAX_LABEL_COLORS + 1 and names[-1] == "10 other labels"


def test_similarity_histogram_has_both_distributions():
    fig = charts.similarity_histogram(np.array([0.5, 0.6]), np.array([0.1, 0.2]), "icp")
    assert [t.name for t in fig.data] == ["icp (current)", "random packing"]


def test_graph_names_sit_above_the_step_arrows_on_a_backing():
    nodes = pd.DataFrame(
        {
            "doc": [0, 1, 2, 3],
            "hop": [0, 1, 1, 2],
            "x": [0.0, 1.0, 0.0, 1.0],
            "y": [0.0, 0.0, 1.0, 1.0],
            "id": ["src/a<b>", "src/b", "src/c", "src/far"],
            "label": None,
            "context": 0,
            "preview": "",
        }
    )
    edges = pd.DataFrame(
        {
            "source": [0, 2, 1],
            "target": [1, 1, 3],
            "sim": [0.9, 0.6, 0.4],
            "knn": True,
            "path": [True, True, False],
            "jump": False,
        }
    )
    fig = charts.neighborhood_figure(nodes, edges, center=0)
    annotations = list(fig.layout.annotations)
    arrows = [a for a in annotations if a.showarrow]
    names = [a for a in annotations if not a.showarrow]
    assert len(arrows) == 2
    # drawn after every arrow (later annotations paint on top), escaped, 2-hop ones left out
    assert annotations.index(names[0]) > max(annotations.index(a) for a in arrows)
    assert [a.text for a in names] == ["a&lt;b&gt;", "b", "c"]
    assert all(a.bgcolor for a in names)
