"""Ray ingest: one task per input file runs `ingest.parse_source` (the local engine's parser:
same rejects, reasons, files and lines, same default ids), and documents are numbered in input
order exactly as the local workspace numbers them, so `--vectors FILE.npy` rows line up the
same way.

Repeated ids are found without bringing the rows to the driver: each task returns its ids'
64-bit hashes; only rows whose hash occurs twice are fetched and compared exactly
(`ingest.repeated_ids`), and the later rows become rejects with the local engine's reason
(`ingest.duplicate_id_reason`). A source whose content was already given is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from icp_core import ingest
from icp_core.distributed.ray_util import Report, fetch
from icp_core.errors import IcpError
from icp_core.params import Params


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


@ray.remote(num_returns=2)
def _parse_task(
    path: str, text_field: str, id_field: str, label_field: str, name: str | None
) -> tuple:
    """One input parsed: its accepted rows (a table) and a summary for the driver."""
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
        "id_hash": pd.util.hash_array(np.asarray(parsed.ids, dtype=object), categorize=False),
        "n_labelled": table.num_rows - table.column("label").null_count,
    }
    return table, summary


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


def ingest_stage(inputs: list[str], params: Params, report: Report) -> Corpus:
    """Parse every input in parallel; reject repeated ids like the local ingest does."""
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
    for number, (_, summary_ref) in enumerate(parsed, start=1):
        summaries.append(fetch(summary_ref))
        report(number, len(inputs))
    seen_hashes: set[str] = set()
    accepted = []
    for (table_ref, _), summary in zip(parsed, summaries, strict=True):
        if summary["content_hash"] in seen_hashes:
            continue  # the same content given twice adds nothing, as in the local ingest
        seen_hashes.add(summary["content_hash"])
        accepted.append((table_ref, summary))
    duplicate_rows = _duplicate_id_rows(accepted)
    shards, reject_tables, sources = [], [], []
    first_doc = 0
    for index, (table_ref, summary) in enumerate(accepted):
        drop_rows, drop_rejects = duplicate_rows.get(index, (np.zeros(0, np.int64), None))
        n_docs = len(summary["id_hash"]) - len(drop_rows)
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


def _duplicate_id_rows(accepted: list[tuple]) -> dict[int, tuple[np.ndarray, pa.Table]]:
    """Per accepted source, the rows whose id appeared earlier (in input order), with rejects.

    Candidates come from equal 64-bit hashes; their ids are fetched and compared exactly.
    """
    hashes = [summary["id_hash"] for _, summary in accepted]
    if not hashes or not sum(map(len, hashes)):
        return {}
    all_hashes = np.concatenate(hashes)
    source = np.repeat(np.arange(len(hashes)), [len(h) for h in hashes])
    row = np.concatenate([np.arange(len(h)) for h in hashes])
    _, inverse, counts = np.unique(all_hashes, return_inverse=True, return_counts=True)
    suspect = np.flatnonzero(counts[inverse] > 1)  # in input order
    if not len(suspect):
        return {}
    sources = np.unique(source[suspect]).tolist()
    fetched = fetch(
        [_take_rows.remote(accepted[s][0], row[suspect][source[suspect] == s]) for s in sources]
    )
    rows = pa.concat_tables(fetched).to_pydict()
    drops: dict[int, list[int]] = {}
    rejects: dict[int, list[ingest.Reject]] = {}
    for position, first in zip(*ingest.repeated_ids(rows["id"]), strict=True):
        s, r = int(source[suspect][position]), int(row[suspect][position])
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
