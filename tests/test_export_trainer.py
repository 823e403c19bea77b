"""The README's trainer snippet, run as written against a real export.

The code is read from README.md at test time (the first ```python block after the heading
"### Use the export in your trainer"), so the test follows the README: only the export path
and the `...` body (a real optimizer step on a tiny model) are filled in.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from icp_core import pipeline
from icp_core.export import export_contexts
from icp_core.params import Params
from icp_core.workspace import Workspace
from tests.conftest import tiny_rows, write_jsonl

README = Path(__file__).resolve().parent.parent / "README.md"
HEADING = "### Use the export in your trainer"
L = 32
STEPS = 3


def readme_snippet() -> str:
    text = README.read_text(encoding="utf-8")
    assert HEADING in text, f"README.md lost the heading {HEADING!r}"
    after = text[text.index(HEADING) :]
    match = re.search(r"```python\n(.*?)```", after, flags=re.DOTALL)
    assert match, f"no ```python block after {HEADING!r}"
    return match.group(1)


def fill_in(snippet: str, out: Path) -> str:
    """The export path for out/sample, and a real step for the `...` body."""
    paths = set(re.findall(r"""["'](out/[^"']+)["']""", snippet))
    assert len(paths) == 1, paths
    code = snippet.replace(paths.pop(), str(out))
    lines = code.splitlines()
    ellipsis = [i for i, line in enumerate(lines) if line.strip().startswith("...")]
    assert len(ellipsis) == 1, "the snippet's loop body is one `...` line"
    line = lines[ellipsis[0]]
    indent = line[: len(line) - len(line.lstrip())]
    lines[ellipsis[0]] = f"{indent}if train_step(input_ids):\n{indent}    break"
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    """A --drop-last parquet export with at least 3 batches of 8 full contexts of L tokens."""
    folder = tmp_path_factory.mktemp("trainer")
    rows = [
        {"id": f"{row['id']}-copy{copy}", "text": f"Copy {copy}. {row['text']}"}
        for copy in range(5)
        for row in tiny_rows()
    ]
    corpus = write_jsonl(folder / "corpus.jsonl", rows)
    vectors = np.random.default_rng(3).standard_normal((len(rows), 16)).astype(np.float32)
    np.save(folder / "vectors.npy", vectors)
    params = Params(k=4, context_length=L, vectors=str(folder / "vectors.npy"))
    out = folder / "out" / "sample"
    with Workspace(folder / "ws.duckdb") as ws:
        pipeline.ingest(ws, [str(corpus)], params)
        pipeline.run(ws, params)
        manifest = export_contexts(ws, params, out, "parquet", drop_last=True)
    assert manifest["counts"]["n_contexts"] >= 3 * 8 >= 16
    assert manifest["dropped_last"] is not None, "the corpus must leave a short last context"
    return out


def test_readme_trainer_snippet_trains_a_tiny_model(export_dir, tmp_path, monkeypatch):
    import torch
    from torch import nn

    manifest = json.loads((export_dir / "manifest.json").read_text(encoding="utf-8"))
    vocab = manifest["tokenizer"]["vocab_size"]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(vocab, 16), nn.Linear(16, vocab))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    shapes, losses = [], []

    def train_step(input_ids: torch.Tensor) -> bool:
        """One optimizer step of next-token loss; True once STEPS steps are done."""
        shapes.append(tuple(input_ids.shape))
        assert input_ids.dtype == torch.long
        logits = model(input_ids[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, vocab), input_ids[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        return len(losses) == STEPS

    import datasets.config

    # the datasets cache of this run only, not the user's
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf")
    before = model[0].weight.detach().clone()
    code = fill_in(readme_snippet(), export_dir)
    exec(compile(code, str(README), "exec"), {"train_step": train_step, "__name__": "readme"})

    assert len(losses) == STEPS, f"the loader gave {len(losses)} batches"
    assert all(math.isfinite(loss) for loss in losses), losses
    assert not torch.equal(model[0].weight, before), "the steps must update the model"
    assert shapes == [(8, manifest["parameters"]["context_length"])] * STEPS
    assert shapes[0][1] == L
