"""Embed adapter: embed the texts the cache lacks (or import `--vectors`), point the
`embeddings` view at this model's vectors; `read_vectors` reads them back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from icp_core import embed
from icp_core.errors import IcpError
from icp_core.ingest import hash_file
from icp_core.params import Params
from icp_core.stages._report import Report, _noop
from icp_core.workspace import Workspace

# Embedded vectors are committed every this many batches: a killed run loses at most that.
EMBED_CHECKPOINT_BATCHES = 16


def _embedding_model_key(params: Params) -> str:
    if params.vectors:
        return (
            f"vectors:{hash_file(Path(params.vectors))}"
            if Path(params.vectors).exists()
            else (f"vectors:{params.vectors}")
        )
    path = embed.resolve_model_path(params.model)
    return embed.model_key(str(path), params.max_tokens)


def embed_resolve(ws: Workspace, values: dict[str, Any]) -> dict[str, Any]:
    """The vectors' identity: the model folder's content and truncation, or the vectors file's
    content, so the same model under another path is not embedded again."""
    return {"model_key": _embedding_model_key(Params(**values))}


def run_embed(ws: Workspace, params: Params, report: Report = _noop) -> dict:
    """Embed the documents whose text has no cached vector for this model; point the
    `embeddings` view at this model's vectors."""
    key = _embedding_model_key(params)
    if params.vectors:
        n_new = _import_vectors(ws, params.vectors, key)
    else:
        n_new = _embed_missing(ws, params, key, report)
    with ws.transaction():
        ws.execute(
            f"""CREATE OR REPLACE VIEW embeddings AS
                SELECT d.doc, c.vector FROM documents d
                JOIN (SELECT text_hash, any_value(vector) AS vector FROM embedding_cache
                      WHERE model_key = '{key.replace("'", "''")}' GROUP BY text_hash) c
                USING (text_hash)"""
        )
    n_docs = ws.n_documents()
    n_have = int(ws.scalar("SELECT count(*) FROM embeddings"))
    if n_have != n_docs:
        raise IcpError(f"embeddings cover {n_have} of {n_docs} documents; re-run `icp embed`")
    counts: dict[str, Any] = {"embedded": n_new, "cached": n_docs - n_new, "model_key": key}
    if not params.vectors:  # what ran, for the manifest: not "auto", not "the model's limit"
        counts["device"] = embed.pick_device(params.device) if n_new else None
        counts["max_tokens"] = params.max_tokens or embed.model_max_tokens(
            embed.resolve_model_path(params.model)
        )
    return counts


def _embed_missing(ws: Workspace, params: Params, key: str, report: Report) -> int:
    missing = ws.arrow(
        """SELECT text_hash, any_value(text) AS text FROM documents
           WHERE text_hash NOT IN (SELECT text_hash FROM embedding_cache WHERE model_key = ?)
           GROUP BY text_hash ORDER BY max(length(text)) DESC, text_hash""",
        [key],
    )
    total = missing.num_rows
    if total == 0:
        return 0
    model_path = embed.resolve_model_path(params.model)
    hashes = missing.column("text_hash").to_pylist()
    texts = missing.column("text").to_pylist()
    max_tokens = params.max_tokens or embed.model_max_tokens(model_path)
    # the bar shows at once (loading the model is its own phase) and counts every batch
    progress = embed.EmbedProgress(report, embed.estimated_tokens(texts, max_tokens))
    progress.loading()
    model = embed.load_model(str(model_path), params.device, params.max_tokens)
    # one committed insert per checkpoint: an interrupted run keeps every finished chunk
    checkpoint = params.batch_size * EMBED_CHECKPOINT_BATCHES
    for start in range(0, total, checkpoint):
        stop = min(start + checkpoint, total)
        vectors = embed.embed_texts(model, texts[start:stop], params.batch_size, progress=progress)
        _append_cache(ws, key, hashes[start:stop], vectors)
    return total


def _append_cache(ws: Workspace, key: str, hashes: list[str], vectors: np.ndarray) -> None:
    dim = vectors.shape[1]
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).ravel())
    offsets = pa.array(np.arange(0, (len(hashes) + 1) * dim, dim, dtype=np.int32))
    table = pa.table(
        {
            "model_key": pa.array([key] * len(hashes), pa.string()),
            "text_hash": pa.array(hashes, pa.string()),
            "vector": pa.ListArray.from_arrays(offsets, flat),
        }
    )
    with ws.transaction():
        ws.append_table("embedding_cache", table)


def _import_vectors(ws: Workspace, path: str, key: str) -> int:
    documents = ws.arrow("SELECT id, text_hash FROM documents ORDER BY doc")
    doc_ids = np.asarray(documents.column("id").to_pylist(), dtype=object)
    vectors = embed.read_vectors_file(path, doc_ids)
    hashes = documents.column("text_hash").to_pylist()
    known = set(
        ws.column("SELECT text_hash FROM embedding_cache WHERE model_key = ?", [key]).tolist()
    )
    new_rows = [i for i, h in enumerate(hashes) if h not in known]
    seen: set[str] = set()
    unique_rows = [i for i in new_rows if not (hashes[i] in seen or seen.add(hashes[i]))]
    if unique_rows:
        _append_cache(ws, key, [hashes[i] for i in unique_rows], vectors[unique_rows])
    return len(unique_rows)


def read_vectors(ws: Workspace) -> np.ndarray:
    """(N, d) float32 unit vectors in document order."""
    return ws.vectors("SELECT vector FROM embeddings ORDER BY doc")


def export_embedding_cache(ws: Workspace, path: Path) -> int:
    """Write the workspace's embedding cache to Parquet (how the sample's shipped cache was
    made); returns its rows."""
    table = ws.arrow("SELECT model_key, text_hash, vector FROM embedding_cache ORDER BY text_hash")
    pq.write_table(table, path, compression="zstd")
    return table.num_rows


def seed_embedding_cache(ws: Workspace, path: Path) -> int:
    """Add the rows of a cache Parquet (`export_embedding_cache`) that the workspace lacks;
    returns how many (0 when there is no such file)."""
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
