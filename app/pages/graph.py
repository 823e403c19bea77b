"""Neighbour graph: one document's kNN neighbourhood, with the ordering's steps through it."""

import streamlit as st

from app import charts, data, state

GRAPH_FANOUT = 3

ws = state.page_setup()
st.title("Neighbour graph")


def _recenter() -> None:
    """Clicking a node makes it the chosen document."""
    points = st.session_state["neighborhood"].selection.points
    if points and points[0].get("customdata") is not None:
        clicked = points[0]["customdata"]
        st.session_state["focus_doc"] = int(clicked[0] if isinstance(clicked, list) else clicked)
        st.session_state["graph_query"] = ""


controls = st.columns([3, 1])
query = controls[0].text_input(
    "Document: id, number or words from its text",
    key="graph_query",
    placeholder="empty: the document last opened on another page",
)
hops = controls[1].radio("Hops", [1, 2], horizontal=True, key="graph_hops")
if query:
    matches = data.find_documents(ws, query)
    if matches.empty:
        st.warning(f"No document matches {query!r}.")
        st.stop()
    doc = st.selectbox(
        f"{len(matches)} matching documents",
        matches["doc"].tolist(),
        key="graph_doc",
        format_func=lambda d: str(matches.set_index("doc").at[d, "id"]),
    )
else:
    doc = st.session_state.get("focus_doc", 0)
doc = int(doc)
# the second hop shows each neighbour's strongest few; "Show more" widens it
fanout = st.session_state.setdefault("graph_fanout", GRAPH_FANOUT)
hood = data.neighborhood(ws, doc, hops, fanout if hops > 1 else None)
nodes = data.annotate(ws, hood.nodes)
center = nodes.set_index("doc").loc[doc]
st.text(
    f"{center['id']}  ·  {center['label'] or '-'}  ·  {center['status']}  ·  "
    + (
        f"context {int(center['context'])}"
        if center["context"] == center["context"]
        else "not in any context"
    )
)
if hops > 1:
    more, note = st.columns([1, 4])
    if fanout < ws.params.k and more.button("Show more", key="graph_more"):
        st.session_state["graph_fanout"] = min(ws.params.k, fanout + GRAPH_FANOUT)
        st.rerun()
    note.caption(
        f"Second hop: each neighbour's {min(fanout, ws.params.k)} strongest of {ws.params.k} "
        f"({len(nodes)} documents)" + ("; cut to stay readable." if hood.truncated else ".")
    )
st.plotly_chart(
    charts.neighborhood_figure(nodes, hood.edges, doc),
    key="neighborhood",
    on_select=_recenter,
    selection_mode="points",
)
st.caption(
    f"k = {ws.params.k}: each document links to its {ws.params.k} most similar documents "
    "(grey, thicker = more similar; numbers = similarity to the chosen document). Orange "
    "arrows: consecutive documents in the ordering; red dashed: a jump, a step that is not a "
    "kNN edge. Diamonds: documents on the path around the chosen one that are not its "
    "neighbours. Click a node to make it the chosen document."
)
edges = hood.edges
touching = edges[(edges["source"] == doc) | (edges["target"] == doc)].copy()
touching["doc"] = touching["source"].where(touching["target"] == doc, touching["target"])
touching["direction"] = [
    ("before it" if t == doc else "after it") if p else ""
    for t, p in zip(touching["target"], touching["path"], strict=True)
]
table = data.annotate(ws, touching[["doc", "sim", "knn", "direction", "jump"]])
table["same context"] = table["context"] == center["context"]
st.subheader("Its neighbours")
st.dataframe(
    table.sort_values("sim", ascending=False)[
        ["doc", "id", "sim", "knn", "direction", "jump", "same context", "label", "preview"]
    ],
    hide_index=True,
    width="stretch",
    column_config={
        "sim": st.column_config.ProgressColumn(
            "similarity", format="%.3f", min_value=0, max_value=1
        ),
        "knn": "kNN edge",
        "direction": "on the path",
    },
)
with st.expander("Full text of the chosen document"):
    st.code(data.document_text(ws, doc), language=None, wrap_lines=True, height=360)
