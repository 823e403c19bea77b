"""Metrics adapter: measure the stored contexts and a random packing of the same documents
(`icp_core.metrics`), store the report in `metrics`; `latest_metrics` reads it back."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from icp_core import metrics, pack
from icp_core.errors import IcpError
from icp_core.ingest import meta_field_path
from icp_core.params import Params
from icp_core.stages._report import Report, _noop
from icp_core.stages.dedup import kept_documents
from icp_core.stages.embed import read_vectors
from icp_core.stages.knn import read_neighbors
from icp_core.stages.pack import document_tokens, read_packing, separator_for
from icp_core.workspace import Workspace, _now


def resolve_label_field(ws: Workspace, label_field: str | None) -> str | None:
    """The label field to score: the one asked for, else `label` when documents carry it."""
    if label_field:
        present = ws.scalar(
            "SELECT count(*) FROM documents WHERE json_extract_string(meta, ?) IS NOT NULL",
            [meta_field_path(label_field)],
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
            [meta_field_path(label_field)],
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
    scoring = metrics.KeptScoring.build(ids, sims, kept, params.k, texts)

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
