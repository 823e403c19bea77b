"""Layout adapter (the app's map; not part of `icp run`): 2-D coordinates from the stored kNN
lists (`icp_core.layout`), stored as `layout`. A map in `layout_cache` drawn from the same
neighbour lists is reused instead of running UMAP (the bundled sample ships one, so the app's
first start does not compile and run UMAP)."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from icp_core import layout
from icp_core.params import Params
from icp_core.stages._report import Report, _noop
from icp_core.stages.embed import read_vectors
from icp_core.stages.knn import read_neighbors
from icp_core.workspace import Workspace

log = logging.getLogger(__name__)

_CACHE_SCHEMA = pa.schema(
    [("graph_key", pa.string()), ("doc", pa.int64()), ("x", pa.float32()), ("y", pa.float32())]
)


def layout_resolve(ws: Workspace, values: dict[str, Any]) -> dict[str, Any]:
    return {"n_neighbors": layout.LAYOUT_NEIGHBORS, "method": "umap"}


def graph_key(neighbor_ids: np.ndarray) -> str:
    """blake2b-128 of the neighbour lists a map is drawn from (their shape and int64 ids)."""
    ids = np.ascontiguousarray(neighbor_ids, dtype=np.int64)
    digest = hashlib.blake2b(str(ids.shape).encode(), digest_size=16)
    digest.update(ids.tobytes())
    return digest.hexdigest()


def _cached_coords(ws: Workspace, key: str, n_docs: int) -> np.ndarray | None:
    """The cached map drawn from the lists `key`, when it covers documents 0..n_docs-1."""
    table = ws.arrow("SELECT doc, x, y FROM layout_cache WHERE graph_key = ? ORDER BY doc", [key])
    if table.num_rows != n_docs or not np.array_equal(
        table.column("doc").to_numpy(), np.arange(n_docs)
    ):
        return None
    return np.stack(
        [table.column("x").to_numpy(), table.column("y").to_numpy()], axis=1
    ).astype(np.float32)


def run_layout(ws: Workspace, params: Params, report: Report = _noop) -> dict:
    """2-D map coordinates of every document from the stored kNN lists (table `layout`): the
    cached map of the same lists when there is one, else UMAP's."""
    ids, sims = read_neighbors(ws, layout.LAYOUT_NEIGHBORS - 1)
    coords = _cached_coords(ws, graph_key(ids), len(ids))
    reused = coords is not None
    if coords is None:
        coords = layout.layout_2d(ids, sims, read_vectors(ws), report=report)
    table = pa.table(
        {"doc": np.arange(len(coords), dtype=np.int64), "x": coords[:, 0], "y": coords[:, 1]}
    )
    with ws.transaction():
        ws.replace_table("layout", table)
    return {"documents": int(len(coords)), "map": "cached" if reused else "umap"}


def export_layout_cache(ws: Workspace, path: Path) -> int:
    """Write the workspace's map with the key of the lists it was drawn from to Parquet (how
    the sample's shipped map is made); returns its rows."""
    ids, _ = read_neighbors(ws, layout.LAYOUT_NEIGHBORS - 1)
    table = ws.arrow("SELECT doc, x, y FROM layout ORDER BY doc")
    table = table.add_column(0, "graph_key", pa.array([graph_key(ids)] * table.num_rows))
    pq.write_table(table, path, compression="zstd")
    return table.num_rows


def seed_layout_cache(ws: Workspace, path: Path) -> int:
    """Add the maps of a Parquet (`export_layout_cache`) whose keys the workspace lacks;
    returns how many rows (0 when there is no such file). A cached map only saves time, so an
    unreadable file is logged and skipped: the layout stage then draws the map itself."""
    if not path.exists():
        return 0
    try:
        table = pq.read_table(path, columns=["graph_key", "doc", "x", "y"])
        table = table.cast(_CACHE_SCHEMA)
        if any(column.null_count for column in table.columns):
            raise ValueError("it has empty cells")
    except (pa.ArrowException, OSError, ValueError) as error:
        log.warning("%s: not a usable map (%s); the map will be drawn instead", path, error)
        return 0
    with ws.transaction():
        before = int(ws.scalar("SELECT count(*) FROM layout_cache"))
        ws.con.register("_seed", table)
        try:
            ws.execute(
                """INSERT INTO layout_cache
                   SELECT s.graph_key, s.doc, s.x, s.y FROM _seed s
                   WHERE s.graph_key NOT IN (SELECT DISTINCT graph_key FROM layout_cache)"""
            )
        finally:
            ws.con.unregister("_seed")
        return int(ws.scalar("SELECT count(*) FROM layout_cache")) - before
