"""The partitioned ordering's array functions (no Ray needed): grouping IVF lists, finding
leftovers, planning and applying their moves."""

from __future__ import annotations

import numpy as np
import pytest

from icp_core.distributed import partition


def block_graph(n_blocks: int, lists_per_block: int, seed: int = 0):
    """Lists in blocks: many edges inside a block, a few between blocks."""
    rng = np.random.default_rng(seed)
    n_lists = n_blocks * lists_per_block
    block = np.arange(n_lists) // lists_per_block
    first = rng.integers(0, n_lists, 4000)
    inside = rng.random(4000) < 0.9
    second = np.where(
        inside,
        block[first] * lists_per_block + rng.integers(0, lists_per_block, 4000),
        rng.integers(0, n_lists, 4000),
    )
    return first, second, np.ones(4000), block


class TestGroupLists:
    def test_finds_the_blocks(self):
        first, second, edges, block = block_graph(4, 10)
        groups = partition.group_lists(first, second, edges, np.full(40, 100), 4)
        assert sorted(np.unique(groups).tolist()) == [0, 1, 2, 3]
        cut = (groups[first] != groups[second]).mean()
        assert cut <= (block[first] != block[second]).mean() + 0.02
        assert np.bincount(groups).max() <= 1.1 * 1000

    def test_balanced_even_without_edges(self):
        sizes = np.arange(1, 33)
        groups = partition.group_lists(np.zeros(0, int), np.zeros(0, int), np.zeros(0), sizes, 4)
        loads = np.bincount(groups, weights=sizes, minlength=4)
        assert loads.max() - loads.min() <= sizes.max()

    @pytest.mark.parametrize("n_partitions", [1, 3, 8])
    def test_every_list_gets_a_partition(self, n_partitions):
        first, second, edges, _ = block_graph(3, 7, seed=n_partitions)
        sizes = np.random.default_rng(1).integers(0, 50, 21)
        groups = partition.group_lists(first, second, edges, sizes, n_partitions)
        assert groups.shape == (21,) and groups.min() >= 0 and groups.max() < n_partitions


def test_drop_removed_moves_neighbours_up():
    ids = np.array([[5, 7, 9, -1], [7, 7, 5, 2]])
    sims = np.array([[0.9, 0.8, 0.7, 0], [0.6, 0.5, 0.4, 0.3]], dtype=np.float32)
    kept_ids, kept_sims = partition.drop_removed(ids, sims, np.array([7]), 2)
    assert kept_ids.tolist() == [[5, 9], [5, 2]]
    np.testing.assert_allclose(kept_sims, [[0.9, 0.7], [0.4, 0.3]], rtol=1e-6)


class TestReattachment:
    def test_each_end_takes_one_leftover_best_pairs_first(self):
        plan = partition.plan_reattachment(
            single_doc=np.array([100, 101, 102]),
            single_partition=np.array([0, 1, 1]),
            candidate_ids=np.array([[7, 8], [7, -1], [3, 4]]),
            candidate_sims=np.array([[0.5, 0.4], [0.9, 0], [0.8, 0.7]]),
            end_doc=np.array([7, 8, 9]),
            end_partition=np.array([2, 2, 0]),
            end_is_head=np.array([False, True, False]),
        )
        placed = zip(plan.target.tolist(), plan.before.tolist(), strict=True)
        moves = dict(zip(plan.doc.tolist(), placed, strict=True))
        assert moves == {101: (7, False), 100: (8, True)}  # 102 has no chain end nearby
        assert plan.partition.tolist() == [2, 2] and sorted(plan.origin.tolist()) == [0, 1]

    def test_merge_moves_keeps_every_document_once(self):
        rng = np.random.default_rng(3)
        path = rng.permutation(50)
        leaving = path[[4, 17, 30]]
        stay = path[~np.isin(path, leaving)]
        arriving = np.array([100, 101, 102, 103])
        target = stay[[0, 5, 5, 20]]
        before = np.array([True, True, False, False])
        final = partition.merge_moves(path, leaving, arriving, target, before)
        docs = np.r_[path, arriving][final]
        assert sorted(docs.tolist()) == sorted(stay.tolist() + arriving.tolist())
        where = {d: i for i, d in enumerate(docs.tolist())}
        for doc, tgt, is_before in zip(arriving, target, before, strict=True):
            assert where[doc] == where[tgt] + (-1 if is_before else 1)


def test_path_ends_of_a_walk_without_edges_are_all_leftovers():
    ends = partition.path_ends(np.zeros(5, dtype=bool))
    assert ends.single.all() and not ends.head.any() and not ends.tail.any()
