"""Embedding stage vs raw SentenceTransformer.encode on the same texts and settings.

Both use the same loaded model (packaged all-MiniLM-L6-v2, CPU, max_seq_length 256, batch
64, normalised float32 output). The stage is `stages.run_embed` on a workspace holding the
texts (ingest excluded): it reads the texts from DuckDB, embeds those without a cached
vector, writes the cache and the `embeddings` view. Runs alternate (raw, stage, raw, ...)
and the best of each is kept, so that load from other processes hits both alike; the cache
is emptied before each stage run. Target: stage throughput >= 0.9 x raw.

    python benchmarks/bench_embed.py            # 240 Python-doc sections, 2 runs each
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from _bench_util import CORPORA, CORPUS_FILES, machine, timed

from icp_core import embed, pipeline, stages
from icp_core.params import Params
from icp_core.workspace import Workspace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=240)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--corpus", type=Path, default=CORPORA / CORPUS_FILES["pydocs"])
    args = parser.parse_args()
    print(f"machine: {machine()}")
    lines = args.corpus.read_text().splitlines()[: args.docs]
    texts = [json.loads(line)["text"] for line in lines]
    params = Params(device="cpu", batch_size=64)
    model = embed.load_model(str(embed.resolve_model_path(None)), "cpu", None)
    model.encode(texts[:8], batch_size=8)  # first-call set-up off the clock

    def raw() -> np.ndarray:
        return model.encode(
            texts,
            batch_size=params.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )

    with tempfile.TemporaryDirectory() as folder:
        corpus = Path(folder) / "docs.jsonl"
        corpus.write_text("\n".join(lines) + "\n")
        with Workspace(Path(folder) / "ws.duckdb") as ws:
            pipeline.ingest(ws, [str(corpus)], params)

            def stage() -> dict:
                ws.execute("DELETE FROM embedding_cache")
                return stages.run_embed(ws, params)

            raw_times, stage_times = [], []
            for _ in range(args.runs):
                raw_vectors, raw_time = timed(raw)
                counts, stage_time = timed(stage)
                raw_times.append(raw_time["wall_min"])
                stage_times.append(stage_time["wall_min"])
            stored = stages.read_vectors(ws)
    assert counts["embedded"] == len(texts)
    difference = float(np.abs(stored - raw_vectors).max())  # documents are in file order
    best_raw, best_stage = min(raw_times), min(stage_times)
    n = len(texts)
    print(f"{n} documents (Python docs), max_seq_length {model.max_seq_length}, batch 64, CPU")
    print(f"raw encode:  {best_raw:.2f}s = {n / best_raw:.1f} docs/s  (runs: {raw_times})")
    print(f"embed stage: {best_stage:.2f}s = {n / best_stage:.1f} docs/s  (runs: {stage_times})")
    print(f"stage / raw throughput: {best_raw / best_stage:.3f} (target >= 0.9)")
    print(f"largest |stage - raw| vector difference: {difference:.2e}")


if __name__ == "__main__":
    main()
