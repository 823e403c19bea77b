"""Stage adapters: read the workspace in bulk, call the pure stage function, write one table.

Each `run_<stage>(ws, params, report)` returns its counts (named where the decision is made).
`pipeline.STAGES` declares the parameters each stage reads; where a parameter's effective
value differs from how it is spelled (a model folder's content, `auto` index), a
`<stage>_resolve(ws, values)` turns the read values into that value. `pipeline.py` decides
when to run them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from icp_core import dedup, embed, knn, layout, metrics, pack, tokenizer, traverse
from icp_core.errors import IcpError
from icp_core.ingest import (
    RAW_PREVIEW_CHARS,
    ParsedSource,
    hash_file,
    hash_text,
    id_names,
    parse_source,
    source_fingerprint,
)
from icp_core.params import Params
from icp_core.workspace import Workspace, _now

log = logging.getLogger(__name__)

Report = Callable[[int, int], None]
# kNN lists are stored at least this deep, so lowering or raising k up to it is a filter.
KNN_MIN_STORED = 32
# Embedded vectors are committed every this many batches: a killed run loses at most that.
EMBED_CHECKPOINT_BATCHES = 16


def _noop(done: int, total: int) -> None:
    return None


# ---------------------------------------------------------------------------------------------
# ingest
# ---------------------------------------------------------------------------------------------


def run_ingest(
    ws: Workspace,
    inputs: list[str],
    params: Params,
    report: Report = _noop,
    update: bool = False,
) -> dict:
    """Add the documents of `inputs`; every row becomes a document, an update or a reject.

    A source whose content is what was last ingested from some path (with the same text and
    id fields) is skipped, unless `update` (so that rows a read rejected as differing can be
    replaced by running it again with --update). Otherwise each row is matched by id:
    - a new id adds a document;
    - a known id from the same file with the same text and fields is unchanged (no reject);
    - a known id whose text or fields differ replaces the stored document in place (same
      doc number) with `update`, else is rejected with "...; pass --update";
    - a known id from another file is a duplicate-id reject (replaced with `update`).
    A re-read source's earlier rejects are replaced by this read's, so a row fixed by a retry
    (say, with the right --text-field) is no longer also counted as rejected.
    """
    counts = {
        "documents": 0,
        "updated": 0,
        "unchanged": 0,
        "rejected": 0,
        "rejects_cleared": 0,
        "sources_skipped": 0,
        "sources_added": 0,
    }
    current = _current_sources(ws)
    names = id_names(inputs)
    parsed_sources: list[ParsedSource] = []
    seen: set[str] = set()
    for number, path in enumerate(inputs, start=1):
        content_hash = source_fingerprint(Path(path))
        read_before = (content_hash, params.text_field, params.id_field) in current
        if content_hash in seen or (read_before and not update):
            counts["sources_skipped"] += 1
            log.info("ingest: %s already ingested, skipped", path)
            continue
        seen.add(content_hash)
        parsed_sources.append(
            parse_source(
                path, params.text_field, params.id_field, content_hash, names.get(str(path))
            )
        )
        report(number, len(inputs))
    with ws.transaction():
        for parsed in parsed_sources:
            for key, value in _store_source(ws, parsed, params, update).items():
                counts[key] += value
            counts["sources_added"] += 1
    counts["total_documents"] = ws.n_documents()
    counts["total_rejected"] = int(ws.scalar("SELECT count(*) FROM rejects"))
    return counts


def _current_sources(ws: Workspace) -> set[tuple[str, str, str]]:
    """(content hash, text field, id field) of what each source path held when last read."""
    rows = ws.con.execute(
        """SELECT content_hash, text_field, id_field FROM (
               SELECT *, row_number() OVER (
                   PARTITION BY source ORDER BY ingested_at DESC, rowid DESC) AS newest
               FROM sources)
           WHERE newest = 1"""
    ).fetchall()
    return {tuple(row) for row in rows}


@dataclass
class _RowFates:
    """What `_store_source` decided for each accepted row of a parse (by row number)."""

    rejected: dict[int, str]
    new: list[int]
    replaced: list[tuple[int, int]]  # (row, doc): text, fields or file replaced (--update)
    moved: list[tuple[int, int]]  # (row, doc): unchanged, but now on another line
    unchanged: int


TEXT_DIFFERS = "text differs from the stored document; pass --update"
FIELDS_DIFFER = "fields other than the text differ from the stored document; pass --update"


def duplicate_id_reason(doc_id: str, first_place: str) -> str:
    """The reject reason of a row whose id an earlier row (at `first_place`, file:line) took."""
    return f"duplicate id '{doc_id}' (first at {first_place})"


def _row_fates(ws: Workspace, parsed: ParsedSource, hashes: list[str], update: bool) -> _RowFates:
    """Match a parse's rows by id against each other and the stored documents (the rules are
    `run_ingest`'s); `hashes` are the rows' text hashes."""
    candidate = pa.table(
        {"row": np.arange(len(parsed.ids)), "id": pa.array(parsed.ids, pa.string())}
    )
    ws.con.register("_candidate", candidate)
    try:
        stored = ws.arrow(
            """SELECT c.row, d.doc, d.source, d.line, d.text_hash, d.meta::VARCHAR AS meta
               FROM _candidate c JOIN documents d ON d.id = c.id ORDER BY c.row"""
        ).to_pylist()
        inner = ws.arrow(
            """SELECT row, first_row FROM (
                   SELECT row, min(row) OVER (PARTITION BY id) AS first_row FROM _candidate)
               WHERE row <> first_row"""
        ).to_pylist()
    finally:
        ws.con.unregister("_candidate")
    rejected = {}
    for pair in inner:
        row, first = pair["row"], pair["first_row"]
        first_place = f"{parsed.files[first]}:{parsed.lines[first]}"
        rejected[row] = duplicate_id_reason(parsed.ids[row], first_place)
    replaced: list[tuple[int, int]] = []
    moved: list[tuple[int, int]] = []
    unchanged = 0
    known = set()
    for match in stored:
        row = match["row"]
        known.add(row)
        if row in rejected:
            continue
        same_file = match["source"] == parsed.files[row]
        same_text = match["text_hash"] == hashes[row]
        same_fields = (match["meta"] or None) == parsed.metas[row]
        if same_file and same_text and same_fields:
            unchanged += 1
            if match["line"] != parsed.lines[row]:  # rows above it were added or removed
                moved.append((row, match["doc"]))
        elif update:
            replaced.append((row, match["doc"]))
        elif not same_file:
            first_place = f"{match['source']}:{match['line']}"
            rejected[row] = duplicate_id_reason(parsed.ids[row], first_place)
        elif not same_text:
            rejected[row] = TEXT_DIFFERS
        else:
            rejected[row] = FIELDS_DIFFER
    new = [row for row in range(len(parsed.ids)) if row not in known and row not in rejected]
    return _RowFates(rejected, new, replaced, moved, unchanged)


def _store_source(
    ws: Workspace, parsed: ParsedSource, params: Params, update: bool = False
) -> dict[str, int]:
    """Write one parse: new documents, replaced ones, rejects (replacing the file's earlier
    rejects) and its `sources` row. Returns the counts `run_ingest` sums."""
    hashes = [hash_text(text) for text in parsed.texts]
    fates = _row_fates(ws, parsed, hashes, update)
    first_doc = int(ws.scalar("SELECT coalesce(max(doc) + 1, 0) FROM documents"))
    new_docs = np.arange(first_doc, first_doc + len(fates.new))
    ws.append_table("documents", _documents_table(parsed, hashes, fates.new, new_docs))
    if fates.replaced or fates.moved:
        rows, docs = zip(*fates.replaced, *fates.moved, strict=True)
        ws.con.register("_replaced", _documents_table(parsed, hashes, list(rows), docs))
        try:
            ws.execute(
                """UPDATE documents SET text = r.text, text_hash = r.text_hash, meta = r.meta,
                       source = r.source, line = r.line
                   FROM _replaced r WHERE documents.doc = r.doc"""
            )
        finally:
            ws.con.unregister("_replaced")
    # this read accounts for every row of the source again: its earlier rejects are stale
    # (a folder's rejects name the files below it)
    below = parsed.source + "/" if parsed.format == "folder" else None
    stale = "FROM rejects WHERE source = ? OR starts_with(source, ?)"
    cleared = int(ws.scalar(f"SELECT count(*) {stale}", [parsed.source, below]))
    ws.execute(f"DELETE {stale}", [parsed.source, below])
    for row, reason in sorted(fates.rejected.items()):
        raw = parsed.texts[row][:RAW_PREVIEW_CHARS]
        parsed.reject(parsed.lines[row], reason, raw, parsed.ids[row], parsed.files[row])
    rejects = parsed.rejects
    ws.append_table(
        "rejects",
        pa.table(
            {
                "source": pa.array([r.file or parsed.source for r in rejects], pa.string()),
                "line": pa.array([r.line for r in rejects], pa.int64()),
                "id": pa.array([r.id for r in rejects], pa.string()),
                "reason": pa.array([r.reason for r in rejects], pa.string()),
                "raw": pa.array([r.raw for r in rejects], pa.string()),
            }
        ),
    )
    updated = len(fates.replaced)
    kept = len(fates.new) + updated + fates.unchanged
    ws.execute(
        "INSERT INTO sources VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            parsed.source,
            parsed.content_hash,
            parsed.format,
            params.text_field,
            params.id_field,
            kept,
            len(rejects),
            _now(),
        ],
    )
    return {
        "documents": len(fates.new),
        "updated": updated,
        "unchanged": fates.unchanged,
        "rejected": len(rejects),
        "rejects_cleared": cleared,
    }


def _documents_table(
    parsed: ParsedSource, hashes: list[str], rows: list[int], docs: Any
) -> pa.Table:
    """`documents` rows for the given rows of a parse, numbered `docs`."""
    return pa.table(
        {
            "doc": pa.array(np.asarray(docs, dtype=np.int64), pa.int64()),
            "id": pa.array([parsed.ids[i] for i in rows], pa.string()),
            "text": pa.array([parsed.texts[i] for i in rows], pa.string()),
            "text_hash": pa.array([hashes[i] for i in rows], pa.string()),
            "source": pa.array([parsed.files[i] for i in rows], pa.string()),
            "line": pa.array([parsed.lines[i] for i in rows], pa.int64()),
            "meta": pa.array([parsed.metas[i] for i in rows], pa.string()),
        }
    )


def ingest_fingerprint_source(ws: Workspace) -> dict:
    """What the documents table depends on: the ordered content hashes of its sources, and
    its rows' ids, text hashes and fields (so a document replaced in place changes it)."""
    hashes = ws.column("SELECT content_hash FROM sources ORDER BY ingested_at, rowid").tolist()
    content = ws.scalar(
        "SELECT coalesce(sum(hash(doc, id, text_hash, meta::VARCHAR)), 0)::VARCHAR FROM documents"
    )
    return {"sources": hashes, "n_documents": ws.n_documents(), "documents": content}


