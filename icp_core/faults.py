"""Crash points for the interruption tests: `ICP_CRASH_AT=<point>[:<n>]` SIGKILLs the process the
n-th time (default 1st) it reaches `point`. Unset (always, outside tests) it costs one dict lookup.
`ICP_CRASH_SIGNAL=INT` (or TERM, ...) sends that signal instead, as Ctrl-C or a supervisor would.

Two places call it, the two kinds of commit: `Workspace.transaction` just before COMMIT, with
the point `<table>.commit` for every table the transaction wrote (embedding_cache.commit for a
batch of vectors, neighbors, duplicates, ordering, contexts, metrics, ...), and the export's
staged folder just before it is renamed into place (export.staged).
"""

from __future__ import annotations

import os
import signal

_hits: dict[str, int] = {}


def crash_point(point: str) -> None:
    target = os.environ.get("ICP_CRASH_AT")
    if not target:
        return
    name, _, count = target.partition(":")
    if name != point:
        return
    _hits[point] = _hits.get(point, 0) + 1
    if _hits[point] >= int(count or 1):
        signame = os.environ.get("ICP_CRASH_SIGNAL", "KILL").upper().removeprefix("SIG")
        os.kill(os.getpid(), signal.Signals[f"SIG{signame}"])
