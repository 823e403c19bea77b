"""The fast embedding path: a static (model2vec) model distilled from the packaged model.

`--model static` embeds each document as the mean of per-token vectors looked up in a table
(no transformer pass), so it runs hundreds of times faster than all-MiniLM-L6-v2 on a CPU.
The table is distilled offline from the packaged all-MiniLM-L6-v2 with `model2vec.distill`
(each vocabulary token run through the full model once, PCA to `STATIC_PCA_DIMS`) the first
time it is used, and kept in `~/.cache/icp-workbench/static-<hash>/` (`ICP_CACHE_DIR`
elsewhere): minutes on a laptop CPU, once. Its rows are then re-weighted by each token's
frequency rank (`weight_by_word_rank`, seconds) into `static-<hash>-<STATIC_WEIGHTING>/`,
the folder `--model static` uses. Nothing is downloaded. A saved model2vec folder
(`config.json` with `"model_type": "model2vec"`) can be passed to `--model` as well.

What it costs in quality is measured in BENCHMARKS.md ("A million documents without a GPU").
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from icp_core.errors import IcpError

log = logging.getLogger(__name__)

STATIC_MODEL = "static"
STATIC_PCA_DIMS = 256
# What the static model's documents are cut to, in tokens (the lookup is cheap per token;
# long texts average more words, which helps a bag of words).
STATIC_MAX_TOKENS = 512
# The static model's cosines run higher than the full model's (a bag of token vectors shares
# most of its mass between any two texts on one topic). For the re-weighted table
# (STATIC_WEIGHTING) 0.97 flags mostly shared text on both corpora (median word 5-shingle
# Jaccard 0.80 on the Python docs, 0.73 on Debian, where it removes about what the full model
# removes at 0.95) and catches 80-85% of the textual near-copies among the neighbours; 0.98
# missed a quarter of them on Debian. benchmarks/dedup_threshold.py, BENCHMARKS.md (issue 15).
STATIC_DEDUP_THRESHOLD = 0.97

# model2vec weighs each token's row a / (a + p) (smooth inverse frequency, Arora et al. 2017)
# with p guessed by Zipf's law from the token's *row*. BERT's vocabulary lists ~1,000 unused
# tokens and single characters first and the words in order of frequency only from "the"
# (FIRST_WORD_ID) on, so "the" counted as the ~1,000th token and kept half its weight.
# Ranking the words from there, single ASCII characters (punctuation, digits, "a") as top
# words (FREQUENT_RANK) and everything else as rare, then subtracting the mean row of a text
# drawn from those frequencies (the component every document shares), raised ordering
# quality on both shared corpora (BENCHMARKS.md, issue 15); STATIC_SIF was the better of
# 1e-3 and 1e-4 on the harder corpus (Debian).
FIRST_WORD_ID = 1996
FREQUENT_RANK = 10
STATIC_SIF = 1e-3
STATIC_WEIGHTING = f"wordrank-sif{STATIC_SIF:g}-centred"


BUILD_NEEDS = (
    "--model static is built with model2vec's distill extra: pip install 'model2vec[distill]', "
    "or pass --model with a saved model2vec folder"
)


def cache_root() -> Path:
    """Where distilled models are kept: $ICP_CACHE_DIR or ~/.cache/icp-workbench."""
    return Path(os.environ.get("ICP_CACHE_DIR") or Path.home() / ".cache" / "icp-workbench")


def is_static_folder(path: Path) -> bool:
    """True for a saved model2vec folder."""
    try:
        config = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("model_type") == "model2vec"


def _source_digest(source_key: str, pca_dims: int | None, vocabulary: Sequence[str] | None) -> str:
    digest = hashlib.blake2b(digest_size=8)
    digest.update(source_key.encode())
    digest.update(f"pca={pca_dims}".encode())
    if vocabulary:
        digest.update("\n".join(vocabulary).encode())
    return digest.hexdigest()


def static_model_path(
    source: Path,
    source_key: str,
    pca_dims: int | None = STATIC_PCA_DIMS,
    vocabulary: Sequence[str] | None = None,
    build: bool = True,
    weighted: bool = True,
) -> Path:
    """The folder of the static model distilled from `source` (a sentence-transformers folder
    whose files `source_key` names, `embed.model_key`) and re-weighted (`STATIC_WEIGHTING`;
    weighted=False: the plain distil), distilling and weighting it first when it is not
    cached yet (unless build=False)."""
    distilled = cache_root() / f"static-{_source_digest(source_key, pca_dims, vocabulary)}"
    target = distilled.with_name(f"{distilled.name}-{STATIC_WEIGHTING}") if weighted else distilled
    if is_static_folder(target) or not build:
        return target
    if not is_static_folder(distilled):
        distil(source, distilled, pca_dims, vocabulary)
    if weighted:
        print(f"re-weighting {distilled} into {target} (seconds, once)", file=sys.stderr)
        words = (source / "vocab.txt").read_text(encoding="utf-8").splitlines()
        weight_by_word_rank(distilled, target, words)
    return target


def distil(
    source: Path, target: Path, pca_dims: int | None, vocabulary: Sequence[str] | None = None
) -> None:
    """Distil a static model from a local sentence-transformers folder into `target`, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from model2vec.distill import distill
    except ImportError:
        raise IcpError(BUILD_NEEDS) from None
    print(
        f"distilling a static model from {source} into {target} "
        "(once; a few minutes on a CPU, cached for later runs)",
        file=sys.stderr,
        flush=True,
    )
    model = distill(
        str(source), vocabulary=list(vocabulary) if vocabulary else None, pca_dims=pca_dims
    )
    _save(model, target)


