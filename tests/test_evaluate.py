"""The quality harness (`icp_core.evaluate`, `icp eval`) on the bundled sample workspace."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from icp_core import evaluate, stages
from icp_core.pack import PACK_MODES
from icp_core.params import DEFAULT_ORDER, Params
from icp_core.sample import build_sample_workspace
from icp_core.traverse import METHODS
from icp_core.workspace import Workspace

REPO = Path(__file__).resolve().parent.parent
METRIC_KEYS = (
    "adjacent_sim_mean",
    "context_pairwise_sim_mean",
    "jump_rate",
    "label_agreement",
    "token_efficiency",
    "context_cache_gain",
    "every_doc_once",
)


@pytest.fixture(scope="module")
def sample_ws(tmp_path_factory) -> Path:
    """The sample run end to end with Algorithm 1 and split packing."""
    return build_sample_workspace(
        tmp_path_factory.mktemp("eval") / "sample.duckdb", Params(order="icp", pack="split")
    )


@pytest.fixture(scope="module")
def corpus(sample_ws) -> evaluate.Corpus:
    with Workspace(sample_ws) as ws:
        return evaluate.load_corpus(ws, Params.from_dict(ws.load_settings()))


@pytest.fixture(scope="module")
def full_result(corpus) -> dict:
    return evaluate.evaluate(corpus)


def test_row_equals_icp_metrics(sample_ws, corpus):
    """A row is what `icp metrics` reports after a run with that method and policy."""
    with Workspace(sample_ws) as ws:
        expected = stages.compute_metrics(ws, Params.from_dict(ws.load_settings()))
    (row,) = evaluate.evaluate(corpus, ["icp"], ["split"])["rows"]
    for key in METRIC_KEYS:
        assert row[key] == pytest.approx(expected[key], abs=1e-12), key
    assert row["n_contexts"] == expected["n_contexts"]


def test_every_method_and_policy(full_result, corpus):
    rows = full_result["rows"]
    assert [(r["order"], r["pack"]) for r in rows] == [(m, p) for m in METHODS for p in PACK_MODES]
    bounds = full_result["bounds"]
    assert 0 < bounds["two_matching_bound"] <= bounds["top1_bound"] <= 1
    for row in rows:
        assert row["every_doc_once"] is True
        assert 0 < row["token_efficiency"] <= 1
        assert row["order_s"] >= 0 and row["pack_s"] >= 0
        assert row["share_two_matching"] == pytest.approx(
            row["adjacent_sim_mean"] / bounds["two_matching_bound"]
        )
        assert row["share_top1"] == pytest.approx(row["adjacent_sim_mean"] / bounds["top1_bound"])
        if row["order"] == "icp":
            assert row["gap_closed"] == pytest.approx(0.0)
    assert full_result["params"]["n_kept"] == len(corpus.kept)


def test_default_beats_algorithm_1_on_the_sample(full_result):
    split = {r["order"]: r for r in full_result["rows"] if r["pack"] == "split"}
    default, icp, random = split[DEFAULT_ORDER], split["icp"], split["random"]
    assert default["adjacent_sim_mean"] > icp["adjacent_sim_mean"] > random["adjacent_sim_mean"]
    assert default["jump_rate"] < icp["jump_rate"]


def test_format_table(full_result):
    table = evaluate.format_table(full_result)
    lines = table.splitlines()
    header = next(line for line in lines if line.startswith("| order"))
    assert header.count("|") == len(evaluate.COLUMNS) + 1
    body = [line for line in lines if line.startswith("| ") and line != header]
    assert len(body) == len(full_result["rows"])
    assert "2-matching" in lines[0]


def test_missing_values_print_as_dash(full_result):
    result = dict(full_result, rows=[dict(full_result["rows"][0], label_agreement=None)])
    row = evaluate.format_table(result).splitlines()[-1]
    assert " - |" in row


def test_a_stored_result_is_read_back_by_its_parameters_and_data(sample_ws, corpus, tmp_path):
    path = Path(shutil.copy(sample_ws, tmp_path / "ws.duckdb"))
    params = corpus.params
    first = evaluate.evaluate(corpus, ["random", "icp"], ["split"])
    with Workspace(path) as ws:
        assert evaluate.stored(ws, params) is None
        evaluate.store(ws, corpus, first)
        evaluate.store(ws, corpus, evaluate.evaluate(corpus, ["greedy"], ["whole"]))
        evaluate.store(ws, corpus, first)  # the same combinations again replace, not add
        found = evaluate.stored(ws, params)
        # rows in the methods' and policies' order, however they were stored
        assert [(r["order"], r["pack"]) for r in found["rows"]] == [
            ("icp", "split"),
            ("random", "split"),
            ("greedy", "whole"),
        ]
        by_name = {(r["order"], r["pack"]): r for r in first["rows"]}
        assert found["rows"][0] == json.loads(json.dumps(by_name["icp", "split"]))
        assert found["bounds"] == first["bounds"] and found["params"] == first["params"]
        # another k or context length, or other kept documents: not this result
        assert evaluate.stored(ws, params.updated(k=params.k - 1)) is None
        assert evaluate.stored(ws, params.updated(context_length=1024)) is None
        state = ws.stage_state("dedup")
        ws.set_stage_state("dedup", "other data", state["params"], state["counts"])
        assert evaluate.stored(ws, params) is None


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "icp_core.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=600,
    )


@pytest.mark.slow
def test_cli_eval_table_and_json(sample_ws):
    done = run_cli("eval", "-w", str(sample_ws), "--order", "icp", "--order", "greedy")
    assert done.returncode == 0, done.stderr
    assert "| icp | split |" in done.stdout and "| greedy | whole |" in done.stdout
    done = run_cli("eval", "-w", str(sample_ws), "--order", "random", "--pack", "split", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert [(r["order"], r["pack"]) for r in result["rows"]] == [("random", "split")]
    with Workspace(sample_ws, read_only=True) as ws:  # both runs kept, for the app
        stored = evaluate.stored(ws, Params.from_dict(ws.load_settings()))
    assert {(r["order"], r["pack"]) for r in stored["rows"]} == {
        ("icp", "split"), ("icp", "whole"), ("greedy", "split"), ("greedy", "whole"),
        ("random", "split"),
    }  # fmt: skip


@pytest.mark.slow
def test_cli_eval_rejects_unknown_names(sample_ws):
    done = run_cli("eval", "-w", str(sample_ws), "--order", "nope")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: --order nope: choose one of icp")
    done = run_cli("eval", "-w", str(sample_ws), "--pack", "tight")
    assert done.returncode == 2 and "--pack tight" in done.stderr
