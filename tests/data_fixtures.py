"""Shared helpers for the data tests: small JSONL domains with disjoint alphabets."""

import json

import numpy as np

# Each domain's text uses its own letters, so a packed row shows which domains it holds.
ALPHABETS = {"alpha": "abcde ", "beta": "fghij ", "gamma": "klmno ", "delta": "pqrst "}


def write_domains(root, num_docs=(40, 30, 20, 12), seed=0, names=None):
    """Writes ``<domain>.jsonl`` files under ``root``; returns the directory."""
    rng = np.random.default_rng(seed)
    names = names or list(ALPHABETS)[: len(num_docs)]
    root.mkdir(parents=True, exist_ok=True)
    for name, n in zip(names, num_docs):
        letters = ALPHABETS[name]
        with open(root / f"{name}.jsonl", "w") as fh:
            for i in range(n):
                size = int(rng.integers(1, 200))
                text = "".join(rng.choice(list(letters), size=size))
                fh.write(json.dumps({"domain": name, "source": "test", "id": f"{name}-{i}",
                                     "text": text}) + "\n")
    return root
