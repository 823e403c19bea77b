"""Shared fixtures: a tiny labelled corpus, a workspace built from it, the bundled sample."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from icp_core import pipeline, stages
from icp_core.params import Params
from icp_core.workspace import Workspace

TOPICS = {
    "astronomy": [
        "The telescope captured faint light from a distant spiral galaxy.",
        "Astronomers measured the redshift of the galaxy to estimate its distance.",
        "A supernova in the galaxy outshone billions of stars for weeks.",
        "The orbit of the comet brings it close to the sun every 76 years.",
        "Planets around other stars are found by the dimming of starlight.",
        "The moon's craters record billions of years of asteroid impacts.",
    ],
    "cooking": [
        "Knead the bread dough for ten minutes until it is smooth and elastic.",
        "Let the dough rise in a warm kitchen before baking the bread.",
        "Simmer the tomato sauce with garlic, basil and olive oil.",
        "Roast the vegetables in a hot oven until their edges caramelise.",
        "Whisk eggs, sugar and butter to make a light sponge cake batter.",
        "Season the soup with salt and pepper before serving it hot.",
    ],
    "programming": [
        "A Python list comprehension builds a new list from an iterable.",
        "The function raises a ValueError when the argument is negative.",
        "Use a dictionary to map each key to its value in constant time.",
        "The compiler reports a syntax error on the line with the missing colon.",
        "Unit tests check that each function returns the expected result.",
        "A for loop iterates over the items of a sequence in order.",
    ],
}


def tiny_rows() -> list[dict]:
    rows = []
    for topic, texts in TOPICS.items():
        for index, text in enumerate(texts):
            rows.append({"id": f"{topic}-{index}", "text": text, "label": topic})
    # interleave topics so file order carries no topic
    return sorted(rows, key=lambda row: (int(row["id"].rsplit("-", 1)[1]), row["label"]))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture
def tiny_jsonl(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "tiny.jsonl", tiny_rows())


TINY_PARAMS = Params(k=4, context_length=64, dedup_threshold=0.95)
# The packaged model's vectors of the corpora below (tests/data/make_tiny_embeddings.py), so
# that building a tiny workspace never loads the model; a `model` test checks them.
TINY_EMBEDDINGS = Path(__file__).parent / "data" / "tiny_embeddings.parquet"


def seed_tiny_vectors(ws: Workspace) -> None:
    stages.seed_embedding_cache(ws, TINY_EMBEDDINGS)

# b is a near-copy of a (cosine about 0.985 with the packaged model); c is unrelated
DUPLICATE_ROWS = [
    {"id": "a", "text": "The cat sat on the warm windowsill all afternoon."},
    {"id": "b", "text": "the cat sat on the warm windowsill all afternoon"},
    {"id": "c", "text": "Quarterly revenue grew by eight percent."},
]


def run_duplicate_corpus(folder: Path) -> Path:
    """A workspace with DUPLICATE_ROWS ingested and every stage run (TINY_PARAMS)."""
    corpus = write_jsonl(folder / "dup.jsonl", DUPLICATE_ROWS)
    path = folder / "w.duckdb"
    with Workspace(path) as ws:
        pipeline.ingest(ws, [str(corpus)], TINY_PARAMS)
        seed_tiny_vectors(ws)
        pipeline.run(ws, TINY_PARAMS)
    return path


@pytest.fixture(scope="session")
def tiny_workspace_template(tmp_path_factory) -> Path:
    """A fully run workspace on the tiny corpus (built once; tests copy it)."""
    folder = tmp_path_factory.mktemp("tiny_ws")
    corpus = write_jsonl(folder / "tiny.jsonl", tiny_rows())
    path = folder / "tiny.duckdb"
    with Workspace(path) as ws:
        pipeline.ingest(ws, [str(corpus)], TINY_PARAMS)
        seed_tiny_vectors(ws)
        pipeline.run(ws, TINY_PARAMS)
    return path


@pytest.fixture
def tiny_workspace(tiny_workspace_template: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny workspace."""
    path = tmp_path / "tiny.duckdb"
    path.write_bytes(tiny_workspace_template.read_bytes())
    return path


@pytest.fixture(scope="session")
def sample_workspace_template(tmp_path_factory) -> Path:
    """The bundled 2,000-document sample, fully run (uses the shipped embedding cache)."""
    from icp_core.sample import build_sample_workspace

    return build_sample_workspace(tmp_path_factory.mktemp("sample_ws") / "sample.duckdb")


# Whole folders whose tests drive subprocesses, signals, huge inputs or the app on the sample:
# the full tier runs them, the fast tier (`scripts/test.sh --fast`) leaves them out.
SLOW_FOLDERS = ("reliability", "app")


def pytest_collection_modifyitems(config, items) -> None:
    tests_root = Path(__file__).parent
    for item in items:
        parts = Path(item.fspath).relative_to(tests_root.parent).parts
        if len(parts) > 2 and parts[0] == "tests" and parts[1] in SLOW_FOLDERS:
            item.add_marker(pytest.mark.slow)
        if "ray_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ray)


@pytest.fixture(autouse=True)
def _fast_tier_loads_no_model(request, monkeypatch) -> None:
    """In the fast tier (ICP_FAST_TIER=1), loading the transformer embedding model in process
    fails the test, so a test that needs it must say so with `@pytest.mark.model`. A static
    (model2vec) folder loads in milliseconds and stays allowed."""
    if os.environ.get("ICP_FAST_TIER") != "1" or request.node.get_closest_marker("model"):
        return
    from icp_core import embed, static_embed

    load_model = embed.load_model

    def refuse(model_path, *args, **kwargs):
        if static_embed.is_static_folder(Path(model_path)):
            return load_model(model_path, *args, **kwargs)
        raise AssertionError("this test loads the embedding model: mark it @pytest.mark.model")

    monkeypatch.setattr(embed, "load_model", refuse)
