"""The executor: skip-if-unchanged, what re-runs when a knob changes, edge-size corpora."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from icp_core import check, explore, pipeline, stages
from icp_core.errors import IcpError
from icp_core.params import Params
from icp_core.workspace import Workspace
from tests.app.workspaces import synthetic_workspace
from tests.conftest import (
    TINY_PARAMS,
    run_duplicate_corpus,
    seed_tiny_vectors,
    tiny_rows,
    write_jsonl,
)


def statuses(outcomes) -> dict[str, str]:
    return {o.stage: o.status for o in outcomes}


def test_unchanged_run_skips_every_stage(tiny_workspace):
    with Workspace(tiny_workspace) as ws:
        assert set(statuses(pipeline.run(ws, TINY_PARAMS)).values()) == {"skipped"}
        assert set(statuses(pipeline.run(ws, TINY_PARAMS, force=True)).values()) == {"ran"}


EVERYTHING_AFTER_EMBED = {"embed", "knn", "dedup", "order", "pack", "metrics"}
# Every parameter in turn: exactly the stages that read it (or read a stage that did) re-run.
CHANGES = [
    ({"k": 6}, {"dedup", "order", "pack", "metrics"}),
    ({"k": 40}, {"knn", "dedup", "order", "pack", "metrics"}),  # deeper than stored
    ({"order": "original"}, {"order", "pack", "metrics"}),
    ({"context_length": 32}, {"pack", "metrics"}),
    ({"pack": "whole"}, {"pack", "metrics"}),
    ({"dedup_threshold": None}, {"dedup", "order", "pack", "metrics"}),
    ({"index": "hnsw"}, {"knn", "dedup", "order", "pack", "metrics"}),
    ({"index": "flat"}, set()),  # what auto resolves to on 18 documents
    ({"seed": 7}, {"order", "pack", "metrics"}),  # an exact search does not use the seed
    pytest.param({"max_tokens": 16}, EVERYTHING_AFTER_EMBED, marks=pytest.mark.model),
    ({"model": "all-MiniLM-L6-v2"}, set()),  # the default model, named
    ({"vectors": "RANDOM_VECTORS"}, EVERYTHING_AFTER_EMBED),
    ({"tokenizer": "mistral-v3"}, {"pack", "metrics"}),
    ({"tokenizer": "TEKKEN_FILE"}, set()),  # the default tokenizer's file, by path
    ({"separator": "\n\n"}, {"pack", "metrics"}),
    ({"shuffle": False}, {"pack", "metrics"}),
    ({"label_field": "label"}, {"metrics"}),
    ({"batch_size": 7}, set()),
    ({"device": "cpu"}, set()),
    ({"text_field": "body"}, set()),  # read by ingest only
    ({"id_field": "key"}, set()),
]


def test_every_parameter_is_in_a_stage_key_or_declared_outside_them():
    read = {name for stage in pipeline.STAGES for name in stage.reads}
    fields = set(Params().to_dict())
    assert read | set(pipeline.NOT_IN_KEYS) == fields
    assert not read & set(pipeline.NOT_IN_KEYS)
    changed = {
        name
        for case in CHANGES
        for name in (case.values[0] if hasattr(case, "values") else case[0])
    }
    assert changed == fields


@pytest.mark.parametrize("change, reran", CHANGES)
def test_a_change_reruns_only_dependent_stages(tiny_workspace, tmp_path, change, reran):
    from icp_core import tokenizer

    [(name, value)] = change.items()
    if value == "RANDOM_VECTORS":
        value = str(tmp_path / "vectors.npy")
        np.save(value, np.random.default_rng(0).normal(size=(18, 8)).astype(np.float32))
    if value == "TEKKEN_FILE":
        value = str(tokenizer.resolve("mistral-tekken")[1])
    params = TINY_PARAMS.updated(**{name: value})
    with Workspace(tiny_workspace) as ws:
        outcomes = pipeline.run(ws, params)
        assert stages.latest_metrics(ws, params)["every_doc_once"]
    assert {stage for stage, status in statuses(outcomes).items() if status == "ran"} == reran


def test_a_new_seed_reruns_a_seeded_knn_search(tiny_workspace):
    """The IVF index trains on a seeded sample: there the seed is part of the kNN key, so the
    manifest's seed is the one the neighbours were searched with."""
    ivf = TINY_PARAMS.updated(index="ivf")
    with Workspace(tiny_workspace) as ws:
        pipeline.run(ws, ivf)
        outcomes = pipeline.run(ws, ivf.updated(seed=3))
        assert statuses(outcomes)["knn"] == "ran"
        assert ws.stage_state("knn")["params"]["seed"] == 3


