"""Ingest: read JSONL (plain or .gz), Parquet, CSV, .txt/.md files or folders of them into rows.

Every input row ends up either as a document or as a reject with its file, line and reason;
nothing is dropped, merged or renamed silently. A problem with a whole file given directly (no
such text column, a text column of the wrong type, an unsupported format, not a regular file)
raises `IcpError` before anything is written; inside a folder the same problem is one reject
for that file (line None), and the folder's other files are read.

Text encoding: UTF-8. A UTF-8 byte-order mark at the start of a file is dropped; a UTF-16
file (its byte-order mark) is one reject asking to convert it; bytes that are not UTF-8 reject
the row (JSONL line, CSV record, text file) they are in, with its line.

Line endings: `\\n`, `\\r\\n` and a lone `\\r` each end a line (JSONL, CSV).

Default ids: a row without an id (field missing, null or "") is named `NAME:LINE`, where NAME is
the file's path relative to the input root: the folder given, or, for files given directly,
the deepest folder holding all files of the same command (so a single file keeps its bare
file name, and `x/a.jsonl` given with `y/a.jsonl` becomes `x/a.jsonl:3`). A text file's id is
NAME itself. Integer ids and integral floats become their integer digits (`1`, `1.0` -> `1`),
other floats their shortest repr; booleans, lists and objects are no ids and reject the row.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import math
import os
import re
import stat
import zlib
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from icp_core.errors import IcpError

TEXT_SUFFIXES = (".txt", ".md")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json", ".jsonl.gz", ".ndjson.gz", ".json.gz")
PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv", ".csv.gz")
RAW_PREVIEW_CHARS = 200
# Delimiters a CSV header may use; the one it holds most often wins (ties: this order).
CSV_DELIMITERS = (",", ";", "\t", "|")
_CHUNK = 1 << 20
# Reject reasons say what is wrong with a row, not which option fixes it (the command line
# and the app name options differently): `reject_fix` gives the advice for a stored reason.
MISSING_TEXT = "missing text field"
TEXT_DIFFERS = "text differs from the stored document"
FIELDS_DIFFER = "fields other than the text differ from the stored document"
_REJECT_FIXES = {
    MISSING_TEXT: ("set {fix} to the field that holds the text", "text_field"),
    TEXT_DIFFERS: ("use {fix} to replace the stored documents", "update"),
    FIELDS_DIFFER: ("use {fix} to replace the stored documents", "update"),
}
_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_UNSUPPORTED = (
    "unsupported input type; give .jsonl/.jsonl.gz, .parquet, .csv, .txt/.md or a folder of them"
)


class Reject(NamedTuple):
    """A row (or a whole file, line None) that did not become a document.

    `file` is the file it came from when that is not the source itself (a file in a folder).
    """

    line: int | None
    id: str | None
    reason: str
    raw: str | None
    file: str | None = None


@dataclass(frozen=True)
class FileRef:
    """One file to read: where it is, what `source` records for it, and NAME of its ids."""

    path: Path
    source: str
    name: str


@dataclass
class ParsedSource:
    """What one input file or folder yields.

    `ids`, `texts`, `lines`, `metas`, `files` are parallel lists of accepted rows (`files`:
    the file each came from, as `documents.source` records it); `rejects` holds `Reject`s.
    """

    source: str
    format: str | None
    content_hash: str
    ids: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    metas: list[str | None] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)

    def reject(
        self,
        line: int | None,
        reason: str,
        raw: Any = None,
        doc_id: str | None = None,
        file: str | None = None,
    ) -> None:
        if isinstance(raw, bytes):
            raw = raw[: RAW_PREVIEW_CHARS * 4].decode("utf-8", errors="replace")
        preview = None if raw is None else str(raw)[:RAW_PREVIEW_CHARS]
        self.rejects.append(Reject(line, doc_id, reason, preview, file))

    def accept(self, ref: FileRef, line: int, doc_id: str, text: str, meta: str | None) -> None:
        self.ids.append(doc_id)
        self.texts.append(text)
        self.lines.append(line)
        self.metas.append(meta)
        self.files.append(ref.source)


def rejects_table(source: str, rejects: Sequence[Reject]) -> Any:
    """The `rejects` table's rows (source, line, id, reason, raw) as Arrow: a reject's own
    file when it has one (a file in a folder), else `source`."""
    import pyarrow as pa

    return pa.table(
        {
            "source": pa.array([r.file or source for r in rejects], pa.string()),
            "line": pa.array([r.line for r in rejects], pa.int64()),
            "id": pa.array([r.id for r in rejects], pa.string()),
            "reason": pa.array([r.reason for r in rejects], pa.string()),
            "raw": pa.array([r.raw for r in rejects], pa.string()),
        }
    )


def repeated_ids(ids: Sequence[str]) -> tuple[list[int], list[int]]:
    """Rows whose id an earlier row holds (in order), and for each the first row with it.

    >>> repeated_ids(["a", "b", "a", "a"])
    ([2, 3], [0, 0])
    """
    first_row: dict[str, int] = {}
    rows, firsts = [], []
    for row, doc_id in enumerate(ids):
        first = first_row.setdefault(doc_id, row)
        if first != row:
            rows.append(row)
            firsts.append(first)
    return rows, firsts


def meta_field_path(field: str) -> str:
    """The JSON path of a top-level field of the stored meta, quoted so that any name (dots,
    brackets, quotes, spaces) is one key, never a path expression.

    >>> meta_field_path('a.b'), meta_field_path('say "hi"')
    ('$."a.b"', '$."say \\\\"hi\\\\""')
    """
    escaped = field.replace("\\", "\\\\").replace('"', '\\"')
    return f'$."{escaped}"'


def label_values(metas: Sequence[str | None], label_field: str) -> list[str | None]:
    """Each row's `label_field` as DuckDB's json_extract_string gives it from the stored meta
    (strings bare, other values as JSON, None where absent)."""
    labels: list[str | None] = []
    for meta in metas:
        value = orjson.loads(meta).get(label_field) if meta else None
        labels.append(
            value if value is None or isinstance(value, str) else orjson.dumps(value).decode()
        )
    return labels


# ---------------------------------------------------------------------------------------------
# paths: formats, regular files, folders, fingerprints
# ---------------------------------------------------------------------------------------------


def format_of_name(name: str) -> str | None:
    """The reader for a file name (jsonl, parquet, csv, text), or None when unsupported."""
    name = name.lower()
    for kind, suffixes in (
        ("jsonl", JSONL_SUFFIXES),
        ("parquet", PARQUET_SUFFIXES),
        ("csv", CSV_SUFFIXES),
        ("text", TEXT_SUFFIXES),
    ):
        if name.endswith(suffixes):
            return kind
    return None


def detect_format(path: Path) -> str:
    """Name the reader for a path: jsonl, parquet, csv, text or folder."""
    if path.is_dir():
        return "folder"
    kind = format_of_name(path.name)
    if kind is None:
        raise IcpError(f"{path}: {_UNSUPPORTED}")
    return kind


def file_kind(mode: int) -> str:
    """A human name for what a stat mode is (FIFO, socket, ...)."""
    for test, name in (
        (stat.S_ISREG, "regular file"),
        (stat.S_ISDIR, "folder"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    ):
        if test(mode):
            return name
    return "special file"


def path_problem(path: Path) -> str | None:
    """Why `path` cannot be read as an input (without opening it), or None.

    Never opens the path: opening a FIFO would block until a writer appears.
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if path.is_symlink():
            return f"dangling symlink -> {os.readlink(path)}"
        return "no such file or folder"
    except OSError as err:  # a symlink loop (ELOOP), a permission problem on the way
        target = f" -> {os.readlink(path)}" if path.is_symlink() else ""
        return f"cannot follow{target} ({err.strerror})"
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    return f"not a regular file ({file_kind(mode)})"


