"""Compiled loops of the orderings beyond the paper (numba).

Arrays and ints in, arrays out; no validation here: `traverse.py` checks and converts inputs.
The graph is the undirected kNN graph as CSR (`_kernels.build_undirected_csr`): rows sorted
by weight descending, then id ascending; a pair that is not an edge weighs 0. Each public
kernel has a plain-Python reference in tests/test_orderings.py.

A path through all documents is built as a *linear forest*: every document has at most two
links and there are no cycles; its fragments are chained end to end at the end (those joins
are the path's jumps). `links` is (N, 2) int64: the linked documents, unordered, -1 = none.

The local search keeps, besides the links, a fragment label per document and a rank that
grows along each fragment, so that "same fragment?" and "on which side?" cost O(1) instead
of a walk. A move relabels only the smaller of the pieces it cuts or joins, or re-ranks the
stretch it reverses. (An implicit treap per fragment, O(log N) per move, was 8-12 times
slower on the corpora measured: their fragments stay short enough for this.)
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np
from numba import njit

_EPS = 1e-6

# The local search's state; the arrays are changed in place.
# links (N, 2); frag, rank (N,): fragment label and rank of each document; fsize, fmin, fmax
# (N,): per label, its size and its lowest- and highest-ranked document; free (N,): a stack
# of unused labels, n_free (1,) its height; buf (N,): scratch.
Forest = namedtuple("Forest", "links frag rank fsize fmin fmax free n_free buf")
# An ejection chain's search state: log (depth, 4) of the steps applied (kind, u, x, y); per
# level: candidates cx, cy, cg (depth, breadth), their count cn and the next one ci, the free
# end, the running gain and the log length on entering the level.
Chain = namedtuple("Chain", "log cx cy cg cn ci level_u level_gain level_log")

_OP_SHIFT = 0
_OP_ATTACH = 1


@njit(cache=True)
def _find(parent, x):
    """Union-find root of x, halving the path on the way."""
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


@njit(cache=True)
def edge_weight(indptr, nbr, weight, a, b):
    """Weight of edge a-b in the CSR graph; 0 when they are not joined or either is -1."""
    if a < 0 or b < 0:
        return 0.0
    if indptr[a + 1] - indptr[a] > indptr[b + 1] - indptr[b]:
        a, b = b, a  # scan the shorter row (hubs have long ones)
    for e in range(indptr[a], indptr[a + 1]):
        if nbr[e] == b:
            return weight[e]
    return 0.0


# ---------------------------------------------------------------------------------------------
# Links: greedy edges, joining ends, chaining fragments
# ---------------------------------------------------------------------------------------------


@njit(cache=True)
def _other(links, x, y):
    """The link of x that is not y (-1 if none); y = -1 gives an end's only link."""
    if links[x, 0] == y:
        return links[x, 1]
    return links[x, 0]


@njit(cache=True)
def _add_link(links, a, b):
    links[a, 0 if links[a, 0] < 0 else 1] = b
    links[b, 0 if links[b, 0] < 0 else 1] = a


@njit(cache=True)
def _remove_link(links, a, b):
    links[a, 0 if links[a, 0] == b else 1] = -1
    links[b, 0 if links[b, 0] == a else 1] = -1


@njit(cache=True)
def _degree(links, x):
    return (links[x, 0] >= 0) + (links[x, 1] >= 0)


@njit(cache=True)
def _link_roots(links):
    """Union-find parents in which the documents of each fragment share a root."""
    n = links.shape[0]
    parent = np.arange(n)
    for x in range(n):
        for slot in range(2):
            y = links[x, slot]
            if y > x:
                parent[_find(parent, x)] = _find(parent, y)
    return parent


@njit(cache=True)
def join_ends(links, pair_a, pair_b):
    """Link the pairs in the given order (best first) when both documents have fewer than two
    links and the link closes no cycle (union-find). Greedy-edge max-TSP is this on all kNN
    edges from empty links. Changes `links` in place; returns the number of links added."""
    parent = _link_roots(links)
    added = 0
    for i in range(pair_a.shape[0]):
        a = pair_a[i]
        b = pair_b[i]
        if _degree(links, a) == 2 or _degree(links, b) == 2:
            continue
        root_a = _find(parent, a)
        root_b = _find(parent, b)
        if root_a == root_b:
            continue
        parent[root_a] = root_b
        _add_link(links, a, b)
        added += 1
    return added


