"""The Ray engine on a local 2-CPU Ray cluster: same outputs as the local engine, every document
exactly once, ugly input kept as rejects, metrics within the partitioning target of the local
engine's, and the real embedding model run by a Ray Data actor pool."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from icp_core import embed, pipeline, stages
from icp_core.errors import IcpError
from icp_core.export import export_contexts
from icp_core.ingest import hash_text
from icp_core.params import Params
from icp_core.sample import SAMPLE_DOCUMENTS, SAMPLE_EMBEDDINGS
from icp_core.workspace import Workspace
from tests.conftest import tiny_rows, write_jsonl
from tests.test_export import reassemble

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install '.[ray]'")
ray_engine = pytest.importorskip("icp_core.distributed.ray_engine")
ray_embed, ray_ingest, ray_knn, ray_util = (
    pytest.importorskip(f"icp_core.distributed.{name}")
    for name in ("ray_embed", "ray_ingest", "ray_knn", "ray_util")
)
# Ray Data copies its own deprecated settings when it starts a dataset
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")

N_SAMPLE = 300
PARAMS = Params(k=10, context_length=512)
# Partitioning may cost at most this share of the local engine's adjacent similarity (the
# issue's target at P = 16 on 45k documents; here P = 2 on 300 documents).
MAX_LOSS = 0.02
UGLY_LINES = [
    b'{"id": "ugly-json", "text": "unterminated\n',
    b'{"id": "ugly-empty", "text": "   "}\n',
    b'{"id": "ugly-number", "text": 42}\n',
    b'{"id": "ugly-bytes", "text": "caf\xe9"}\n',
]


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(
        num_cpus=2,
        object_store_memory=96 * 1024**2,
        include_dashboard=False,
        logging_level="ERROR",
    )
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def sample_inputs(tmp_path_factory) -> dict:
    """300 sample documents split over three JSONL shards, a fourth file of ugly rows (one of
    them repeating an id), and the shipped cache's vectors for the 300 as Parquet (id, vector)."""
    folder = tmp_path_factory.mktemp("ray_inputs")
    with gzip.open(SAMPLE_DOCUMENTS, "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for _, line in zip(range(N_SAMPLE), handle, strict=False)]
    shards = []
    for index in range(3):
        shards.append(write_jsonl(folder / f"part{index}.jsonl", rows[index::3]))
    repeated = json.dumps({"id": rows[0]["id"], "text": "a second document with a taken id"})
    ugly = folder / "ugly.jsonl"
    ugly.write_bytes(b"".join(UGLY_LINES) + repeated.encode() + b"\n")
    cache = pq.read_table(SAMPLE_EMBEDDINGS).to_pydict()
    by_hash = dict(zip(cache["text_hash"], cache["vector"], strict=True))
    vectors = folder / "vectors.parquet"
    pq.write_table(
        pa.table(
            {
                "id": [row["id"] for row in rows],
                "vector": [by_hash[hash_text(row["text"])] for row in rows],
            }
        ),
        vectors,
    )
    inputs = [*shards, ugly]
    n_lines = sum(len(p.read_bytes().splitlines()) for p in inputs)
    return {"inputs": inputs, "vectors": vectors, "rows": rows, "n_lines": n_lines}


def read_contexts(folder: Path) -> list[dict]:
    """What a user loads: every data/train-*.parquet shard of an export (either engine)."""
    return (
        duckdb.sql(f"SELECT * FROM '{folder}/data/train-*.parquet' ORDER BY context")
        .to_arrow_table()
        .to_pylist()
    )


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def local_run(sample_inputs, tmp_path_factory) -> tuple[dict, Path]:
    """The local engine on the same inputs: its metrics and its export folder."""
    folder = tmp_path_factory.mktemp("local_engine")
    params = PARAMS.updated(vectors=str(sample_inputs["vectors"]))
    with Workspace(folder / "ws.duckdb") as ws:
        pipeline.ingest(ws, [str(p) for p in sample_inputs["inputs"]], params)
        pipeline.run(ws, params)
        result = stages.latest_metrics(ws, params)
        export_contexts(ws, params, folder / "out", "parquet", metrics=result)
    return result, folder / "out"


@pytest.fixture(scope="module")
def ray_run(ray_cluster, sample_inputs, tmp_path_factory) -> tuple[list, dict, Path]:
    out = tmp_path_factory.mktemp("ray_engine") / "out"
    params = PARAMS.updated(vectors=str(sample_inputs["vectors"]))
    options = ray_engine.RayOptions(partitions=2, block_docs=128, contexts_per_file=64)
    outcomes, manifest = ray_engine.run_pipeline(
        [str(p) for p in sample_inputs["inputs"]], params, out, options
    )
    return outcomes, manifest, out


class TestSampleSubset:
    def test_every_input_row_accounted_for_once(self, ray_run, sample_inputs):
        _, manifest, out = ray_run
        rows = read_contexts(out)
        duplicates = read_jsonl(out / "removed" / "duplicates.jsonl")
        rejects = read_jsonl(out / "removed" / "rejects.jsonl")
        placed = [doc_id for row in rows for doc_id in set(row["doc_ids"])]
        kept = set(placed)
        assert len(kept) + len(duplicates) + len(rejects) == sample_inputs["n_lines"]
        assert not kept & {d["id"] for d in duplicates}
        texts = {row["id"]: row["text"] for row in sample_inputs["rows"]}
        assert reassemble(rows, "</s>") == {doc_id: texts[doc_id] for doc_id in kept}
        assert manifest["metrics"]["every_doc_once"] is True
        assert manifest["metrics"]["n_documents"] == N_SAMPLE

    def test_rejects_keep_file_line_and_reason(self, ray_run, sample_inputs):
        _, manifest, out = ray_run
        rejects = {r["line"]: r for r in read_jsonl(out / "removed" / "rejects.jsonl")}
        ugly = str(sample_inputs["inputs"][-1])
        assert {r["source"] for r in rejects.values()} == {ugly}
        assert "invalid JSON" in rejects[1]["reason"]
        assert rejects[2]["reason"] == "empty text"
        assert "not a string" in rejects[3]["reason"]
        assert "UTF-8" in rejects[4]["reason"]
        first = sample_inputs["rows"][0]["id"]
        assert rejects[5]["reason"].startswith(f"duplicate id '{first}' (first at ")
        assert manifest["metrics"]["n_rejected"] == len(UGLY_LINES) + 1

    def test_contexts_load_like_the_local_export(self, ray_run, local_run):
        _, manifest, out = ray_run
        _, local_out = local_run
        ray_shards = sorted((out / "data").glob("train-*.parquet"))
        [local_shard] = (local_out / "data").glob("train-*.parquet")
        assert pq.read_table(ray_shards[0]).schema.equals(pq.read_table(local_shard).schema)
        assert len(ray_shards) == manifest["counts"]["shards"] > 1, "64 per file must shard"
        rows = read_contexts(out)
        assert [row["context"] for row in rows] == list(range(manifest["counts"]["n_contexts"]))
        assert all(row["n_tokens"] <= PARAMS.context_length for row in rows)
        # one short context per partition, all of them at the end of the global order
        short = [row["context"] for row in rows if row["n_tokens"] < PARAMS.context_length]
        assert short == list(range(len(rows) - len(short), len(rows))) and len(short) <= 2
        for row in rows:
            assert sum(row["doc_lengths"]) == len(row["input_ids"]) == row["n_tokens"]
        local_rows = read_contexts(local_out)
        assert reassemble(rows, "</s>") == reassemble(local_rows, "</s>")
        assert sorted(
            read_jsonl(out / "removed" / "duplicates.jsonl"), key=lambda d: d["id"]
        ) == sorted(read_jsonl(local_out / "removed" / "duplicates.jsonl"), key=lambda d: d["id"])

    def test_manifest_has_the_local_engines_keys(self, ray_run, local_run):
        _, manifest, out = ray_run
        _, local_out = local_run
        local = json.loads((local_out / "manifest.json").read_text())
        assert set(manifest) == set(local) and manifest["schema_version"] == 2
        assert set(manifest["parameters"]) == set(local["parameters"])
        for entries in (manifest["run"]["stages"], local["run"]["stages"]):
            assert [e["stage"] for e in entries] == list(pipeline.STAGE_NAMES[:7])
            assert all(set(e) == {"stage", "seconds", "counts"} for e in entries)
            assert all(e["seconds"] is not None for e in entries)
        assert manifest["tokenizer"] == local["tokenizer"]
        assert manifest["parameters"]["index"] in ("flat", "ivf")
        for name, entry in manifest["files"].items():
            assert (out / name).stat().st_size == entry["bytes"], name

    def test_metrics_within_target_of_local_engine(self, ray_run, local_run):
        outcomes, manifest, _ = ray_run
        local, _ = local_run
        result = manifest["metrics"]
        order = next(o for o in outcomes if o.stage == "order")
        assert order.counts["partitions"] == 2
        assert result["adjacent_sim_mean"] >= (1 - MAX_LOSS) * local["adjacent_sim_mean"]
        assert result["adjacent_sim_mean"] > result["random_adjacent_sim_mean"] + 0.1
        assert result["label_agreement"] >= (1 - 2 * MAX_LOSS) * local["label_agreement"]
        for key in ("n_documents", "n_rejected", "n_duplicates", "n_kept"):
            assert result[key] == local[key], key
        # one random bucket below RANDOM_BUCKET_DOCS kept documents: the local engine's baseline
        assert result["random"] == pytest.approx(local["random"], rel=1e-5)

    def test_every_local_metric_key_with_a_value(self, ray_run, local_run):
        result = ray_run[1]["metrics"]
        local, _ = local_run
        assert set(result) == set(local) and set(result["random"]) == set(local["random"])
        for key, value in local.items():
            assert (result[key] is None) == (value is None), key
        for key, value in local["random"].items():
            assert (result["random"][key] is None) == (value is None), key


METHODS = ("icp", "original", "random", "greedy", "greedy-lk")
COUNTS = ("n_documents", "n_rejected", "n_duplicates", "n_kept")
SIMILARITIES = ("adjacent_sim_mean", "context_pairwise_sim_mean", "random_adjacent_sim_mean")
MEANS = ("jump_rate", "label_agreement", "context_cache_gain", "token_efficiency")


@pytest.fixture(scope="module")
def local_by_method(sample_inputs, tmp_path_factory) -> dict:
    """The local engine's metrics and removed documents per ordering method (one workspace)."""
    folder = tmp_path_factory.mktemp("local_methods")
    found = {}
    base = PARAMS.updated(vectors=str(sample_inputs["vectors"]))
    with Workspace(folder / "ws.duckdb") as ws:
        pipeline.ingest(ws, [str(p) for p in sample_inputs["inputs"]], base)
        for method in METHODS:
            params = base.updated(order=method)
            pipeline.run(ws, params)
            result = stages.latest_metrics(ws, params)
            export_contexts(ws, params, folder / method, "parquet", metrics=result)
            removed = read_jsonl(folder / method / "removed" / "duplicates.jsonl")
            found[method] = (result, removed, folder / method / "data")
    return found


@pytest.mark.parametrize("n_partitions", [1, 4])
@pytest.mark.parametrize("method", METHODS)
def test_parity_with_the_local_engine(
    ray_cluster, sample_inputs, local_by_method, method, n_partitions, tmp_path
):
    """Same metric keys, none null where the local engine has a value, the same counts and
    removed documents, the same random baseline; at P = 1 the same numbers, at P = 4 no more
    than 2% below the local engine's similarities."""
    params = PARAMS.updated(vectors=str(sample_inputs["vectors"]), order=method)
    options = ray_engine.RayOptions(partitions=n_partitions, block_docs=128)
    _, manifest = ray_engine.run_pipeline(
        [str(p) for p in sample_inputs["inputs"]], params, tmp_path / "out", options
    )
    result = manifest["metrics"]
    local, local_removed, local_data = local_by_method[method]
    if os.environ.get("ICP_PARITY_LOG"):  # the figures docs/scaling.md quotes
        with open(os.environ["ICP_PARITY_LOG"], "a") as log:
            log.write(json.dumps({"method": method, "P": n_partitions, "ray": result}) + "\n")
            log.write(json.dumps({"method": method, "P": 0, "local": local}) + "\n")
    assert set(result) == set(local) and set(result["random"]) == set(local["random"])
    for key, value in local.items():
        assert (result[key] is None) == (value is None), key
    for key, value in local["random"].items():
        assert (result["random"][key] is None) == (value is None), key
    for key in COUNTS:
        assert result[key] == local[key], key
    assert result["every_doc_once"] is True
    if n_partitions == 1:  # one partition, no cut: the local engine's path and numbers
        for key in (*SIMILARITIES, *MEANS):
            assert result[key] == pytest.approx(local[key], rel=1e-5), key
        # and the very rows a trainer reads: contexts, their documents, texts and token ids
        ray_rows = pq.read_table(tmp_path / "out" / "data").sort_by("context")
        local_rows = pq.read_table(local_data).sort_by("context")
        assert ray_rows.num_rows == local["n_contexts"] > 0
        assert ray_rows.schema == local_rows.schema
        assert ray_rows.equals(local_rows)
    elif method == "random":
        # another random order: two seeds of the local engine's own differ by 7% here
        for key in SIMILARITIES:
            assert result[key] == pytest.approx(local[key], rel=0.1), key
    else:
        # stitching the cut fragments may gain (at P = 4 on 300 documents most steps are cut
        # and re-joined by greedy-lk: up to +16% for original), but must not lose over 2%
        for key in SIMILARITIES:
            assert result[key] >= (1 - MAX_LOSS) * local[key], key
    # one random bucket below RANDOM_BUCKET_DOCS kept documents: the local engine's own baseline
    assert result["random"] == pytest.approx(local["random"], rel=1e-5)
    removed = read_jsonl(tmp_path / "out" / "removed" / "duplicates.jsonl")
    assert sorted(d["id"] for d in removed) == sorted(d["id"] for d in local_removed)
    assert {d["reason"] for d in removed} == {d["reason"] for d in local_removed}


def test_random_baseline_over_several_buckets(ray_cluster, sample_inputs, local_run, tmp_path):
    """Above `random_bucket_docs` kept documents the baseline is packed per hash bucket: every
    kept document is measured in exactly one bucket, and the metrics estimate the same
    quantity as the local engine's single random packing: they lie within 3 standard
    deviations of the local baselines over 10 seeds (measured over 20 seeds on these 300
    documents: sd 0.006 for random_adjacent_sim_mean, 3.8% of it; 0.013 for jump_rate and
    label_agreement; 0.003 for context_cache_gain)."""
    params = PARAMS.updated(vectors=str(sample_inputs["vectors"]))
    options = ray_engine.RayOptions(partitions=2, block_docs=128, random_bucket_docs=50)
    outcomes, manifest = ray_engine.run_pipeline(
        [str(p) for p in sample_inputs["inputs"]], params, tmp_path / "out", options
    )
    local, local_out = local_run
    with Workspace(local_out.parent / "ws.duckdb") as ws:
        seeds = [stages.compute_metrics(ws, params.updated(seed=s))["random"] for s in range(10)]
    random = manifest["metrics"]["random"]
    pack = next(o for o in outcomes if o.stage == "pack")
    n_buckets = pack.counts["random_buckets"]
    assert n_buckets == -(-local["n_kept"] // 50) > 1
    assert pack.counts["random_docs_once"] is True
    for key in (
        "adjacent_sim_mean",
        "context_pairwise_sim_mean",
        "jump_rate",
        "label_agreement",
        "context_cache_gain",
    ):
        values = [seed[key] for seed in seeds]
        assert abs(random[key] - np.mean(values)) <= 3 * np.std(values), key
    # each bucket ends in its own short context: at most n_buckets - 1 more contexts
    efficiency = local["random"]["token_efficiency"]
    n_contexts = local["n_contexts"]
    assert efficiency * n_contexts / (n_contexts + n_buckets - 1) <= random["token_efficiency"]
    assert random["token_efficiency"] <= efficiency + 1e-12


@pytest.mark.parametrize("n_partitions", [1, 2])
def test_original_drops_near_copies_like_the_local_engine(ray_cluster, n_partitions, tmp_path):
    """`--order original`'s near-copy filter: same drops, reason and kept document as local."""
    rng = np.random.default_rng(3)
    rows, vectors = [], []
    for topic in range(8):
        centre = rng.normal(size=16)
        head = f"topic {topic} " + " ".join(f"w{topic}x{j}" for j in range(30))
        for copy in range(5):
            rows.append({"id": f"t{topic}-{copy}", "text": f"{head} tail {copy} " * 2})
            vectors.append(centre + rng.normal(size=16) * 0.7)  # related, not duplicates
    corpus = write_jsonl(tmp_path / "copies.jsonl", rows)
    np.save(tmp_path / "v.npy", np.asarray(vectors, dtype=np.float32))
    params = Params(k=4, context_length=64, order="original", vectors=str(tmp_path / "v.npy"))
    with Workspace(tmp_path / "ws.duckdb") as ws:
        pipeline.ingest(ws, [str(corpus)], params)
        pipeline.run(ws, params)
        local = stages.latest_metrics(ws, params)
        export_contexts(ws, params, tmp_path / "local", "parquet", metrics=local)
    options = ray_engine.RayOptions(partitions=n_partitions, block_docs=16)
    outcomes, manifest = ray_engine.run_pipeline([str(corpus)], params, tmp_path / "ray", options)
    result = manifest["metrics"]
    assert result["every_doc_once"] is True
    pack = next(o for o in outcomes if o.stage == "pack")
    assert 0 < pack.counts["near_copies_dropped"] == result["n_duplicates"]
    removed = read_jsonl(tmp_path / "ray" / "removed" / "duplicates.jsonl")
    assert all(d["reason"].startswith("near copy of the previous document") for d in removed)
    assert all(d["id"].split("-")[0] == d["kept_id"].split("-")[0] for d in removed)
    if n_partitions == 1:
        assert removed == read_jsonl(tmp_path / "local" / "removed" / "duplicates.jsonl")
        for key in ("n_duplicates", "n_kept", "adjacent_sim_mean", "context_cache_gain"):
            assert result[key] == pytest.approx(local[key], rel=1e-5), key
    placed = {doc_id for row in read_contexts(tmp_path / "ray") for doc_id in row["doc_ids"]}
    assert len(placed) + len(removed) == len(rows) and not placed & {d["id"] for d in removed}


@pytest.mark.parametrize("index", ["flat", "ivf"])
def test_sharded_knn_matches_the_local_search(ray_cluster, index, tmp_path):
    """Index shards built by tasks, every block searched against every shard: exact search
    gives the local engine's lists, IVF nearly (knn.py's sizing), over several shards."""
    from icp_core import knn

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 16))
    vectors = (centres[rng.integers(0, 20, 2400)] + rng.normal(size=(2400, 16)) * 0.5).astype(
        np.float32
    )
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    np.save(tmp_path / "v.npy", vectors)
    rows = [{"id": str(i), "text": f"d {i}"} for i in range(2400)]
    corpus = write_jsonl(tmp_path / "c.jsonl", rows)
    params = Params(k=10, index=index, vectors=str(tmp_path / "v.npy"))
    options = ray_engine.RayOptions(block_docs=500, shard_docs=1000)
    corpus_ = ray_ingest.ingest_stage([str(corpus)], params, ray_util.no_report)
    folder = tmp_path / "emb"
    ray_embed.embed_stage(corpus_, params, options, folder, ray_util.no_report)
    searched, lists, counts = ray_knn.knn_stage(
        corpus_, params, folder, tmp_path / "work", options, ray_util.no_report
    )
    assert counts["shards"] == 3 and counts["index"] == index
    assert lists.sizes.sum() == 2400 and lists.edges.sum() > 0
    found = np.concatenate(
        [ray_util.to_matrix(ray.get(s.ref).column("nbr_ids"), np.int64) for s in searched]
    )
    exact, _ = knn.knn_search(vectors, counts["k_max"], "flat")
    if index == "flat":
        assert (found[:, :10] == exact[:, :10]).mean() > 0.999  # ties may swap
    else:
        pairs = zip(found[:, :10], exact[:, :10], strict=True)
        assert np.mean([len(set(a) & set(b)) / 10 for a, b in pairs]) > 0.9


