"""Distil a static-model variant for bench_embed.py (`--options static@FOLDER`).

Variants of what `--model static` builds (`static_embed.distil` from the packaged model):
the PCA dimension (`--pca 0`: none, all 384 dimensions) and a vocabulary from a corpus
(`--vocabulary-from pydocs`: its most frequent words, used at least 3 times, that are not
whole tokens of the model yet, up to `--vocabulary-size`), which the static model then looks
up as whole words instead of averaging their word pieces. One distil is minutes of CPU.

    python benchmarks/distil_static.py --pca 0 --out /tmp/static-pca384
    python benchmarks/distil_static.py --vocabulary-from pydocs --out /tmp/static-vocab-pydocs
"""

from __future__ import annotations

import argparse
import collections
import re
import time
from pathlib import Path

from _bench_util import CORPUS_FILES
from bench_embed import read_texts

from icp_core import embed, static_embed

WORD = re.compile(r"[a-z][a-z0-9]+")


def corpus_vocabulary(texts: list[str], known: set[str], size: int) -> list[str]:
    counts = collections.Counter(w for t in texts for w in WORD.findall(t.lower()))
    return [w for w, n in counts.most_common() if n >= 3 and w not in known][:size]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pca", type=int, default=static_embed.STATIC_PCA_DIMS, help="0: none")
    parser.add_argument("--vocabulary-from", choices=sorted(CORPUS_FILES))
    parser.add_argument("--vocabulary-size", type=int, default=20_000)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    source = embed.resolve_model_path(None)
    vocabulary = None
    if args.vocabulary_from:
        known = set((source / "vocab.txt").read_text().split())
        texts, _ = read_texts(args.vocabulary_from, 0)
        vocabulary = corpus_vocabulary(texts, known, args.vocabulary_size)
        print(f"{len(vocabulary):,} words from {args.vocabulary_from}: {vocabulary[:8]} ...")
    started, cpu = time.perf_counter(), time.process_time()
    static_embed.distil(source, args.out, args.pca or None, vocabulary)
    print(
        f"distilled into {args.out}: {time.perf_counter() - started:.0f} s wall, "
        f"{time.process_time() - cpu:.0f} s CPU"
    )


if __name__ == "__main__":
    main()
