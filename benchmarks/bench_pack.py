"""Packing + export vs the bare LM tokenizer encoding the same documents.

Corpus: the Debian package descriptions (44,768 documents; --corpus pydocs for the Python
docs), ordered in a workspace first (not timed; random unit vectors, since packing and
export cost does not depend on which neighbours the path follows). Tokenizer: the default
(Mistral Tekken) or --tokenizer. Then, alternately, best of --runs:

- bare: the tokenizer batch-encoding every document (`LMTokenizer.token_ids`, as loaded by
  the pack stage: plain text, no special tokens);
- pack + export: the pack stage with an empty token cache (it tokenizes every document,
  keeps the ids, packs 8,192-token contexts and writes them), then `export_contexts` in each
  format (tokens: tokens.ds + index; jsonl and parquet: rows with text, input_ids and
  doc_lengths), as `icp run --out` does.

Target: (pack + export) / bare <= 1.5. Tokens/s = document tokens / seconds.

    python benchmarks/bench_pack.py [--corpus debian] [--tokenizer mistral-tekken]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
from _bench_util import CORPORA, corpus_path, machine, timed

from icp_core import export, pipeline, stages
from icp_core.params import Params
from icp_core.workspace import Workspace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--corpora", type=Path, default=CORPORA)
    parser.add_argument("--corpus", default="debian", choices=("debian", "pydocs"))
    parser.add_argument("--tokenizer", default=None)
    parser.add_argument("--formats", default="tokens,jsonl,parquet")
    args = parser.parse_args()
    formats = args.formats.split(",")
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as folder, Workspace(Path(folder) / "ws.duckdb") as ws:
        corpus = corpus_path(args.corpus, args.corpora)
        pipeline.ingest(ws, [str(corpus)], Params())
        vectors = np.random.default_rng(0).normal(size=(ws.n_documents(), 32))
        np.save(Path(folder) / "vectors.npy", vectors.astype(np.float32))
        params = Params(vectors=str(Path(folder) / "vectors.npy"), tokenizer=args.tokenizer)
        pipeline.run(ws, params, until="order")
        texts = ws.arrow("SELECT text FROM documents ORDER BY doc").column("text").to_pylist()
        lm = stages.lm_tokenizer(params)
        lm.token_ids(texts[:16])  # thread pool start-up off the clock

        def bare() -> int:
            return int(lm.token_ids(texts)[1][-1])

        def pack_stage() -> None:
            ws.execute("DELETE FROM token_cache")
            pipeline.run(ws, params, until="pack", force=("pack",))

        def export_to(fmt: str) -> None:
            out = Path(folder) / f"out_{fmt}"
            shutil.rmtree(out, ignore_errors=True)
            export.export_contexts(ws, params, out, fmt)

        times: dict[str, list[float]] = {"bare": [], "pack": [], **{f: [] for f in formats}}
        for _ in range(args.runs):
            n_tokens, bare_time = timed(bare)
            times["bare"].append(bare_time["wall_min"])
            _, pack_time = timed(pack_stage)
            times["pack"].append(pack_time["wall_min"])
            for fmt in formats:
                _, export_time = timed(lambda fmt=fmt: export_to(fmt))
                times[fmt].append(export_time["wall_min"])
        n_contexts = int(ws.scalar("SELECT count(DISTINCT context) FROM contexts"))
    best = {name: min(values) for name, values in times.items()}
    print(
        f"{args.corpus}: {len(texts):,} documents, {n_tokens:,} tokens ({lm.info.name}), "
        f"{n_contexts} contexts of 8,192"
    )
    print(f"{'':26}{'seconds':>9}{'tokens/s':>12}{'/ bare':>8}")

    def line(name: str, seconds: float) -> None:
        print(f"{name:26}{seconds:>9.2f}{n_tokens / seconds:>12,.0f}{seconds / best['bare']:>8.2f}")

    line("bare tokenizer", best["bare"])
    line("pack stage", best["pack"])
    for fmt in formats:
        line(f"pack + export {fmt}", best["pack"] + best[fmt])
    print(f"runs (s): {times}")
    print("target: (pack + export) / bare <= 1.5")


if __name__ == "__main__":
    main()
