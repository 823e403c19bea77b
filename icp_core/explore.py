"""Read-side views of a workspace for browsing: documents, where each one landed, contexts with
their documents in order, a document's kNN neighbourhood, and adjacent similarities next to
random packing. Everything here only reads (a read-only workspace is enough) and returns
pandas frames or numpy arrays ready to display; the Streamlit app is one caller.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from icp_core import metrics, pack, pipeline, stages, traverse
from icp_core.errors import IcpError
from icp_core.ingest import meta_field_path
from icp_core.params import Params
from icp_core.workspace import Workspace

PREVIEW_CHARS = 160
# Above this many nodes a 2-hop neighbourhood stops growing: a drawn graph stays readable.
NEIGHBORHOOD_MAX_NODES = 160

STATUS_KEPT = "kept"
STATUS_DUPLICATE = "duplicate"
STATUS_NEAR_COPY = "near copy"  # dropped by the `original` ordering's text filter
# A piece holding document text (see pack.Packing.content_pieces): not the lone separator a
# document leaves at the start of the next context when its tokens end on the boundary.
CONTENT_PIECE = "(c.token_end > c.token_start OR c.token_start = 0)"


def _label_sql(label_field: str | None) -> str:
    if label_field is None:
        return "NULL::VARCHAR"
    quoted = meta_field_path(label_field).replace("'", "''")
    return f"json_extract_string(meta, '{quoted}')"


def _preview_sql(column: str) -> str:
    """SQL for a text's first PREVIEW_CHARS characters, runs of whitespace folded into one."""
    return (
        f"left(regexp_replace(ltrim(left({column}, {PREVIEW_CHARS * 4})), '\\s+', ' ', 'g'), "
        f"{PREVIEW_CHARS})"
    )


def document_frame(ws: Workspace, label_field: str | None) -> pd.DataFrame:
    """One row per document, by doc: doc, id, label, n_chars and preview (its first
    characters with runs of whitespace folded into one space)."""
    return ws.arrow(
        f"""SELECT doc, id, {_label_sql(label_field)} AS label, length(text) AS n_chars,
                   {_preview_sql("text")} AS preview
            FROM documents ORDER BY doc"""
    ).to_pandas()


def placement_frame(ws: Workspace) -> pd.DataFrame:
    """One row per document, by doc: status (kept, duplicate, near copy), kept_doc and sim (the
    document a removed one copies), path position, sim_to_prev, is_jump, and the context and
    slot of its first piece (null when removed)."""
    return ws.arrow(
        f"""WITH removed AS (
                SELECT doc, kept_doc, sim, '{STATUS_DUPLICATE}' AS status FROM duplicates
                UNION ALL
                SELECT doc, kept_doc, sim, '{STATUS_NEAR_COPY}' AS status FROM order_drops),
            first_piece AS (
                SELECT doc, arg_min(context, token_start) AS context,
                       arg_min(slot, token_start) AS slot, count(*) AS n_pieces
                FROM contexts GROUP BY doc)
            SELECT d.doc, coalesce(r.status, '{STATUS_KEPT}') AS status, r.kept_doc,
                   r.sim AS duplicate_sim, o.position, o.sim_to_prev, o.is_jump,
                   p.context, p.slot, p.n_pieces
            FROM documents d LEFT JOIN removed r USING (doc) LEFT JOIN ordering o USING (doc)
            LEFT JOIN first_piece p USING (doc) ORDER BY d.doc"""
    ).to_pandas()


def _token_join(ws: Workspace) -> tuple[str, list]:
    """SQL joining each document to its token count under the tokenizer the pack stage used."""
    state = ws.stage_state("pack")
    if state is None:
        raise IcpError("no contexts yet; run `icp pack` (or `icp run`) first")
    return (
        """JOIN (SELECT text_hash, any_value(n_tokens) AS n_tokens FROM token_cache
                 WHERE tokenizer_key = ? GROUP BY text_hash) t USING (text_hash)""",
        [state["params"]["tokenizer_key"]],
    )


