"""Export: write the packed contexts in the layouts trainers read, with a manifest.

The output is a folder, written under a temporary name and renamed at the end, so a killed
export never leaves a partial result under the final name. Formats:

- `parquet` / `jsonl`: a Hugging Face dataset folder. `data/train-00000-of-0000N.parquet`
  (or `.jsonl`) shards of `--shard-size` contexts and a dataset card `README.md` whose
  `configs` point at them, so `datasets.load_dataset(OUT_DIR)` returns the contexts. One row
  per context (`CONTEXT_SCHEMA`): `context`, `doc_ids` (input ids, in order), `text` (the
  document pieces, each followed by the separator's text unless the document continues in
  another context), `input_ids` (the context's token ids, exactly what the token file holds
  for it, without padding), `doc_lengths` (tokens of each document piece, its separator
  included; they sum to len(input_ids)), `doc_token_start`/`doc_token_end` (which tokens of
  each document the piece holds), `n_tokens`. `text` is for reading: where a context boundary
  falls inside a character that a byte-level tokenizer spread over several tokens, the
  character appears whole in the next context's `text`, while decoding `input_ids` shows its
  partial bytes (U+FFFD) at the cut.
- `tokens`: `tokens.ds` (token ids back to back, every context exactly `context_length`
  tokens: `split` contexts are full but for the last, `whole` ones padded with the recorded
  pad id) with `tokens.ds.index` (uint64 end of every document piece and padding run: the
  datatrove layout) and `offsets.npy` (int64, n_contexts + 1; context i is
  tokens[offsets[i]:offsets[i + 1]]).

Every folder holds `manifest.json` (`icp_core.manifest`) and, under `removed/`,
`duplicates.jsonl` (removed documents and the kept document each one copies) and
`rejects.jsonl` (rows that never became documents).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from icp_core import _kernels, manifest, stages, tokenizer
from icp_core.errors import IcpError, NoSpace
from icp_core.faults import crash_point
from icp_core.pack import Packing
from icp_core.params import Params
from icp_core.tokenizer import LMTokenizer
from icp_core.workspace import Workspace

FORMATS = ("jsonl", "parquet", "tokens")
DEFAULT_SHARD_SIZE = 10_000  # contexts per Parquet/JSONL shard
DATA_FOLDER = "data"
REMOVED_FOLDER = "removed"
_PIECE_ROWS = 4096
# One row per context in the Parquet/JSONL shards (and in the Ray engine's).
CONTEXT_SCHEMA = pa.schema(
    [
        ("context", pa.int64()),
        ("doc_ids", pa.list_(pa.string())),
        ("text", pa.string()),
        ("input_ids", pa.list_(pa.int32())),
        ("doc_lengths", pa.list_(pa.int32())),
        ("doc_token_start", pa.list_(pa.int64())),
        ("doc_token_end", pa.list_(pa.int64())),
        ("n_tokens", pa.int64()),
    ]
)

Report = Callable[[int, int], None]


def _noop(done: int, total: int) -> None:
    return None


def piece_char_spans(
    lm: LMTokenizer,
    texts: list[str | None],
    docs: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    n_tokens: np.ndarray,
    split_texts: dict[int, str],
) -> tuple[np.ndarray, np.ndarray]:
    """Characters of each piece's document text that its tokens [start, end) cover.

    Consecutive pieces of one document tile its text exactly (the first starts at 0, the last
    ends at len(text)). Only documents cut into several pieces are tokenized again (once
    each, for the character offsets).

    Args:
        texts: per piece, its document's text, or None for a piece of a split document.
        docs: (P,) document of each piece; split_texts: the split documents' texts by doc.
        start, end: (P,) token span of each piece; n_tokens: (P,) its document's token count.

    Returns:
        lo, hi: (P,) int64 character offsets, piece text = text[lo[p]:hi[p]].
    """
    full_texts = [
        text if text is not None else split_texts[d]
        for text, d in zip(texts, docs.tolist(), strict=True)
    ]
    length = np.fromiter((len(text) for text in full_texts), dtype=np.int64, count=len(texts))
    whole = (start == 0) & (end == n_tokens)
    # a bound at 0 is the text's start, one at the document's end (or past it, inside its
    # separator) the text's end; the bounds in between need the tokenizer's offsets
    lo = np.where(whole | (start == 0), 0, np.where(start >= n_tokens, length, -1))
    hi = np.where(whole, length, np.where(end == 0, 0, np.where(end >= n_tokens, length, -1)))
    inner = np.flatnonzero((lo < 0) | (hi < 0))
    starts = {int(d): lm.char_starts(split_texts[int(d)]) for d in np.unique(docs[inner])}
    for row in inner.tolist():
        char_start = starts[int(docs[row])]
        if lo[row] < 0:
            lo[row] = char_start[start[row]]
        if hi[row] < 0:
            hi[row] = char_start[end[row]]
    return lo, hi


def context_rows(
    lm: LMTokenizer,
    sep_ids: np.ndarray,
    pieces: dict[str, np.ndarray],
    token_ids: np.ndarray,
    first_token: np.ndarray,
    texts: list[str | None],
    split_texts: dict[int, str],
    ids: pa.Array,
) -> pa.Table:
    """Pieces, sorted by (context, slot), rendered as one `CONTEXT_SCHEMA` row per context.

    Args:
        pieces: (P,) arrays per piece: context, doc, start, end, sep (see `pack.Packing`) and
            n_tokens (its document's token count).
        token_ids, first_token: see `piece_tokens`.
        texts, split_texts: see `piece_char_spans`; ids: per piece, its document's input id.
    """
    context, docs, start, end, sep = (
        pieces[name] for name in ("context", "doc", "start", "end", "sep")
    )
    lo, hi = piece_char_spans(lm, texts, docs, start, end, pieces["n_tokens"], split_texts)
    separator_texts: dict[tuple[int, bool], str] = {}

    def separator_text(n_sep: int, first: int, last: int) -> str:
        key = (n_sep, first == last and first > 0)
        if key not in separator_texts:
            part = separator_part(sep_ids, n_sep, first, last).tolist()
            separator_texts[key] = lm.decode(part)
        return separator_texts[key]

    full_texts = [
        text if text is not None else split_texts[d]
        for text, d in zip(texts, docs.tolist(), strict=True)
    ]
    parts = [
        text[a:b] + (separator_text(n_sep, first, last) if n_sep else "")
        for text, a, b, n_sep, first, last in zip(
            full_texts,
            lo.tolist(),
            hi.tolist(),
            sep.tolist(),
            start.tolist(),
            end.tolist(),
            strict=True,
        )
    ]
    piece_lengths = end - start + sep
    tokens = piece_tokens(token_ids, first_token, start, end, sep, sep_ids)
    firsts = np.flatnonzero(np.diff(context, prepend=-1))
    bounds = [*firsts.tolist(), len(parts)]
    piece_offsets = pa.array(bounds, pa.int32())
    token_bounds = np.concatenate([[0], np.cumsum(piece_lengths)])[bounds]
    return pa.table(
        {
            "context": pa.array(context[firsts], pa.int64()),
            "doc_ids": pa.ListArray.from_arrays(piece_offsets, pa.array(ids, pa.string())),
            "text": pa.array(
                ["".join(parts[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)],
                pa.string(),
            ),
            "input_ids": pa.ListArray.from_arrays(
                pa.array(token_bounds, pa.int64()), pa.array(tokens, pa.int32())
            ).cast(pa.list_(pa.int32())),
            "doc_lengths": pa.ListArray.from_arrays(
                piece_offsets, pa.array(piece_lengths, pa.int32())
            ),
            "doc_token_start": pa.ListArray.from_arrays(piece_offsets, pa.array(start, pa.int64())),
            "doc_token_end": pa.ListArray.from_arrays(piece_offsets, pa.array(end, pa.int64())),
            "n_tokens": pa.array(np.add.reduceat(piece_lengths, firsts), pa.int64()),
        },
        schema=CONTEXT_SCHEMA,
    )


def separator_part(sep_ids: np.ndarray, sep: int, start: int, end: int) -> np.ndarray:
    """The separator tokens a piece carries: the head of the separator, or its tail when a
    multi-token separator was cut by a context boundary and this piece holds no doc tokens."""
    continuation = start == end and start > 0
    return sep_ids[len(sep_ids) - sep :] if continuation else sep_ids[:sep]


# A piece's tokens are sliced from its document's cached ids in SQL (lists are 1-based), and
# a document's text comes along only when the piece holds all of it: the pieces of a split
# document fetch its text once per table (`_split_texts`), not once per piece.
_PIECES_SQL = """
    SELECT c.context, c.doc, c.token_start, c.token_end, c.sep_tokens, t.n_tokens, d.id,
           CASE WHEN c.token_start = 0 AND c.token_end = t.n_tokens THEN d.text END AS text,
           t.ids[c.token_start + 1 : c.token_end] AS piece_ids
    FROM contexts c JOIN documents d USING (doc)
    JOIN (SELECT text_hash, any_value(n_tokens) AS n_tokens, any_value(ids) AS ids
          FROM token_cache WHERE tokenizer_key = ? AND ids IS NOT NULL GROUP BY text_hash) t
    USING (text_hash)
    WHERE c.context < ?
    ORDER BY c.context, c.slot"""


def _pieces(ws: Workspace, tokenizer_key: str, n_contexts: int) -> Iterator[pa.Table]:
    """The packed pieces of contexts 0..n_contexts-1 in (context, slot) order, streamed in
    tables of about `_PIECE_ROWS` pieces that each hold whole contexts."""
    held: pa.Table | None = None
    for batch in ws.arrow_batches(_PIECES_SQL, [tokenizer_key, n_contexts], rows=_PIECE_ROWS):
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


def _split_texts(ws: Workspace, table: pa.Table) -> dict[int, str]:
    missing = table.filter(pa.compute.is_null(table.column("text")))
    docs = np.unique(missing.column("doc").to_numpy()).tolist()
    if not docs:
        return {}
    rows = ws.arrow("SELECT doc, text FROM documents WHERE doc IN (SELECT unnest(?))", [docs])
    return dict(zip(rows.column("doc").to_pylist(), rows.column("text").to_pylist(), strict=True))


def piece_tokens(
    token_ids: np.ndarray,
    first_token: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    sep: np.ndarray,
    sep_ids: np.ndarray,
) -> np.ndarray:
    """(sum of piece lengths,) int32: each piece's document tokens then its separator part,
    pieces back to back.

    Args:
        token_ids: flat token ids holding the pieces' tokens: piece p's document tokens
            [start, end) are token_ids[first_token[p] + start[p]:first_token[p] + end[p]]
            (first_token: where its document's token 0 is, or would be for a slice).
    """
    tokens = np.empty(int((end - start + sep).sum()), dtype=np.int32)
    _kernels.write_piece_tokens(
        token_ids.astype(np.int64, copy=False),
        np.asarray(first_token, dtype=np.int64),
        np.arange(len(start), dtype=np.int64),
        start,
        end,
        sep,
        sep_ids.astype(np.int64),
        tokens,
        0,
    )
    return tokens


def packing_rows(
    lm: LMTokenizer,
    sep_ids: np.ndarray,
    packing: Packing,
    token_ids: np.ndarray,
    token_offsets: np.ndarray,
    texts: list[str],
    ids: np.ndarray,
) -> pa.Table:
    """`context_rows` of a packing whose documents are all in memory (indexed by doc):
    document d's tokens are token_ids[token_offsets[d]:token_offsets[d + 1]], its text
    texts[d], its input id ids[d]. The Ray engine renders each partition this way."""
    docs = packing.doc
    pieces = {"context": packing.context, "doc": docs, "start": packing.start}
    pieces.update(end=packing.end, sep=packing.sep, n_tokens=np.diff(token_offsets)[docs])
    unique, n_pieces = np.unique(docs, return_counts=True)
    return context_rows(
        lm,
        sep_ids,
        pieces,
        token_ids,
        token_offsets[docs],
        [texts[d] for d in docs.tolist()],
        {d: texts[d] for d in unique[n_pieces > 1].tolist()},
        pa.array(ids[docs].tolist(), pa.string()),
    )


@dataclass(frozen=True)
class ExportPlan:
    """What an export writes: contexts 0..n_contexts-1 of the workspace's packing."""

    lm: LMTokenizer
    sep_ids: np.ndarray
    pad_id: int
    n_contexts: int
    context_length: int
    padded: bool  # `whole` packing: the token file pads every context to context_length
    dropped_last: dict[str, Any] | None  # the short last context --drop-last left out


def plan_export(ws: Workspace, params: Params, drop_last: bool = False) -> ExportPlan:
    packing = stages.read_packing(ws)
    pack_state = ws.stage_state("pack")["params"]
    n_contexts = packing.n_contexts
    dropped = None
    if drop_last and params.pack == "split" and n_contexts:
        last_tokens = int(packing.context_tokens()[-1])
        if last_tokens < params.context_length:
            n_contexts -= 1
            docs = packing.doc[packing.context == n_contexts]
            ids = ws.arrow(
                "SELECT id FROM documents WHERE doc IN (SELECT unnest(?)) ORDER BY doc",
                [np.unique(docs).tolist()],
            )
            dropped = {
                "context": n_contexts,
                "n_tokens": last_tokens,
                "doc_ids": ids.column("id").to_pylist(),
            }
    return ExportPlan(
        lm=stages.lm_tokenizer(params),
        sep_ids=np.asarray(pack_state["separator_ids"], dtype=np.int64),
        pad_id=int(pack_state["pad_id"]),
        n_contexts=n_contexts,
        context_length=params.context_length,
        padded=params.pack == "whole",
        dropped_last=dropped,
    )


def _piece_arrays(table: pa.Table) -> dict[str, np.ndarray]:
    names = {"context": "context", "doc": "doc", "start": "token_start", "end": "token_end"}
    names.update(sep="sep_tokens", n_tokens="n_tokens")
    arrays = {key: table.column(col).to_numpy().astype(np.int64) for key, col in names.items()}
    piece_ids = table.column("piece_ids").combine_chunks()
    arrays["ids"] = piece_ids.flatten().to_numpy(zero_copy_only=False)
    arrays["id_offsets"] = np.asarray(piece_ids.offsets.to_numpy(), dtype=np.int64)
    arrays["id_offsets"] -= arrays["id_offsets"][0]
    return arrays


def _context_tables(ws: Workspace, plan: ExportPlan, report: Report) -> Iterator[pa.Table]:
    """Tables of contexts in `CONTEXT_SCHEMA`, streamed from the workspace."""
    done = 0
    for table in _pieces(ws, plan.lm.key, plan.n_contexts):
        arrays = _piece_arrays(table)
        rows = context_rows(
            plan.lm,
            plan.sep_ids,
            arrays,
            arrays["ids"],
            arrays["id_offsets"][:-1] - arrays["start"],
            table.column("text").to_pylist(),
            _split_texts(ws, table),
            table.column("id").combine_chunks(),
        )
        yield rows
        done += rows.num_rows
        report(done, plan.n_contexts)


def _shard_names(n_contexts: int, shard_size: int, suffix: str) -> list[str]:
    n_shards = max(1, -(-n_contexts // shard_size))
    return [f"train-{i:05d}-of-{n_shards:05d}.{suffix}" for i in range(n_shards)]


def _write_shards(
    tables: Iterator[pa.Table], folder: Path, fmt: str, n_contexts: int, shard_size: int
) -> list[str]:
    """Contexts 0..n-1 (arriving in order) into shards of `shard_size` contexts each."""
    import pyarrow.parquet as pq

    names = _shard_names(n_contexts, shard_size, fmt)
    (folder / DATA_FOLDER).mkdir()
    handles: dict[int, Any] = {}

    def handle(shard: int) -> Any:
        if shard not in handles:
            path = folder / DATA_FOLDER / names[shard]
            handles[shard] = (
                pq.ParquetWriter(path, CONTEXT_SCHEMA) if fmt == "parquet" else open(path, "wb")  # noqa: SIM115 (closed in the finally below)
            )
        return handles[shard]

    try:
        for table in tables:
            shard_of = table.column("context").to_numpy() // shard_size
            for shard in np.unique(shard_of).tolist():
                part = table.filter(pa.array(shard_of == shard))
                if fmt == "parquet":
                    handle(shard).write_table(part)
                else:
                    handle(shard).write(_jsonl_lines(part))
        for shard in range(len(names)):  # no contexts at all: one empty shard
            if shard not in handles and fmt == "parquet":
                handle(shard).write_table(CONTEXT_SCHEMA.empty_table())
            handle(shard)
    finally:
        for opened in handles.values():
            opened.close()
    return names


def _jsonl_lines(table: pa.Table) -> bytes:
    """Rows of a `CONTEXT_SCHEMA` table as JSON lines. The long token lists go to orjson as
    numpy slices (serialised in C), not as lists of Python ints."""
    columns = {}
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        if pa.types.is_list(column.type) and pa.types.is_integer(column.type.value_type):
            values = column.flatten().to_numpy()
            offsets = column.offsets.to_numpy()
            columns[name] = [values[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
        else:
            columns[name] = column.to_pylist()
    names = list(columns)
    return b"".join(
        orjson.dumps(dict(zip(names, row, strict=True)), option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"
        for row in zip(*columns.values(), strict=True)
    )


def write_dataset_card(folder: Path, fmt: str, context_length: int, lm: LMTokenizer) -> None:
    """A dataset card whose `configs` make `datasets.load_dataset(folder)` read the shards."""
    info = lm.info
    (folder / "README.md").write_text(
        f"""---
configs:
- config_name: default
  data_files:
  - split: train
    path: {DATA_FOLDER}/train-*.{fmt}
---
# In-context pretraining contexts

Written by icp-workbench: related documents ordered along their nearest-neighbour graph and
cut into contexts of {context_length} tokens ({info.name} tokenizer). One row per context:
`input_ids` are the tokens to train on, with full attention across the documents of a
context (that is where in-context pretraining's gains come from); `doc_lengths` gives each
document piece's tokens, its separator included, for those who choose per-document masking.
See `manifest.json` for everything that produced this folder.
""",
        encoding="utf-8",
    )


def _write_tokens(ws: Workspace, plan: ExportPlan, folder: Path, report: Report) -> dict[str, Any]:
    """`tokens.ds`, `tokens.ds.index` and `offsets.npy` (see the module docstring)."""
    dtype = plan.lm.token_dtype()
    filled = stages.read_packing(ws).context_tokens()[: plan.n_contexts]
    lengths = np.full(plan.n_contexts, plan.context_length) if plan.padded else filled
    offsets = np.zeros(plan.n_contexts + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    flat = np.memmap(folder / "tokens.ds", dtype=dtype, mode="w+", shape=(max(total, 1),))
    written = 0
    with open(folder / "tokens.ds.index", "wb") as index:
        for table in _pieces(ws, plan.lm.key, plan.n_contexts):
            arrays = _piece_arrays(table)
            start, end, sep = arrays["start"], arrays["end"], arrays["sep"]
            first_token = arrays["id_offsets"][:-1] - start
            tokens = piece_tokens(arrays["ids"], first_token, start, end, sep, plan.sep_ids)
            context = arrays["context"]
            piece_lengths = end - start + sep
            # a piece's place: its context's offset plus the tokens before it in the context
            first = np.flatnonzero(np.diff(context, prepend=-1))
            before = np.cumsum(piece_lengths) - piece_lengths
            before -= np.repeat(before[first], np.diff(np.append(first, len(context))))
            piece_at = offsets[context] + before
            flat[
                np.repeat(piece_at - np.cumsum(piece_lengths) + piece_lengths, piece_lengths)
                + np.arange(len(tokens))
            ] = tokens
            ends = piece_at + piece_lengths
            contexts = context[first]
            if plan.padded:
                pad_from = offsets[contexts] + filled[contexts]
                for c, a in zip(contexts.tolist(), pad_from.tolist(), strict=True):
                    flat[a : offsets[c + 1]] = plan.pad_id
                ends = np.concatenate([ends, offsets[contexts + 1]])
            index.write(np.unique(ends).astype(np.uint64).tobytes())
            written += int(piece_lengths.sum())
            report(int(contexts[-1]) + 1, plan.n_contexts)
    if written != int(filled.sum()):
        raise IcpError(
            f"token export wrote {written} tokens where the packing holds {int(filled.sum())}; "
            "the workspace changed during export: re-run `icp export`"
        )
    flat.flush()
    del flat
    if total == 0:
        os.truncate(folder / "tokens.ds", 0)
    np.save(folder / "offsets.npy", offsets)
    return {
        "n_tokens": total,
        "n_padding": total - int(filled.sum()),
        "token_dtype": dtype.name,
        "token_size": dtype.itemsize,
    }


def _write_removed(ws: Workspace, folder: Path) -> None:
    duplicates = ws.arrow(
        """SELECT d.id, k.id AS kept_id, r.sim, r.reason FROM (
               SELECT * FROM duplicates UNION ALL SELECT * FROM order_drops) r
           JOIN documents d ON d.doc = r.doc JOIN documents k ON k.doc = r.kept_doc
           ORDER BY r.doc"""
    )
    write_removed(folder, duplicates, ws.arrow("SELECT source, line, id, reason, raw FROM rejects"))


def write_removed(folder: Path, duplicates: pa.Table, rejects: pa.Table) -> None:
    """`removed/` of an export folder: `duplicates.jsonl` (id, kept_id, sim, reason: removed
    documents, by document number) and `rejects.jsonl` (source, line, id, reason, raw)."""
    (folder / REMOVED_FOLDER).mkdir()
    for table, name in ((duplicates, "duplicates.jsonl"), (rejects, "rejects.jsonl")):
        with open(folder / REMOVED_FOLDER / name, "wb") as handle:
            for row in table.to_pylist():
                handle.write(orjson.dumps(row) + b"\n")


# a file `STAGING.owner` next to each staging folder while it is filled, holding the writer's
# PID: the proof that a `.NAME.partial-*` folder is ours, and whether its writer still runs
# (beside the folder, not in it, so that the manifest never lists it)
_OWNER_SUFFIX = ".owner"


def _owner_file(staging: Path) -> Path:
    return staging.with_name(staging.name + _OWNER_SUFFIX)


def is_icp_export(path: str | Path) -> bool:
    """True when `path` is a folder holding an export of this tool: a `manifest.json` that is a
    JSON object with `"tool": "icp-workbench"` (the only manifest key relied on here)."""
    manifest_file = Path(path) / manifest.MANIFEST
    try:
        if Path(path).is_symlink() or not manifest_file.is_file():
            return False
        data = json.loads(manifest_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("tool") == manifest.TOOL


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
    """Remove `.NAME.partial-*` folders left by killed exports: only those with an owner file
    whose writing process is gone (a live export to the same --out keeps its folder; a folder
    without an owner file is not provably ours and stays)."""
    for owner in parent.glob(f".{name}.partial-*{_OWNER_SUFFIX}"):
        try:
            pid = int(owner.read_text())
        except (OSError, ValueError):
            continue
        if pid != os.getpid() and _alive(pid):
            continue
        shutil.rmtree(owner.with_name(owner.name.removesuffix(_OWNER_SUFFIX)), ignore_errors=True)
        owner.unlink(missing_ok=True)


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
            raise IcpError(
                f"{out}: already exists; use {{fix}} to replace an earlier export", fix="overwrite"
            )
        refusal = _why_not_replace(out, keep)
        if refusal:
            raise IcpError(
                f"{out}: not replaced, it is {refusal}; choose another {{fix}} (or remove it "
                "yourself)",
                fix="out",
            )
    parent = out.parent if str(out.parent) else Path(".")
    blocking = next((p for p in (parent, *parent.parents) if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise IcpError(f"{out}: {blocking} is a file, not a folder; choose another {{fix}}", "out")


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
        _owner_file(staging).write_text(str(os.getpid()))
        staging.chmod(0o777 & ~_umask())
    except OSError as err:
        raise IcpError(
            f"{out}: cannot write there ({err.strerror}); choose another {{fix}}", fix="out"
        ) from None
    aside: Path | None = None  # the earlier export, moved here until the new one is in place
    try:
        yield staging
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
            "free space or choose another {fix}",
            fix="out",
        ) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        _owner_file(staging).unlink(missing_ok=True)


def export_contexts(
    ws: Workspace,
    params: Params,
    out: str | Path,
    fmt: str = "parquet",
    overwrite: bool = False,
    metrics: dict[str, Any] | None = None,
    report: Report = _noop,
    shard_size: int = DEFAULT_SHARD_SIZE,
    drop_last: bool = False,
) -> dict[str, Any]:
    """Write the workspace's contexts to the folder `out`; returns the manifest.

    Args:
        shard_size: contexts per Parquet/JSONL shard.
        drop_last: leave out the `split` packing's last context when it is shorter than the
            context length (recorded in the manifest as `dropped_last`).

    Raises:
        IcpError: unknown format, `out` exists without overwrite, no contexts yet, or a write
            failure (disk full, permissions); nothing is left under `out` in that case.
    """
    if fmt not in FORMATS:
        raise IcpError(f"unknown export format '{fmt}'; choose one of {', '.join(FORMATS)}")
    if shard_size < 1:
        raise IcpError(f"--shard-size {shard_size}: must be at least 1")
    if not ws.has_table("contexts"):
        raise IcpError("no contexts yet; run `icp pack` (or `icp run`) first")
    plan = plan_export(ws, params, drop_last)
    with staged_folder(out, overwrite, keep=[ws.path]) as staging:
        counts: dict[str, Any] = {"n_contexts": plan.n_contexts}
        if fmt == "tokens":
            counts.update(_write_tokens(ws, plan, staging, report))
        else:
            tables = _context_tables(ws, plan, report)
            counts["shards"] = len(_write_shards(tables, staging, fmt, plan.n_contexts, shard_size))
            write_dataset_card(staging, fmt, plan.context_length, plan.lm)
        _write_removed(ws, staging)
        result = manifest.build(
            engine="local",
            fmt=fmt,
            parameters=resolved_parameters(ws, params),
            model=manifest.model_info(params),
            tokenizer=manifest.tokenizer_info(plan.lm, plan.sep_ids.tolist(), plan.pad_id),
            inputs=input_sources(ws),
            counts=counts,
            metrics=metrics,
            folder=staging,
            extra={
                "export": {"shard_size": shard_size, "drop_last": drop_last},
                "dropped_last": plan.dropped_last,
                "run": {"stages": _stage_summaries(ws)},
            },
        )
        manifest.write(staging, result)
        crash_point("export.staged")
    return result


def resolved_parameters(ws: Workspace, params: Params) -> dict[str, Any]:
    """`resolve_parameters` with the counts the workspace's embed and kNN stages stored."""
    embed_counts = (ws.stage_state("embed") or {}).get("counts") or {}
    knn_counts = (ws.stage_state("knn") or {}).get("counts") or {}
    return resolve_parameters(params, embed_counts, knn_counts)


def resolve_parameters(
    params: Params, embed_counts: dict[str, Any], knn_counts: dict[str, Any]
) -> dict[str, Any]:
    """The parameters as they ran (the manifest's `parameters`, either engine): `auto` device
    and index replaced by what the embed and kNN stages counted, the tokenizer by its name,
    the embedding length by the model's limit, the model and vectors paths absolute."""
    resolved = params.to_dict()
    # the device that embedded; None when no model ran (imported or cached vectors)
    resolved["device"] = None if params.vectors else embed_counts.get("device")
    resolved["index"] = knn_counts.get("index") or params.index
    name, path = tokenizer.resolve(params.tokenizer)
    resolved["tokenizer"] = name if name in tokenizer.BUILTINS else str(path)
    for key in ("model", "vectors"):  # absolute, so a replay elsewhere finds them
        if params.to_dict()[key] and Path(params.to_dict()[key]).exists():
            resolved[key] = str(Path(params.to_dict()[key]).resolve())
    if params.max_tokens is None and not params.vectors:
        resolved["max_tokens"] = embed_counts.get("max_tokens")
    return resolved


def _stage_summaries(ws: Workspace) -> list[dict[str, Any]]:
    """Each stage's last counts and the seconds its current result took (the same entries as
    the Ray engine's stage list; seconds None where the stage never ran)."""
    summaries = []
    for stage in ("ingest", "embed", "knn", "dedup", "order", "pack", "metrics"):
        state = ws.stage_state(stage) or {}
        seconds = ws.one(
            "SELECT seconds FROM stage_runs WHERE stage = ? AND status = 'ran' "
            "AND fingerprint = ? ORDER BY ended_at DESC LIMIT 1",
            [stage, state.get("fingerprint")],
        )
        summaries.append(
            {
                "stage": stage,
                "seconds": round(seconds[0], 3) if seconds else None,
                "counts": state.get("counts"),
            }
        )
    return summaries


def input_sources(ws: Workspace) -> list[dict[str, Any]]:
    """The ingested sources, with absolute paths and their content hashes."""
    rows = ws.arrow(
        "SELECT source, format, content_hash, text_field, id_field, n_documents, n_rejected "
        "FROM sources ORDER BY ingested_at, rowid"
    ).to_pylist()
    for row in rows:
        row["source"] = str(Path(row["source"]).resolve())
        row["hash_algorithm"] = "blake2b-128"
    return rows
