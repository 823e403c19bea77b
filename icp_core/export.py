"""Export: write the packed contexts as JSONL, Parquet or token ids, plus a manifest.

The output is a folder, written under a temporary name and renamed at the end, so a killed
export never leaves a partial result under the final name. It always holds `manifest.json`,
`duplicates.jsonl` (removed documents and the kept document each one copies) and
`rejects.jsonl` (rows that never became documents), next to one of:

- `contexts.jsonl` / `contexts.parquet`: one row per context with `context`, `text` (its
  document pieces, each followed by the separator unless the document continues in another
  context), `doc_ids` (input ids, in order), `doc_token_start`/`doc_token_end` (which tokens
  of each document the piece holds: a document cut by a context boundary continues elsewhere)
  and `n_tokens`;
- `tokens.bin` (flat uint16/uint32 token ids) and `offsets.npy` (int64, n_contexts + 1):
  context i is `np.memmap("tokens.bin", dtype)[offsets[i]:offsets[i + 1]]`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from icp_core import __version__, pack, stages
from icp_core.errors import IcpError
from icp_core.faults import crash_point
from icp_core.params import Params
from icp_core.workspace import Workspace

FORMATS = ("jsonl", "parquet", "tokens")
# One row per context in contexts.parquet (and in the Ray engine's contexts-*.parquet files).
CONTEXT_SCHEMA = pa.schema(
    [
        ("context", pa.int64()),
        ("text", pa.string()),
        ("doc_ids", pa.list_(pa.string())),
        ("doc_token_start", pa.list_(pa.int64())),
        ("doc_token_end", pa.list_(pa.int64())),
        ("n_tokens", pa.int64()),
    ]
)
_CONTEXT_BATCH = 512

Report = Callable[[int, int], None]


def _noop(done: int, total: int) -> None:
    return None


def piece_char_span(tokenizer, text: str, start: int, end: int, n_tokens: int) -> tuple[int, int]:
    """Characters of `text` that tokens [start, end) cover; consecutive pieces of one document
    tile the text exactly (the first starts at 0, the last ends at len(text))."""
    if start == 0 and end == n_tokens:
        return 0, len(text)
    offsets = tokenizer.encode(text, add_special_tokens=False).offsets

    def char_at(token: int) -> int:
        return 0 if token == 0 else len(text) if token >= n_tokens else offsets[token][0]

    return char_at(start), char_at(end)


def separator_part(sep_ids: np.ndarray, sep: int, start: int, end: int) -> np.ndarray:
    """The separator tokens a piece carries: the head of the separator, or its tail when a
    multi-token separator was cut by a context boundary and this piece holds no doc tokens."""
    continuation = start == end and start > 0
    return sep_ids[len(sep_ids) - sep :] if continuation else sep_ids[:sep]


def piece_text(
    tokenizer, sep_ids: np.ndarray, text: str, start: int, end: int, n_tokens: int, sep: int
) -> str:
    """A piece as it appears in a context's text: tokens [start, end) of the document's text,
    then the separator tokens the piece carries, decoded."""
    lo, hi = piece_char_span(tokenizer, text, start, end, n_tokens)
    if not sep:
        return text[lo:hi]
    tail = separator_part(sep_ids, sep, start, end).tolist()
    return text[lo:hi] + tokenizer.decode(tail, skip_special_tokens=False)


def _context_batches(ws: Workspace, n_contexts: int) -> Iterator[pa.Table]:
    for first in range(0, n_contexts, _CONTEXT_BATCH):
        yield ws.arrow(
            """SELECT c.context, c.slot, c.doc, c.token_start, c.token_end, c.sep_tokens,
                      d.id, d.text, t.n_tokens
               FROM contexts c JOIN documents d USING (doc)
               JOIN (SELECT text_hash, any_value(n_tokens) AS n_tokens FROM token_cache
                     WHERE tokenizer_key = ? GROUP BY text_hash) t USING (text_hash)
               WHERE c.context >= ? AND c.context < ?
               ORDER BY c.context, c.slot""",
            [_tokenizer_key(ws), first, first + _CONTEXT_BATCH],
        )


def _tokenizer_key(ws: Workspace) -> str:
    return ws.stage_state("pack")["params"]["tokenizer_key"]


def _text_rows(ws: Workspace, params: Params, report: Report) -> Iterator[dict[str, Any]]:
    """One dict per context: context, text, doc_ids, doc_token_start/end, n_tokens."""
    tokenizer = pack.load_tokenizer(str(stages._tokenizer_for(params)))
    sep_ids = np.asarray(stages.separator_for(params), dtype=np.int64)
    n_contexts = int(ws.scalar("SELECT count(DISTINCT context) FROM contexts"))
    done = 0
    for batch in _context_batches(ws, n_contexts):
        columns = {name: batch.column(name).to_pylist() for name in batch.column_names}
        current: dict[str, Any] | None = None
        for i in range(batch.num_rows):
            if current is None or current["context"] != columns["context"][i]:
                if current is not None:
                    yield _finish(current)
                current = {
                    "context": columns["context"][i],
                    "parts": [],
                    "doc_ids": [],
                    "starts": [],
                    "ends": [],
                    "n": 0,
                }
            start, end = columns["token_start"][i], columns["token_end"][i]
            current["parts"].append(
                piece_text(
                    tokenizer,
                    sep_ids,
                    columns["text"][i],
                    start,
                    end,
                    columns["n_tokens"][i],
                    columns["sep_tokens"][i],
                )
            )
            current["doc_ids"].append(columns["id"][i])
            current["starts"].append(start)
            current["ends"].append(end)
            current["n"] += end - start + columns["sep_tokens"][i]
        if current is not None:
            yield _finish(current)
        done = min(done + _CONTEXT_BATCH, n_contexts)
        report(done, n_contexts)


def _finish(current: dict[str, Any]) -> dict[str, Any]:
    return {
        "context": current["context"],
        "text": "".join(current["parts"]),
        "doc_ids": current["doc_ids"],
        "doc_token_start": current["starts"],
        "doc_token_end": current["ends"],
        "n_tokens": current["n"],
    }


def _write_jsonl(rows: Iterator[dict[str, Any]], path: Path) -> int:
    count = 0
    with open(path, "wb") as handle:
        for row in rows:
            handle.write(orjson.dumps(row) + b"\n")
            count += 1
    return count


def _write_parquet(rows: Iterator[dict[str, Any]], path: Path) -> int:
    import pyarrow.parquet as pq

    schema = CONTEXT_SCHEMA
    count = 0
    with pq.ParquetWriter(path, schema) as writer:
        buffer: list[dict[str, Any]] = []
        for row in rows:
            buffer.append(row)
            if len(buffer) == _CONTEXT_BATCH:
                writer.write_table(pa.Table.from_pylist(buffer, schema=schema))
                count += len(buffer)
                buffer = []
        if buffer or count == 0:
            writer.write_table(pa.Table.from_pylist(buffer, schema=schema))
            count += len(buffer)
    return count


def _write_tokens(ws: Workspace, params: Params, folder: Path, report: Report) -> dict[str, Any]:
    tokenizer = pack.load_tokenizer(str(stages._tokenizer_for(params)))
    sep_ids = np.asarray(stages.separator_for(params), dtype=np.int64)
    dtype = np.uint16 if tokenizer.get_vocab_size(with_added_tokens=True) <= 2**16 else np.uint32
    packing = stages.read_packing(ws)
    total = int(packing.tokens.sum())
    offsets = np.zeros(packing.n_contexts + 1, dtype=np.int64)
    np.cumsum(packing.context_tokens(), out=offsets[1:])
    flat = np.memmap(folder / "tokens.bin", dtype=dtype, mode="w+", shape=(max(total, 1),))
    position = 0
    for batch in _context_batches(ws, packing.n_contexts):
        texts = batch.column("text").to_pylist()
        encodings = tokenizer.encode_batch_fast(texts, add_special_tokens=False)
        starts = batch.column("token_start").to_pylist()
        ends = batch.column("token_end").to_pylist()
        seps = batch.column("sep_tokens").to_pylist()
        for encoding, start, end, sep in zip(encodings, starts, ends, seps, strict=True):
            piece = np.asarray(encoding.ids[start:end], dtype=np.int64)
            flat[position : position + len(piece)] = piece
            position += len(piece)
            if sep:
                flat[position : position + sep] = separator_part(sep_ids, sep, start, end)
                position += sep
        report(int(np.searchsorted(offsets, position, side="right")) - 1, packing.n_contexts)
    flat.flush()
    del flat
    if total == 0:
        os.truncate(folder / "tokens.bin", 0)
    np.save(folder / "offsets.npy", offsets)
    return {"dtype": np.dtype(dtype).name, "n_tokens": total, "n_contexts": packing.n_contexts}


def _write_removed(ws: Workspace, folder: Path) -> None:
    duplicates = ws.arrow(
        """SELECT d.id, k.id AS kept_id, r.sim, r.reason FROM (
               SELECT * FROM duplicates UNION ALL SELECT * FROM order_drops) r
           JOIN documents d ON d.doc = r.doc JOIN documents k ON k.doc = r.kept_doc
           ORDER BY r.doc"""
    )
    rejects = ws.arrow("SELECT source, line, id, reason, raw FROM rejects")
    for table, name in ((duplicates, "duplicates.jsonl"), (rejects, "rejects.jsonl")):
        with open(folder / name, "wb") as handle:
            for row in table.to_pylist():
                handle.write(orjson.dumps(row) + b"\n")


def export_contexts(
    ws: Workspace,
    params: Params,
    out: str | Path,
    fmt: str = "parquet",
    overwrite: bool = False,
    metrics: dict[str, Any] | None = None,
    report: Report = _noop,
) -> dict[str, Any]:
    """Write the workspace's contexts to the folder `out`; returns the manifest.

    Raises:
        IcpError: unknown format, `out` exists without overwrite, no contexts yet, or a write
            failure (disk full, permissions); nothing is left under `out` in that case.
    """
    if fmt not in FORMATS:
        raise IcpError(f"unknown export format '{fmt}'; choose one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise IcpError(f"{out}: already exists; pass --overwrite to replace it")
    if not ws.has_table("contexts"):
        raise IcpError("no contexts yet; run `icp pack` (or `icp run`) first")
    parent = out.parent if str(out.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        for stale in parent.glob(f".{out.name}.partial-*"):  # left by a killed export
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=parent))
    except OSError as err:
        raise IcpError(
            f"{out}: cannot write there ({err.strerror}); choose another --out"
        ) from None
    try:
        files_info: dict[str, Any] = {}
        if fmt == "jsonl":
            files_info["n_contexts"] = _write_jsonl(
                _text_rows(ws, params, report), staging / "contexts.jsonl"
            )
        elif fmt == "parquet":
            files_info["n_contexts"] = _write_parquet(
                _text_rows(ws, params, report), staging / "contexts.parquet"
            )
        else:
            files_info.update(_write_tokens(ws, params, staging, report))
        _write_removed(ws, staging)
        manifest = _manifest(ws, params, fmt, files_info, metrics, staging)
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
        crash_point("export.staged")
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(staging, out)
    except OSError as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise IcpError(
            f"{out}: export failed ({err.strerror or err}); nothing was written, "
            "free space or choose another --out"
        ) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _manifest(
    ws: Workspace,
    params: Params,
    fmt: str,
    files_info: dict[str, Any],
    metrics: dict[str, Any] | None,
    folder: Path,
) -> dict[str, Any]:
    sources = ws.arrow(
        "SELECT source, content_hash, format, n_documents, n_rejected FROM sources"
    ).to_pylist()
    pack_state = ws.stage_state("pack")
    return {
        "tool": "icp-workbench",
        "version": __version__,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "format": fmt,
        "files": {p.name: p.stat().st_size for p in sorted(folder.iterdir())},
        "parameters": params.to_dict(),
        "tokenizer_key": pack_state["params"]["tokenizer_key"],
        "separator_ids": pack_state["params"].get("separator_ids"),
        "counts": files_info,
        "metrics": metrics,
        "source_fingerprint": ws.stage_state("ingest")["fingerprint"],
        "sources": sources,
        "stage_fingerprints": {
            stage: (ws.stage_state(stage) or {}).get("fingerprint")
            for stage in ("ingest", "embed", "knn", "dedup", "order", "pack")
        },
    }
