"""The Ray engine's driver memory at 2M documents: does it stay flat while the corpus grows?

Question: with the kNN index built and searched in tasks (the driver trains only the coarse
quantizer on a sample), how much memory does the driver need, next to the workers, and next to
the local engine, which holds every vector, the index and the kNN lists in one process?
Target: driver peak RSS < 1.5 GB at 2M 384-d vectors.

Input: synthetic clustered unit vectors (`--vectors FILE.npy`, written here when missing) and a
JSONL of short texts, one per vector (`d<i> c<cluster>`), run through every stage of
`icp run --engine ray` on a local Ray cluster (`--cpus`, 2 by default).

Peak RSS is the kernel's high-water mark (VmHWM), reset (`/proc/self/clear_refs`) when the
run starts, so writing the inputs does not count: the driver's own (reset again as each stage
starts, for a peak per stage), and each Ray process started under it (workers, raylet, GCS),
sampled every second; the workers' current RSS is also sampled per stage and per task name (a
worker's title is `ray::<task>` while it runs one). The object store's shared memory counts in
the RSS of every process that maps it, so the workers' figures overlap.

The local engine is measured at `--local-docs` documents (0: skipped) in a child process,
after the Ray run (so the Ray figures are in even if the local run is stopped); at another size
than `--docs` its figure there is the estimate N x (4 d + 48 + 12 k_max) bytes (vectors, the
IVF index's 4-bit PQ codes, kNN lists) plus what it held at the measured size beyond that.

Run (2 shared cores; 2M documents take tens of minutes, most of it the search):
    PYTHONPATH=. python benchmarks/bench_ray_scale.py --docs 2000000 --local-docs 1000000 \
        --partitions 4 --work /tmp/ray_scale
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

GB = 1024**3


def write_inputs(folder: Path, n_docs: int, dim: int, clusters: int, seed: int) -> tuple:
    """Clustered unit vectors (.npy, written in chunks) and one short text per vector."""
    vectors = folder / f"vectors-{n_docs}-{dim}.npy"
    corpus = folder / f"corpus-{n_docs}.jsonl"
    if vectors.exists() and corpus.exists():
        return corpus, vectors
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    out = np.lib.format.open_memmap(vectors, mode="w+", dtype=np.float32, shape=(n_docs, dim))
    with open(corpus, "w") as handle:
        for start in range(0, n_docs, 100_000):
            stop = min(start + 100_000, n_docs)
            cluster = rng.integers(0, clusters, stop - start)
            block = centres[cluster] + rng.normal(size=(stop - start, dim)).astype(np.float32)
            out[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
            handle.writelines(
                json.dumps({"id": f"d{start + i}", "text": f"d{start + i} c{c}"}) + "\n"
                for i, c in enumerate(cluster.tolist())
            )
    out.flush()
    del out
    return corpus, vectors


def _status(pid: int, field: str) -> int:
    """A /proc/PID/status field in bytes (0 when the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def reset_peak() -> None:
    """Restart this process's VmHWM from its current RSS (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


class PeakWatcher:
    """Samples the peak RSS (VmHWM) of every process under this one, every second, and the
    `ray::` workers' current RSS by stage and by task name.

    Its `progress` is the engine's progress factory: called as each stage starts, it closes
    the driver's peak of the stage before and resets it."""

    def __init__(self) -> None:
        self.peaks: dict[int, tuple[str, int]] = {}
        self.stage = ""
        self.driver_by_stage: dict[str, int] = {}
        self.workers_by_stage: dict[str, int] = {}
        self.by_task: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def progress(self, stage: str):
        from icp_core.distributed.ray_util import no_report

        self.close_stage()
        self.stage = stage
        reset_peak()
        return no_report

    def close_stage(self) -> None:
        if self.stage:
            self.driver_by_stage[self.stage] = _status(os.getpid(), "VmHWM")

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            for pid in _descendants(os.getpid()):
                peak = _status(pid, "VmHWM")
                try:
                    name = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
                except (FileNotFoundError, ProcessLookupError):
                    continue
                if peak:
                    old = self.peaks.get(pid, ("", 0))[1]
                    self.peaks[pid] = (name[:60], max(old, peak))
                if name.startswith("ray::"):
                    now = _status(pid, "VmRSS")
                    stage = self.stage
                    self.workers_by_stage[stage] = max(self.workers_by_stage.get(stage, 0), now)
                    self.by_task[name[:60]] = max(self.by_task.get(name[:60], 0), now)

    def __enter__(self) -> PeakWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_ray(
    corpus: Path, vectors: Path, out: Path, cpus: int, k: int, partitions: int | None
) -> dict:
    import ray

    from icp_core.distributed import ray_engine
    from icp_core.params import Params

    params = Params(k=k, vectors=str(vectors), context_length=2048)
    options = ray_engine.RayOptions(partitions=partitions)
    ray.init(num_cpus=cpus, include_dashboard=False, logging_level="ERROR")
    reset_peak()
    started = time.time()
    with PeakWatcher() as watcher:
        outcomes, manifest = ray_engine.run_pipeline(
            [str(corpus)], params, out, options, overwrite=True, progress=watcher.progress
        )
        watcher.close_stage()  # the last stage's peak includes writing the manifest
    seconds = time.time() - started
    driver_peak = max(watcher.driver_by_stage.values())
    ray.shutdown()
    workers = [peak for name, peak in watcher.peaks.values() if name.startswith("ray::")]
    others = {name: peak for name, peak in watcher.peaks.values() if not name.startswith("ray::")}
    return {
        "seconds": round(seconds, 1),
        "stages": {o.stage: round(o.seconds, 1) for o in outcomes},
        "knn": next(o.counts for o in outcomes if o.stage == "knn"),
        "pack": next(o.counts for o in outcomes if o.stage == "pack"),
        "driver_peak_gb": driver_peak / GB,
        "driver_peak_gb_by_stage": _in_gb(watcher.driver_by_stage),
        "worker_peak_gb_max": max(workers, default=0) / GB,
        "worker_rss_gb_by_stage": _in_gb(watcher.workers_by_stage),
        "worker_rss_gb_by_task": _in_gb(watcher.by_task),
        "worker_processes": len(workers),
        "other_ray_processes_gb": {name: round(p / GB, 2) for name, p in others.items()},
        "metrics": {
            key: manifest["metrics"][key]
            for key in ("n_kept", "adjacent_sim_mean", "random_adjacent_sim_mean", "jump_rate")
        },
    }


def _in_gb(by_name: dict[str, int]) -> dict[str, float]:
    return {name: round(value / GB, 2) for name, value in by_name.items()}


def run_local_child(corpus: Path, vectors: Path, n_docs: int, k: int, folder: Path) -> dict:
    """The local engine on the first n_docs documents, in a child process: its peak RSS."""
    import numpy as np

    small_vectors, small_corpus = vectors, corpus
    if n_docs < len(np.load(vectors, mmap_mode="r")):
        small_vectors = folder / f"local-vectors-{n_docs}.npy"
        small_corpus = folder / f"local-corpus-{n_docs}.jsonl"
        np.save(small_vectors, np.load(vectors, mmap_mode="r")[:n_docs])
        with open(corpus) as src, open(small_corpus, "w") as dst:
            for _, line in zip(range(n_docs), src, strict=False):
                dst.write(line)
    # the child's ru_maxrss would include this process's RSS at the fork: read its own VmHWM,
    # reset when it starts
    code = f"""
import sys, time
from pathlib import Path
Path("/proc/self/clear_refs").write_text("5")
from icp_core import pipeline
from icp_core.params import Params
from icp_core.workspace import Workspace
params = Params(k={k}, vectors={str(small_vectors)!r}, context_length=2048)
started = time.time()
with Workspace({str(folder / f"local-{n_docs}.duckdb")!r}) as ws:
    pipeline.ingest(ws, [{str(small_corpus)!r}], params)
    pipeline.run(ws, params)
hwm = [x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM")]
print(int(hwm[0].split()[1]) * 1024, time.time() - started)
"""
    (folder / f"local-{n_docs}.duckdb").unlink(missing_ok=True)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ
    )
    peak, seconds = done.stdout.split()[-2:]
    return {"docs": n_docs, "peak_gb": int(peak) / GB, "seconds": round(float(seconds), 1)}