def context_summary(ws: Workspace, label_field: str | None) -> pd.DataFrame:
    """One row per context: n_docs, tokens, fill (tokens / context length), mean_sim (mean
    similarity of consecutive documents), jumps, top_label with label_share, first_id."""
    state = ws.stage_state("pack")
    if state is None:
        raise IcpError("no contexts yet; run `icp pack` (or `icp run`) first")
    length = int(state["params"]["context_length"])
    return ws.arrow(
        f"""WITH all_pieces AS (
                SELECT c.*, {CONTENT_PIECE} AS content,
                       row_number() OVER (PARTITION BY c.context, {CONTENT_PIECE} ORDER BY c.slot)
                       - 1 AS content_slot
                FROM contexts c),
            pieces AS (
                SELECT c.context, c.slot, c.doc, c.content,
                       c.token_end - c.token_start + c.sep_tokens AS tokens, d.id,
                       {_label_sql(label_field)} AS label,
                       CASE WHEN c.content AND c.content_slot > 0 THEN o.sim_to_prev END AS sim,
                       c.content AND c.content_slot > 0 AND o.is_jump AS jump
                FROM all_pieces c JOIN documents d USING (doc) LEFT JOIN ordering o USING (doc)),
            labels AS (
                SELECT context, label, count(*) AS n,
                       row_number() OVER (PARTITION BY context ORDER BY count(*) DESC, label)
                       AS rank
                FROM pieces WHERE content AND label IS NOT NULL GROUP BY context, label)
            SELECT p.context, count(*) FILTER (WHERE content) AS n_docs,
                   sum(tokens)::BIGINT AS tokens, sum(tokens) / {length} AS fill,
                   avg(sim) AS mean_sim, count(*) FILTER (WHERE jump) AS jumps,
                   any_value(l.label) AS top_label,
                   any_value(l.n) / count(*) FILTER (WHERE content) AS label_share,
                   arg_min(p.id, p.slot) FILTER (WHERE content) AS first_id
            FROM pieces p LEFT JOIN labels l ON l.context = p.context AND l.rank = 1
            GROUP BY p.context ORDER BY p.context"""
    ).to_pandas()


def context_documents(ws: Workspace, context: int, label_field: str | None) -> pd.DataFrame:
    """The pieces of one context in order: slot, doc, id, label, tokens (this piece, separator
    included), part ("2/2" for a document split across contexts), sim_to_prev and jump (the
    step from the previous document; null for the first slot), preview."""
    token_join, params = _token_join(ws)
    context = int(context)
    return ws.arrow(
        f"""WITH parts AS (
                SELECT doc, token_start,
                       row_number() OVER (PARTITION BY doc ORDER BY token_start) AS part,
                       count(*) OVER (PARTITION BY doc) AS parts
                FROM contexts c
                WHERE {CONTENT_PIECE}
                  AND doc IN (SELECT doc FROM contexts WHERE context = ?)),
            pieces AS (
                SELECT c.*, row_number() OVER (ORDER BY c.slot) - 1 AS content_slot
                FROM contexts c WHERE c.context = ? AND {CONTENT_PIECE})
            SELECT c.slot, c.doc, d.id, {_label_sql(label_field)} AS label,
                   c.token_end - c.token_start + c.sep_tokens AS tokens,
                   CASE WHEN pr.parts > 1 THEN pr.part || '/' || pr.parts END AS part,
                   t.n_tokens AS doc_tokens,
                   CASE WHEN c.content_slot > 0 THEN o.sim_to_prev END AS sim_to_prev,
                   CASE WHEN c.content_slot > 0 THEN o.is_jump END AS jump,
                   {_preview_sql("d.text")} AS preview
            FROM pieces c JOIN documents d USING (doc) {token_join}
            LEFT JOIN ordering o USING (doc)
            JOIN parts pr ON pr.doc = c.doc AND pr.token_start = c.token_start
            ORDER BY c.slot""",
        [context, context] + params,
    ).to_pandas()


