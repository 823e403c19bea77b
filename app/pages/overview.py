"""Overview: do the contexts hold related documents, compared with random packing?"""

import streamlit as st

from app import charts, data, state
from icp_core import explore

ws = state.page_setup()
st.title("Overview")
result = data.latest_metrics(ws)
random = result["random"]

tiles = list(charts.METRIC_NAMES.items())
for row in (tiles[:3], tiles[3:]):
    for column, (key, (name, higher_is_better)) in zip(st.columns(3), row, strict=True):
        value, baseline = result.get(key), random.get(key)
        column.metric(
            name,
            "n/a" if value is None else f"{value:.3f}",
            delta=None
            if value is None or baseline is None
            else f"{value - baseline:+.3f} vs random ({baseline:.3f})",
            delta_color="normal" if higher_is_better else "inverse",
            border=True,
        )

plural = state.plural
st.caption(
    f"{plural(result['n_documents'], 'document')} in · {result['n_kept']:,} kept · "
    f"{plural(result['n_duplicates'], 'duplicate')} removed · "
    f"{plural(result['n_rejected'], 'rejected row')} · "
    f"{plural(result['n_contexts'], 'context')} · every document exactly once: "
    f"{'yes' if result['every_doc_once'] else '**NO**'}"
)
if result["label_field"] is None:
    st.caption("No `label` field in the documents: label agreement is not measured.")

left, right = st.columns([1, 1])
with left:
    st.subheader("Adjacent similarity vs random packing")
    sims = data.adjacent_similarities(ws)
    st.plotly_chart(
        charts.similarity_histogram(sims["current"], sims["random"], ws.params.order),
        key="similarity_histogram",
    )
with right:
    st.subheader("Against random and other methods")
    table = explore.compare_runs(result, data.metrics_history(ws))
    table.index = [charts.METRIC_NAMES[key][0] for key in table.index]
    st.dataframe(
        table.style.format("{:.3f}", na_rep="–"),
        width="stretch",
        column_config={"_index": st.column_config.TextColumn("metric", pinned=True)},
    )
    st.caption(
        "Other methods appear once applied with the same k, context length, pack policy "
        "and dedup threshold (switch the ordering method in the sidebar), or put any two "
        "side by side on the Compare page."
    )

st.subheader("Contexts: fill and size")
st.plotly_chart(
    charts.fill_histograms(data.contexts(ws), ws.params.context_length), key="fill_histograms"
)

with st.expander("What these numbers mean"):
    st.markdown(data.help_text("metrics"))
with st.expander(f"Removed documents ({result['n_duplicates']:,})"):
    st.dataframe(data.removed(ws), hide_index=True, width="stretch")
with st.expander(f"Rejected input rows ({result['n_rejected']:,})"):
    st.dataframe(data.rejects(ws), hide_index=True, width="stretch")
with st.expander("Every parameter set computed so far"):
    history = data.metrics_history(ws)
    first = ["order", "k", "context_length", "pack", "dedup_threshold", "computed_at"]
    first = [c for c in first if c in history.columns]
    st.dataframe(
        history[first + [c for c in history.columns if c not in first]],
        hide_index=True,
        width="stretch",
        column_config={name: st.column_config.Column(pinned=True) for name in first[:4]},
    )
with st.expander("Stage runs (newest first)"):
    st.dataframe(data.stage_runs(ws), hide_index=True, width="stretch")
