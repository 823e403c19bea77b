"""The `icp` command. The only place that sets up progress bars, logging and exit codes
(`report_failure`; the codes are listed in `icp_core.errors`).

Every stage command brings the stages before it up to date first (like make), so
`icp order --order original` on a fresh workspace embeds, searches and dedups as needed.
Options not given keep the value stored in the workspace (its settings), else the default.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from icp_core.errors import ExitCode, IcpError, render

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="In-context pretraining: order related documents into LLM pretraining contexts.",
    pretty_exceptions_enable=False,
    # plain click help: rich markup would eat the "[default]" in every option's help text
    rich_markup_mode=None,
)

WorkspaceOpt = Annotated[
    Path, typer.Option("--workspace", "-w", help="DuckDB workspace file (created if missing).")
]
WaitOpt = Annotated[
    float, typer.Option("--wait", help="Seconds to wait while another process holds the workspace.")
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Re-run the stage even if up to date.")]
TextFieldOpt = Annotated[str | None, typer.Option(help="Field holding the text [text].")]
IdFieldOpt = Annotated[str | None, typer.Option(help="Field holding the id [id; else file:line].")]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        help="Local sentence-transformers or model2vec folder, or 'static' (fast path, "
        "distilled from the default once) [packaged all-MiniLM-L6-v2]."
    ),
]
MaxTokensOpt = Annotated[int | None, typer.Option(help="Embed the first N tokens [model limit].")]
BatchOpt = Annotated[int | None, typer.Option(help="Texts per embedding batch [64].")]
DeviceOpt = Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:1 ... [auto].")]
VectorsOpt = Annotated[
    Path | None,
    typer.Option(help="Import embeddings: Parquet (id + vector) or .npy in ingest order."),
]
KOpt = Annotated[int | None, typer.Option("--k", help="Neighbours per document [10].")]
IndexOpt = Annotated[str | None, typer.Option(help="auto, flat, ivf or hnsw [auto].")]
ThresholdOpt = Annotated[
    float | None,
    typer.Option(help="Cosine at or above which documents are duplicates [0.95; static 0.97]."),
]
NoDedupOpt = Annotated[bool, typer.Option("--no-dedup", help="Keep near-duplicates.")]
OrderOpt = Annotated[
    str | None,
    typer.Option("--order", help="Ordering: greedy-lk, greedy, icp, original, random [greedy-lk]."),
]
SeedOpt = Annotated[int | None, typer.Option(help="Seed for random choices [0].")]
LengthOpt = Annotated[int | None, typer.Option(help="Tokens per context [8192].")]
TokenizerOpt = Annotated[
    str | None,
    typer.Option(
        help="Your LM's tokenizer: a built-in name (icp tokenizers), a tokenizer.json, a "
        "SentencePiece .model or a .tiktoken file [mistral-tekken]."
    ),
]
ShardSizeOpt = Annotated[
    int, typer.Option(help="Contexts per Parquet/JSONL shard (data/train-*-of-*).")
]
DropLastOpt = Annotated[
    bool,
    typer.Option(
        "--drop-last", help="Leave out the last context when shorter than --context-length."
    ),
]
SeparatorOpt = Annotated[str | None, typer.Option(help="Separator token [the tokenizer's EOS].")]
PackOpt = Annotated[str | None, typer.Option("--pack", help="split or whole [split].")]
ShuffleOpt = Annotated[
    bool | None, typer.Option("--shuffle/--no-shuffle", help="Shuffle contexts [shuffle].")
]
LabelOpt = Annotated[
    str | None, typer.Option(help="Field for label_agreement [label, when present].")
]


def _progress_factory():
    from tqdm.auto import tqdm

    bars: dict[str, Any] = {}

    def factory(stage: str):
        def report(done: int, total: int) -> None:
            bar = bars.get(stage)
            if bar is None:
                unit = "doc" if stage in ("embed", "knn", "ingest") else "item"
                bar = bars[stage] = tqdm(
                    total=total,
                    desc=stage,
                    unit=unit,
                    file=sys.stderr,
                    leave=False,
                    mininterval=0.5,
                    dynamic_ncols=True,
                )
            bar.total = total
            bar.update(done - bar.n)
            if done >= total:
                bar.close()

        def note(text: str) -> None:  # a phase ("loading model") or an ETA, see embed.note
            bar = bars.get(stage)
            if bar is not None and not bar.disable:
                bar.set_postfix_str(text, refresh=True)

        report.note = note  # type: ignore[attr-defined]
        return report

    return factory


@contextmanager
def _open(workspace: Path, wait: float = 0.0, read_only: bool = False) -> Iterator[Any]:
    """The workspace, open for the block; a read or write of it that fails for a damaged file
    or a full disk becomes that one-line error (`workspace.storage_error`)."""
    from icp_core.workspace import Workspace, storage_error

    if wait < 0:
        raise IcpError(f"--wait {wait}: must be 0 or more seconds")
    with Workspace(workspace, read_only=read_only, wait_s=wait) as ws:
        try:
            yield ws
        except Exception as err:
            translated = storage_error(workspace, err)
            if translated is None:
                raise
            raise translated from None


def _params(ws, no_dedup: bool = False, **given: Any):
    """Workspace settings overlaid with the options given on this command line."""
    return _overlay(ws.load_settings(), no_dedup, **given)


def _overlay(settings: dict[str, Any], no_dedup: bool = False, **given: Any):
    """Stored settings (or none) overlaid with the options given on this command line,
    validated before anything is stored: a bad value changes nothing in the workspace, and
    a bad stored value (from an older version) names the option that replaces it."""
    from icp_core.params import Params

    changes = {key: value for key, value in given.items() if value is not None}
    for key in ("vectors", "tokenizer", "model"):
        if isinstance(changes.get(key), Path):
            changes[key] = str(changes[key])
    if "model" in changes:
        changes.setdefault("vectors", None)  # choosing a model stops using imported vectors
    if no_dedup:
        changes["dedup_threshold"] = None
    params = Params.from_dict(settings).updated(**changes)
    return params.validate(stored=set(settings) - set(changes))


def _check_label_field(ws, label_field: str | None) -> None:
    """Refuse a --label-field no document carries before it is stored: the stored value
    would fail every later command's metrics."""
    from icp_core import stages

    if label_field is not None and ws.n_documents():
        stages.resolve_label_field(ws, label_field)


