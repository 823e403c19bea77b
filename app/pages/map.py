"""Map: every document placed by UMAP over the kNN graph; a context's path drawn on top."""

import streamlit as st

from app import charts, data, progress, state

# scattergl draws this many points smoothly in a browser; above it the map draws a sample
MAP_MAX_POINTS = 60_000

ws = state.page_setup()
st.title("Map")
coords = data.layout(ws)
if coords is None:
    st.info(
        "No map for the current kNN lists yet. It is computed once per embedding set and "
        f"neighbour search (UMAP over the stored graph; about {max(10, ws.n_documents // 200)} s "
        "here) and reused for every k, ordering and packing."
    )
    if st.button("Compute the map", type="primary"):
        progress.start_job(
            {
                "workspace": str(ws.path),
                "params": ws.params.to_dict(),
                "until": "layout",
                "description": "Computing the map (UMAP over the stored kNN graph)",
            }
        )
        st.rerun()
    st.stop()

points = data.annotate(ws, coords)
controls = st.columns([2, 3])
color_by = controls[0].radio(
    "Colour by",
    ["label", "context", "status"],
    horizontal=True,
    key="map_color",
    format_func={"label": "label", "context": "context", "status": "duplicate status"}.get,
)
contexts = data.contexts(ws)
path_context = controls[1].selectbox(
    "Draw a context's path",
    [None] + contexts["context"].tolist(),
    key="map_context",
    format_func=lambda c: "none" if c is None else f"context {c}",
)
drawn = points
if len(points) > MAP_MAX_POINTS:
    drawn = points.sample(MAP_MAX_POINTS, random_state=0)
    st.info(
        f"Drawing a random sample of {MAP_MAX_POINTS:,} of {len(points):,} documents; "
        "a context's path and the documents you select are always complete."
    )
path = None
if path_context is not None:
    path = data.context_documents(ws, path_context).merge(coords, on="doc")
fig = charts.document_map(drawn, color_by, path)
event = st.plotly_chart(
    fig,
    key="map_selection",
    on_select="rerun",
    selection_mode=("points", "box", "lasso"),
    config={"scrollZoom": True},
)
st.caption(
    "Lasso or box-select points (or click one) to list those documents. Numbers on a path "
    "are the documents' places in the context; arrows point in reading order, ★ is the "
    "first, dashed red steps are jumps; the map zooms to the path (double-click to see all). "
    + data.help_text("map")
)

selected = (
    sorted(
        {
            int(p["customdata"][0] if isinstance(p["customdata"], list) else p["customdata"])
            for p in event.selection.points
            if p.get("customdata") is not None
        }
    )
    if event and event.selection
    else []
)
if selected:
    rows = points[points["doc"].isin(selected)]
    st.subheader(f"{len(rows):,} selected documents")
    st.dataframe(
        rows[["doc", "id", "label", "status", "context", "slot", "preview"]],
        hide_index=True,
        width="stretch",
        height=240,
    )
    doc = st.selectbox(
        "Full text of",
        rows["doc"].tolist(),
        key="map_doc",
        format_func=lambda d: str(rows.set_index("doc").at[d, "id"]),
    )
    st.session_state["focus_doc"] = int(doc)
    st.code(data.document_text(ws, doc), language=None, wrap_lines=True, height=300)
