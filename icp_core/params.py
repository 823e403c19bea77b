"""Every knob of the pipeline in one place, with the names the CLI flags and app widgets use."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from icp_core.dedup import DEFAULT_THRESHOLD
from icp_core.errors import IcpError

# greedy-edge max-TSP + local search: the best measured ordering (benchmarks/results/quality.md)
DEFAULT_ORDER = "greedy-lk"


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
    dedup_threshold: float | None = DEFAULT_THRESHOLD  # None: no dedup
    order: str = DEFAULT_ORDER
    seed: int = 0
    context_length: int = 8192
    tokenizer: str | None = None  # None: tokenizer.DEFAULT_TOKENIZER (an LM's, not the embedder's)
    separator: str | None = None  # None: the tokenizer's EOS/SEP token
    pack: str = "split"
    shuffle: bool = True
    label_field: str | None = None  # None: "label" when documents carry one

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def updated(self, **changes: Any) -> Params:
        """A copy with the given fields changed."""
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise IcpError(f"unknown parameter(s): {', '.join(sorted(unknown))}")
        return replace(self, **changes)

    def validate(self) -> Params:
        from icp_core.knn import INDEXES
        from icp_core.pack import PACK_MODES
        from icp_core.traverse import METHODS

        if self.k < 1:
            raise IcpError(f"--k {self.k}: k must be at least 1")
        if self.index not in INDEXES:
            raise IcpError(f"--index {self.index}: choose one of {', '.join(INDEXES)}")
        if self.order not in METHODS:
            raise IcpError(f"--order {self.order}: choose one of {', '.join(METHODS)}")
        if self.pack not in PACK_MODES:
            raise IcpError(f"--pack {self.pack}: choose one of {', '.join(PACK_MODES)}")
        if self.context_length < 2:
            raise IcpError(f"--context-length {self.context_length}: must be at least 2")
        if self.dedup_threshold is not None and not 0 < self.dedup_threshold <= 1:
            raise IcpError(
                f"--dedup-threshold {self.dedup_threshold}: must lie in (0, 1]; "
                "use --no-dedup to turn dedup off"
            )
        if self.batch_size < 1:
            raise IcpError(f"--batch-size {self.batch_size}: must be at least 1")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise IcpError(f"--max-tokens {self.max_tokens}: must be at least 1")
        return self

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Params:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})