def check_input(path: Path) -> None:
    """Raise a one-line `IcpError` naming `path` when it is no file or folder to read."""
    problem = path_problem(path)
    if problem is not None:
        hint = "" if problem == "no such file or folder" else "; give a file or a folder"
        raise IcpError(f"{path}: {problem}{hint}")


@dataclass(frozen=True)
class FolderEntry:
    """A path below an input folder: a regular file to read (`problem` None) or why not."""

    path: Path
    relative: str
    problem: str | None


def walk_folder(folder: Path) -> list[FolderEntry]:
    """Every file below `folder`, sorted by relative path, following symlinked folders.

    A symlinked folder that leads back to one of its own ancestors (a loop) is one entry with
    a problem instead of being walked again, so the walk always ends. FIFOs, sockets,
    devices, dangling symlinks and folders that cannot be listed are entries with a problem;
    nothing below the folder is left out. Nothing is opened.
    """
    entries: list[FolderEntry] = []
    root = folder.stat()
    _walk(folder, "", ((root.st_dev, root.st_ino),), entries)
    return sorted(entries, key=lambda entry: entry.relative)


def _walk(
    directory: Path, prefix: str, ancestors: tuple[tuple[int, int], ...], out: list[FolderEntry]
) -> None:
    try:
        names = os.listdir(directory)
    except OSError as err:
        out.append(
            FolderEntry(directory, prefix.rstrip("/") or ".", f"cannot list ({err.strerror})")
        )
        return
    for name in names:
        path = directory / name
        relative = prefix + name
        problem = path_problem(path)
        if problem is not None:
            out.append(FolderEntry(path, relative, problem))
            continue
        info = path.stat()
        if not stat.S_ISDIR(info.st_mode):
            out.append(FolderEntry(path, relative, None))
            continue
        key = (info.st_dev, info.st_ino)
        if key in ancestors:
            out.append(
                FolderEntry(
                    path,
                    relative,
                    f"symlink loop: -> {os.readlink(path) if path.is_symlink() else path} "
                    "leads back to a folder above it; not followed",
                )
            )
            continue
        _walk(path, relative + "/", (*ancestors, key), out)


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
    """Content hash of a file, or of a folder's relative paths, file contents and problems.

    Raises:
        IcpError: the path is missing, not a regular file or folder, or a file is unreadable.
    """
    check_input(path)
    if not path.is_dir():
        try:
            return hash_file(path)
        except OSError as err:
            raise IcpError(f"{path}: cannot read ({err.strerror})") from None
    digest = hashlib.blake2b(digest_size=16)
    for entry in walk_folder(path):
        digest.update(entry.relative.encode(errors="surrogateescape") + b"\0")
        if entry.problem is None:
            try:
                digest.update(hash_file(entry.path).encode())
            except OSError as err:  # read again (and rejected) by the parse
                digest.update(f"unreadable: {err.strerror}".encode())
        else:
            digest.update(entry.problem.encode(errors="surrogateescape"))
    return digest.hexdigest()


