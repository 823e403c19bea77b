"""Compiled loops of the distributed ordering (numba). Arrays in, arrays out; no validation."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def greedy_assign(candidate_item, candidate_slot, n_items, n_slots):
    """Walk candidates best first; take one whose item and slot are both still free.

    Args:
        candidate_item: (C,) int64 item of each candidate, candidates sorted best first.
        candidate_slot: (C,) int64 slot each candidate would fill.

    Returns:
        (n_items,) int64: the candidate index each item got, -1 where none.
    """
    chosen = np.full(n_items, -1, dtype=np.int64)
    slot_taken = np.zeros(n_slots, dtype=np.bool_)
    for c in range(len(candidate_item)):
        item = candidate_item[c]
        slot = candidate_slot[c]
        if chosen[item] < 0 and not slot_taken[slot]:
            chosen[item] = c
            slot_taken[slot] = True
    return chosen
