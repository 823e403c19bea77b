"""Ingest: every format, every bad-row case, idempotence, ids and kept fields."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from icp_core import pipeline
from icp_core.errors import IcpError
from icp_core.ingest import parse_source
from icp_core.params import Params
from icp_core.workspace import Workspace


def ingest(ws_path: Path, *inputs: Path, **fields: str) -> dict:
    params = Params(**fields)
    with Workspace(ws_path) as ws:
        return pipeline.ingest(ws, [str(p) for p in inputs], params).counts


def rejects(ws_path: Path) -> list[dict]:
    with Workspace(ws_path, read_only=True) as ws:
        return ws.arrow("SELECT source, line, id, reason FROM rejects ORDER BY line").to_pylist()


class TestFormats:
    ROWS = [
        {"id": "a", "text": "first document", "label": "x", "score": 3},
        {"id": "b", "text": "second document", "label": "y", "score": 4},
    ]

    def check(self, ws_path: Path, source: Path, **fields: str) -> None:
        counts = ingest(ws_path, source, **fields)
        assert counts["documents"] == 2 and counts["rejected"] == 0
        with Workspace(ws_path, read_only=True) as ws:
            rows = ws.arrow(
                "SELECT id, text, json_extract_string(meta, '$.label') AS label "
                "FROM documents ORDER BY doc"
            ).to_pylist()
        assert rows == [
            {"id": "a", "text": "first document", "label": "x"},
            {"id": "b", "text": "second document", "label": "y"},
        ]

    def test_jsonl(self, tmp_path):
        path = tmp_path / "d.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in self.ROWS))
        self.check(tmp_path / "w.duckdb", path)

    def test_jsonl_gz(self, tmp_path):
        path = tmp_path / "d.jsonl.gz"
        with gzip.open(path, "wt") as handle:
            handle.writelines(json.dumps(r) + "\n" for r in self.ROWS)
        self.check(tmp_path / "w.duckdb", path)

    def test_parquet(self, tmp_path):
        path = tmp_path / "d.parquet"
        pq.write_table(pa.Table.from_pylist(self.ROWS), path)
        self.check(tmp_path / "w.duckdb", path)

    def test_csv(self, tmp_path):
        path = tmp_path / "d.csv"
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["id", "text", "label", "score"])
            writer.writeheader()
            writer.writerows(self.ROWS)
        self.check(tmp_path / "w.duckdb", path)

    def test_custom_fields(self, tmp_path):
        path = tmp_path / "d.jsonl"
        rows = [{"key": r["id"], "body": r["text"], "label": r["label"]} for r in self.ROWS]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        self.check(tmp_path / "w.duckdb", path, text_field="body", id_field="key")

    def test_folder_of_text_files(self, tmp_path):
        folder = tmp_path / "docs"
        (folder / "sub").mkdir(parents=True)
        (folder / "one.txt").write_text("text one")
        (folder / "sub" / "two.md").write_text("# two\n\ntext two")
        (folder / "image.png").write_bytes(b"\x89PNG")
        counts = ingest(tmp_path / "w.duckdb", folder)
        assert counts["documents"] == 2 and counts["rejected"] == 1
        with Workspace(tmp_path / "w.duckdb", read_only=True) as ws:
            assert ws.column("SELECT id FROM documents ORDER BY doc").tolist() == [
                "one.txt",
                "sub/two.md",
            ]
        assert rejects(tmp_path / "w.duckdb")[0]["id"] == "image.png"

    def test_unsupported_suffix_is_an_error(self, tmp_path):
        path = tmp_path / "d.xlsx"
        path.write_bytes(b"x")
        with pytest.raises(IcpError, match="unsupported input type"):
            parse_source(path)

    def test_missing_file_is_an_error(self, tmp_path):
        with pytest.raises(IcpError, match="no such file"):
            parse_source(tmp_path / "nope.jsonl")


class TestBadRows:
    def test_each_bad_row_is_rejected_with_line_and_reason(self, tmp_path):
        path = tmp_path / "bad.jsonl"
        lines = [
            json.dumps({"id": "ok", "text": "fine"}).encode(),
            b'{"id": "broken", "text": ',
            json.dumps({"id": "no-text"}).encode(),
            json.dumps({"id": "empty", "text": "   "}).encode(),
            json.dumps({"id": "number", "text": 42}).encode(),
            json.dumps({"id": "ok", "text": "same id again"}).encode(),
            b'{"id": "latin", "text": "caf\xe9"}',
            b"[1, 2, 3]",
            b"",
            json.dumps({"id": "null", "text": None}).encode(),
        ]
        path.write_bytes(b"\n".join(lines) + b"\n")
        counts = ingest(tmp_path / "w.duckdb", path)
        assert counts["documents"] == 1
        reasons = {row["line"]: row["reason"] for row in rejects(tmp_path / "w.duckdb")}
        assert reasons[2].startswith("invalid JSON")
        assert reasons[3] == "missing text field 'text'"
        assert reasons[4] == "empty text"
        assert reasons[5] == "text field 'text' is int, not a string"
        assert reasons[6].startswith("duplicate id 'ok' (first at") and ":1)" in reasons[6]
        assert reasons[7].startswith("not valid UTF-8")
        assert reasons[8] == "a JSON list, not an object"
        assert reasons[10] == "text field 'text' is null, not a string"
        assert 9 not in reasons  # a blank line is no row
        assert counts["rejected"] == 8

    def test_duplicate_ids_across_files(self, tmp_path):
        first = tmp_path / "a.jsonl"
        second = tmp_path / "b.jsonl"
        first.write_text(json.dumps({"id": "x", "text": "one"}) + "\n")
        second.write_text(
            json.dumps({"id": "x", "text": "two"}) + "\n" + json.dumps({"id": "y", "text": "3"})
        )
        ingest(tmp_path / "w.duckdb", first)
        counts = ingest(tmp_path / "w.duckdb", second)
        assert (counts["documents"], counts["rejected"]) == (1, 1)
        [reject] = rejects(tmp_path / "w.duckdb")
        assert reject["source"] == str(second) and reject["line"] == 1
        assert reject["reason"] == f"duplicate id 'x' (first at {first}:1)"

    def test_truncated_gzip_keeps_rows_before_the_cut(self, tmp_path):
        whole = gzip.compress(
            "".join(
                json.dumps({"id": str(i), "text": f"doc {i} " * 50}) + "\n" for i in range(200)
            ).encode()
        )
        path = tmp_path / "cut.jsonl.gz"
        path.write_bytes(whole[: len(whole) // 2])
        counts = ingest(tmp_path / "w.duckdb", path)
        assert 0 < counts["documents"] < 200
        assert counts["rejected"] == 1
        assert "re-download" in rejects(tmp_path / "w.duckdb")[0]["reason"]

    def test_csv_without_text_column(self, tmp_path):
        path = tmp_path / "d.csv"
        path.write_text("id,body\n1,hello\n")
        with pytest.raises(
            IcpError, match=r"no column 'text' \(columns: id, body\); set --text-field"
        ):
            parse_source(path)

    def test_csv_bad_utf8_and_extra_fields(self, tmp_path):
        path = tmp_path / "d.csv"
        path.write_bytes(b"id,text\n1,good\n2,caf\xe9\n3,a,b\n")
        parsed = parse_source(path)
        assert parsed.ids == ["1"]
        assert [r.reason for r in parsed.rejects] == [
            "not valid UTF-8 at byte 5",
            "more fields than the header (3, header has 2)",
        ]

    def test_parquet_text_of_wrong_type(self, tmp_path):
        path = tmp_path / "d.parquet"
        pq.write_table(pa.table({"id": ["a"], "text": [3]}), path)
        with pytest.raises(IcpError, match="column 'text' has type int64, not string"):
            parse_source(path)

    def test_empty_file(self, tmp_path):
        path = tmp_path / "empty.jsonl"
        path.write_bytes(b"")
        counts = ingest(tmp_path / "w.duckdb", path)
        assert (counts["documents"], counts["rejected"]) == (0, 0)

    def test_rows_without_id_get_file_and_line(self, tmp_path):
        path = tmp_path / "noid.jsonl"
        path.write_text(json.dumps({"text": "a"}) + "\n" + json.dumps({"text": "b"}) + "\n")
        ingest(tmp_path / "w.duckdb", path)
        with Workspace(tmp_path / "w.duckdb", read_only=True) as ws:
            assert ws.column("SELECT id FROM documents ORDER BY doc").tolist() == [
                "noid.jsonl:1",
                "noid.jsonl:2",
            ]


class TestIdempotence:
    def test_same_file_twice_adds_nothing(self, tiny_jsonl, tmp_path):
        first = ingest(tmp_path / "w.duckdb", tiny_jsonl)
        again = ingest(tmp_path / "w.duckdb", tiny_jsonl)
        assert first["documents"] == 18
        assert again["documents"] == 0 and again["sources_skipped"] == 1
        assert again["total_documents"] == 18

    def test_new_file_adds_only_its_documents(self, tiny_jsonl, tmp_path):
        ingest(tmp_path / "w.duckdb", tiny_jsonl)
        extra = tmp_path / "extra.jsonl"
        extra.write_text(json.dumps({"id": "new", "text": "a new document"}) + "\n")
        counts = ingest(tmp_path / "w.duckdb", tiny_jsonl, extra)
        assert counts["documents"] == 1 and counts["total_documents"] == 19
        with Workspace(tmp_path / "w.duckdb", read_only=True) as ws:
            assert ws.scalar("SELECT doc FROM documents WHERE id = 'new'") == 18

    def test_large_document_is_kept_whole(self, tmp_path):
        text = "word " * 2_000_000  # 10 MB
        path = tmp_path / "big.jsonl"
        path.write_text(json.dumps({"id": "big", "text": text}) + "\n")
        ingest(tmp_path / "w.duckdb", path)
        with Workspace(tmp_path / "w.duckdb", read_only=True) as ws:
            assert ws.scalar("SELECT length(text) FROM documents") == len(text)


def test_a_reject_reason_names_no_option_and_reject_fix_says_which_does():
    from icp_core.ingest import FIELDS_DIFFER, TEXT_DIFFERS, reject_fix

    assert reject_fix("missing text field 'body'") == (
        "set {fix} to the field that holds the text",
        "text_field",
    )
    assert reject_fix(TEXT_DIFFERS)[1] == reject_fix(FIELDS_DIFFER)[1] == "update"
    assert reject_fix("empty text") is None  # the file itself must change
    assert "--" not in TEXT_DIFFERS + FIELDS_DIFFER
    err = IcpError("{fix} 0: k must be at least 1", fix="k")
    assert str(err) == "--k 0: k must be at least 1"
    assert err.render(lambda option: f"“{option}”") == "“k” 0: k must be at least 1"
