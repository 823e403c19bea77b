"""kNN adapter: search the embeddings (`icp_core.knn`), store the lists as `neighbors` rows;
`read_neighbors` reads them back as (N, k) arrays."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from icp_core import knn
from icp_core.params import Params
from icp_core.stages._report import Report, _noop
from icp_core.stages.embed import read_vectors
from icp_core.workspace import Workspace

# kNN lists are stored at least this deep, so lowering or raising k up to it is a filter.
KNN_MIN_STORED = 32


def knn_resolve(ws: Workspace, values: dict[str, Any]) -> dict[str, Any]:
    """The index that runs (`auto` resolved at this corpus size); the seed only where the
    index uses it (the IVF training sample), so a new seed does not redo an exact search."""
    index = knn.resolve_index(values["index"], ws.n_documents())
    return {"index": index, "seed": values["seed"] if index in knn.SEEDED_INDEXES else None}


def knn_records(params: Params) -> dict[str, Any]:
    """Kept with the kNN key: how deep the lists were searched (`knn_covers` reads it)."""
    return {"k_max": max(params.k, KNN_MIN_STORED)}


def knn_covers(stored: dict, params: Params) -> bool:
    """Stored lists serve any k up to the depth they were searched at."""
    return stored.get("k_max", 0) >= params.k


def run_knn(ws: Workspace, params: Params, report: Report = _noop) -> dict:
    vectors = read_vectors(ws)
    k_max = max(params.k, KNN_MIN_STORED)
    ids, sims = knn.knn_search(vectors, k_max, index=params.index, seed=params.seed, report=report)
    doc, column = np.nonzero(ids >= 0)
    table = pa.table(
        {
            "doc": doc.astype(np.int64),
            "rank": (column + 1).astype(np.int16),
            "neighbor": ids[doc, column],
            "sim": sims[doc, column],
        }
    )
    with ws.transaction():
        ws.replace_table("neighbors", table)
    return {
        "documents": int(len(ids)),
        "k_max": k_max,
        "index": knn.resolve_index(params.index, len(ids)),
    }


def read_neighbors(ws: Workspace, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(N, k) ids and sims from the `neighbors` table (all stored columns when k is None)."""
    n_docs = ws.n_documents()
    k_stored = int(ws.scalar("SELECT coalesce(max(rank), 0) FROM neighbors"))
    width = k_stored if k is None else k
    table = ws.arrow("SELECT doc, rank, neighbor, sim FROM neighbors WHERE rank <= ?", [width])
    ids = np.full((n_docs, width), -1, dtype=np.int64)
    sims = np.zeros((n_docs, width), dtype=np.float32)
    doc = table.column("doc").to_numpy()
    column = table.column("rank").to_numpy().astype(np.int64) - 1
    ids[doc, column] = table.column("neighbor").to_numpy()
    sims[doc, column] = table.column("sim").to_numpy()
    return ids, sims
