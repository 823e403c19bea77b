"""Pack adapter: count tokens (cached by tokenizer and text hash), cut the ordering into
contexts (`icp_core.pack`) and store them as `contexts`; `read_packing` reads them back."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from icp_core import pack, tokenizer
from icp_core.errors import IcpError
from icp_core.params import Params
from icp_core.stages._report import Report, _noop
from icp_core.workspace import Workspace


def lm_tokenizer(params: Params) -> tokenizer.LMTokenizer:
    """The language model's tokenizer that packing counts and export writes in."""
    return tokenizer.load(params.tokenizer)


def pack_resolve(ws: Workspace, values: dict[str, Any]) -> dict[str, Any]:
    """The tokenizer by the ids it produces (its file's content), not by its spelling."""
    resolved = dict(values)
    spec = resolved.pop("tokenizer")
    # the key the last pack stored stands while its file is unchanged (same path, size and
    # mtime), so a pack that is skipped neither loads nor hashes the tokenizer file (1.4 s
    # for the default's 19 MB)
    stored = ws.stage_state("pack")
    if stored and stored["params"].get("tokenizer_file") == tokenizer.file_stamp(spec):
        resolved["tokenizer_key"] = stored["params"]["tokenizer_key"]
    else:
        resolved["tokenizer_key"] = tokenizer.load(spec).key
    return resolved


def pack_records(params: Params) -> dict[str, Any]:
    """Kept with the pack key: the ids export and `icp check` need without the tokenizer, and
    the stamp of the file its key was computed from (`pack_resolve`)."""
    lm = lm_tokenizer(params)
    return {
        "separator_ids": lm.separator_ids(params.separator),
        "pad_id": lm.pad_id(),
        "tokenizer_file": tokenizer.file_stamp(params.tokenizer),
    }


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
    return _cached_document_tokens(ws, lm.key)


def packed_document_tokens(ws: Workspace) -> np.ndarray:
    """(N,) token counts by document under the tokenizer the stored contexts were packed
    with, -1 where the token cache has none (nothing is tokenized).

    Raises:
        IcpError: the pack stage never ran.
    """
    state = ws.stage_state("pack")
    if state is None:
        raise IcpError("no contexts yet; run `icp pack` (or `icp run`) first")
    return _cached_document_tokens(ws, state["params"]["tokenizer_key"])


def _cached_document_tokens(ws: Workspace, tokenizer_key: str) -> np.ndarray:
    return ws.column(
        """SELECT coalesce(t.n_tokens, -1) FROM documents d LEFT JOIN
           (SELECT text_hash, any_value(n_tokens) AS n_tokens FROM token_cache
            WHERE tokenizer_key = ? GROUP BY text_hash) t USING (text_hash) ORDER BY d.doc""",
        [tokenizer_key],
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