def test_embeds_with_the_model_in_an_actor_pool(ray_cluster, tmp_path):
    rows = tiny_rows()
    corpus = write_jsonl(tmp_path / "tiny.jsonl", rows)
    params = Params(k=4, context_length=64, index="ivf")  # the memory-mapped IVF search
    options = ray_engine.RayOptions(partitions=1, block_docs=8)
    outcomes, manifest = ray_engine.run_pipeline([str(corpus)], params, tmp_path / "out", options)
    stored = pq.read_table(tmp_path / "out" / "embeddings.parquet")
    doc = stored.column("doc").to_numpy()
    vectors = np.asarray(stored.column("vector").to_pylist(), dtype=np.float32)[np.argsort(doc)]
    model = embed.load_model(str(embed.resolve_model_path(None)))
    expected = embed.embed_texts(model, [row["text"] for row in rows])
    assert sorted(doc.tolist()) == list(range(len(rows)))
    assert np.abs(vectors - expected).max() < 1e-4
    assert next(o for o in outcomes if o.stage == "embed").counts["embedded"] == len(rows)
    assert next(o for o in outcomes if o.stage == "knn").counts["index"] == "ivf"
    result = manifest["metrics"]
    assert result["every_doc_once"] and result["n_kept"] == len(rows)
    assert result["adjacent_sim_mean"] > result["random_adjacent_sim_mean"]


