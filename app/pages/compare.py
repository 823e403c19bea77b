"""Compare: the applied parameters next to another ordering method, k, context length or pack
policy (or random packing) on the same corpus: metric deltas, similarity histograms, and the
context that holds the same document under each."""

import pandas as pd
import streamlit as st

from app import charts, data, jobs, progress, state
from icp_core import evaluate, explore, pack
from icp_core.params import Params
from icp_core.traverse import METHODS

ws = state.page_setup()
st.title("Compare")
p = ws.params
st.caption(
    "The applied parameters (left) against another setting (right), computed in memory from "
    "the stored neighbours and token counts; nothing is written. To keep one, set it in the "
    "sidebar and Apply."
)

choices = [explore.RANDOM_PACKING, *(m for m in METHODS if m != p.order), p.order]
controls = st.columns([2, 1, 1, 1])
other_order = controls[0].selectbox("Compare with (ordering)", choices, key="compare_order")
is_random = other_order == explore.RANDOM_PACKING
other_k = controls[1].number_input(
    "k", 1, max(1, data.knn_depth(ws)), value=p.k, key="compare_k", disabled=is_random
)
other_length = controls[2].number_input(
    "Context length", 32, 1_048_576, value=p.context_length, step=256, key="compare_length",
    disabled=is_random,
)  # fmt: skip
other_pack = controls[3].selectbox(
    "Pack policy", list(pack.PACK_MODES), index=list(pack.PACK_MODES).index(p.pack),
    key="compare_pack", disabled=is_random,
)  # fmt: skip
other = p if is_random else p.updated(
    order=other_order, k=int(other_k), context_length=int(other_length), pack=other_pack
)  # fmt: skip
name = (
    explore.RANDOM_PACKING
    if is_random
    else f"{other.order} · k = {other.k} · L = {other.context_length:,} · {other.pack}"
)
why_not = None if is_random else data.comparable(ws, other)
if why_not:
    st.warning(f"Cannot compare in memory: {why_not}.")
    st.stop()
if not is_random and other == p:
    st.info("That is the applied setting; change the ordering, k, length or pack policy above.")
    st.stop()

current, alternative = data.compare(ws, name, other)
here = f"applied: {p.order} · k = {p.k} · L = {p.context_length:,} · {p.pack}"

st.subheader("Metrics")
rows = []
for key, (label, higher_is_better) in charts.METRIC_NAMES.items():
    a, b = current.metrics.get(key), alternative.metrics.get(key)
    delta = None if a is None or b is None else b - a
    better = None if delta is None or abs(delta) < 1e-9 else (delta > 0) == higher_is_better
    rows.append(
        {
            "metric": label,
            "applied": a,
            name: b,
            "difference (right − left)": delta,
            "right is": "–" if better is None else ("better" if better else "worse"),
        }
    )
table = pd.DataFrame(rows)
st.dataframe(
    table.style.format("{:+.3f}", subset=["difference (right − left)"], na_rep="–").format(
        "{:.3f}", subset=["applied", name], na_rep="–"
    ),
    hide_index=True,
    width="stretch",
)
st.caption(
    f"{state.plural(current.packing.n_contexts, 'context')} applied · "
    f"{state.plural(alternative.packing.n_contexts, 'context')} with {name}."
)

st.subheader("Adjacent similarity")
st.plotly_chart(
    charts.similarity_histogram(
        current.adjacent_sims, alternative.adjacent_sims, p.order, names=(here, name)
    ),
    key="compare_histogram",
)

st.subheader("The same document under each")
docs = data.documents(ws)
focus = int(st.session_state.get("focus_doc", current.packing.doc[0]))
if focus not in set(current.packing.doc.tolist()):
    focus = int(current.packing.doc[0])
query = st.text_input(
    "Document: id, number or words from its text",
    key="compare_query",
    placeholder=f"empty: {docs.set_index('doc').at[focus, 'id']}",
)
if query:
    found = data.find_documents(ws, query)
    if found.empty:
        st.warning(f"No document matches {query!r}; showing {focus}.")
    else:
        focus = int(found["doc"].iloc[0])
