"""Pack: walk the ordered documents and fill contexts of exactly `context_length` tokens.

Token counts come from the language model's tokenizer (`icp_core.tokenizer`). A separator
(the tokenizer's end-of-document token by default) follows every document. Two policies:

- `split` (the paper): documents are concatenated and the stream is cut every L tokens, so a
  document may continue in the next context.
- `whole`: a document starts a new context when it does not fit in the current one (the rest
  is padding), unless it alone exceeds L, in which case it is cut like in `split`.

Contexts are then shuffled (seeded) so that adjacent contexts are unrelated, as the authors
advise; `shuffle=False` keeps path order. In `split` mode only the context that ends the path
can be shorter than L; it stays last, so a reader that cuts the token stream every L tokens
never goes out of step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from icp_core import _kernels
from icp_core.errors import IcpError

PACK_MODES = ("split", "whole")


@dataclass(frozen=True)
class Packing:
    """Contexts as flat piece arrays, sorted by (context, slot).

    context/doc: per piece; start/end: token span in the document's own tokens; sep: separator
    tokens after the span (the separator closes the document's last piece); slot: position
    inside the context.
    """

    context: np.ndarray
    slot: np.ndarray
    doc: np.ndarray
    start: np.ndarray
    end: np.ndarray
    sep: np.ndarray
    n_contexts: int

    @property
    def tokens(self) -> np.ndarray:
        """Tokens per piece (document tokens plus separator)."""
        return self.end - self.start + self.sep

    def content_pieces(self) -> Packing:
        """The pieces that hold document text. A document whose tokens end exactly at a context
        boundary leaves its separator to open the next context: that separator-only piece is
        no appearance of the document there, so similarity metrics and views skip it."""
        keep = (self.end > self.start) | (self.start == 0)
        if keep.all():
            return self
        return Packing(
            self.context[keep],
            self.slot[keep],
            self.doc[keep],
            self.start[keep],
            self.end[keep],
            self.sep[keep],
            self.n_contexts,
        )

    def context_tokens(self) -> np.ndarray:
        """(n_contexts,) tokens filled in each context."""
        return np.bincount(self.context, weights=self.tokens, minlength=self.n_contexts).astype(
            np.int64
        )


def pack_contexts(
    order: np.ndarray,
    doc_tokens: np.ndarray,
    context_length: int,
    mode: str = "split",
    sep_tokens: int = 1,
    shuffle: bool = True,
    seed: int = 0,
) -> Packing:
    """Fill contexts of `context_length` tokens along `order`.

    Args:
        order: (M,) int64 document indices in path order (each kept document once).
        doc_tokens: (N,) int64 token count of every document (indexed by document).
        context_length: L, tokens per context, larger than sep_tokens.
        mode: "split" or "whole" (see module docstring).
        sep_tokens: separator tokens after each document.
        shuffle: permute contexts with `seed` so neighbouring contexts are unrelated; in
            `split` mode a last context shorter than L keeps the last place.

    Returns:
        A `Packing`; every context holds at most L tokens.

    >>> p = pack_contexts(np.array([0, 1]), np.array([3, 5]), 4, shuffle=False)
    >>> p.context.tolist(), p.doc.tolist(), p.start.tolist(), p.end.tolist(), p.sep.tolist()
    ([0, 1, 2], [0, 1, 1], [0, 0, 4], [3, 4, 5], [1, 0, 1])
    """
    if mode not in PACK_MODES:
        raise IcpError(f"unknown pack mode '{mode}'; choose split or whole")
    if context_length <= sep_tokens:
        raise IcpError(
            f"context length {context_length} must exceed the separator's {sep_tokens} tokens"
        )
    order = np.ascontiguousarray(order, dtype=np.int64)
    doc_tokens = np.ascontiguousarray(doc_tokens, dtype=np.int64)
    context, doc, start, end, sep = _kernels.pack_pieces(
        order, doc_tokens, int(sep_tokens), int(context_length), mode == "whole"
    )
    n_contexts = int(context[-1]) + 1 if len(context) else 0
    if shuffle and n_contexts > 1:
        # split mode: only the path's last context can be short; it stays at the end
        short_last = mode == "split" and _last_context_tokens(context, end, start, sep) < (
            context_length
        )
        short = np.zeros(n_contexts, dtype=bool)
        short[-1] = short_last
        context = context_ids(short, shuffle, seed)[context]
        by_context = np.argsort(context, kind="stable")  # keeps slot order inside a context
        context, doc, start, end, sep = (a[by_context] for a in (context, doc, start, end, sep))
    first_piece = np.searchsorted(context, np.arange(n_contexts))
    slot = np.arange(len(context)) - first_piece[context] if len(context) else context.copy()
    return Packing(context, slot, doc, start, end, sep, n_contexts)


def _last_context_tokens(
    context: np.ndarray, end: np.ndarray, start: np.ndarray, sep: np.ndarray
) -> int:
    last = context == context[-1]
    return int((end[last] - start[last] + sep[last]).sum())


def context_ids(short: np.ndarray, shuffle: bool = True, seed: int = 0) -> np.ndarray:
    """New ids of contexts: the full ones take the first ids (in a seeded random order when
    `shuffle`), the short ones the last, in order, so that a reader cutting the token stream
    every L tokens never goes out of step.

    Args:
        short: (n_contexts,) bool, contexts shorter than L (in `split` mode: where a path ends).

    Returns:
        (n_contexts,) int64 permutation: new_id[c] is context c's id.

    >>> context_ids(np.array([False, True, False]), shuffle=False).tolist()
    [0, 2, 1]
    """
    short = np.asarray(short, dtype=bool)
    full = np.flatnonzero(~short)
    new_id = np.empty(len(short), dtype=np.int64)
    order = np.random.default_rng(seed).permutation(len(full)) if shuffle else np.arange(len(full))
    new_id[full] = order
    new_id[short] = np.arange(len(full), len(short))
    return new_id
