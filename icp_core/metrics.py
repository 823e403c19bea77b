"""Metrics: how related the documents inside each context are (definitions in DESIGN.md).

All functions take arrays: a `Packing`, unit vectors indexed by document, the undirected kNN
graph as CSR, labels and word ids. `stages.run_metrics` gathers them from the workspace.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from icp_core import _kernels
from icp_core.pack import Packing
from icp_core.traverse import are_knn_edges, restrict_graph

CACHE_LAMBDA = 0.8
CACHE_MAX_WORDS = 2000
_WORD = re.compile(r"[a-z0-9_]+")


@dataclass(frozen=True)
class WordIds:
    """Each document's first words as ids: doc d = ids[offsets[d]:offsets[d+1]]; log_p_uni is
    the add-one smoothed corpus unigram log-probability of every word id."""

    ids: np.ndarray
    offsets: np.ndarray
    log_p_uni: np.ndarray


def _words(text: str, max_words: int) -> list[str]:
    return _WORD.findall(text[: max_words * 64].lower())[:max_words]


def word_counts(texts: list[str], max_words: int = CACHE_MAX_WORDS) -> Counter:
    """How often each word occurs in the texts' first `max_words` words: merged (added) over
    disjoint sets of documents, the corpus-wide counts `word_ids` takes as `corpus_counts`."""
    counts: Counter = Counter()
    for text in texts:
        counts.update(_words(text, max_words))
    return counts


def word_ids(
    texts: list[str],
    max_words: int = CACHE_MAX_WORDS,
    corpus_counts: Mapping[str, int] | None = None,
) -> WordIds:
    """Lower-cased `[a-z0-9_]+` words (first `max_words` per text) mapped to ids.

    The unigram model is fitted on `texts`, or on `corpus_counts` (`word_counts` of the whole
    corpus, these texts among them) when a partition of the corpus is scored on its own.
    """
    vocabulary: dict[str, int] = {}
    flat: list[int] = []
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    for index, text in enumerate(texts):
        words = _words(text, max_words)
        flat.extend(vocabulary.setdefault(word, len(vocabulary)) for word in words)
        offsets[index + 1] = len(flat)
    ids = np.asarray(flat, dtype=np.int64)
    if corpus_counts is None:
        counts = np.bincount(ids, minlength=len(vocabulary)).astype(np.float64)
        total, n_words = counts.sum(), len(vocabulary)
    else:
        counts = np.asarray([corpus_counts[word] for word in vocabulary], dtype=np.float64)
        total, n_words = float(sum(corpus_counts.values())), len(corpus_counts)
    log_p_uni = np.log((counts + 1.0) / (total + n_words))
    return WordIds(ids, offsets, log_p_uni)


def adjacent_pairs(packing: Packing) -> tuple[np.ndarray, np.ndarray]:
    """Documents of consecutive pieces inside the same context: (previous, next)."""
    packing = packing.content_pieces()
    same = packing.context[1:] == packing.context[:-1]
    return packing.doc[:-1][same], packing.doc[1:][same]


def pair_similarity(vectors: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Cosine similarity of row pairs of unit vectors, computed in blocks to bound memory."""
    out = np.empty(len(first), dtype=np.float32)
    block = 65536
    for start in range(0, len(first), block):
        stop = start + block
        out[start:stop] = np.einsum(
            "ij,ij->i", vectors[first[start:stop]], vectors[second[start:stop]]
        )
    return out


def context_pairwise_similarity(packing: Packing, vectors: np.ndarray) -> np.ndarray:
    """Per context with at least two documents, the mean pairwise cosine of its documents.

    With unit vectors: sum over pairs i<j of v_i.v_j = (|sum v|^2 - n) / 2.
    """
    packing = packing.content_pieces()
    if len(packing.context) == 0:
        return np.zeros(0)
    # pieces are sorted by context, so each context is one contiguous block of rows
    _, first_piece = np.unique(packing.context, return_index=True)
    rows = vectors[packing.doc].astype(np.float64)
    sums = np.add.reduceat(rows, first_piece, axis=0)
    sizes = np.diff(np.r_[first_piece, len(packing.context)])
    norms = np.einsum("ij,ij->i", sums, sums)
    self_dots = np.add.reduceat(np.einsum("ij,ij->i", rows, rows), first_piece)
    multi = sizes >= 2
    return (norms[multi] - self_dots[multi]) / (sizes[multi] * (sizes[multi] - 1))


def cache_gains(packing: Packing, words: WordIds) -> np.ndarray:
    """The gain (nats/word) of every piece that has a cache: preceding documents of its
    context (the terms context_cache_gain averages)."""
    packing = packing.content_pieces()
    gains = _kernels.cache_gain_per_piece(
        packing.context, packing.doc, words.ids, words.offsets, words.log_p_uni, CACHE_LAMBDA
    )
    return gains[np.isfinite(gains)]


