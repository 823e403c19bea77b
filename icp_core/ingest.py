"""Ingest: read JSONL (plain or .gz), Parquet, CSV or a folder of .txt/.md files into rows.

Every input row ends up either as a document or as a reject with its file, line and reason;
nothing is dropped silently. A problem with a whole file (no such text column, a text column
of the wrong type, an unsupported format) raises `IcpError` before anything is written.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from icp_core.errors import IcpError

TEXT_SUFFIXES = (".txt", ".md")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json", ".jsonl.gz", ".ndjson.gz", ".json.gz")
RAW_PREVIEW_CHARS = 200
_CHUNK = 1 << 20


@dataclass
class ParsedSource:
    """What one input file or folder yields.

    `ids`, `texts`, `lines`, `metas` are parallel lists of accepted rows; `rejects` holds
    (line, id or None, reason, raw preview) tuples.
    """

    source: str
    format: str
    content_hash: str
    ids: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    metas: list[str | None] = field(default_factory=list)
    rejects: list[tuple[int | None, str | None, str, str | None]] = field(default_factory=list)

    def reject(self, line: int | None, reason: str, raw: Any = None, doc_id: str | None = None):
        if isinstance(raw, bytes):
            raw = raw[: RAW_PREVIEW_CHARS * 4].decode("utf-8", errors="replace")
        preview = None if raw is None else str(raw)[:RAW_PREVIEW_CHARS]
        self.rejects.append((line, doc_id, reason, preview))


def detect_format(path: Path) -> str:
    """Name the reader for a path: jsonl, parquet, csv, text or folder."""
    if path.is_dir():
        return "folder"
    name = path.name.lower()
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    if name.endswith(TEXT_SUFFIXES):
        return "text"
    raise IcpError(
        f"{path}: unsupported input type; give .jsonl/.jsonl.gz, .parquet, .csv, .txt/.md "
        "or a folder of .txt/.md files"
    )


def hash_file(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def hash_text(text: str) -> str:
    """Content key of a document text (embedding and token caches are keyed on it)."""
    return hashlib.blake2b(text.encode("utf-8", errors="surrogatepass"), digest_size=16).hexdigest()


def source_fingerprint(path: Path) -> str:
    """Content hash of a file, or of a folder's relative paths and file contents."""
    if not path.exists():
        raise IcpError(f"{path}: no such file or folder")
    if not path.is_dir():
        return hash_file(path)
    digest = hashlib.blake2b(digest_size=16)
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode())
        digest.update(hash_file(file).encode())
    return digest.hexdigest()


def parse_source(
    path: str | Path,
    text_field: str = "text",
    id_field: str = "id",
    content_hash: str | None = None,
) -> ParsedSource:
    """Read one input path into accepted rows and rejects.

    Args:
        path: a file or folder (see `detect_format`).
        text_field: column/key holding the document text.
        id_field: column/key holding the document id; when a row lacks it, the id is
            `<file name>:<line>` (and the file path for a folder of text files).
        content_hash: `source_fingerprint(path)` when the caller has it already.

    Raises:
        IcpError: missing file, unsupported format, or a file-level schema problem.
    """
    path = Path(path)
    kind = detect_format(path) if path.exists() else None
    content_hash = content_hash or source_fingerprint(path)
    parsed = ParsedSource(source=str(path), format=kind, content_hash=content_hash)
    if kind == "folder":
        _parse_folder(path, parsed)
        return parsed
    if kind == "jsonl":
        _parse_jsonl(path, parsed, text_field, id_field)
    elif kind == "parquet":
        _parse_parquet(path, parsed, text_field, id_field)
    elif kind == "csv":
        _parse_csv(path, parsed, text_field, id_field)
    else:
        _accept_text_file(path, path.name, parsed)
    return parsed


def _open_binary(path: Path) -> io.BufferedIOBase:
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _iter_lines(path: Path, parsed: ParsedSource) -> Iterator[tuple[int, bytes]]:
    """Numbered raw lines; a truncated or corrupt .gz becomes one reject, not a traceback."""
    line_no = 0
    try:
        with _open_binary(path) as handle:
            for line_no, raw in enumerate(handle, start=1):  # noqa: B007 (used after the loop)
                yield line_no, raw
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as err:
        parsed.reject(
            line_no + 1,
            f"file unreadable after line {line_no} ({type(err).__name__}: {err}); "
            "re-download or re-compress the file",
        )