def id_names(inputs: Sequence[str | Path]) -> dict[str, str]:
    """NAME (the `NAME:LINE` of default ids) of each file among `inputs` given directly.

    It is the file's path relative to the deepest folder holding all those files: one file
    keeps its bare name, `x/a.jsonl` and `y/a.jsonl` become `x/a.jsonl` and `y/a.jsonl`.
    """
    files = [str(p) for p in inputs if not Path(p).is_dir()]
    if not files:
        return {}
    parents = [os.path.dirname(os.path.abspath(p)) for p in files]
    root = os.path.commonpath(parents)
    return {p: Path(os.path.relpath(os.path.abspath(p), root)).as_posix() for p in files}


def reject_fix(reason: str) -> tuple[str, str] | None:
    """What fixes rows rejected for `reason`: (advice saying "{fix}" where the option goes,
    the option; see `IcpError`), or None when the file itself must change."""
    return next((fix for start, fix in _REJECT_FIXES.items() if reason.startswith(start)), None)


# ---------------------------------------------------------------------------------------------
# parsing
# ---------------------------------------------------------------------------------------------


def duplicate_id_reason(doc_id: str, first_place: str) -> str:
    """The reject reason of a row whose id an earlier row (at `first_place`, file:line) took."""
    return f"duplicate id '{doc_id}' (first at {first_place})"


def parse_source(
    path: str | Path,
    text_field: str = "text",
    id_field: str = "id",
    content_hash: str | None = None,
    name: str | None = None,
) -> ParsedSource:
    """Read one input path into accepted rows and rejects.

    Args:
        path: a file or folder (see `detect_format`); a folder's files of every supported
            format are read, following symlinked folders.
        text_field: column/key holding the document text.
        id_field: column/key holding the document id; when a row lacks it (missing, null or
            ""), the id is `NAME:LINE` (module docstring).
        content_hash: `source_fingerprint(path)` when the caller has it already.
        name: NAME for a file given directly (see `id_names`) [its file name].

    Raises:
        IcpError: missing path, not a regular file, unsupported format, or a file-level
            schema problem of a file given directly.
    """
    path = Path(path)
    check_input(path)
    kind = detect_format(path)
    content_hash = content_hash or source_fingerprint(path)
    parsed = ParsedSource(source=str(path), format=kind, content_hash=content_hash)
    if kind == "folder":
        _parse_folder(path, parsed, text_field, id_field)
    else:
        _parse_file(FileRef(path, str(path), name or path.name), kind, parsed, text_field, id_field)
    return parsed


