"""Quality harness: every ordering method and packing policy on one workspace, in one table.

Each row orders the kept documents with one method (`traverse.traverse`, with the `original`
method's near-copy filter as in the order stage), packs them with one policy
(`pack.pack_contexts`, shuffled) and measures the contexts with the tool's own metric code
(`metrics.packing_terms`, `metrics.every_doc_once`) on the same inputs `icp metrics` uses,
so a row reads like `icp metrics` after `icp run --order METHOD --pack POLICY`. Next to the
metrics: the seconds ordering and packing took (after a warm-up, so numba compilation is not
counted), and the share of the two upper bounds of `metrics.path_upper_bounds` that
adjacent_sim_mean reaches, and the share of the gap between `icp` (Algorithm 1) and the
2-matching bound that it closes.

Results are stored in the workspace (table `evaluations`, one row per method × policy), keyed
by the kept documents' version and the parameters the numbers depend on (`SETTING_FIELDS`), so
the app shows what `icp eval` computed without computing it again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from icp_core import dedup, metrics, pack, stages, traverse
from icp_core.errors import IcpError
from icp_core.params import Params
from icp_core.workspace import Workspace

Report = Callable[[int, int], None]

# what a row's numbers depend on besides its method, policy and the kept documents
SETTING_FIELDS = (
    "k", "context_length", "seed", "shuffle", "dedup_threshold", "tokenizer", "separator",
    "label_field",
)  # fmt: skip
TABLE = "evaluations"

# Columns of the table, in order: (row key, header, format).
COLUMNS = (
    ("order", "order", "{}"),
    ("pack", "pack", "{}"),
    ("adjacent_sim_mean", "adjacent sim", "{:.4f}"),
    ("share_top1", "of top-1", "{:.1%}"),
    ("share_two_matching", "of 2-match", "{:.1%}"),
    ("gap_closed", "icp gap closed", "{:.0%}"),
    ("context_pairwise_sim_mean", "pairwise sim", "{:.4f}"),
    ("label_agreement", "label agree", "{:.4f}"),
    ("context_cache_gain", "cache gain", "{:+.4f}"),
    ("jump_rate", "jump rate", "{:.4f}"),
    ("token_efficiency", "token eff", "{:.4f}"),
    ("every_doc_once", "once", "{}"),
    ("order_s", "order s", "{:.3f}"),
    ("pack_s", "pack s", "{:.3f}"),
)


def _noop(done: int, total: int) -> None:
    return None


@dataclass(frozen=True)
class Corpus:
    """What the harness reads from a workspace, indexed by document (0..N-1).

    neighbor_ids/neighbor_sims: (N, K) stored kNN lists (K >= k); kept: (M,) documents left
    after dedup; vectors (N, d) unit vectors; doc_tokens (N,); labels (N,) or None; texts (N,).
    """

    neighbor_ids: np.ndarray
    neighbor_sims: np.ndarray
    kept: np.ndarray
    vectors: np.ndarray
    doc_tokens: np.ndarray
    labels: np.ndarray | None
    texts: list[str]
    sep_tokens: int
    n_duplicates: int
    params: Params
    data_version: str = ""  # the dedup stage's fingerprint it was read at ("": not stored)

    @property
    def n_documents(self) -> int:
        return len(self.texts)


def load_corpus(ws: Workspace, params: Params, report: Report = _noop) -> Corpus:
    """Read a workspace whose stages up to dedup are current (token counts are cached)."""
    label_field = stages.resolve_label_field(ws, params.label_field)
    ids, sims = stages.read_neighbors(ws)
    return Corpus(
        neighbor_ids=ids,
        neighbor_sims=sims,
        kept=stages.kept_documents(ws),
        vectors=stages.read_vectors(ws),
        doc_tokens=stages.document_tokens(ws, params, report),
        labels=stages.read_labels(ws, label_field),
        texts=ws.arrow("SELECT text FROM documents ORDER BY doc").column("text").to_pylist(),
        sep_tokens=len(stages.separator_for(params)),
        n_duplicates=int(ws.scalar("SELECT count(*) FROM duplicates")),
        params=params,
        data_version=data_version(ws),
    )


def data_version(ws: Workspace) -> str:
    """The version of the kept documents: the dedup stage's fingerprint, which chains the
    ingest, embedding and kNN fingerprints."""
    state = ws.stage_state("dedup")
    if state is None:
        raise IcpError(f"{ws.path}: no near-duplicate pass yet; run every stage first")
    return state["fingerprint"]


def setting_of(params: Params) -> str:
    """The stored key of the parameters an evaluation ran with (canonical JSON)."""
    return json.dumps({name: getattr(params, name) for name in SETTING_FIELDS}, sort_keys=True)


def store(ws: Workspace, corpus: Corpus, result: dict[str, Any]) -> None:
    """Keep `result` (of `evaluate(corpus, ...)`) in the workspace; its rows replace stored
    rows of the same method, policy, parameters and data, other rows stay."""
    key = [corpus.data_version, setting_of(corpus.params)]
    with ws.transaction():
        ws.execute(
            f"""CREATE TABLE IF NOT EXISTS {TABLE} (
                   data VARCHAR NOT NULL, setting VARCHAR NOT NULL,
                   order_method VARCHAR NOT NULL, pack VARCHAR NOT NULL,
                   computed_at TIMESTAMP, row JSON, bounds JSON, info JSON)"""
        )
        for row in result["rows"]:
            ws.execute(
                f"DELETE FROM {TABLE} WHERE data = ? AND setting = ? AND order_method = ? "
                "AND pack = ?",
                [*key, row["order"], row["pack"]],
            )
            ws.execute(
                f"INSERT INTO {TABLE} VALUES (?, ?, ?, ?, current_timestamp, ?, ?, ?)",
                [
                    *key,
                    row["order"],
                    row["pack"],
                    json.dumps(row),
                    json.dumps(result["bounds"]),
                    json.dumps(result["params"]),
                ],
            )


def stored(ws: Workspace, params: Params) -> dict[str, Any] | None:
    """What `evaluate` computed at `params` on the current data, as `evaluate` returns it
    (rows in method and policy order), or None when nothing is stored."""
    if not ws.has_table(TABLE) or ws.stage_state("dedup") is None:
        return None
    found = ws.con.execute(
        f"SELECT order_method, pack, row, bounds, info FROM {TABLE} "
        "WHERE data = ? AND setting = ? ORDER BY computed_at",
        [data_version(ws), setting_of(params)],
    ).fetchall()
    if not found:
        return None
    latest = found[-1]  # bounds and counts depend on the key alone; every row holds them
    combos = [(m, p) for m in traverse.METHODS for p in pack.PACK_MODES]
    found.sort(key=lambda r: combos.index((r[0], r[1])) if (r[0], r[1]) in combos else len(combos))
    return {
        "rows": [json.loads(r[2]) for r in found],
        "bounds": json.loads(latest[3]),
        "params": json.loads(latest[4]),
    }


def _scored(corpus: Corpus, kept: np.ndarray) -> metrics.KeptScoring:
    """What the metrics read about `kept`, built as `stages.compute_metrics` builds it."""
    return metrics.KeptScoring.build(
        corpus.neighbor_ids, corpus.neighbor_sims, kept, corpus.params.k, corpus.texts
    )


def _warm_up(method: str) -> None:
    """Compile (or load from cache) a method's kernels on a tiny graph before timing it."""
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 40, size=(40, 4))
    sims = np.sort(rng.random((40, 4), dtype=np.float32), axis=1)[:, ::-1]
    traverse.traverse(ids, sims, method)


