"""Ray dedup: the search tasks return the pairs at or above the threshold; the driver groups
them with `dedup.duplicates_among_pairs` (the local engine's `find_duplicates` over just the
documents that have a pair), so every group keeps its earliest document, as locally. The
removed documents' and their keepers' vectors are fetched to record each pair's cosine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import ray

from icp_core import dedup, metrics
from icp_core.distributed.ray_knn import Searched
from icp_core.distributed.ray_util import fetch, to_array, to_matrix
from icp_core.params import Params


@dataclass
class Removed:
    """Duplicates: `doc` removed, `kept_doc` the document it copies, `sim` their cosine."""

    doc: np.ndarray
    kept_doc: np.ndarray
    sim: np.ndarray
    ids: list[str]
    kept_ids: list[str]
    lists: np.ndarray  # the IVF list of each removed document


@ray.remote
def _take_docs(table: pa.Table, docs: np.ndarray) -> pa.Table:
    rows = np.flatnonzero(np.isin(to_array(table, "doc"), docs))
    return table.take(pa.array(rows, pa.int64())).select(["doc", "id", "vector"])


def dedup_stage(searched: list[Searched], params: Params) -> Removed:
    """The duplicates among the blocks' near-duplicate pairs, with ids, cosines and lists."""
    none = np.zeros(0, np.int64)
    if params.dedup_threshold is None:
        return Removed(none, none, np.zeros(0, np.float32), [], [], none)

    def gathered(key: str) -> np.ndarray:
        return np.concatenate([s.summary[key] for s in searched])

    first, second = gathered("dup_doc"), gathered("dup_neighbor")
    doc, kept_doc = dedup.duplicates_among_pairs(
        first, second, gathered("dup_sim"), params.dedup_threshold
    )
    if not len(doc):
        return Removed(none, none, np.zeros(0, np.float32), [], [], none)
    # each pair names both documents' IVF lists
    paired, at_pair = np.unique(np.concatenate([first, second]), return_index=True)
    lists = np.concatenate([gathered("dup_list"), gathered("dup_neighbor_list")])[at_pair]
    wanted = np.union1d(doc, kept_doc)
    rows = pa.concat_tables(fetch([_take_docs.remote(s.ref, wanted) for s in searched]))
    found = to_array(rows, "doc")
    by_doc = np.argsort(found)
    vectors = to_matrix(rows.column("vector"), np.float32)[by_doc]
    ids = np.asarray(rows.column("id").to_pylist(), dtype=object)[by_doc]
    at = np.searchsorted(found[by_doc], doc)
    kept_at = np.searchsorted(found[by_doc], kept_doc)
    return Removed(
        doc,
        kept_doc,
        metrics.pair_similarity(vectors, at, kept_at),
        ids[at].tolist(),
        ids[kept_at].tolist(),
        lists[np.searchsorted(paired, doc)],
    )
