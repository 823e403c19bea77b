"""Pack: walk the ordered documents and fill contexts of exactly `context_length` tokens.

Token counts come from a real tokenizer (`tokenizer.json`, HF `tokenizers`), by default the
embedding model's own; pass the language model's tokenizer for training data. A separator
(EOS) follows every document. Two policies:

- `split` (the paper): documents are concatenated and the stream is cut every L tokens, so a
  document may continue in the next context.
- `whole`: a document starts a new context when it does not fit in the current one (the rest
  is padding), unless it alone exceeds L, in which case it is cut like in `split`.

Contexts are then shuffled (seeded) so that adjacent contexts are unrelated, as the authors
advise; `shuffle=False` keeps path order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from itertools import chain
from pathlib import Path

import numpy as np

from icp_core import _kernels
from icp_core.errors import IcpError

PACK_MODES = ("split", "whole")
# Separator candidates, most LM-like first: the first one the tokenizer knows is the default.
SEPARATOR_CANDIDATES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "[SEP]")
_TOKENIZE_BATCH = 1024

Report = Callable[[int, int], None]


def _noop(done: int, total: int) -> None:
    return None


def resolve_tokenizer_path(tokenizer: str | None, model_path: Path | None) -> Path:
    """The tokenizer.json to count with: `tokenizer` (a file or a folder holding one), else the
    embedding model's."""
    if tokenizer:
        path = Path(tokenizer).expanduser()
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise IcpError(
                f"tokenizer '{tokenizer}' not found; pass --tokenizer with a local tokenizer.json "
                "(or the folder holding it)"
            )
        return path
    if model_path is None or not (model_path / "tokenizer.json").is_file():
        raise IcpError("the embedding model has no tokenizer.json; pass --tokenizer PATH")
    return model_path / "tokenizer.json"


@lru_cache(maxsize=4)
def load_tokenizer(path: str):
    """A `tokenizers.Tokenizer` with truncation and padding turned off (we count every token)."""
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(path)
    except Exception as err:  # tokenizers raises a bare Exception on bad JSON
        raise IcpError(
            f"{path}: not a tokenizer.json ({str(err)[:120]}); pass --tokenizer"
        ) from None
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


@lru_cache(maxsize=8)
def tokenizer_key(path: str) -> str:
    digest = hashlib.blake2b(Path(path).read_bytes(), digest_size=12).hexdigest()
    return f"{Path(path).parent.name}/{Path(path).name}:{digest}"


def separator_ids(tokenizer, separator: str | None = None) -> list[int]:
    """Token ids of the document separator.

    Args:
        separator: a token or text; None picks the first of `SEPARATOR_CANDIDATES` the
            tokenizer knows as a single token.
    """
    if separator is None:
        for candidate in SEPARATOR_CANDIDATES:
            token_id = tokenizer.token_to_id(candidate)
            if token_id is not None:
                return [token_id]
        raise IcpError("the tokenizer has no EOS/SEP token; pass --separator TEXT")
    token_id = tokenizer.token_to_id(separator)
    if token_id is not None:
        return [token_id]
    ids = tokenizer.encode(separator, add_special_tokens=False).ids
    if not ids:
        raise IcpError(f"separator {separator!r} encodes to no tokens; pass another --separator")
    return ids


def token_ids(tokenizer, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of `texts`, no special tokens, in one batch call.

    Returns:
        ids: (total,) uint32, the texts' ids one after the other.
        offsets: (len(texts) + 1,) int64; text i is ids[offsets[i]:offsets[i + 1]].
    """
    encodings = tokenizer.encode_batch_fast(texts, add_special_tokens=False)
    id_lists = [encoding.ids for encoding in encodings]
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum([len(ids) for ids in id_lists], out=offsets[1:])
    flat = np.fromiter(chain.from_iterable(id_lists), dtype=np.uint32, count=int(offsets[-1]))
    return flat, offsets


class RecentTokenIds:
    """Token ids of the texts counted last, by text hash, for one tokenizer at a time.

    `icp run --out` counts every text's tokens in the pack stage and exports the same texts a
    moment later in the same process; keeping the ids spares the export a second
    tokenization, the largest cost of packing. Texts beyond `max_tokens` are not kept (the
    export then tokenizes them itself), so memory stays bounded.
    """

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self._key: str | None = None
        self._ids: dict[str, np.ndarray] = {}
        self._size = 0

    def keep(self, key: str, hashes: list[str], ids: np.ndarray, offsets: np.ndarray) -> None:
        """Remember the ids of texts `hashes` (as returned by `token_ids`) under tokenizer `key`."""
        if key != self._key:
            self._key, self._ids, self._size = key, {}, 0
        room = self.max_tokens - self._size
        fits = int(np.searchsorted(offsets, room, side="right")) - 1
        for row in range(min(fits, len(hashes))):
            self._ids[hashes[row]] = ids[offsets[row] : offsets[row + 1]]
        self._size += int(offsets[min(fits, len(hashes))])

    def get(self, key: str, text_hash: str) -> np.ndarray | None:
        return self._ids.get(text_hash) if key == self._key else None

    def clear(self) -> None:
        self._key, self._ids, self._size = None, {}, 0


RECENT_TOKEN_IDS = RecentTokenIds(max_tokens=1 << 26)  # 64M tokens, 256 MiB


def count_tokens(
    tokenizer,
    texts: list[str],
    report: Report = _noop,
    keep_as: tuple[str, list[str]] | None = None,
) -> np.ndarray:
    """(len(texts),) int64 token counts, no special tokens, batch-encoded.

    keep_as: (tokenizer key, text hashes); when given, the ids go to `RECENT_TOKEN_IDS`.
    """
    counts = np.zeros(len(texts), dtype=np.int64)
    for start in range(0, len(texts), _TOKENIZE_BATCH):
        batch = texts[start : start + _TOKENIZE_BATCH]
        ids, offsets = token_ids(tokenizer, batch)
        counts[start : start + len(batch)] = np.diff(offsets)
        if keep_as is not None:
            key, hashes = keep_as
            RECENT_TOKEN_IDS.keep(key, hashes[start : start + len(batch)], ids, offsets)
        report(start + len(batch), len(texts))
    return counts


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
        shuffle: permute contexts with `seed` so neighbouring contexts are unrelated.

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
        new_id = np.random.default_rng(seed).permutation(n_contexts)
        context = new_id[context]
        by_context = np.argsort(context, kind="stable")  # keeps slot order inside a context
        context, doc, start, end, sep = (a[by_context] for a in (context, doc, start, end, sep))
    first_piece = np.searchsorted(context, np.arange(n_contexts))
    slot = np.arange(len(context)) - first_piece[context] if len(context) else context.copy()
    return Packing(context, slot, doc, start, end, sep, n_contexts)
