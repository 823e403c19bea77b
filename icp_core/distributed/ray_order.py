"""Ray order: partition the kept documents, order each partition in a task, stitch the
fragments across partitions on the driver (the pure array work is in `partition.py`).

- Partitions group IVF lists that share many kNN edges (`partition.group_lists`); `--order
  random` uses seeded hash buckets instead (random parts of a random order are a random order).
- Route tasks split every searched block by partition: graph columns (what a walk reads) and
  content columns (what packing reads), so a walk never holds texts.
- A traverse task orders its partition with `traverse.traverse` on the partition's own graph
  (`traverse.restrict_graph`, as the local engine restricts the graph to kept documents) and cuts
  the path where a stronger kNN edge leads into another partition (`partition.cut_path`).
- The driver stitches fragment ends across partitions (`partition.plan_stitching`); each chain
  of fragments goes to the partition holding most of its documents, and pick tasks send that
  partition the other partitions' segments (`home_inputs`). At P = 1 nothing is cut, so the
  path is the local engine's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from icp_core import traverse
from icp_core.distributed import partition
from icp_core.distributed.ray_dedup import Removed
from icp_core.distributed.ray_knn import ListGraph, Searched
from icp_core.distributed.ray_util import (
    PARTITION_DOCS,
    Report,
    fetch,
    fixed_lists,
    ref_list,
    rows_for,
    to_array,
    to_matrix,
)
from icp_core.errors import IcpError
from icp_core.params import Params

GRAPH_COLUMNS = ["doc", "nbr_ids", "nbr_sims"]
CONTENT_COLUMNS = ["doc", "id", "text", "label", "vector"]


@dataclass
class Ordered:
    """Per partition: its path (graph columns) and its content tables (one per block); plus
    the layout of the fragments over the partitions that pack them."""

    paths: list[Any]
    content: list[list[Any]]
    stitching: partition.Stitching
    counts: dict[str, Any]


def resolve_partitions(requested: int | None, n_kept: int, n_lists: int) -> int:
    """P: the requested count (at most one per IVF list), else one per PARTITION_DOCS."""
    if requested is not None and requested < 1:
        raise IcpError(f"--partitions {requested}: must be at least 1")
    wanted = requested or math.ceil(n_kept / PARTITION_DOCS)
    return max(1, min(wanted, n_lists))


@ray.remote
def _route_task(
    table: pa.Table,
    list_partition: np.ndarray | None,
    removed: np.ndarray,
    n_partitions: int,
    seed: int,
) -> tuple:
    """Split one searched block by partition, dropping removed documents: P graph tables then
    P content tables. `list_partition`: each IVF list's partition, or None for hash buckets."""
    doc = to_array(table, "doc")
    if list_partition is None:
        home = partition.random_bucket(doc, seed, n_partitions)
    else:
        home = list_partition[to_array(table, "list")]
    part = np.where(np.isin(doc, removed), -1, home)
    masks = [pa.array(part == p) for p in range(n_partitions)]
    graph = [table.select(GRAPH_COLUMNS).filter(mask) for mask in masks]
    content = [table.select(CONTENT_COLUMNS).filter(mask) for mask in masks]
    return (*graph, *content)


@ray.remote(num_returns=2)
def _traverse_task(
    removed: np.ndarray, k: int, width: int, method: str, seed: int, *parts: pa.Table
) -> tuple:
    """Order one partition and cut the path into fragments; return the path (doc and kNN lists
    without removed documents, in path order, `width` wide) and a summary: the fragments and
    their end documents' kNN lists (first k), all the driver needs to stitch them."""
    table = pa.concat_tables(parts)
    table = table.take(pa.array(np.argsort(to_array(table, "doc"), kind="stable")))
    members = to_array(table, "doc")
    nbr_ids = to_matrix(table.column("nbr_ids"), np.int64)
    nbr_sims = to_matrix(table.column("nbr_sims"), np.float32)
    local = partition.localize(nbr_ids, members)
    walk_ids, walk_sims = traverse.restrict_graph(local, nbr_sims, np.arange(len(members)), k)
    order = traverse.traverse(walk_ids, walk_sims, method, seed)
    wide_ids, wide_sims = partition.drop_removed(nbr_ids, nbr_sims, removed, width)
    kept_ids, kept_sims = wide_ids[:, :k], wide_sims[:, :k]
    kept_local = partition.localize(kept_ids, members)
    # a random order is cut nowhere (its partitions are random buckets, not IVF lists)
    outside = (kept_ids >= 0) & (kept_local < 0) & (method != "random")
    starts, jumps = partition.cut_path(order, kept_local, kept_sims, outside)
    lengths = np.diff(np.r_[starts, len(order)])
    # per fragment its head, then its tail (one document for a fragment of one)
    ends = order[np.stack([starts, starts + lengths - 1], axis=1).ravel()]
    path = pa.table(
        {
            "doc": members[order],
            "kept_ids": fixed_lists(wide_ids[order]),
            "kept_sims": fixed_lists(wide_sims[order]),
        }
    )
    summary = {
        "fragment_start": starts,
        "fragment_length": lengths,
        "end_doc": members[ends],
        "end_ids": kept_ids[ends],
        "end_sims": kept_sims[ends],
        "n_docs": len(members),
        "jumps": jumps,
    }
    return path, summary