def find_documents(
    ws: Workspace, query: str, label_field: str | None, limit: int = 200
) -> pd.DataFrame:
    """Documents whose id or text contains `query` (case-insensitive; a number also matches
    that doc), exact id matches first: doc, id, label, preview."""
    query = query.strip()
    if not query:
        return document_frame(ws, label_field).head(0)
    number = int(query) if query.isdigit() else -1
    return ws.arrow(
        f"""SELECT doc, id, {_label_sql(label_field)} AS label,
                   {_preview_sql("text")} AS preview
            FROM documents
            WHERE doc = ? OR id = ? OR contains(lower(id), lower(?))
                  OR contains(lower(text), lower(?))
            ORDER BY (doc = ? OR id = ?) DESC, doc LIMIT ?""",
        [number, query, query, query, number, query, limit],
    ).to_pandas()


def document_text(ws: Workspace, doc: int) -> str:
    """The full text of one document."""
    text = ws.scalar("SELECT text FROM documents WHERE doc = ?", [int(doc)])
    if text is None:
        raise IcpError(f"no document {doc} in {ws.path}")
    return text


def adjacent_similarities(ws: Workspace, params: Params) -> dict[str, np.ndarray]:
    """Cosine similarity of every pair of consecutive documents inside a context, for the
    stored contexts ("current") and for the random packing the metrics compare against
    ("random"): the distributions behind adjacent_sim_mean and random_adjacent_sim_mean."""
    state = ws.stage_state("pack")
    doc_tokens = stages.packed_document_tokens(ws)
    vectors = stages.read_vectors(ws)
    kept = stages.kept_documents(ws, include_order_drops=True)
    sep_tokens = len(state["params"].get("separator_ids") or [1])
    packed = {
        "current": stages.read_packing(ws),
        "random": stages.random_packing(kept, doc_tokens, params, sep_tokens),
    }
    result = {}
    for name, packing in packed.items():
        first, second = metrics.adjacent_pairs(packing)
        result[name] = metrics.pair_similarity(vectors, first, second)
    return result


def metrics_history(ws: Workspace) -> pd.DataFrame:
    """Every stored metrics row (one per parameter set), newest first, flattened."""
    if not ws.has_table("metrics"):
        return pd.DataFrame()
    table = ws.arrow("SELECT computed_at, result FROM metrics ORDER BY computed_at DESC")
    rows = []
    for computed_at, result in zip(
        table.column("computed_at").to_pylist(), table.column("result").to_pylist(), strict=True
    ):
        values = json.loads(result)
        random = values.pop("random", {})
        values["random_context_pairwise_sim_mean"] = random.get("context_pairwise_sim_mean")
        values["random_label_agreement"] = random.get("label_agreement")
        values["random_context_cache_gain"] = random.get("context_cache_gain")
        values["computed_at"] = computed_at
        rows.append(values)
    return pd.DataFrame(rows)


# The per-packing metrics, in the order they are shown (keys of the metrics JSON).
COMPARED_METRICS = (
    "adjacent_sim_mean",
    "context_pairwise_sim_mean",
    "label_agreement",
    "jump_rate",
    "token_efficiency",
    "context_cache_gain",
)


def compare_runs(latest: dict, history: pd.DataFrame) -> pd.DataFrame:
    """Metric rows (COMPARED_METRICS) by columns: the current run, random packing of the same
    documents, and each other ordering method stored with the same k, context length, pack
    policy and dedup threshold (its newest row)."""
    columns = {
        f"{latest['order']} (current)": [latest.get(key) for key in COMPARED_METRICS],
        "random packing": [latest["random"].get(key) for key in COMPARED_METRICS],
    }
    if len(history):
        same = history[
            (history["k"] == latest["k"])
            & (history["context_length"] == latest["context_length"])
            & (history["pack"] == latest["pack"])
            & (history["dedup_threshold"].fillna(-1) == (latest["dedup_threshold"] or -1))
            & (history["order"] != latest["order"])
        ]
        for _, row in same.drop_duplicates("order").iterrows():  # history is newest first
            columns[str(row["order"])] = [row.get(key) for key in COMPARED_METRICS]
    return pd.DataFrame(columns, index=list(COMPARED_METRICS), dtype="float64")