@njit(cache=True)
def two_hop_end_pairs(links, indptr, nbr, weight, width):
    """Candidate joins of fragment ends that share a kNN neighbour: ends u < z of different
    fragments with u - m - z in the graph (m among u's first `width` neighbours, z among
    m's), scored w(u,m) * w(m,z).

    Returns (a, b, score), one row per path u - m - z found.
    """
    n = links.shape[0]
    root = _link_roots(links)
    for x in range(n):
        root[x] = _find(root, x)
    count = 0
    for fill in range(2):  # count, then fill
        if fill:
            pair_a = np.empty(count, dtype=np.int64)
            pair_b = np.empty(count, dtype=np.int64)
            score = np.empty(count, dtype=np.float64)
            count = 0
        for u in range(n):
            if _degree(links, u) == 2:
                continue
            for e in range(indptr[u], min(indptr[u + 1], indptr[u] + width)):
                m = nbr[e]
                for f in range(indptr[m], min(indptr[m + 1], indptr[m] + width)):
                    z = nbr[f]
                    if z > u and _degree(links, z) < 2 and root[z] != root[u]:
                        if fill:
                            pair_a[count] = u
                            pair_b[count] = z
                            score[count] = weight[e] * weight[f]
                        count += 1
    return pair_a, pair_b, score


@njit(cache=True)
def chain_fragments(links):
    """Concatenate the fragments of a linear forest into one path, in the order of their
    lowest document, each walked from one end to the other. Returns (N,) int64 order."""
    n = links.shape[0]
    placed = np.zeros(n, dtype=np.bool_)
    order = np.empty(n, dtype=np.int64)
    pos = 0
    for start in range(n):
        if placed[start]:
            continue
        end = start
        prev = -1
        while True:
            nxt = _other(links, end, prev)
            if nxt < 0:
                break
            prev = end
            end = nxt
        prev = -1
        cur = end
        while cur >= 0:
            placed[cur] = True
            order[pos] = cur
            pos += 1
            nxt = _other(links, cur, prev)
            prev = cur
            cur = nxt
    return order


# ---------------------------------------------------------------------------------------------
# The forest with fragment labels and ranks
# ---------------------------------------------------------------------------------------------


@njit(cache=True)
def _forest(links):
    """A `Forest` over acyclic `links` (used in place): fragments labelled 0.., ranked."""
    n = links.shape[0]
    f = Forest(
        links,
        np.full(n, -1, dtype=np.int64),
        np.zeros(n, dtype=np.int64),
        np.zeros(n, dtype=np.int64),
        np.full(n, -1, dtype=np.int64),
        np.full(n, -1, dtype=np.int64),
        np.empty(n, dtype=np.int64),
        np.zeros(1, dtype=np.int64),
        np.empty(n, dtype=np.int64),
    )
    label = 0
    for start in range(n):
        if f.frag[start] >= 0 or _degree(links, start) == 2:
            continue
        prev = -1
        cur = start
        size = 0
        while cur >= 0:
            f.frag[cur] = label
            f.rank[cur] = size
            size += 1
            nxt = _other(links, cur, prev)
            prev = cur
            cur = nxt
        f.fsize[label] = size
        f.fmin[label] = start
        f.fmax[label] = prev
        label += 1
    for unused in range(n - 1, label - 1, -1):
        f.free[f.n_free[0]] = unused
        f.n_free[0] += 1
    return f


@njit(cache=True)
def _toward(f, x, up):
    """x's linked document with a higher (up) or lower rank, -1 if none."""
    for slot in range(2):
        y = f.links[x, slot]
        if y >= 0 and (f.rank[y] > f.rank[x]) == up:
            return y
    return -1


@njit(cache=True)
def _cut(f, a, b):
    """Remove the link a-b; the smaller of the two pieces gets a new label."""
    _remove_link(f.links, a, b)
    if f.rank[a] > f.rank[b]:
        a, b = b, a
    label = f.frag[a]
    x = a
    y = b
    lower_smaller = True
    while True:  # walk both pieces in lockstep: the one that ends first is smaller
        x = _toward(f, x, False)
        if x < 0:
            break
        y = _toward(f, y, True)
        if y < 0:
            lower_smaller = False
            break
    f.n_free[0] -= 1
    new = f.free[f.n_free[0]]
    size = 0
    cur = a if lower_smaller else b
    while cur >= 0:
        f.frag[cur] = new
        size += 1
        cur = _toward(f, cur, not lower_smaller)
    f.fsize[new] = size
    f.fsize[label] -= size
    if lower_smaller:
        f.fmin[new] = f.fmin[label]
        f.fmax[new] = a
        f.fmin[label] = b
    else:
        f.fmin[new] = b
        f.fmax[new] = f.fmax[label]
        f.fmax[label] = a


