"""Map: every document placed by UMAP over the kNN graph; a context's path drawn on top."""

import streamlit as st

from app import charts, data, progress, state

# scattergl draws this many points smoothly in a browser; above it the map draws a sample
MAP_MAX_POINTS = 60_000

ws = state.page_setup()
st.title("Map")
coords = data.layout(ws)
if coords is None:
    # computed in the background as soon as it is missing; this page follows its progress
    seconds = data.stage_seconds(ws).get("layout", 30.0)
    st.info(
        "Computing the map for the current neighbour lists (UMAP over the stored graph, "
        f"about {seconds:.0f} s here). It is reused for every k up to the stored depth, "
        "ordering and packing."
    )
    progress.start_job(
        {
            "workspace": str(ws.path),
            "params": ws.params.to_dict(),
            "until": "layout",
            "description": "Computing the map (UMAP over the stored kNN graph)",
        },
        {"layout": seconds},
    )
    progress.follow_job(ws.path)

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
highlight = None
if color_by == "context":
    default = [path_context] if path_context is not None else contexts["context"].head(3).tolist()
    highlight = st.multiselect(
        "Contexts in colour (the rest grey)",
        contexts["context"].tolist(),
        default=default,
        key="map_highlight",
        format_func=lambda c: f"context {c}",
        max_selections=len(charts.PALETTE),
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
fig = charts.document_map(drawn, color_by, path, highlight)
event = st.plotly_chart(
    fig,
    key="map_selection",
    on_select="rerun",
    selection_mode=("points", "box", "lasso"),
    config={"scrollZoom": True},
)
st.caption(
    "Lasso or box-select points (or click one) to list those documents. Numbers on a path "
    "are the documents' places in the context (at most 30 shown); arrows point in reading "
    "order, ★ is the first, dashed red steps are jumps; the map zooms to the path "
    "(double-click to see all). " + data.help_text("map")
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
