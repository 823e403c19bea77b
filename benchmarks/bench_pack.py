"""Packing + export vs the bare tokenizer batch-encoding the same documents.

Corpus: the Python docs (2,131 sections, 10 MB of text), ordered in a workspace first (with
the precomputed vectors; not timed). Then, alternately, best of --runs:

- bare: `Tokenizer.encode_batch_fast(texts)` of every document, tokenizer loaded as the pack
  stage loads it (no truncation, no padding, no special tokens);
- pack + export: the pack stage with an empty token cache (it tokenizes every document to
  count its tokens, packs 8,192-token contexts and writes them), then `export_contexts` in
  the given formats (tokens: the token-id file a training loader reads; jsonl and parquet:
  the context texts), as `icp run --out` does in one process.

Target: (pack + export tokens) / bare <= 1.5. Tokens/s = document tokens / seconds.

    python benchmarks/bench_pack.py
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from _bench_util import CORPORA, corpus_path, corpus_vectors, machine, timed

from icp_core import export, pack, pipeline, stages
from icp_core.params import Params
from icp_core.workspace import Workspace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--corpora", type=Path, default=CORPORA)
    parser.add_argument("--formats", default="tokens,jsonl,parquet")
    args = parser.parse_args()
    formats = args.formats.split(",")
    print(f"machine: {machine()}")
    params = Params(vectors=str(corpus_vectors("pydocs", args.corpora)))
    with tempfile.TemporaryDirectory() as folder, Workspace(Path(folder) / "ws.duckdb") as ws:
        pipeline.ingest(ws, [str(corpus_path("pydocs", args.corpora))], params)
        pipeline.run(ws, params, until="order")
        texts = ws.arrow("SELECT text FROM documents ORDER BY doc").column("text").to_pylist()
        tokenizer = pack.load_tokenizer(str(stages._tokenizer_for(params)))
        tokenizer.encode_batch_fast(texts[:16])  # thread pool start-up off the clock

        def bare() -> int:
            encodings = tokenizer.encode_batch_fast(texts, add_special_tokens=False)
            return sum(len(encoding.ids) for encoding in encodings)

        def pack_stage() -> None:
            ws.execute("DELETE FROM token_cache")
            pack.RECENT_TOKEN_IDS.clear()
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
    print(f"{len(texts):,} documents, {n_tokens:,} tokens, {n_contexts} contexts of 8,192")
    print(f"{'':26}{'seconds':>9}{'tokens/s':>12}{'/ bare':>8}")

    def line(name: str, seconds: float) -> None:
        print(f"{name:26}{seconds:>9.2f}{n_tokens / seconds:>12,.0f}{seconds / best['bare']:>8.2f}")

    line("bare encode_batch_fast", best["bare"])
    line("pack stage", best["pack"])
    for fmt in formats:
        line(f"pack + export {fmt}", best["pack"] + best[fmt])
    print(f"runs (s): {times}")
    print("target: (pack + export tokens) / bare <= 1.5")


if __name__ == "__main__":
    main()