def local_estimate(n_docs: int, dim: int, k_max: int, measured: dict | None) -> float:
    """What the local engine holds at n_docs: vectors (4 d), 4-bit PQ codes (48 bytes at
    384-d), kNN lists (12 k_max bytes) per document, plus the measured run's memory beyond
    those."""
    per_doc = 4 * dim + dim // 8 + 12 * k_max
    base = 0.0
    if measured:
        base = max(0.0, measured["peak_gb"] - measured["docs"] * per_doc / GB)
    return n_docs * per_doc / GB + base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=2_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--clusters", type=int, default=2000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--local-docs", type=int, default=0)
    parser.add_argument("--partitions", type=int, default=None, help="P [one per 2M kept docs]")
    parser.add_argument("--work", type=Path, default=Path("/tmp/ray_scale"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    corpus, vectors = write_inputs(args.work, args.docs, args.dim, args.clusters, args.seed)
    print(f"load average before: {os.getloadavg()}", flush=True)
    ray_result = run_ray(corpus, vectors, args.work / "out", args.cpus, args.k, args.partitions)
    print(json.dumps({"ray": ray_result}, indent=2), flush=True)
    local = None
    if args.local_docs:
        local = run_local_child(corpus, vectors, args.local_docs, args.k, args.work)
        print(json.dumps({"local_measured": local}, indent=2), flush=True)
    k_max = ray_result["knn"]["k_max"]
    estimate = round(local_estimate(args.docs, args.dim, k_max, local), 2)
    print(f"load average after: {os.getloadavg()}")
    measured = f"measured {local['peak_gb']:.2f} GB at {local['docs']:,} docs" if local else ""
    if not local or local["docs"] != args.docs:
        measured += f"{', ' if local else ''}estimated {estimate:.2f} GB at {args.docs:,}"
    print(
        f"\n{args.docs:,} docs x {args.dim}-d: driver peak {ray_result['driver_peak_gb']:.2f} GB, "
        f"largest worker {ray_result['worker_peak_gb_max']:.2f} GB "
        f"({ray_result['worker_processes']} worker processes), local engine {measured}"
    )


if __name__ == "__main__":
    main()
