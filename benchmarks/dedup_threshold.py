"""Choose the dedup threshold: what do pairs above a cosine threshold look like as text?

For every kNN pair (first k neighbours) of a fully run workspace, compare the cosine with the
word 5-shingle Jaccard of the two texts (the corpora README's near-duplicate measure). For
each threshold T it prints how many documents dedup would remove, the share of the pairs at
or above T that are textual near-copies (Jaccard >= 0.8, >= 0.5) and the share of all
Jaccard >= 0.8 kNN pairs they catch.

    python benchmarks/dedup_threshold.py WORKSPACE.duckdb [--k 10]
"""

from __future__ import annotations

import argparse
import re

import numpy as np

from icp_core import stages
from icp_core.dedup import find_duplicates
from icp_core.workspace import Workspace

THRESHOLDS = (0.80, 0.85, 0.90, 0.93, 0.95, 0.96, 0.97, 0.98, 0.99)
_WORD = re.compile(r"\w+")


def shingles(text: str, n: int = 5) -> set[int]:
    words = _WORD.findall(text.lower())
    if len(words) < n:
        return {hash(tuple(words))}
    return {hash(tuple(words[i : i + n])) for i in range(len(words) - n + 1)}


def share(mask: np.ndarray, selected: np.ndarray) -> str:
    return f"{mask[selected].mean():.1%}" if selected.any() else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workspace")
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    with Workspace(args.workspace, read_only=True) as ws:
        ids, sims = stages.read_neighbors(ws, args.k)
        texts = ws.arrow("SELECT text FROM documents ORDER BY doc").column("text").to_pylist()
    rows, cols = np.nonzero(ids >= 0)
    first, second, cosine = rows, ids[rows, cols], sims[rows, cols]
    unique = first < second  # each undirected pair once (both directions list the same cosine)
    keep = unique | ~np.isin(first * len(ids) + second, second * len(ids) + first)
    first, second, cosine = first[keep], second[keep], cosine[keep]
    sets = [shingles(text) for text in texts]
    jaccard = np.array(
        [
            len(sets[a] & sets[b]) / len(sets[a] | sets[b])
            for a, b in zip(first, second, strict=True)
        ]
    )
    copies = jaccard >= 0.8
    print(
        f"{args.workspace}: {len(ids)} docs, {len(first)} kNN pairs (k={args.k}), "
        f"{int(copies.sum())} with Jaccard >= 0.8"
    )
    print(
        "| T | docs removed | pairs >= T | Jaccard >= 0.8 | Jaccard >= 0.5 | median Jaccard | "
        "recall of Jaccard >= 0.8 |"
    )
    print("|---|---|---|---|---|---|---|")
    for threshold in THRESHOLDS:
        above = cosine >= threshold
        removed = int((find_duplicates(ids, sims, threshold) != np.arange(len(ids))).sum())
        n_above = int(above.sum())
        median = f"{np.median(jaccard[above]):.2f}" if n_above else "-"
        recall = f"{(above & copies).sum() / max(copies.sum(), 1):.1%}"
        print(
            f"| {threshold:.2f} | {removed} | {n_above} | {share(copies, above)} | "
            f"{share(jaccard >= 0.5, above)} | {median} | {recall} |"
        )


if __name__ == "__main__":
    main()
