"""Jobs as the user sees them: starting one with its plan (which stages run and for about how
long), following its progress with a bar over the true remaining work, and what the last one
did. The job processes themselves are `app/jobs.py`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import streamlit as st

from app import data, jobs, words
from icp_core import pipeline

# what the progress bar says while a stage runs
STAGE_WORDS = {
    "starting": "starting a worker",
    "open": "opening the workspace",
    "ingest": "reading the input",
    "embed": "embedding documents",
    "knn": "finding neighbours",
    "dedup": "removing near-duplicates",
    "order": "ordering",
    "pack": "counting tokens and packing contexts",
    "metrics": "measuring",
    "layout": "computing the map (UMAP)",
    "tokens": "counting tokens",
    "eval": "ordering, packing and measuring every combination",
}
# the bar's steps: the worker's own start, then the pipeline's stages (or an evaluation's)
STEPS = ("starting", "open", *pipeline.STAGE_NAMES, "tokens", "eval")
# seconds a worker takes to load its libraries and compiled kernels (a warm spare: ~0)
WORKER_START_S = 3.0
# after the first page has drawn (about 10 s on 2 busy cores): its imports would slow it
SPARE_DELAY_S = 15.0


@st.cache_resource
def job_runner() -> jobs.JobRunner:
    return jobs.JobRunner(data.cache_dir() / "jobs")


def start_job(spec: dict[str, Any], plan: dict[str, float] | None = None) -> None:
    """Start a job; `plan` maps the stages expected to run to their expected seconds, so the
    progress bar can show the true remaining work."""
    try:
        job_runner().start(dict(spec, plan={"starting": WORKER_START_S, **(plan or {})}))
    except RuntimeError as err:
        st.warning(str(err))


def evaluation_plan(stage_seconds: dict[str, float]) -> dict[str, float]:
    """{step: expected seconds} of an evaluation job (`jobs.evaluation_spec`), from the
    seconds the stages last took here: each method orders once, then packs and is measured
    under each policy."""
    from icp_core.pack import PACK_MODES
    from icp_core.traverse import METHODS

    combinations = len(METHODS) * len(PACK_MODES)
    per_combination = stage_seconds.get("pack", 1.0) + stage_seconds.get("metrics", 1.0)
    return {
        "tokens": 1.0,
        "eval": len(METHODS) * stage_seconds.get("order", 1.0) + combinations * per_combination,
    }


def progress_line(
    status: dict[str, Any], plan: dict[str, float], stage_started: float, now: float
) -> tuple[float, str]:
    """(fraction done, text) for a running job: stages weighted by their expected seconds."""
    stage = status.get("stage", "starting")
    index = STEPS.index(stage) if stage in STEPS else 0
    expected = {step: float(plan.get(step, 0.0)) for step in STEPS}
    total = sum(expected.values()) or 1.0
    done, count = status.get("done", 0), status.get("total", 0)
    current = expected.get(stage, 0.0)
    spent = now - stage_started
    within = done / count if count else (min(0.95, spent / current) if current else 0.0)
    before = sum(expected[step] for step in STEPS[:index])
    fraction = min(1.0, (before + within * current) / total)
    left = sum(expected[step] for step in STEPS[index + 1 :]) + max(0.0, current - spent)
    if count and done:
        left = sum(expected[step] for step in STEPS[index + 1 :]) + spent * (count - done) / done
    counter = f": {done:,} of {count:,}" if count > 1 else ""
    elapsed = now - status.get("started_at", now)
    text = f"{STAGE_WORDS.get(stage, stage)}{counter} · {elapsed:.0f} s"
    text += f" · about {left:.0f} s left" if left >= 1 else " · almost done"
    if status.get("note"):  # the stage's own word: "loading model", its ETA
        text += f" · {status['note']}"
    return fraction, text


def follow_job(path: Path) -> None:
    """Show the running job's progress until it ends, then rerun the page on the new data."""
    runner = job_runner()
    status = runner.status(path) or {}
    plan = runner.plan(path)
    stage, stage_started = None, time.time()
    with st.status(status.get("description") or "Working on the workspace…", expanded=True) as box:
        planned = [s for s in plan if s in pipeline.STAGE_NAMES]
        if planned:
            st.caption(
                f"Runs {', '.join(planned)}: about {sum(plan.values()):.0f} s in all "
                "(the app stays usable in other tabs; finished stages are kept if you cancel)."
            )
        bar = st.progress(0.0)
        if st.button("Cancel", key="cancel_job", help="Stop the job; finished stages are kept."):
            runner.cancel(path)
        while status.get("state") == "running":
            if status.get("stage") != stage:
                stage, stage_started = status.get("stage"), time.time()
            fraction, text = progress_line(status, plan, stage_started, time.time())
            bar.progress(fraction, text=text)
            time.sleep(0.1)
            status = runner.status(path) or {}
        box.update(
            label="Done" if status.get("state") == "done" else "Stopped",
            state="complete" if status.get("state") == "done" else "error",
        )
    st.rerun()


def report_last_job(path: Path) -> None:
    """The last job's failure at the top of the page (once), or what it re-ran in the sidebar."""
    status = job_runner().status(path)
    if not status:
        return
    if status.get("state") == "failed":
        seen = st.session_state.setdefault("seen_failures", set())
        if status.get("started_at") not in seen:
            seen.add(status.get("started_at"))
            st.error(f"{status.get('description') or 'Job'} failed: {words.job_error(status)}")
    elif status.get("state") == "done" and status.get("stages"):
        ran = [s["stage"] for s in status["stages"] if s["status"] == "ran"]
        reused = [s["stage"] for s in status["stages"] if s["status"] == "skipped"]
        seconds = (status.get("updated_at") or 0) - (status.get("started_at") or 0)
        st.sidebar.caption(
            f"Last run ({seconds:.1f} s): re-ran {', '.join(ran) or 'nothing'}"
            + (f"; reused {', '.join(reused)}" if reused else "")
        )
