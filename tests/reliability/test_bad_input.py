"""Bad input and hostile environments: one clear message each, nothing lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from icp_core import check, pipeline, stages
from icp_core.errors import ExitCode, IcpError
from icp_core.ingest import file_problem, parse_source
from icp_core.params import Params
from icp_core.workspace import Workspace
from tests.conftest import TINY_PARAMS, write_jsonl
from tests.reliability.cli_runner import hold_workspace, icp, one_line

BOM = b"\xef\xbb\xbf"


class TestDocuments:
    def test_only_empty_documents(self, tmp_path):
        corpus = write_jsonl(tmp_path / "e.jsonl", [{"id": i, "text": " \n "} for i in range(3)])
        with Workspace(tmp_path / "w.duckdb") as ws:
            counts = pipeline.ingest(ws, [str(corpus)], TINY_PARAMS).counts
            assert (counts["documents"], counts["rejected"]) == (0, 3)
            with pytest.raises(IcpError, match=f"all 3 rows of {corpus} were rejected: 3 × empty"):
                pipeline.run(ws, TINY_PARAMS)

    @pytest.mark.slow
    def test_a_50_mb_document_goes_through_every_stage(self, tmp_path):
        words = np.random.default_rng(0).choice(
            ["alpha", "beta", "gamma", "delta", "galaxy", "kernel", "bread", "python"], 9_000_000
        )
        huge = " ".join(words)  # about 50 MB
        assert len(huge) > 50_000_000
        rows = [
            {"id": "huge", "text": huge},
            {"id": "small-1", "text": "A short note about bread."},
            {"id": "small-2", "text": "Another short note about galaxies."},
        ]
        corpus = write_jsonl(tmp_path / "big.jsonl", rows)
        params = Params(k=2, context_length=8192)
        with Workspace(tmp_path / "w.duckdb") as ws:
            pipeline.ingest(ws, [str(corpus)], params)
            pipeline.run(ws, params)
            result = stages.latest_metrics(ws, params)
            assert result["every_doc_once"] and result["n_kept"] == 3
            assert result["n_contexts"] > 1000  # the huge document spans many contexts
            assert check.check_invariants(ws) == []


class TestParameters:
    def test_context_length_not_above_the_separator(self, tiny_workspace):
        params = TINY_PARAMS.updated(separator="one two three four", context_length=3)
        with Workspace(tiny_workspace) as ws, pytest.raises(IcpError, match="must exceed"):
            pipeline.run(ws, params)

    def test_separator_with_several_tokens_round_trips(self, tiny_workspace):
        params = TINY_PARAMS.updated(separator="<doc end>", context_length=20)
        with Workspace(tiny_workspace) as ws:
            pipeline.run(ws, params)
            assert stages.latest_metrics(ws, params)["every_doc_once"]
            assert check.check_invariants(ws) == []


class TestEmbeddings:
    def test_nan_in_user_vectors(self, tiny_jsonl, tmp_path):
        vectors = np.ones((18, 4), np.float32)
        vectors[5, 2] = np.inf
        np.save(tmp_path / "v.npy", vectors)
        result = icp(
            "run", tiny_jsonl, "-w", tmp_path / "w.duckdb", "--vectors", tmp_path / "v.npy"
        )
        one_line(result, ExitCode.USAGE, "vectors hold NaN or inf (first: document")

    @pytest.mark.slow
    def test_model_that_outputs_nan(self, tiny_jsonl, tmp_path):
        """A real model folder whose weights were poisoned with NaN."""
        from sentence_transformers import SentenceTransformer

        from icp_core.embed import resolve_model_path

        model = SentenceTransformer(str(resolve_model_path(None)), device="cpu")
        for parameter in model.parameters():
            parameter.data.fill_(float("nan"))
            break
        model.save(str(tmp_path / "nan-model"))
        result = icp(
            "run", tiny_jsonl, "-w", tmp_path / "w.duckdb", "--model", tmp_path / "nan-model"
        )
        one_line(result, ExitCode.USAGE, "the model returned NaN/inf vectors")


class TestWorkspaceFiles:
    def test_workspace_in_a_read_only_place(self, tiny_jsonl, tmp_path):
        if os.geteuid() == 0:
            target = Path("/proc/icp-read-only/w.duckdb")  # root ignores chmod; /proc refuses
        else:
            locked = tmp_path / "locked"
            locked.mkdir(mode=0o500)
            target = locked / "w.duckdb"
        result = icp("ingest", tiny_jsonl, "-w", target)
        one_line(result, ExitCode.USAGE, "choose a writable --workspace path")

    def test_busy_workspace_says_so_and_can_wait(self, tiny_workspace):
        holder = hold_workspace(tiny_workspace, 4)
        busy = icp("metrics", "-w", tiny_workspace)
        one_line(busy, ExitCode.BUSY, "workspace is busy, another process holds its write lock")
        started = time.monotonic()
        waited = icp("metrics", "-w", tiny_workspace, "--json", "--wait", "30")
        assert waited.returncode == 0, waited.stderr
        assert json.loads(waited.stdout)["every_doc_once"]
        assert time.monotonic() - started > 1
        holder.wait(timeout=30)

    def test_duckdb_memory_cap_applies_and_a_bad_value_is_one_line(
        self, tiny_workspace, monkeypatch
    ):
        monkeypatch.setenv("ICP_DUCKDB_MEMORY", "300MB")
        with Workspace(tiny_workspace, read_only=True) as ws:
            limit = ws.scalar("SELECT current_setting('memory_limit')")
        assert limit == "286.1 MiB"  # 300 MB as DuckDB prints it
        result = icp("metrics", "-w", tiny_workspace, env={"ICP_DUCKDB_MEMORY": "lots"})
        one_line(result, ExitCode.USAGE, "ICP_DUCKDB_MEMORY=lots: not a memory size")

    def test_readers_share_a_workspace(self, tiny_workspace):
        with (
            Workspace(tiny_workspace, read_only=True) as first,
            Workspace(tiny_workspace, read_only=True) as second,
        ):
            assert first.n_documents() == second.n_documents() == 18

    def test_a_duckdb_file_of_another_tool(self, tmp_path, tiny_jsonl):
        import duckdb

        other = tmp_path / "other.duckdb"
        with duckdb.connect(str(other)) as con:
            con.execute("CREATE TABLE invoices (n INTEGER)")
        one_line(icp("ingest", tiny_jsonl, "-w", other), ExitCode.USAGE, "not an icp workspace")


class TestExportFailures:
    def test_disk_full_while_exporting_leaves_nothing(self, tiny_workspace, tmp_path):
        """RLIMIT_FSIZE makes every write past 2 kB fail like a full disk would."""
        out = tmp_path / "out"
        script = textwrap.dedent(f"""
            import resource, signal, sys
            from icp_core.errors import ExitCode, IcpError
            from icp_core.export import export_contexts
            from icp_core.params import Params
            from icp_core.workspace import Workspace
            ws = Workspace({str(tiny_workspace)!r}, read_only=True)
            params = Params.from_dict(ws.load_settings())
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))
            try:
                export_contexts(ws, params, {str(out)!r}, "jsonl")
            except IcpError as err:
                print(err)
                sys.exit(2)
        """)
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
        assert result.returncode == 2, result.stderr
        assert "export failed (File too large)" in result.stdout
        assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))


class TestCheck:
    def test_check_finds_a_lost_document(self, tiny_workspace):
        assert icp("check", "-w", tiny_workspace).returncode == 0
        with Workspace(tiny_workspace) as ws:
            ws.execute("DELETE FROM contexts WHERE doc = 3")
            ws.execute("DELETE FROM ordering WHERE doc = 3")
        result = icp("check", "-w", tiny_workspace)
        assert result.returncode == 1
        assert "documents in (18) != kept (17) + removed (0)" in result.stderr

    def test_check_finds_an_overfull_context(self, tiny_workspace):
        with Workspace(tiny_workspace) as ws:
            ws.execute(
                "UPDATE contexts SET token_end = token_end + 100 WHERE context = 0 AND slot = 0"
            )
        assert "contexts exceed 64 tokens" in icp("check", "-w", tiny_workspace).stderr


class TestFuzzIngest:
    """Whatever the bytes, ingest returns documents and rejects (never an exception) and
    every non-blank line is accounted for exactly once."""

    @settings(
        max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(st.lists(st.binary(max_size=80), max_size=12))
    def test_random_bytes(self, tmp_path, lines):
        path = tmp_path / "fuzz.jsonl"
        path.write_bytes(b"\n".join(line.replace(b"\n", b" ") for line in lines))
        parsed = parse_source(path)
        data = path.read_bytes()
        if file_problem(data[:4], "jsonl", compressed=False):
            expected = 1  # UTF-16, Parquet or gzip bytes: one reject for the file
        else:  # \n, \r\n and a lone \r end lines; a UTF-8 byte-order mark is no content
            expected = sum(1 for line in data.removeprefix(BOM).splitlines() if line.strip())
        assert len(parsed.ids) + len(parsed.rejects) == expected

    json_values = st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
        max_leaves=8,
    )

    @settings(
        max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(
        st.lists(
            st.dictionaries(st.sampled_from(["id", "text", "label", "x"]), json_values, max_size=4)
            | json_values,
            max_size=10,
        )
    )
    def test_random_json(self, tmp_path, records):
        path = tmp_path / "fuzz.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        parsed = parse_source(path)
        assert len(parsed.ids) + len(parsed.rejects) == len(records)
        for text in parsed.texts:
            assert isinstance(text, str) and text.strip()
        good = [
            r
            for r in records
            if isinstance(r, dict)
            and isinstance(r.get("text"), str)
            and r["text"].strip()
            and (r.get("id") is None or isinstance(r["id"], str | float) or type(r["id"]) is int)
        ]
        assert len(parsed.ids) == len(good)