def context_cache_gain(packing: Packing, words: WordIds) -> float | None:
    """Mean gain (nats/word) from a cache of the preceding documents of the same context."""
    gains = cache_gains(packing, words)
    return float(gains.mean()) if len(gains) else None


def every_doc_once(
    packing: Packing, kept: np.ndarray, doc_tokens: np.ndarray, sep_tokens: int
) -> bool:
    """Every kept document appears, in pieces that cover its tokens exactly once, and no other
    document appears."""
    if len(packing.doc) == 0:
        return len(kept) == 0
    by_doc = np.lexsort((packing.start, packing.doc))
    doc = packing.doc[by_doc]
    start = packing.start[by_doc]
    end = packing.end[by_doc]
    first = np.r_[True, doc[1:] != doc[:-1]]
    last = np.r_[doc[1:] != doc[:-1], True]
    continuous = (start[~first] == end[:-1][~first[1:]]).all()
    sep_total = np.bincount(doc, weights=packing.sep[by_doc])
    return bool(
        np.array_equal(np.unique(doc), np.sort(kept))
        and len(np.unique(kept)) == len(kept)
        and (start[first] == 0).all()
        and (end[last] == doc_tokens[doc[last]]).all()
        and continuous
        and (sep_total[doc[last]] == sep_tokens).all()
    )


# each mean packing_terms measures and the count of terms it averages (in its weights)
MEAN_WEIGHTS = {
    "adjacent_sim_mean": "n_transitions",
    "context_pairwise_sim_mean": "n_multi_contexts",
    "jump_rate": "n_transitions",
    "label_agreement": "n_transitions",
    "token_efficiency": "n_contexts",
    "context_cache_gain": "n_cache_pieces",
}


def packing_terms(
    packing: Packing,
    vectors: np.ndarray,
    doc_tokens: np.ndarray,
    context_length: int,
    neighbor_ids: np.ndarray,
    labels: np.ndarray | None,
    words: WordIds | None,
) -> tuple[dict[str, float | int | None], dict[str, int]]:
    """The per-packing metrics of DESIGN.md, and how many terms each of their means averages:
    the weights that combine the metrics of packings of disjoint documents into their union's
    (`combine_packing_metrics`).

    Args:
        packing: the contexts.
        vectors: (N, d) unit vectors by document.
        doc_tokens: (N,) token counts by document.
        context_length: L.
        neighbor_ids: (N, k) kNN lists by document (-1 = none), for jump_rate.
        labels: (N,) labels by document, or None.
        words: word ids for context_cache_gain, or None to skip it.

    Returns:
        (metrics, weights): the metrics by name (n_transitions included); the term counts
        n_transitions, n_multi_contexts, n_contexts and n_cache_pieces.
    """
    first, second = adjacent_pairs(packing)
    adjacent = pair_similarity(vectors, first, second) if len(first) else np.zeros(0)
    pairwise = context_pairwise_similarity(packing, vectors)
    if len(first):
        jump_rate = float(1.0 - are_knn_edges(first, second, neighbor_ids).mean())
    else:
        jump_rate = None
    label_agreement = None
    if labels is not None and len(first):
        label_agreement = float((labels[first] == labels[second]).mean())
    doc_tokens_packed = int((packing.end - packing.start).sum())
    capacity = packing.n_contexts * context_length
    gains = cache_gains(packing, words) if words is not None else np.zeros(0)
    measured = {
        "adjacent_sim_mean": float(adjacent.mean()) if len(adjacent) else None,
        "context_pairwise_sim_mean": float(pairwise.mean()) if len(pairwise) else None,
        "jump_rate": jump_rate,
        "label_agreement": label_agreement,
        "token_efficiency": doc_tokens_packed / capacity if capacity else None,
        "context_cache_gain": float(gains.mean()) if len(gains) else None,
        "n_transitions": int(len(first)),
    }
    weights = {
        "n_transitions": int(len(first)),
        "n_multi_contexts": int(len(pairwise)),
        "n_contexts": int(packing.n_contexts),
        "n_cache_pieces": int(len(gains)),
    }
    return measured, weights


def combine_packing_metrics(
    parts: list[tuple[dict[str, float | int | None], dict[str, int]]],
) -> dict[str, float | int | None]:
    """The metrics of a packing made of packings of disjoint documents (no context spans
    two), from each part's `packing_terms`: every mean weighted by its term count."""
    combined: dict[str, float | int | None] = {}
    for key, weight in MEAN_WEIGHTS.items():
        pairs = [(m[key], w[weight]) for m, w in parts if m.get(key) is not None and w[weight]]
        total = sum(w for _, w in pairs)
        combined[key] = sum(v * w for v, w in pairs) / total if total else None
    combined["n_transitions"] = int(sum(w["n_transitions"] for _, w in parts))
    return combined