class TestClearErrors:
    def test_missing_input(self, ray_cluster, tmp_path):
        with pytest.raises(IcpError, match="no such file"):
            ray_engine.run_pipeline([str(tmp_path / "nope.jsonl")], PARAMS, tmp_path / "out")

    def test_wrong_vector_rows(self, ray_cluster, tmp_path):
        corpus = write_jsonl(tmp_path / "tiny.jsonl", tiny_rows())
        np.save(tmp_path / "short.npy", np.ones((3, 8), dtype=np.float32))
        params = PARAMS.updated(vectors=str(tmp_path / "short.npy"))
        with pytest.raises(IcpError, match=r"shape \(3, 8\), expected \(18, d\)"):
            ray_engine.run_pipeline([str(corpus)], params, tmp_path / "out")
        assert not (tmp_path / "out").exists()
        assert not list(tmp_path.glob(".out.partial-*"))

    def test_non_finite_vectors_from_a_task(self, ray_cluster, tmp_path):
        corpus = write_jsonl(tmp_path / "tiny.jsonl", tiny_rows())
        vectors = np.ones((18, 8), dtype=np.float32)
        vectors[5, 2] = np.nan
        np.save(tmp_path / "nan.npy", vectors)
        params = PARAMS.updated(vectors=str(tmp_path / "nan.npy"))
        with pytest.raises(IcpError, match="1 vectors hold NaN or inf") as caught:
            ray_engine.run_pipeline([str(corpus)], params, tmp_path / "out")
        assert "\n" not in str(caught.value)