def removed_frame(ws: Workspace) -> pd.DataFrame:
    """Documents kept out of the contexts: id, kept_id (the copy that stays), sim, reason."""
    return ws.arrow(
        """SELECT r.doc, d.id, k.id AS kept_id, r.sim, r.reason FROM (
               SELECT * FROM duplicates UNION ALL SELECT * FROM order_drops) r
           JOIN documents d ON d.doc = r.doc JOIN documents k ON k.doc = r.kept_doc
           ORDER BY r.doc"""
    ).to_pandas()


def reject_frame(ws: Workspace, limit: int = 1000) -> pd.DataFrame:
    """Input rows that never became documents: source, line, id, reason, raw (first 200 chars)."""
    return ws.arrow(
        "SELECT source, line, id, reason, raw FROM rejects ORDER BY source, line LIMIT ?", [limit]
    ).to_pandas()


def stage_runs(ws: Workspace, limit: int = 40) -> pd.DataFrame:
    """The latest stage runs, newest first: stage, status (ran/skipped), seconds, ended_at."""
    return ws.arrow(
        """SELECT stage, status, round(seconds, 3) AS seconds, ended_at FROM stage_runs
           ORDER BY ended_at DESC LIMIT ?""",
        [limit],
    ).to_pandas()


@dataclass(frozen=True)
class Neighborhood:
    """A document's kNN neighbourhood, ready to draw.

    nodes: doc, hop (0 = the chosen document, 1, 2; -1 = reached only along the path), x, y.
    edges: source, target, sim (cosine), knn (an edge of the kNN graph), path (consecutive in
    the ordering, source first), jump (a path step that is not a kNN edge).
    truncated: the 2-hop expansion stopped at NEIGHBORHOOD_MAX_NODES.
    """

    nodes: pd.DataFrame
    edges: pd.DataFrame
    truncated: bool


