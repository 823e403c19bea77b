"""Embedding options side by side: throughput (docs/s) and ordering quality on both corpora.

For each corpus (the Python docs and the Debian descriptions; --docs takes a random subset of
each, because the full model embeds 10-25 docs/s on two cores) and each embedding option:
embed the texts (model loading timed apart), build the exact kNN graph (k = 10) from the
option's vectors, order it with the default method (greedy-lk), and score the order with the
*default model's* vectors: the mean cosine of adjacent documents divided by the 2-matching
bound of the default model's own kNN graph (`metrics.path_upper_bounds`). So 100% of the
full model's share means "orders as well as the full model", as judged by the full model.
No dedup (the options would remove different documents).

Options: `full` (all-MiniLM-L6-v2 at its 256 tokens), `full-128` / `full-64` (the same cut
to the first 128 / 64 tokens, `--max-tokens`), `static` (`--model static`, model2vec
distilled from the full model and re-weighted: what `static_embed.static_model_path` builds),
`static-distil` (the same distil before re-weighting, what `--model static` was), `full-32`
(the full model on the first 32 tokens) and `rerank-32` (each document's 50 nearest by the
static model re-scored with `full-32` vectors, the best 10 kept: its time is both models').
Every option embeds the same texts in one run.

The full model's vectors of a subset are cached (`benchmarks/.cache/NAME-N-of-M-full.npy`):
a later run on the same subset measures the full model's speed on its first `--rate-docs`
documents only and scores with the cached vectors. `static@FOLDER` scores any saved model2vec
folder (a distil variant from `distil_static.py`).

    python benchmarks/bench_embed.py                      # 1,000 docs of each corpus, ~8 min
    python benchmarks/bench_embed.py --docs 2000 --options full,static
"""

from __future__ import annotations

import argparse
import gzip
import json
import time

import numpy as np
from _bench_util import CORPORA, CORPUS_FILES, VECTOR_CACHE, machine

from icp_core import embed, knn, metrics, static_embed, traverse
from icp_core.params import DEFAULT_ORDER

K = 10
OPTIONS = {
    "full": (None, None),
    "full-128": (None, 128),
    "full-64": (None, 64),
    "full-32": (None, 32),
    "static": ("static", None),
    "static-distil": ("static-distil", None),  # the plain distil, before STATIC_WEIGHTING
    "static-whole": ("static", 1_000_000),  # the static model on whole texts, not 512 tokens
}
# "static@FOLDER": any saved model2vec folder (a distil variant, benchmarks/distil_static.py)
FOLDER_OPTION = "static@"
# "rerank-N": the static model's RERANK_POOL nearest re-scored with the full model's vectors
# of the first N tokens (both options must be in the run: "full-N" is added when missing)
RERANK_OPTION = "rerank-"
RERANK_POOL = 50


def option_model(option: str) -> tuple[str | None, int | None]:
    """(--model, --max-tokens) of an option."""
    if option.startswith(FOLDER_OPTION):
        return option.removeprefix(FOLDER_OPTION), None
    if option == "static-distil":
        source = embed.resolve_model_path(None)
        key = embed.model_key(str(source), None)
        return str(static_embed.static_model_path(source, key, weighted=False)), None
    return OPTIONS[option]


def read_texts(name: str, n: int, seed: int = 0) -> tuple[list[str], int]:
    """n random texts of the corpus (all when n is 0), and how many the corpus holds."""
    path = CORPORA / CORPUS_FILES[name]
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as handle:
        texts = [json.loads(line)["text"] for line in handle]
    n_corpus = len(texts)
    if n and n < len(texts):
        pick = np.sort(np.random.default_rng(seed).choice(len(texts), n, replace=False))
        texts = [texts[i] for i in pick]
    return texts, n_corpus


def embed_with(option: str, texts: list[str]) -> tuple[np.ndarray, float, float, float]:
    """The option's vectors of texts, wall s and CPU s of embedding them, load s."""
    model_name, max_tokens = option_model(option)
    started = time.perf_counter()
    model = embed.load_model(str(embed.resolve_model_path(model_name)), "cpu", max_tokens)
    model.encode(texts[:4], batch_size=4)  # first-call set-up off the clock
    loaded = time.perf_counter() - started
    order = np.argsort([-len(t) for t in texts], kind="stable")  # as the stage does
    started, cpu = time.perf_counter(), time.process_time()
    vectors = embed.embed_texts(model, [texts[i] for i in order], batch_size=64)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    out = np.empty_like(vectors)
    out[order] = vectors
    return out, seconds, loaded, cpu


