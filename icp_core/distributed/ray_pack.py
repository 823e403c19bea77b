"""Ray pack: every home partition packs the chains of fragments it was given, measures them and
renders its context rows; the context ids are one global permutation; writer tasks write
`data/train-XXXXX-of-YYYYY.parquet`, each holding a range of the shuffled ids.

A partition's work is the local engine's, on its own documents: `tokenizer.count_tokens`,
`pack.pack_contexts` (unshuffled: the ids are shuffled globally by `pack.context_ids`),
`metrics.packing_terms` (exact means with their term counts, combined over partitions by
`metrics.combine_packing_metrics`, since contexts never span partitions) and
`export.packing_rows`. Before packing, `--order original` runs the authors' near-copy filter
(`dedup.near_copy_filter`) along each home's final path. `context_cache_gain` scores against
the corpus-wide unigram model, from per-partition word counts merged on the driver.

The random baseline is a real packing: the kept documents fall into seeded hash buckets
(`partition.random_bucket`, one per `RayOptions.random_bucket_docs` kept documents, so the
memory a bucket needs is bounded whatever the corpus size), each ordered and packed by
`stages.random_packing` and measured by `metrics.packing_terms`; with one bucket that is the
local baseline, number for number. The buckets are dealt to P groups (bucket mod P): each pack
task hands one table per group on, and one task per group measures its buckets one after the
other, so P x P tables pass between tasks however many buckets there are.

A document's kNN neighbours in other buckets are localized to -1 (`partition.localize`), which
leaves every term exact: only `jump_rate` reads the lists, and for a pair of the same context
(both in the bucket) it asks whether either lists the other, which the localized lists still
answer; its denominator is the bucket's within-context pairs, and each mean's term count
(`n_transitions`, `n_contexts`, ...) is summed over buckets by
`metrics.combine_packing_metrics`. What changes with B buckets is the packing itself: each
bucket ends in its own short context, so `token_efficiency` can drop by up to B - 1 partial
contexts, and adjacent documents are drawn from a bucket rather than the corpus, which is the
same distribution.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from icp_core import dedup, export, metrics, pack, stages, tokenizer
from icp_core.distributed import partition
from icp_core.distributed.ray_order import CONTENT_COLUMNS, Ordered, home_inputs
from icp_core.distributed.ray_util import (
    RayOptions,
    Report,
    fetch,
    fixed_lists,
    ref_list,
    rows_by_group,
    rows_for,
    to_array,
    to_matrix,
)
from icp_core.params import Params

Segments = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@dataclass
class Packed:
    """The context files, the partitions' summaries, the random buckets' `packing_terms`, the
    near-copy drops (doc, kept_doc, sim, reason, id, kept_id) and the stage counts."""

    names: list[str]
    summaries: list[dict[str, Any]]
    random: list[tuple]
    drops: dict[str, Any]
    counts: dict[str, Any]


def _assemble(
    path: pa.Table,
    segments: Segments,
    home: int,
    n_content: int,
    parts: tuple[pa.Table, ...],
    drops: np.ndarray,
    k: int,
) -> tuple[pa.Table, np.ndarray]:
    """A home partition's final path: its content rows in path order without the `drops`,
    and each document's first k kNN neighbours that are kept (global ids).

    `segments`: (origin, start, length, reverse) of its chains in final order; `parts`: its
    `n_content` content tables, then the rows each sender picked for it, senders ascending.
    """
    received = parts[n_content:]
    rows = partition.assembly(*segments, home, path.num_rows)
    graph = pa.concat_tables([path, *[r.select(path.column_names) for r in received]]).take(
        pa.array(rows)
    )
    if len(drops):
        graph = graph.filter(pa.array(~np.isin(to_array(graph, "doc"), drops)))
    table = rows_for(
        pa.concat_tables([*parts[:n_content], *[r.select(CONTENT_COLUMNS) for r in received]]),
        to_array(graph, "doc"),
    )
    kept_ids, _ = partition.drop_removed(
        to_matrix(graph.column("kept_ids"), np.int64),
        to_matrix(graph.column("kept_sims"), np.float32),
        drops,
        k,
    )
    return table, kept_ids


@ray.remote
def _near_copy_task(
    path: pa.Table, segments: Segments, home: int, n_content: int, *parts: pa.Table
) -> dict[str, Any]:
    """`dedup.near_copy_filter` along a home partition's final path: the drops, with ids."""
    table, _ = _assemble(path, segments, home, n_content, parts, np.zeros(0, np.int64), 1)
    _, drops = dedup.near_copy_filter(
        table.column("text").to_pylist(),
        np.arange(table.num_rows),
        to_matrix(table.column("vector"), np.float32),
    )
    doc = to_array(table, "doc")
    ids = table.column("id").to_pylist()
    return {
        **drops,
        "id": [ids[i] for i in drops["doc"]],
        "kept_id": [ids[i] for i in drops["kept_doc"]],
        "doc": doc[np.asarray(drops["doc"], dtype=np.int64)],
        "kept_doc": doc[np.asarray(drops["kept_doc"], dtype=np.int64)],
    }