def _parse_file(
    ref: FileRef, kind: str, parsed: ParsedSource, text_field: str, id_field: str
) -> None:
    if kind == "jsonl":
        _parse_jsonl(ref, parsed, text_field, id_field)
    elif kind == "parquet":
        _parse_parquet(ref, parsed, text_field, id_field)
    elif kind == "csv":
        _parse_csv(ref, parsed, text_field, id_field)
    else:
        _accept_text_file(ref, parsed)


def _parse_folder(folder: Path, parsed: ParsedSource, text_field: str, id_field: str) -> None:
    for entry in walk_folder(folder):
        source = str(folder / entry.relative)
        if entry.problem is not None:
            parsed.reject(None, entry.problem, None, entry.relative, source)
            continue
        kind = format_of_name(entry.path.name)
        if kind is None:
            parsed.reject(None, _UNSUPPORTED, None, entry.relative, source)
            continue
        try:
            _parse_file(
                FileRef(entry.path, source, entry.relative), kind, parsed, text_field, id_field
            )
        except IcpError as err:  # a file-level problem rejects that file, not the folder
            parsed.reject(None, str(err), None, None, source)


# -- lines ------------------------------------------------------------------------------------


def file_problem(head: bytes, kind: str, compressed: bool) -> str | None:
    """Why a file whose (decompressed) content starts with `head` is not of `kind`, or None."""
    if head.startswith(_UTF16_BOMS):
        return "UTF-16 text (byte-order mark); convert the file to UTF-8 (iconv -f UTF-16 -t UTF-8)"
    if head.startswith(b"PAR1") and kind in ("jsonl", "csv"):  # a text may start so
        return f"a Parquet file, not {kind}; give it a .parquet name"
    if head.startswith(b"\x1f\x8b") and not compressed:
        # .txt/.md files are read uncompressed only
        fix = "gunzip it" if kind == "text" else "add .gz to the file name"
        return f"gzip-compressed; {fix}"
    return None


def split_lines(chunk: bytes) -> list[bytes]:
    """Physical lines of a chunk ending at most once in `\\n`, keeping their endings;
    `\\r\\n` and a lone `\\r` end a line too."""
    return chunk.splitlines(keepends=True) if b"\r" in chunk else [chunk]


def _open_binary(path: Path) -> io.BufferedIOBase:
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _iter_lines(ref: FileRef, parsed: ParsedSource, kind: str) -> Iterator[tuple[int, bytes]]:
    """Numbered physical lines with their endings, the UTF-8 byte-order mark dropped.

    A file that is not what its name says (`file_problem`), or that cannot be read further (a
    truncated or corrupt .gz, an I/O error), becomes one reject at the line where it stops.
    """
    line_no = 0
    compressed = ref.path.name.lower().endswith(".gz")
    try:
        with _open_binary(ref.path) as handle:
            for chunk in handle:
                if line_no == 0:
                    problem = file_problem(chunk[:4], kind, compressed)
                    if problem is not None:
                        parsed.reject(1, problem, chunk, None, ref.source)
                        return
                    chunk = chunk.removeprefix(_UTF8_BOM)
                for line in split_lines(chunk):
                    line_no += 1
                    yield line_no, line
    except (EOFError, zlib.error, OSError) as err:  # gzip.BadGzipFile is an OSError
        where = f" after line {line_no}" if line_no else ""
        parsed.reject(
            line_no + 1,
            f"file unreadable{where} ({type(err).__name__}: {err}); "
            "re-download or re-compress the file",
            None,
            None,
            ref.source,
        )


def _decode(raw: bytes) -> tuple[str | None, str | None]:
    """(text, None), or (None, reason) naming the first byte that is not UTF-8."""
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as err:
        return None, f"not valid UTF-8 at byte {err.start}"


# -- rows -------------------------------------------------------------------------------------


