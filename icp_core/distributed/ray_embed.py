"""Ray embed: every document's unit vector, written to `FOLDER/block=J/*.parquet` (doc, vector),
block J holding documents J * block_docs .. (J + 1) * block_docs - 1.

- Computed: Ray Data over the ingest shards, an actor pool that loads the model once per actor
  (`embed.load_model`, `embed.embed_texts`; one GPU per actor when the cluster has GPUs).
  Ray Data does not keep row order, so every row carries its doc id.
- Imported (`--vectors`): one task per block reads its rows of the .npy
  (`embed.read_vector_rows`) or looks its documents' ids up in the Parquet file
  (`embed.read_vectors_file`), with the local engine's checks and messages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from icp_core import embed
from icp_core.distributed.ray_ingest import Corpus, Shard
from icp_core.distributed.ray_util import (
    RayOptions,
    Report,
    cluster_cpus_gpus,
    fetch,
    fixed_lists,
    icp_cause,
    to_array,
)
from icp_core.errors import IcpError
from icp_core.params import Params


def block_ranges(n_docs: int, block_docs: int) -> list[tuple[int, int]]:
    """(start, stop) of each block of documents."""
    return [(start, min(start + block_docs, n_docs)) for start in range(0, n_docs, block_docs)]


def block_dir(folder: Path, block: int) -> Path:
    return folder / f"block={block}"


def overlapping(shards: list[Shard], start: int, stop: int) -> list[Any]:
    """The ingest shards holding documents start .. stop - 1, flattened as (ref, first_doc)
    pairs: the trailing arguments of a task that calls `block_content`."""
    return [
        value
        for shard in shards
        if shard.first_doc < stop and shard.first_doc + shard.n_docs > start
        for value in (shard.ref, shard.first_doc)
    ]


def block_content(pieces: tuple[Any, ...], start: int, stop: int) -> pa.Table:
    """Documents start .. stop - 1 from the shard tables that hold them (`pieces`: table,
    first_doc, table, first_doc, ... as `overlapping` lists them, refs resolved)."""
    parts = []
    for table, first_doc in zip(pieces[0::2], pieces[1::2], strict=True):
        lo = max(start - first_doc, 0)
        hi = min(stop - first_doc, table.num_rows)
        if hi > lo:
            parts.append(table.slice(lo, hi - lo))
    return pa.concat_tables(parts)


class _Embedder:
    """A Ray Data actor: loads the model once, then embeds batches of (doc, text)."""

    def __init__(self, model_path: str, params: Params, block_docs: int, threads: int):
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.model = embed.load_model(model_path, params.device, params.max_tokens)
        self.batch_size = params.batch_size
        self.block_docs = block_docs

    def __call__(self, batch: pa.Table) -> pa.Table:
        vectors = embed.embed_texts(self.model, batch.column("text").to_pylist(), self.batch_size)
        doc = to_array(batch, "doc")
        return pa.table(
            {"doc": doc, "block": doc // self.block_docs, "vector": fixed_lists(vectors)}
        )


@ray.remote
def _import_vectors_task(
    path: str, folder: str, block: int, start: int, stop: int, *pieces: Any
) -> int:
    """Write block `block` of the user's vectors (rows start .. stop - 1 of a .npy in ingest
    order, or the ids of those documents looked up in a Parquet file)."""
    if path.endswith(".npy"):
        vectors = embed.read_vector_rows(path, start, stop)
    else:
        ids = np.asarray(block_content(pieces, start, stop).column("id").to_pylist(), object)
        vectors = embed.read_vectors_file(path, ids)
    target = block_dir(Path(folder), block)
    target.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {"doc": np.arange(start, stop, dtype=np.int64), "vector": fixed_lists(vectors)}
    )
    pq.write_table(table, target / "part-0.parquet")
    return len(vectors)


def embed_stage(
    corpus: Corpus, params: Params, options: RayOptions, folder: Path, report: Report
) -> dict[str, Any]:
    """Write every document's unit vector to `folder/block=J/*.parquet` (doc, vector)."""
    report(0, corpus.n_documents)
    if params.vectors:
        path = embed.check_vectors_file(params.vectors, corpus.n_documents)
        blocks = block_ranges(corpus.n_documents, options.block_docs)
        tasks = [
            _import_vectors_task.remote(
                str(path),
                str(folder),
                block,
                start,
                stop,
                *(overlapping(corpus.shards, start, stop) if path.suffix != ".npy" else []),
            )
            for block, (start, stop) in enumerate(blocks)
        ]
        for done, task in enumerate(tasks, start=1):
            fetch(task)
            report(min(done * options.block_docs, corpus.n_documents), corpus.n_documents)
        return {"embedded": 0, "imported": corpus.n_documents, "model_key": f"vectors:{path}"}
    _embed_with_ray_data(corpus, params, options, folder)
    report(corpus.n_documents, corpus.n_documents)
    model_path = embed.resolve_model_path(params.model)
    return {
        "embedded": corpus.n_documents,
        "imported": 0,
        "model_key": embed.model_key(str(model_path), params.max_tokens),
        # the actors' device: one GPU each when the cluster has GPUs (_embed_with_ray_data)
        "device": "cuda" if cluster_cpus_gpus()[1] and params.device in ("auto", "cuda") else "cpu",
        "max_tokens": params.max_tokens or embed.model_max_tokens(model_path),
    }


def _embed_with_ray_data(corpus: Corpus, params: Params, options: RayOptions, folder: Path) -> None:
    import ray.data

    model_path = str(embed.resolve_model_path(params.model))  # fails here, before any actor
    cpus, gpus = cluster_cpus_gpus()
    if gpus and params.device in ("auto", "cuda"):
        pool, actor_cpus, actor_gpus, threads = gpus, 1, 1, 0
    else:
        # leave a core for the readers; on big nodes give each model a few threads
        actor_cpus = 1 if cpus <= 4 else 4
        pool, actor_gpus, threads = max(1, (cpus - 1) // actor_cpus), 0, actor_cpus
    dataset = ray.data.from_arrow_refs([shard.ref for shard in corpus.shards])
    try:
        dataset.select_columns(["doc", "text"]).map_batches(
            _Embedder,
            fn_constructor_kwargs={
                "model_path": model_path,
                "params": params,
                "block_docs": options.block_docs,
                "threads": threads,
            },
            batch_format="pyarrow",
            batch_size=params.batch_size * 4,
            compute=ray.data.ActorPoolStrategy(size=pool),
            num_cpus=actor_cpus,
            num_gpus=actor_gpus,
        ).write_parquet(str(folder), partition_cols=["block"])
    except Exception as err:
        cause = icp_cause(err)
        if cause is not None:
            raise IcpError(str(cause)) from None
        raise