@ray.remote
def _count_words_task(path: pa.Table, drops: np.ndarray, *content: pa.Table) -> Counter:
    """`metrics.word_counts` of the documents on one partition's path but not in `drops`."""
    table = pa.concat_tables(content)
    kept = np.setdiff1d(to_array(path, "doc"), drops)
    rows = table.filter(pa.array(np.isin(to_array(table, "doc"), kept)))
    return metrics.word_counts(rows.column("text").to_pylist())


@ray.remote
def _pack_task(
    path: pa.Table,
    segments: Segments,
    home: int,
    params: Params,
    has_labels: bool,
    corpus_counts: Counter,
    drops: np.ndarray,
    n_buckets: int,
    n_groups: int,
    n_content: int,
    *parts: pa.Table,
) -> tuple:
    """Pack one home partition's final path (see `_assemble`), measure it, render its rows.

    `corpus_counts`: the corpus-wide word counts; `drops`: sorted near-copy drops.
    Returns the context rows, a summary, then `n_groups` tables of what the random baseline
    reads about this partition's documents (`_random_task`), one per group of buckets.
    """
    table, kept_ids = _assemble(path, segments, home, n_content, parts, drops, params.k)
    # number the members in doc order, as the local engine numbers kept documents
    path_docs = to_array(table, "doc")
    by_doc = np.argsort(path_docs, kind="stable")
    table, kept_ids = table.take(pa.array(by_doc)), kept_ids[by_doc]
    members = path_docs[by_doc]
    order = np.empty(len(members), dtype=np.int64)
    order[by_doc] = np.arange(len(members))
    lm = stages.lm_tokenizer(params)
    sep_ids = np.asarray(lm.separator_ids(params.separator), dtype=np.int64)
    texts = table.column("text").to_pylist()
    token_ids, token_offsets = tokenizer.count_tokens(lm, texts)
    doc_tokens = np.diff(token_offsets)
    packing = pack.pack_contexts(
        order, doc_tokens, params.context_length, params.pack, len(sep_ids), shuffle=False
    )
    vectors = to_matrix(table.column("vector"), np.float32)
    # the local engine's stand-in for a missing label (stages.read_labels)
    filled = table.column("label").fill_null("\0missing") if has_labels else None
    labels = np.asarray(filled.to_pylist(), dtype=object) if filled is not None else None
    neighbors = partition.localize(kept_ids, members)
    words = metrics.word_ids(texts, corpus_counts=corpus_counts)
    measured, weights = metrics.packing_terms(
        packing, vectors, doc_tokens, params.context_length, neighbors, labels, words
    )
    filled_tokens = packing.context_tokens()
    summary = {
        # short contexts go last in the global order (a fixed-stride reader stays in step)
        "short_contexts": np.flatnonzero(filled_tokens < params.context_length)
        if params.pack == "split"
        else np.zeros(0, dtype=np.int64),
        "n_docs": len(members),
        "n_contexts": packing.n_contexts,
        "metrics": measured,
        "weights": weights,
        "every_doc_once": metrics.every_doc_once(
            packing, np.arange(len(members)), doc_tokens, len(sep_ids)
        ),
        "over_length": int((filled_tokens > params.context_length).sum()),
        "pieces": int(len(packing.doc)),
    }
    ids = np.asarray(table.column("id").to_pylist(), dtype=object)
    rows = export.packing_rows(lm, sep_ids, packing, token_ids, token_offsets, texts, ids)
    prefix = metrics.CACHE_MAX_WORDS * 64  # all that metrics.word_ids reads of a text
    baseline = pa.table(
        {
            "doc": members,
            "n_tokens": doc_tokens,
            "label": pa.array(labels.tolist() if labels is not None else [None] * len(members)),
            "vector": fixed_lists(vectors),
            "kept_ids": fixed_lists(kept_ids),
            "text": [text[:prefix] for text in texts],
        }
    )
    group = partition.random_bucket(members, params.seed, n_buckets) % n_groups
    return (
        rows,
        summary,
        *[baseline.take(pa.array(picked)) for picked in rows_by_group(group, n_groups)],
    )