def normalize_id(value: Any) -> tuple[str | None, str | None]:
    """(id, None) for a usable id value, (None, None) when absent, (None, reason) otherwise.

    Strings stay as they are ("" counts as absent); integers and integral floats become
    their digits, so `1` and `1.0` are the same id; other finite floats their repr.
    """
    if value is None or value == "":
        return None, None
    if isinstance(value, str):
        return value, None
    if isinstance(value, bool):
        return None, "bool"
    if isinstance(value, int):
        return str(value), None
    if isinstance(value, float):
        if not math.isfinite(value):
            return None, str(value)
        return (str(int(value)) if value.is_integer() else repr(value)), None
    return None, type(value).__name__


def _accept(
    parsed: ParsedSource,
    ref: FileRef,
    line: int,
    record: dict[str, Any],
    text_field: str,
    id_field: str,
    raw: Any,
) -> None:
    """Validate one record's text and id and file it as a document or a reject."""
    doc_id, bad_id = normalize_id(record.get(id_field))
    if bad_id is not None:
        parsed.reject(
            line,
            f"id field '{id_field}' is {bad_id}, not a string or number",
            raw,
            None,
            ref.source,
        )
        return
    doc_id = doc_id if doc_id is not None else f"{ref.name}:{line}"
    if text_field not in record:
        reason = f"{MISSING_TEXT} '{text_field}'"
        parsed.reject(line, reason, raw, doc_id, ref.source)
        return
    text = record[text_field]
    if not isinstance(text, str):
        kind = "null" if text is None else type(text).__name__
        reason = f"text field '{text_field}' is {kind}, not a string"
        parsed.reject(line, reason, raw, doc_id, ref.source)
        return
    if not text.strip():
        parsed.reject(line, "empty text", raw, doc_id, ref.source)
        return
    meta = {k: v for k, v in record.items() if k not in (text_field, id_field)}
    parsed.accept(
        ref, line, doc_id, text, orjson.dumps(meta, default=str).decode() if meta else None
    )


def _parse_jsonl(ref: FileRef, parsed: ParsedSource, text_field: str, id_field: str) -> None:
    for line_no, raw in _iter_lines(ref, parsed, "jsonl"):
        if not raw.strip():
            continue  # blank lines carry no row (common at file end)
        raw = raw.rstrip(b"\r\n")
        line, problem = _decode(raw)
        if line is None:
            parsed.reject(line_no, problem, raw, None, ref.source)
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as err:
            reason = f"invalid JSON ({err.args[0] if err.args else err})"
            parsed.reject(line_no, reason, line, None, ref.source)
            continue
        if not isinstance(record, dict):
            reason = f"a JSON {type(record).__name__}, not an object"
            parsed.reject(line_no, reason, line, None, ref.source)
            continue
        _accept(parsed, ref, line_no, record, text_field, id_field, line)


def _accept_text_file(ref: FileRef, parsed: ParsedSource) -> None:
    """A .txt/.md file is one document whose id is NAME."""
    try:
        raw = ref.path.read_bytes()
    except OSError as err:
        parsed.reject(None, f"cannot read ({err.strerror})", None, ref.name, ref.source)
        return
    problem = file_problem(raw[:4], "text", False)
    if problem is not None:
        parsed.reject(1, problem, raw, ref.name, ref.source)
        return
    raw = raw.removeprefix(_UTF8_BOM)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line_start = raw.rfind(b"\n", 0, err.start) + 1
        line = raw.count(b"\n", 0, err.start) + 1
        reason = f"not valid UTF-8 at byte {err.start - line_start}"
        parsed.reject(line, reason, raw[line_start:], ref.name, ref.source)
        return
    _accept(parsed, ref, 1, {"text": text, "id": ref.name}, "text", "id", None)


