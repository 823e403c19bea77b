"""Crash points for the interruption tests: `ICP_CRASH_AT=<point>[:<n>]` SIGKILLs the process the
n-th time (default 1st) it reaches `point`. Unset (always, outside tests) it costs one dict lookup.
`ICP_CRASH_SIGNAL=INT` (or TERM, ...) sends that signal instead, as Ctrl-C or a supervisor would.

Points: embed.checkpoint (after a batch of vectors is committed), knn.commit, dedup.commit,
order.commit, pack.commit (inside the stage's write transaction), export.staged (files written,
not yet renamed into place).
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