def _echo_outcomes(outcomes) -> None:
    for outcome in outcomes:
        shown = {k: v for k, v in outcome.counts.items() if not isinstance(v, dict | list)}
        summary = ", ".join(f"{k}={_fmt(v)}" for k, v in shown.items())
        if outcome.status == "skipped":
            summary = "up to date"
        typer.echo(
            f"{outcome.stage:8s} {outcome.status:7s} {outcome.seconds:6.1f}s  {summary}", err=True
        )


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _run_until(ws, params, until: str, force: bool) -> list:
    from icp_core import pipeline

    outcomes = pipeline.run(
        ws, params, until=until, force=(until,) if force else False, progress=_progress_factory()
    )
    _echo_outcomes(outcomes)
    return outcomes


@app.command()
def ingest(
    inputs: Annotated[
        list[Path], typer.Argument(help="JSONL(.gz), Parquet, CSV, .txt/.md or folders.")
    ],
    workspace: WorkspaceOpt,
    text_field: TextFieldOpt = None,
    id_field: IdFieldOpt = None,
    update: Annotated[
        bool,
        typer.Option(
            "--update",
            help="Replace stored documents whose text or fields changed under the same id.",
        ),
    ] = False,
    wait: WaitOpt = 0.0,
) -> None:
    """Add documents; bad rows go to the `rejects` table with file, line and reason."""
    from icp_core import pipeline
    from icp_core.ingest import reject_fix

    with _open(workspace, wait) as ws:
        params = _params(ws, text_field=text_field, id_field=id_field)
        outcome = pipeline.ingest(
            ws, [str(p) for p in inputs], params, _progress_factory(), update=update
        )
        with ws.transaction():
            ws.save_settings({"text_field": params.text_field, "id_field": params.id_field})
        reasons = ws.column("SELECT DISTINCT reason FROM rejects").tolist()
    counts = outcome.counts
    skipped = (
        f", {counts['sources_skipped']} source(s) already ingested"
        if counts["sources_skipped"]
        else ""
    )
    changed = "".join(
        f", {counts[key]} {key}" for key in ("updated", "unchanged") if counts.get(key)
    )
    typer.echo(
        f"{counts['documents']} documents, {counts['rejected']} rejected (see rejects)"
        f"{changed}{skipped}; workspace holds {counts['total_documents']} documents"
    )
    for advice, option in sorted({f for f in map(reject_fix, reasons) if f}):
        typer.echo(f"rejected rows: {render(advice, option)}")