def test_cli_joins_a_running_cluster(ray_cluster, sample_inputs, tmp_path):
    """`icp run --engine ray --ray-address ADDR`, as against a real multi-node cluster."""
    inputs = sample_inputs["inputs"][:1]
    command = [
        sys.executable, "-m", "icp_core.cli", "run", *map(str, inputs),
        "--engine", "ray", "--ray-address", ray_cluster, "--out", str(tmp_path / "out"),
        "--vectors", str(sample_inputs["vectors"]), "--k", "10", "--context-length", "512",
        "--partitions", "2",
    ]  # fmt: skip
    # vectors cover all 300 documents; this file holds 100 of them, looked up by id
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["every_doc_once"] and printed["n_documents"] == N_SAMPLE // 3
    assert "order    ran" in result.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["engine"] == "ray" and manifest["run"]["cluster"]["cpus"] == 2

    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2
    assert again.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "already exists; use --overwrite" in again.stderr


def test_ingest_rejects_like_the_local_engine_in_folders(ray_cluster, tmp_path):
    """A folder's rejects name the file inside it, and an id repeated across its files is
    rejected with the local engine's reason and place; default ids are the local ones."""
    folder = tmp_path / "docs"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", [{"id": "x", "text": "first"}, {"text": "no id"}])
    write_jsonl(folder / "b.jsonl", [{"id": "x", "text": "again"}, {"id": "y", "text": " "}])
    params = Params()
    corpus = ray_ingest.ingest_stage([str(folder)], params, ray_util.no_report)
    with Workspace(tmp_path / "ws.duckdb") as ws:
        pipeline.ingest(ws, [str(folder)], params)
        local_rejects = ws.arrow("SELECT * FROM rejects ORDER BY source, line").to_pylist()
        local_ids = ws.column("SELECT id FROM documents ORDER BY doc").tolist()
    assert corpus.rejects.sort_by([("source", "ascending"), ("line", "ascending")]).to_pylist() == (
        local_rejects
    )
    ids = pa.concat_tables([ray.get(shard.ref) for shard in corpus.shards]).column("id")
    assert ids.to_pylist() == local_ids == ["x", "a.jsonl:2"]


