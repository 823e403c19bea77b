"""Write tests/data/tiny_embeddings.parquet: the packaged model's embedding cache rows for the
test corpora of tests/conftest.py, so the fast tier never loads the model.

    python tests/data/make_tiny_embeddings.py

`tests/test_embed.py::test_tiny_cache_matches_a_fresh_embedding` checks the file against the
installed model.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from icp_core import pipeline, stages
from icp_core.params import Params
from icp_core.workspace import Workspace
from tests.conftest import DUPLICATE_ROWS, TINY_EMBEDDINGS, tiny_rows, write_jsonl


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        corpus = write_jsonl(Path(folder) / "tiny.jsonl", tiny_rows() + DUPLICATE_ROWS)
        with Workspace(Path(folder) / "ws.duckdb") as ws:
            pipeline.ingest(ws, [str(corpus)], Params())
            pipeline.run(ws, Params(), until="embed")
            rows = stages.export_embedding_cache(ws, TINY_EMBEDDINGS)
    print(f"{TINY_EMBEDDINGS}: {rows} vectors")


if __name__ == "__main__":
    main()