@app.command()
def embed(
    workspace: WorkspaceOpt,
    model: ModelOpt = None,
    max_tokens: MaxTokensOpt = None,
    batch_size: BatchOpt = None,
    device: DeviceOpt = None,
    vectors: VectorsOpt = None,
    force: ForceOpt = False,
    wait: WaitOpt = 0.0,
) -> None:
    """Embed documents (only texts not cached for this model), or import --vectors."""
    with _open(workspace, wait) as ws:
        params = _params(
            ws,
            model=model,
            max_tokens=max_tokens,
            batch_size=batch_size,
            device=device,
            vectors=vectors,
        )
        _run_until(ws, params, "embed", force)


@app.command()
def knn(
    workspace: WorkspaceOpt,
    k: KOpt = None,
    index: IndexOpt = None,
    force: ForceOpt = False,
    wait: WaitOpt = 0.0,
) -> None:
    """Find every document's top-k neighbours with faiss (stored at least 32 deep)."""
    with _open(workspace, wait) as ws:
        _run_until(ws, _params(ws, k=k, index=index), "knn", force)


@app.command()
def dedup(
    workspace: WorkspaceOpt,
    dedup_threshold: ThresholdOpt = None,
    no_dedup: NoDedupOpt = False,
    k: KOpt = None,
    force: ForceOpt = False,
    wait: WaitOpt = 0.0,
) -> None:
    """Group semantic near-duplicates; removed documents are recorded, never lost."""
    with _open(workspace, wait) as ws:
        params = _params(ws, no_dedup, dedup_threshold=dedup_threshold, k=k)
        _run_until(ws, params, "dedup", force)


@app.command()
def order(
    workspace: WorkspaceOpt,
    order: OrderOpt = None,
    k: KOpt = None,
    seed: SeedOpt = None,
    force: ForceOpt = False,
    wait: WaitOpt = 0.0,
) -> None:
    """Order documents along the kNN graph (icp = the paper's Algorithm 1)."""
    with _open(workspace, wait) as ws:
        _run_until(ws, _params(ws, order=order, k=k, seed=seed), "order", force)


@app.command()
def pack(
    workspace: WorkspaceOpt,
    context_length: LengthOpt = None,
    tokenizer: TokenizerOpt = None,
    separator: SeparatorOpt = None,
    pack: PackOpt = None,
    shuffle: ShuffleOpt = None,
    seed: SeedOpt = None,
    force: ForceOpt = False,
    wait: WaitOpt = 0.0,
) -> None:
    """Cut the ordered documents into contexts of exactly --context-length tokens."""
    with _open(workspace, wait) as ws:
        params = _params(
            ws,
            context_length=context_length,
            tokenizer=tokenizer,
            separator=separator,
            pack=pack,
            shuffle=shuffle,
            seed=seed,
        )
        _run_until(ws, params, "pack", force)


@app.command()
def metrics(
    workspace: WorkspaceOpt,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    label_field: LabelOpt = None,
    wait: WaitOpt = 0.0,
) -> None:
    """Print how related the documents inside contexts are, next to random packing."""
    from icp_core import pipeline, stages

    with _open(workspace, wait) as ws:
        params = _params(ws, label_field=label_field)
        _check_label_field(ws, label_field)
        pipeline.run(ws, params, until="metrics", progress=_progress_factory())
        result = stages.latest_metrics(ws, params)
    if as_json:
        typer.echo(json.dumps(result))
        return
    random = result.get("random", {})
    for key, value in result.items():
        if isinstance(value, dict):
            continue
        baseline = random.get(key.removeprefix("random_")) if key in random else None
        extra = f"   (random: {_fmt(baseline)})" if baseline is not None else ""
        typer.echo(f"{key:28s} {_fmt(value)}{extra}")


