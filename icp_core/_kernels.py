"""Compiled loops over documents (numba). Arrays and ints in, arrays out; no validation here.

Public wrappers in `traverse.py`, `pack.py` and `metrics.py` check and convert inputs, then
call these. Each kernel has a plain-Python reference in the tests.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# ---------------------------------------------------------------------------------------------
# kNN graph as undirected CSR
# ---------------------------------------------------------------------------------------------


@njit(cache=True)
def _sort_row(nbr, weight, lo, hi):
    """Sort nbr[lo:hi] by (weight desc, id asc) in place: insertion sort for short rows."""
    n = hi - lo
    if n <= 48:
        for a in range(lo + 1, hi):
            key_n = nbr[a]
            key_w = weight[a]
            b = a - 1
            while b >= lo and (weight[b] < key_w or (weight[b] == key_w and nbr[b] > key_n)):
                nbr[b + 1] = nbr[b]
                weight[b + 1] = weight[b]
                b -= 1
            nbr[b + 1] = key_n
            weight[b + 1] = key_w
        return
    # long rows (hubs): lexsort via a stable argsort on id, then on -weight
    by_id = np.argsort(nbr[lo:hi], kind="mergesort")
    ids = nbr[lo:hi][by_id]
    ws = weight[lo:hi][by_id]
    by_w = np.argsort(-ws, kind="mergesort")
    nbr[lo:hi] = ids[by_w]
    weight[lo:hi] = ws[by_w]


@njit(cache=True)
def build_undirected_csr(ids, sims):
    """Undirected kNN graph: edge i-j if j in top-k(i) or i in top-k(j), weight = max sim.

    Returns indptr (N+1,) int64, nbr (E2,) int32, weight (E2,) float32, rows sorted by
    weight desc then id asc, no self loops, no repeated neighbours.
    """
    n, k = ids.shape
    deg = np.zeros(n + 1, dtype=np.int64)
    for i in range(n):
        for c in range(k):
            j = ids[i, c]
            if j >= 0 and j != i:
                deg[i + 1] += 1
                deg[j + 1] += 1
    indptr = np.cumsum(deg)
    fill = indptr[:-1].copy()
    nbr = np.empty(indptr[n], dtype=np.int32)
    weight = np.empty(indptr[n], dtype=np.float32)
    for i in range(n):
        for c in range(k):
            j = ids[i, c]
            if j >= 0 and j != i:
                w = sims[i, c]
                nbr[fill[i]] = j
                weight[fill[i]] = w
                fill[i] += 1
                nbr[fill[j]] = i
                weight[fill[j]] = w
                fill[j] += 1
    # per row: sort, then keep the first (best) copy of each neighbour; compact in place
    seen_at = np.full(n, -1, dtype=np.int64)
    out = 0
    new_indptr = np.empty(n + 1, dtype=np.int64)
    new_indptr[0] = 0
    for i in range(n):
        lo = indptr[i]
        hi = indptr[i + 1]
        _sort_row(nbr, weight, lo, hi)
        for a in range(lo, hi):
            j = nbr[a]
            if seen_at[j] != i:
                seen_at[j] = i
                nbr[out] = j
                weight[out] = weight[a]
                out += 1
        new_indptr[i + 1] = out
    return new_indptr, nbr[:out].copy(), weight[:out].copy()


@njit(cache=True)
def transitions_on_edges(indptr, nbr, order):
    """For each step order[p-1] -> order[p], whether it is an edge of the CSR graph.

    Returns (len(order),) bool, False at position 0.
    """
    m = order.shape[0]
    out = np.zeros(m, dtype=np.bool_)
    for p in range(1, m):
        a = order[p - 1]
        b = order[p]
        for e in range(indptr[a], indptr[a + 1]):
            if nbr[e] == b:
                out[p] = True
                break
    return out


# ---------------------------------------------------------------------------------------------
# Orderings
# ---------------------------------------------------------------------------------------------


@njit(cache=True)
def order_by_degree(indptr):
    """Documents sorted by degree ascending, ties by id (a counting sort, O(N))."""
    n = indptr.shape[0] - 1
    max_deg = 0
    for i in range(n):
        d = indptr[i + 1] - indptr[i]
        if d > max_deg:
            max_deg = d
    counts = np.zeros(max_deg + 2, dtype=np.int64)
    for i in range(n):
        counts[indptr[i + 1] - indptr[i] + 1] += 1
    for d in range(1, max_deg + 2):
        counts[d] += counts[d - 1]
    out = np.empty(n, dtype=np.int64)
    for i in range(n):
        d = indptr[i + 1] - indptr[i]
        out[counts[d]] = i
        counts[d] += 1
    return out


@njit(cache=True)
def icp_walk(indptr, nbr):
    """Algorithm 1 of the paper over a CSR graph whose rows are sorted best first.

    Start at an unvisited document of minimum degree; step to the most similar unvisited
    neighbour (the first unvisited in the sorted row); when none is left, restart at the next
    unvisited document of minimum degree. Returns (N,) int64 order.
    """
    n = indptr.shape[0] - 1
    starts = order_by_degree(indptr)
    visited = np.zeros(n, dtype=np.bool_)
    order = np.empty(n, dtype=np.int64)
    next_start = 0
    for pos in range(n):
        if pos == 0:
            cur = starts[0]
        else:
            cur = -1
            prev = order[pos - 1]
            for e in range(indptr[prev], indptr[prev + 1]):
                if not visited[nbr[e]]:
                    cur = nbr[e]
                    break
            if cur < 0:
                while visited[starts[next_start]]:
                    next_start += 1
                cur = starts[next_start]
        visited[cur] = True
        order[pos] = cur
    return order


@njit(cache=True)
def original_chains(ids, max_rank, chain_max):
    """The sort phase of the authors' script: own neighbour list only, lowest-id restarts.

    Follows columns 0..max_rank-1 of the doc's own list (self excluded), takes the first
    unvisited; starts a new chain when none is unvisited or the chain holds chain_max docs.
    Returns (order, chain_starts) where chain c is order[chain_starts[c]:chain_starts[c+1]].
    """
    n, k = ids.shape
    ranks = min(max_rank, k)
    visited = np.zeros(n, dtype=np.bool_)
    order = np.empty(n, dtype=np.int64)
    chain_starts = np.empty(n + 1, dtype=np.int64)
    n_chains = 0
    lowest = 0
    chain_len = 0
    for pos in range(n):
        cur = -1
        if pos > 0 and chain_len < chain_max:
            prev = order[pos - 1]
            for c in range(ranks):
                j = ids[prev, c]
                if j >= 0 and not visited[j]:
                    cur = j
                    break
        if cur < 0:
            while visited[lowest]:
                lowest += 1
            cur = lowest
            chain_starts[n_chains] = pos
            n_chains += 1
            chain_len = 0
        visited[cur] = True
        order[pos] = cur
        chain_len += 1
    chain_starts[n_chains] = n
    return order, chain_starts[: n_chains + 1].copy()


@njit(cache=True)
def original_merge(ids, order, chain_starts, max_rank, chain_max):
    """The merge phase: each doc of a chain shorter than chain_max moves to just before its
    first own neighbour (columns 0..max_rank-1) that sits in another chain.

    Chains are kept as doubly linked lists; returns the final (N,) int64 order.
    """
    n, k = ids.shape
    ranks = min(max_rank, k)
    n_chains = chain_starts.shape[0] - 1
    chain_of = np.empty(n, dtype=np.int64)
    prev = np.full(n, -1, dtype=np.int64)
    nxt = np.full(n, -1, dtype=np.int64)
    head = np.full(n_chains, -1, dtype=np.int64)
    for c in range(n_chains):
        lo = chain_starts[c]
        hi = chain_starts[c + 1]
        head[c] = order[lo]
        for p in range(lo, hi):
            d = order[p]
            chain_of[d] = c
            if p > lo:
                prev[d] = order[p - 1]
            if p < hi - 1:
                nxt[d] = order[p + 1]
    for c in range(n_chains):
        lo = chain_starts[c]
        hi = chain_starts[c + 1]
        if hi - lo >= chain_max:
            continue
        for p in range(lo, hi):
            d = order[p]
            target = -1
            for r in range(ranks):
                j = ids[d, r]
                if j >= 0 and chain_of[j] != chain_of[d]:
                    target = j
                    break
            if target < 0:
                continue
            # unlink d from its chain
            own = chain_of[d]
            if prev[d] >= 0:
                nxt[prev[d]] = nxt[d]
            else:
                head[own] = nxt[d]
            if nxt[d] >= 0:
                prev[nxt[d]] = prev[d]
            # link d before target
            dest = chain_of[target]
            before = prev[target]
            prev[d] = before
            nxt[d] = target
            prev[target] = d
            if before >= 0:
                nxt[before] = d
            else:
                head[dest] = d
            chain_of[d] = dest
    out = np.empty(n, dtype=np.int64)
    pos = 0
    for c in range(n_chains):
        d = head[c]
        while d >= 0:
            out[pos] = d
            pos += 1
            d = nxt[d]
    return out


# ---------------------------------------------------------------------------------------------
# Packing
# ---------------------------------------------------------------------------------------------


@njit(cache=True)
def pack_pieces(order, doc_tokens, sep_tokens, context_length, whole):
    """Cut the path into contexts of context_length tokens.

    Each document contributes doc_tokens[d] tokens followed by sep_tokens separator tokens.
    split (whole=False): the stream is cut every context_length tokens.
    whole: a document (with its separator) starts a new context when it does not fit in the
    current one, unless it alone exceeds context_length; then it is cut like in split mode.

    Returns per piece: context, doc, start, end (token offsets in the doc's own tokens), and
    sep (separator tokens the piece carries); pieces are in path order.
    """
    m = order.shape[0]
    max_pieces = m + 1
    total = 0
    for p in range(m):
        total += doc_tokens[order[p]] + sep_tokens
    max_pieces += total // context_length + m
    ctx = np.empty(max_pieces, dtype=np.int64)
    doc = np.empty(max_pieces, dtype=np.int64)
    start = np.empty(max_pieces, dtype=np.int64)
    end = np.empty(max_pieces, dtype=np.int64)
    sep = np.empty(max_pieces, dtype=np.int64)
    c = 0
    fill = 0
    out = 0
    for p in range(m):
        d = order[p]
        length = doc_tokens[d]
        unit = length + sep_tokens
        if whole and fill > 0 and unit > context_length - fill:
            c += 1
            fill = 0
        done = 0
        while done < unit:
            if fill == context_length:
                c += 1
                fill = 0
            take = min(unit - done, context_length - fill)
            ctx[out] = c
            doc[out] = d
            start[out] = min(done, length)
            end[out] = min(done + take, length)
            sep[out] = (done + take) - max(done, length) if done + take > length else 0
            out += 1
            fill += take
            done += take
        if unit == 0:  # cannot happen with sep_tokens >= 1, kept for sep_tokens == 0
            ctx[out] = c
            doc[out] = d
            start[out] = 0
            end[out] = 0
            sep[out] = 0
            out += 1
    return (
        ctx[:out].copy(),
        doc[:out].copy(),
        start[:out].copy(),
        end[:out].copy(),
        sep[:out].copy(),
    )


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------


@njit(cache=True)
def cache_gain_per_piece(piece_ctx, piece_doc, word_ids, word_offsets, log_p_uni, lam):
    """context_cache_gain per piece (NaN for the first piece of each context).

    For a piece after the first: mean over its document's words of
    log(lam * p_uni(w) + (1 - lam) * c(w) / C) - log p_uni(w), where c counts the words of
    the preceding pieces of the same context and C their total.
    """
    n_pieces = piece_ctx.shape[0]
    counts = np.zeros(log_p_uni.shape[0], dtype=np.int64)
    gains = np.full(n_pieces, np.nan)
    total = 0
    ctx_first = 0
    for p in range(n_pieces):
        if p > 0 and piece_ctx[p] != piece_ctx[p - 1]:
            for q in range(ctx_first, p):
                d = piece_doc[q]
                for a in range(word_offsets[d], word_offsets[d + 1]):
                    counts[word_ids[a]] = 0
            total = 0
            ctx_first = p
        d = piece_doc[p]
        lo = word_offsets[d]
        hi = word_offsets[d + 1]
        if p > ctx_first and total > 0 and hi > lo:
            acc = 0.0
            for a in range(lo, hi):
                w = word_ids[a]
                p_uni = np.exp(log_p_uni[w])
                acc += np.log(lam * p_uni + (1.0 - lam) * counts[w] / total) - log_p_uni[w]
            gains[p] = acc / (hi - lo)
        for a in range(lo, hi):
            counts[word_ids[a]] += 1
        total += hi - lo
    return gains


@njit(cache=True)
def trigram_near_copies(codes, offsets, order, threshold):
    """The authors' filter: drop a document whose prefix's character-trigram set has Jaccard
    > threshold with that of the previous kept document in `order`.

    codes/offsets: the prefixes as code points, doc d = codes[offsets[d]:offsets[d+1]].
    Returns (len(order),) bool, True = drop, and the kept document each drop copies.
    """
    m = order.shape[0]
    drop = np.zeros(m, dtype=np.bool_)
    copy_of = np.full(m, -1, dtype=np.int64)
    prev = -1
    prev_grams = np.empty(0, dtype=np.int64)
    for p in range(m):
        d = order[p]
        lo = offsets[d]
        hi = offsets[d + 1]
        n = max(hi - lo - 2, 0)
        grams = np.empty(n, dtype=np.int64)
        for a in range(n):
            grams[a] = (codes[lo + a] * 1114112 + codes[lo + a + 1]) * 1114112 + codes[lo + a + 2]
        grams = np.unique(grams)
        if prev >= 0 and grams.shape[0] > 0 and prev_grams.shape[0] > 0:
            i = 0
            j = 0
            common = 0
            while i < grams.shape[0] and j < prev_grams.shape[0]:
                if grams[i] == prev_grams[j]:
                    common += 1
                    i += 1
                    j += 1
                elif grams[i] < prev_grams[j]:
                    i += 1
                else:
                    j += 1
            union = grams.shape[0] + prev_grams.shape[0] - common
            if common / union > threshold:
                drop[p] = True
                copy_of[p] = prev
                continue
        prev = d
        prev_grams = grams
    return drop, copy_of
