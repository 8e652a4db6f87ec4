"""Do DreamPRM-1.5 instance weights down-weight corrupted documents? (docs/selection.md)

    PYTHONPATH=. python experiments/dreamprm_evidence.py --seeds 3             (random)
    PYTHONPATH=. python experiments/dreamprm_evidence.py --seeds 3 --kinds splice

Per seed and noise kind: a pool of ``--pool`` mixpile-tiny documents (first ``--seq-len``
bytes), a fraction ``--noise`` of them replaced by a corrupted copy (``corrupt`` of
experiments/donod_evidence.py: ``random`` characters, or ``splice``: the second half from
another document); a meta (target) set of 16 clean held-out documents; an evaluation set of
64 other clean documents. A tiny transformer (d_model 64, 2 layers, byte vocabulary) is
trained for ``--steps`` steps of 16 pool rows (200 x 16 / 128 = 25 passes over the pool, so
the Instance Table sees every row repeatedly) by the penalty bilevel engine of
``mixjax.methods.dreamprm``:

* ``frozen``: the same engine with the weights held at 1 (the baseline: the same budget and
  the same target term in w's update, only the instance weights do not move);
* ``table``: the Instance Table (clip to [0, ``--weight-max``] (3), init 1, AdamW lr_p 0.05,
  weight decay 1e-3);
* ``net``: the Instance Net (hidden 10, sigmoid, AdamW lr_p 0.01);
* ``mwnet``: Meta-Weight-Net (``meta_weight_net``: the net on the row's loss, hidden 100,
  ReLU, sigmoid, weights normalised to mean 1 over the batch, AdamW lr_p 0.01).

Reported per method: the AUC of the final weights separating clean (high) from corrupted
(low) rows, the precision of the ``noise * pool`` lowest-weighted rows (chance = noise; the
measure of experiments/donod_evidence.py), the mean weight of corrupted and of clean rows, and
the evaluation loss of the final model w minus the frozen baseline's (95% paired t-interval
over seeds, ``mixjax.compare.stats.paired_interval``). ``loss`` is a reference detector: the
frozen model's own loss on each pool row (high = corrupted).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

METHODS = ("frozen", "table", "net", "mwnet")


def _auc(score_clean: np.ndarray, score_noisy: np.ndarray) -> float:
    """P(clean score > noisy score) + 0.5 P(tie)."""
    diff = score_clean[:, None] - score_noisy[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


def _make_runner(method: str, apply, pad_id: int, lr: float, weight_max: float = 3.0):
    import jax
    import jax.numpy as jnp
    import optax

    from mixjax.core import step as step_lib
    from mixjax.methods import dreamprm

    def loss_fn(p, batch):
        return step_lib.token_losses(apply, p, batch["tokens"], pad_id)

    kind = "net" if method in ("net", "mwnet") else "table"
    weights = dreamprm.InstanceWeights(kind, "sigmoid" if kind == "net" else "clip", 0.0,
                                       weight_max, feature="loss" if method == "mwnet"
                                       else "confidence", normalize=method == "mwnet")
    tx = optax.adamw(lr)
    tx_p = (optax.set_to_zero() if method == "frozen" else
            optax.adamw(0.01 if kind == "net" else 0.05, weight_decay=1e-3))

    @jax.jit
    def run(params, p0, pool, order, meta):
        uwp = {"u": params, "w": params, "p": p0, "opt_u": tx.init(params),
               "opt_w": tx.init(params), "opt_p": tx_p.init(p0)}

        def body(uwp, idx):
            batch = {"tokens": pool[idx], "target_tokens": meta}
            new, parts = dreamprm.instance_update(loss_fn, uwp, batch, weights=weights,
                                                  tx_u=tx, tx_w=tx, tx_p=tx_p, penalty=10.0)
            return new, parts["val_loss"]

        uwp, _ = jax.lax.scan(body, uwp, order)
        w, p = uwp["w"], uwp["p"]
        tl, tm = loss_fn(w, {"tokens": pool})
        s = weights(p, {"tokens": pool}, {"tl": tl, "tm": tm})
        row_loss = (tl * tm).sum(1) / jnp.maximum(tm.sum(1), 1.0)
        return w, s, row_loss

    return run, kind


def run(seeds, kinds=("random",), pool: int = 128, noise: float = 0.2,
        seq_len: int = 64, steps: int = 200, batch: int = 16, methods=METHODS,
        weight_max: float = 3.0):
    import jax.numpy as jnp

    from experiments.donod_evidence import corrupt
    from mixjax.config import Config
    from mixjax.data import corpus_sources, donod, tokenizers
    from mixjax.methods import dreamprm
    from mixjax.mixing import grads as G
    from mixjax.core import step as step_lib
    from mixjax.models import registry

    t0 = time.time()
    tok = tokenizers.from_config("byte")
    cfg = Config()
    cfg.model.d_model, cfg.model.num_layers, cfg.model.num_heads = 64, 2, 4
    spec = registry.build(cfg.model, tokenizers.model_vocab_size(tok))
    runners = {m: _make_runner(m, spec.apply, tok.pad_id, 3e-3, weight_max) for m in methods}
    sources = corpus_sources("mixpile-tiny")
    docs = [s[i] for s in sources.values() for i in range(len(s))]
    out = {k: {m: {"auc": [], "precision": [], "w_noisy": [], "w_clean": [], "eval": []}
               for m in (*methods, "loss")} for k in kinds}
    for kind in kinds:
        for seed in seeds:
            rng = np.random.default_rng([seed, kinds.index(kind), 25])
            pick = rng.choice(len(docs), pool + 16 + 64, replace=False)
            n_noisy = round(noise * pool)
            noisy = np.zeros(pool, bool)
            noisy[rng.choice(pool, n_noisy, replace=False)] = True
            texts = [corrupt(docs[j], kind, rng, docs[rng.integers(len(docs))]) if noisy[i]
                     else docs[j] for i, j in enumerate(pick[:pool])]
            rows = jnp.asarray(donod.document_rows(texts, tok, seq_len))
            meta = jnp.asarray(donod.document_rows([docs[j] for j in pick[pool:pool + 16]],
                                                   tok, seq_len))
            ev = jnp.asarray(donod.document_rows([docs[j] for j in pick[pool + 16:]], tok,
                                                 seq_len))
            epochs = -(-steps * batch // pool)
            order = np.concatenate([rng.permutation(pool) for _ in range(epochs)])
            order = jnp.asarray(order[:steps * batch].reshape(steps, batch), jnp.int32)
            params = spec.init(int(seed))
            for m, (runner, wkind) in runners.items():
                p0 = (jnp.ones((1 << 16,), jnp.float32) if wkind == "table" else
                      dreamprm.net_init(int(seed), 100, 1) if m == "mwnet" else
                      dreamprm.net_init(int(seed), 10))
                w, s, row_loss = runner(params, p0, rows, order, meta)
                ev_loss = float(G.mean_loss(
                    lambda p, b: step_lib.token_losses(spec.apply, p, b["tokens"], tok.pad_id),
                    w, {"tokens": ev}))
                scores = {m: np.asarray(s, np.float64)}
                if m == "frozen":
                    scores["loss"] = -np.asarray(row_loss, np.float64)
                for name, sc in scores.items():
                    o = out[kind][name]
                    perm = rng.permutation(pool)       # ties (frozen weights) at random
                    low = perm[np.argsort(sc[perm], kind="stable")[:n_noisy]]
                    o["auc"].append(_auc(sc[~noisy], sc[noisy]))
                    o["precision"].append(float(noisy[low].mean()))
                    o["w_noisy"].append(float(sc[noisy].mean()))
                    o["w_clean"].append(float(sc[~noisy].mean()))
                    o["eval"].append(ev_loss)
            print(f"{kind} seed {seed}: {time.time() - t0:.0f} s", flush=True)
    return out, time.time() - t0


def table(out, noise: float) -> list[str]:
    from mixjax.compare.stats import paired_interval
    rows = ["| noise | method | AUC clean>noisy | precision of the lowest-weighted (chance "
            f"{noise:.2f}) | mean weight noisy / clean | eval loss | eval loss minus frozen, "
            "95% paired t |", "|---|---|---|---|---|---|---|"]
    for kind, by in out.items():
        base = by["frozen"]["eval"]
        for name, o in by.items():
            fmt = lambda v: f"{np.mean(v):.3f} ({', '.join(f'{x:.3f}' for x in v)})"  # noqa
            if name in ("frozen", "loss"):
                diff = "(baseline)" if name == "frozen" else "n/a"
            else:
                iv = paired_interval(o["eval"], base)
                diff = f"{iv.mean:+.4f} [{iv.low:+.4f}, {iv.high:+.4f}]"
            ws = ("n/a (loss score)" if name == "loss" else
                  f"{np.mean(o['w_noisy']):.3f} / {np.mean(o['w_clean']):.3f}")
            ev = "" if name == "loss" else f"{np.mean(o['eval']):.4f}"
            rows.append(f"| {kind} | {name} | {fmt(o['auc'])} | {fmt(o['precision'])} | {ws} | "
                        f"{ev} | {diff} |")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--pool", type=int, default=128)
    ap.add_argument("--noise", type=float, default=0.2)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--kinds", default="random")
    ap.add_argument("--methods", default=",".join(METHODS), help="frozen (always) and any of "
                    "table, net")
    ap.add_argument("--weight-max", type=float, default=3.0, help="the table's clip bound")
    args = ap.parse_args()
    methods = ("frozen", *[m for m in args.methods.split(",") if m != "frozen"])
    out, secs = run(list(range(args.seeds)), tuple(args.kinds.split(",")), pool=args.pool,
                    noise=args.noise, seq_len=args.seq_len, steps=args.steps, methods=methods,
                    weight_max=args.weight_max)
    print("\n".join(table(out, args.noise)))
    print(f"\n{args.seeds} seeds, pool {args.pool}, noise {args.noise}, {args.steps} steps: "
          f"{secs:.0f} s wall")


if __name__ == "__main__":
    main()
