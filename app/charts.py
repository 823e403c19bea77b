"""Figures: data frames in, plotly figures out. No Streamlit, no workspace access.

Hover texts carry document ids and first lines: they are HTML-escaped here because plotly
renders a subset of HTML in hover labels, and document text must always show as text.
"""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

# What each metric is called on screen (keys are the metrics JSON keys), and whether higher
# is better (for the sign of a delta).
METRIC_NAMES: dict[str, tuple[str, bool]] = {
    "adjacent_sim_mean": ("Adjacent similarity", True),
    "context_pairwise_sim_mean": ("Context pairwise similarity", True),
    "label_agreement": ("Label agreement", True),
    "jump_rate": ("Jump rate", False),
    "token_efficiency": ("Token efficiency", True),
    "context_cache_gain": ("Context cache gain (nats/word)", True),
}
CURRENT_COLOR = "#d62728"
RANDOM_COLOR = "#7f7f7f"
PATH_COLOR = "#ff7f0e"
PATH_LABELS = 30  # step numbers drawn on a map path at most
JUMP_COLOR = "#d62728"
STATUS_COLORS = {"kept": "#9ecae1", "duplicate": "#d62728", "near copy": "#ff7f0e"}
PALETTE = qualitative.Dark24
MAX_LABEL_COLORS = 20


def _escape(values: pd.Series, width: int = 90) -> list[str]:
    return [html.escape(str(v)[:width]) if v is not None else "" for v in values]


def hover_text(frame: pd.DataFrame) -> list[str]:
    """Escaped `id · label · context` and first line of each row, for hover labels."""
    ids = _escape(frame["id"], 70)
    labels = _escape(frame["label"].fillna("-"), 30) if "label" in frame else [""] * len(frame)
    previews = _escape(frame["preview"], 90) if "preview" in frame else [""] * len(frame)
    contexts = (
        [f"context {int(c)}" if pd.notna(c) else "removed" for c in frame["context"]]
        if "context" in frame
        else [""] * len(frame)
    )
    return [
        f"<b>{i}</b><br>{lab} · {ctx}<br>{pre}"
        for i, lab, ctx, pre in zip(ids, labels, contexts, previews, strict=True)
    ]


def similarity_histogram(
    current: np.ndarray, random: np.ndarray, method: str, names: tuple[str, str] | None = None
) -> go.Figure:
    """Overlaid histograms (share of pairs) of adjacent-document similarity, with the means;
    `names` labels the two (default: the current method and random packing)."""
    fig = go.Figure()
    bins = dict(start=-0.2, end=1.0, size=0.025)
    first, second = names or (f"{method} (current)", "random packing")
    for name, values, color in (
        (first, current, CURRENT_COLOR),
        (second, random, RANDOM_COLOR),
    ):
        fig.add_trace(
            go.Histogram(
                x=values,
                name=name,
                xbins=bins,
                histnorm="probability",
                marker_color=color,
                opacity=0.6,
            )
        )
        if len(values):
            fig.add_vline(x=float(np.mean(values)), line_color=color, line_dash="dash")
    fig.update_layout(
        barmode="overlay",
        xaxis_title="cosine similarity of consecutive documents in a context",
        yaxis_title="share of pairs",
        legend=dict(orientation="h", y=1.12, x=0),
        margin=dict(l=10, r=10, t=40, b=10),
        height=340,
    )
    return fig