def no_documents_message(ws: Workspace) -> str:
    """Why a workspace holds no documents, in one line: nothing ingested yet, or every row
    rejected (how many, from which sources, the most common reasons)."""
    n_rejected = int(ws.scalar("SELECT count(*) FROM rejects"))
    if not n_rejected:
        return f"{ws.path}: no documents ingested yet; run `icp ingest FILE --workspace {ws.path}`"
    sources = ws.column("SELECT DISTINCT source FROM sources ORDER BY source").tolist()
    named = ", ".join(sources[:3]) + (f" and {len(sources) - 3} more" if len(sources) > 3 else "")
    reasons = ws.con.execute(
        "SELECT count(*) AS n, reason FROM rejects GROUP BY reason ORDER BY n DESC, reason"
    ).fetchall()
    shown = "; ".join(f"{n} × {reason}" for n, reason in reasons[:3])
    others = sum(n for n, _ in reasons[3:])
    if others:
        shown += f"; {others} × other reasons"
    return (
        f"{ws.path}: no documents: all {n_rejected} rows of {named} were rejected: {shown}; "
        "see the rejects table"
    )


# ---------------------------------------------------------------------------------------------
# embed
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# knn
# ---------------------------------------------------------------------------------------------


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


def restrict_graph(
    ids: np.ndarray, sims: np.ndarray, kept: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The kNN lists among kept documents only, renumbered 0..M-1 in document order.

    Removed neighbours are dropped from each list and the next ones move up, so each kept
    document keeps up to k neighbours.
    """
    keep_mask = np.zeros(len(ids), dtype=bool)
    keep_mask[kept] = True
    sub_ids, sub_sims = ids[kept], sims[kept]
    valid = (sub_ids >= 0) & keep_mask[np.maximum(sub_ids, 0)]
    moved = np.argsort(~valid, axis=1, kind="stable")[:, :k]
    sub_ids = np.take_along_axis(sub_ids, moved, axis=1)
    sub_sims = np.take_along_axis(sub_sims, moved, axis=1)
    valid = np.take_along_axis(valid, moved, axis=1)
    new_index = np.cumsum(keep_mask) - 1
    sub_ids = np.where(valid, new_index[np.maximum(sub_ids, 0)], -1)
    sub_sims = np.where(valid, sub_sims, 0.0).astype(np.float32)
    if sub_ids.shape[1] < k:  # fewer documents than k: pad
        pad = k - sub_ids.shape[1]
        sub_ids = np.pad(sub_ids, ((0, 0), (0, pad)), constant_values=-1)
        sub_sims = np.pad(sub_sims, ((0, 0), (0, pad)))
    return sub_ids, sub_sims


# ---------------------------------------------------------------------------------------------
# dedup
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# order
# ---------------------------------------------------------------------------------------------


def kept_documents(ws: Workspace, include_order_drops: bool = False) -> np.ndarray:
    """Documents not removed as duplicates (nor by the order stage's filter if asked)."""
    removed = "SELECT doc FROM duplicates"
    if include_order_drops and ws.has_table("order_drops"):
        removed += " UNION ALL SELECT doc FROM order_drops"
    return ws.column(
        f"SELECT doc FROM documents WHERE doc NOT IN ({removed}) ORDER BY doc", dtype=np.int64
    )


def order_documents(
    ids: np.ndarray, sims: np.ndarray, kept: np.ndarray, params: Params
) -> np.ndarray:
    """Traverse the kNN graph of the kept documents; returns the documents in path order."""
    sub_ids, sub_sims = restrict_graph(ids, sims, kept, params.k)
    return kept[traverse.traverse(sub_ids, sub_sims, params.order, params.seed)]


def jumps_along(order: np.ndarray, ids: np.ndarray, sims: np.ndarray, k: int) -> np.ndarray:
    """(len(order),) bool: steps that do not follow an edge of the kNN graph (among the
    documents of `order`, first k neighbours); False at position 0."""
    members = np.sort(order)
    sub_ids, sub_sims = restrict_graph(ids, sims, members, k)
    local = np.searchsorted(members, order)
    is_jump = ~traverse.transitions_on_edges(local, sub_ids)
    if len(is_jump):
        is_jump[0] = False
    return is_jump


def run_order(ws: Workspace, params: Params, report: Report = _noop) -> dict:
    ids, sims = read_neighbors(ws)
    order = order_documents(ids, sims, kept_documents(ws), params)
    vectors = read_vectors(ws)
    drops = {"doc": [], "kept_doc": [], "sim": [], "reason": []}
    if params.order == "original":
        order, drops = _apply_near_copy_filter(ws, order, vectors)
    is_jump = jumps_along(order, ids, sims, params.k)
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
    return near_copy_filter(prefixes.column("prefix").to_pylist(), order, vectors)


def near_copy_filter(
    texts: list[str], order: np.ndarray, vectors: np.ndarray
) -> tuple[np.ndarray, dict]:
    """`order` without the near copies of their previous kept document, and the drops (doc,
    kept_doc, sim, reason) as order_drops records them; texts and vectors indexed by doc."""
    drop, copy_of = dedup.find_near_copies(texts, order)
    dropped, kept_for = order[drop], copy_of[drop]
    sims = metrics.pair_similarity(vectors, dropped, kept_for) if len(dropped) else np.zeros(0)
    drops = {
        "doc": dropped.tolist(),
        "kept_doc": kept_for.tolist(),
        "sim": sims.tolist(),
        "reason": [
            f"near copy of the previous document (first {dedup.NEAR_COPY_PREFIX_CHARS} characters,"
            f" trigram Jaccard > {dedup.NEAR_COPY_JACCARD}; authors' filter)"
        ]
        * len(dropped),
    }
    return order[~drop], drops


# ---------------------------------------------------------------------------------------------
# pack
# ---------------------------------------------------------------------------------------------


def lm_tokenizer(params: Params) -> tokenizer.LMTokenizer:
    """The language model's tokenizer that packing counts and export writes in."""
    return tokenizer.load(params.tokenizer)


def pack_resolve(ws: Workspace, values: dict[str, Any]) -> dict[str, Any]:
    """The tokenizer by the ids it produces (its file's content), not by its spelling."""
    resolved = dict(values)
    resolved["tokenizer_key"] = tokenizer.load(resolved.pop("tokenizer")).key
    return resolved


def pack_records(params: Params) -> dict[str, Any]:
    """Kept with the pack key: the ids export and `icp check` need without the tokenizer."""
    lm = lm_tokenizer(params)
    return {"separator_ids": lm.separator_ids(params.separator), "pad_id": lm.pad_id()}


def _cache_token_ids(ws: Workspace, lm: tokenizer.LMTokenizer, report: Report) -> None:
    """Tokenize the texts whose ids the token cache lacks for this tokenizer, and keep them."""
    missing = ws.arrow(
        """SELECT text_hash, any_value(text) AS text FROM documents
           WHERE text_hash NOT IN (SELECT text_hash FROM token_cache
                                   WHERE tokenizer_key = ? AND ids IS NOT NULL)
           GROUP BY text_hash""",
        [lm.key],
    )
    if not missing.num_rows:
        return
    ids, offsets = tokenizer.count_tokens(lm, missing.column("text").to_pylist(), report)
    with ws.transaction():
        ws.execute("DELETE FROM token_cache WHERE tokenizer_key = ? AND ids IS NULL", [lm.key])
        ws.append_table(
            "token_cache",
            pa.table(
                {
                    "tokenizer_key": pa.array([lm.key] * missing.num_rows, pa.string()),
                    "text_hash": missing.column("text_hash"),
                    "n_tokens": pa.array(np.diff(offsets), pa.int64()),
                    "ids": pa.ListArray.from_arrays(
                        pa.array(offsets, pa.int32() if offsets[-1] < 2**31 else pa.int64()),
                        pa.array(ids, pa.uint32()),
                    ),
                }
            ),
        )


def document_tokens(ws: Workspace, params: Params, report: Report = _noop) -> np.ndarray:
    """(N,) token counts by document, tokenizing only texts the cache lacks."""
    lm = lm_tokenizer(params)
    _cache_token_ids(ws, lm, report)
    return ws.column(
        """SELECT t.n_tokens FROM documents d
           JOIN (SELECT text_hash, any_value(n_tokens) AS n_tokens FROM token_cache
                 WHERE tokenizer_key = ? AND ids IS NOT NULL GROUP BY text_hash) t
           USING (text_hash)
           ORDER BY d.doc""",
        [lm.key],
        dtype=np.int64,
    )


def separator_for(params: Params) -> list[int]:
    return lm_tokenizer(params).separator_ids(params.separator)


def run_pack(ws: Workspace, params: Params, report: Report = _noop) -> dict:
    doc_tokens = document_tokens(ws, params, report)
    sep = separator_for(params)
    order = ws.column("SELECT doc FROM ordering ORDER BY position", dtype=np.int64)
    packing = pack.pack_contexts(
        order, doc_tokens, params.context_length, params.pack, len(sep), params.shuffle, params.seed
    )
    table = pa.table(
        {
            "context": packing.context,
            "slot": packing.slot.astype(np.int32),
            "doc": packing.doc,
            "token_start": packing.start,
            "token_end": packing.end,
            "sep_tokens": packing.sep.astype(np.int32),
        }
    )
    with ws.transaction():
        ws.replace_table("contexts", table)
    fill = packing.context_tokens()
    return {
        "tokenizer": lm_tokenizer(params).info.name,  # said on every run: which LM's tokens
        "contexts": packing.n_contexts,
        "pieces": int(len(packing.doc)),
        "split_documents": int(len(packing.doc) - len(np.unique(packing.doc))),
        "padding_tokens": int(packing.n_contexts * params.context_length - fill.sum()),
    }


def read_packing(ws: Workspace) -> pack.Packing:
    table = ws.arrow(
        "SELECT context, slot, doc, token_start, token_end, sep_tokens FROM contexts "
        "ORDER BY context, slot"
    )
    context = table.column("context").to_numpy().astype(np.int64)
    return pack.Packing(
        context=context,
        slot=table.column("slot").to_numpy().astype(np.int64),
        doc=table.column("doc").to_numpy().astype(np.int64),
        start=table.column("token_start").to_numpy().astype(np.int64),
        end=table.column("token_end").to_numpy().astype(np.int64),
        sep=table.column("sep_tokens").to_numpy().astype(np.int64),
        n_contexts=int(context[-1]) + 1 if len(context) else 0,
    )


# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------


def resolve_label_field(ws: Workspace, label_field: str | None) -> str | None:
    """The label field to score: the one asked for, else `label` when documents carry it."""
    if label_field:
        present = ws.scalar(
            "SELECT count(*) FROM documents WHERE json_extract_string(meta, ?) IS NOT NULL",
            [f"$.{label_field}"],
        )
        if not present:
            raise IcpError(f"--label-field {label_field}: no document has that field")
        return label_field
    present = ws.scalar(
        "SELECT count(*) FROM documents WHERE json_extract_string(meta, '$.label') IS NOT NULL"
    )
    return "label" if present else None


def read_labels(ws: Workspace, label_field: str | None) -> np.ndarray | None:
    if label_field is None:
        return None
    labels = (
        ws.arrow(
            "SELECT json_extract_string(meta, ?) AS label FROM documents ORDER BY doc",
            [f"$.{label_field}"],
        )
        .column("label")
        .to_pylist()
    )
    return np.asarray([("\0missing" if v is None else v) for v in labels], dtype=object)


def run_metrics(ws: Workspace, params: Params, report: Report = _noop) -> dict:
    result = compute_metrics(ws, params)
    with ws.transaction():
        ws.execute(
            """CREATE TABLE IF NOT EXISTS metrics (
                   order_method VARCHAR, k INTEGER, context_length INTEGER, pack VARCHAR,
                   dedup_threshold DOUBLE, computed_at TIMESTAMP, result JSON)"""
        )
        ws.execute(
            "DELETE FROM metrics WHERE order_method = ? AND k = ? AND context_length = ? "
            "AND pack = ? AND dedup_threshold IS NOT DISTINCT FROM ?",
            [params.order, params.k, params.context_length, params.pack, params.dedup_threshold],
        )
        ws.execute(
            "INSERT INTO metrics VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                params.order,
                params.k,
                params.context_length,
                params.pack,
                params.dedup_threshold,
                _now(),
                json.dumps(result),
            ],
        )
    return {k: v for k, v in result.items() if not isinstance(v, dict)}


@dataclass(frozen=True)
class KeptScoring:
    """What the metrics read about the kept documents, renumbered 0..M-1 in document order:
    their kNN lists among themselves (first k) and their word ids."""

    kept: np.ndarray
    local_of: np.ndarray
    neighbor_ids: np.ndarray
    words: metrics.WordIds

    @classmethod
    def build(
        cls, ids: np.ndarray, sims: np.ndarray, kept: np.ndarray, k: int, texts: list[str]
    ) -> KeptScoring:
        """`ids`, `sims`: stored (N, k_max) lists; `texts`: every document's text by doc."""
        local_of = np.full(len(ids), -1, dtype=np.int64)
        local_of[kept] = np.arange(len(kept))
        sub_ids, _ = restrict_graph(ids, sims, kept, k)
        return cls(kept, local_of, sub_ids, metrics.word_ids([texts[d] for d in kept]))

    def measure(
        self,
        packing: pack.Packing,
        vectors: np.ndarray,
        doc_tokens: np.ndarray,
        context_length: int,
        labels: np.ndarray | None,
    ) -> dict[str, Any]:
        """`metrics.packing_metrics` of a packing over the kept documents (arrays by doc)."""
        local = pack.Packing(
            packing.context,
            packing.slot,
            self.local_of[packing.doc],
            packing.start,
            packing.end,
            packing.sep,
            packing.n_contexts,
        )
        return metrics.packing_metrics(
            local,
            vectors[self.kept],
            doc_tokens[self.kept],
            context_length,
            self.neighbor_ids,
            labels[self.kept] if labels is not None else None,
            self.words,
        )


def compute_metrics(ws: Workspace, params: Params) -> dict[str, Any]:
    """The metrics of DESIGN.md for the stored contexts, plus the same for random packing."""
    n_documents = ws.n_documents()
    n_rejected = int(ws.scalar("SELECT count(*) FROM rejects"))
    n_duplicates = int(ws.scalar("SELECT count(*) FROM duplicates")) + int(
        ws.scalar("SELECT count(*) FROM order_drops")
    )
    kept = kept_documents(ws, include_order_drops=True)
    packing = read_packing(ws)
    vectors = read_vectors(ws)
    doc_tokens = document_tokens(ws, params)
    sep_tokens = len(separator_for(params))
    ids, sims = read_neighbors(ws)
    label_field = resolve_label_field(ws, params.label_field)
    labels = read_labels(ws, label_field)
    texts = ws.arrow("SELECT text FROM documents ORDER BY doc").column("text").to_pylist()
    scoring = KeptScoring.build(ids, sims, kept, params.k, texts)

    def measure(p: pack.Packing) -> dict[str, Any]:
        return scoring.measure(p, vectors, doc_tokens, params.context_length, labels)

    current = measure(packing)
    random = measure(random_packing(kept, doc_tokens, params, sep_tokens))
    once = metrics.every_doc_once(packing, kept, doc_tokens, sep_tokens) and (
        len(kept) + n_duplicates == n_documents
    )
    counts = {
        "n_documents": n_documents,
        "n_rejected": n_rejected,
        "n_duplicates": n_duplicates,
        "n_kept": int(len(kept)),
        "n_contexts": packing.n_contexts,
        "every_doc_once": bool(once),
    }
    return metrics.report(counts, current, random, label_field, report_parameters(params))


def report_parameters(params: Params) -> dict[str, Any]:
    """The parameters a metrics report names (the metrics table's key)."""
    names = ("order", "k", "context_length", "pack", "dedup_threshold")
    return {name: getattr(params, name) for name in names}


def random_packing(
    kept: np.ndarray, doc_tokens: np.ndarray, params: Params, sep_tokens: int
) -> pack.Packing:
    """The baseline the metrics compare against: the kept documents in a seeded random order,
    packed with the same length and policy (what the usual pretraining pipeline does)."""
    random_order = kept[np.random.default_rng(params.seed + 1).permutation(len(kept))]
    return pack.pack_contexts(
        random_order, doc_tokens, params.context_length, params.pack, sep_tokens, True, params.seed
    )


def latest_metrics(ws: Workspace, params: Params) -> dict[str, Any]:
    """The stored metrics of the current parameters (run the metrics stage first)."""
    row = ws.one(
        "SELECT result FROM metrics WHERE order_method = ? AND k = ? AND context_length = ? "
        "AND pack = ? AND dedup_threshold IS NOT DISTINCT FROM ? ORDER BY computed_at DESC LIMIT 1",
        [params.order, params.k, params.context_length, params.pack, params.dedup_threshold],
    )
    if row is None:
        raise IcpError("no metrics for these parameters yet; run `icp metrics`")
    return json.loads(row[0])


def check_invariants(ws: Workspace) -> list[str]:
    """Problems found (empty = all good): every input row is a kept document, a recorded
    duplicate or a reject; every kept document is in the path once and its tokens are packed
    exactly once; no context exceeds the context length; no input row is both a document
    and a reject."""
    problems = []
    both = ws.one(
        """SELECT count(*), min(r.source || ':' || r.line) FROM rejects r
           JOIN documents d ON d.source = r.source AND d.line = r.line"""
    )
    if both[0]:
        problems.append(
            f"{both[0]} input rows are both a document and a reject (first: {both[1]}); "
            "ingest that file again with the --text-field/--id-field it was ingested with"
        )
    for table in ("ordering", "contexts", "duplicates", "order_drops"):
        if not ws.has_table(table):
            return [*problems, f"table {table} missing: run `icp run` first"]
    n_docs = ws.n_documents()
    removed = ws.column("SELECT doc FROM duplicates UNION ALL SELECT doc FROM order_drops")
    ordered = ws.column("SELECT doc FROM ordering")
    if len(np.unique(removed)) != len(removed):
        problems.append("a document is recorded as removed twice")
    if len(np.unique(ordered)) != len(ordered):
        problems.append("a document appears twice in the ordering")
    accounted = np.concatenate([removed, ordered]).astype(np.int64)
    if len(accounted) != n_docs or not np.array_equal(np.sort(accounted), np.arange(n_docs)):
        problems.append(
            f"documents in ({n_docs}) != kept ({len(ordered)}) + removed ({len(removed)})"
        )
    pack_state = ws.stage_state("pack")
    if pack_state is None:
        return problems + ["pack stage never ran"]
    length = pack_state["params"]["context_length"]
    sep_tokens = len(pack_state["params"].get("separator_ids") or [1])
    packing = read_packing(ws)
    over = int((packing.context_tokens() > length).sum())
    if over:
        problems.append(f"{over} contexts exceed {length} tokens")
    key = pack_state["params"]["tokenizer_key"]
    doc_tokens = ws.column(
        """SELECT coalesce(t.n_tokens, -1) FROM documents d LEFT JOIN
           (SELECT text_hash, any_value(n_tokens) AS n_tokens FROM token_cache
            WHERE tokenizer_key = ? GROUP BY text_hash) t USING (text_hash) ORDER BY d.doc""",
        [key],
        dtype=np.int64,
    )
    if not metrics.every_doc_once(
        packing, np.sort(ordered.astype(np.int64)), doc_tokens, sep_tokens
    ):
        problems.append("packed pieces do not cover every kept document's tokens exactly once")
    return problems


# ---------------------------------------------------------------------------------------------
# layout (the app's map; not part of `icp run`)
# ---------------------------------------------------------------------------------------------


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
