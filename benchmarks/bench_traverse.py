"""Traversal: `traverse(method="icp")` (graph build included) vs the authors' sorting loop.

Both run on the same synthetic clustered kNN graph (`synth_knn.synth`, N = 1M, k = 10), each
in a fresh child process that first loads the arrays from .npy files, so that the peak-RSS
figure covers the traversal alone:

- time: wall and CPU seconds, min and median over --repeat runs for `traverse` (one run of
  the loop, which takes seconds); numba compile time is excluded (each child first runs
  `traverse` on a 1,000-document graph, which loads the cached machine code);
- memory: peak RSS during the call minus RSS before it (VmHWM after resetting it through
  /proc/self/clear_refs). RSS counts every page touched, numba's own allocations included,
  which tracemalloc would miss. It is compared with the bytes of the kNN arrays as synth
  returns them (int64 ids + float32 sims).

Then N = 10M (`--big`): the graph is written once as int32 ids + float32 sims .npy files and
memory-mapped; reported are time, peak RSS (anonymous and file-backed pages) and the
extrapolation to 100M from the measured per-document cost.

    python benchmarks/bench_traverse.py               # 1M side by side, then 10M
    python benchmarks/bench_traverse.py --big 0       # 1M only
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from _bench_util import ROOT, machine, memory_mib, peak_rss_delta, ratio, timed

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))


def _warm_up(k: int) -> None:
    from synth_knn import synth

    from icp_core.traverse import traverse

    ids, sims, _ = synth(1000, k)
    traverse(ids, sims)


def _child(mode: str, folder: Path, repeat: int) -> dict:
    """Run one measurement in this (fresh) process; returns figures as a dict."""
    from icp_core.traverse import traverse

    mmap = "r" if mode == "icp-mmap" else None
    ids = np.load(folder / "ids.npy", mmap_mode=mmap)
    sims = np.load(folder / "sims.npy", mmap_mode=mmap)
    n, k = ids.shape
    _warm_up(k)
    if mode == "orig":
        from authors_sort_loop import orig_sort

        with_self = np.concatenate([np.arange(n)[:, None], ids.astype(np.int64)], axis=1)
        with peak_rss_delta() as memory:
            order, times = timed(lambda: orig_sort(with_self, progress=True), repeat=1)
    else:
        with peak_rss_delta() as memory:
            order, times = timed(lambda: traverse(ids, sims, method="icp"), repeat=repeat)
    is_permutation = bool(np.array_equal(np.sort(order), np.arange(n)))
    return {
        "mode": mode,
        "n": n,
        "k": k,
        "times": times,
        "memory": memory,
        "rss_end": memory_mib(),
        "is_permutation": is_permutation,
    }


def _run_child(mode: str, folder: Path, repeat: int) -> dict:
    command = [sys.executable, __file__, "--child", mode, "--data", str(folder)]
    command += ["--repeat", str(repeat)]
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"child {mode} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _make_graph(folder: Path, n: int, k: int, id_dtype: type) -> None:
    """Write synth(n, k) as ids/sims .npy files (skipped when they exist with this shape)."""
    ids_path, sims_path = folder / "ids.npy", folder / "sims.npy"
    if ids_path.exists() and sims_path.exists():
        existing = np.load(ids_path, mmap_mode="r")
        if existing.shape == (n, k) and existing.dtype == id_dtype:
            return
    folder.mkdir(parents=True, exist_ok=True)
    code = (
        "import sys, numpy as np; sys.path.insert(0, sys.argv[1]);"
        "from synth_knn import synth;"
        "ids, sims, _ = synth(int(sys.argv[2]), int(sys.argv[3]));"
        "np.save(sys.argv[4], ids.astype(sys.argv[6])); del ids;"
        "np.save(sys.argv[5], sims)"
    )
    args = [str(BENCH_DIR), str(n), str(k), str(ids_path), str(sims_path)]
    args.append(np.dtype(id_dtype).name)
    subprocess.run([sys.executable, "-c", code, *args], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--big", type=int, default=10_000_000, help="0 skips the big run")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--data", type=Path, default=Path("/tmp/icp-bench"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.data, args.repeat)))
        return

    print(f"machine: {machine()}")
    folder = args.data / f"synth_{args.n}_{args.k}_int64"
    _make_graph(folder, args.n, args.k, np.int64)
    knn_mib = args.n * args.k * (8 + 4) / 2**20
    icp = _run_child("icp", folder, args.repeat)
    orig = _run_child("orig", folder, 1)
    print(
        f"\nN = {args.n:,}, k = {args.k}; kNN arrays (int64 ids + float32 sims) {knn_mib:.0f} MiB"
    )
    print(f"{'':28}{'wall min':>10}{'wall med':>10}{'cpu min':>10}{'peak RSS +':>12}")
    for name, result in (("traverse(method='icp')", icp), ("orig_sort (authors' loop)", orig)):
        t, m = result["times"], result["memory"]
        print(
            f"{name:28}{t['wall_min']:>9.3f}s{t['wall_median']:>9.3f}s{t['cpu_min']:>9.3f}s"
            f"{m['peak_delta_mib']:>9.0f} MiB"
        )
    print(
        f"speed-up: wall {ratio(orig['times']['wall_min'], icp['times']['wall_min'])}, "
        f"CPU {ratio(orig['times']['cpu_min'], icp['times']['cpu_min'])} (target >= 8x)"
    )
    print(
        f"traverse peak memory / kNN arrays: "
        f"{ratio(icp['memory']['peak_delta_mib'], knn_mib)} (target <= 2x)"
    )
    print(f"both outputs are permutations: {icp['is_permutation'] and orig['is_permutation']}")

    if args.big:
        big_folder = args.data / f"synth_{args.big}_{args.k}_int32"
        _make_graph(big_folder, args.big, args.k, np.int32)
        big = _run_child("icp-mmap", big_folder, 1)
        t, m = big["times"], big["memory"]
        big_knn_mib = args.big * args.k * (4 + 4) / 2**20
        print(
            f"\nN = {args.big:,} (int32 ids + float32 sims, memory-mapped, {big_knn_mib:.0f} MiB)"
        )
        print(
            f"traverse: wall {t['wall_min']:.2f}s, CPU {t['cpu_min']:.2f}s; peak RSS "
            f"{m['peak_mib']:.0f} MiB ({m['peak_delta_mib']:.0f} MiB above the start, of which "
            f"{m['rss_file_after_mib']:.0f} MiB file-backed pages of the mapped arrays)"
        )
        per_doc_s = t["wall_min"] / args.big
        scale_time = t["wall_min"] / icp["times"]["wall_min"] / (args.big / args.n)
        anon_per_doc = (m["peak_delta_mib"] - m["rss_file_after_mib"]) / args.big
        print(
            f"scaling 1M -> {args.big / 1e6:.0f}M: time per document x{scale_time:.2f}; "
            f"100M on paper: ~{per_doc_s * 1e8 / 60:.0f} min, "
            f"~{anon_per_doc * 1e8 / 1024:.1f} GiB working memory + "
            f"{100e6 * args.k * 8 / 2**30:.1f} GiB of mapped kNN arrays"
        )
        print(f"output is a permutation: {big['is_permutation']}")


if __name__ == "__main__":
    main()
