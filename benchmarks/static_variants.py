"""Post-processed static models, scored as bench_embed.py scores: no transformer runs.

A static model's document vector is the (normalised) mean of its tokens' rows in a table, so
any re-weighting of tokens or linear post-processing of the mean can be folded into the
table itself. This script tries such tables built from `--model static`'s distil and
statistics of the corpus being embedded (all of it, not only the scored subset):

- `plain`: the distil as shipped (PCA 256, model2vec's SIF weights from a Zipf guess of each
  token's frequency by its *rank in the vocabulary*, which for BERT's vocabulary is not a
  frequency order: "the" and "." get weights near 0.5);
- `zipf-words-A`: corpus-free SIF weights a / (a + p), p from Zipf's law over each token's
  rank in the *word* part of BERT's vocabulary (`static_embed.word_rank_probabilities`:
  from "the", id 1996, the ids follow frequency);
- `sif-A`: SIF weights a / (a + p(token)) with p counted in the corpus (Arora et al. 2017);
- `+zipf-center`: the Zipf-weighted mean token row subtracted (corpus-free centring);
  `zipf-words-0.001+zipf-center` is what `--model static` now ships
  (`static_embed.reweighted_table`);
- `+center`: the corpus's mean document vector subtracted (the component every document
  shares, which is why static cosines run high);
- `+top-D`: also the D main directions of the corpus's centred document vectors removed
  ("all-but-the-top", Mu & Viswanath 2018);
- `cross:` prefix: the statistics counted on the *other* corpus, to see whether they carry
  over to a corpus they were not fitted on.

Each row: the ordering's share of the 2-matching bound (exact kNN k = 10, greedy-lk, scored
with the full model's vectors, the same subset and cache as bench_embed.py: run that first),
that share over the full model's own share, the mean overlap of each document's 10
neighbours with the full model's 10 (more stable than the share on 500 documents), and
the CPU seconds to count the corpus's tokens and build the table.

    python benchmarks/bench_embed.py --docs 500 --options full,static   # builds the cache
    python benchmarks/static_variants.py --docs 500
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from _bench_util import CORPUS_FILES, VECTOR_CACHE, machine
from bench_embed import K, ordering_share, read_texts

from icp_core import embed, knn, metrics, static_embed

SIF_BASELINE = 1e-4  # model2vec's default coefficient, what the shipped distil used


def token_counts(model, texts: list[str]) -> sp.csr_matrix:
    """(documents x vocabulary) counts of the tokens the static model reads of each text."""
    cut = [t[: static_embed.STATIC_MAX_TOKENS * model.median_token_length] for t in texts]
    ids = model.tokenize(cut)
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter((i for x in ids for i in x), dtype=np.int64, count=int(lengths.sum()))
    rows = np.repeat(np.arange(len(ids)), lengths)
    shape = (len(ids), model.embedding.shape[0])
    return sp.csr_matrix((np.ones(len(flat), np.float32), (rows, flat)), shape=shape)


def doc_vectors(counts: sp.csr_matrix, table: np.ndarray) -> np.ndarray:
    """Unit-length mean token rows (zero rows stay zero), as model2vec encodes."""
    sums = np.asarray(counts @ table, dtype=np.float32)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return sums / np.maximum(norms, np.float32(1e-12))


def corpus_probabilities(counts: sp.csr_matrix) -> np.ndarray:
    """Each token's add-one smoothed share of the tokens in counts."""
    per_token = np.asarray(counts.sum(axis=0)).ravel() + 1.0
    return per_token / per_token.sum()


def sif_weighted(unweighted: np.ndarray, p: np.ndarray, a: float) -> np.ndarray:
    """Token rows weighted a / (a + p) (smooth inverse frequency)."""
    return unweighted * (a / (a + p))[:, None].astype(np.float32)