def upper_bounds(corpus: Corpus) -> dict[str, float | None]:
    """`metrics.path_upper_bounds` of the kept documents' kNN graph, with its seconds."""
    sub_ids, sub_sims = traverse.restrict_graph(
        corpus.neighbor_ids, corpus.neighbor_sims, corpus.kept, corpus.params.k
    )
    started = time.perf_counter()
    bounds = metrics.path_upper_bounds(sub_ids, sub_sims)
    return dict(bounds, bounds_s=time.perf_counter() - started)


def evaluate(
    corpus: Corpus,
    orders: Sequence[str] = tuple(traverse.METHODS),
    packs: Sequence[str] = pack.PACK_MODES,
    repeats: int = 1,
    report: Report = _noop,
) -> dict[str, Any]:
    """Order, pack and measure every combination.

    Args:
        corpus: from `load_corpus`.
        orders: method names of `traverse.METHODS`.
        packs: policies of `pack.PACK_MODES`.
        repeats: order this many times and keep the fastest time (the orders are equal).
        report: progress callback (rows done, rows total).

    Returns:
        {"rows": one dict per (order, pack) with the metrics keys, every_doc_once, order_s,
        pack_s, n_contexts and the shares; "bounds": the upper bounds; "params": k,
        context_length, seed, n_documents, n_kept}.
    """
    params = corpus.params
    sub_ids, sub_sims = traverse.restrict_graph(
        corpus.neighbor_ids, corpus.neighbor_sims, corpus.kept, params.k
    )
    bounds = upper_bounds(corpus)
    base = _scored(corpus, corpus.kept)
    rows: list[dict[str, Any]] = []
    total = len(orders) * len(packs)
    for method in orders:
        _warm_up(method)
        order_s = np.inf
        for _ in range(max(1, repeats)):
            started = time.perf_counter()
            local_order = traverse.traverse(sub_ids, sub_sims, method, params.seed)
            order_s = min(order_s, time.perf_counter() - started)
        order = corpus.kept[local_order]
        n_dropped = 0
        scored = base
        if method == "original":  # the authors' text filter, as the order stage applies it
            drop, _ = dedup.find_near_copies(corpus.texts, order)
            n_dropped = int(drop.sum())
            order = order[~drop]
            if n_dropped:
                scored = _scored(corpus, np.sort(order))
        for policy in packs:
            started = time.perf_counter()
            packing = pack.pack_contexts(
                order,
                corpus.doc_tokens,
                params.context_length,
                policy,
                corpus.sep_tokens,
                params.shuffle,
                params.seed,
            )
            pack_s = time.perf_counter() - started
            measured = scored.measure(
                packing, corpus.vectors, corpus.doc_tokens, params.context_length, corpus.labels
            )
            once = metrics.every_doc_once(
                packing, scored.kept, corpus.doc_tokens, corpus.sep_tokens
            ) and (len(scored.kept) + n_dropped + corpus.n_duplicates == corpus.n_documents)
            rows.append(
                dict(
                    measured,
                    order=method,
                    pack=policy,
                    every_doc_once=bool(once),
                    n_contexts=packing.n_contexts,
                    n_dropped=n_dropped,
                    order_s=order_s,
                    pack_s=pack_s,
                )
            )
            report(len(rows), total)
    _add_shares(rows, bounds)
    return {
        "rows": rows,
        "bounds": bounds,
        "params": {
            "k": params.k,
            "context_length": params.context_length,
            "seed": params.seed,
            "n_documents": corpus.n_documents,
            "n_kept": int(len(corpus.kept)),
        },
    }


