"""Dedup: transitive grouping at a threshold, and the authors' near-copy text filter."""

from __future__ import annotations

import numpy as np
import pytest

from icp_core.dedup import (
    duplicates_among_pairs,
    find_duplicates,
    find_near_copies,
    near_copy_filter,
)
from icp_core.errors import IcpError


class TestFindDuplicates:
    def test_groups_are_transitive_and_keep_the_earliest(self):
        # 4~2 and 2~1 above threshold: {1, 2, 4} is one group kept as 1; 0-3 below threshold
        ids = np.array([[3, -1], [2, -1], [4, 1], [0, -1], [2, -1]])
        sims = np.array([[0.8, 0], [0.96, 0], [0.97, 0.96], [0.8, 0], [0.97, 0]], np.float32)
        assert find_duplicates(ids, sims, 0.95).tolist() == [0, 1, 1, 3, 1]

    def test_threshold_is_inclusive(self):
        ids = np.array([[1], [0]])
        sims = np.array([[0.9], [0.9]], np.float32)
        assert find_duplicates(ids, sims, 0.9).tolist() == [0, 0]
        assert find_duplicates(ids, sims, 0.91).tolist() == [0, 1]

    def test_one_sided_listing_is_enough(self):
        ids = np.array([[-1], [0]])
        sims = np.array([[0.0], [0.99]], np.float32)
        assert find_duplicates(ids, sims, 0.95).tolist() == [0, 0]

    def test_empty(self):
        assert find_duplicates(np.zeros((0, 3), int), np.zeros((0, 3), np.float32), 0.9).shape == (
            0,
        )

    @pytest.mark.parametrize("threshold", [0.0, -0.5, 1.5])
    def test_threshold_out_of_range(self, threshold):
        with pytest.raises(IcpError, match="no-dedup"):
            find_duplicates(np.array([[1], [0]]), np.ones((2, 1), np.float32), threshold)


class TestDuplicatesAmongPairs:
    @pytest.mark.parametrize("seed", range(5))
    def test_same_as_the_whole_graph(self, seed):
        """Only the pairs above the threshold (as the Ray search tasks return them) give the
        whole graph's duplicates and keepers."""
        rng = np.random.default_rng(seed)
        ids = rng.integers(-1, 200, size=(200, 6))
        sims = rng.uniform(0.8, 1.0, size=(200, 6)).astype(np.float32)
        kept_doc = find_duplicates(ids, sims, 0.97)
        rows, cols = np.nonzero((ids >= 0) & (sims >= 0.97))
        doc, kept = duplicates_among_pairs(rows, ids[rows, cols], sims[rows, cols], 0.97)
        expected = np.flatnonzero(kept_doc != np.arange(200))
        assert doc.tolist() == expected.tolist() and len(doc) > 10
        assert kept.tolist() == kept_doc[expected].tolist()

    def test_no_pairs(self):
        doc, kept = duplicates_among_pairs(np.zeros(0), np.zeros(0), np.zeros(0), 0.9)
        assert doc.shape == kept.shape == (0,)


class TestNearCopies:
    def test_drops_a_near_copy_of_the_previous_kept_document(self):
        base = "Package: libfoo1\nA library for parsing foo files quickly and safely. " * 2
        texts = [base, base.replace("libfoo1", "libfoo2"), "something else entirely " * 5, base]
        drop, copy_of = find_near_copies(texts, np.array([0, 1, 2, 3]))
        assert drop.tolist() == [False, True, False, False]  # 3 follows 2, not 0
        assert copy_of.tolist() == [-1, 0, -1, -1]

    def test_compares_with_the_previous_kept_one(self):
        text = "the same opening words of a document that repeats " * 3
        drop, copy_of = find_near_copies([text, text, text], np.array([2, 0, 1]))
        assert drop.tolist() == [False, True, True]
        assert copy_of.tolist() == [-1, 2, 2]

    def test_short_and_empty_prefixes_never_match(self):
        drop, _ = find_near_copies(["ab", "ab", ""], np.array([0, 1, 2]))
        assert not drop.any()

    def test_the_filter_records_each_drop_with_the_document_it_copies(self):
        text = "the same opening words of a document that repeats " * 3
        vectors = np.array([[1, 0], [0.6, 0.8], [0, 1]], np.float32)
        texts = [text, "other words entirely " * 5, text]
        order, drops = near_copy_filter(texts, np.array([2, 0, 1]), vectors)
        assert order.tolist() == [2, 1]
        assert drops["doc"] == [0] and drops["kept_doc"] == [2]
        assert drops["sim"] == pytest.approx([0.0])
        assert drops["reason"] == [
            "near copy of the previous document (first 100 characters, trigram Jaccard > 0.85;"
            " authors' filter)"
        ]
