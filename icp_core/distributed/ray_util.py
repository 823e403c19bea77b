"""What every Ray stage module shares: the run's options, the Ray session, task results as
one-line errors, and Arrow <-> numpy conversions of the tables tasks pass around.

Granularity constants (each is a `RayOptions` field's default):
- BLOCK_DOCS: documents per embedding/search block, one search task each; 64k queries keep a
  task busy for seconds to minutes while its (64k, 32) neighbour lists stay under 20 MB.
- SHARD_DOCS: documents per kNN index shard (one task builds each; every search task reads
  all of them): 1M 384-d vectors are 1.5 GB as floats.
- PARTITION_DOCS: one order partition per this many kept documents: a 2M-document walk needs
  about 1 GB and a minute on one core.
- RANDOM_BUCKET_DOCS: one random-baseline bucket per this many kept documents; a task measures
  its buckets one at a time. Measuring one holds its documents' vectors, kNN lists and texts
  several times over (Arrow, numpy, Python strings, word ids): peak RSS, inputs and imports
  included, measured 0.78 GB at 50k documents with 10-character texts and 2.3 GB with the
  Python docs' texts (mean 714 words), so 25k documents stay near 1.2 GB with real texts (a
  2M bucket grew to 15.9 GB).
- CONTEXTS_PER_FILE: 10k contexts of 8192 tokens is about 300 MB of text per output file.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray

import icp_core
from icp_core.errors import IcpError

Report = Callable[[int, int], None]
ProgressFactory = Callable[[str], Report]

BLOCK_DOCS = 65_536
SHARD_DOCS = 1_048_576
PARTITION_DOCS = 2_000_000
RANDOM_BUCKET_DOCS = 25_000
CONTEXTS_PER_FILE = 10_000


def no_report(done: int, total: int) -> None:
    return None


def no_progress(stage: str) -> Report:
    return no_report


@dataclass(frozen=True)
class RayOptions:
    """How to run on Ray.

    address: a cluster to join (`ray://host:10001`, `host:6379`, `auto`); None starts a local one.
    partitions: P for the order stage; None: one per `PARTITION_DOCS` kept documents.
    block_docs, shard_docs, random_bucket_docs, contexts_per_file: work, index, random-baseline
        and output granularity.
    stitch: join the partitions' path fragments across partitions (off only to measure what
        it brings: benchmarks/bench_partitioned.py).
    init_args: extra `ray.init` arguments for a local cluster (tests cap CPUs and memory).
    """

    address: str | None = None
    partitions: int | None = None
    block_docs: int = BLOCK_DOCS
    shard_docs: int = SHARD_DOCS
    random_bucket_docs: int = RANDOM_BUCKET_DOCS
    contexts_per_file: int = CONTEXTS_PER_FILE
    stitch: bool = True
    init_args: dict[str, Any] = field(default_factory=dict)


@contextmanager
def ray_session(options: RayOptions) -> Iterator[None]:
    """Join `options.address` or start a local cluster; a session already open is reused (and
    left open)."""
    _quiet_ray_data()
    if ray.is_initialized():
        yield
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
    if options.address:
        # ship this checkout's icp_core so every node runs the driver's code (its dependencies,
        # faiss, torch, sentence-transformers, must be installed on the nodes)
        kwargs["runtime_env"] = {"py_modules": [str(Path(icp_core.__file__).parent)]}
        try:
            ray.init(address=options.address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise IcpError(
                f"--ray-address {options.address}: cannot join the cluster ({err}); check the "
                "address `ray start --head` printed, and for a cluster with token "
                "authentication (Ray's default) set RAY_AUTH_MODE=token with its token in "
                "~/.ray/auth_token or RAY_AUTH_TOKEN"
            ) from None
    else:
        ray.init(**kwargs, **options.init_args)
    try:
        yield
    finally:
        ray.shutdown()


def _quiet_ray_data() -> None:
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def cluster_cpus_gpus() -> tuple[int, int]:
    resources = ray.cluster_resources()
    return int(resources.get("CPU", 1)), int(resources.get("GPU", 0))


def icp_cause(err: BaseException) -> IcpError | None:
    """The IcpError a task raised, through Ray's and Ray Data's wrappers."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, IcpError) and not isinstance(current, ray.exceptions.RayError):
            return current
        current = getattr(current, "cause", None) or current.__cause__
    return None


def fetch(refs: Any) -> Any:
    """`ray.get` that turns a task's IcpError back into the one-line error it was."""
    try:
        return ray.get(refs)
    except Exception as err:
        cause = icp_cause(err)
        if cause is not None:
            raise IcpError(str(cause)) from None
        raise


def ref_list(result: Any, count: int) -> list:
    """A task's `num_returns` refs as a list (Ray returns a bare ref when count is 1)."""
    return [result] if count == 1 else list(result)


def fixed_lists(matrix: np.ndarray) -> pa.FixedSizeListArray:
    """(n, w) numpy -> Arrow fixed-size lists."""
    return pa.FixedSizeListArray.from_arrays(
        pa.array(np.ascontiguousarray(matrix).ravel()), matrix.shape[1]
    )


def to_matrix(column: pa.ChunkedArray | pa.Array, dtype: Any) -> np.ndarray:
    """Arrow (fixed-size) lists -> (n, w) numpy."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], column.type)
    n_rows = len(column)
    values = column.flatten().to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    return values.reshape(n_rows, -1) if n_rows else values.reshape(0, column.type.list_size)


def to_array(table: pa.Table, name: str, dtype: Any = np.int64) -> np.ndarray:
    """One column of a table as a numpy array of `dtype`."""
    return table.column(name).to_numpy().astype(dtype, copy=False)


def rows_for(table: pa.Table, docs: np.ndarray) -> pa.Table:
    """The rows of `table` for `docs`, in that order (each doc must be present)."""
    found = to_array(table, "doc")
    by_doc = np.argsort(found, kind="stable")
    return table.take(pa.array(by_doc[np.searchsorted(found[by_doc], docs)]))


def rows_by_group(group: np.ndarray, n_groups: int) -> list[np.ndarray]:
    """For each group 0..n_groups-1, the positions of its rows in `group`, in row order.

    >>> [rows.tolist() for rows in rows_by_group(np.array([1, 0, 1, 2]), 4)]
    [[1], [0, 2], [3], []]
    """
    order = np.argsort(group, kind="stable")
    bounds = np.searchsorted(group[order], np.arange(n_groups + 1))
    return [order[lo:hi] for lo, hi in itertools.pairwise(bounds)]