def _accept(
    parsed: ParsedSource,
    line: int,
    record: dict[str, Any],
    text_field: str,
    id_field: str,
    default_id: str,
    raw: Any,
) -> None:
    """Validate one record's text and id and file it as a document or a reject."""
    raw_id = record.get(id_field)
    doc_id = default_id if raw_id is None or raw_id == "" else str(raw_id)
    if text_field not in record:
        parsed.reject(line, f"missing text field '{text_field}' (set --text-field)", raw, doc_id)
        return
    text = record[text_field]
    if not isinstance(text, str):
        kind = "null" if text is None else type(text).__name__
        parsed.reject(line, f"text field '{text_field}' is {kind}, not a string", raw, doc_id)
        return
    if not text.strip():
        parsed.reject(line, "empty text", raw, doc_id)
        return
    meta = {k: v for k, v in record.items() if k not in (text_field, id_field)}
    parsed.ids.append(doc_id)
    parsed.texts.append(text)
    parsed.lines.append(line)
    parsed.metas.append(orjson.dumps(meta, default=str).decode() if meta else None)


def _parse_jsonl(path: Path, parsed: ParsedSource, text_field: str, id_field: str) -> None:
    for line_no, raw in _iter_lines(path, parsed):
        if not raw.strip():
            continue  # blank lines carry no row (common at file end)
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            parsed.reject(line_no, f"not valid UTF-8 at byte {err.start}", raw)
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as err:
            parsed.reject(line_no, f"invalid JSON ({err.args[0] if err.args else err})", line)
            continue
        if not isinstance(record, dict):
            parsed.reject(line_no, f"a JSON {type(record).__name__}, not an object", line)
            continue
        _accept(parsed, line_no, record, text_field, id_field, f"{path.name}:{line_no}", line)


def _parse_csv(path: Path, parsed: ParsedSource, text_field: str, id_field: str) -> None:
    csv.field_size_limit(2**31 - 1)  # a CSV may hold whole books in one cell
    with _open_binary(path) as binary:
        text_stream = io.TextIOWrapper(
            binary, encoding="utf-8", errors="surrogateescape", newline=""
        )
        reader = csv.DictReader(text_stream)
        try:
            columns = reader.fieldnames or []
        except csv.Error as err:
            raise IcpError(f"{path}: not a readable CSV file ({err})") from None
        if columns and text_field not in columns:
            raise IcpError(
                f"{path}: no column '{text_field}' (columns: {', '.join(columns)}); "
                "pass --text-field NAME"
            )
        try:
            for row in reader:
                line_no = reader.line_num
                values = list(row.values())
                if any(isinstance(v, str) and _has_surrogates(v) for v in values):
                    parsed.reject(line_no, "not valid UTF-8", ",".join(map(str, values)))
                    continue
                if None in row:  # more fields than the header names
                    parsed.reject(
                        line_no, "more fields than the header", ",".join(map(str, values))
                    )
                    continue
                _accept(parsed, line_no, row, text_field, id_field, f"{path.name}:{line_no}", row)
        except (csv.Error, EOFError, gzip.BadGzipFile, zlib.error) as err:
            parsed.reject(reader.line_num + 1, f"CSV unreadable from here ({err})")


def _has_surrogates(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _parse_parquet(path: Path, parsed: ParsedSource, text_field: str, id_field: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise IcpError(f"{path}: not a readable Parquet file ({err})") from None
    schema = parquet.schema_arrow
    if text_field not in schema.names:
        raise IcpError(
            f"{path}: no column '{text_field}' (columns: {', '.join(schema.names)}); "
            "pass --text-field NAME"
        )
    text_type = schema.field(text_field).type
    if not (pa.types.is_string(text_type) or pa.types.is_large_string(text_type)):
        raise IcpError(
            f"{path}: column '{text_field}' has type {text_type}, not string; "
            "pass --text-field with a string column"
        )
    line_no = 0
    for batch in parquet.iter_batches(batch_size=8192):
        for record in batch.to_pylist():
            line_no += 1
            _accept(parsed, line_no, record, text_field, id_field, f"{path.name}:{line_no}", None)


def _accept_text_file(path: Path, doc_id: str, parsed: ParsedSource) -> None:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        parsed.reject(None, f"not valid UTF-8 at byte {err.start}", raw, doc_id)
        return
    _accept(parsed, 1, {"text": text}, "text", "id", doc_id, None)


def _parse_folder(folder: Path, parsed: ParsedSource) -> None:
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = file.relative_to(folder).as_posix()
        if file.name.lower().endswith(TEXT_SUFFIXES):
            _accept_text_file(file, relative, parsed)
        else:
            parsed.reject(None, "not a .txt or .md file (folders take only those)", None, relative)