@app.command(name="eval")
def eval_command(
    workspace: WorkspaceOpt,
    orders: Annotated[
        list[str] | None,
        typer.Option("--order", help="Ordering method to compare; repeat for several [all]."),
    ] = None,
    packs: Annotated[
        list[str] | None,
        typer.Option("--pack", help="Packing policy to compare; repeat for several [all]."),
    ] = None,
    k: KOpt = None,
    context_length: LengthOpt = None,
    tokenizer: TokenizerOpt = None,
    separator: SeparatorOpt = None,
    label_field: LabelOpt = None,
    seed: SeedOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    wait: WaitOpt = 0.0,
) -> None:
    """Compare ordering methods and packing policies on this workspace in one table (also
    stored in the workspace, where the app's Compare page shows it)."""
    from icp_core import evaluate
    from icp_core.pack import PACK_MODES
    from icp_core.params import choose
    from icp_core.traverse import METHODS

    orders = orders or list(METHODS)
    packs = packs or list(PACK_MODES)
    for name, choices, flag in ((orders, METHODS, "--order"), (packs, PACK_MODES, "--pack")):
        unknown = [value for value in name if value not in choices]
        if unknown:
            raise IcpError(f"{flag} {unknown[0]}: {choose(unknown[0], choices)}")
    progress = _progress_factory()
    with _open(workspace, wait) as ws:
        params = _params(
            ws,
            k=k,
            context_length=context_length,
            tokenizer=tokenizer,
            separator=separator,
            label_field=label_field,
            seed=seed,
        )
        _check_label_field(ws, label_field)
        _run_until(ws, params, "dedup", False)
        corpus = evaluate.load_corpus(ws, params, progress("tokens"))
    result = evaluate.evaluate(corpus, orders, packs, report=progress("eval"))
    with _open(workspace, wait) as ws:  # the app's Compare page shows the stored result
        evaluate.store(ws, corpus, result)
    typer.echo(json.dumps(result) if as_json else evaluate.format_table(result))


@app.command()
def export(
    workspace: WorkspaceOpt,
    out: Annotated[Path, typer.Option(help="Output folder.")],
    fmt: Annotated[str, typer.Option("--format", help="jsonl, parquet or tokens.")] = "parquet",
    overwrite: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
    shard_size: ShardSizeOpt = 10_000,
    drop_last: DropLastOpt = False,
    wait: WaitOpt = 0.0,
) -> None:
    """Write contexts (JSONL, Parquet or token ids), duplicates, rejects and a manifest."""
    from icp_core import export as export_module
    from icp_core import pipeline, stages

    _check_format(fmt)
    export_module.check_out(out, overwrite, keep=[workspace])
    with _open(workspace, wait) as ws:
        params = _params(ws)
        pipeline.run(ws, params, until="metrics", progress=_progress_factory())
        manifest = export_module.export_contexts(
            ws,
            params,
            out,
            fmt,
            overwrite,
            stages.latest_metrics(ws, params),
            _progress_factory()("export"),
            shard_size=shard_size,
            drop_last=drop_last,
        )
    typer.echo(
        f"wrote {out} ({fmt}): " + ", ".join(f"{k}={v}" for k, v in manifest["counts"].items())
    )


ENGINES = ("local", "ray")


def _check_format(fmt: str) -> None:
    """Refuse an unknown --format before any stage runs."""
    from icp_core.export import FORMATS
    from icp_core.params import choose

    if fmt not in FORMATS:
        raise IcpError(f"--format {fmt}: {choose(fmt, FORMATS)}")


