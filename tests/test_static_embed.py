"""The fast path: `--model static` and model2vec folders, through the real model2vec code.

The distilled model is built from the packaged model once per machine (minutes), so the
fast tests use a model2vec folder made from the packaged tokenizer with small random token
vectors; the slow test distils for real (skipped when the cache holds no distilled model
and the run excludes slow tests)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from icp_core import cli, embed, export, pipeline, stages, static_embed
from icp_core.dedup import DEFAULT_THRESHOLD
from icp_core.errors import IcpError
from icp_core.params import Params
from icp_core.workspace import Workspace
from tests.conftest import TINY_PARAMS


@pytest.fixture(scope="module")
def tiny_static(tmp_path_factory):
    from model2vec import StaticModel
    from tokenizers import Tokenizer

    source = embed.resolve_model_path(None)
    tokenizer = Tokenizer.from_file(str(source / "tokenizer.json"))
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(tokenizer.get_vocab_size(), 16)).astype(np.float32)
    folder = tmp_path_factory.mktemp("static") / "tiny-m2v"
    config = {"model_type": "model2vec", "normalize": True}
    StaticModel(vectors, tokenizer, config=config).save_pretrained(str(folder))
    return folder


def test_a_model2vec_folder_is_recognised_and_embeds_unit_vectors(tiny_static):
    assert static_embed.is_static_folder(tiny_static)
    assert not static_embed.is_static_folder(embed.resolve_model_path(None))
    assert embed.resolve_model_path(str(tiny_static)) == tiny_static
    assert embed.model_max_tokens(tiny_static) == static_embed.STATIC_MAX_TOKENS
    model = embed.load_model(str(tiny_static), "cpu", None)
    texts = ["the cat sat", "the cat sat", "galaxies and telescopes", ""]
    vectors = embed.embed_texts(model, texts)
    assert vectors.shape == (4, 16)
    np.testing.assert_allclose(np.linalg.norm(vectors[:3], axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors[0], vectors[1])
    assert np.isfinite(vectors).all()


def test_the_embed_stage_runs_with_a_static_folder(tiny_jsonl, tmp_path, tiny_static):
    params = Params(k=3, model=str(tiny_static))
    with Workspace(tmp_path / "w.duckdb") as ws:
        pipeline.ingest(ws, [str(tiny_jsonl)], params)
        outcome = pipeline.run(ws, params, until="knn")
        assert stages.read_vectors(ws).shape == (18, 16)
        assert outcome[-2].counts["embedded"] == 18
        assert outcome[-2].counts["max_tokens"] == static_embed.STATIC_MAX_TOKENS
        assert "tiny-m2v" in outcome[-2].counts["model_key"]


def test_static_resolves_to_the_cache_folder_named_by_its_source(tmp_path, monkeypatch):
    monkeypatch.setenv("ICP_CACHE_DIR", str(tmp_path))
    source = embed.resolve_model_path(None)
    key = embed.model_key(str(source), None)
    first = static_embed.static_model_path(source, key, build=False)
    assert first.parent == tmp_path and first.name.startswith("static-")
    distilled = static_embed.static_model_path(source, key, build=False, weighted=False)
    assert first.name == f"{distilled.name}-{static_embed.STATIC_WEIGHTING}"
    assert static_embed.static_model_path(source, key, pca_dims=64, build=False) != first
    assert static_embed.static_model_path(source, key, vocabulary=["x"], build=False) != first
    assert static_embed.static_model_path(source, key + "x", build=False) != first


def test_word_rank_probabilities_follow_the_vocabulary_from_its_first_word():
    words = [f"[unused{i}]" for i in range(static_embed.FIRST_WORD_ID)] + ["the", "of", "##s"]
    words[1010] = "."
    words[1500] = "é"
    tokens = ["of", "the", ".", "é", "[PAD]", "added", "##s"]
    p = static_embed.word_rank_probabilities(tokens, words)
    rarest = static_embed.FREQUENT_RANK  # three words: the rarest rank is floored at this
    assert p[1] / p[0] == pytest.approx(2.0)  # Zipf: rank 1 twice as likely as rank 2
    assert p[1] / p[6] == pytest.approx(3.0)
    assert p[2] == pytest.approx(p[1] / static_embed.FREQUENT_RANK)  # ASCII character
    assert p[3] == p[4] == p[5] == pytest.approx(p[1] / rarest)  # other characters, added words


def test_reweighted_table_shrinks_frequent_rows_and_centres_on_the_expected_text():
    rng = np.random.default_rng(1)
    unweighted = rng.normal(size=(5, 8))
    p = np.array([0.5, 0.3, 0.1, 0.05, 0.05])
    table = static_embed.reweighted_table(unweighted, p, sif=0.01)
    assert table.dtype == np.float32 and table.shape == (5, 8)
    np.testing.assert_allclose(p @ table, 0.0, atol=1e-6)  # a text drawn from p: no vector
    weights = 0.01 / (0.01 + p)
    moved = (table[1] - table[0]) / (unweighted[1] * weights[1] - unweighted[0] * weights[0])
    np.testing.assert_allclose(moved, 1.0, rtol=1e-5)  # rows differ by their weighted rows


def test_weighting_lets_a_rare_word_outweigh_a_frequent_one(tiny_static, tmp_path):
    words = (embed.resolve_model_path(None) / "vocab.txt").read_text().splitlines()
    weighted = tmp_path / "weighted"
    static_embed.weight_by_word_rank(tiny_static, weighted, words)
    assert static_embed.is_static_folder(weighted)
    texts = ["the the the the galaxy", "galaxy"]
    plain = embed.embed_texts(embed.load_model(str(tiny_static), "cpu", None), texts)
    sharp = embed.embed_texts(embed.load_model(str(weighted), "cpu", None), texts)
    assert plain[0] @ plain[1] < 0.6  # "the" x4 dominates the plain mean
    assert sharp[0] @ sharp[1] > 0.95


def test_weighting_without_the_distill_extra_names_the_install_and_the_folder_option(
    tiny_static, tmp_path, monkeypatch
):
    monkeypatch.setitem(sys.modules, "model2vec.distill.inference", None)  # import fails
    with pytest.raises(IcpError, match=r"pip install 'model2vec\[distill\]', or pass --model"):
        static_embed.weight_by_word_rank(tiny_static, tmp_path / "weighted", ["the"])
    assert not (tmp_path / "weighted").exists()


@pytest.mark.slow
def test_real_distilled_model_puts_related_texts_closer():
    # distils into the user's cache at first use (minutes), later runs reuse it
    model = embed.load_model(str(embed.resolve_model_path("static")), "cpu", None)
    vectors = embed.embed_texts(
        model, ["Bake the bread in a hot oven.", "Put the loaf in the oven to bake.", "Galaxies"]
    )
    assert vectors.shape[1] == static_embed.STATIC_PCA_DIMS
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2


def test_the_dedup_threshold_defaults_to_the_models_own():
    assert Params().dedup_threshold == DEFAULT_THRESHOLD
    assert Params(model="static").dedup_threshold == static_embed.STATIC_DEDUP_THRESHOLD
    # imported vectors come from a model the tool does not know: the general default
    assert Params(model="static", vectors="v.npy").dedup_threshold == DEFAULT_THRESHOLD
    assert Params(model="static", dedup_threshold=0.9).dedup_threshold == 0.9
    assert Params(model="static", dedup_threshold=None).dedup_threshold is None


def test_a_default_threshold_follows_the_model_and_a_chosen_one_stays():
    stored = Params().to_dict()  # a workspace's settings after a run with the default model
    static = cli._overlay(stored, model="static")
    assert static.dedup_threshold == static_embed.STATIC_DEDUP_THRESHOLD
    back = cli._overlay(static.to_dict(), model=embed.DEFAULT_MODEL)
    assert back.dedup_threshold == DEFAULT_THRESHOLD
    chosen = cli._overlay(stored, dedup_threshold=0.9)
    assert cli._overlay(chosen.to_dict(), model="static").dedup_threshold == 0.9
    off = cli._overlay(stored, no_dedup=True)
    assert cli._overlay(off.to_dict(), model="static").dedup_threshold is None


def test_the_effective_threshold_is_in_the_dedup_key_run_output_and_manifest(tiny_workspace):
    dedup_stage = next(stage for stage in pipeline.STAGES if stage.name == "dedup")
    static = Params(k=4, context_length=64, model="static")
    with Workspace(tiny_workspace) as ws:
        key = dedup_stage.key(ws, static)
        assert key["dedup_threshold"] == static_embed.STATIC_DEDUP_THRESHOLD
        assert key != dedup_stage.key(ws, static.updated(model=None))
        outcomes = pipeline.run(ws, TINY_PARAMS.updated(dedup_threshold=0.98), until="dedup")
        assert outcomes[-1].status == "ran" and outcomes[-1].counts["threshold"] == 0.98
        resolved = export.resolved_parameters(ws, static)
    assert resolved["dedup_threshold"] == static_embed.STATIC_DEDUP_THRESHOLD