def remove_common(table: np.ndarray, counts: sp.csr_matrix, top: int) -> np.ndarray:
    """The table less the corpus's mean document vector and (top > 0) its `top` main
    directions, taken over the documents' mean token rows (before normalising): subtracting
    a vector from every row subtracts it from every mean, and projecting the rows projects
    their means, so the result is again a table."""
    lengths = np.asarray(counts.sum(axis=1)).ravel()
    means = np.asarray(counts @ table)[lengths > 0] / lengths[lengths > 0, None]
    centre = means.mean(axis=0)
    out = table - centre
    if top:
        _, _, vt = np.linalg.svd(means - centre, full_matrices=False)
        out = out - (out @ vt[:top].T) @ vt[:top]
    return out.astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=500, help="the subset bench_embed scored")
    parser.add_argument("--model", default="static", help="static or a model2vec folder")
    parser.add_argument("--sif", default="1e-3,1e-4,1e-5", help="SIF coefficients to try")
    parser.add_argument("--top", default="1,2,4,8", help="main directions to remove")
    args = parser.parse_args()
    from model2vec import StaticModel
    from model2vec.distill.inference import compute_weights

    if args.model == "static":  # the plain distil that the variants start from
        source = embed.resolve_model_path(None)
        key = embed.model_key(str(source), None)
        path = static_embed.static_model_path(source, key, weighted=False)
    else:
        path = embed.resolve_model_path(args.model)
    model = StaticModel.from_pretrained(str(path), force_download=False)
    table = np.asarray(model.embedding, dtype=np.float32)
    unweighted = table / compute_weights(len(table), SIF_BASELINE)[:, None].astype(np.float32)
    print(f"machine: {machine()}\nmodel: {path}")
    corpora = sorted(CORPUS_FILES)
    counted = {}
    for name in corpora:
        texts, _ = read_texts(name, 0)
        subset, _ = read_texts(name, args.docs)
        started = time.process_time()
        counted[name] = (token_counts(model, texts), token_counts(model, subset))
        rate = len(texts) / (time.process_time() - started)
        print(f"{name}: {len(texts):,} documents tokenised at {rate:,.0f} docs/CPU-s")
    for name in corpora:
        cache = next(VECTOR_CACHE.glob(f"{name}-{args.docs}-of-*-full.npy"), None)
        if cache is None:
            sys.exit(f"no full-model vectors of {name} in {VECTOR_CACHE}: run bench_embed.py first")
        reference = np.load(cache)
        ids, sims = knn.knn_search(reference, K, index="flat")
        bound = metrics.path_upper_bounds(ids, sims)["two_matching_bound"]
        full_share = ordering_share(reference, reference, bound)
        print(f"\n{name}: {args.docs} documents, bound {bound:.4f}, full model {full_share:.1%}")
        print("| variant | share of bound | of full's share | top-10 overlap | build CPU s |")
        print("|---|---:|---:|---:|---:|")
        other = next(c for c in corpora if c != name)
        for label, stats_from, build in variants(args, unweighted, table, model.tokens):
            corpus_counts, subset_counts = counted[other if stats_from else name]
            started = time.process_time()
            built = build(corpus_counts)
            cpu = time.process_time() - started
            vectors = doc_vectors(counted[name][1], built)
            share = ordering_share(vectors, reference, bound)
            own, _ = knn.knn_search(vectors, K, index="flat")
            overlap = np.mean([len(set(a) & set(b)) / K for a, b in zip(own, ids, strict=True)])
            prefix = "cross:" if stats_from else ""
            print(
                f"| {prefix}{label} | {share:.1%} | {share / full_share:.1%} | "
                f"{overlap:.3f} | {cpu:.1f} |",
                flush=True,
            )
        print(f"  load average now {machine().split('load average ')[1].split(', Python')[0]}")


def variants(args, unweighted: np.ndarray, table: np.ndarray, tokens: list[str]):
    """(label, statistics from the other corpus, table builder from corpus counts)."""
    words = (embed.resolve_model_path(None) / "vocab.txt").read_text().splitlines()
    zipf = static_embed.word_rank_probabilities(tokens, words)
    yield "plain", False, lambda counts: table
    yield "plain+center", False, lambda counts: remove_common(table, counts, 0)
    for a in (float(x) for x in args.sif.split(",")):
        weighted = sif_weighted(unweighted, zipf, a)
        yield f"zipf-words-{a:g}", False, lambda counts, t=weighted: t
        yield (
            f"zipf-words-{a:g}+zipf-center",
            False,
            lambda c, a=a: static_embed.reweighted_table(unweighted, zipf, a),
        )
        yield f"zipf-words-{a:g}+center", False, lambda c, t=weighted: remove_common(t, c, 0)
        yield f"zipf-words-{a:g}+top-1", False, lambda c, t=weighted: remove_common(t, c, 1)
    for a in (float(x) for x in args.sif.split(",")):

        def sif(counts: sp.csr_matrix, a: float = a) -> np.ndarray:
            return sif_weighted(unweighted, corpus_probabilities(counts), a)

        yield f"sif-{a:g}", False, sif
        yield f"sif-{a:g}+center", False, lambda c, sif=sif: remove_common(sif(c), c, 0)
        for top in (int(x) for x in args.top.split(",")):
            yield f"sif-{a:g}+top-{top}", False, lambda c, s=sif, n=top: remove_common(s(c), c, n)
        yield f"sif-{a:g}+center", True, lambda c, sif=sif: remove_common(sif(c), c, 0)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