by_doc = docs.set_index("doc")
left, right = (explore.context_of(s, focus) for s in (current, alternative))
shared = set(left["doc"]) & set(right["doc"])


def _side(frame: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame(
        {
            "#": frame["slot"] + 1,
            "id": [by_doc.at[d, "id"] for d in frame["doc"]],
            "in both": ["●" if d in shared else "" for d in frame["doc"]],
            "first line": [by_doc.at[d, "preview"] for d in frame["doc"]],
        }
    )
    out.loc[frame["doc"].to_numpy() == focus, "in both"] = "★ chosen"
    return out


st.caption(
    f"{by_doc.at[focus, 'id']}: {state.plural(len(shared) - 1, 'other document')} share its "
    "context under both settings (●); ★ is the chosen document."
)
columns = st.columns(2)
for column, frame, title in ((columns[0], left, here), (columns[1], right, name)):
    column.markdown(f"**{title}** · context {frame.attrs.get('context', '–')}")
    column.dataframe(
        _side(frame), hide_index=True, width="stretch", height=min(38 + 35 * len(frame), 500),
        column_config={"first line": st.column_config.TextColumn(width="medium")},
    )  # fmt: skip

st.subheader("Every method × pack policy")
st.caption(
    "What the command line's evaluation (`icp eval`) computes: each ordering method with each "
    "pack policy, measured like the metrics above, with the share of the upper bounds on "
    "adjacent similarity each reaches. Kept in the workspace until the data changes."
)
evaluated = {"applied": p}
if (other.k, other.context_length) != (p.k, p.context_length):
    evaluated["compared"] = other


def _shown_above(params: Params, order: str, policy: str) -> str:
    """Which side of the comparison above a row of `params`' evaluation is ("" for neither)."""
    row = (params.k, params.context_length, order, policy)
    if row == (p.k, p.context_length, p.order, p.pack):
        return "applied"
    if not is_random and row == (other.k, other.context_length, other.order, other.pack):
        return "compared"
    return ""


headers = {key: header for key, header, _ in evaluate.COLUMNS}
frames, bounds = [], []
for side, params in evaluated.items():
    where = f"k = {params.k} · L = {params.context_length:,}"
    result = data.stored_evaluation(ws, params)
    if result is None:
        st.info(f"Not evaluated yet at {where} (the {side} setting).")
        if st.button(f"Evaluate {side} setting", key=f"evaluate_{side}"):
            progress.start_job(
                jobs.evaluation_spec(ws.path, params),
                progress.evaluation_plan(data.stage_seconds(ws)),
            )
            st.rerun()
        continue
    rows = pd.DataFrame(result["rows"])
    rows["setting"] = f"{side} · {where}"
    rows["shown above"] = [
        _shown_above(params, o, k) for o, k in zip(rows["order"], rows["pack"], strict=True)
    ]
    frames.append(rows[["setting", "order", "pack", "shown above", *list(headers)[2:]]])
    top1, matching = result["bounds"].get("top1_bound"), result["bounds"].get("two_matching_bound")
    bounds.append(
        f"{side} · {where}: top-1 {'–' if top1 is None else f'{top1:.3f}'}, 2-matching "
        f"{'–' if matching is None else f'{matching:.3f}'}"
    )
if frames:
    table = pd.concat(frames, ignore_index=True).rename(columns=headers)
    formats = {header: fmt for key, header, fmt in evaluate.COLUMNS[2:]}
    if len(frames) == 1:  # one setting: its name is in the caption, not on every row
        table = table.drop(columns="setting")
    identifying = [c for c in ("setting", "order", "pack", "shown above") if c in table.columns]
    st.dataframe(
        table.style.format(formats, na_rep="–"),
        hide_index=True,
        width="stretch",
        column_config={c: st.column_config.Column(pinned=True) for c in identifying},
    )
    st.caption(
        "“shown above”: the applied and the compared setting's rows. Upper bounds on adjacent "
        "similarity: " + "; ".join(bounds) + "."
    )
