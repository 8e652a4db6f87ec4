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


# ---------------------------------------------------------------- generation (run once)

VENV_PACKAGES = ("mathematics-dataset==1.0.1", "numpy<2", "sympy", "absl-py", "six")
PAIRS_PER_DOC = 8
DEFAULT_BYTES = 2_000_000  # ~2,700 docs: what the reference default set draws on

# Runs inside the generator venv. The three shims make the 2019 code run on current sympy/numpy<2.
_SCRIPT = r'''
import json, random, sys, warnings
import numpy as np
warnings.simplefilter("ignore", FutureWarning)
for alias, typ in (("object", object), ("int", int), ("float", float), ("bool", bool)):
    if not hasattr(np, alias):
        setattr(np, alias, typ)
import sympy.solvers.diophantine  # the package attribute is shadowed by the function: use sys.modules
pkg = sys.modules["sympy.solvers.diophantine"]
if not hasattr(pkg, "base_solution_linear"):  # moved in sympy >= 1.6
    pkg.base_solution_linear = sys.modules["sympy.solvers.diophantine.diophantine"].base_solution_linear
from absl import flags
from mathematics_dataset import generate
flags.FLAGS(["mathgen"])
out_path, nbytes, seed, pairs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
random.seed(seed); np.random.seed(seed)
generate.init_modules(train_split=True)
names = [(r, m) for r, mods in generate.filtered_modules.items() for m in mods]
total, k = 0, 0
with open(out_path, "w", encoding="utf-8") as fh:
    while total < nbytes:
        regime, module = names[k % len(names)]
        qa = []
        for _ in range(pairs):
            problem, _ = generate.sample_from_module(generate.filtered_modules[regime][module])
            qa.append(f"Q: {problem.question}\nA: {problem.answer}")
        text = "\n\n".join(qa)
        fh.write(json.dumps({"id": f"{regime}/{module}/{k // len(names):04d}", "text": text}) + "\n")
        total += len(text.encode()); k += 1
'''


def generate(cache_dir=None, nbytes: int | None = None, seed: int = 0, python: str | None = None) -> Path:
    """Generate ``generated/deepmind-math.jsonl`` in the download cache (once; keep the file).

    Creates ``generated/mathgen-venv`` with ``VENV_PACKAGES`` (pip, from PyPI), then samples
    ``PAIRS_PER_DOC`` Q/A pairs per document from one module at a time, cycling through all
    modules of the train-easy/-medium/-hard, interpolate and extrapolate regimes, until
    ``nbytes`` of text. Not reproducible (see module docstring): the file is the artifact."""
    import os
    import subprocess
    import sys
    import tempfile

    from mixjax.data.corpus.fetch import cache_dir as _cache_dir

    root = _cache_dir(cache_dir)
    target = root / ARTIFACT
    venv = root / "generated" / "mathgen-venv"
    vpy = venv / "bin" / "python"
    target.parent.mkdir(parents=True, exist_ok=True)
    if not vpy.exists():
        subprocess.run([python or sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(vpy), "-m", "pip", "install", "-q", "--disable-pip-version-check", *VENV_PACKAGES],
                       check=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
    os.close(fd)
    try:
        subprocess.run([str(vpy), "-c", _SCRIPT, tmp, str(nbytes or DEFAULT_BYTES), str(seed), str(PAIRS_PER_DOC)],
                       check=True, env={**os.environ, "PYTHONHASHSEED": "0"})
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target