def order_stage(
    searched: list[Searched],
    lists: ListGraph,
    removed: Removed,
    params: Params,
    k_max: int,
    n_partitions: int,
    stitch: bool,
    report: Report,
) -> Ordered:
    """Group IVF lists into partitions, order each in a task, stitch their fragments."""
    n_lists = lists.n_lists
    list_sizes = lists.sizes - np.bincount(removed.lists, minlength=n_lists)
    list_partition = partition.group_lists(
        lists.key // n_lists, lists.key % n_lists, lists.edges, list_sizes, n_partitions
    )
    removed_ref = ray.put(np.sort(removed.doc))
    by_hash = params.order == "random"
    list_partition_ref = None if by_hash else ray.put(list_partition)
    # the near-copy filter of `original` drops more documents after stitching; the kNN lists
    # then move up past them (`ray_pack`), so the path keeps every stored column
    width = k_max if params.order == "original" else params.k
    routed = [
        _route_task.options(num_returns=2 * n_partitions).remote(
            s.ref, list_partition_ref, removed_ref, n_partitions, params.seed
        )
        for s in searched
    ]
    tasks = [
        _traverse_task.remote(
            removed_ref, params.k, width, params.order, params.seed, *[r[p] for r in routed]
        )
        for p in range(n_partitions)
    ]
    content = [[r[n_partitions + p] for r in routed] for p in range(n_partitions)]
    summaries = []
    for done, (_, summary_ref) in enumerate(tasks, start=1):
        summaries.append(fetch(summary_ref))
        report(done, n_partitions)

    def gathered(key: str) -> np.ndarray:
        return np.concatenate([s[key] for s in summaries])

    end_ids = gathered("end_ids")
    if not stitch or by_hash:  # only the partitions' own joins: each path stays whole
        end_ids = np.full_like(end_ids, -1)
    stitching = partition.plan_stitching(
        fragment_partition=np.repeat(
            np.arange(n_partitions), [len(s["fragment_start"]) for s in summaries]
        ),
        fragment_start=gathered("fragment_start"),
        fragment_length=gathered("fragment_length"),
        end_doc=gathered("end_doc"),
        end_ids=end_ids,
        end_sims=gathered("end_sims"),
        n_partitions=n_partitions,
    )
    sizes = [s["n_docs"] for s in summaries]
    packed = np.bincount(stitching.home, weights=stitching.length, minlength=n_partitions)
    counts = {
        "ordered": int(sum(sizes)),
        "partitions": n_partitions,
        "partition_docs_min": int(min(sizes)),
        "partition_docs_max": int(max(sizes)),
        "jumps_before_stitching": int(sum(s["jumps"] for s in summaries)),
        "fragments": int(sum(len(s["fragment_start"]) for s in summaries)),
        "stitched_links": stitching.links,
        "stitched_across_partitions": stitching.across,
        "moved_docs": stitching.moved_docs(),
        "packed_docs_min": int(packed.min()),
        "packed_docs_max": int(packed.max()),
    }
    return Ordered([t[0] for t in tasks], content, stitching, counts)


@ray.remote
def _pick_task(
    starts: list[np.ndarray],
    lengths: list[np.ndarray],
    reverses: list[np.ndarray],
    path: pa.Table,
    *content: pa.Table,
) -> tuple[pa.Table, ...] | pa.Table:
    """The rows (graph and content columns) of the path segments a partition sends away: one
    table per receiving partition, its segments laid out in the receiver's order."""
    table = pa.concat_tables(content)
    picked = []
    for start, length, reverse in zip(starts, lengths, reverses, strict=True):
        graph = path.take(pa.array(partition.expand_segments(start, length, reverse)))
        rows = rows_for(table, to_array(graph, "doc"))
        for name in CONTENT_COLUMNS[1:]:
            graph = graph.append_column(name, rows.column(name))
        picked.append(graph)
    return tuple(picked) if len(picked) > 1 else picked[0]


def home_inputs(ordered: Ordered) -> list[tuple]:
    """Per partition that packs (one whose chains all went elsewhere packs none): (home, its
    path, its segments (origin, start, length, reverse) in final order, its number of content
    tables, its content tables then the rows each sender picked for it, senders ascending)."""
    layout = ordered.stitching
    sent = layout.home != layout.origin
    picked = {}
    for origin in np.unique(layout.origin[sent]).tolist():
        leaving = sent & (layout.origin == origin)
        receivers = np.unique(layout.home[leaving]).tolist()
        masks = [leaving & (layout.home == home) for home in receivers]
        refs = _pick_task.options(num_returns=len(receivers)).remote(
            [layout.start[m] for m in masks],
            [layout.length[m] for m in masks],
            [layout.reverse[m] for m in masks],
            ordered.paths[origin],
            *ordered.content[origin],
        )
        picked.update(
            zip([(origin, h) for h in receivers], ref_list(refs, len(receivers)), strict=True)
        )
    homes = []
    for home in np.unique(layout.home).tolist():
        mine = layout.home == home
        senders = sorted(o for o, h in picked if h == home)
        segments = tuple(
            column[mine] for column in (layout.origin, layout.start, layout.length, layout.reverse)
        )
        parts = [*ordered.content[home], *[picked[(o, home)] for o in senders]]
        homes.append((home, ordered.paths[home], segments, len(ordered.content[home]), parts))
    return homes
