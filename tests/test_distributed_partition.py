"""The partitioned ordering's array functions (no Ray needed): grouping IVF lists, cutting
paths into fragments, stitching fragments across partitions and laying out the result."""

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


def reference_cut(order, local_ids, sims, outside):
    """cut_path step by step: a step is kept when it is at least as similar as every outside
    neighbour of its two documents (a jump: when they have none)."""
    starts, jumps = [0], 0
    for i in range(1, len(order)):
        x, y = order[i - 1], order[i]
        listed = [sims[x][j] for j in range(len(sims[x])) if local_ids[x][j] == y]
        listed += [sims[y][j] for j in range(len(sims[y])) if local_ids[y][j] == x]
        best_outside = max(
            [sims[d][j] for d in (x, y) for j in range(len(sims[d])) if outside[d][j]],
            default=-np.inf,
        )
        if not listed:
            jumps += 1
        if best_outside > max(listed, default=-np.inf):
            starts.append(i)
    return starts, jumps


def random_partition_graph(seed: int, n_docs: int = 60, k: int = 4):
    """kNN lists of one partition: local ids, -1 where none or where the neighbour lives in
    another partition (`outside`)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, n_docs, (n_docs, k))
    sims = np.sort(rng.random((n_docs, k)).astype(np.float32), axis=1)[:, ::-1].copy()
    outside = rng.random((n_docs, k)) < 0.2
    ids[outside | (rng.random((n_docs, k)) < 0.1)] = -1
    return ids, sims, outside


class TestCutPath:
    @pytest.mark.parametrize("seed", range(6))
    def test_matches_the_step_by_step_reference(self, seed):
        ids, sims, outside = random_partition_graph(seed)
        order = np.random.default_rng(seed + 100).permutation(len(ids))
        # follow the lists for a while so that the path has kNN steps to keep or cut
        order[1::3] = np.where(ids[order[0::3]][:, 0] >= 0, ids[order[0::3]][:, 0], order[1::3])
        order = np.unique(order, return_index=True)[1]
        order = np.r_[order, np.setdiff1d(np.arange(len(ids)), order)]
        starts, jumps = partition.cut_path(order, ids, sims, outside)
        assert (starts.tolist(), jumps) == reference_cut(order, ids, sims, outside)

    def test_keeps_a_path_of_strong_edges_whole(self):
        ids = np.array([[1, -1], [0, 2], [1, -1]])
        sims = np.array([[0.9, 0.3], [0.9, 0.8], [0.8, 0.2]], dtype=np.float32)
        outside = np.array([[False, True], [False, False], [False, True]])
        starts, jumps = partition.cut_path(np.array([0, 1, 2]), ids, sims, outside)
        assert starts.tolist() == [0] and jumps == 0

    def test_empty_and_single_paths(self):
        none = np.zeros((0, 3), dtype=np.int64)
        starts, jumps = partition.cut_path(np.zeros(0, np.int64), none, none, none.astype(bool))
        assert starts.tolist() == [] and jumps == 0
        one = np.full((1, 3), -1)
        # a jump between documents with no neighbour outside stays, as the local path has it
        starts, jumps = partition.cut_path(np.array([0, 1]), np.full((2, 3), -1), np.zeros((2, 3)),
                                           np.zeros((2, 3), bool))  # fmt: skip
        assert starts.tolist() == [0] and jumps == 1
        starts, jumps = partition.cut_path(np.array([0]), one, np.zeros((1, 3)), one > 0)
        assert starts.tolist() == [0] and jumps == 0


def test_expand_segments_matches_a_loop():
    rng = np.random.default_rng(5)
    start, length = rng.integers(0, 50, 20), rng.integers(0, 6, 20)
    reverse = rng.random(20) < 0.5
    expected = []
    for s, n, r in zip(start, length, reverse, strict=True):
        expected += list(range(s + n - 1, s - 1, -1)) if r else list(range(s, s + n))
    assert partition.expand_segments(start, length, reverse).tolist() == expected


def random_fragments(seed: int, n_partitions: int = 4):
    """Paths of a few partitions cut into fragments, ends with random kNN lists over the
    corpus's documents (doc = partition * 1000 + position)."""
    rng = np.random.default_rng(seed)
    part, start, length = [], [], []
    for p in range(n_partitions):
        size = int(rng.integers(1, 40))
        cuts = np.unique(np.r_[0, rng.integers(0, size, size // 3)])
        part += [p] * len(cuts)
        start += cuts.tolist()
        length += np.diff(np.r_[cuts, size]).tolist()
    part, start, length = map(np.array, (part, start, length))
    ends = np.stack([start, start + length - 1], axis=1).ravel()
    end_doc = np.repeat(part, 2) * 1000 + ends
    end_ids = rng.choice(end_doc, (len(end_doc), 5))
    end_ids[rng.random(end_ids.shape) < 0.3] = -1
    end_sims = rng.random(end_ids.shape)
    return part, start, length, end_doc, end_ids, end_sims


def laid_out_docs(plan, home):
    """The documents of one home partition in final order (doc = partition * 1000 + position)."""
    mine = plan.home == home
    docs = []
    for o, s, n, r in zip(
        plan.origin[mine], plan.start[mine], plan.length[mine], plan.reverse[mine], strict=True
    ):
        run = [o * 1000 + i for i in range(s, s + n)]
        docs += run[::-1] if r else run
    return docs


class TestPlanStitching:
    @pytest.mark.parametrize("seed", range(8))
    def test_every_document_laid_out_once(self, seed):
        part, start, length, end_doc, end_ids, end_sims = random_fragments(seed)
        plan = partition.plan_stitching(part, start, length, end_doc, end_ids, end_sims, 4)
        docs = [d for home in range(4) for d in laid_out_docs(plan, home)]
        expected = [
            p * 1000 + i
            for p, s, n in zip(part, start, length, strict=True)
            for i in range(s, s + n)
        ]
        assert sorted(docs) == sorted(expected)
        assert plan.home.tolist() == sorted(plan.home.tolist())
        assert 0 <= plan.across <= plan.links

    @pytest.mark.parametrize("seed", range(8))
    def test_stitched_links_are_listed_pairs_laid_side_by_side(self, seed):
        """Every join along a kNN list shows as two consecutive documents of a home that list
        one another, and the best listed pair of all (any two ends can take it) is one."""
        part, start, length, end_doc, end_ids, end_sims = random_fragments(seed)
        plan = partition.plan_stitching(part, start, length, end_doc, end_ids, end_sims, 4)
        listed = {
            frozenset((a, b))
            for a, row in zip(end_doc, end_ids, strict=True)
            for b in row
            if b >= 0
        }
        beside = set()
        for home in range(4):
            docs = laid_out_docs(plan, home)
            beside |= {frozenset(pair) for pair in zip(docs[:-1], docs[1:], strict=True)}
        assert len(listed & beside) >= plan.links

    def test_local_search_beats_greedy_matching(self):
        """Ends a-b (0.9), a-c and b-d (0.8): greedy takes a-b and strands c and d; the
        ejection chain c-a, drop a-b, b-d wins 0.7. Four fragments of two documents, one per
        partition; doc = partition * 1000 + position, the free ends at position 1."""
        part, start, length = np.arange(4), np.zeros(4, int), np.full(4, 2)
        end_doc = np.array([0, 1, 1000, 1001, 2000, 2001, 3000, 3001])
        a, b, c, d = 1, 1001, 2001, 3001
        end_ids = np.full((8, 2), -1)
        end_sims = np.zeros((8, 2))
        end_ids[1], end_sims[1] = [b, c], [0.9, 0.8]
        end_ids[3], end_sims[3] = [a, d], [0.9, 0.8]

        def beside(improve: bool) -> set:
            plan = partition.plan_stitching(
                part, start, length, end_doc, end_ids, end_sims, 4, improve
            )
            pairs = set()
            for home in range(4):
                docs = laid_out_docs(plan, home)
                pairs |= {frozenset(pair) for pair in zip(docs[:-1], docs[1:], strict=True)}
            return pairs

        assert frozenset((a, b)) in beside(improve=False)
        assert {frozenset((a, c)), frozenset((b, d))} <= beside(improve=True)

    def test_joins_mutual_neighbours_across_partitions(self):
        # partition 0: fragments [0..2] and [3]; partition 1: fragment [0..1]; the tail of
        # 0's first fragment (doc 2) and the head of 1's (doc 1000) list each other
        part, start, length = np.array([0, 0, 1]), np.array([0, 3, 0]), np.array([3, 1, 2])
        end_doc = np.array([0, 2, 3, 3, 1000, 1001])
        end_ids = np.array([[-1], [1000], [-1], [-1], [2], [-1]])
        end_sims = np.array([[0], [0.9], [0], [0], [0.9], [0]])
        plan = partition.plan_stitching(part, start, length, end_doc, end_ids, end_sims, 2)
        assert plan.links == 1 and plan.across == 1
        assert plan.home.tolist() == [0, 0, 0] and plan.moved_docs() == 2
        docs = laid_out_docs(plan, 0)
        assert abs(docs.index(2) - docs.index(1000)) == 1

    def test_without_candidates_the_paths_stay_whole(self):
        part, start, length, end_doc, end_ids, end_sims = random_fragments(3)
        plan = partition.plan_stitching(
            part, start, length, end_doc, np.full_like(end_ids, -1), end_sims, 4
        )
        assert plan.links == 0 and plan.moved_docs() == 0
        for home in range(4):
            size = int(length[part == home].sum())
            path = [home * 1000 + i for i in range(size)]
            assert laid_out_docs(plan, home) in (path, path[::-1])

    def test_no_fragments(self):
        none = np.zeros(0, dtype=np.int64)
        plan = partition.plan_stitching(
            none, none, none, none, np.zeros((0, 3), np.int64), np.zeros((0, 3)), 3
        )
        assert len(plan.home) == 0 and plan.links == 0 and plan.moved_docs() == 0

    def test_majority_home_breaks_ties_low(self):
        # one chain of partition 1's fragment (2 docs) and partition 0's (2 docs): home 0
        part, start, length = np.array([0, 1]), np.array([0, 0]), np.array([2, 2])
        end_doc = np.array([0, 1, 1000, 1001])
        end_ids = np.array([[-1], [1000], [1], [-1]])
        plan = partition.plan_stitching(part, start, length, end_doc, end_ids, np.ones((4, 1)), 2)
        assert plan.home.tolist() == [0, 0] and plan.moved_docs() == 2


def test_assembly_matches_a_loop():
    """Four partitions' paths of 20 cut into segments, laid out in a shuffled order at home 2."""
    rng = np.random.default_rng(11)
    home, n_path = 2, 20
    segments = []
    for o in range(4):
        cuts = np.unique(np.r_[0, rng.integers(1, n_path, 6)])
        segments += [(o, s, n) for s, n in zip(cuts, np.diff(np.r_[cuts, n_path]), strict=True)]
    segments = [segments[i] for i in rng.permutation(len(segments))]
    origin, start, length = (np.array(column) for column in zip(*segments, strict=True))
    reverse = rng.random(len(segments)) < 0.5
    runs = []
    for o, s, n, r in zip(origin, start, length, reverse, strict=True):
        run = [(o, i) for i in range(s, s + n)]
        runs.append(run[::-1] if r else run)
    # the rows: the home's own path, then what each sender laid out for it, senders ascending
    rows = [(home, i) for i in range(n_path)]
    for sender in (0, 1, 3):
        rows += [x for o, run in zip(origin, runs, strict=True) if o == sender for x in run]
    expected = [rows.index(x) for run in runs for x in run]
    assert partition.assembly(origin, start, length, reverse, home, n_path).tolist() == expected
