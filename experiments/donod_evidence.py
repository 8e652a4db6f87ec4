"""Does DONOD drop injected noise? A controlled check on mixpile-tiny (docs/selection.md).

    PYTHONPATH=. python experiments/donod_evidence.py --model RUN_DIR --seeds 3

RUN_DIR: a trained run, e.g. ``mixjax train configs/lm_tiny_uniform.py --set
train.run_dir=RUN_DIR`` (200 steps, about 70 s on 2 cores). Per seed: a pool of ``--pool``
documents drawn from mixpile-tiny, of which a fraction ``--noise`` (default 0.2) is replaced by a
corrupted copy of itself:

* ``random``: uniformly random printable ASCII characters of the same length (a document with
  no structure at all);
* ``shuffle``: the document's own characters in a random order (the same bytes, no order);
* ``splice``: the document's first half followed by the second half of another, random document
  of the corpus (a continuation that does not belong: the closest LM analogue of a wrong label).

DONOD (the run's model, one SGD step at its peak learning rate, every parameter, first 128
tokens, equal TOPSIS weights) keeps ``1 - noise`` of the pool, i.e. drops as many documents as
were corrupted. Reported: the precision of the dropped set (the share of it that is corrupted)
against the noise fraction (what dropping at random gives), with DON alone, NOD alone, TOPSIS
with DON taken as a cost instead of a benefit (``donod_don_cost``, an ablation of the paper's
direction) and the model's own loss (drop the highest-loss documents) on the same budget.
Intervals: 95% t over the seeds of the difference to chance.
"""

from __future__ import annotations

import argparse
import string
import time

import numpy as np

from mixjax.data import corpus_sources, donod
from mixjax.compare.stats import paired_interval

PRINTABLE = np.array(list(string.ascii_letters + string.digits + string.punctuation + " \n"))


def _t_interval(x):
    """(mean, half-width of its 95% t-interval) over seeds."""
    iv = paired_interval(np.asarray(x, np.float64), np.zeros(len(x)))
    return iv.mean, iv.high - iv.mean


def corrupt(doc: str, kind: str, rng: np.random.Generator, other: str = "") -> str:
    if kind == "splice":
        return doc[:len(doc) // 2] + other[len(other) // 2:]
    if kind == "random":
        return "".join(rng.choice(PRINTABLE, len(doc)))
    if kind == "shuffle":
        return "".join(rng.permutation(list(doc)))
    raise ValueError(kind)


def losses(model, rows):
    """Mean token loss of each row under the model (the loss baseline)."""
    import jax
    import jax.numpy as jnp

    from mixjax.mixing.example_grads import example_loss_vector
    fn = jax.jit(lambda t: example_loss_vector(
        model.token_loss_fn, model.params, {"tokens": t, "domain_id": jnp.zeros(t.shape[:1],
                                                                              jnp.int32)}))
    return np.concatenate([np.asarray(fn(jnp.asarray(rows[i:i + 64])))
                           for i in range(0, len(rows), 64)])


def run(run_dir: str, seeds, kinds=("random", "shuffle", "splice"), pool: int = 400, noise: float = 0.2,
        seq_len: int = 128):
    """``{kind: {score: [precision per seed]}}`` and the wall seconds."""
    t0 = time.time()
    model = donod.load_run_model(run_dir)
    sources = corpus_sources("mixpile-tiny")
    docs = [s[i] for s in sources.values() for i in range(len(s))]
    out = {k: {"donod": [], "donod_don_cost": [], "don": [], "nod": [], "loss": []}
           for k in kinds}
    for kind in kinds:
        for seed in seeds:
            rng = np.random.default_rng([seed, kinds.index(kind)])
            pick = rng.choice(len(docs), pool, replace=False)
            n_noisy = round(noise * pool)
            noisy = np.zeros(pool, bool)
            noisy[rng.choice(pool, n_noisy, replace=False)] = True
            texts = [corrupt(docs[j], kind, rng, docs[rng.integers(len(docs))]) if noisy[i]
                     else docs[j] for i, j in enumerate(pick)]
            rows = donod.document_rows(texts, model.tokenizer, seq_len)
            don, nod = donod.donod_metrics(model.token_loss_fn, model.params, rows, lr=model.lr)
            budget = 1.0 - noise
            x = np.stack([don, nod], 1)
            scores = {"donod": donod.topsis(x, donod.BENEFIT),
                      "donod_don_cost": donod.topsis(x, (False, False)),
                      "don": don, "nod": -nod, "loss": -losses(model, rows)}
            for name, s in scores.items():
                kept = np.zeros(pool, bool)
                kept[donod.keep_top(s, budget)] = True
                dropped = ~kept
                out[kind][name].append(float(noisy[dropped].mean()))
    return out, time.time() - t0


def table(out, seeds, noise: float) -> list[str]:
    rows = ["| noise | score | precision of the dropped set (mean over seeds) | minus chance "
            f"({noise:.2f}), 95% t |", "|---|---|---|---|"]
    for kind, by in out.items():
        for name, v in by.items():
            m, h = _t_interval(np.asarray(v) - noise)
            rows.append(f"| {kind} | {name} | {np.mean(v):.3f} ({', '.join(f'{x:.3f}' for x in v)})"
                        f" | {m:+.3f} ± {h:.3f} |")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a trained run dir")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--pool", type=int, default=400)
    ap.add_argument("--noise", type=float, default=0.2)
    args = ap.parse_args()
    seeds = list(range(args.seeds))
    out, secs = run(args.model, seeds, pool=args.pool, noise=args.noise)
    print("\n".join(table(out, seeds, args.noise)))
    print(f"\n{len(seeds)} seeds, pool {args.pool}, noise {args.noise}: {secs:.0f} s wall")


if __name__ == "__main__":
    main()
