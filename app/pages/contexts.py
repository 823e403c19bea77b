"""Contexts: each context's documents in order, with similarity, jumps and full text."""

import streamlit as st

from app import data, state

ws = state.page_setup()
st.title("Contexts")
summary = data.contexts(ws)

query = st.text_input(
    "Search documents by id, number or text",
    key="context_query",
    placeholder="e.g. sqlite3, pydocs:library/json.html, 42",
)
if query:
    matches = data.annotate(ws, data.find_documents(ws, query)[["doc"]])
    in_contexts = matches["context"].dropna().astype(int).unique()
    st.caption(
        f"{len(matches):,} matching documents (first 200) in {len(in_contexts):,} contexts"
        + ("; removed documents have no context" if matches["context"].isna().any() else "")
    )
    st.dataframe(
        matches[["doc", "id", "label", "status", "context", "preview"]],
        hide_index=True,
        width="stretch",
        height=180,
    )
    summary = summary[summary["context"].isin(in_contexts)]
if summary.empty:
    st.info("No context holds a matching document.")
    st.stop()

shown = summary["context"].tolist()
if st.session_state.get("context") not in shown:
    st.session_state["context"] = shown[0]


def _pick_from_table() -> None:
    rows = st.session_state["context_table"].selection.rows
    if rows:
        st.session_state["context"] = st.session_state["_context_rows"][rows[0]]


st.session_state["_context_rows"] = shown
st.dataframe(
    summary,
    key="context_table",
    on_select=_pick_from_table,
    selection_mode="single-row",
    hide_index=True,
    width="stretch",
    height=260,
    column_config={
        "fill": st.column_config.ProgressColumn("fill", format="percent", min_value=0, max_value=1),
        "mean_sim": st.column_config.NumberColumn("mean sim", format="%.3f"),
        "label_share": st.column_config.NumberColumn("top label share", format="percent"),
        "top_label": "top label",
        "first_id": "first document",
        "n_docs": "documents",
    },
)
by_context = summary.set_index("context")
# labels name only the number: the browser keeps a shown label until the choice changes, so
# anything that a re-run changes (document counts) would go stale in it
context = st.selectbox(
    "Context (or click a row above)", shown, key="context", format_func=lambda c: f"context {c}"
)
row = by_context.loc[context]
mean_sim = "–" if row["mean_sim"] != row["mean_sim"] else f"{row['mean_sim']:.3f}"
st.subheader(f"Context {context}")
st.markdown(
    f"{state.plural(int(row['n_docs']), 'document')} · {int(row['tokens']):,} tokens "
    f"({row['fill']:.0%} of {ws.params.context_length:,}) · mean similarity to the previous "
    f"document {mean_sim} · {state.plural(int(row['jumps']), 'jump')} · k = {ws.params.k}, "
    f"order = {ws.params.order}"
)
pieces = data.context_documents(ws, context)
pieces.insert(
    1,
    "step",
    [
        "start" if s == 0 else ("↯ jump" if j else "→")
        for s, j in zip(pieces["slot"], pieces["jump"], strict=True)
    ],
)
pieces["part"] = pieces["part"].fillna("")
st.dataframe(
    pieces.drop(columns=["jump"]),
    hide_index=True,
    width="stretch",
    height=min(38 + 35 * len(pieces), 760),
    column_config={
        "slot": st.column_config.NumberColumn("#", format="%d"),
        "sim_to_prev": st.column_config.ProgressColumn(
            "sim to previous", format="%.3f", min_value=0.0, max_value=1.0
        ),
        "tokens": st.column_config.NumberColumn("tokens here"),
        "doc_tokens": st.column_config.NumberColumn("document tokens"),
        "part": "split part",
        "id": st.column_config.TextColumn("id", width="medium"),
        "preview": st.column_config.TextColumn("first line", width="large"),
    },
)
st.caption(
    "→ the next document is a kNN neighbour of the previous one; ↯ jump: it is not (the "
    "walk ran out of unvisited neighbours and restarted); a split part continues in another "
    "context."
)
doc = st.selectbox(
    "Full text of",
    pieces["doc"].tolist(),
    key="context_doc",
    format_func=lambda d: (
        f"{int(pieces.set_index('doc').at[d, 'slot']) + 1}. {pieces.set_index('doc').at[d, 'id']}"
    ),
)
st.session_state["focus_doc"] = int(doc)
st.code(data.document_text(ws, doc), language=None, wrap_lines=True, height=360)