def test_repeated_ids_across_and_within_files_over_several_buckets(ray_cluster, tmp_path):
    """The repeated-id hash shuffle over several buckets rejects what the local ingest
    rejects: ids repeated inside a file and across files, the earlier row in input order kept
    (the reject names its file and line), the rest numbered as the local workspace numbers."""
    files = {
        "a.jsonl": ["x", "y", "x", "u0", "u1"],
        "b.jsonl": ["y", "z", "u2", "z", "u3"],
        "c.jsonl": ["z", "x", "w", "u4", "w"],
    }
    inputs = [
        str(
            write_jsonl(
                tmp_path / name, [{"id": i, "text": f"{name} {i} {n}"} for n, i in enumerate(ids)]
            )
        )
        for name, ids in files.items()
    ]
    params = Params()
    corpus = ray_ingest.ingest_stage(inputs, params, ray_util.no_report, id_bucket_rows=4)
    with Workspace(tmp_path / "ws.duckdb") as ws:
        pipeline.ingest(ws, inputs, params)
        local_rejects = ws.arrow("SELECT * FROM rejects ORDER BY source, line").to_pylist()
        local_ids = ws.column("SELECT id FROM documents ORDER BY doc").tolist()
    assert corpus.rejects.sort_by([("source", "ascending"), ("line", "ascending")]).to_pylist() == (
        local_rejects
    )
    assert len(local_rejects) == 6
    ids = pa.concat_tables([ray.get(shard.ref) for shard in corpus.shards]).column("id")
    assert ids.to_pylist() == local_ids == ["x", "y", "u0", "u1", "z", "u2", "u3", "w", "u4"]


def test_runs_the_local_pipelines_stages_in_its_order():
    names = tuple(name for name, _ in ray_engine.RAY_STAGES)
    assert names == pipeline.STAGE_NAMES[: len(names)] and names[-1] == "metrics"


def test_cli_ray_engine_needs_out(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "icp_core.cli", "run", "x.jsonl", "--engine", "ray"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "pass --out DIR" in result.stderr