def _parse_parquet(ref: FileRef, parsed: ParsedSource, text_field: str, id_field: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = ref.path
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise IcpError(f"{path}: not a readable Parquet file ({err})") from None
    schema = parquet.schema_arrow
    if text_field not in schema.names:
        raise IcpError(
            f"{path}: no column '{text_field}' (columns: {', '.join(schema.names)}); "
            "set {fix} to the column that holds the text",
            fix="text_field",
        )
    text_type = schema.field(text_field).type
    if pa.types.is_dictionary(text_type):  # pandas categoricals: strings stored once
        text_type = text_type.value_type
    if not (pa.types.is_string(text_type) or pa.types.is_large_string(text_type)):
        raise IcpError(
            f"{path}: column '{text_field}' has type {text_type}, not string; "
            "set {fix} to a string column",
            fix="text_field",
        )
    line_no = 0
    try:
        for batch in parquet.iter_batches(batch_size=8192):
            for record in batch.to_pylist():
                line_no += 1
                _accept(parsed, ref, line_no, record, text_field, id_field, None)
    except (pa.ArrowException, OSError) as err:
        reason = f"file unreadable after row {line_no} ({err}); re-download or re-write the file"
        parsed.reject(line_no + 1, reason, None, None, ref.source)


# -- CSV --------------------------------------------------------------------------------------


def sniff_delimiter(header: bytes) -> str:
    """The delimiter of a CSV header line: the one of `CSV_DELIMITERS` it holds most often."""
    counts = [header.count(d.encode()) for d in CSV_DELIMITERS]
    return CSV_DELIMITERS[counts.index(max(counts))] if max(counts) else ","


def ends_inside_quotes(line: bytes, delimiter: bytes, inside: bool) -> bool:
    """Whether a record is still inside a quoted field at the end of `line`.

    `inside`: whether the line starts inside one (a continuation line). A quote opens a
    field only at its start (line start or right after a delimiter); inside, `""` is an
    escaped quote and a single quote closes the field (RFC 4180). A quote inside an unquoted
    field is a literal character, as Python's csv module reads it.
    """
    position = 0
    while True:
        quote = line.find(b'"', position)
        if quote < 0:
            return inside
        if inside:
            if line[quote + 1 : quote + 2] == b'"':
                position = quote + 2
                continue
            inside = False
        elif quote == 0 or line[quote - 1 : quote] == delimiter:
            inside = True
        position = quote + 1


def id_shape(value: str) -> str:
    """The letters/digits pattern of an id: `doc-17` -> `a-9`, `1234` -> `9`."""
    return re.sub(r"[0-9]+", "9", re.sub(r"[^\W\d_]+", "a", value))


class FieldSplitter:
    """Splits one CSV record (a string, line breaks only inside quotes) into its fields with
    strict quoting; raises csv.Error when it is malformed.

    One csv reader serves every record (making one per record doubles the time of a CSV
    ingest): it reads the record handed to it, then sees the end of its input.
    """

    def __init__(self, delimiter: str):
        self._text: str | None = None
        self._reader = csv.reader(self, delimiter=delimiter, strict=True)

    def __iter__(self) -> FieldSplitter:
        return self

    def __next__(self) -> str:
        text, self._text = self._text, None
        if text is None:
            raise StopIteration
        return text

    def __call__(self, text: str) -> list[str]:
        self._text = text
        try:
            return next(self._reader)
        except StopIteration:  # an empty record
            return []


@dataclass(frozen=True)
class CsvLayout:
    """What a CSV header fixes: delimiter, column names and where the id column is."""

    delimiter: str
    columns: list[str]
    id_index: int | None

    split: FieldSplitter = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "split", FieldSplitter(self.delimiter))

    def looks_like_record(self, line: bytes, own_id: str | None) -> bool:
        """Whether a line inside a quoted field would be a whole record of its own: the
        header's number of fields and an id of the same shape as the record's own id."""
        if self.id_index is None or not own_id:
            return False
        text, _ = _decode(line)
        if text is None or ends_inside_quotes(line, self.delimiter.encode(), False):
            return False
        try:
            fields = self.split(text.rstrip("\r\n"))
        except csv.Error:
            return False
        if len(fields) != len(self.columns):
            return False
        candidate = fields[self.id_index]
        return (
            bool(candidate)
            and not re.search(r"\s", candidate)
            and (id_shape(candidate) == id_shape(own_id))
        )


class CsvRecord(NamedTuple):
    """One CSV record: its first line, its bytes, its fields or why it has none."""

    line: int
    raw: bytes
    fields: list[str] | None
    problem: str | None


