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

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from icp_core import __version__, _kernels, pack, stages
from icp_core.errors import IcpError, NoSpace
from icp_core.faults import crash_point
from icp_core.params import Params
from icp_core.workspace import Workspace

FORMATS = ("jsonl", "parquet", "tokens")
_PIECE_ROWS = 4096
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

Report = Callable[[int, int], None]


def _noop(done: int, total: int) -> None:
    return None


def piece_char_spans(
    tokenizer,
    texts: list[str],
    docs: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    n_tokens: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Characters of each piece's text that its tokens [start, end) cover.

    Consecutive pieces of one document tile its text exactly (the first starts at 0, the last
    ends at len(text)). Only documents cut into several pieces are tokenized again (once
    each, for the character offsets); whole documents need no tokenizer.

    Args:
        texts: per piece, its document's text; docs: (P,) document of each piece.
        start, end: (P,) token span of each piece; n_tokens: (P,) its document's token count.

    Returns:
        lo, hi: (P,) int64 character offsets, piece text = texts[p][lo[p]:hi[p]].
    """
    length = np.fromiter((len(text) for text in texts), dtype=np.int64, count=len(texts))
    whole = (start == 0) & (end == n_tokens)
    # a bound at 0 is the text's start, one at the document's end (or past it, inside its
    # separator) the text's end; the bounds in between need the tokenizer's offsets
    lo = np.where(whole | (start == 0), 0, np.where(start >= n_tokens, length, -1))
    hi = np.where(whole, length, np.where(end == 0, 0, np.where(end >= n_tokens, length, -1)))
    inner = np.flatnonzero((lo < 0) | (hi < 0))
    if len(inner) == 0:
        return lo, hi
    _, first, which = np.unique(docs[inner], return_index=True, return_inverse=True)
    encodings = tokenizer.encode_batch([texts[inner[i]] for i in first], add_special_tokens=False)
    token_char = [
        np.fromiter((o[0] for o in e.offsets), dtype=np.int64, count=len(e.offsets))
        for e in encodings
    ]
    for row, doc_index in zip(inner.tolist(), which.tolist(), strict=True):
        if lo[row] < 0:
            lo[row] = token_char[doc_index][start[row]]
        if hi[row] < 0:
            hi[row] = token_char[doc_index][end[row]]
    return lo, hi


def separator_part(sep_ids: np.ndarray, sep: int, start: int, end: int) -> np.ndarray:
    """The separator tokens a piece carries: the head of the separator, or its tail when a
    multi-token separator was cut by a context boundary and this piece holds no doc tokens."""
    continuation = start == end and start > 0
    return sep_ids[len(sep_ids) - sep :] if continuation else sep_ids[:sep]


_PIECES_SQL = """
    SELECT c.context, c.doc, c.token_start, c.token_end, c.sep_tokens,
           max(c.token_end) OVER (PARTITION BY c.doc) AS n_tokens, d.id, d.text, d.text_hash
    FROM contexts c JOIN documents d USING (doc)
    ORDER BY c.context, c.slot"""


def _pieces(ws: Workspace) -> Iterator[pa.Table]:
    """The packed pieces in (context, slot) order with their documents, streamed in tables
    of about `_PIECE_ROWS` pieces that each hold whole contexts.

    A document's token count is the end of its last piece (its pieces tile its tokens).
    """
    held: pa.Table | None = None
    for batch in ws.arrow_batches(_PIECES_SQL, rows=_PIECE_ROWS):
        table = pa.Table.from_batches([batch])
        if held is not None:
            table = pa.concat_tables([held, table])
        context = table.column("context").to_numpy()
        last_context_start = int(np.searchsorted(context, context[-1]))
        if last_context_start > 0:
            yield table.slice(0, last_context_start)
        held = table.slice(last_context_start)
    if held is not None and held.num_rows:
        yield held


def _piece_arrays(table: pa.Table) -> tuple[np.ndarray, ...]:
    return tuple(
        table.column(name).to_numpy().astype(np.int64)
        for name in ("context", "doc", "token_start", "token_end", "sep_tokens", "n_tokens")
    )


def _tokenizer_key(ws: Workspace) -> str:
    return ws.stage_state("pack")["params"]["tokenizer_key"]


def context_rows(
    tokenizer,
    sep_ids: np.ndarray,
    context: np.ndarray,
    docs: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    sep: np.ndarray,
    n_tokens: np.ndarray,
    texts: list[str],
    ids: pa.Array,
) -> pa.Table:
    """Pieces, sorted by (context, slot), rendered as one `CONTEXT_SCHEMA` row per context.

    Args:
        context, docs, start, end, sep: (P,) per piece (see `pack.Packing`).
        n_tokens: (P,) token count of each piece's document.
        texts, ids: per piece, its document's text and input id.
    """
    lo, hi = piece_char_spans(tokenizer, texts, docs, start, end, n_tokens)
    separator_texts: dict[tuple[int, bool], str] = {}

    def separator_text(n_sep: int, first: int, last: int) -> str:
        key = (n_sep, first == last and first > 0)
        if key not in separator_texts:
            part = separator_part(sep_ids, n_sep, first, last).tolist()
            separator_texts[key] = tokenizer.decode(part, skip_special_tokens=False)
        return separator_texts[key]

    parts = [
        text[a:b] + (separator_text(n_sep, first, last) if n_sep else "")
        for text, a, b, n_sep, first, last in zip(
            texts,
            lo.tolist(),
            hi.tolist(),
            sep.tolist(),
            start.tolist(),
            end.tolist(),
            strict=True,
        )
    ]
    firsts = np.flatnonzero(np.diff(context, prepend=-1))
    bounds = [*firsts.tolist(), len(parts)]
    offsets = pa.array(bounds, pa.int32())
    return pa.table(
        {
            "context": pa.array(context[firsts], pa.int64()),
            "text": pa.array(
                ["".join(parts[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)],
                pa.string(),
            ),
            "doc_ids": pa.ListArray.from_arrays(offsets, pa.array(ids, pa.string())),
            "doc_token_start": pa.ListArray.from_arrays(offsets, pa.array(start, pa.int64())),
            "doc_token_end": pa.ListArray.from_arrays(offsets, pa.array(end, pa.int64())),
            "n_tokens": pa.array(np.add.reduceat(end - start + sep, firsts), pa.int64()),
        },
        schema=CONTEXT_SCHEMA,
    )


def _context_tables(ws: Workspace, params: Params, report: Report) -> Iterator[pa.Table]:
    """Tables of contexts in `CONTEXT_SCHEMA`, streamed from the workspace."""
    tokenizer = pack.load_tokenizer(str(stages._tokenizer_for(params)))
    sep_ids = np.asarray(stages.separator_for(params), dtype=np.int64)
    n_contexts = int(ws.scalar("SELECT count(DISTINCT context) FROM contexts"))
    done = 0
    for table in _pieces(ws):
        context, docs, start, end, sep, n_tokens = _piece_arrays(table)
        rows = context_rows(
            tokenizer,
            sep_ids,
            context,
            docs,
            start,
            end,
            sep,
            n_tokens,
            table.column("text").to_pylist(),
            table.column("id").combine_chunks(),
        )
        yield rows
        done += rows.num_rows
        report(done, n_contexts)


def _write_jsonl(tables: Iterator[pa.Table], path: Path) -> int:
    count = 0
    with open(path, "wb") as handle:
        for table in tables:
            handle.write(b"".join(orjson.dumps(row) + b"\n" for row in table.to_pylist()))
            count += table.num_rows
    return count


def _write_parquet(tables: Iterator[pa.Table], path: Path) -> int:
    import pyarrow.parquet as pq

    count = 0
    with pq.ParquetWriter(path, CONTEXT_SCHEMA) as writer:
        for table in tables:
            writer.write_table(table)
            count += table.num_rows
        if count == 0:
            writer.write_table(CONTEXT_SCHEMA.empty_table())
    return count


def _document_ids(
    tokenizer, key: str, texts: list[str], hashes: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of documents (flat ids, offsets as `pack.token_ids`), reusing the ids the
    pack stage of this process kept, tokenizing the others in one batch."""
    kept = [pack.RECENT_TOKEN_IDS.get(key, text_hash) for text_hash in hashes]
    missing = [row for row, ids in enumerate(kept) if ids is None]
    if missing:
        ids, offsets = pack.token_ids(tokenizer, [texts[row] for row in missing])
        for i, row in enumerate(missing):
            kept[row] = ids[offsets[i] : offsets[i + 1]]
    offsets = np.zeros(len(kept) + 1, dtype=np.int64)
    np.cumsum([len(ids) for ids in kept], out=offsets[1:])
    flat = np.concatenate(kept) if kept else np.zeros(0, dtype=np.uint32)
    return flat.astype(np.uint32, copy=False), offsets


def _write_tokens(ws: Workspace, params: Params, folder: Path, report: Report) -> dict[str, Any]:
    tokenizer = pack.load_tokenizer(str(stages._tokenizer_for(params)))
    key = _tokenizer_key(ws)
    sep_ids = np.asarray(stages.separator_for(params), dtype=np.uint32)
    dtype = np.uint16 if tokenizer.get_vocab_size(with_added_tokens=True) <= 2**16 else np.uint32
    packing = stages.read_packing(ws)
    total = int(packing.tokens.sum())
    offsets = np.zeros(packing.n_contexts + 1, dtype=np.int64)
    np.cumsum(packing.context_tokens(), out=offsets[1:])
    flat = np.memmap(folder / "tokens.bin", dtype=dtype, mode="w+", shape=(max(total, 1),))
    position = 0
    for table in _pieces(ws):
        _, docs, start, end, sep, _ = _piece_arrays(table)
        _, first, local_doc = np.unique(docs, return_index=True, return_inverse=True)
        texts = table.column("text").take(pa.array(first)).to_pylist()
        hashes = table.column("text_hash").take(pa.array(first)).to_pylist()
        doc_ids, doc_offsets = _document_ids(tokenizer, key, texts, hashes)
        position = _kernels.write_piece_tokens(
            doc_ids, doc_offsets, local_doc, start, end, sep, sep_ids, np.asarray(flat), position
        )
        report(int(np.searchsorted(offsets, position, side="right")) - 1, packing.n_contexts)
    if position != total:
        raise IcpError(
            f"token export wrote {position} tokens where the packing holds {total}; "
            "the tokenizer changed since `icp pack`: re-run it"
        )
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


MANIFEST_TOOL = "icp-workbench"
# written into a staging folder while it is being filled, holding the writer's PID: the proof
# that a `.NAME.partial-*` folder is ours, and whether its writer is still alive
_PARTIAL_MARKER = ".icp-partial"


def is_icp_export(path: str | Path) -> bool:
    """True when `path` is a folder holding an export of this tool: a `manifest.json` that is a
    JSON object with `"tool": "icp-workbench"` (the only manifest key relied on here)."""
    manifest = Path(path) / "manifest.json"
    try:
        if Path(path).is_symlink() or not manifest.is_file():
            return False
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("tool") == MANIFEST_TOOL


def _why_not_replace(out: Path, keep: Collection[Path]) -> str | None:
    """Why `--overwrite` must not delete `out` (None: it is an earlier export, replace it)."""
    if out.is_symlink():
        return "a symbolic link"
    target = out.resolve()
    cwd = Path.cwd().resolve()
    if target == Path(target.anchor):
        return "the root folder"
    if target == Path.home().resolve():
        return "your home folder"
    if cwd == target or target in cwd.parents:
        return "the current folder or one holding it"
    for path in keep:
        kept = Path(path).resolve()
        if kept == target or target in kept.parents:
            return f"the workspace {path} or a folder holding it"
    if not is_icp_export(out):
        return "not an earlier export of this tool (no manifest.json naming icp-workbench)"
    return None


def _clear_stale_partials(parent: Path, name: str) -> None:
    """Remove `.NAME.partial-*` folders left by killed exports: only those holding our marker
    whose writing process is gone (a live export to the same --out keeps its folder)."""
    for stale in parent.glob(f".{name}.partial-*"):
        try:
            pid = int((stale / _PARTIAL_MARKER).read_text())
        except (OSError, ValueError):
            continue  # not provably ours: leave it
        if pid != os.getpid() and _alive(pid):
            continue
        shutil.rmtree(stale, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_out(out: str | Path, overwrite: bool = False, keep: Collection[Path] = ()) -> None:
    """Refuse an export folder `staged_folder` would refuse, before any work is done.

    Raises:
        IcpError: `out` exists without overwrite, or is not an export `overwrite` may replace
            (see `staged_folder`), or a file stands where one of its folders should be.
    """
    out = Path(out)
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise IcpError(f"{out}: already exists; pass --overwrite to replace an earlier export")
        refusal = _why_not_replace(out, keep)
        if refusal:
            raise IcpError(
                f"{out}: --overwrite refused, it is {refusal}; "
                "choose another --out (or remove it yourself)"
            )
    parent = out.parent if str(out.parent) else Path(".")
    blocking = next((p for p in (parent, *parent.parents) if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise IcpError(f"{out}: {blocking} is a file, not a folder; choose another --out")


@contextmanager
def staged_folder(
    out: str | Path, overwrite: bool = False, keep: Collection[Path] = ()
) -> Iterator[Path]:
    """A hidden sibling folder of `out` to write an export into, renamed to `out` when the
    block ends without error; otherwise removed, so nothing partial is ever left under `out`.

    The folder gets the permissions the umask gives a new folder (0755 under umask 022), not
    `mkdtemp`'s 0700. `overwrite` replaces only an earlier export of this tool
    (`is_icp_export`), never the root, home or current folder, nor anything holding a path in
    `keep` (the workspace); the earlier export is moved aside and deleted after the rename.

    Raises:
        IcpError: `out` exists without overwrite, or is not an export `overwrite` may replace,
            or its folder is not writable.
        NoSpace: a write in the block failed for lack of space or a file size limit.
    """
    out = Path(out)
    check_out(out, overwrite, keep)
    parent = out.parent if str(out.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        _clear_stale_partials(parent, out.name)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=parent))
        (staging / _PARTIAL_MARKER).write_text(str(os.getpid()))
        staging.chmod(0o777 & ~_umask())
    except OSError as err:
        raise IcpError(
            f"{out}: cannot write there ({err.strerror}); choose another --out"
        ) from None
    aside: Path | None = None  # the earlier export, moved here until the new one is in place
    try:
        yield staging
        (staging / _PARTIAL_MARKER).unlink()
        if out.exists():
            aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=parent))
            os.replace(out, aside / out.name)
        os.replace(staging, out)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    except OSError as err:
        shutil.rmtree(staging, ignore_errors=True)
        if aside is not None and (aside / out.name).exists() and not out.exists():
            os.replace(aside / out.name, out)  # put the earlier export back
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
        error = NoSpace if err.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT) else IcpError
        raise error(
            f"{out}: export failed ({err.strerror or err}); nothing was written, "
            "free space or choose another --out"
        ) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


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
    if not ws.has_table("contexts"):
        raise IcpError("no contexts yet; run `icp pack` (or `icp run`) first")
    with staged_folder(out, overwrite, keep=[ws.path]) as staging:
        files_info: dict[str, Any] = {}
        if fmt == "jsonl":
            files_info["n_contexts"] = _write_jsonl(
                _context_tables(ws, params, report), staging / "contexts.jsonl"
            )
        elif fmt == "parquet":
            files_info["n_contexts"] = _write_parquet(
                _context_tables(ws, params, report), staging / "contexts.parquet"
            )
        else:
            files_info.update(_write_tokens(ws, params, staging, report))
        _write_removed(ws, staging)
        manifest = _manifest(ws, params, fmt, files_info, metrics, staging)
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
        crash_point("export.staged")
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
