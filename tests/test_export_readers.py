"""Exports read by the real readers: datasets, pyarrow, numpy memmap, datatrove, icp replay.

The workspaces use random `--vectors` (the neighbours do not matter here), so they build in
about a second each; every export is written once per module and only read by the tests.
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest

from icp_core import pipeline, tokenizer
from icp_core.export import export_contexts
from icp_core.ingest import source_fingerprint
from icp_core.params import Params
from icp_core.replay import replay
from icp_core.workspace import Workspace
from tests.conftest import TINY_PARAMS, tiny_rows, write_jsonl
from tests.test_export import kept_texts

L = 32
COLUMNS = {
    "context",
    "doc_ids",
    "text",
    "input_ids",
    "doc_lengths",
    "doc_token_start",
    "doc_token_end",
    "n_tokens",
}
HOSTILE_TEXTS = [
    "Split here [SEP] and there [SEP][SEP] the end.",
    "A closing tag </s> inside a sentence, and </s></s> twice.",
    "GPT's <|endoftext|> marker, then <s> an opening one <s>.",
    "Padding words: [PAD] <pad> [PAD]<pad> and the unknown <unk> token <unk>.",
    "Caf\u00e9 cr\u00e8me, na\u00efve r\u00e9sum\u00e9: \u00e9t\u00e9 \u00e0 Paris.",
    "\u65e5\u672c\u8a9e\u306e\u6587\u7ae0\u3067\u3059\u3002\u6771\u4eac\u306f\u5927\u304d\u3044\u3002",
    "Emoji \U0001f600\U0001f680\U0001f1eb\U0001f1f7 and a family "
    "\U0001f468\u200d\U0001f469\u200d\U0001f467.",
    "Windows lines\r\nsecond line\r\n\r\nthird </s> line\r\n",
    "Control \x01\x02\x07 bell \x1b[31m escape \x0b\x0c feed \x7f delete\ttab.",
    "Mixed <|im_start|>user [CLS] [MASK] <|im_end|> [INST] [/INST] tokens </s>",
    "A long hostile document that certainly crosses a context boundary: </s> [SEP] "
    "<|endoftext|> <s> [PAD] <pad> <unk> \u65e5\u672c\u8a9e \u00e9 \U0001f600 \r\n "
    "and more words so that the tokenizer has to cut it into several pieces of text.",
]


# ---------------------------------------------------------------------------------------------
# building workspaces and exports
# ---------------------------------------------------------------------------------------------


def build(folder: Path, rows: list[dict], params: Params, copies: dict[int, int] | None = None):
    """Ingest `rows` (every row valid or rejected before `vectors` rows are counted) with
    random vectors (document j gets document copies[j]'s vector: a duplicate) and run."""
    folder.mkdir(parents=True, exist_ok=True)
    corpus = write_jsonl(folder / "corpus.jsonl", rows)
    n_docs = sum(1 for row in rows if row.get("text"))
    vectors = np.random.default_rng(7).standard_normal((n_docs, 16)).astype(np.float32)
    for j, i in (copies or {}).items():
        vectors[j] = vectors[i]
    np.save(folder / "vectors.npy", vectors)
    params = params.updated(vectors=str(folder / "vectors.npy"))
    path = folder / "ws.duckdb"
    with Workspace(path) as ws:
        pipeline.ingest(ws, [str(corpus)], params)
        pipeline.run(ws, params)
    return path, params, corpus


def export(ws_path: Path, params: Params, out: Path, fmt: str, **kwargs) -> dict:
    with Workspace(ws_path) as ws:
        return export_contexts(ws, params, out, fmt, **kwargs)


def main_rows() -> list[dict]:
    """The tiny corpus, one near-copy (same vector: a duplicate) and one rejected row."""
    rows = [{"id": r["id"], "text": r["text"]} for r in tiny_rows()]
    rows.append({"id": "copy-of-first", "text": rows[0]["text"].upper()})
    rows.append({"id": "no-text", "text": None})
    return rows


@pytest.fixture(scope="module")
def main(tmp_path_factory):
    folder = tmp_path_factory.mktemp("main")
    rows = main_rows()
    params = Params(k=4, context_length=L, dedup_threshold=0.95, tokenizer=None)
    ws, params, corpus = build(folder / "ws", rows, params, copies={len(rows) - 2: 0})
    outs = {}
    for fmt in ("parquet", "jsonl", "tokens"):
        for drop_last in (False, True):
            name = fmt + ("-drop" if drop_last else "")
            outs[name] = folder / name
            export(ws, params, outs[name], fmt, shard_size=2, drop_last=drop_last)
    outs["parquet-one-shard"] = folder / "parquet-one-shard"
    export(ws, params, outs["parquet-one-shard"], "parquet")
    return {"ws": ws, "params": params, "corpus": corpus, "out": outs, "folder": folder}


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    folder = tmp_path_factory.mktemp("whole")
    rows = [{"id": r["id"], "text": r["text"]} for r in tiny_rows()]
    ws, params, _ = build(folder / "ws", rows, Params(k=4, context_length=L, pack="whole"))
    outs = {fmt: folder / fmt for fmt in ("parquet", "tokens")}
    for fmt, out in outs.items():
        export(ws, params, out, fmt)
    return {"ws": ws, "params": params, "out": outs}


@pytest.fixture(scope="module", params=["mistral-tekken", "mistral-v3", "qwen3.6"])
def hostile(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    rows = [{"id": f"h-{i}", "text": text} for i, text in enumerate(HOSTILE_TEXTS)]
    rows += [{"id": r["id"], "text": r["text"]} for r in tiny_rows()[:6]]
    params = Params(k=3, context_length=L, tokenizer=request.param, dedup_threshold=None)
    ws, params, _ = build(folder / "ws", rows, params)
    out = folder / "parquet"
    manifest = export(ws, params, out, "parquet", shard_size=3)
    return {"ws": ws, "params": params, "out": out, "manifest": manifest, "rows": rows}


def read_manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text(encoding="utf-8"))


def load(out: Path, tmp_path: Path, **kwargs):
    from datasets import load_dataset

    return load_dataset(str(out), cache_dir=str(tmp_path / "hf"), **kwargs)


def arrow_rows(out: Path) -> list[dict]:
    table = pads.dataset(str(out / "data"), format="parquet").to_table()
    return sorted(table.to_pylist(), key=lambda row: row["context"])


def file_hashes(out: Path) -> dict[str, str]:
    return {
        str(path.relative_to(out)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(out.rglob("*"))
        if path.is_file() and path.name != "manifest.json"
    }


# ---------------------------------------------------------------------------------------------
# what a row must hold, checked against the documents themselves
# ---------------------------------------------------------------------------------------------


def special_ids(lm: tokenizer.LMTokenizer) -> set[int]:
    """Every id the tokenizer reserves for special/control tokens."""
    if lm.info.kind == "tekken":
        return set(range(1000))  # Tekken puts its 1,000 special ids in front of the ranks
    if lm.info.kind == "sentencepiece":
        sp = lm._sp
        return {i for i in range(sp.vocab_size()) if sp.is_control(i) or sp.is_unknown(i)}
    return set(lm._specials.values())


def check_rows(rows: list[dict], lm, sep_ids: list[int], texts: dict[str, str]) -> None:
    """Counts, separators, special ids and the token spans of every document, exactly once."""
    assert len(sep_ids) == 1
    sep = sep_ids[0]
    doc_tokens = {doc_id: lm.encode(text) for doc_id, text in texts.items()}
    pieces: dict[str, list[tuple[int, int, list[int]]]] = defaultdict(list)
    last_start = {}
    for row in rows:
        for doc_id, start in zip(row["doc_ids"], row["doc_token_start"], strict=True):
            last_start[doc_id] = max(last_start.get(doc_id, -1), start)
    forbidden = special_ids(lm) - {sep}
    assert forbidden
    n_separators = 0
    for row in rows:
        ids = list(row["input_ids"])
        assert sum(row["doc_lengths"]) == len(ids) == row["n_tokens"]
        n = len(row["doc_ids"])
        assert n == len(row["doc_lengths"]) == len(row["doc_token_start"])
        assert n == len(row["doc_token_end"])
        assert not forbidden & set(ids), row["context"]
        closing = 0
        at = 0
        for doc_id, length, start, end in zip(
            row["doc_ids"],
            row["doc_lengths"],
            row["doc_token_start"],
            row["doc_token_end"],
            strict=True,
        ):
            piece = ids[at : at + length]
            at += length
            ends_document = end == len(doc_tokens[doc_id]) and start == last_start[doc_id]
            # the document's tokens, then its separator when this piece closes it
            assert length == end - start + (1 if ends_document else 0), (doc_id, start, end)
            if ends_document:
                assert piece[-1] == sep
                closing += 1
            pieces[doc_id].append((start, end, piece[: end - start]))
        assert ids.count(sep) == closing, row["context"]
        n_separators += closing
    assert n_separators == len(texts)  # one separator per document
    assert set(pieces) == set(texts)
    for doc_id, parts in pieces.items():
        parts.sort()
        assert parts[0][0] == 0
        assert all(a[1] == b[0] for a, b in zip(parts, parts[1:], strict=False)), doc_id
        assert parts[-1][1] == len(doc_tokens[doc_id])
        joined = [t for *_, part in parts for t in part]
        assert joined == doc_tokens[doc_id], doc_id
        if lm.info.lossless:
            assert lm.decode(joined) == texts[doc_id]


def rows_whose_text_is_not_their_decode(rows: list[dict], lm) -> list[int]:
    return [row["context"] for row in rows if lm.decode(row["input_ids"]) != row["text"]]


# ---------------------------------------------------------------------------------------------
# datasets
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_load_dataset_on_the_folder_returns_exactly_the_contexts(main, tmp_path, fmt):
    out = main["out"][fmt]
    manifest = read_manifest(out)
    assert (out / "removed" / "duplicates.jsonl").read_text().strip(), "needs a duplicate"
    assert (out / "removed" / "rejects.jsonl").read_text().strip(), "needs a reject"
    dataset = load(out, tmp_path)
    assert list(dataset) == ["train"]
    train = dataset["train"]
    assert set(train.column_names) == COLUMNS
    assert train.num_rows == manifest["counts"]["n_contexts"] > 4
    rows = train.to_list()
    assert [row["context"] for row in rows] == list(range(train.num_rows))
    assert rows == arrow_rows(main["out"]["parquet"])
    streamed = list(load(out, tmp_path, streaming=True)["train"])
    assert streamed == rows


def test_pyarrow_dataset_reads_shards_of_shard_size(main, tmp_path):
    out = main["out"]["parquet"]
    n = read_manifest(out)["counts"]["n_contexts"]
    n_shards = math.ceil(n / 2)
    names = sorted(p.name for p in (out / "data").iterdir())
    assert names == [f"train-{i:05d}-of-{n_shards:05d}.parquet" for i in range(n_shards)]
    assert read_manifest(out)["counts"]["shards"] == n_shards
    fragments = [
        pads.dataset(str(out / "data" / name)).to_table().column("context").to_pylist()
        for name in names
    ]
    assert [c for shard in fragments for c in shard] == list(range(n))
    assert all(len(shard) == 2 for shard in fragments[:-1])
    table = pads.dataset(str(out / "data"), format="parquet").to_table()
    assert sorted(table.column("context").to_pylist()) == list(range(n))
    one_shard = main["out"]["parquet-one-shard"]
    assert [p.name for p in (one_shard / "data").iterdir()] == ["train-00000-of-00001.parquet"]
    assert arrow_rows(one_shard) == arrow_rows(out)
    rows = load(out, tmp_path)["train"].to_list()
    assert rows == arrow_rows(out)


def test_rows_hold_every_document_once_with_one_separator_each(main):
    rows = arrow_rows(main["out"]["parquet"])
    manifest = read_manifest(main["out"]["parquet"])
    lm = tokenizer.load(None)
    assert lm.info.lossless and manifest["tokenizer"]["separator_ids"] == [2]
    assert any(s > 0 for row in rows for s in row["doc_token_start"]), "needs a split document"
    check_rows(rows, lm, manifest["tokenizer"]["separator_ids"], kept_texts(main["ws"]))
    assert rows_whose_text_is_not_their_decode(rows, lm) == []


def test_hostile_texts_stay_text(hostile):
    rows = arrow_rows(hostile["out"])
    manifest = hostile["manifest"]
    lm = tokenizer.load(hostile["params"].tokenizer)
    assert manifest["tokenizer"]["name"] == hostile["params"].tokenizer
    sep_ids = manifest["tokenizer"]["separator_ids"]
    assert sep_ids == lm.separator_ids()
    texts = kept_texts(hostile["ws"])
    assert {row["id"] for row in hostile["rows"]} == set(texts)
    check_rows(rows, lm, sep_ids, texts)
    # the text column holds the hostile strings as they are (not dropped, not re-encoded)
    if lm.info.lossless:
        # a row decodes to its text unless a context cut falls inside a character (below)
        for context in rows_whose_text_is_not_their_decode(rows, lm):
            row = rows[context]
            decoded = lm.decode(row["input_ids"])
            assert "\ufffd" in decoded, context
            assert row["doc_token_start"][0] > 0 or row["n_tokens"] == L, context
        joined = "".join(row["text"] for row in rows)
        for marker in ("[SEP]", "<|endoftext|>", "<pad>", "\u65e5\u672c\u8a9e", "\r\n", "\x1b"):
            assert marker in joined


def texts_of_exactly(lm, n_tokens: int, count: int) -> list[str]:
    """`count` ASCII texts that encode to exactly `n_tokens` tokens each."""
    ids = lm.encode(" ".join(f"word{i}" for i in range(40 * n_tokens * count)))
    texts, at = [], 0
    while len(texts) < count:
        text = lm.decode(ids[at : at + n_tokens])
        at += n_tokens
        if len(lm.encode(text)) == n_tokens:
            texts.append(text)
    return texts


@pytest.mark.parametrize(("separator", "doc_tokens"), [(None, L), ("\n====\n", L - 1)])
def test_separator_pushed_past_a_full_context(tmp_path, separator, doc_tokens):
    """Documents that fill a context to its last token: the separator (or the rest of a
    multi-token one) opens the next context as a piece without document tokens."""
    lm = tokenizer.load(None)
    texts = texts_of_exactly(lm, doc_tokens, 4)
    rows = [{"id": f"d{i}", "text": text} for i, text in enumerate(texts)]
    params = Params(k=2, context_length=L, separator=separator, shuffle=False)
    ws, params, _ = build(tmp_path / "ws", rows, params.updated(dedup_threshold=None))
    manifest = export(ws, params, tmp_path / "parquet", "parquet")
    export(ws, params, tmp_path / "tokens", "tokens")
    sep_ids = manifest["tokenizer"]["separator_ids"]
    assert len(sep_ids) == (1 if separator is None else 3)
    with Workspace(ws, read_only=True) as w:
        path = (
            w.arrow("SELECT d.id FROM ordering o JOIN documents d USING (doc) ORDER BY o.position")
            .column("id")
            .to_pylist()
        )
    by_id = {row["id"]: row["text"] for row in rows}
    expected = [t for doc_id in path for t in lm.encode(by_id[doc_id]) + sep_ids]
    parquet = arrow_rows(tmp_path / "parquet")
    only_separator = [
        (row["context"], s)
        for row in parquet
        for s, e in zip(row["doc_token_start"], row["doc_token_end"], strict=True)
        if s == e
    ]
    assert only_separator, "needs a piece that holds only a separator"
    assert [t for row in parquet for t in row["input_ids"]] == expected
    tokens = np.fromfile(tmp_path / "tokens" / "tokens.ds", dtype=np.uint32)
    assert tokens.tolist() == expected
    assert all(row["n_tokens"] == L for row in parquet[:-1])
    assert "".join(row["text"] for row in parquet) == "".join(
        by_id[doc_id] + lm.decode(sep_ids) for doc_id in path
    )
    assert rows_whose_text_is_not_their_decode(parquet, lm) == []
    index = np.fromfile(tmp_path / "tokens" / "tokens.ds.index", dtype=np.uint64)
    offsets = np.load(tmp_path / "tokens" / "offsets.npy")
    ends = [int(offsets[i]) + e for i, r in enumerate(parquet) for e in np.cumsum(r["doc_lengths"])]
    assert index.tolist() == ends
    if separator is None:
        check_rows(parquet, lm, sep_ids, by_id)


# ---------------------------------------------------------------------------------------------
# the token file
# ---------------------------------------------------------------------------------------------


def test_token_file_is_the_parquet_input_ids_back_to_back(main):
    out = main["out"]["tokens"]
    manifest = read_manifest(out)
    rows = arrow_rows(main["out"]["parquet"])
    tokens = np.memmap(out / "tokens.ds", dtype=manifest["tokenizer"]["token_dtype"], mode="r")
    assert tokens.dtype == np.uint32 and manifest["counts"]["token_size"] == 4
    expected = np.concatenate([np.asarray(row["input_ids"]) for row in rows])
    assert np.array_equal(tokens, expected)
    assert len(tokens) == manifest["counts"]["n_tokens"]
    lengths = [row["n_tokens"] for row in rows]
    assert all(n == L for n in lengths[:-1]) and 0 < lengths[-1] < L
    offsets = np.load(out / "offsets.npy")
    assert offsets.dtype == np.int64
    assert offsets.tolist() == [0, *np.cumsum(lengths).tolist()]
    index = np.fromfile(out / "tokens.ds.index", dtype=np.uint64)
    ends = [
        int(offsets[i]) + e for i, row in enumerate(rows) for e in np.cumsum(row["doc_lengths"])
    ]
    assert index.tolist() == ends
    assert int(index[-1]) == len(tokens)


def test_datatrove_reads_every_full_context(main):
    from datatrove.utils.dataset import DatatroveFileDataset

    out = main["out"]["tokens"]
    manifest = read_manifest(out)
    tokens = np.memmap(out / "tokens.ds", dtype=manifest["tokenizer"]["token_dtype"], mode="r")
    index = np.fromfile(out / "tokens.ds.index", dtype=np.uint64).astype(np.int64)
    contexts = DatatroveFileDataset(
        str(out / "tokens.ds"),
        seq_len=L - 1,
        token_size=manifest["counts"]["token_size"],
        return_positions=True,
    )
    n_full = manifest["counts"]["n_contexts"] - 1  # the last one is short
    assert len(contexts) == n_full == len(tokens) // L
    boundaries = np.concatenate([[0], index])
    for i in range(n_full):
        item = contexts[i]
        assert item["input_ids"].tolist() == tokens[i * L : (i + 1) * L].tolist()
        at = np.arange(i * L, (i + 1) * L)
        piece_start = boundaries[np.searchsorted(boundaries, at, side="right") - 1]
        assert item["positions"].tolist() == (at - piece_start).tolist()
        assert item["positions"][0] == 0


# ---------------------------------------------------------------------------------------------
# whole packing, the short last context, --drop-last
# ---------------------------------------------------------------------------------------------


def test_whole_rows_unpadded_token_file_padded(whole):
    rows = arrow_rows(whole["out"]["parquet"])
    out = whole["out"]["tokens"]
    manifest = read_manifest(out)
    pad, sep = manifest["tokenizer"]["pad_id"], manifest["tokenizer"]["separator_ids"][0]
    assert pad == 11 and pad != sep
    assert all(s == 0 for row in rows for s in row["doc_token_start"])
    assert any(row["n_tokens"] < L for row in rows[:-1]), "whole packing leaves gaps"
    for row in rows:
        assert len(row["input_ids"]) == row["n_tokens"] == sum(row["doc_lengths"]) <= L
        assert row["input_ids"][-1] == sep and pad not in row["input_ids"]
    tokens = np.memmap(out / "tokens.ds", dtype=manifest["tokenizer"]["token_dtype"], mode="r")
    offsets = np.load(out / "offsets.npy")
    assert offsets.tolist() == list(range(0, L * (len(rows) + 1), L)) and len(tokens) == offsets[-1]
    ends = set()
    for i, row in enumerate(rows):
        context = tokens[offsets[i] : offsets[i + 1]].tolist()
        assert context[: row["n_tokens"]] == row["input_ids"]
        assert context[row["n_tokens"] :] == [pad] * (L - row["n_tokens"])
        ends.update(int(offsets[i]) + int(e) for e in np.cumsum(row["doc_lengths"]))
        ends.add(int(offsets[i + 1]))
    index = np.fromfile(out / "tokens.ds.index", dtype=np.uint64)
    assert index.tolist() == sorted(ends)
    assert manifest["counts"]["n_padding"] == len(tokens) - sum(r["n_tokens"] for r in rows) > 0
    check_rows(rows, tokenizer.load(None), [sep], kept_texts(whole["ws"]))


def test_only_the_last_context_is_short_and_drop_last_removes_it(main, tmp_path):
    rows = arrow_rows(main["out"]["parquet"])
    n = len(rows)
    short = [row["context"] for row in rows if row["n_tokens"] < L]
    assert short == [n - 1]
    tokens_out = main["out"]["tokens"]
    offsets = np.load(tokens_out / "offsets.npy")
    assert offsets[-1] - offsets[-2] == rows[-1]["n_tokens"]
    for fmt in ("parquet", "jsonl", "tokens"):
        out = main["out"][fmt + "-drop"]
        manifest = read_manifest(out)
        assert manifest["counts"]["n_contexts"] == n - 1
        assert manifest["export"] == {"shard_size": 2, "drop_last": True}
        dropped = manifest["dropped_last"]
        assert dropped["context"] == n - 1 and dropped["n_tokens"] == rows[-1]["n_tokens"]
        assert sorted(dropped["doc_ids"]) == sorted(set(rows[-1]["doc_ids"]))
        assert len(dropped["doc_ids"]) == len(set(dropped["doc_ids"]))
        if fmt == "tokens":
            tokens = np.memmap(out / "tokens.ds", dtype=np.uint32, mode="r")
            assert len(tokens) == (n - 1) * L == manifest["counts"]["n_tokens"]
            assert np.load(out / "offsets.npy").tolist() == offsets[:-1].tolist()
            index = np.fromfile(out / "tokens.ds.index", dtype=np.uint64)
            full = np.fromfile(tokens_out / "tokens.ds.index", dtype=np.uint64)
            assert index.tolist() == [e for e in full.tolist() if e <= (n - 1) * L]
        else:
            kept = load(out, tmp_path / fmt)["train"].to_list()
            assert kept == rows[:-1]
    assert read_manifest(main["out"]["parquet"])["dropped_last"] is None


# ---------------------------------------------------------------------------------------------
# the manifest and replay
# ---------------------------------------------------------------------------------------------


def check_manifest(out: Path, manifest: dict) -> None:
    assert read_manifest(out) == json.loads(json.dumps(manifest, default=str))
    assert manifest["schema_version"] == 2
    name, path = tokenizer.resolve(manifest["parameters"]["tokenizer"])
    info = manifest["tokenizer"]
    assert info["name"] == name and info["source"]
    assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info["separator_ids"] == [2] and info["pad_id"] == 11
    for key in ("python", "numpy", "faiss-cpu", "torch", "sentence-transformers"):
        assert manifest["versions"][key], key
    for key in ("tokenizers", "duckdb", "pyarrow", "numba"):
        assert manifest["versions"][key], key
    assert manifest["inputs"]
    for source in manifest["inputs"]:
        assert source["hash_algorithm"] == "blake2b-128"
        assert source["content_hash"] == source_fingerprint(Path(source["source"]))
    on_disk = {
        str(p.relative_to(out)): p
        for p in out.rglob("*")
        if p.is_file() and p.name != "manifest.json"
    }
    assert set(manifest["files"]) == set(on_disk)
    for name, entry in manifest["files"].items():
        data = on_disk[name].read_bytes()
        assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}, name


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "tokens"])
def test_manifest_records_tokenizer_versions_inputs_and_files(main, fmt):
    out = main["out"][fmt]
    manifest = read_manifest(out)
    check_manifest(out, manifest)
    assert manifest["model"]["name"] == "vectors"
    vectors = Path(main["params"].vectors)
    assert manifest["model"]["sha256"] == hashlib.sha256(vectors.read_bytes()).hexdigest()
    assert manifest["parameters"]["index"] != "auto"
    assert manifest["inputs"][0]["source"] == str(main["corpus"].resolve())


