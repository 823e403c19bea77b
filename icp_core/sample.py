"""The bundled sample: 2,000 labelled documents and the embedding cache `icp embed` made of them.

The cache rows are keyed like any cache row (model key + text hash), so they are used only
when the installed model is the very model that produced them; otherwise the sample is
embedded afresh (about 90 s on two cores).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from icp_core import jobs, pipeline, stages
from icp_core.params import Params
from icp_core.workspace import Workspace

SAMPLE_DIR = Path(__file__).resolve().parent.parent / "sample_data"
SAMPLE_DOCUMENTS = SAMPLE_DIR / "sample.jsonl.gz"
SAMPLE_EMBEDDINGS = SAMPLE_DIR / "embeddings.parquet"
# the sample's map, drawn once with UMAP (`stages.export_layout_cache`): reused while the
# sample's kNN lists are the ones it was drawn from, so a first start neither compiles nor runs UMAP
SAMPLE_LAYOUT = SAMPLE_DIR / "layout.parquet"
# what the app needs of the sample before it can show the Overview and the Map
SAMPLE_UNTIL = "layout"
# seconds each step takes building the sample on 2 cores with numba's cache warm and the
# shipped map; the progress bars weigh the steps by them
SAMPLE_SECONDS = {
    "warm-up": 3.0, "open": 1.0, "ingest": 1.0, "embed": 0.5, "knn": 0.5, "dedup": 0.7,
    "order": 1.0, "pack": 2.2, "metrics": 1.0, "layout": 0.3,
}  # fmt: skip
# the warm-up into an empty numba cache (a fresh install), the default ordering method only:
# about 25 CPU-seconds of compiling
COLD_WARM_UP_SECONDS = 25.0


def app_cache_dir() -> Path:
    """The app's per-user folder: the sample workspace, uploads and job status files
    ($ICP_APP_CACHE, else $XDG_CACHE_HOME/icp-workbench, else ~/.cache/icp-workbench)."""
    explicit = os.environ.get("ICP_APP_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "icp-workbench"


def sample_workspace_path() -> Path:
    return app_cache_dir() / "sample.duckdb"


def sample_spec(workspace: str | Path) -> dict[str, Any]:
    """The job that builds the bundled sample: ingest, the shipped embedding cache (so
    nothing is embedded), every stage, and the map."""
    return {
        "workspace": str(workspace),
        "inputs": [str(SAMPLE_DOCUMENTS)],
        "seed_cache": str(SAMPLE_EMBEDDINGS),
        "seed_layout": str(SAMPLE_LAYOUT),
        "params": Params().to_dict(),
        "until": SAMPLE_UNTIL,
        "description": "Preparing the bundled sample",
    }


def sample_ready(path: str | Path) -> bool:
    """The sample workspace at `path` has contexts, metrics and a map of its kNN lists."""
    if not Path(path).exists():
        return False
    try:
        with Workspace(path, read_only=True, wait_s=5.0) as ws:
            layout = ws.stage_state("layout")
            knn = ws.stage_state("knn")
            return bool(
                ws.has_table("metrics")
                and ws.has_table("contexts")
                and ws.has_table("layout")
                and layout
                and knn
                and layout["params"].get("upstream", {}).get("knn") == knn["fingerprint"]
            )
    except Exception:  # a half-written or foreign file: build it again
        return False


def build_sample_workspace(
    path: str | Path, params: Params | None = None, progress=pipeline._no_progress
) -> Path:
    """Create (or bring up to date) a workspace on the bundled sample."""
    params = params or Params()
    with Workspace(path) as ws:
        pipeline.ingest(ws, [str(SAMPLE_DOCUMENTS)], params, progress)
        stages.seed_embedding_cache(ws, SAMPLE_EMBEDDINGS)
        pipeline.run(ws, params, progress=progress)
    return Path(path)


class _Bar:
    """A one-line terminal progress bar over the stages of a run, each weighted by its
    expected seconds."""

    WIDTH = 30

    def __init__(self, stages: tuple[str, ...], seconds: dict[str, float], out=sys.stderr):
        self.stages = stages
        self.seconds = seconds
        self.out = out
        self.started = time.time()
        self.tty = out.isatty()

    def __call__(self, stage: str):
        index = self.stages.index(stage) if stage in self.stages else 0
        self.draw(stage, index, 0, 0)

        def report(done: int, total: int) -> None:
            self.draw(stage, index, done, total)

        return report

    def draw(self, stage: str, index: int, done: int, total: int, end: str = "") -> None:
        within = done / total if total else 0.0
        weights = [self.seconds.get(name, 1.0) for name in self.stages]
        current = weights[index] if index < len(weights) else 0.0
        fraction = min(1.0, (sum(weights[:index]) + within * current) / sum(weights))
        filled = int(fraction * self.WIDTH)
        counter = f" {done:,}/{total:,}" if total > 1 else ""
        line = (
            f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {fraction:4.0%} "
            f"{stage}{counter} · {time.time() - self.started:.0f} s"
        )
        if self.tty:
            self.out.write("\r" + line.ljust(78) + end)
        elif total <= 1 or done >= total or end:  # a log: one line per stage
            self.out.write(line + "\n")
        self.out.flush()


def kernels_cached() -> bool:
    """Whether numba's cache holds icp_core's compiled kernels (a fresh install has none)."""
    from icp_core import _kernels

    folder = os.environ.get("NUMBA_CACHE_DIR")
    root = Path(folder) if folder else Path(_kernels.__file__).parent / "__pycache__"
    return root.is_dir() and any(root.rglob("_kernels.*.nbi"))


def prepare(path: str | Path | None = None, out=sys.stderr) -> float:
    """Make the app's first start fast: load (and cache) the compiled kernels, then build the
    sample workspace with its map unless it is already there. Returns the seconds it took."""
    started = time.time()
    path = Path(path) if path else sample_workspace_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    names = ("warm-up", *pipeline.STAGE_NAMES[: pipeline.STAGE_NAMES.index(SAMPLE_UNTIL) + 1])
    weights = dict(SAMPLE_SECONDS)
    if not kernels_cached():
        weights["warm-up"] = COLD_WARM_UP_SECONDS
    bar = _Bar(names, weights, out)
    # compiles the kernels the sample's run uses into numba's cache; the app's worker compiles
    # the other ordering methods' in the background once the app is open
    jobs.warm_up(bar("warm-up"), methods=(Params().order,))
    if sample_ready(path):
        bar.draw("ready", len(names), 0, 0, end="\n")
        out.write(f"The sample at {path} is up to date ({time.time() - started:.1f} s).\n")
        return time.time() - started
    for stale in (path, path.with_name(path.name + ".wal")):
        stale.unlink(missing_ok=True)
    spec = sample_spec(path)
    params = Params.from_dict(spec["params"])
    with Workspace(path) as ws:
        pipeline.ingest(ws, spec["inputs"], params, bar)
        stages.seed_embedding_cache(ws, SAMPLE_EMBEDDINGS)
        stages.seed_layout_cache(ws, SAMPLE_LAYOUT)
        pipeline.run(ws, params, until=SAMPLE_UNTIL, progress=bar)
    bar.draw("done", len(names), 0, 0, end="\n")
    out.write(f"Prepared the sample for the app in {time.time() - started:.1f} s: {path}\n")
    return time.time() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m icp_core.sample",
        description="Build the bundled sample workspace and its map into the app's cache, "
        "so the app's first start opens on it at once (scripts/app.sh runs this).",
    )
    parser.add_argument("--prepare", action="store_true", help="build it (the only action)")
    parser.add_argument("--workspace", help="where to build it (default: the app's cache)")
    args = parser.parse_args(argv)
    if not args.prepare:
        parser.print_help()
        return
    prepare(args.workspace)


def sample_vectors_match(ws: Workspace, n_docs: int = 8) -> float:
    """Largest |cached - fresh| over the first n_docs sample documents (tests use it)."""
    from icp_core import embed

    rows = ws.arrow(
        "SELECT d.text, e.vector FROM documents d JOIN embeddings e USING (doc) "
        "ORDER BY doc LIMIT ?",
        [n_docs],
    )
    model = embed.load_model(str(embed.resolve_model_path(None)))
    fresh = embed.embed_texts(model, rows.column("text").to_pylist())
    cached = np.asarray(rows.column("vector").to_pylist(), dtype=np.float32)
    return float(np.abs(fresh - cached).max()) if len(cached) else 0.0


if __name__ == "__main__":
    main()