@ray.remote
def _random_task(
    params: Params,
    corpus_counts: Counter,
    sep_tokens: int,
    has_labels: bool,
    n_buckets: int,
    *parts: pa.Table,
) -> tuple[list[tuple[dict[str, Any], dict[str, int]]], int, bool]:
    """The random baseline over one group of buckets, bucket by bucket (`_random_bucket`):
    `parts` are the pack tasks' rows for the group, read in place; one bucket's rows at a time
    are copied out, so the task's own memory is one bucket's.

    Returns each bucket's terms, the group's document count, and whether every bucket's
    packing holds each of its documents exactly once (`metrics.every_doc_once`)."""
    # per part, its rows ordered by bucket: a bucket's rows are taken from each part, since
    # a take from the concatenated parts would copy all of them every time
    by_part = []
    for part in parts:
        bucket = partition.random_bucket(to_array(part, "doc"), params.seed, n_buckets)
        order = np.argsort(bucket, kind="stable")
        by_part.append((part, order, bucket[order]))
    terms, n_docs, once = [], 0, True
    for b in np.unique(np.concatenate([sorted_bucket for *_, sorted_bucket in by_part])):
        pieces = []
        for part, order, sorted_bucket in by_part:
            lo, hi = np.searchsorted(sorted_bucket, [b, b + 1])
            pieces.append(part.take(pa.array(order[lo:hi])))
        rows = pa.concat_tables(pieces)
        rows = rows.take(pa.array(np.argsort(to_array(rows, "doc"), kind="stable")))
        measured, bucket_once = _random_bucket(rows, params, corpus_counts, sep_tokens, has_labels)
        terms.append(measured)
        n_docs += rows.num_rows
        once = once and bucket_once
    return terms, n_docs, once


def _random_bucket(
    table: pa.Table, params: Params, corpus_counts: Counter, sep_tokens: int, has_labels: bool
) -> tuple[tuple[dict[str, Any], dict[str, int]], bool]:
    """One bucket's `stages.random_packing` (seeded order and packing), measured like the
    contexts (`metrics.packing_terms`), and whether it holds each document exactly once.
    `table`: the bucket's rows in doc order."""
    members = to_array(table, "doc")
    doc_tokens = to_array(table, "n_tokens")
    packing = stages.random_packing(np.arange(len(members)), doc_tokens, params, sep_tokens)
    labels = np.asarray(table.column("label").to_pylist(), dtype=object) if has_labels else None
    once = len(np.unique(members)) == len(members) and metrics.every_doc_once(
        packing, np.arange(len(members)), doc_tokens, sep_tokens
    )
    terms = metrics.packing_terms(
        packing,
        to_matrix(table.column("vector"), np.float32),
        doc_tokens,
        params.context_length,
        partition.localize(to_matrix(table.column("kept_ids"), np.int64), members),
        labels,
        metrics.word_ids(table.column("text").to_pylist(), corpus_counts=corpus_counts),
    )
    return terms, once


@ray.remote
def _split_task(rows: pa.Table, context_ids: np.ndarray, per_file: int, n_files: int) -> Any:
    """Give a partition's contexts their global ids and split them by output file."""
    rows = rows.set_column(0, "context", pa.array(context_ids, pa.int64()))
    file_of = context_ids // per_file
    parts = tuple(rows.filter(pa.array(file_of == j)) for j in range(n_files))
    return parts if n_files > 1 else parts[0]


@ray.remote
def _write_task(path: str, *parts: pa.Table) -> int:
    table = pa.concat_tables(parts).sort_by("context")
    pq.write_table(table, path)
    return table.num_rows