def _add_shares(rows: list[dict[str, Any]], bounds: dict[str, float | None]) -> None:
    """Each row's adjacent_sim_mean as a share of the bounds, and of the gap from `icp`
    (same packing policy) to the 2-matching bound."""
    icp_by_pack = {r["pack"]: r["adjacent_sim_mean"] for r in rows if r["order"] == "icp"}
    top1, matching = bounds.get("top1_bound"), bounds.get("two_matching_bound")
    for row in rows:
        sim = row["adjacent_sim_mean"]
        icp_sim = icp_by_pack.get(row["pack"])
        row["share_top1"] = sim / top1 if sim is not None and top1 else None
        row["share_two_matching"] = sim / matching if sim is not None and matching else None
        row["gap_closed"] = (
            (sim - icp_sim) / (matching - icp_sim)
            if None not in (sim, icp_sim, matching) and matching != icp_sim
            else None
        )


def format_table(result: dict[str, Any]) -> str:
    """The result of `evaluate` as a Markdown table, bounds on the line above."""
    bounds = result["bounds"]
    info = result["params"]

    def cell(value: Any, fmt: str) -> str:
        return "-" if value is None else fmt.format(value)

    lines = [
        f"{info['n_kept']} of {info['n_documents']} documents kept, k = {info['k']}, "
        f"{info['context_length']}-token contexts; bounds on adjacent sim: top-1 "
        f"{cell(bounds['top1_bound'], '{:.4f}')}, 2-matching "
        f"{cell(bounds['two_matching_bound'], '{:.4f}')} ({bounds['bounds_s']:.1f} s)",
        "",
        "| " + " | ".join(header for _, header, _ in COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    for row in result["rows"]:
        lines.append("| " + " | ".join(cell(row.get(key), fmt) for key, _, fmt in COLUMNS) + " |")
    return "\n".join(lines)
