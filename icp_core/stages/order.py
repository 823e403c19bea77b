"""Order adapter: walk the kept documents' kNN graph (`icp_core.traverse`), store the path as
`ordering` and the `original` filter's drops as `order_drops`."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from icp_core import dedup, metrics, traverse
from icp_core.params import Params
from icp_core.stages._report import Report, _noop
from icp_core.stages.dedup import kept_documents
from icp_core.stages.embed import read_vectors
from icp_core.stages.knn import read_neighbors
from icp_core.workspace import Workspace


def run_order(ws: Workspace, params: Params, report: Report = _noop) -> dict:
    ids, sims = read_neighbors(ws)
    kept = kept_documents(ws)
    order = traverse.traverse_kept(ids, sims, kept, params.k, params.order, params.seed)
    vectors = read_vectors(ws)
    drops = {"doc": [], "kept_doc": [], "sim": [], "reason": []}
    if params.order == "original":
        order, drops = _apply_near_copy_filter(ws, order, vectors)
    is_jump = traverse.jumps_along(order, ids, sims, params.k)
    sim_to_prev = np.full(len(order), np.nan, dtype=np.float32)
    if len(order) > 1:
        sim_to_prev[1:] = metrics.pair_similarity(vectors, order[:-1], order[1:])
    table = pa.table(
        {
            "position": np.arange(len(order), dtype=np.int64),
            "doc": order,
            "sim_to_prev": pa.array(sim_to_prev, mask=np.isnan(sim_to_prev)),
            "is_jump": is_jump,
        }
    )
    drop_table = pa.table(
        {
            "doc": pa.array(drops["doc"], pa.int64()),
            "kept_doc": pa.array(drops["kept_doc"], pa.int64()),
            "sim": pa.array(drops["sim"], pa.float32()),
            "reason": pa.array(drops["reason"], pa.string()),
        }
    )
    with ws.transaction():
        ws.replace_table("ordering", table)
        ws.replace_table("order_drops", drop_table)
    jumps = int(is_jump.sum())
    return {
        "ordered": int(len(order)),
        "jumps": jumps,
        "jump_share": jumps / max(len(order) - 1, 1),
        "near_copies_dropped": len(drops["doc"]),
    }


def _apply_near_copy_filter(
    ws: Workspace, order: np.ndarray, vectors: np.ndarray
) -> tuple[np.ndarray, dict]:
    """The authors' script drops a document whose first 100 characters nearly copy the previous
    one's; we record those drops with the document they copy (never lose them)."""
    prefixes = ws.arrow(
        "SELECT left(text, ?) AS prefix FROM documents ORDER BY doc",
        [dedup.NEAR_COPY_PREFIX_CHARS],
    )
    return dedup.near_copy_filter(prefixes.column("prefix").to_pylist(), order, vectors)