def test_lowering_k_back_reuses_the_deeper_search(tiny_workspace):
    with Workspace(tiny_workspace) as ws:
        pipeline.run(ws, TINY_PARAMS.updated(k=40))
        outcomes = pipeline.run(ws, TINY_PARAMS.updated(k=3))
        assert statuses(outcomes)["knn"] == "skipped"
        assert statuses(outcomes)["embed"] == "skipped"


def test_runs_are_recorded(tiny_workspace):
    with Workspace(tiny_workspace) as ws:
        pipeline.run(ws, TINY_PARAMS.updated(k=5))
        rows = ws.arrow(
            "SELECT stage, status, seconds, counts FROM stage_runs ORDER BY started_at DESC LIMIT 6"
        ).to_pylist()
        assert {r["stage"] for r in rows} == {"embed", "knn", "dedup", "order", "pack", "metrics"}
        order_row = next(r for r in rows if r["stage"] == "order")
        assert json.loads(order_row["counts"])["ordered"] == 18
        assert ws.load_settings()["k"] == 5


def test_without_documents_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with Workspace(tmp_path / "w.duckdb") as ws:
        pipeline.ingest(ws, [str(empty)], TINY_PARAMS)
        with pytest.raises(IcpError, match="no documents ingested yet"):
            pipeline.run(ws, TINY_PARAMS)


@pytest.mark.model
def test_one_document(tmp_path):
    corpus = write_jsonl(tmp_path / "one.jsonl", [{"id": "only", "text": "A single document."}])
    with Workspace(tmp_path / "w.duckdb") as ws:
        pipeline.ingest(ws, [str(corpus)], TINY_PARAMS)
        pipeline.run(ws, TINY_PARAMS)
        result = stages.latest_metrics(ws, TINY_PARAMS)
        assert result["every_doc_once"] and result["n_contexts"] == 1
        assert result["adjacent_sim_mean"] is None and result["jump_rate"] is None
        assert check.check_invariants(ws) == []


def test_duplicates_are_removed_recorded_and_accounted_for(tmp_path):
    with Workspace(run_duplicate_corpus(tmp_path)) as ws:
        dup = ws.arrow("SELECT doc, kept_doc, sim FROM duplicates").to_pylist()
        assert [(d["doc"], d["kept_doc"]) for d in dup] == [(1, 0)] and dup[0]["sim"] > 0.95
        result = stages.latest_metrics(ws, TINY_PARAMS)
        assert (result["n_documents"], result["n_duplicates"], result["n_kept"]) == (3, 1, 2)
        assert result["every_doc_once"]
        assert ws.column("SELECT doc FROM ordering ORDER BY doc").tolist() == [0, 2]


@pytest.mark.model
def test_original_order_records_its_near_copy_drops(tmp_path):
    prefix = "Package: libexample{}\nExample library for reading and writing example files. "
    rows = [
        {"id": f"v{i}", "text": prefix.format(i) + f"Version {i} adds feature {i * 7}."}
        for i in range(5)
    ]
    rows += [{"id": "other", "text": "Completely unrelated: a recipe for lemon cake."}]
    corpus = write_jsonl(tmp_path / "c.jsonl", rows)
    params = TINY_PARAMS.updated(order="original", dedup_threshold=None)
    with Workspace(tmp_path / "w.duckdb") as ws:
        pipeline.ingest(ws, [str(corpus)], params)
        pipeline.run(ws, params)
        drops = ws.arrow("SELECT doc, kept_doc, reason FROM order_drops").to_pylist()
        # every adjacent pair of variants is a near copy; "other" (doc 5) never is
        assert drops and all("authors' filter" in d["reason"] for d in drops)
        assert all(d["doc"] != 5 and d["kept_doc"] != 5 for d in drops)
        result = stages.latest_metrics(ws, params)
        assert result["n_duplicates"] == len(drops) and result["every_doc_once"]
        assert check.check_invariants(ws) == []


