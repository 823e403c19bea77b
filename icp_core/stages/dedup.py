"""Dedup adapter: group semantic duplicates from the stored lists (`icp_core.dedup`), record
them in `duplicates`; `kept_documents` reads back what remains."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from icp_core import dedup, metrics
from icp_core.params import Params
from icp_core.stages._report import Report, _noop
from icp_core.stages.embed import read_vectors
from icp_core.stages.knn import read_neighbors
from icp_core.workspace import Workspace


def run_dedup(ws: Workspace, params: Params, report: Report = _noop) -> dict:
    ids, sims = read_neighbors(ws, params.k)
    if params.dedup_threshold is None:
        kept_doc = np.arange(len(ids))
    else:
        kept_doc = dedup.find_duplicates(ids, sims, params.dedup_threshold)
    removed = np.flatnonzero(kept_doc != np.arange(len(ids)))
    vectors = read_vectors(ws) if len(removed) else np.zeros((0, 1), dtype=np.float32)
    sim = metrics.pair_similarity(vectors, removed, kept_doc[removed]) if len(removed) else []
    table = pa.table(
        {
            "doc": pa.array(removed, pa.int64()),
            "kept_doc": pa.array(kept_doc[removed], pa.int64()),
            "sim": pa.array(np.asarray(sim, dtype=np.float32), pa.float32()),
            "reason": pa.array(
                [f"semantic duplicate (cosine >= {params.dedup_threshold})"] * len(removed),
                pa.string(),
            ),
        }
    )
    with ws.transaction():
        ws.replace_table("duplicates", table)
    groups = int(len(np.unique(kept_doc[removed])))
    return {"duplicates": int(len(removed)), "groups": groups, "threshold": params.dedup_threshold}


def kept_documents(ws: Workspace, include_order_drops: bool = False) -> np.ndarray:
    """Documents not removed as duplicates (nor by the order stage's filter if asked)."""
    removed = "SELECT doc FROM duplicates"
    if include_order_drops and ws.has_table("order_drops"):
        removed += " UNION ALL SELECT doc FROM order_drops"
    return ws.column(
        f"SELECT doc FROM documents WHERE doc NOT IN ({removed}) ORDER BY doc", dtype=np.int64
    )
