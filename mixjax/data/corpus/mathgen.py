"""DeepMind mathematics_dataset problems: an optional, generated math source.

The generator (mathematics-dataset 1.0.1, Saxton et al. 2019, Apache-2.0) is not
reproducible (clause order follows object-id set ordering even with fixed seeds) and needs
``numpy<2`` plus shims, so it runs in its own venv and its output is generated ONCE into the
download cache as a versioned input artifact, ``generated/deepmind-math.jsonl`` (one JSON
object per line: {"id", "text"}). Builds then read that file like any other input; without
it the source is skipped with a message.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from mixjax.data.corpus.catalogue import Source

ARTIFACT = "generated/deepmind-math.jsonl"


def read_artifact(paths: list[Path]) -> Iterator[tuple[str, str]]:
    with open(paths[0], encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rec = json.loads(line)
                    yield rec["id"], rec["text"]
                except (ValueError, KeyError) as exc:
                    raise ValueError(f"{paths[0]}, line {n}: expected {{\"id\", \"text\"}} JSON ({exc})") from None


SOURCE = Source(
    "deepmind-math", "math", (), read_artifact, "Apache-2.0 (generator)",
    "Problems generated with DeepMind mathematics_dataset 1.0.1 (Saxton et al. 2019, Apache-2.0), "
    "8 question/answer pairs from one module per document.",
    optional=True, artifact=ARTIFACT,
    how_to_get="generate it once with `mixjax data mathgen` (creates its own venv), or place the file there",
)
