"""Layout adapter (the app's map; not part of `icp run`): 2-D coordinates from the stored kNN
lists (`icp_core.layout`), stored as `layout`."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from icp_core import layout
from icp_core.params import Params
from icp_core.stages._report import Report, _noop
from icp_core.stages.embed import read_vectors
from icp_core.stages.knn import read_neighbors
from icp_core.workspace import Workspace


def layout_resolve(ws: Workspace, values: dict[str, Any]) -> dict[str, Any]:
    return {"n_neighbors": layout.LAYOUT_NEIGHBORS, "method": "umap"}


def run_layout(ws: Workspace, params: Params, report: Report = _noop) -> dict:
    """2-D map coordinates of every document from the stored kNN lists (table `layout`)."""
    ids, sims = read_neighbors(ws, layout.LAYOUT_NEIGHBORS - 1)
    coords = layout.layout_2d(ids, sims, read_vectors(ws), report=report)
    table = pa.table(
        {"doc": np.arange(len(coords), dtype=np.int64), "x": coords[:, 0], "y": coords[:, 1]}
    )
    with ws.transaction():
        ws.replace_table("layout", table)
    return {"documents": int(len(coords))}