def fill_histograms(contexts: pd.DataFrame, context_length: int) -> go.Figure:
    """Two panels: how full contexts are (tokens / L) and how many documents each holds."""
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("Fill (tokens / context length)", "Documents per context")
    )
    fig.add_trace(
        go.Histogram(
            x=contexts["fill"] * 100,
            xbins=dict(start=0, end=100, size=2.5),
            marker_color="#1f77b4",
            name="fill",
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Histogram(x=contexts["n_docs"], marker_color="#2ca02c", name="documents"), row=1, col=2
    )
    # a full context is 100%: the last bin ends there, and so does the axis
    fig.update_xaxes(title_text=f"% of {context_length:,} tokens", range=[0, 100], row=1, col=1)
    fig.update_xaxes(title_text="documents (pieces)", row=1, col=2)
    fig.update_yaxes(title_text="contexts", row=1, col=1)
    fig.update_layout(showlegend=False, margin=dict(l=10, r=10, t=40, b=10), height=300)
    return fig


def _color_groups(points: pd.DataFrame, color_by: str) -> list[tuple[str, pd.DataFrame, str]]:
    """(legend name, rows, colour) per trace."""
    if color_by == "status":
        return [
            (status, points[points["status"] == status], STATUS_COLORS.get(status, RANDOM_COLOR))
            for status in ("kept", "duplicate", "near copy")
            if (points["status"] == status).any()
        ]
    labels = points["label"].fillna("(none)")
    top = labels.value_counts().index[:MAX_LABEL_COLORS].tolist()
    groups = [
        (str(label), points[labels == label], PALETTE[i % len(PALETTE)])
        for i, label in enumerate(top)
    ]
    rest = ~labels.isin(top)
    if rest.any():
        groups.append((f"{labels[rest].nunique()} other labels", points[rest], "#c7c7c7"))
    return groups


def document_map(
    points: pd.DataFrame,
    color_by: str,
    path: pd.DataFrame | None = None,
    highlight: list[int] | None = None,
) -> go.Figure:
    """WebGL scatter of the map; `path` (x, y, slot, jump, in slot order) is drawn on top with
    arrows in reading order.

    Args:
        points: doc, x, y, id, label, context, status, preview.
        color_by: "label", "context" or "status".
        highlight: with color_by "context", the contexts drawn in colour (one legend entry
            each) over every other document in grey.
    """
    fig = go.Figure()
    if color_by == "context":
        chosen = [int(c) for c in (highlight or [])]
        in_chosen = points["context"].isin(chosen)
        groups = [("other documents", points[~in_chosen], "#d9d9d9")]
        for index, context in enumerate(chosen):
            rows = points[points["context"] == context]
            groups.append((f"context {context}", rows, PALETTE[index % len(PALETTE)]))
    else:
        groups = _color_groups(points, color_by)
    for name, rows, color in groups:
        fig.add_trace(
            go.Scattergl(
                x=rows["x"],
                y=rows["y"],
                mode="markers",
                name=name,
                marker=dict(size=5, color=color, opacity=0.75),
                customdata=rows["doc"],
                hovertext=hover_text(rows),
                hoverinfo="text",
            )
        )
    if path is not None and len(path):
        _add_path(fig, path)
        _zoom_to(fig, path, points)
    fig.update_layout(
        height=700,
        margin=dict(l=10, r=10, t=36, b=10),
        legend=dict(itemsizing="constant", font=dict(size=11)),
        xaxis=dict(visible=False),
        yaxis=dict(visible=False, scaleanchor="x"),
        dragmode="lasso",
        plot_bgcolor="white",
    )
    return fig


def _zoom_to(fig: go.Figure, path: pd.DataFrame, points: pd.DataFrame) -> None:
    """Frame the path, with room around it to see its neighbourhood (double-click zooms out)."""
    full = max(np.ptp(points["x"]), np.ptp(points["y"]), 1e-6)
    pad = max(0.15 * full, 0.3 * max(np.ptp(path["x"]), np.ptp(path["y"])))
    fig.update_xaxes(range=[path["x"].min() - pad, path["x"].max() + pad])
    fig.update_yaxes(range=[path["y"].min() - pad, path["y"].max() + pad])


def _line_trace(xs: list, ys: list, name: str, line: dict) -> go.Scatter:
    """Line segments (None-separated coordinates) as one legend entry, without hover."""
    return go.Scatter(x=xs, y=ys, mode="lines", name=name, hoverinfo="skip", line=line)


def _segments(path: pd.DataFrame, mask: np.ndarray) -> tuple[list, list]:
    """x, y lists of the steps into the rows where `mask` holds, separated by None."""
    xs, ys = [], []
    x, y = path["x"].to_numpy(), path["y"].to_numpy()
    for i in np.flatnonzero(mask):
        if i > 0:
            xs += [x[i - 1], x[i], None]
            ys += [y[i - 1], y[i], None]
    return xs, ys


def _add_path(fig: go.Figure, path: pd.DataFrame) -> None:
    jump = path["jump"].fillna(False).to_numpy(dtype=bool)
    for name, mask, color, dash in (
        ("path", ~jump, PATH_COLOR, "solid"),
        ("jump (not a kNN edge)", jump, JUMP_COLOR, "dash"),
    ):
        xs, ys = _segments(path, mask)
        if xs:
            fig.add_trace(_line_trace(xs, ys, name, dict(color=color, width=2.5, dash=dash)))
    # step numbers on a white ground, at most PATH_LABELS of them (first, last and evenly
    # spaced), so neighbouring steps do not print over one another
    every = max(1, -(-len(path) // PATH_LABELS))
    for i, (x, y, slot) in enumerate(zip(path["x"], path["y"], path["slot"], strict=True)):
        if i % every == 0 or i == len(path) - 1:
            fig.add_annotation(
                x=x, y=y, text=str(int(slot) + 1), showarrow=False, yshift=14,
                font=dict(size=12, color="black"), bgcolor="rgba(255,255,255,0.85)",
                bordercolor=PATH_COLOR, borderwidth=1, borderpad=1,
            )  # fmt: skip
    fig.add_trace(
        go.Scatter(
            x=path["x"],
            y=path["y"],
            mode="markers",
            name="documents in order",
            marker=dict(
                size=[20] + [14] * (len(path) - 1),
                symbol=["star"] + ["arrow"] * (len(path) - 1),
                angleref="previous",
                color=PATH_COLOR,
                line=dict(width=1, color="black"),
            ),
            customdata=path["doc"],
            hovertext=hover_text(path),
            hoverinfo="text",
        )
    )


def neighborhood_figure(nodes: pd.DataFrame, edges: pd.DataFrame, center: int) -> go.Figure:
    """The neighbourhood graph: kNN edges grey (width by similarity), path steps orange with an
    arrow, jumps dashed red; nodes coloured by hop, the chosen document a large star.

    Args:
        nodes: doc, hop, x, y, id, label, context, preview.
        edges: source, target, sim, knn, path, jump.
    """
    position = nodes.set_index("doc")[["x", "y"]]
    fig = go.Figure()
    knn_only = edges[~edges["path"]]
    for low, high, width in ((-1.0, 0.5, 0.6), (0.5, 0.7, 1.4), (0.7, 1.01, 2.6)):
        band = knn_only[(knn_only["sim"] >= low) & (knn_only["sim"] < high)]
        xs, ys = [], []
        for a, b in zip(band["source"], band["target"], strict=True):
            xs += [position.at[a, "x"], position.at[b, "x"], None]
            ys += [position.at[a, "y"], position.at[b, "y"], None]
        if xs:
            name = f"kNN edge, sim {max(low, 0):.1f}–{min(high, 1):.1f}"
            fig.add_trace(_line_trace(xs, ys, name, dict(color="#9e9e9e", width=width)))
    for is_jump, color, dash, name in (
        (False, PATH_COLOR, "solid", "ordering step"),
        (True, JUMP_COLOR, "dash", "jump (not a kNN edge)"),
    ):
        steps = edges[edges["path"] & (edges["jump"] == is_jump)]
        xs, ys = [], []
        for a, b in zip(steps["source"], steps["target"], strict=True):
            xs += [position.at[a, "x"], position.at[b, "x"], None]
            ys += [position.at[a, "y"], position.at[b, "y"], None]
            fig.add_annotation(
                x=position.at[b, "x"],
                y=position.at[b, "y"],
                ax=position.at[a, "x"],
                ay=position.at[a, "y"],
                xref="x",
                yref="y",
                axref="x",
                ayref="y",
                showarrow=True,
                arrowhead=3,
                arrowsize=1.4,
                arrowwidth=2,
                arrowcolor=color,
                standoff=8,
                text="",
            )
        if xs:
            fig.add_trace(_line_trace(xs, ys, name, dict(color=color, width=3, dash=dash)))
    # similarity on hover at each edge's midpoint, and printed for the chosen document's edges
    mid_x = [
        (position.at[a, "x"] + position.at[b, "x"]) / 2
        for a, b in zip(edges["source"], edges["target"], strict=True)
    ]
    mid_y = [
        (position.at[a, "y"] + position.at[b, "y"]) / 2
        for a, b in zip(edges["source"], edges["target"], strict=True)
    ]
    touches = ((edges["source"] == center) | (edges["target"] == center)).to_numpy()
    fig.add_trace(
        go.Scatter(
            x=mid_x,
            y=mid_y,
            mode="markers+text",
            showlegend=False,
            marker=dict(size=6, color="rgba(0,0,0,0)"),
            text=[f"{s:.2f}" if t else "" for s, t in zip(edges["sim"], touches, strict=True)],
            textfont=dict(size=10, color="#424242"),
            hovertext=[f"similarity {s:.3f}" for s in edges["sim"]],
            hoverinfo="text",
        )
    )
    styles = {
        0: ("chosen document", "star", 22, "#d62728"),
        1: ("1 hop", "circle", 12, "#1f77b4"),
        2: ("2 hops", "circle", 8, "#9ecae1"),
        -1: ("on the path only", "diamond", 11, PATH_COLOR),
    }
    for hop, (name, symbol, size, color) in styles.items():
        rows = nodes[nodes["hop"] == hop]
        if len(rows):
            fig.add_trace(
                go.Scatter(
                    x=rows["x"],
                    y=rows["y"],
                    mode="markers",
                    name=name,
                    marker=dict(
                        size=size, symbol=symbol, color=color, line=dict(width=1, color="white")
                    ),
                    customdata=rows["doc"],
                    hovertext=hover_text(rows),
                    hoverinfo="text",
                )
            )
    # names on the chosen document, its neighbours and the path (2-hop ones on hover), as
    # annotations on a white backing: plotly draws annotations, the step arrows included,
    # above every trace, so a trace's text would sit under an arrow that crosses it
    named = nodes[nodes["hop"] != 2]
    for x, y, label in zip(
        named["x"], named["y"], _escape(named["id"].str.rsplit("/", n=1).str[-1], 32), strict=True
    ):
        fig.add_annotation(
            x=x,
            y=y,
            text=label,
            showarrow=False,
            yshift=-14,
            font=dict(size=10, color="#37474f"),
            bgcolor="rgba(255,255,255,0.85)",
        )
    fig.update_layout(
        height=620,
        margin=dict(l=10, r=10, t=10, b=10),
        xaxis=dict(visible=False),
        yaxis=dict(visible=False, scaleanchor="x"),
        plot_bgcolor="white",
        legend=dict(itemsizing="constant"),
    )
    return fig