def _near_copies(homes: list[tuple]) -> dict[str, Any]:
    """The `original` ordering's near-copy filter along every home partition's final path."""
    found = fetch(
        [
            _near_copy_task.remote(path, segments, home, n_content, *parts)
            for home, path, segments, n_content, parts in homes
        ]
    )
    drops = {key: [part[key] for part in found] for key in ("doc", "kept_doc")}
    merged = {key: np.concatenate(values) for key, values in drops.items()}
    for key in ("sim", "reason", "id", "kept_id"):
        merged[key] = [value for part in found for value in part[key]]
    return merged


def _no_drops() -> dict[str, Any]:
    none = np.zeros(0, np.int64)
    return {"doc": none, "kept_doc": none, "sim": [], "reason": [], "id": [], "kept_id": []}


def pack_stage(
    ordered: Ordered,
    params: Params,
    label_field: str | None,
    staging: Path,
    options: RayOptions,
    report: Report,
) -> Packed:
    """Drop `original`'s near copies along each partition's final path, pack every partition,
    shuffle context ids globally, write the context files, and measure the random baseline."""
    homes = home_inputs(ordered)
    drops = _near_copies(homes) if params.order == "original" else _no_drops()
    drops_ref = ray.put(np.sort(drops["doc"]))
    # the corpus-wide unigram model of context_cache_gain: counts from the partitions, merged
    corpus_counts: Counter = Counter()
    for counted in fetch(
        [
            _count_words_task.remote(path, drops_ref, *content)
            for path, content in zip(ordered.paths, ordered.content, strict=True)
        ]
    ):
        corpus_counts.update(counted)
    counts_ref = ray.put(corpus_counts)
    del corpus_counts
    n_kept = ordered.counts["ordered"] - len(drops["doc"])
    n_buckets = max(1, math.ceil(n_kept / options.random_bucket_docs))
    # one random-baseline task per pack partition, each measuring a group of buckets in turn:
    # P x P objects pass between the tasks, not P x n_buckets (20M at 1B)
    n_groups = min(len(homes), n_buckets)
    has_labels = label_field is not None
    tasks = [
        _pack_task.options(num_returns=2 + n_groups).remote(
            path,
            segments,
            home,
            params,
            has_labels,
            counts_ref,
            drops_ref,
            n_buckets,
            n_groups,
            n_content,
            *parts,
        )
        for home, path, segments, n_content, parts in homes
    ]
    summaries = []
    for done, task in enumerate(tasks, start=1):
        summaries.append(fetch(task[1]))
        report(done, len(tasks) + 1)
    sep_tokens = len(stages.separator_for(params))
    random_parts = [
        _random_task.remote(
            params, counts_ref, sep_tokens, has_labels, n_buckets, *[t[2 + g] for t in tasks]
        )
        for g in range(n_groups)
    ]
    offsets = np.cumsum([0] + [s["n_contexts"] for s in summaries])
    n_contexts = int(offsets[-1])
    short = np.zeros(n_contexts, dtype=bool)
    for summary, first in zip(summaries, offsets[:-1].tolist(), strict=True):
        short[first + summary["short_contexts"]] = True
    new_ids = pack.context_ids(short, params.shuffle, params.seed)
    per_file = options.contexts_per_file
    n_files = max(1, math.ceil(n_contexts / per_file))
    split = [
        ref_list(
            _split_task.options(num_returns=n_files).remote(
                rows, new_ids[offsets[p] : offsets[p + 1]], per_file, n_files
            ),
            n_files,
        )
        for p, (rows, *_) in enumerate(tasks)
    ]
    names = [f"train-{j:05d}-of-{n_files:05d}.parquet" for j in range(n_files)]
    (staging / export.DATA_FOLDER).mkdir()
    written = fetch(
        [
            _write_task.remote(
                str(staging / export.DATA_FOLDER / name), *[parts[j] for parts in split]
            )
            for j, name in enumerate(names)
        ]
    )
    report(len(tasks) + 1, len(tasks) + 1)
    counts = {
        "contexts": n_contexts,
        "files": n_files,
        "pieces": int(sum(s["pieces"] for s in summaries)),
        "written_rows": int(sum(written)),
        "near_copies_dropped": len(drops["doc"]),
    }
    groups = fetch(random_parts)
    random = [terms for bucket_terms, _, _ in groups for terms in bucket_terms]
    counts["random_buckets"] = len(random)
    # the baseline measured every kept document once: no bucket lost or repeated one
    counts["random_docs_once"] = bool(
        all(once for _, _, once in groups) and sum(n for _, n, _ in groups) == n_kept
    )
    return Packed(names, summaries, random, drops, counts)
