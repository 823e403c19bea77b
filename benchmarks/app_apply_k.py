"""How long "change k, Apply" takes to re-run the pipeline on the bundled sample, three ways:

- in-process: `pipeline.run` in this (warm) process: the floor, but the app cannot do this
  (the server would hold the DuckDB write lock and clash with its own readers);
- cold worker: `icp job SPEC` in a fresh process (imports and compiled kernels load each time);
- warm worker: what the app does, a worker started ahead of time (app/jobs.py JobRunner).

Prints the median seconds of each and its ratio to in-process. The browser adds the page
redraw on top (see the e2e test's printed "contexts view updated" time).

    PYTHONPATH=. python benchmarks/app_apply_k.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from app.jobs import JobRunner
from icp_core import pipeline
from icp_core.params import Params
from icp_core.sample import build_sample_workspace
from icp_core.workspace import Workspace

K_VALUES = (5, 7, 9, 11, 13, 15, 6, 8)


def in_process(workspace: Path, k: int) -> float:
    with Workspace(workspace) as ws:
        params = Params.from_dict(ws.load_settings()).updated(k=k)
        started = time.perf_counter()
        pipeline.run(ws, params)
        return time.perf_counter() - started


def cold_worker(workspace: Path, k: int, folder: Path) -> float:
    spec = folder / "spec.json"
    spec.write_text(json.dumps(_spec(workspace, k, folder)))
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "icp_core.cli", "job", str(spec)], check=True)
    return time.perf_counter() - started


def warm_worker(runner: JobRunner, workspace: Path, k: int) -> float:
    runner.prepare()
    time.sleep(4)  # a person takes longer than this between two clicks
    started = time.perf_counter()
    runner.start(_spec(workspace, k, None))
    status = runner.wait(workspace, timeout_s=120)
    assert status["state"] == "done", status["error"]
    return time.perf_counter() - started


def _spec(workspace: Path, k: int, folder: Path | None) -> dict:
    with Workspace(workspace, read_only=True) as ws:
        params = dict(ws.load_settings(), k=k)
    spec = {"workspace": str(workspace), "params": params, "until": "metrics"}
    if folder is not None:
        spec["status_file"] = str(folder / "status.json")
    return spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        workspace = build_sample_workspace(folder / "sample.duckdb")
        runner = JobRunner(folder / "jobs")
        times: dict[str, list[float]] = {"in-process": [], "cold worker": [], "warm worker": []}
        ks = iter(K_VALUES * args.repeats)
        for _ in range(args.repeats):
            times["in-process"].append(in_process(workspace, next(ks)))
            times["cold worker"].append(cold_worker(workspace, next(ks), folder))
            times["warm worker"].append(warm_worker(runner, workspace, next(ks)))
    floor = statistics.median(times["in-process"])
    print(f"re-run after a k change, sample (2,000 docs), median of {args.repeats}:")
    for name, values in times.items():
        median = statistics.median(values)
        print(
            f"  {name:12s} {median:6.2f} s   x{median / floor:4.1f} of in-process"
            f"   (all: {', '.join(f'{v:.2f}' for v in values)})"
        )


if __name__ == "__main__":
    main()
