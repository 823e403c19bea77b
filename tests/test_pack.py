"""Packing: boundaries, both policies, shuffling, against a plain-Python reference."""

from __future__ import annotations

import numpy as np
import pytest

from icp_core.errors import IcpError
from icp_core.pack import pack_contexts


def reference_split(order, doc_tokens, length, sep):
    """Concatenate doc tokens + separators and cut every `length` tokens."""
    stream = [(d, t) for d in order for t in range(doc_tokens[d] + sep)]
    contexts = [stream[i : i + length] for i in range(0, len(stream), length)]
    return [
        [(d, sum(1 for dd, _ in ctx if dd == d)) for d in dict.fromkeys(dd for dd, _ in ctx)]
        for ctx in contexts
    ]


def as_lists(packing):
    contexts = [[] for _ in range(packing.n_contexts)]
    for c, d, n in zip(packing.context, packing.doc, packing.tokens, strict=True):
        contexts[c].append((int(d), int(n)))
    return contexts


class TestSplit:
    def test_cut_every_l_tokens(self):
        packing = pack_contexts(np.array([0, 1]), np.array([3, 5]), 4, shuffle=False)
        # doc 0 (3 tokens + separator) fills context 0; doc 1 (5 + 1) spills into context 2
        assert packing.context.tolist() == [0, 1, 2]
        assert packing.doc.tolist() == [0, 1, 1]
        assert packing.start.tolist() == [0, 0, 4]
        assert packing.end.tolist() == [3, 4, 5]
        assert packing.sep.tolist() == [1, 0, 1]

    def test_matches_reference(self):
        rng = np.random.default_rng(0)
        for trial in range(50):
            n = int(rng.integers(1, 30))
            doc_tokens = rng.integers(0, 40, n)
            order = rng.permutation(n)
            length = int(rng.integers(2, 50))
            packing = pack_contexts(order, doc_tokens, length, "split", 1, shuffle=False)
            assert as_lists(packing) == reference_split(order, doc_tokens, length, 1), trial

    def test_document_exactly_l(self):
        packing = pack_contexts(np.array([0, 1]), np.array([7, 7]), 8, shuffle=False)
        assert as_lists(packing) == [[(0, 8)], [(1, 8)]]

    def test_document_longer_than_l(self):
        packing = pack_contexts(np.array([0]), np.array([20]), 8, shuffle=False)
        assert as_lists(packing) == [[(0, 8)], [(0, 8)], [(0, 5)]]
        assert packing.start.tolist() == [0, 8, 16] and packing.end.tolist() == [8, 16, 20]
        assert packing.sep.tolist() == [0, 0, 1]

    def test_empty_document_still_gets_its_separator(self):
        packing = pack_contexts(np.array([0, 1, 2]), np.array([2, 0, 2]), 16, shuffle=False)
        assert as_lists(packing) == [[(0, 3), (1, 1), (2, 3)]]

    def test_nothing_to_pack(self):
        packing = pack_contexts(np.zeros(0, np.int64), np.zeros(0, np.int64), 8)
        assert packing.n_contexts == 0 and len(packing.doc) == 0


class TestWhole:
    def test_a_document_that_does_not_fit_starts_a_new_context(self):
        packing = pack_contexts(np.array([0, 1, 2]), np.array([3, 5, 2]), 8, "whole", shuffle=False)
        assert as_lists(packing) == [[(0, 4)], [(1, 6)], [(2, 3)]]
        assert packing.context_tokens().tolist() == [4, 6, 3]

    def test_fills_while_it_fits(self):
        packing = pack_contexts(np.array([0, 1, 2]), np.array([3, 3, 5]), 8, "whole", shuffle=False)
        assert as_lists(packing) == [[(0, 4), (1, 4)], [(2, 6)]]

    def test_only_an_oversized_document_straddles(self):
        packing = pack_contexts(
            np.array([0, 1, 2]), np.array([2, 12, 2]), 8, "whole", shuffle=False
        )
        assert as_lists(packing) == [[(0, 3)], [(1, 8)], [(1, 5), (2, 3)]]


class TestShuffle:
    def test_shuffling_permutes_whole_contexts(self):
        order = np.arange(40)
        doc_tokens = np.full(40, 9)
        plain = pack_contexts(order, doc_tokens, 32, shuffle=False)
        shuffled = pack_contexts(order, doc_tokens, 32, shuffle=True, seed=1)
        assert sorted(map(tuple, as_lists(plain))) == sorted(map(tuple, as_lists(shuffled)))
        assert as_lists(plain) != as_lists(shuffled)
        assert (np.diff(shuffled.context) >= 0).all()
        firsts = np.r_[True, shuffled.context[1:] != shuffled.context[:-1]]
        assert (shuffled.slot[firsts] == 0).all()


@pytest.mark.parametrize("mode", ["split", "whole"])
def test_no_context_exceeds_l_and_every_token_is_packed_once(mode):
    rng = np.random.default_rng(5)
    doc_tokens = rng.integers(0, 300, 200)
    packing = pack_contexts(rng.permutation(200), doc_tokens, 128, mode, 2, seed=3)
    assert packing.context_tokens().max() <= 128
    covered = np.bincount(packing.doc, weights=packing.end - packing.start, minlength=200)
    assert np.array_equal(covered, doc_tokens)
    assert np.array_equal(
        np.bincount(packing.doc, weights=packing.sep, minlength=200), np.full(200, 2)
    )


def test_context_length_must_exceed_the_separator():
    with pytest.raises(IcpError, match="must exceed the separator"):
        pack_contexts(np.array([0]), np.array([3]), 1, sep_tokens=1)
    with pytest.raises(IcpError, match="unknown pack mode"):
        pack_contexts(np.array([0]), np.array([3]), 8, "zigzag")


def test_a_separator_left_over_for_the_next_context_is_no_content():
    # doc 0 fills context 0 exactly with its 7 tokens; its separator opens context 1
    packing = pack_contexts(np.array([0, 1]), np.array([7, 3]), 7, shuffle=False)
    assert as_lists(packing) == [[(0, 7)], [(0, 1), (1, 4)]]
    content = packing.content_pieces()
    assert content.doc.tolist() == [0, 1] and content.context.tolist() == [0, 1]
    assert content.n_contexts == 2


@pytest.mark.parametrize("seed", range(8))
def test_split_keeps_the_short_context_last_after_shuffling(seed):
    """Readers cut the token stream every L tokens: only the last context may be short."""
    rng = np.random.default_rng(seed)
    doc_tokens = rng.integers(1, 40, size=60)
    packing = pack_contexts(np.arange(60), doc_tokens, 32, "split", shuffle=True, seed=seed)
    filled = packing.context_tokens()
    assert (filled[:-1] == 32).all() and 0 < filled[-1] <= 32
    unshuffled = pack_contexts(np.arange(60), doc_tokens, 32, "split", shuffle=False)
    assert filled[-1] == unshuffled.context_tokens()[-1]
    # the full contexts really are shuffled
    first_docs = packing.doc[np.searchsorted(packing.context, np.arange(packing.n_contexts))]
    assert not (np.diff(first_docs[:-1]) >= 0).all()


def test_whole_contexts_are_all_shuffled():
    doc_tokens = np.full(40, 20)
    packing = pack_contexts(np.arange(40), doc_tokens, 32, "whole", shuffle=True, seed=1)
    first_docs = packing.doc[np.searchsorted(packing.context, np.arange(packing.n_contexts))]
    assert sorted(first_docs.tolist()) == list(range(40)) and first_docs[-1] != 39