@njit(cache=True)
def _join(f, a, b):
    """Link the ends a and b of two different fragments; the smaller one is relabelled."""
    if f.fsize[f.frag[a]] < f.fsize[f.frag[b]]:
        a, b = b, a
    keep = f.frag[a]
    gone = f.frag[b]
    up = f.fmax[keep] == a
    prev = -1
    cur = b
    last = b
    step = 1
    while cur >= 0:
        f.frag[cur] = keep
        f.rank[cur] = f.rank[a] + step if up else f.rank[a] - step
        step += 1
        last = cur
        nxt = _other(f.links, cur, prev)
        prev = cur
        cur = nxt
    if up:
        f.fmax[keep] = last
    else:
        f.fmin[keep] = last
    f.fsize[keep] += f.fsize[gone]
    f.fsize[gone] = 0
    f.free[f.n_free[0]] = gone
    f.n_free[0] += 1
    _add_link(f.links, a, b)


@njit(cache=True)
def _reverse_block(f, u, v):
    """Mirror the ranks of the stretch u..v of one fragment (rank[u] < rank[v])."""
    count = 0
    cur = u
    while True:
        f.buf[count] = cur
        count += 1
        if cur == v:
            break
        cur = _toward(f, cur, True)
    low = f.rank[u]
    high = f.rank[v]
    for i in range(count):
        f.rank[f.buf[i]] = low + high - f.rank[f.buf[i]]
    label = f.frag[u]
    was_min = f.fmin[label] == u
    was_max = f.fmax[label] == v
    if was_min:
        f.fmin[label] = v
    if was_max:
        f.fmax[label] = u


# ---------------------------------------------------------------------------------------------
# Moves
# ---------------------------------------------------------------------------------------------


@njit(cache=True)
def _two_opt(f, t1, t2, t3, t4):
    """Replace links t1-t2 and t3-t4 by t1-t3 and t2-t4 (t2, t4: -1 = no link on that side).

    In one fragment, t2 and t4 lie on the same side of t1 and t3 and the stretch between the
    two removed links is reversed; across fragments, the four pieces are re-joined.
    """
    if f.frag[t1] == f.frag[t3]:
        up = f.rank[t2] > f.rank[t1] if t2 >= 0 else f.fmax[f.frag[t1]] == t1
        if up:
            if f.rank[t1] < f.rank[t3]:
                _reverse_block(f, t2, t3)
            else:
                _reverse_block(f, t4, t1)
        elif f.rank[t1] < f.rank[t3]:
            _reverse_block(f, t1, t4)
        else:
            _reverse_block(f, t3, t2)
        if t2 >= 0:
            _remove_link(f.links, t1, t2)
        if t4 >= 0:
            _remove_link(f.links, t3, t4)
        _add_link(f.links, t1, t3)
        if t2 >= 0 and t4 >= 0:
            _add_link(f.links, t2, t4)
        return
    if t2 >= 0:
        _cut(f, t1, t2)
    if t4 >= 0:
        _cut(f, t3, t4)
    _join(f, t1, t3)
    if t2 >= 0 and t4 >= 0:
        _join(f, t2, t4)


@njit(cache=True)
def _shift(f, u, x, y):
    """Link the end u to x and unlink x from y (when u and x share a fragment, y must be x's
    link on u's side); y is left with a free slot."""
    if f.frag[u] != f.frag[x]:
        _cut(f, x, y)
        _join(f, u, x)
        return
    if f.rank[u] > f.rank[x]:
        _reverse_block(f, y, u)
    else:
        _reverse_block(f, u, y)
    _remove_link(f.links, x, y)
    _add_link(f.links, u, x)


@njit(cache=True)
def _link_options(f, x, option):
    """The option-th way to free a slot of x (0, 1: drop that link; 2: x already has a free
    slot, nothing dropped = -1). Returns (valid, dropped document)."""
    if option < 2:
        y = f.links[x, option]
        return y >= 0, y
    return _degree(f.links, x) < 2, np.int64(-1)


# ---------------------------------------------------------------------------------------------
# Search
# ---------------------------------------------------------------------------------------------


