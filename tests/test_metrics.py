"""Metrics on tiny cases whose values are worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from icp_core import metrics
from icp_core.pack import Packing, pack_contexts

VECTORS = np.array([[1, 0], [0.6, 0.8], [0, 1], [0, 1]], dtype=np.float32)


def packing_of(contexts: list[list[int]], doc_tokens: np.ndarray) -> Packing:
    context = np.repeat(np.arange(len(contexts)), [len(c) for c in contexts])
    doc = np.array([d for c in contexts for d in c], dtype=np.int64)
    slot = np.concatenate([np.arange(len(c)) for c in contexts])
    return Packing(
        context, slot, doc, np.zeros_like(doc), doc_tokens[doc], np.ones_like(doc), len(contexts)
    )


def test_packing_terms_on_a_hand_checked_case():
    doc_tokens = np.array([3, 3, 3, 3])
    packing = packing_of([[0, 1, 2], [3]], doc_tokens)
    ids = np.array([[1], [0], [-1], [-1]])  # the only kNN edge: 0-1
    labels = np.array(["a", "a", "b", "b"], dtype=object)
    result, weights = metrics.packing_terms(packing, VECTORS, doc_tokens, 8, ids, labels, None)
    assert result["adjacent_sim_mean"] == pytest.approx((0.6 + 0.8) / 2)
    assert result["context_pairwise_sim_mean"] == pytest.approx((0.6 + 0.8 + 0.0) / 3)
    assert result["jump_rate"] == pytest.approx(0.5)
    assert result["label_agreement"] == pytest.approx(0.5)
    assert result["token_efficiency"] == pytest.approx(12 / 16)
    assert result["n_transitions"] == 2
    assert result["context_cache_gain"] is None
    assert weights == {
        "n_transitions": 2, "n_multi_contexts": 1, "n_contexts": 2, "n_cache_pieces": 0
    }  # fmt: skip


def test_cache_gain_by_hand():
    words = metrics.word_ids(["A b", "a"])
    # corpus: a twice, b once; p_uni(a) = (2 + 1) / (3 + 2); the cache before doc 1 holds a, b
    packing = packing_of([[0, 1]], np.array([2, 1]))
    expected = math.log(0.8 * 0.6 + 0.2 * 0.5) - math.log(0.6)
    assert metrics.context_cache_gain(packing, words) == pytest.approx(expected)


def test_cache_gain_matches_a_plain_reference():
    rng = np.random.default_rng(0)
    vocabulary = [f"w{i}" for i in range(30)]
    texts = [" ".join(rng.choice(vocabulary, rng.integers(1, 40))) for _ in range(60)]
    words = metrics.word_ids(texts)
    packing = pack_contexts(rng.permutation(60), np.full(60, 50), 400, seed=2)
    counts_all: dict[str, int] = {}
    for text in texts:
        for w in text.split():
            counts_all[w] = counts_all.get(w, 0) + 1
    total_all = sum(counts_all.values())

    def p_uni(w):
        return (counts_all[w] + 1) / (total_all + len(counts_all))

    gains = []
    for c in range(packing.n_contexts):
        cache: dict[str, int] = {}
        for d in packing.doc[packing.context == c]:
            doc_words = texts[d].split()
            if cache:
                size = sum(cache.values())
                gains.append(
                    np.mean(
                        [
                            math.log(0.8 * p_uni(w) + 0.2 * cache.get(w, 0) / size)
                            - math.log(p_uni(w))
                            for w in doc_words
                        ]
                    )
                )
            for w in doc_words:
                cache[w] = cache.get(w, 0) + 1
    assert metrics.context_cache_gain(packing, words) == pytest.approx(np.mean(gains))


def test_words_are_lowercased_and_capped():
    words = metrics.word_ids(["Hello, World_1! hello", "x " * 5000])
    assert words.offsets.tolist() == [0, 3, 2003]
    assert words.ids[0] == words.ids[2]


class TestEveryDocOnce:
    def test_true_for_a_real_packing(self):
        doc_tokens = np.array([5, 40, 0, 7])
        packing = pack_contexts(np.array([3, 1, 0, 2]), doc_tokens, 16, sep_tokens=1)
        assert metrics.every_doc_once(packing, np.arange(4), doc_tokens, 1)

    def test_false_when_a_piece_repeats_or_a_document_is_missing(self):
        doc_tokens = np.array([5, 40, 3])
        packing = pack_contexts(np.array([0, 1, 2]), doc_tokens, 16, sep_tokens=1)
        repeated = Packing(
            *(
                np.r_[a, a[:1]]
                for a in (
                    packing.context,
                    packing.slot,
                    packing.doc,
                    packing.start,
                    packing.end,
                    packing.sep,
                )
            ),
            packing.n_contexts,
        )
        assert not metrics.every_doc_once(repeated, np.arange(3), doc_tokens, 1)
        assert not metrics.every_doc_once(packing, np.arange(4), np.r_[doc_tokens, 2], 1)
        short = Packing(
            packing.context,
            packing.slot,
            packing.doc,
            packing.start,
            packing.end - 1,
            packing.sep,
            packing.n_contexts,
        )
        assert not metrics.every_doc_once(short, np.arange(3), doc_tokens, 1)


def test_upper_bounds_on_a_chain():
    # chain 0-1-2-3 with weights 0.9, 0.8, 0.7: the best path is the chain itself
    ids = np.array([[1, -1], [0, 2], [1, 3], [2, -1]])
    sims = np.array([[0.9, 0], [0.9, 0.8], [0.8, 0.7], [0.7, 0]], np.float32)
    bounds = metrics.path_upper_bounds(ids, sims)
    assert bounds["top1_bound"] == pytest.approx((0.9 + 0.9 + 0.8 + 0.7) / 4)
    assert bounds["two_matching_bound"] == pytest.approx((0.9 + 0.8 + 0.7) / 3)


def test_upper_bound_caps_a_star_at_two_edges_per_document():
    # a star: the centre can use only its two best edges
    ids = np.array([[1, 2, 3], [0, -1, -1], [0, -1, -1], [0, -1, -1]])
    sims = np.array([[0.9, 0.8, 0.7], [0.9, 0, 0], [0.8, 0, 0], [0.7, 0, 0]], np.float32)
    assert metrics.path_upper_bounds(ids, sims)["two_matching_bound"] == pytest.approx(1.7 / 3)
