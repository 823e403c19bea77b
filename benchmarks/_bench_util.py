"""Shared helpers of the benchmark scripts: machine description, timers, peak-RSS probe.

Timings are reported as wall and CPU seconds: the benchmark machine is shared, and for a
single-threaded step CPU time is the figure that load on the other core disturbs least.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The shared corpora sit next to the project in the team's layout; --corpora points elsewhere.
CORPORA = Path(os.environ.get("ICP_CORPORA", ROOT.parent / "shared" / "corpora"))
CORPUS_FILES = {"pydocs": "pydocs.jsonl", "debian": "debian_pkgdesc.jsonl.gz"}
# Embeddings of the corpora (rows in file order) are computed once by the tool and kept here.
VECTOR_CACHE = Path(os.environ.get("ICP_BENCH_CACHE", ROOT / "benchmarks" / ".cache"))


def corpus_path(name: str, corpora: Path = CORPORA) -> Path:
    """The file of a shared corpus ("pydocs" or "debian"); exits with a message if missing."""
    path = Path(corpora) / CORPUS_FILES[name]
    if not path.exists():
        sys.exit(f"{path}: corpus not found; pass --corpora DIR or set ICP_CORPORA")
    return path


def corpus_vectors(name: str, corpora: Path = CORPORA, cache: Path = VECTOR_CACHE) -> Path:
    """A .npy of the corpus's embeddings (packaged model, rows in file order): `cache/NAME.npy`,
    made by the tool's own embed stage the first time (minutes on a laptop CPU)."""
    target = Path(cache) / f"{name}.npy"
    if target.exists():
        return target
    from icp_core import pipeline, stages
    from icp_core.params import Params
    from icp_core.workspace import Workspace

    Path(cache).mkdir(parents=True, exist_ok=True)
    print(f"embedding {name} once into {target} (cached for later runs)", file=sys.stderr)
    params = Params()
    with Workspace(Path(cache) / f"{name}-embed.duckdb") as ws:
        pipeline.ingest(ws, [str(corpus_path(name, corpora))], params)
        pipeline.run(ws, params, until="embed")
        import numpy as np

        np.save(target, stages.read_vectors(ws))
    return target


def machine() -> str:
    """One line: date, CPU model and count, memory, load average, Python."""
    model = "unknown CPU"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {model}, {os.cpu_count()} CPUs, "
        f"{memory_gib:.0f} GiB, load average {load}, Python {platform.python_version()}"
    )


def load_average() -> float:
    return os.getloadavg()[0]


def timed(function: Callable[[], Any], repeat: int = 1) -> tuple[Any, dict[str, float]]:
    """Run `function` `repeat` times; returns its last result and min/median wall and CPU s."""
    walls, cpus = [], []
    result = None
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        result = function()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return result, {
        "wall_min": min(walls),
        "wall_median": statistics.median(walls),
        "cpu_min": min(cpus),
        "cpu_median": statistics.median(cpus),
    }


def memory_mib() -> dict[str, float]:
    """This process's VmHWM (peak RSS), VmRSS, RssAnon and RssFile in MiB (Linux)."""
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                values[key] = int(rest.split()[0]) / 1024
    return values


def reset_peak_rss() -> None:
    """Reset VmHWM to the current RSS (writing 5 to /proc/self/clear_refs, Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


@contextmanager
def peak_rss_delta() -> Any:
    """Yields a dict that, on exit, holds `peak_delta_mib`: peak RSS during the block minus
    RSS at its start. RSS counts every page the process touched, numba's allocations
    included (tracemalloc would miss those)."""
    reset_peak_rss()
    before = memory_mib()
    out: dict[str, float] = {}
    try:
        yield out
    finally:
        after = memory_mib()
        out.update(
            rss_before_mib=before["VmRSS"],
            peak_mib=after["VmHWM"],
            peak_delta_mib=after["VmHWM"] - before["VmRSS"],
            rss_file_after_mib=after["RssFile"],
        )


def ratio(numerator: float, denominator: float) -> str:
    return f"{numerator / denominator:.2f}x" if denominator > 0 else "n/a"
