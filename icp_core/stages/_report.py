"""Progress reporting shared by the stage adapters: `report(done, total)`, a no-op by default."""

from __future__ import annotations

from collections.abc import Callable

Report = Callable[[int, int], None]


def _noop(done: int, total: int) -> None:
    return None