def neighborhood(
    ws: Workspace, doc: int, k: int, hops: int = 1, path_steps: int = 2, fanout: int | None = None
) -> Neighborhood:
    """The chosen document, its kNN neighbours (k per document, `hops` = 1 or 2; beyond the
    first hop only each neighbour's `fanout` strongest, when given) and its
    `path_steps` predecessors and successors in the ordering, with every kNN edge and path step
    among them, laid out by networkx (Kamada-Kawai, edge length 1 - similarity).

    Raises:
        IcpError: no such document, or no kNN lists / ordering yet.
    """
    import networkx as nx

    doc, n_docs = int(doc), ws.n_documents()
    if not 0 <= doc < n_docs:
        raise IcpError(f"no document {doc}: choose 0..{n_docs - 1}")
    if not (ws.has_table("neighbors") and ws.has_table("ordering")):
        raise IcpError("no kNN lists or ordering yet; apply the parameters first")
    ids, sims = stages.read_neighbors(ws, k)
    hop = {doc: 0}
    frontier = [doc]
    truncated = False
    for depth in range(1, hops + 1):
        reached = []
        for node in frontier:
            row = ids[node][ids[node] >= 0]
            if depth > 1 and fanout is not None:
                row = row[:fanout]  # lists are sorted by similarity, strongest first
            for other in row.tolist():
                if other in hop:
                    continue
                if len(hop) >= NEIGHBORHOOD_MAX_NODES:
                    truncated = True
                    break
                hop[other] = depth
                reached.append(other)
        frontier = reached
    ordering = ws.arrow("SELECT doc, is_jump FROM ordering ORDER BY position")
    order = ordering.column("doc").to_numpy().astype(np.int64)
    position = np.full(n_docs, -1, dtype=np.int64)
    position[order] = np.arange(len(order))
    jump_into = np.zeros(n_docs, dtype=bool)
    jump_into[order] = ordering.column("is_jump").to_numpy(zero_copy_only=False)
    if position[doc] >= 0:
        around = order[max(0, position[doc] - path_steps) : position[doc] + path_steps + 1]
        for other in around.tolist():
            hop.setdefault(other, -1)
    members = list(hop)
    in_graph = set(members)
    weight: dict[tuple[int, int], float] = {}  # undirected kNN edges, the larger listed sim
    for node in members:
        for other, sim in zip(ids[node].tolist(), sims[node].tolist(), strict=True):
            if other in in_graph:
                pair = (min(node, other), max(node, other))
                weight[pair] = max(weight.get(pair, -1.0), float(sim))
    steps = [
        (node, int(order[position[node] + 1]))
        for node in members
        if 0 <= position[node] < len(order) - 1 and int(order[position[node] + 1]) in in_graph
    ]
    vectors = stages.read_vectors(ws)
    rows = []  # path steps first (direction kept), then the remaining kNN edges
    for a, b in steps:
        pair = (min(a, b), max(a, b))
        on_knn = pair in weight
        sim = weight.pop(pair) if on_knn else float(vectors[a] @ vectors[b])
        rows.append((a, b, sim, on_knn, True, bool(jump_into[b])))
    rows += [(a, b, sim, True, False, False) for (a, b), sim in weight.items()]
    edges = pd.DataFrame(rows, columns=["source", "target", "sim", "knn", "path", "jump"])
    graph = nx.Graph()
    graph.add_nodes_from(members)
    # Kamada-Kawai places nodes so that drawn distances follow graph distances, with
    # 1 - similarity as edge length: similar documents sit close, and the layout spreads
    # evenly (a spring layout crowds the chosen document's neighbours into one knot)
    graph.add_weighted_edges_from(
        ((a, b, 1.05 - s) for a, b, s in zip(edges.source, edges.target, edges.sim, strict=True)),
        weight="length",
    )
    start = nx.circular_layout(graph)  # deterministic start: the same picture every time
    coords = nx.kamada_kawai_layout(graph, weight="length", pos=start)
    nodes = pd.DataFrame(
        {
            "doc": members,
            "hop": [hop[d] for d in members],
            "x": [float(coords[d][0]) for d in members],
            "y": [float(coords[d][1]) for d in members],
        }
    )
    return Neighborhood(nodes, edges, truncated)


# ---------------------------------------------------------------------------------------------
# what a change of parameters re-runs, and for how long
# ---------------------------------------------------------------------------------------------

# Seconds a stage takes when this workspace has never run it (2,000 documents, 2 cores).
DEFAULT_STAGE_SECONDS = {
    "embed": 90.0,
    "knn": 2.0,
    "dedup": 0.5,
    "order": 0.5,
    "pack": 1.0,
    "metrics": 1.0,
    "layout": 30.0,
}


def stages_to_rerun(old: Params, new: Params, knn_depth: int, until: str = "metrics") -> list[str]:
    """The stages (in run order, up to `until`) whose stored output `new` does not serve.

    A stage re-runs when a field it reads (`pipeline.STAGES[*].reads`) changed or a stage
    upstream of it re-runs; kNN lists serve any k up to `knn_depth` (the depth they were
    searched at), so a k above it searches again, and the map (built from the lists) follows.
    """
    rerun: list[str] = []
    for stage in pipeline.STAGES:
        changed = any(getattr(old, name) != getattr(new, name) for name in stage.reads)
        if stage.name == "knn" and new.k > knn_depth:
            changed = True
        if changed or any(up in rerun for up in stage.upstream):
            rerun.append(stage.name)
        if stage.name == until:
            break
    return rerun


def stage_seconds(ws: Workspace) -> dict[str, float]:
    """Seconds each stage took the last time it ran on this workspace (DEFAULT_STAGE_SECONDS
    for those it never ran)."""
    seconds = dict(DEFAULT_STAGE_SECONDS)
    if ws.has_table("stage_runs"):
        table = ws.arrow(
            """SELECT stage, arg_max(seconds, ended_at) AS seconds FROM stage_runs
               WHERE status = 'ran' GROUP BY stage"""
        )
        for stage, value in zip(
            table.column("stage").to_pylist(), table.column("seconds").to_pylist(), strict=True
        ):
            seconds[stage] = float(value)
    return seconds


