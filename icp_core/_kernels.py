"""Compiled loops over documents (numba). Arrays and ints in, arrays out; no validation here.

Public wrappers in `traverse.py`, `pack.py` and `metrics.py` check and convert inputs, then
call these. Each kernel has a plain-Python reference in the tests.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from icp_core.errors import IcpError

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


@njit(parallel=True, cache=True)
def narrow_ids(ids, out):
    """Copy (N, k) ids into the narrower (N, k) out (int64 -> int32) and return their
    (min, max), taken before narrowing: the range check and the copy in one parallel pass."""
    n, k = ids.shape
    low = np.iinfo(ids.dtype).max
    high = np.iinfo(ids.dtype).min
    for i in prange(n):
        for c in range(k):
            value = ids[i, c]
            out[i, c] = value
            low = min(low, value)
            high = max(high, value)
    return low, high


# reassociating the float32 sums lets LLVM vectorise the dot products; no nnan/ninf flags, since
# absent candidates score -inf
@njit(parallel=True, cache=True, fastmath={"reassoc", "contract"})
def rerank_candidates(queries, candidates, base, pick, sims):
    """For each query row, the best pick.shape[1] of its candidate rows of `base` by exact inner
    product (ties to the lower candidate id, -1 candidates last with -inf): their columns in
    `candidates` into pick, their similarities into sims. Dot products in float32, without
    gathering the candidates' vectors into a temporary array."""
    n, c = candidates.shape
    keep = pick.shape[1]
    dim = queries.shape[1]
    for q in prange(n):
        filled = 0
        for col in range(c):
            doc = candidates[q, col]
            sim = np.float32(-np.inf)
            if doc >= 0:
                sim = np.float32(0.0)
                for d in range(dim):
                    sim += queries[q, d] * base[doc, d]
            key_doc = doc if doc >= 0 else np.iinfo(np.int64).max
            # insert into the sorted top list (sim desc, then candidate id asc)
            slot = filled
            while slot > 0:
                prev = pick[q, slot - 1]
                prev_doc = candidates[q, prev]
                prev_key = prev_doc if prev_doc >= 0 else np.iinfo(np.int64).max
                if sims[q, slot - 1] > sim or (sims[q, slot - 1] == sim and prev_key <= key_doc):
                    break
                slot -= 1
            if slot >= keep:
                continue
            last = min(filled, keep - 1)
            for move in range(last, slot, -1):
                pick[q, move] = pick[q, move - 1]
                sims[q, move] = sims[q, move - 1]
            pick[q, slot] = col
            sims[q, slot] = sim
            if filled < keep:
                filled += 1


# ---------------------------------------------------------------------------------------------
# Orderings
# ---------------------------------------------------------------------------------------------


# Algorithm 1 works on the kNN lists themselves plus an in-edge list per document, not on a
# sorted, deduplicated undirected CSR: the walk only needs the best unvisited neighbour, which
# a branch-free max over both lists gives without sorting (a mutual pair listed twice simply
# offers its larger weight). A candidate is one uint64 key: the weight's bits mapped to an
# order-preserving uint32 in the high half, 2**32 - 1 - id in the low half, so the largest key
# is the most similar neighbour, ties to the lowest id.

_LOW_HALF = np.uint64(0xFFFFFFFF)


@njit(inline="always")
def _edge_key(weight, doc):
    """The candidate key of `doc` reached over an edge of `weight` (float32)."""
    positive_zero = np.float32(np.float32(weight) + np.float32(0.0))  # -0.0 + 0.0 is +0.0
    bits = np.uint32(positive_zero.view(np.uint32))
    sign = np.uint32(0x80000000)
    ordered = ~bits if bits & sign else bits | sign  # negatives reversed, below positives
    return (np.uint64(ordered) << np.uint64(32)) | (_LOW_HALF - np.uint64(doc))


@njit(inline="always")
def _key_doc(key):
    return np.int64(_LOW_HALF - (key & _LOW_HALF))


@njit(inline="always")
def _is_set(bits, i):
    return (bits[i >> 6] >> np.uint64(i & 63)) & np.uint64(1)


