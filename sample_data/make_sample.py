"""Rebuild sample_data/sample.jsonl.gz from ../shared/corpora (seeded, so reproducible).

800 Python documentation sections and 1,200 Debian package descriptions, drawn at random:
a mixed pile with topic labels, small enough to embed on two CPU cores in about 90 seconds.
"""

import gzip
import json
import random
import sys
from pathlib import Path

CORPORA = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/corpora")
OUT = Path(__file__).with_name("sample.jsonl.gz")
SEED = 20261126


def read(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def main() -> None:
    rng = random.Random(SEED)
    pydocs = rng.sample(read(CORPORA / "pydocs.jsonl"), 800)
    debian = rng.sample(read(CORPORA / "debian_pkgdesc.jsonl.gz"), 1200)
    rows = pydocs + debian
    rng.shuffle(rows)
    with gzip.open(OUT, "wt", encoding="utf-8", compresslevel=9) as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {OUT} ({len(rows)} documents)")


if __name__ == "__main__":
    main()