@pytest.mark.model
def test_manifest_resolves_index_and_device_with_a_model(tiny_jsonl, tmp_path):
    path = tmp_path / "ws.duckdb"
    with Workspace(path) as ws:  # embedded here (no seeded vectors): the model runs
        pipeline.ingest(ws, [str(tiny_jsonl)], TINY_PARAMS)
        pipeline.run(ws, TINY_PARAMS)
        manifest = export_contexts(ws, TINY_PARAMS, tmp_path / "out", "parquet")
    check_manifest(tmp_path / "out", manifest)
    assert manifest["parameters"]["index"] == "flat"
    assert manifest["parameters"]["device"] == "cpu"
    assert manifest["model"]["name"] and manifest["model"]["source"]


def test_manifest_device_is_null_when_every_vector_came_from_the_cache(
    tiny_workspace_template, tmp_path
):
    """The tiny workspace's vectors are seeded into its cache: no model ran, no device."""
    with Workspace(tiny_workspace_template, read_only=True) as ws:
        manifest = export_contexts(ws, TINY_PARAMS, tmp_path / "out", "parquet")
    assert manifest["parameters"]["device"] is None


def test_manifest_device_is_null_with_vectors(main):
    """Imported vectors: no model ran, so no device is recorded (never a literal "auto")."""
    assert read_manifest(main["out"]["parquet"])["parameters"]["device"] is None


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "icp_core.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parent.parent,
    )


@pytest.mark.slow
def test_replay_writes_byte_identical_files(main):
    out = main["out"]["parquet"]
    again = main["folder"] / "replayed"
    result = run_cli("replay", str(out / "manifest.json"), "--out", str(again))
    assert result.returncode == 0, result.stderr
    assert "every file matches" in result.stdout
    assert file_hashes(again) == file_hashes(out)
    assert len(file_hashes(out)) == len(read_manifest(out)["files"]) > 3
    tokens = main["out"]["tokens-drop"]
    assert replay(tokens / "manifest.json", main["folder"] / "replayed-tokens") == []
    assert file_hashes(main["folder"] / "replayed-tokens") == file_hashes(tokens)


@pytest.mark.slow
def test_replay_refuses_a_changed_input(main, tmp_path):
    changed = tmp_path / "corpus.jsonl"
    changed.write_bytes(main["corpus"].read_bytes().replace(b"telescope", b"microscope"))
    manifest = read_manifest(main["out"]["parquet"])
    manifest["inputs"][0]["source"] = str(changed)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    result = run_cli("replay", str(tmp_path / "manifest.json"), "--out", str(tmp_path / "again"))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "changed since the export" in lines[0], result.stderr
    assert not (tmp_path / "again").exists()
