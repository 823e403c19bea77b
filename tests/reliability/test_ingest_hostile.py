"""Hostile ingest input, round 2: every row is a document or a reject with file, line and reason.

Nothing is merged, dropped or renamed silently, nothing hangs, and no traceback reaches the
user. docs/reliability.md ("Ingest, round 2") lists each case with its outcome.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from icp_core import check, jobs, pipeline
from icp_core.errors import IcpError
from icp_core.ingest import csv_records, ends_inside_quotes, parse_source
from icp_core.params import Params
from icp_core.workspace import Workspace
from tests.conftest import TINY_PARAMS, tiny_rows, write_jsonl

BOM = b"\xef\xbb\xbf"


def icp(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "icp_core.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        **kwargs,
    )


def ingest(ws_path: Path, *inputs: Path | str, update: bool = False, **fields: str) -> dict:
    with Workspace(ws_path) as ws:
        return pipeline.ingest(ws, [str(p) for p in inputs], Params(**fields), update=update).counts


def documents(ws_path: Path) -> list[dict]:
    with Workspace(ws_path, read_only=True) as ws:
        return ws.arrow(
            "SELECT doc, id, text, source, line FROM documents ORDER BY doc"
        ).to_pylist()


def rejects(ws_path: Path) -> list[dict]:
    with Workspace(ws_path, read_only=True) as ws:
        return ws.arrow(
            "SELECT source, line, id, reason FROM rejects ORDER BY source, line"
        ).to_pylist()


def texts(ws_path: Path) -> dict[str, str]:
    return {row["id"]: row["text"] for row in documents(ws_path)}


def reasons(ws_path: Path) -> list[tuple[int | None, str]]:
    return [(row["line"], row["reason"]) for row in rejects(ws_path)]


# ---------------------------------------------------------------------------------------------
# 1. CSV
# ---------------------------------------------------------------------------------------------


class TestCsvRecords:
    def test_unterminated_quote_rejects_its_line_and_keeps_the_rows_after(self, tmp_path):
        path = tmp_path / "d.csv"
        path.write_text('id,text\n1,"broken\n2,second\n3,third\n')
        counts = ingest(tmp_path / "w.duckdb", path)
        assert (counts["documents"], counts["rejected"]) == (2, 1)
        assert texts(tmp_path / "w.duckdb") == {"2": "second", "3": "third"}
        [(line, reason)] = reasons(tmp_path / "w.duckdb")
        assert line == 2 and reason.startswith("unterminated quote: the quoted field opened")

    def test_a_quote_closed_rows_later_does_not_merge_them(self, tmp_path):
        (tmp_path / "ends.csv").write_text('id,text\n1,"broken\n2,second\n3,end"\n4,fourth\n')
        (tmp_path / "bad.csv").write_text('id,text\n1,"broken\n2,second\n3,"third"\n')
        counts = ingest(tmp_path / "w.duckdb", tmp_path / "ends.csv", tmp_path / "bad.csv")
        assert (counts["documents"], counts["rejected"]) == (3, 4)
        with Workspace(tmp_path / "w.duckdb", read_only=True) as ws:
            rows = ws.con.execute(
                "SELECT regexp_extract(source, '[a-z]+.csv'), id, text FROM documents ORDER BY doc"
            ).fetchall()
        assert rows == [
            ("ends.csv", "2", "second"),
            ("ends.csv", "3", 'end"'),  # a quote inside an unquoted field is a character
            ("ends.csv", "4", "fourth"),
        ]  # bad.csv's "2" and "3" are duplicate ids of ends.csv's: rejected
        found = {
            Path(r["source"]).name: (r["line"], r["reason"])
            for r in rejects(tmp_path / "w.duckdb")
            if r["line"] == 2
        }
        assert found["ends.csv"][1].startswith(
            "quoted field runs into line 3, which looks like a record of its own"
        )
        assert found["bad.csv"][1].startswith("malformed quoted field on lines 2-4")

    def test_legitimate_multi_line_fields_still_work(self, tmp_path):
        path = tmp_path / "d.csv"
        body = 'Dear Ann,\nthanks, see you\n\n3, 4 and 5 are "fine"'
        path.write_text(
            'id,text\nmail-1,"' + body.replace('"', '""') + '"\nmail-2,"He said ""hi"""\n'
        )
        counts = ingest(tmp_path / "w.duckdb", path)
        assert (counts["documents"], counts["rejected"]) == (2, 0)
        assert texts(tmp_path / "w.duckdb") == {"mail-1": body, "mail-2": 'He said "hi"'}
        assert [row["line"] for row in documents(tmp_path / "w.duckdb")] == [2, 6]

    def test_byte_order_mark_is_dropped_in_every_text_format(self, tmp_path):
        (tmp_path / "d.csv").write_bytes(BOM + b"id,text\nx,from csv\n")
        (tmp_path / "d.jsonl").write_bytes(BOM + b'{"id": "y", "text": "from jsonl"}\n')
        (tmp_path / "z.txt").write_bytes(BOM + b"from txt")
        names = ["d.csv", "d.jsonl", "z.txt"]
        counts = ingest(tmp_path / "w.duckdb", *(tmp_path / n for n in names))
        assert (counts["documents"], counts["rejected"]) == (3, 0)
        assert texts(tmp_path / "w.duckdb") == {
            "x": "from csv",
            "y": "from jsonl",
            "z.txt": "from txt",
        }

    def test_a_latin1_byte_rejects_its_row_only(self, tmp_path):
        path = tmp_path / "d.csv"
        path.write_bytes(b'id,text\n1,good\n2,caf\xe9 au lait\n3,"multi\nline \xff"\n4,fine\n')
        result = icp("ingest", path, "-w", tmp_path / "w.duckdb")
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("2 documents, 2 rejected (see rejects)")
        assert texts(tmp_path / "w.duckdb") == {"1": "good", "4": "fine"}
        assert reasons(tmp_path / "w.duckdb") == [
            (3, "not valid UTF-8 at byte 5"),
            (4, "not valid UTF-8 at byte 5 of line 5"),
        ]

    @settings(
        max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(
        st.lists(
            st.lists(st.text(alphabet='ab ,"\n\r', max_size=8), min_size=2, max_size=2),
            max_size=6,
        )
    )
    def test_well_quoted_records_round_trip(self, tmp_path, rows):
        """Whatever csv.writer writes (quotes, commas, line breaks in fields) reads back."""
        import csv
        import io

        buffer = io.StringIO(newline="")
        writer = csv.writer(buffer)
        writer.writerow(["id", "text"])
        writer.writerows([[f"r{i}", text] for i, (_, text) in enumerate(rows)])
        data = buffer.getvalue().encode()
        numbered = list(enumerate(data.splitlines(keepends=True), start=1))
        records = [r for r in csv_records(numbered) if r.fields is not None]
        # csv.writer ends records with \r\n; a field's own line breaks are kept inside it
        got = [r.fields for r in records[1:]]
        assert got == [[f"r{i}", text] for i, (_, text) in enumerate(rows)]

    @settings(
        max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(st.lists(st.text(alphabet='1a ,"\xe9', max_size=10), min_size=1, max_size=8))
    def test_any_csv_body_is_accounted_for_line_by_line(self, tmp_path, lines):
        """Whatever the quoting and bytes after a good header: no exception; documents and
        rejects start at distinct lines that hold something, the first such line among them
        (nothing before the first record is swallowed)."""
        body = "\n".join(lines).encode("latin-1")  # \xe9 alone is not UTF-8
        path = tmp_path / "f.csv"
        path.write_bytes(b"id,text\n" + body + b"\n")
        parsed = parse_source(path)
        starts = sorted([*parsed.lines, *(r.line for r in parsed.rejects)])
        assert len(starts) == len(set(starts)) and all(s >= 2 for s in starts)
        filled = [n for n, line in enumerate(lines, start=2) if line.strip()]
        assert not filled or starts[0] == filled[0]
        assert set(starts) <= set(filled)

    def test_quote_scanner(self):
        assert ends_inside_quotes(b'1,"open\n', b",", False)
        assert not ends_inside_quotes(b'1,"a ""b"" c"\n', b",", False)
        assert not ends_inside_quotes(b'1,6" screen\n', b",", False)  # literal quote
        assert ends_inside_quotes(b'still ""inside\n', b",", True)
        assert not ends_inside_quotes(b'closed",x\n', b",", True)


# ---------------------------------------------------------------------------------------------
# 2. folders and files
# ---------------------------------------------------------------------------------------------


class TestFoldersAndFiles:
    def test_symlinked_subfolder_is_followed(self, tmp_path):
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        (elsewhere / "b.txt").write_text("behind a link")
        folder = tmp_path / "docs"
        folder.mkdir()
        (folder / "a.txt").write_text("plain")
        (folder / "linked").symlink_to(elsewhere, target_is_directory=True)
        counts = ingest(tmp_path / "w.duckdb", folder)
        assert (counts["documents"], counts["rejected"]) == (2, 0)
        assert texts(tmp_path / "w.duckdb") == {"a.txt": "plain", "linked/b.txt": "behind a link"}

    def test_symlink_loop_is_a_reject_and_the_walk_ends(self, tmp_path):
        folder = tmp_path / "docs"
        (folder / "sub").mkdir(parents=True)
        (folder / "sub" / "a.txt").write_text("once")
        (folder / "sub" / "up").symlink_to("..", target_is_directory=True)
        (folder / "self").symlink_to("self")  # a link to itself: ELOOP
        counts = ingest(tmp_path / "w.duckdb", folder)
        assert (counts["documents"], counts["rejected"]) == (1, 2)
        found = {row["id"]: row["reason"] for row in rejects(tmp_path / "w.duckdb")}
        assert found["sub/up"] == (
            "symlink loop: -> .. leads back to a folder above it; not followed"
        )
        assert found["self"] == "cannot follow -> self (Too many levels of symbolic links)"

    def test_fifo_and_dangling_link_in_a_folder_are_rejects(self, tmp_path):
        folder = tmp_path / "docs"
        folder.mkdir()
        (folder / "a.txt").write_text("fine")
        os.mkfifo(folder / "pipe.txt")
        (folder / "gone.txt").symlink_to(tmp_path / "nowhere.txt")
        counts = ingest(tmp_path / "w.duckdb", folder)
        assert (counts["documents"], counts["rejected"]) == (1, 2)
        assert {(r["source"], r["line"], r["reason"]) for r in rejects(tmp_path / "w.duckdb")} == {
            (str(folder / "pipe.txt"), None, "not a regular file (FIFO)"),
            (str(folder / "gone.txt"), None, f"dangling symlink -> {tmp_path / 'nowhere.txt'}"),
        }

    def test_fifo_given_directly_is_one_line_error_and_never_opened(self, tmp_path):
        fifo = tmp_path / "stream.jsonl"
        os.mkfifo(fifo)
        result = icp("ingest", fifo, "-w", tmp_path / "w.duckdb")  # would hang if opened
        assert result.returncode == 2
        assert result.stderr.strip() == (
            f"error: {fifo}: not a regular file (FIFO); give a file or a folder"
        )

    def test_same_file_name_in_two_folders_gets_distinct_ids(self, tmp_path):
        for shard in ("x", "y"):
            (tmp_path / shard).mkdir()
            write_jsonl(tmp_path / shard / "a.jsonl", [{"text": f"{shard} one"}, {"text": "two"}])
        counts = ingest(tmp_path / "w.duckdb", tmp_path / "x" / "a.jsonl", tmp_path / "y/a.jsonl")
        assert (counts["documents"], counts["rejected"]) == (4, 0)
        assert [row["id"] for row in documents(tmp_path / "w.duckdb")] == [
            "x/a.jsonl:1",
            "x/a.jsonl:2",
            "y/a.jsonl:1",
            "y/a.jsonl:2",
        ]

    def test_shards_in_a_folder_are_named_by_their_relative_path(self, tmp_path):
        (tmp_path / "corpus" / "sub").mkdir(parents=True)
        write_jsonl(tmp_path / "corpus" / "sub" / "a.jsonl", [{"text": "deep"}])
        write_jsonl(tmp_path / "corpus" / "a.jsonl", [{"text": "top"}])
        counts = ingest(tmp_path / "w.duckdb", tmp_path / "corpus")
        assert (counts["documents"], counts["rejected"]) == (2, 0)
        rows = documents(tmp_path / "w.duckdb")
        assert [(r["id"], r["source"], r["line"]) for r in rows] == [
            ("a.jsonl:1", str(tmp_path / "corpus" / "a.jsonl"), 1),
            ("sub/a.jsonl:1", str(tmp_path / "corpus" / "sub" / "a.jsonl"), 1),
        ]


# ---------------------------------------------------------------------------------------------
# 3. edits and retries
# ---------------------------------------------------------------------------------------------


class TestEditsAndRetries:
    V1 = [{"id": "a", "text": "alpha"}, {"id": "b", "text": "beta"}]
    V2 = [
        {"id": "a", "text": "alpha, corrected"},
        {"id": "b", "text": "beta"},
        {"id": "c", "text": "new"},
    ]

    def test_changed_text_without_update_is_a_reject_naming_the_option(self, tmp_path):
        path = write_jsonl(tmp_path / "d.jsonl", self.V1)
        ingest(tmp_path / "w.duckdb", path)
        write_jsonl(path, self.V2)
        counts = ingest(tmp_path / "w.duckdb", path)
        assert (counts["documents"], counts["unchanged"], counts["rejected"]) == (1, 1, 1)
        assert reasons(tmp_path / "w.duckdb") == [
            (1, "text differs from the stored document")
        ]
        assert texts(tmp_path / "w.duckdb") == {"a": "alpha", "b": "beta", "c": "new"}

    def test_update_replaces_in_place_and_the_stages_run_again(self, tmp_path):
        ws_path = tmp_path / "w.duckdb"
        rows = tiny_rows()
        path = write_jsonl(tmp_path / "d.jsonl", rows)
        with Workspace(ws_path) as ws:
            pipeline.ingest(ws, [str(path)], TINY_PARAMS)
            pipeline.run(ws, TINY_PARAMS)
            before = ws.stage_state("ingest")["fingerprint"]
        rows[3] = dict(rows[3], text="A rewritten sentence about sourdough bread.")
        write_jsonl(path, rows)
        with Workspace(ws_path) as ws:
            counts = pipeline.ingest(ws, [str(path)], TINY_PARAMS, update=True).counts
            assert (counts["documents"], counts["updated"], counts["unchanged"]) == (0, 1, 17)
            assert counts["rejected"] == 0
            assert ws.stage_state("ingest")["fingerprint"] != before
            outcomes = {o.stage: o for o in pipeline.run(ws, TINY_PARAMS)}
            assert outcomes["embed"].status == "ran" and outcomes["embed"].counts["embedded"] == 1
            assert outcomes["knn"].status == "ran" and outcomes["pack"].status == "ran"
            doc = ws.one("SELECT doc, text FROM documents WHERE id = ?", [rows[3]["id"]])
        assert doc == (3, rows[3]["text"])

    def test_update_of_fields_only(self, tmp_path):
        path = write_jsonl(tmp_path / "d.jsonl", [{"id": "a", "text": "t", "label": "x"}])
        ingest(tmp_path / "w.duckdb", path)
        write_jsonl(path, [{"id": "a", "text": "t", "label": "y"}])
        assert ingest(tmp_path / "w.duckdb", path)["rejected"] == 1
        assert reasons(tmp_path / "w.duckdb") == [
            (1, "fields other than the text differ from the stored document")
        ]
        counts = ingest(tmp_path / "w.duckdb", path, update=True)
        assert (counts["updated"], counts["rejected"], counts["rejects_cleared"]) == (1, 0, 1)
        with Workspace(tmp_path / "w.duckdb", read_only=True) as ws:
            assert ws.scalar("SELECT meta->>'label' FROM documents") == "y"
            assert ws.scalar("SELECT count(*) FROM rejects") == 0

    def test_a_file_edited_then_reverted_is_read_again(self, tmp_path):
        path = write_jsonl(tmp_path / "d.jsonl", self.V1)
        ingest(tmp_path / "w.duckdb", path)
        write_jsonl(path, self.V2)
        ingest(tmp_path / "w.duckdb", path, update=True)
        write_jsonl(path, self.V1)  # its first content: not "already ingested"
        counts = ingest(tmp_path / "w.duckdb", path, update=True)
        assert (counts["sources_skipped"], counts["updated"], counts["unchanged"]) == (0, 1, 1)
        assert texts(tmp_path / "w.duckdb") == {"a": "alpha", "b": "beta", "c": "new"}

    def test_retry_with_the_right_text_field_clears_the_stale_rejects(self, tmp_path):
        path = write_jsonl(tmp_path / "d.jsonl", [{"body": f"text {i}"} for i in range(3)])
        first = ingest(tmp_path / "w.duckdb", path)
        assert (first["documents"], first["rejected"]) == (0, 3)
        retry = ingest(tmp_path / "w.duckdb", path, text_field="body")
        assert (retry["documents"], retry["rejected"], retry["rejects_cleared"]) == (3, 0, 3)
        assert retry["total_rejected"] == 0 and rejects(tmp_path / "w.duckdb") == []

    def test_check_catches_a_row_both_kept_and_rejected(self, tmp_path):
        """Reading a file again with another --text-field rejects rows that are documents;
        `check` says so, and reading it with the first field again clears it."""
        path = write_jsonl(tmp_path / "d.jsonl", [{"body": "one"}, {"body": "two"}])
        ingest(tmp_path / "w.duckdb", path, text_field="body")
        assert ingest(tmp_path / "w.duckdb", path)["rejected"] == 2
        with Workspace(tmp_path / "w.duckdb") as ws:
            assert check.check_invariants(ws)[0] == (
                f"2 input rows are both a document and a reject (first: {path}:1); "
                "ingest that file again with the --text-field/--id-field it was ingested with"
            )
        again = ingest(tmp_path / "w.duckdb", path, text_field="body")
        assert (again["unchanged"], again["rejects_cleared"], again["total_rejected"]) == (2, 2, 0)

    def test_when_every_row_is_rejected_run_names_count_and_reasons(self, tmp_path):
        path = write_jsonl(tmp_path / "x.jsonl", [{"body": f"text {i}"} for i in range(12)])
        result = icp("run", path, "-w", tmp_path / "w.duckdb")
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.strip().splitlines()[-1] == (
            f"error: {tmp_path / 'w.duckdb'}: no documents: all 12 rows of {path} were rejected: "
            "12 × missing text field 'text'; see the rejects table; set --text-field to the field "
            "that holds the text"
        )

    def test_the_app_job_gets_the_same_message(self, tmp_path):
        path = write_jsonl(tmp_path / "x.jsonl", [{"text": " "}, {"body": "b"}])
        status = jobs.run_job(
            {
                "workspace": str(tmp_path / "w.duckdb"),
                "inputs": [str(path)],
                "status_file": str(tmp_path / "status.json"),
            }
        )
        assert status["state"] == "failed"
        assert status["error"].endswith(
            f"all 2 rows of {path} were rejected: 1 × empty text; "
            "1 × missing text field 'text'; see the rejects table; set --text-field to the field "
            "that holds the text"
        )


# ---------------------------------------------------------------------------------------------
# 4. hostile files, one test each
# ---------------------------------------------------------------------------------------------


class TestHostileFiles:
    def test_utf16_with_bom_is_one_reject_asking_to_convert(self, tmp_path):
        (tmp_path / "u.txt").write_bytes("hello".encode("utf-16"))
        (tmp_path / "u.jsonl").write_bytes('{"text": "hi"}\n{"text": "ho"}\n'.encode("utf-16"))
        counts = ingest(tmp_path / "w.duckdb", tmp_path / "u.txt", tmp_path / "u.jsonl")
        assert (counts["documents"], counts["rejected"]) == (0, 2)
        reason = (
            "UTF-16 text (byte-order mark); convert the file to UTF-8 (iconv -f UTF-16 -t UTF-8)"
        )
        assert reasons(tmp_path / "w.duckdb") == [(1, reason), (1, reason)]

    def test_nul_bytes_are_kept(self, tmp_path):
        (tmp_path / "n.txt").write_bytes(b"before\x00after")
        write_jsonl(tmp_path / "n.jsonl", [{"id": "j", "text": "a\u0000b"}])
        ingest(tmp_path / "w.duckdb", tmp_path / "n.txt", tmp_path / "n.jsonl")
        assert texts(tmp_path / "w.duckdb") == {"n.txt": "before\x00after", "j": "a\x00b"}

    def test_crlf_line_endings(self, tmp_path):
        (tmp_path / "d.jsonl").write_bytes(
            b'{"id": "j1", "text": "one"}\r\n{"id": "j2", "text": "two"}\r\n'
        )
        (tmp_path / "d.csv").write_bytes(b'id,text\r\nc1,one\r\nc2,"two\r\nlines"\r\n')
        counts = ingest(tmp_path / "w.duckdb", tmp_path / "d.jsonl", tmp_path / "d.csv")
        assert (counts["documents"], counts["rejected"]) == (4, 0)
        assert texts(tmp_path / "w.duckdb") == {
            "j1": "one",
            "j2": "two",
            "c1": "one",
            "c2": "two\r\nlines",  # a quoted field's own line break is kept as written
        }

    def test_lone_cr_line_endings(self, tmp_path):
        (tmp_path / "d.jsonl").write_bytes(b'{"text": "one"}\r{"text": "two"}\rnot json\r')
        (tmp_path / "d.csv").write_bytes(b"id,text\rc1,one\rc2,two\r")
        counts = ingest(tmp_path / "w.duckdb", tmp_path / "d.jsonl", tmp_path / "d.csv")
        assert (counts["documents"], counts["rejected"]) == (4, 1)
        assert texts(tmp_path / "w.duckdb") == {
            "d.jsonl:1": "one",
            "d.jsonl:2": "two",
            "c1": "one",
            "c2": "two",
        }
        [(line, reason)] = reasons(tmp_path / "w.duckdb")
        assert line == 3 and reason.startswith("invalid JSON")

    def test_a_jsonl_line_of_50_mb(self, tmp_path):
        text = "lorem ipsum " * 4_400_000
        path = write_jsonl(tmp_path / "big.jsonl", [{"id": "big", "text": text}, {"text": "small"}])
        assert path.stat().st_size > 50_000_000
        counts = ingest(tmp_path / "w.duckdb", path)
        assert (counts["documents"], counts["rejected"]) == (2, 0)
        with Workspace(tmp_path / "w.duckdb", read_only=True) as ws:
            assert ws.scalar("SELECT length(text) FROM documents WHERE id = 'big'") == len(text)

    def test_ids_of_every_json_type(self, tmp_path):
        rows = [
            {"id": 7, "text": "number"},
            {"id": None, "text": "null: file and line"},
            {"id": "", "text": "empty string: file and line"},
            {"id": [1], "text": "list"},
            {"id": {"a": 1}, "text": "object"},
            {"id": True, "text": "bool"},
            {"id": 2.5, "text": "fraction"},
        ]
        path = write_jsonl(tmp_path / "ids.jsonl", rows)
        counts = ingest(tmp_path / "w.duckdb", path)
        assert (counts["documents"], counts["rejected"]) == (4, 3)
        assert list(texts(tmp_path / "w.duckdb")) == ["7", "ids.jsonl:2", "ids.jsonl:3", "2.5"]
        assert reasons(tmp_path / "w.duckdb") == [
            (4, "id field 'id' is list, not a string or number"),
            (5, "id field 'id' is dict, not a string or number"),
            (6, "id field 'id' is bool, not a string or number"),
        ]

    def test_float_id_equal_to_an_integer_is_the_same_id(self, tmp_path):
        path = write_jsonl(
            tmp_path / "f.jsonl", [{"id": 1, "text": "int"}, {"id": 1.0, "text": "float"}]
        )
        counts = ingest(tmp_path / "w.duckdb", path)
        assert (counts["documents"], counts["rejected"]) == (1, 1)
        assert reasons(tmp_path / "w.duckdb") == [(2, f"duplicate id '1' (first at {path}:1)")]

    def test_nan_id_in_parquet(self, tmp_path):
        path = tmp_path / "n.parquet"
        pq.write_table(pa.table({"id": [1.0, float("nan")], "text": ["one", "two"]}), path)
        counts = ingest(tmp_path / "w.duckdb", path)
        assert (counts["documents"], counts["rejected"]) == (1, 1)
        assert reasons(tmp_path / "w.duckdb") == [
            (2, "id field 'id' is nan, not a string or number")
        ]

    def test_whitespace_only_text(self, tmp_path):
        path = write_jsonl(tmp_path / "w.jsonl", [{"text": " \t\u00a0\u2003\n"}])
        (tmp_path / "blank.txt").write_text("\n\n  \n")
        counts = ingest(tmp_path / "w.duckdb", path, tmp_path / "blank.txt")
        assert (counts["documents"], counts["rejected"]) == (0, 2)
        assert [r for _, r in reasons(tmp_path / "w.duckdb")] == ["empty text", "empty text"]

    def test_gz_that_is_not_gzip(self, tmp_path):
        path = tmp_path / "d.jsonl.gz"
        path.write_text('{"text": "plain"}\n')
        counts = ingest(tmp_path / "w.duckdb", path)
        assert (counts["documents"], counts["rejected"]) == (0, 1)
        assert reasons(tmp_path / "w.duckdb") == [
            (
                1,
                "file unreadable (BadGzipFile: Not a gzipped file (b'{\"')); "
                "re-download or re-compress the file",
            )
        ]

    def test_zero_byte_gz_is_an_empty_file(self, tmp_path):
        (tmp_path / "empty.jsonl.gz").write_bytes(b"")
        counts = ingest(tmp_path / "w.duckdb", tmp_path / "empty.jsonl.gz")
        assert (counts["documents"], counts["rejected"], counts["sources_added"]) == (0, 0, 1)

    def test_parquet_under_a_jsonl_name(self, tmp_path):
        path = tmp_path / "d.jsonl"
        pq.write_table(pa.table({"text": ["x"]}), path)
        counts = ingest(tmp_path / "w.duckdb", path)
        assert (counts["documents"], counts["rejected"]) == (0, 1)
        assert reasons(tmp_path / "w.duckdb") == [
            (1, "a Parquet file, not jsonl; give it a .parquet name")
        ]

    def test_gzip_under_a_plain_name(self, tmp_path):
        path = tmp_path / "d.jsonl"
        path.write_bytes(gzip.compress(b'{"text": "x"}\n'))
        counts = ingest(tmp_path / "w.duckdb", path)
        assert (counts["documents"], counts["rejected"]) == (0, 1)
        assert reasons(tmp_path / "w.duckdb") == [(1, "gzip-compressed; add .gz to the file name")]

    def test_an_empty_folder(self, tmp_path):
        (tmp_path / "empty").mkdir()
        counts = ingest(tmp_path / "w.duckdb", tmp_path / "empty")
        assert (counts["documents"], counts["rejected"], counts["sources_added"]) == (0, 0, 1)

    def test_an_unreadable_file(self, tmp_path):
        folder = tmp_path / "docs"
        folder.mkdir()
        (folder / "ok.txt").write_text("fine")
        if os.geteuid() == 0:  # root reads chmod 000 files; /proc/self/mem refuses even root
            (folder / "mem.txt").symlink_to("/proc/self/mem")
            why = "Input/output error"
        else:
            (folder / "mem.txt").write_text("secret")
            (folder / "mem.txt").chmod(0)
            why = "Permission denied"
        counts = ingest(tmp_path / "w.duckdb", folder)
        assert (counts["documents"], counts["rejected"]) == (1, 1)
        assert rejects(tmp_path / "w.duckdb") == [
            {
                "source": str(folder / "mem.txt"),
                "line": None,
                "id": "mem.txt",
                "reason": f"cannot read ({why})",
            }
        ]

    def test_odd_characters_in_file_names(self, tmp_path):
        folder = tmp_path / "docs with spaces"
        folder.mkdir()
        names = ["a b.txt", "ünïcødé 文.txt", "new\nline.txt"]
        for name in names:
            (folder / name).write_text(f"text of {name}")
        counts = ingest(tmp_path / "w.duckdb", folder)
        assert (counts["documents"], counts["rejected"]) == (3, 0)
        assert texts(tmp_path / "w.duckdb") == {name: f"text of {name}" for name in names}

    def test_deeply_nested_folders(self, tmp_path):
        deep = tmp_path / "root" / Path(*[f"d{i}" for i in range(60)])
        deep.mkdir(parents=True)
        (deep / "leaf.txt").write_text("at the bottom")
        counts = ingest(tmp_path / "w.duckdb", tmp_path / "root")
        assert counts["documents"] == 1
        [doc] = documents(tmp_path / "w.duckdb")
        assert doc["id"] == "/".join(f"d{i}" for i in range(60)) + "/leaf.txt"

    def test_symlink_to_a_file_outside_the_root_is_followed(self, tmp_path):
        (tmp_path / "outside.txt").write_text("from outside")
        folder = tmp_path / "docs"
        folder.mkdir()
        (folder / "link.txt").symlink_to(tmp_path / "outside.txt")
        counts = ingest(tmp_path / "w.duckdb", folder)
        assert (counts["documents"], counts["rejected"]) == (1, 0)
        assert texts(tmp_path / "w.duckdb") == {"link.txt": "from outside"}

    def test_hard_links_are_two_documents(self, tmp_path):
        folder = tmp_path / "docs"
        folder.mkdir()
        (folder / "a.txt").write_text("same bytes")
        os.link(folder / "a.txt", folder / "b.txt")
        counts = ingest(tmp_path / "w.duckdb", folder)
        assert (counts["documents"], counts["rejected"]) == (2, 0)  # dedup records the copy
        assert texts(tmp_path / "w.duckdb") == {"a.txt": "same bytes", "b.txt": "same bytes"}

    def test_the_same_file_given_twice(self, tmp_path):
        path = write_jsonl(tmp_path / "d.jsonl", [{"text": "once"}])
        counts = ingest(tmp_path / "w.duckdb", path, path)
        assert (counts["documents"], counts["rejected"], counts["sources_skipped"]) == (1, 0, 1)

    def test_a_folder_and_a_file_inside_it(self, tmp_path):
        folder = tmp_path / "docs"
        folder.mkdir()
        (folder / "a.txt").write_text("inside")
        (folder / "b.txt").write_text("other")
        counts = ingest(tmp_path / "w.duckdb", folder, folder / "a.txt")
        # the second read of docs/a.txt finds its own document: unchanged, no reject
        assert (counts["documents"], counts["unchanged"], counts["rejected"]) == (2, 1, 0)
        assert texts(tmp_path / "w.duckdb") == {"a.txt": "inside", "b.txt": "other"}

    def test_parquet_with_a_struct_text_column(self, tmp_path):
        path = tmp_path / "s.parquet"
        pq.write_table(pa.table({"text": [{"body": "x", "lang": "en"}]}), path)
        with pytest.raises(IcpError, match=r"column 'text' has type struct<body: string, lang"):
            parse_source(path)
        folder = tmp_path / "docs"  # inside a folder the same file is one reject
        folder.mkdir()
        pq.write_table(pa.table({"text": [{"body": "x", "lang": "en"}]}), folder / "s.parquet")
        (folder / "ok.txt").write_text("fine")
        counts = ingest(tmp_path / "w.duckdb", folder)
        assert (counts["documents"], counts["rejected"]) == (1, 1)
        [reject] = rejects(tmp_path / "w.duckdb")
        assert reject["line"] is None and "has type struct<body: string" in reject["reason"]

    def test_parquet_with_a_dictionary_text_column(self, tmp_path):
        path = tmp_path / "cat.parquet"
        text = pa.array(["red", "green", "red"]).dictionary_encode()
        pq.write_table(pa.table({"text": text}), path)
        assert ingest(tmp_path / "w.duckdb", path)["documents"] == 3

    def test_csv_with_a_header_only(self, tmp_path):
        (tmp_path / "h.csv").write_text("id,text\n")
        counts = ingest(tmp_path / "w.duckdb", tmp_path / "h.csv")
        assert (counts["documents"], counts["rejected"]) == (0, 0)

    def test_csv_with_duplicate_header_names(self, tmp_path):
        path = tmp_path / "d.csv"
        path.write_text("id,text,text\n1,a,b\n")
        with pytest.raises(IcpError, match="column 'text' appears 2 times in the header"):
            parse_source(path)

    def test_csv_with_semicolons(self, tmp_path):
        (tmp_path / "d.csv").write_text('id;text;label\n1;"a; b, c";x\n2;plain;y\n')
        counts = ingest(tmp_path / "w.duckdb", tmp_path / "d.csv")
        assert (counts["documents"], counts["rejected"]) == (2, 0)
        assert texts(tmp_path / "w.duckdb") == {"1": "a; b, c", "2": "plain"}

    def test_csv_rows_of_the_wrong_width(self, tmp_path):
        (tmp_path / "d.csv").write_text("id,text\n1\n2,ok\n3,a,b\n")
        counts = ingest(tmp_path / "w.duckdb", tmp_path / "d.csv")
        assert (counts["documents"], counts["rejected"]) == (1, 2)
        assert reasons(tmp_path / "w.duckdb") == [
            (2, "fewer fields than the header (1, header has 2)"),
            (4, "more fields than the header (3, header has 2)"),
        ]

    def test_surrogate_escapes_in_json(self, tmp_path):
        path = tmp_path / "s.jsonl"
        path.write_text('{"text": "lone \\ud800"}\n{"text": "pair \\ud83d\\ude00"}\n')
        counts = ingest(tmp_path / "w.duckdb", path)
        assert (counts["documents"], counts["rejected"]) == (1, 1)
        assert texts(tmp_path / "w.duckdb") == {"s.jsonl:2": "pair \U0001f600"}
        [(line, reason)] = reasons(tmp_path / "w.duckdb")
        assert line == 1 and reason.startswith("invalid JSON (no low surrogate")

    def test_a_very_long_single_line_txt(self, tmp_path):
        text = "x" * 30_000_000
        (tmp_path / "long.txt").write_text(text)
        assert ingest(tmp_path / "w.duckdb", tmp_path / "long.txt")["documents"] == 1
        with Workspace(tmp_path / "w.duckdb", read_only=True) as ws:
            assert ws.scalar("SELECT length(text) FROM documents") == len(text)

    def test_not_utf8_in_a_txt_names_its_line(self, tmp_path):
        (tmp_path / "l.txt").write_bytes(b"first line\nsecond caf\xe9\n")
        counts = ingest(tmp_path / "w.duckdb", tmp_path / "l.txt")
        assert (counts["documents"], counts["rejected"]) == (0, 1)
        assert reasons(tmp_path / "w.duckdb") == [(2, "not valid UTF-8 at byte 10")]

    def test_a_dangling_symlink_given_directly(self, tmp_path):
        link = tmp_path / "gone.jsonl"
        link.symlink_to(tmp_path / "nowhere.jsonl")
        with pytest.raises(IcpError, match=r"gone.jsonl: dangling symlink -> .*nowhere.jsonl"):
            ingest(tmp_path / "w.duckdb", link)