def test_k_larger_than_the_corpus(tiny_workspace):
    with Workspace(tiny_workspace) as ws:
        pipeline.run(ws, TINY_PARAMS.updated(k=100))
        result = stages.latest_metrics(ws, TINY_PARAMS.updated(k=100))
        assert result["every_doc_once"] and result["jump_rate"] == 0.0


@pytest.mark.parametrize(
    "change, message",
    [
        ({"k": 0}, "k must be at least 1"),
        ({"order": "zigzag"}, "--order zigzag"),
        ({"context_length": 1}, "--context-length 1"),
        ({"dedup_threshold": 1.5}, "--dedup-threshold 1.5: .* or turn dedup off"),
    ],
)
def test_bad_parameters(tiny_workspace, change, message):
    with Workspace(tiny_workspace) as ws, pytest.raises(IcpError, match=message):
        pipeline.run(ws, TINY_PARAMS.updated(**change))


def test_settings_round_trip():
    params = Params(k=7, dedup_threshold=None, tokenizer="/x/tokenizer.json")
    assert Params.from_dict(params.to_dict()) == params


def test_rerunning_with_the_same_parameters_skips_every_stage(tmp_path):
    """pack stores its separator ids next to its key; that must not make it re-run."""
    path = synthetic_workspace(tmp_path)
    with Workspace(path) as ws:
        outcomes = pipeline.run(ws, Params.from_dict(ws.load_settings()))
    assert {o.stage: o.status for o in outcomes} == dict.fromkeys(
        ("embed", "knn", "dedup", "order", "pack", "metrics"), "skipped"
    )


def test_a_skipped_pack_neither_loads_nor_hashes_its_tokenizer(tiny_workspace, tmp_path):
    """pack's key reuses the stored tokenizer key while the file's path, size and mtime stand;
    other content in the file re-keys it, the same content rewritten does not."""
    from icp_core import tokenizer

    _, qwen_ranks = tokenizer.resolve("qwen3.6")
    lines = qwen_ranks.read_bytes().splitlines()[:2000]  # bytes first, then merges
    ranks_file = tmp_path / "small.tiktoken"
    ranks_file.write_bytes(b"\n".join(lines) + b"\n")
    params = TINY_PARAMS.updated(tokenizer=str(ranks_file))

    def pack_after_a_fresh_start() -> tuple[str, int]:
        tokenizer._load_file.cache_clear()  # as in a new process
        with Workspace(tiny_workspace) as ws:
            status = statuses(pipeline.run(ws, params))["pack"]
        return status, tokenizer._load_file.cache_info().misses

    assert pack_after_a_fresh_start() == ("ran", 1)
    assert pack_after_a_fresh_start() == ("skipped", 0)
    ranks_file.write_bytes(b"\n".join(lines[:1999]) + b"\n")
    assert pack_after_a_fresh_start() == ("ran", 1)
    ranks_file.write_bytes(b"\n".join(lines[:1999]) + b"\n")  # same bytes, a new mtime
    os.utime(ranks_file, ns=(0, 10**18))
    assert pack_after_a_fresh_start() == ("skipped", 1)  # loaded to learn its key


def test_label_fields_named_like_json_paths_are_plain_keys(tmp_path):
    """A field called `topic.name` is that key, not `name` inside `topic`; a name with
    brackets or quotes is a key too, and an absent one is a one-line error, not a bug."""
    rows = [
        {**row, "topic.name": row["label"], "topic": {"name": "decoy"}, 'say "x"[0]': row["label"]}
        for row in tiny_rows()
    ]
    corpus = write_jsonl(tmp_path / "fields.jsonl", rows)
    with Workspace(tmp_path / "w.duckdb") as ws:
        pipeline.ingest(ws, [str(corpus)], TINY_PARAMS)
        seed_tiny_vectors(ws)
        pipeline.run(ws, TINY_PARAMS)
        by_label = stages.compute_metrics(ws, TINY_PARAMS)["label_agreement"]
        for field in ("topic.name", 'say "x"[0]'):
            params = TINY_PARAMS.updated(label_field=field)
            assert stages.compute_metrics(ws, params)["label_agreement"] == by_label, field
            labels = explore.document_frame(ws, field)["label"]
            assert set(labels) == {row["label"] for row in rows}, field
        with pytest.raises(IcpError, match=r"--label-field \[: no document has that field"):
            stages.compute_metrics(ws, TINY_PARAMS.updated(label_field="["))