def csv_records(
    lines: Iterable[tuple[int, bytes]], layout: CsvLayout | None = None
) -> Iterator[CsvRecord]:
    """Group physical lines into CSV records; a quoted field may span lines.

    A record is rejected at its first line, and the lines after that first line are read
    again as records of their own, when its quote never closes before the end of the file,
    when a record spanning lines is malformed (strict quoting), or when one of its
    continuation lines `looks_like_record` (an unterminated quote swallowing the rows after
    it). A single-line malformed record, or one holding bytes that are not UTF-8, is
    rejected whole. Blank lines carry no record. With `layout` None (the header), the
    delimiter is sniffed from the first line.
    """
    source = iter(lines)
    pending: deque[tuple[int, bytes]] = deque()  # lines to read again after a reject
    fixed = layout.delimiter if layout else None
    while True:
        if pending:
            first = pending.popleft()
        else:
            first = next(source, None)
            if first is None:
                return
        if not first[1].strip():
            continue
        delimiter = fixed or sniff_delimiter(first[1])
        quote_delimiter = delimiter.encode()
        spanned = [first]
        inside = ends_inside_quotes(first[1], quote_delimiter, False)
        while inside:
            following = pending.popleft() if pending else next(source, None)
            if following is None:
                break
            spanned.append(following)
            inside = ends_inside_quotes(following[1], quote_delimiter, True)
        if inside:
            pending.extendleft(reversed(spanned[1:]))
            yield CsvRecord(
                first[0],
                first[1],
                None,
                "unterminated quote: the quoted field opened on this line never closes; "
                "the lines after it are read as records",
            )
            continue
        record, resync = _split_record(spanned, delimiter, layout)
        if resync:
            pending.extendleft(reversed(spanned[1:]))  # re-read them as records of their own
        yield record


def _split_record(
    spanned: list[tuple[int, bytes]], delimiter: str, layout: CsvLayout | None
) -> tuple[CsvRecord, bool]:
    """The record made of `spanned` lines, and whether its later lines must be re-read."""
    first_line = spanned[0][0]
    raw = spanned[0][1] if len(spanned) == 1 else b"".join(line for _, line in spanned)
    try:
        text = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        for number, line in spanned:  # name the line and the byte within it
            _, problem = _decode(line)
            if problem is not None:
                where = f" of line {number}" if number != first_line else ""
                return CsvRecord(first_line, raw, None, problem + where), False
        raise  # unreachable: line breaks never split a UTF-8 sequence
    try:
        fields = (layout.split if layout else FieldSplitter(delimiter))(text)
    except csv.Error as err:
        if len(spanned) == 1:
            return CsvRecord(first_line, raw, None, f"malformed CSV record ({err})"), False
        reason = (
            f"malformed quoted field on lines {first_line}-{spanned[-1][0]} ({err}); "
            "the lines after this one are read as records"
        )
        return CsvRecord(first_line, spanned[0][1], None, reason), True
    if layout is not None and len(spanned) > 1 and layout.id_index is not None:
        own_id = fields[layout.id_index] if layout.id_index < len(fields) else None
        for number, line in spanned[1:]:
            if layout.looks_like_record(line, own_id):
                reason = (
                    f"quoted field runs into line {number}, which looks like a record of its "
                    "own (an unterminated quote?); the lines after this one are read as records"
                )
                return CsvRecord(first_line, spanned[0][1], None, reason), True
    return CsvRecord(first_line, raw, fields, None), False


def _parse_csv(ref: FileRef, parsed: ParsedSource, text_field: str, id_field: str) -> None:
    csv.field_size_limit(2**31 - 1)  # a CSV may hold whole books in one cell
    lines = _iter_lines(ref, parsed, "csv")
    header = next(csv_records(lines), None)
    if header is None:
        return  # an empty file (or one reject from `_iter_lines`)
    if header.fields is None:
        raise IcpError(f"{ref.path}: header line {header.line} unreadable ({header.problem})")
    columns = header.fields
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        raise IcpError(
            f"{ref.path}: column '{repeated[0]}' appears {columns.count(repeated[0])} times in "
            "the header; give each column its own name"
        )
    if text_field not in columns:
        raise IcpError(
            f"{ref.path}: no column '{text_field}' (columns: {', '.join(columns)}); "
            "set {fix} to the column that holds the text",
            fix="text_field",
        )
    id_index = columns.index(id_field) if id_field in columns else None
    layout = CsvLayout(sniff_delimiter(header.raw), columns, id_index)
    for record in csv_records(lines, layout):
        if record.fields is None:
            parsed.reject(record.line, record.problem, record.raw, None, ref.source)
            continue
        width = len(record.fields)
        if width != len(columns):
            more = "more" if width > len(columns) else "fewer"
            reason = f"{more} fields than the header ({width}, header has {len(columns)})"
            parsed.reject(record.line, reason, record.raw, None, ref.source)
            continue
        row = dict(zip(columns, record.fields, strict=True))
        _accept(parsed, ref, record.line, row, text_field, id_field, record.raw)