def knn_depth(ws: Workspace) -> int:
    """How many neighbours per document the stored kNN lists hold (0: none stored)."""
    state = ws.stage_state("knn")
    return int((state or {}).get("params", {}).get("k_max", 0) or 0)


# ---------------------------------------------------------------------------------------------
# two settings side by side (the app's Compare page)
# ---------------------------------------------------------------------------------------------

RANDOM_PACKING = "random packing"


@dataclass(frozen=True)
class Setting:
    """One side of a comparison: its name, parameters and, in memory, its contexts."""

    name: str
    params: Params
    packing: Any  # pack.Packing
    metrics: dict[str, Any]
    adjacent_sims: np.ndarray


def comparable(ws: Workspace, params: Params, other: Params) -> str | None:
    """Why `other` cannot be computed in memory next to the stored `params` (None: it can).
    The stored kNN lists, duplicates and token counts serve other orderings, k up to the
    stored depth, context lengths and pack policies; a new dedup threshold or tokenizer needs
    Apply."""
    if other.k > knn_depth(ws):
        return f"k = {other.k} is above the {knn_depth(ws)} stored neighbours; Apply it first"
    for name in ("dedup_threshold", "tokenizer", "separator", "model", "index"):
        if getattr(other, name) != getattr(params, name):
            return f"a different {name.replace('_', ' ')} needs Apply (sidebar) first"
    return None


def compare_settings(ws: Workspace, params: Params, others: dict[str, Params]) -> list[Setting]:
    """The stored contexts (named "current") and, computed in memory without writing, each of
    `others` (RANDOM_PACKING: the metrics' random baseline), measured the same way."""
    doc_tokens = stages.packed_document_tokens(ws)
    vectors = stages.read_vectors(ws)
    ids, sims = stages.read_neighbors(ws)
    kept = stages.kept_documents(ws, include_order_drops=True)
    sep_tokens = len(ws.stage_state("pack")["params"].get("separator_ids") or [1])
    labels = stages.read_labels(ws, stages.resolve_label_field(ws, params.label_field))
    texts = ws.arrow("SELECT text FROM documents ORDER BY doc").column("text").to_pylist()
    packings = {"current": (params, stages.read_packing(ws))}
    for name, other in others.items():
        if name == RANDOM_PACKING:
            packing = stages.random_packing(kept, doc_tokens, params, sep_tokens)
            packings[name] = (params.updated(order="random"), packing)
            continue
        order = traverse.traverse_kept(ids, sims, kept, other.k, other.order, other.seed)
        packings[name] = (
            other,
            pack.pack_contexts(
                order, doc_tokens, other.context_length, other.pack, sep_tokens, other.shuffle,
                other.seed,
            ),
        )  # fmt: skip
    result, scorings = [], {}
    for name, (setting, packing) in packings.items():
        if setting.k not in scorings:
            scorings[setting.k] = metrics.KeptScoring.build(ids, sims, kept, setting.k, texts)
        measured = scorings[setting.k].measure(
            packing, vectors, doc_tokens, setting.context_length, labels
        )
        first, second = metrics.adjacent_pairs(packing)
        result.append(
            Setting(
                name, setting, packing, measured, metrics.pair_similarity(vectors, first, second)
            )
        )
    return result


def context_of(setting: Setting, doc: int) -> pd.DataFrame:
    """The context that holds `doc` under `setting`: slot, doc, in reading order (empty when
    the document is in no context)."""
    packing = setting.packing
    hit = np.flatnonzero(packing.doc == doc)
    if not len(hit):
        return pd.DataFrame({"slot": [], "doc": []}, dtype="int64")
    context = packing.context[hit[0]]
    rows = np.flatnonzero(packing.context == context)
    frame = pd.DataFrame({"slot": packing.slot[rows], "doc": packing.doc[rows]})
    frame.attrs["context"] = int(context)
    return frame.drop_duplicates("doc").sort_values("slot").reset_index(drop=True)
