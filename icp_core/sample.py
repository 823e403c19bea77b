"""The bundled sample: 2,000 labelled documents and the embedding cache `icp embed` made of them.

The cache rows are keyed like any cache row (model key + text hash), so they are used only
when the installed model is the very model that produced them; otherwise the sample is
embedded afresh (about 90 s on two cores).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from icp_core import pipeline
from icp_core.params import Params
from icp_core.workspace import Workspace

SAMPLE_DIR = Path(__file__).resolve().parent.parent / "sample_data"
SAMPLE_DOCUMENTS = SAMPLE_DIR / "sample.jsonl.gz"
SAMPLE_EMBEDDINGS = SAMPLE_DIR / "embeddings.parquet"


def export_embedding_cache(ws: Workspace, path: Path = SAMPLE_EMBEDDINGS) -> int:
    """Write the workspace's embedding cache to Parquet (how the shipped cache was made)."""
    table = ws.arrow("SELECT model_key, text_hash, vector FROM embedding_cache ORDER BY text_hash")
    pq.write_table(table, path, compression="zstd")
    return table.num_rows


def seed_embedding_cache(ws: Workspace, path: Path = SAMPLE_EMBEDDINGS) -> int:
    """Add the rows of a cache Parquet that the workspace lacks; returns how many."""
    if not path.exists():
        return 0
    table = pq.read_table(path)
    with ws.transaction():
        before = int(ws.scalar("SELECT count(*) FROM embedding_cache"))
        ws.con.register("_seed", table)
        try:
            ws.execute(
                """INSERT INTO embedding_cache
                   SELECT s.model_key, s.text_hash, s.vector FROM _seed s
                   ANTI JOIN embedding_cache c USING (model_key, text_hash)"""
            )
        finally:
            ws.con.unregister("_seed")
        return int(ws.scalar("SELECT count(*) FROM embedding_cache")) - before


def build_sample_workspace(
    path: str | Path, params: Params | None = None, progress=pipeline._no_progress
) -> Path:
    """Create (or bring up to date) a workspace on the bundled sample."""
    params = params or Params()
    with Workspace(path) as ws:
        pipeline.ingest(ws, [str(SAMPLE_DOCUMENTS)], params, progress)
        seed_embedding_cache(ws)
        pipeline.run(ws, params, progress=progress)
    return Path(path)


def sample_vectors_match(ws: Workspace, n_docs: int = 8) -> float:
    """Largest |cached - fresh| over the first n_docs sample documents (tests use it)."""
    from icp_core import embed

    rows = ws.arrow(
        "SELECT d.text, e.vector FROM documents d JOIN embeddings e USING (doc) "
        "ORDER BY doc LIMIT ?",
        [n_docs],
    )
    model = embed.load_model(str(embed.resolve_model_path(None)))
    fresh = embed.embed_texts(model, rows.column("text").to_pylist())
    cached = np.asarray(rows.column("vector").to_pylist(), dtype=np.float32)
    return float(np.abs(fresh - cached).max()) if len(cached) else 0.0