def _save(model: Any, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=".static-", dir=target.parent))
    try:
        model.save_pretrained(str(partial))
        os.replace(partial, target)  # atomic: a half-written model is never picked up
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def word_rank_probabilities(tokens: Sequence[str], words: Sequence[str]) -> np.ndarray:
    """Each token's probability by Zipf's law over its rank among `words` (the source
    model's vocab.txt in id order) from FIRST_WORD_ID on; single ASCII characters rank
    FREQUENT_RANK, any other token (special, non-ASCII character, added word) as the rarest."""
    ids = {word: i for i, word in enumerate(words)}
    rarest = max(len(words) - FIRST_WORD_ID, FREQUENT_RANK)
    ranks = np.full(len(tokens), float(rarest))
    for row, token in enumerate(tokens):
        original = ids.get(token, -1)
        if original >= FIRST_WORD_ID:
            ranks[row] = original - FIRST_WORD_ID + 1
        elif len(token) == 1 and token.isascii():
            ranks[row] = FREQUENT_RANK
    return (1 / ranks) / np.sum(1 / np.arange(1, rarest + 1))


def reweighted_table(
    unweighted: np.ndarray, probabilities: np.ndarray, sif: float = STATIC_SIF
) -> np.ndarray:
    """Rows weighted sif / (sif + p), less the p-weighted mean row: a document's vector is
    the mean of its tokens' rows, so that mean row is what every document shares."""
    weighted = unweighted.astype(np.float64) * (sif / (sif + probabilities))[:, None]
    return (weighted - probabilities @ weighted).astype(np.float32)


def weight_by_word_rank(distilled: Path, target: Path, words: Sequence[str]) -> None:
    """Save `distilled`'s model with its rows re-weighted (`reweighted_table`) into target."""
    try:
        from model2vec import StaticModel
        from model2vec.distill.inference import compute_weights
    except ImportError:
        raise IcpError(BUILD_NEEDS) from None

    model = StaticModel.from_pretrained(str(distilled), force_download=False)
    table = np.asarray(model.embedding, dtype=np.float64)
    if model.config.get("sif_coefficient"):  # undo the distil's own weights
        table /= compute_weights(len(table), model.config["sif_coefficient"])[:, None]
    probabilities = word_rank_probabilities(model.tokens, words)
    config = {**model.config, "sif_coefficient": None, "icp_weighting": STATIC_WEIGHTING}
    weighted = StaticModel(
        vectors=reweighted_table(table, probabilities),
        tokenizer=model.tokenizer,
        config=config,
        base_model_name=model.base_model_name,
        normalize=True,
    )
    _save(weighted, target)


class StaticEncoder:
    """A model2vec StaticModel behind the small interface `embed.embed_texts` uses."""

    def __init__(self, path: Path, max_tokens: int | None = None):
        from model2vec import StaticModel

        self.path = Path(path)
        self.model = StaticModel.from_pretrained(str(path), force_download=False)
        self.max_seq_length = max_tokens or STATIC_MAX_TOKENS
        # one call embeds thousands of texts in well under a second: report every 2,048
        self.preferred_batch = 2048

    def get_sentence_embedding_dimension(self) -> int:
        return int(self.model.dim)

    def encode(self, texts: Sequence[str], batch_size: int = 2048, **_: Any) -> np.ndarray:
        vectors = self.model.encode(
            list(texts),
            max_length=self.max_seq_length,
            batch_size=max(batch_size, 1024),
            use_multiprocessing=False,
        )
        vectors = np.asarray(vectors, dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, np.float32(1e-12))


def load_static(path: Path, max_tokens: int | None = None) -> StaticEncoder:
    try:
        return StaticEncoder(path, max_tokens)
    except ImportError:
        raise IcpError("--model static needs model2vec: pip install 'model2vec[distill]'") from None