@app.command()
def run(
    inputs: Annotated[
        list[Path], typer.Argument(help="JSONL(.gz), Parquet, CSV, .txt/.md or folders.")
    ],
    workspace: Annotated[
        Path | None,
        typer.Option(
            "--workspace", "-w", help="DuckDB workspace file (created if missing; local engine)."
        ),
    ] = None,
    text_field: TextFieldOpt = None,
    id_field: IdFieldOpt = None,
    model: ModelOpt = None,
    max_tokens: MaxTokensOpt = None,
    batch_size: BatchOpt = None,
    device: DeviceOpt = None,
    vectors: VectorsOpt = None,
    k: KOpt = None,
    index: IndexOpt = None,
    dedup_threshold: ThresholdOpt = None,
    no_dedup: NoDedupOpt = False,
    order: OrderOpt = None,
    seed: SeedOpt = None,
    context_length: LengthOpt = None,
    tokenizer: TokenizerOpt = None,
    separator: SeparatorOpt = None,
    pack: PackOpt = None,
    shuffle: ShuffleOpt = None,
    label_field: LabelOpt = None,
    out: Annotated[Path | None, typer.Option(help="Also export to this folder.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="Export format.")] = "parquet",
    overwrite: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
    shard_size: ShardSizeOpt = 10_000,
    drop_last: DropLastOpt = False,
    force: Annotated[bool, typer.Option("--force", help="Re-run every stage.")] = False,
    wait: WaitOpt = 0.0,
    engine: Annotated[
        str,
        typer.Option(
            "--engine",
            help="local: one machine, a DuckDB workspace; ray: a Ray cluster, writes --out.",
        ),
    ] = "local",
    ray_address: Annotated[
        str | None,
        typer.Option("--ray-address", help="Ray cluster to join (ray engine) [start a local one]."),
    ] = None,
    partitions: Annotated[
        int | None,
        typer.Option(help="Ray engine: ordering partitions [one per 2M kept documents]."),
    ] = None,
) -> None:
    """Run every stage: ingest, embed, knn, dedup, order, pack, metrics (and export)."""
    from icp_core import export as export_module
    from icp_core import pipeline, stages
    from icp_core.params import choose

    if engine not in ENGINES:
        raise IcpError(f"--engine {engine}: {choose(engine, ENGINES)}")
    _check_format(fmt)
    given = {
        "text_field": text_field,
        "id_field": id_field,
        "model": model,
        "max_tokens": max_tokens,
        "batch_size": batch_size,
        "device": device,
        "vectors": vectors,
        "k": k,
        "index": index,
        "dedup_threshold": dedup_threshold,
        "order": order,
        "seed": seed,
        "context_length": context_length,
        "tokenizer": tokenizer,
        "separator": separator,
        "pack": pack,
        "shuffle": shuffle,
        "label_field": label_field,
    }
    if engine == "ray":
        _run_on_ray(inputs, given, no_dedup, out, fmt, overwrite, ray_address, partitions)
        return
    if workspace is None:
        raise IcpError("--workspace is required with --engine local (the default)")
    if out is not None:
        export_module.check_out(out, overwrite, keep=[workspace])
    with _open(workspace, wait) as ws:
        params = _params(ws, no_dedup, **given)
        progress = _progress_factory()
        outcomes = [pipeline.ingest(ws, [str(p) for p in inputs], params, progress)]
        _check_label_field(ws, label_field)
        outcomes += pipeline.run(ws, params, force=force, progress=progress)
        _echo_outcomes(outcomes)
        result = stages.latest_metrics(ws, params)
        if out is not None:
            export_module.export_contexts(
                ws,
                params,
                out,
                fmt,
                overwrite,
                result,
                progress("export"),
                shard_size=shard_size,
                drop_last=drop_last,
            )
            typer.echo(f"exported to {out} ({fmt})", err=True)
    typer.echo(json.dumps({k: v for k, v in result.items() if not isinstance(v, dict)}))


def _run_on_ray(
    inputs: list[Path],
    given: dict[str, Any],
    no_dedup: bool,
    out: Path | None,
    fmt: str,
    overwrite: bool,
    ray_address: str | None,
    partitions: int | None,
) -> None:
    """`icp run --engine ray`: the same stages on a Ray cluster, written straight to --out."""
    if out is None:
        raise IcpError("--engine ray writes its result to a folder: pass --out DIR")
    if fmt != "parquet":
        raise IcpError(f"--format {fmt}: the ray engine writes parquet only")
    try:
        from icp_core.distributed import ray_engine
    except ImportError:
        raise IcpError(
            "--engine ray needs Ray: pip install 'icp-workbench[ray]' (or '.[ray]' in a checkout)"
        ) from None

    params = _overlay({}, no_dedup, **given)
    options = ray_engine.RayOptions(address=ray_address, partitions=partitions)
    outcomes, manifest = ray_engine.run_pipeline(
        [str(p) for p in inputs], params, out, options, overwrite, _progress_factory()
    )
    _echo_outcomes(outcomes)
    typer.echo(f"exported to {out} (parquet, engine ray)", err=True)
    result = manifest["metrics"]
    typer.echo(json.dumps({k: v for k, v in result.items() if not isinstance(v, dict)}))


@app.command()
def tokenizers() -> None:
    """List the built-in LM tokenizers (--tokenizer NAME); they ship in installed packages."""
    from icp_core import tokenizer

    for row in tokenizer.list_builtins():
        installed = f"{row['package']} {row['version']}" if row["version"] else "not installed"
        typer.echo(f"{row['name']:18s} {row['description']}")
        typer.echo(f"{'':18s} licence {row['licence']}; from {installed}")


@app.command()
def replay(
    manifest_path: Annotated[Path, typer.Argument(help="An export's manifest.json (or folder).")],
    out: Annotated[Path, typer.Option(help="Folder to write the replayed export to.")],
    workspace: Annotated[
        Path | None,
        typer.Option("--workspace", "-w", help="Workspace to build in [a temporary one]."),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
) -> None:
    """Re-run an export from its manifest and check the files against its checksums."""
    from icp_core import replay as replay_module

    differing = replay_module.replay(manifest_path, out, workspace, overwrite, _progress_factory())
    if differing:
        for name in differing:
            typer.echo(f"differs: {name}", err=True)
        typer.echo(
            f"replayed into {out}; {len(differing)} file(s) differ from the manifest "
            "(another machine, library version or input?)",
            err=True,
        )
        raise typer.Exit(1)
    typer.echo(f"replayed into {out}: every file matches the manifest's checksums")


@app.command()
def layout(workspace: WorkspaceOpt, force: ForceOpt = False, wait: WaitOpt = 0.0) -> None:
    """Compute the 2-D map the app draws (UMAP over the stored kNN lists; once per kNN search)."""
    with _open(workspace, wait) as ws:
        _run_until(ws, _params(ws), "layout", force)


@app.command(hidden=True)
def job(
    spec: Annotated[str, typer.Argument(help="JSON job spec file, or - to read it from stdin.")],
) -> None:
    """Run one job for the app (see `jobs.run_job`); exits 1 when the job failed.

    With `-`, the worker loads its kernels first and then waits for the spec: the app keeps
    one such worker ready so that applying new parameters starts at once.
    """
    from icp_core import jobs

    # the app cancels a job with SIGTERM and expects it gone at once, not after the current
    # compiled loop returns; the DuckDB write it interrupts rolls back all the same
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if spec == "-":
        jobs.warm_up()
        text = sys.stdin.read()
        if not text.strip():  # the app went away without sending a job
            return
    else:
        text = Path(spec).read_text()
    status = jobs.run_job(json.loads(text))
    if status["state"] != "done":
        raise typer.Exit(1)


@app.command()
def check(
    workspace: WorkspaceOpt,
    deep: Annotated[
        bool,
        typer.Option(
            "--deep", help="First read every table and index block back (slower; exit 4 if any "
            "is damaged)."
        ),
    ] = False,
    wait: WaitOpt = 0.0,
) -> None:
    """Check the invariants: documents in = kept + duplicates + rejects, each kept document
    exactly once across contexts, no context longer than the context length (every stage
    must be up to date with the ones it reads)."""
    from icp_core.check import check_workspace

    with _open(workspace, wait, read_only=True) as ws:
        problems = check_workspace(ws, deep)
    if problems:
        for problem in problems:
            typer.echo(f"FAIL {problem}", err=True)
        raise typer.Exit(ExitCode.PROBLEMS)
    read = "every block read back, " if deep else ""
    typer.echo(
        f"ok: {read}every document accounted for, each kept document exactly once, contexts fit"
    )


@app.command(name="app")
def app_command(
    workspace: Annotated[
        Path | None, typer.Option("--workspace", "-w", help="Workspace to open [bundled sample].")
    ] = None,
    port: Annotated[int, typer.Option(help="Port to serve on.")] = 8501,
) -> None:
    """Open the Streamlit app (on the bundled sample when no workspace is given)."""
    entry = Path(__file__).resolve().parent.parent / "app" / "main.py"
    if not entry.exists():
        raise IcpError(f"{entry}: the app is not installed; run from a source checkout")
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(entry),
        "--server.port",
        str(port),
        "--browser.gatherUsageStats",
        "false",
        "--client.toolbarMode",
        "minimal",  # no Deploy button: the app is a tool, not a Streamlit project
    ]
    if workspace is not None:
        command += ["--", "--workspace", str(workspace)]
    # become the server process, so signals (Ctrl-C, SIGTERM from a supervisor) reach it
    os.execv(sys.executable, command)


_STOP_SIGNALS = {signal.SIGINT: ExitCode.INTERRUPTED, signal.SIGTERM: ExitCode.TERMINATED}
_stopped_by: list[int] = []  # the signal that stopped this run, if one did


def _stop(signum: int, frame: object) -> None:
    """SIGINT/SIGTERM: unwind like Ctrl-C, so open transactions roll back and the workspace
    is closed cleanly (a second signal while unwinding is ignored)."""
    if not _stopped_by:
        _stopped_by.append(signum)
        raise KeyboardInterrupt


def report_failure(err: BaseException) -> int:
    """Print the message for a failure on stderr and return the process's exit code.

    The one place that maps failure classes to what the user sees (codes in `errors`):
    an `IcpError` is one `error: ...` line with its own code; a usage error is click's usage
    message and 2; Ctrl-C or SIGTERM is one line and 130 or 143; anything else is a bug,
    one `internal error` line (the traceback with `ICP_DEBUG=1`) and 70.
    """
    import duckdb
    from typer._click.exceptions import ClickException  # typer vendors click: not click's own
    from typer.exceptions import Abort

    if isinstance(err, typer.Exit):
        return err.exit_code
    if isinstance(err, IcpError):
        typer.echo(f"error: {err}", err=True)
        return err.exit_code
    if isinstance(err, ClickException):
        err.show()
        return ExitCode.USAGE
    if isinstance(err, KeyboardInterrupt | Abort | duckdb.InterruptException):
        signum = _stopped_by[0] if _stopped_by else signal.SIGINT
        typer.echo(
            f"interrupted ({signal.Signals(signum).name}); finished work is kept, "
            "re-run to resume",
            err=True,
        )
        return _STOP_SIGNALS.get(signum, ExitCode.INTERRUPTED)
    if os.environ.get("ICP_DEBUG"):
        traceback.print_exception(err)
    typer.echo(
        f"internal error: {type(err).__name__}: {err} (a bug; set ICP_DEBUG=1 for the traceback)",
        err=True,
    )
    return ExitCode.INTERNAL


def main(argv: list[str] | None = None) -> NoReturn:
    """Run `icp` with `argv` (default: the command line) and exit with its code."""
    logging.basicConfig(
        level=os.environ.get("ICP_LOG", "WARNING"), format="%(levelname)s %(name)s: %(message)s"
    )
    sys.exit(run_cli(argv))


def run_cli(argv: list[str] | None = None) -> int:
    """Run `icp` with `argv` in this process and return its exit code (never raises)."""
    _stopped_by.clear()
    previous = {signum: signal.signal(signum, _stop) for signum in _STOP_SIGNALS}
    try:
        code = app(args=argv, prog_name="icp", standalone_mode=False)
    except BaseException as err:  # every failure ends in one message and a code
        if isinstance(err, SystemExit):
            raise
        return report_failure(err)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if code == ExitCode.INTERRUPTED:  # typer turns Ctrl-C into Exit(130) and returns it
        return report_failure(KeyboardInterrupt())
    return code if isinstance(code, int) else ExitCode.OK


if __name__ == "__main__":
    main()
