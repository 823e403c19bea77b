"""Ray ingest: one task per input file runs `ingest.parse_source` (the local engine's parser:
same rejects, reasons, files and lines, same default ids), and documents are numbered in input
order exactly as the local workspace numbers them, so `--vectors FILE.npy` rows line up the
same way.

Repeated ids are found by a hash shuffle, so neither the rows nor every id's hash come to the
driver: each parse task returns its ids' 64-bit hashes as an object of their own; once the row
counts are known, one task per source splits its (hash, row) pairs into B buckets by hash (B
from the corpus size, `ID_BUCKET_ROWS` pairs a bucket), and one task per bucket returns the
(source, row) of every hash in it that occurs more than once. The driver fetches only those
suspects' rows and compares their ids exactly (`ingest.repeated_ids`, in input order, so the
earlier row wins); the later rows become rejects with the local engine's reason
(`ingest.duplicate_id_reason`). A source whose content was already given is skipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from icp_core import ingest
from icp_core.distributed.ray_util import Report, fetch, ref_list, rows_by_group
from icp_core.errors import IcpError
from icp_core.params import Params

# (hash, row) pairs per repeated-id bucket: a bucket task's peak RSS measured 0.99 GB at 8M
# (inputs, np.unique's sort and imports included); 1B documents make 125 buckets.
ID_BUCKET_ROWS = 8_000_000


@dataclass
class Shard:
    """One input file's accepted documents: `ref` holds (doc, id, text, line, label, file)
    with doc in first_doc .. first_doc + n_docs - 1."""

    source: str
    ref: Any
    first_doc: int
    n_docs: int


@dataclass
class Corpus:
    shards: list[Shard]
    n_documents: int
    rejects: pa.Table
    sources: list[dict[str, Any]]
    label_field: str | None
    counts: dict[str, int]


@ray.remote(num_returns=3)
def _parse_task(
    path: str, text_field: str, id_field: str, label_field: str, name: str | None
) -> tuple:
    """One input parsed: its accepted rows (a table), a summary for the driver and its ids'
    64-bit hashes (for the repeated-id shuffle; the driver never fetches them)."""
    import pandas as pd

    parsed = ingest.parse_source(path, text_field, id_field, name=name)
    table = pa.table(
        {
            "id": pa.array(parsed.ids, pa.string()),
            "text": pa.array(parsed.texts, pa.string()),
            "line": pa.array(parsed.lines, pa.int64()),
            "label": pa.array(ingest.label_values(parsed.metas, label_field), pa.string()),
            "file": pa.array(parsed.files, pa.string()).dictionary_encode(),
        }
    )
    summary = {
        "source": parsed.source,
        "content_hash": parsed.content_hash,
        "format": parsed.format,
        "rejects": ingest.rejects_table(parsed.source, parsed.rejects),
        "n_rows": table.num_rows,
        "n_labelled": table.num_rows - table.column("label").null_count,
    }
    id_hash = pd.util.hash_array(np.asarray(parsed.ids, dtype=object), categorize=False)
    return table, summary, id_hash


@ray.remote
def _split_hashes_task(id_hash: np.ndarray, n_buckets: int) -> Any:
    """One source's (hash, row) pairs split by hash into `n_buckets` (a pair of arrays each;
    the bare pair when n_buckets is 1)."""
    bucket = (id_hash % np.uint64(n_buckets)).astype(np.int64)
    parts = tuple((id_hash[rows], rows) for rows in rows_by_group(bucket, n_buckets))
    return parts if n_buckets > 1 else parts[0]


@ray.remote
def _repeated_hashes_task(*parts: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """(source, row) of every pair in one bucket whose hash occurs more than once; `parts`
    are the accepted sources' pairs in source order."""
    hashes = np.concatenate([id_hash for id_hash, _ in parts])
    source = np.repeat(np.arange(len(parts)), [len(id_hash) for id_hash, _ in parts])
    rows = np.concatenate([rows for _, rows in parts])
    _, inverse, counts = np.unique(hashes, return_inverse=True, return_counts=True)
    repeated = counts[inverse] > 1
    return np.stack([source[repeated], rows[repeated]], axis=1)


@ray.remote
def _take_rows(table: pa.Table, rows: np.ndarray) -> pa.Table:
    return table.take(pa.array(rows, pa.int64())).select(["id", "line", "file", "text"])


@ray.remote
def _number_task(table: pa.Table, drop_rows: np.ndarray, first_doc: int) -> pa.Table:
    keep = np.ones(table.num_rows, dtype=bool)
    keep[drop_rows] = False
    kept = table.filter(pa.array(keep))
    doc = np.arange(first_doc, first_doc + kept.num_rows, dtype=np.int64)
    return kept.add_column(0, "doc", pa.array(doc))