@dataclass(frozen=True)
class KeptScoring:
    """What the metrics read about the kept documents, renumbered 0..M-1 in document order:
    their kNN lists among themselves (first k) and their word ids."""

    kept: np.ndarray
    local_of: np.ndarray
    neighbor_ids: np.ndarray
    words: WordIds

    @classmethod
    def build(
        cls, ids: np.ndarray, sims: np.ndarray, kept: np.ndarray, k: int, texts: list[str]
    ) -> KeptScoring:
        """`ids`, `sims`: stored (N, k_max) lists; `texts`: every document's text by doc."""
        local_of = np.full(len(ids), -1, dtype=np.int64)
        local_of[kept] = np.arange(len(kept))
        sub_ids, _ = restrict_graph(ids, sims, kept, k)
        return cls(kept, local_of, sub_ids, word_ids([texts[d] for d in kept]))

    def measure(
        self,
        packing: Packing,
        vectors: np.ndarray,
        doc_tokens: np.ndarray,
        context_length: int,
        labels: np.ndarray | None,
    ) -> dict[str, float | int | None]:
        """The `packing_terms` metrics of a packing over the kept documents (arrays by doc)."""
        local = Packing(
            packing.context,
            packing.slot,
            self.local_of[packing.doc],
            packing.start,
            packing.end,
            packing.sep,
            packing.n_contexts,
        )
        measured, _ = packing_terms(
            local,
            vectors[self.kept],
            doc_tokens[self.kept],
            context_length,
            self.neighbor_ids,
            labels[self.kept] if labels is not None else None,
            self.words,
        )
        return measured


def path_upper_bounds(
    neighbor_ids: np.ndarray, neighbor_sims: np.ndarray
) -> dict[str, float | None]:
    """Upper bounds on a path's mean transition similarity along kNN edges.

    loose: the mean top-1 neighbour similarity. tight: the maximum-weight fractional
    2-matching of the undirected kNN graph (x_e in [0, 1], at most 2 per document) divided by
    N - 1, solved with HiGHS; a path is a 2-matching, so no ordering along kNN edges beats it.
    """
    from scipy.optimize import linprog
    from scipy.sparse import coo_matrix

    from icp_core.traverse import build_graph

    ids = np.asarray(neighbor_ids)
    sims = np.asarray(neighbor_sims, dtype=np.float64)
    n_docs = ids.shape[0]
    if n_docs < 2:
        return {"top1_bound": None, "two_matching_bound": None}
    valid_top1 = ids[:, 0] >= 0
    top1 = float(sims[valid_top1, 0].mean()) if valid_top1.any() else None
    indptr, nbr, weight = build_graph(ids, sims.astype(np.float32))
    rows = np.repeat(np.arange(n_docs), np.diff(indptr))
    upper = rows < nbr  # each undirected edge once
    a, b, w = rows[upper], nbr[upper].astype(np.int64), weight[upper].astype(np.float64)
    if len(w) == 0:
        return {"top1_bound": top1, "two_matching_bound": 0.0}
    edge = np.arange(len(w))
    incidence = coo_matrix(
        (np.ones(2 * len(w)), (np.r_[a, b], np.r_[edge, edge])), shape=(n_docs, len(w))
    ).tocsr()
    result = linprog(
        -w, A_ub=incidence, b_ub=np.full(n_docs, 2.0), bounds=(0.0, 1.0), method="highs"
    )
    bound = float(-result.fun) / (n_docs - 1) if result.status == 0 else None
    return {"top1_bound": top1, "two_matching_bound": bound}


# the per-packing metrics the report lists for the contexts (the random packing's in "random")
REPORTED = (
    "adjacent_sim_mean",
    "context_pairwise_sim_mean",
    "jump_rate",
    "token_efficiency",
    "label_agreement",
    "context_cache_gain",
)


def report(
    counts: Mapping[str, int | bool],
    current: Mapping[str, object],
    random: Mapping[str, object],
    label_field: str | None,
    parameters: Mapping[str, object],
) -> dict[str, object]:
    """The metrics JSON both engines print and store (`icp metrics --json`).

    Args:
        counts: n_documents, n_rejected, n_duplicates, n_kept, n_contexts, every_doc_once.
        current, random: the `packing_terms` metrics of the contexts and of a random packing.
        parameters: order, k, context_length, pack, dedup_threshold.
    """
    result: dict[str, object] = dict(counts)
    result["adjacent_sim_mean"] = current["adjacent_sim_mean"]
    result["random_adjacent_sim_mean"] = random["adjacent_sim_mean"]
    result.update({key: current[key] for key in REPORTED if key != "adjacent_sim_mean"})
    result["label_field"] = label_field
    result.update(parameters)
    result["random"] = dict(random)
    return result