@intrinsic
def _prefetch(typingctx, array, index):
    """Hint the CPU to load array[index] into cache (llvm.prefetch); no effect on results."""
    if not isinstance(array, types.Array) or not isinstance(index, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        array_type, index_type = signature.args
        data = context.make_array(array_type)(context, builder, args[0])
        offset = context.cast(builder, args[1], index_type, types.intp)
        pointer = cgutils.get_item_pointer(
            context, builder, array_type, data, [offset], wraparound=False
        )
        int32 = ir.IntType(32)
        byte_pointer = builder.bitcast(pointer, ir.IntType(8).as_pointer())
        function_type = ir.FunctionType(ir.VoidType(), [byte_pointer.type, int32, int32, int32])
        function = cgutils.get_or_insert_function(builder.module, function_type, "llvm.prefetch.p0")
        builder.call(function, [byte_pointer, int32(0), int32(3), int32(1)])  # read, keep, data
        return context.get_dummy_value()

    return types.void(array, index), codegen


# The passes that build the in-edges run in parallel over blocks of consecutive rows, one
# block per thread: each block counts the in-edges its rows give into its own row of
# `cursors` (no atomics), and later writes them from there, so every document's in-edges end
# up in source order (block by block, row by row) whatever the number of blocks.


@njit(parallel=True, cache=True)
def count_in_edges(ids, cursors):
    """cursors[b, j] += number of entries naming j in the rows of block b (self, -1 skipped).

    cursors: (B, N) zeros; block b = rows b*N//B .. (b+1)*N//B - 1.
    """
    n, k = ids.shape
    blocks = cursors.shape[0]
    for b in prange(blocks):
        for i in range(b * n // blocks, (b + 1) * n // blocks):
            for c in range(k):
                j = ids[i, c]
                if j >= 0 and j != i:
                    cursors[b, j] += 1


@njit(cache=True)
def in_edge_offsets(cursors, in_ptr):
    """Turn the counts of `count_in_edges` into write cursors, and fill in_ptr (N+1,).

    After: in_ptr[j]..in_ptr[j+1] is j's slice of the in-edge keys, and cursors[b, j] where
    block b's in-edges of j start in it. Both must be wide enough for N*k (uint32 or int64).
    """
    blocks, n = cursors.shape
    total = 0
    for j in range(n):
        in_ptr[j] = total
        for b in range(blocks):
            count = cursors[b, j]
            cursors[b, j] = total
            total += count
    in_ptr[n] = total


@njit(parallel=True, cache=True)
def fill_in_edges(ids, sims, cursors, in_keys):
    """in_keys[in_ptr[j]:in_ptr[j+1]] = keys of the documents listing j, in source order.

    cursors: from `in_edge_offsets`, advanced as keys are written.
    """
    n, k = ids.shape
    blocks = cursors.shape[0]
    for b in prange(blocks):
        for i in range(b * n // blocks, (b + 1) * n // blocks):
            for c in range(k):
                j = ids[i, c]
                if j >= 0 and j != i:
                    slot = cursors[b, j]
                    in_keys[slot] = _edge_key(sims[i, c], i)
                    cursors[b, j] = slot + 1


@njit(parallel=True, cache=True)
def degrees_and_best_in(ids, in_ptr, in_keys, degree, best_in):
    """degree[i]: distinct neighbours of i in the undirected graph; best_in[i]: largest
    in-edge key of i (0 when none).

    Each document on its own (in parallel), reading only its own row and in-edges: an own
    entry counts unless it is -1, i itself or repeats an earlier entry of the row; an in-edge
    counts unless its source is already in the row or repeats the previous in-edge's source
    (in-edges are in source order, so a source listing i twice gives adjacent keys).
    """
    n, k = ids.shape
    for i in prange(n):
        # sums of comparisons, not early exits: branch-free inner loops the compiler vectorises
        distinct = 0
        for c in range(k):
            j = ids[i, c]
            repeats = 0
            for earlier in range(c):
                repeats += ids[i, earlier] == j
            distinct += (j >= 0) & (j != i) & (repeats == 0)
        best = np.uint64(0)
        previous = np.int64(-1)
        for e in range(in_ptr[i], in_ptr[i + 1]):
            key = in_keys[e]
            j = _key_doc(key)
            listed = 0
            for c in range(k):
                listed += ids[i, c] == j
            distinct += (j != previous) & (listed == 0)
            previous = j
            best = max(best, key)
        degree[i] = distinct
        best_in[i] = best


@njit(cache=True)
def order_by_degree(degree, out):
    """out = documents sorted by degree ascending, ties by id (a counting sort, O(N))."""
    n = degree.shape[0]
    max_degree = 0
    for i in range(n):
        max_degree = max(max_degree, degree[i])
    counts = np.zeros(max_degree + 2, dtype=np.int64)
    for i in range(n):
        counts[degree[i] + 1] += 1
    for d in range(1, max_degree + 2):
        counts[d] += counts[d - 1]
    for i in range(n):
        d = degree[i]
        out[counts[d]] = i
        counts[d] += 1


@njit(cache=True)
def icp_walk(ids, sims, in_ptr, in_keys, best_in, starts, visited, order):
    """Algorithm 1 of the paper: start at an unvisited document of minimum degree, step to the
    most similar unvisited neighbour (own list or in-edges; ties to the lowest id), restart at
    the next unvisited document of minimum degree when none is left.

    starts: documents by (degree, id); visited: (ceil(N/64),) uint64 zeros; order: (N,) out.
    The walk is bound by memory latency, so each step prefetches what the next steps may read
    (its own in-edge row, the rows of its unvisited candidates), and skips the in-edges when
    even the best of them (best_in) loses to the best own-list candidate.
    """
    n, k = ids.shape
    flat_ids = ids.reshape(n * k)
    flat_sims = sims.reshape(n * k)
    none = np.uint64(0)
    next_start = 0
    cur = np.int64(starts[0])
    for pos in range(n):
        visited[cur >> 6] |= np.uint64(1) << np.uint64(cur & 63)
        order[pos] = cur
        # cur's in-edge row is needed after its own list when its best in-edge may win: ask for
        # both ends of the row now, so that the fetch overlaps the own-list work (cur's
        # pointers were prefetched a step ago, its in-edges only when it came from one)
        _prefetch(in_keys, in_ptr[cur])
        _prefetch(in_keys, max(in_ptr[cur + 1], 1) - 1)
        # Branches, not masks: at scale each step waits on memory, and a predicted branch
        # lets the CPU run on past a visited bit still being loaded (masks were 15% slower
        # at N = 1M, though twice as fast when everything fits in cache).
        best = none
        for c in range(k):
            j = np.int64(ids[cur, c])
            free = j >= 0 and _is_set(visited, j) == 0
            if free:
                _prefetch(flat_ids, j * k)
                _prefetch(flat_sims, j * k)
                _prefetch(best_in, j)
                _prefetch(in_ptr, j)
            best = max(best, _edge_key(sims[cur, c], j) if free else none)
        if best_in[cur] > best:
            for e in range(in_ptr[cur], in_ptr[cur + 1]):
                key = in_keys[e]
                j = _key_doc(key)
                free = _is_set(visited, j) == 0
                if free:
                    _prefetch(flat_ids, j * k)
                    _prefetch(flat_sims, j * k)
                    _prefetch(best_in, j)
                    _prefetch(in_ptr, j)
                    _prefetch(in_keys, in_ptr[j])
                best = max(best, key if free else none)
        if best != none:
            cur = _key_doc(best)
        elif pos + 1 < n:
            while _is_set(visited, np.int64(starts[next_start])):
                next_start += 1
            cur = np.int64(starts[next_start])


def icp_order(ids: np.ndarray, sims: np.ndarray) -> np.ndarray:
    """Algorithm 1 over (N, k) kNN lists (int32/int64 ids, -1 = none; float32 sims).

    Large arrays are allocated here with numpy rather than inside the kernels: numpy asks the
    kernel for huge pages, which spares the walk most of its TLB misses.

    Returns:
        (N,) int64 order.
    """
    n_docs = ids.shape[0]
    if n_docs >= 2**32 - 1:
        raise IcpError(
            f"{n_docs} documents: the icp order handles up to 2**32 - 2; split the corpus"
        )
    pointer_type = np.uint32 if ids.size < 2**32 else np.int64
    cursors = np.zeros((numba.get_num_threads(), n_docs), dtype=pointer_type)
    count_in_edges(ids, cursors)
    in_ptr = np.empty(n_docs + 1, dtype=pointer_type)
    in_edge_offsets(cursors, in_ptr)
    in_keys = np.empty(int(in_ptr[n_docs]), dtype=np.uint64)
    fill_in_edges(ids, sims, cursors, in_keys)
    degree = np.empty(n_docs, dtype=np.int32)
    best_in = np.empty(n_docs, dtype=np.uint64)
    degrees_and_best_in(ids, in_ptr, in_keys, degree, best_in)
    starts = cursors[0]  # the cursors are spent: reuse their memory
    order_by_degree(degree, starts)
    del degree
    visited = np.zeros((n_docs + 63) // 64, dtype=np.uint64)
    order = np.empty(n_docs, dtype=np.int64)
    icp_walk(ids, sims, in_ptr, in_keys, best_in, starts, visited, order)
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


@njit(cache=True)
def write_piece_tokens(doc_ids, doc_offsets, piece_doc, start, end, sep, sep_ids, out, position):
    """Write pieces' tokens, each followed by its part of the separator, into out[position:].

    doc_ids/doc_offsets: the pieces' documents' token ids, document d (local numbering) at
    doc_ids[doc_offsets[d]:doc_offsets[d + 1]]; piece_doc, start, end, sep: per piece (see
    `pack_pieces`). A piece carries the separator's head, or its tail when a multi-token
    separator was cut by a context boundary and the piece holds no document tokens.
    Returns the position after the last token written.
    """
    n_sep = sep_ids.shape[0]
    for p in range(piece_doc.shape[0]):
        base = doc_offsets[piece_doc[p]]
        for t in range(start[p], end[p]):
            out[position] = doc_ids[base + t]
            position += 1
        first = n_sep - sep[p] if start[p] == end[p] and start[p] > 0 else 0
        for t in range(sep[p]):
            out[position] = sep_ids[first + t]
            position += 1
    return position


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