def ingest_stage(
    inputs: list[str], params: Params, report: Report, id_bucket_rows: int = ID_BUCKET_ROWS
) -> Corpus:
    """Parse every input in parallel; reject repeated ids like the local ingest does.

    id_bucket_rows: ids per bucket of the repeated-id shuffle (tests make it small).
    """
    for path in inputs:
        ingest.check_input(Path(path))  # missing, dangling or not a regular file: one line
        ingest.detect_format(Path(path))
    label_field = params.label_field or "label"
    names = ingest.id_names(inputs)
    parsed = [
        _parse_task.remote(
            str(path), params.text_field, params.id_field, label_field, names.get(str(path))
        )
        for path in inputs
    ]
    summaries = []
    for number, (_, summary_ref, _) in enumerate(parsed, start=1):
        summaries.append(fetch(summary_ref))
        report(number, len(inputs))
    seen_hashes: set[str] = set()
    accepted, id_hashes = [], []
    for (table_ref, _, id_hash_ref), summary in zip(parsed, summaries, strict=True):
        if summary["content_hash"] in seen_hashes:
            continue  # the same content given twice adds nothing, as in the local ingest
        seen_hashes.add(summary["content_hash"])
        accepted.append((table_ref, summary))
        id_hashes.append(id_hash_ref)
    duplicate_rows = _duplicate_id_rows(accepted, _suspects(accepted, id_hashes, id_bucket_rows))
    shards, reject_tables, sources = [], [], []
    first_doc = 0
    for index, (table_ref, summary) in enumerate(accepted):
        drop_rows, drop_rejects = duplicate_rows.get(index, (np.zeros(0, np.int64), None))
        n_docs = summary["n_rows"] - len(drop_rows)
        ref = _number_task.remote(table_ref, drop_rows, first_doc)
        shards.append(Shard(summary["source"], ref, first_doc, n_docs))
        rejects = summary["rejects"]
        if drop_rejects is not None:
            rejects = pa.concat_tables([rejects, drop_rejects])
        reject_tables.append(rejects)
        sources.append(
            {
                "source": summary["source"],
                "content_hash": summary["content_hash"],
                "format": summary["format"],
                "n_documents": n_docs,
                "n_rejected": rejects.num_rows,
            }
        )
        first_doc += n_docs
    n_labelled = sum(summary["n_labelled"] for _, summary in accepted)
    if params.label_field and not n_labelled:
        raise IcpError(f"--label-field {params.label_field}: no document has that field")
    rejects = pa.concat_tables(reject_tables) if reject_tables else ingest.rejects_table("", [])
    if first_doc == 0:
        raise IcpError(
            f"no documents in {', '.join(map(str, inputs))} "
            f"({rejects.num_rows} rows rejected); check --text-field"
        )
    return Corpus(
        shards=shards,
        n_documents=first_doc,
        rejects=rejects,
        sources=sources,
        label_field=label_field if n_labelled else None,
        counts={
            "documents": first_doc,
            "rejected": rejects.num_rows,
            "sources_skipped": len(parsed) - len(accepted),
        },
    )


def _suspects(accepted: list[tuple], id_hashes: list, id_bucket_rows: int) -> np.ndarray:
    """(source, row) of every accepted row whose id hash occurs more than once, in input order
    (the hash shuffle of the module docstring)."""
    n_rows = sum(summary["n_rows"] for _, summary in accepted)
    if not n_rows:
        return np.zeros((0, 2), np.int64)
    n_buckets = max(1, math.ceil(n_rows / id_bucket_rows))
    split = [
        ref_list(
            _split_hashes_task.options(num_returns=n_buckets).remote(ref, n_buckets), n_buckets
        )
        for ref in id_hashes
    ]
    found = fetch(
        [_repeated_hashes_task.remote(*[parts[b] for parts in split]) for b in range(n_buckets)]
    )
    suspects = np.concatenate(found)
    return suspects[np.lexsort((suspects[:, 1], suspects[:, 0]))]


def _duplicate_id_rows(
    accepted: list[tuple], suspects: np.ndarray
) -> dict[int, tuple[np.ndarray, pa.Table]]:
    """Per accepted source, the rows whose id appeared earlier (in input order), with rejects.

    `suspects`: (source, row) of the rows whose id hash is not unique, in input order; their
    ids are fetched and compared exactly.
    """
    if not len(suspects):
        return {}
    source, row = suspects[:, 0], suspects[:, 1]
    sources = np.unique(source).tolist()
    fetched = fetch([_take_rows.remote(accepted[s][0], row[source == s]) for s in sources])
    rows = pa.concat_tables(fetched).to_pydict()
    drops: dict[int, list[int]] = {}
    rejects: dict[int, list[ingest.Reject]] = {}
    for position, first in zip(*ingest.repeated_ids(rows["id"]), strict=True):
        s, r = int(source[position]), int(row[position])
        first_place = f"{rows['file'][first]}:{rows['line'][first]}"
        doc_id = rows["id"][position]
        reason = ingest.duplicate_id_reason(doc_id, first_place)
        raw = rows["text"][position][: ingest.RAW_PREVIEW_CHARS]
        drops.setdefault(s, []).append(r)
        line, file = rows["line"][position], rows["file"][position]
        rejects.setdefault(s, []).append(ingest.Reject(line, doc_id, reason, raw, file))
    return {
        s: (
            np.asarray(dropped, dtype=np.int64),
            ingest.rejects_table(accepted[s][1]["source"], rejects[s]),
        )
        for s, dropped in drops.items()
    }
