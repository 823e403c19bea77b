"""Every knob of the pipeline in one place, with the names the CLI flags and app widgets use."""

from __future__ import annotations

import difflib
from collections.abc import Collection
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from icp_core.dedup import DEFAULT_THRESHOLD
from icp_core.errors import IcpError
from icp_core.static_embed import STATIC_DEDUP_THRESHOLD, STATIC_MODEL

# greedy-edge max-TSP + local search: the best measured ordering (benchmarks/results/quality.md)
DEFAULT_ORDER = "greedy-lk"

# (field, lowest, highest) of the whole-number parameters. k: neighbour lists deeper than 1024
# cost N * k rows and help no ordering; a 2**20-token context is beyond any LM's today; a
# batch beyond 8192 texts only risks running out of memory.
MAX_K = 1024
MAX_CONTEXT_LENGTH = 2**20
MAX_BATCH_SIZE = 8192
MAX_SEED = 2**32 - 1
_INT_BOUNDS = (
    ("k", 1, MAX_K),
    ("seed", 0, MAX_SEED),
    ("context_length", 2, MAX_CONTEXT_LENGTH),
    ("batch_size", 1, MAX_BATCH_SIZE),
    ("max_tokens", 1, 2**20),  # then capped by the model's own limit
)


# `Params(dedup_threshold=DEDUP_BY_MODEL)` (the default): the embedding model's own threshold,
# filled in when the object is built, so every reader sees a number (or None: no dedup).
DEDUP_BY_MODEL: Any = "by-model"


def default_dedup_threshold(model: str | None, vectors: str | None) -> float:
    """The dedup threshold for vectors of this model: each model has its own similarity
    scale, so each has its own measured threshold (BENCHMARKS.md). Imported vectors come
    from an unknown model and get the general default."""
    if vectors is None and model == STATIC_MODEL:
        return STATIC_DEDUP_THRESHOLD
    return DEFAULT_THRESHOLD


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def choose(value: str, choices: Collection[str]) -> str:
    """'choose one of a, b, c', with a 'did you mean' when `value` is close to one."""
    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}? " if close else ""
    return f"{hint}choose one of {', '.join(choices)}"


@dataclass(frozen=True)
class Params:
    """Pipeline parameters. `None` means "the default" where the docstring says so."""

    text_field: str = "text"
    id_field: str = "id"
    model: str | None = None  # None: the packaged all-MiniLM-L6-v2
    max_tokens: int | None = None  # None: the model's own limit (256 for MiniLM)
    batch_size: int = 64
    device: str = "auto"
    vectors: str | None = None  # a .npy/.parquet of precomputed embeddings instead of a model
    k: int = 10
    index: str = "auto"
    # None: no dedup; unset: default_dedup_threshold(model, vectors), 0.95 or 0.97 for static
    dedup_threshold: float | None = DEDUP_BY_MODEL
    order: str = DEFAULT_ORDER
    seed: int = 0
    context_length: int = 8192
    tokenizer: str | None = None  # None: tokenizer.DEFAULT_TOKENIZER (an LM's, not the embedder's)
    separator: str | None = None  # None: the tokenizer's EOS/SEP token
    pack: str = "split"
    shuffle: bool = True
    label_field: str | None = None  # None: "label" when documents carry one

    def __post_init__(self) -> None:
        if isinstance(self.dedup_threshold, str) and self.dedup_threshold == DEDUP_BY_MODEL:
            threshold = default_dedup_threshold(self.model, self.vectors)
            object.__setattr__(self, "dedup_threshold", threshold)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def updated(self, **changes: Any) -> Params:
        """A copy with the given fields changed. A dedup threshold at the current model's
        default follows the model: switching to `static` moves 0.95 to 0.97 and back (a
        threshold chosen to equal the old default moves too; pass it again to keep it)."""
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise IcpError(f"unknown parameter(s): {', '.join(sorted(unknown))}")
        if "dedup_threshold" not in changes and self.dedup_threshold == default_dedup_threshold(
            self.model, self.vectors
        ):
            changes["dedup_threshold"] = DEDUP_BY_MODEL
        return replace(self, **changes)

    def problems(self) -> dict[str, str]:
        """Every invalid field, mapped to a one-line message that names its value and says
        "{fix}" for the field's option (see `IcpError`; empty when all are valid). Cheap:
        reads no model weights, only a model's config."""
        from icp_core.knn import INDEXES
        from icp_core.pack import PACK_MODES
        from icp_core.traverse import METHODS

        found: dict[str, str] = {}
        for name, low, high in _INT_BOUNDS:
            value, what = getattr(self, name), name.replace("_", " ")
            if value is None and name == "max_tokens":
                continue
            if not _is_int(value):
                found[name] = f"{{fix}} {value!r}: {what} must be a whole number"
            elif value < low:
                found[name] = f"{{fix}} {value}: {what} must be at least {low}"
            elif value > high:
                found[name] = f"{{fix}} {value}: {what} must be at most {high}"
        for name, choices in (("index", INDEXES), ("order", tuple(METHODS)), ("pack", PACK_MODES)):
            value = getattr(self, name)
            if value not in choices:
                found[name] = f"{{fix}} {value}: {choose(str(value), choices)}"
        threshold = self.dedup_threshold
        if threshold is not None and (
            not isinstance(threshold, int | float)
            or isinstance(threshold, bool)
            or not 0 < threshold <= 1  # also refuses NaN, whose comparisons are all false
        ):
            found["dedup_threshold"] = (
                f"{{fix}} {threshold!r}: must lie in (0, 1], or turn dedup off"
            )
        for name in ("text_field", "id_field", "label_field", "separator", "device"):
            value = getattr(self, name)
            if value is None and name not in ("text_field", "id_field", "device"):
                continue
            if not isinstance(value, str) or not value:
                found[name] = f"{{fix}} {value!r}: must be a non-empty text"
        if not isinstance(self.shuffle, bool):
            found["shuffle"] = f"{{fix}} {self.shuffle!r}: must be true or false"
        if "max_tokens" not in found and self.max_tokens is not None and self.vectors is None:
            from icp_core.embed import model_token_limit, resolve_model_path

            limit = model_token_limit(resolve_model_path(self.model))
            if limit is not None and self.max_tokens > limit:
                found["max_tokens"] = (
                    f"{{fix}} {self.max_tokens}: the model reads at most {limit} tokens; "
                    f"give {limit} or less"
                )
        return found

    def validate(self, stored: Collection[str] = ()) -> Params:
        """This object, when every field is valid.

        Args:
            stored: fields whose values came from the workspace's settings rather than from
                the user; an invalid one (written by an older version) is reported as such,
                with the option that replaces it.

        Raises:
            IcpError: the first invalid field, in one line naming its option.
        """
        for name, message in self.problems().items():
            if name in stored:
                raise IcpError(
                    f"the workspace's stored setting {message}; give {{fix}} a valid value "
                    "(to `icp run` or the stage command that takes it) to replace it",
                    fix=name,
                )
            raise IcpError(message, fix=name)
        return self

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Params:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})