def reranked_graph(candidates: np.ndarray, scorer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's RERANK_POOL nearest by `candidates`, the K most similar of them by `scorer`."""
    pool, _ = knn.knn_search(candidates, RERANK_POOL, index="flat")
    sims = np.einsum("nd,nkd->nk", scorer, scorer[pool])
    best = np.argsort(-sims, axis=1, kind="stable")[:, :K]
    return np.take_along_axis(pool, best, 1), np.take_along_axis(sims, best, 1)


def ordering_share(
    vectors: np.ndarray,
    reference: np.ndarray,
    bound: float,
    graph: tuple[np.ndarray, np.ndarray] | None = None,
) -> float:
    """The share of `bound` that the default ordering of the kNN graph of `vectors` (or of
    `graph`, (ids, sims)) reaches, adjacent similarities taken from `reference`."""
    ids, sims = graph or knn.knn_search(vectors, K, index="flat")
    order = traverse.traverse(ids, sims, DEFAULT_ORDER)
    adjacent = np.einsum("nd,nd->n", reference[order[:-1]], reference[order[1:]]).mean()
    return float(adjacent / bound)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=1000, help="random subset per corpus; 0: all")
    parser.add_argument("--options", default=",".join([*OPTIONS, RERANK_OPTION + "32"]))
    parser.add_argument("--corpus", action="append", choices=sorted(CORPUS_FILES))
    parser.add_argument("--rate-docs", type=int, default=200, help="see the module docstring")
    args = parser.parse_args()
    options = ["full"] + [o for o in args.options.split(",") if o != "full"]
    for option in [o for o in options if o.startswith(RERANK_OPTION)]:
        scorer = "full-" + option.removeprefix(RERANK_OPTION)
        options += [o for o in ("static", scorer) if o not in options]
        OPTIONS.setdefault(scorer, (None, int(scorer.removeprefix("full-"))))
    print(f"machine: {machine()}")
    for name in args.corpus or ["pydocs", "debian"]:
        texts, n_corpus = read_texts(name, args.docs)
        chars = np.mean([len(t) for t in texts])
        print(f"\n{name}: {len(texts):,} documents (mean {chars:.0f} characters), k = {K}")
        # the full model's vectors of this subset, from an earlier run
        cache = VECTOR_CACHE / f"{name}-{len(texts)}-of-{n_corpus}-full.npy"
        reference = None
        if cache.exists():
            reference = np.load(cache)
            print(f"  the full model's vectors of these documents: {cache}")
        results = {}
        for option in [o for o in options if not o.startswith(RERANK_OPTION)]:
            # with the full model's vectors cached, its speed is measured on the first
            # rate_docs texts only
            sampled = option == "full" and reference is not None
            measured = texts[: args.rate_docs] if sampled else texts
            vectors, seconds, loaded, cpu = embed_with(option, measured)
            if sampled:
                vectors = reference
            results[option] = (vectors, len(measured) / seconds, len(measured) / cpu, loaded)
            print(
                f"  embedded {len(measured):,} with {option}: {seconds:.1f} s wall, "
                f"{cpu:.1f} s CPU",
                flush=True,
            )
        graphs = {}
        for option in [o for o in options if o.startswith(RERANK_OPTION)]:
            scorer = "full-" + option.removeprefix(RERANK_OPTION)
            static, full_n = results["static"], results[scorer]
            graphs[option] = reranked_graph(static[0], full_n[0])
            results[option] = (
                None,
                1 / (1 / static[1] + 1 / full_n[1]),
                1 / (1 / static[2] + 1 / full_n[2]),
                static[3] + full_n[3],
            )
        if reference is None:
            reference = results["full"][0]
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.save(cache, reference)
        ids, sims = knn.knn_search(reference, K, index="flat")
        bound = metrics.path_upper_bounds(ids, sims)["two_matching_bound"]
        full_share = ordering_share(reference, reference, bound)
        print(f"  2-matching bound (full model's graph): {bound:.4f}")
        print(
            "| option | docs/s | x full | docs/CPU-s | x full (CPU) | load s | share of bound "
            "| of full's share |"
        )
        print("|---|---|---|---|---|---|---|---|")
        full_rate, full_cpu_rate = results["full"][1], results["full"][2]
        for option in options:
            vectors, rate, cpu_rate, loaded = results[option]
            share = ordering_share(vectors, reference, bound, graphs.get(option))
            print(
                f"| {option} | {rate:,.0f} | {rate / full_rate:.1f}x | {cpu_rate:,.0f} | "
                f"{cpu_rate / full_cpu_rate:.1f}x | {loaded:.1f} | "
                f"{share:.1%} | {share / full_share:.1%} |",
                flush=True,
            )
        print(f"  load average now {machine().split('load average ')[1].split(', Python')[0]}")


if __name__ == "__main__":
    main()