@njit(cache=True)
def _try_two_opt(f, indptr, nbr, weight, c):
    """The best 2-opt move that gives c a better link t3 (t2, t4: the links given up).
    Returns (t2, t3, t4), t3 = -1 when none gains."""
    best = _EPS
    best_t2 = -1
    best_t3 = -1
    best_t4 = -1
    for option in range(3):
        valid, t2 = _link_options(f, c, option)
        if not valid:
            continue
        w12 = edge_weight(indptr, nbr, weight, c, t2)
        for e in range(indptr[c], indptr[c + 1]):
            t3 = np.int64(nbr[e])
            g1 = weight[e] - w12
            if g1 <= best:
                break
            if t3 == t2 or f.links[c, 0] == t3 or f.links[c, 1] == t3:
                continue
            for option4 in range(3):
                if f.frag[t3] == f.frag[c]:  # only the same side keeps one path
                    if option4 > 0:
                        break
                    up = f.rank[t2] > f.rank[c] if t2 >= 0 else f.fmax[f.frag[c]] == c
                    t4 = _toward(f, t3, up)
                    if t4 == c:
                        break
                else:
                    valid, t4 = _link_options(f, t3, option4)
                    if not valid:
                        continue
                gain = (
                    g1
                    + edge_weight(indptr, nbr, weight, t2, t4)
                    - edge_weight(indptr, nbr, weight, t3, t4)
                )
                if gain > best:
                    best, best_t2, best_t3, best_t4 = gain, t2, t3, t4
    return best_t2, best_t3, best_t4


@njit(cache=True)
def _chain_candidates(f, indptr, nbr, weight, u, gain, breadth, cx, cy, cg):
    """The `breadth` best next steps of a chain from the free end u: link u-x, unlink x-y
    (y = -1: x has a free slot in another fragment and the chain ends), ranked by
    w(u,x) - w(x,y), keeping only those that leave the running gain positive.
    Returns how many were written to cx, cy, cg."""
    count = 0
    for e in range(indptr[u], indptr[u + 1]):
        x = np.int64(nbr[e])
        w_ux = weight[e]
        if gain + w_ux <= _EPS:
            break
        if count == breadth and w_ux <= cg[count - 1]:
            break  # no later x can beat the worst kept step
        if f.links[u, 0] == x or f.links[u, 1] == x:
            continue
        for option in range(3):
            if f.frag[x] == f.frag[u]:  # only x's link on u's side keeps one path
                if option > 0:
                    break
                y = _toward(f, x, f.rank[u] > f.rank[x])
            else:
                valid, y = _link_options(f, x, option)
                if not valid:
                    continue
            g = w_ux - edge_weight(indptr, nbr, weight, x, y)
            if count == breadth and g <= cg[count - 1]:
                continue
            i = count if count < breadth else breadth - 1
            while i > 0 and cg[i - 1] < g:
                cx[i] = cx[i - 1]
                cy[i] = cy[i - 1]
                cg[i] = cg[i - 1]
                i -= 1
            cx[i] = x
            cy[i] = y
            cg[i] = g
            if count < breadth:
                count += 1
    return count


@njit(cache=True)
def _log(chain, n_log, kind, a, b, c):
    chain.log[n_log, 0] = kind
    chain.log[n_log, 1] = a
    chain.log[n_log, 2] = b
    chain.log[n_log, 3] = c
    return n_log + 1


@njit(cache=True)
def _undo_to(f, chain, n_log, target):
    """Undo logged operations until `target` remain; returns target."""
    while n_log > target:
        n_log -= 1
        kind, a, b, c = (
            chain.log[n_log, 0],
            chain.log[n_log, 1],
            chain.log[n_log, 2],
            chain.log[n_log, 3],
        )
        if kind == _OP_SHIFT:
            _shift(f, c, b, a)
        else:
            _cut(f, a, b)
    return target


@njit(cache=True)
def _ejection_chain(f, indptr, nbr, weight, c, breadth, chain):
    """Search an improving ejection chain from c, which has a free slot, and apply it.

    Repeatedly link the free end u (first c) to some x and unlink x from y, y becoming the
    free end. Depth-first with `breadth[level]` candidates per level; the first chain with a
    positive gain is extended greedily and its best prefix kept. Returns the number of steps
    applied (0 = none; their documents are in chain.log).
    """
    max_depth = breadth.shape[0]
    n_log = 0
    best = _EPS
    best_log = -1
    level = 0
    chain.level_u[0] = c
    chain.level_gain[0] = 0.0
    chain.level_log[0] = 0
    chain.ci[0] = 0
    chain.cn[0] = _chain_candidates(
        f, indptr, nbr, weight, c, 0.0, breadth[0], chain.cx[0], chain.cy[0], chain.cg[0]
    )
    found = False
    while True:
        if chain.ci[level] >= chain.cn[level]:  # level exhausted: back up one
            if level == 0 or found:
                break
            level -= 1
            n_log = _undo_to(f, chain, n_log, chain.level_log[level])
            continue
        j = chain.ci[level]
        chain.ci[level] += 1
        u = chain.level_u[level]
        x = chain.cx[level, j]
        y = chain.cy[level, j]
        gain = chain.level_gain[level] + chain.cg[level, j]
        improves = gain > best
        row_best = weight[indptr[y]] if y >= 0 and indptr[y + 1] > indptr[y] else 0.0
        deeper = y >= 0 and level + 1 < max_depth and gain + row_best > _EPS
        if not (improves or deeper):
            continue  # neither a gain nor a way on: no need to apply it
        if y >= 0:
            _shift(f, u, x, y)
            n_log = _log(chain, n_log, _OP_SHIFT, u, x, y)
        else:
            _join(f, u, x)
            n_log = _log(chain, n_log, _OP_ATTACH, u, x, -1)
        if improves:
            found = True
            best, best_log = gain, n_log
        if not deeper:
            if found:
                break
            n_log = _undo_to(f, chain, n_log, chain.level_log[level])
            continue
        level += 1
        chain.level_u[level] = y
        chain.level_gain[level] = gain
        chain.level_log[level] = n_log
        chain.ci[level] = 0
        chain.cn[level] = _chain_candidates(
            f,
            indptr,
            nbr,
            weight,
            y,
            gain,
            1 if found else breadth[level],
            chain.cx[level],
            chain.cy[level],
            chain.cg[level],
        )
    if found:
        return _undo_to(f, chain, n_log, best_log)
    _undo_to(f, chain, n_log, 0)
    return 0


@njit(cache=True)
def _enqueue(queue, queued, tail, x):
    if x >= 0 and not queued[x]:
        queued[x] = True
        queue[tail % queue.shape[0]] = x
        tail += 1
    return tail


@njit(cache=True)
def improve_forest(links, indptr, nbr, weight, breadth):
    """Local search on an acyclic `links` forest, raising its summed link weight.

    Moves, all along kNN edges: 2-opt (which also joins and re-pairs fragment ends) and
    ejection chains from fragment ends (depth len(breadth), breadth[level] candidates per
    level; empty = none). A work queue holds the documents whose links changed. Changes
    `links` in place.

    Returns the number of moves applied.
    """
    n = links.shape[0]
    f = _forest(links)
    max_depth = breadth.shape[0]
    width = max(1, breadth.max()) if max_depth else 1
    chain = Chain(
        np.empty((max_depth, 4), dtype=np.int64),
        np.empty((max_depth, width), dtype=np.int64),
        np.empty((max_depth, width), dtype=np.int64),
        np.empty((max_depth, width), dtype=np.float64),
        np.zeros(max_depth, dtype=np.int64),
        np.zeros(max_depth, dtype=np.int64),
        np.empty(max_depth, dtype=np.int64),
        np.empty(max_depth, dtype=np.float64),
        np.empty(max_depth, dtype=np.int64),
    )
    queue = np.empty(n, dtype=np.int64)
    queued = np.zeros(n, dtype=np.bool_)
    tail = 0
    for i in range(n):
        tail = _enqueue(queue, queued, tail, i)
    head = 0
    moves = 0
    while head < tail:
        c = queue[head % n]
        head += 1
        queued[c] = False
        t2, t3, t4 = _try_two_opt(f, indptr, nbr, weight, c)
        if t3 >= 0:
            _two_opt(f, c, t2, t3, t4)
            for x in (c, t2, t3, t4):
                tail = _enqueue(queue, queued, tail, x)
            moves += 1
            continue
        if max_depth == 0 or _degree(links, c) == 2:
            continue
        n_log = _ejection_chain(f, indptr, nbr, weight, c, breadth, chain)
        if n_log:
            for i in range(n_log):
                for col in range(1, 4):
                    tail = _enqueue(queue, queued, tail, chain.log[i, col])
            moves += 1
    return moves
