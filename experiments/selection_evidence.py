"""Controlled checks of the selection and sample-reweighting rules on mixpile-tiny (docs/selection.md).

    PYTHONPATH=. python experiments/selection_evidence.py --seeds 3 [--model RUN_DIR]

1. GIO toward a target domain: per seed, 20 documents of domain D (not in the pool) are the
   target set; GIO selects 5% of the remaining corpus. Reported: the share of the selection that
   comes from D, against D's share of the pool (what uniform sampling of the same budget gives).
2. INGENIOUS coverage: facility-location value ``mean_i max_{j in S} (1 + cos_ij) / 2`` of the
   per-domain selection at a 5% budget against uniform random subsets of the same per-domain
   sizes (one per seed).
3. Noise injection (with ``--model``, a trained run dir, e.g. configs/lm_tiny_uniform.py's): per
   seed, batches of 16 sequences of 64 tokens from mixpile-tiny in which 25% of the rows are
   replaced by uniformly random bytes. Reported: the mean per-sequence weight that Prospect
   (extremile r = 2, chi2 nu = 1), Feasible Learning (eps = 2.5, one dual step from 0) and loss-based
   sample reweighting (quadratic, temperature 1) give the noisy rows (1 = the uniform weight).

4. Coreset reweighting: the length scorer (>= 500 characters) run on k-means representatives (5%
   per domain) and propagated, against scoring every document (k-means seeds 0..S-1).

Prints a markdown table; the numbers in docs/selection.md come from this script.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from mixjax.data import corpus_sources, selection, subset_select
from mixjax.compare.stats import paired_interval


def _t_interval(x):
    """(mean, half-width of its 95% t-interval) over seeds."""
    iv = paired_interval(np.asarray(x, np.float64), np.zeros(len(x)))
    return iv.mean, iv.high - iv.mean


def _docs():
    sources = corpus_sources("mixpile-tiny")
    docs, doms = [], []
    for d, s in sources.items():
        for i in range(len(s)):
            docs.append(s[i])
            doms.append(d)
    return docs, np.asarray(doms)


def gio_rows(seeds, domains=("math", "legal", "code")):
    docs, doms = _docs()
    hashes = [selection.content_hash(d) for d in docs]
    t0 = time.time()
    emb, _ = subset_select.cached_embed(docs, hashes, None)
    embed_s = time.time() - t0
    rows = []
    for dom in domains:
        gains = []
        for seed in seeds:
            rng = np.random.default_rng(seed)
            in_dom = np.flatnonzero(doms == dom)
            tgt = rng.choice(in_dom, 20, replace=False)
            pool = np.setdiff1d(np.arange(len(docs)), tgt)
            budget = int(np.ceil(0.05 * len(pool)))
            res = subset_select.gio(emb[pool], emb[tgt], budget)
            picked = doms[pool][res.order]
            share = float(np.mean(picked == dom))
            base = float(np.mean(doms[pool] == dom))
            gains.append((share, base, len(res.order)))
        s = np.array(gains)
        m, h = _t_interval(s[:, 0] - s[:, 1])
        rows.append(f"| GIO toward {dom} | {len(seeds)} | share of {dom} in the selection "
                    f"{s[:, 0].mean():.3f} (selected {s[:, 2].mean():.0f} docs) vs {s[:, 1].mean():.3f} "
                    f"in the pool | +{m:.3f} ± {h:.3f} |")
    return rows, embed_s


def ingenious_rows(seeds):
    docs, doms = _docs()
    hashes = [selection.content_hash(d) for d in docs]
    emb, _ = subset_select.cached_embed(docs, hashes, None)
    t0 = time.time()
    chosen = []
    sizes = {}
    for dom in np.unique(doms):
        idx = np.flatnonzero(doms == dom)
        sizes[dom] = int(np.ceil(0.05 * len(idx)))
        chosen += [int(idx[j]) for j in subset_select.facility_location(emb[idx], sizes[dom])]
    fl_s = time.time() - t0
    sim = (1 + emb.astype(np.float64) @ emb.T.astype(np.float64)) / 2

    def value(sel):
        return float(sim[:, sel].max(axis=1).mean())

    fl = value(chosen)
    diffs = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        rand = [int(j) for dom in np.unique(doms)
                for j in rng.choice(np.flatnonzero(doms == dom), sizes[dom], replace=False)]
        diffs.append(fl - value(rand))
    m, h = _t_interval(diffs)
    return [f"| INGENIOUS coverage (5% per domain) | {len(seeds)} | facility-location value "
            f"{fl:.4f} vs random subsets {fl - np.mean(diffs):.4f} | +{m:.4f} ± {h:.4f} |"], fl_s


def coreset_rows(seeds, min_chars=500, budget=0.05):
    """Coreset reweighting with the length scorer (weight 1 for >= min_chars characters): the
    share of documents whose propagated weight equals their own score, against the best constant
    (the majority class) and the scorer calls saved."""
    docs, doms = _docs()
    hashes = [selection.content_hash(d) for d in docs]
    emb, _ = subset_select.cached_embed(docs, hashes, None)
    truth = np.asarray([float(len(d) >= min_chars) for d in docs])
    agree, calls = [], []
    for seed in seeds:
        w = np.zeros(len(docs))
        n_calls = 0
        for dom in np.unique(doms):
            idx = np.flatnonzero(doms == dom)
            wd, _, reps = subset_select.coreset_propagate(
                emb[idx], int(np.ceil(budget * len(idx))), lambda i, idx=idx: truth[idx[i]],
                seed=seed)
            w[idx] = wd
            n_calls += len(reps)
        agree.append(float(np.mean(w == truth)))
        calls.append(n_calls)
    base = max(truth.mean(), 1 - truth.mean())
    m, h = _t_interval(np.asarray(agree) - base)
    return [f"| coreset reweighting, length >= {min_chars} scored on {budget:.0%} per domain "
            f"({np.mean(calls):.0f} of {len(docs)} documents) | {len(seeds)} | propagated weight = own "
            f"score for {np.mean(agree):.3f} of documents vs {base:.3f} for the best constant | "
            f"+{m:.3f} ± {h:.3f} |"]


def _load_model(run_dir):
    """(apply, params, tokenizer) of a run's latest checkpoint."""
    import pathlib

    from mixjax import config as config_lib
    from mixjax.train import checkpoint as ckpt_lib
    from mixjax.train.data import build_tokenizer
    from mixjax.train.lm_model import build_model
    run_dir = pathlib.Path(run_dir)
    cfg = config_lib.validate(config_lib.load_run_config(run_dir))
    tok, vocab = build_tokenizer(cfg)
    spec = build_model(cfg, vocab)
    ck = ckpt_lib.Checkpointer(run_dir / "checkpoints")
    params = ckpt_lib.restore_params(ck.manager, ck.latest_step(), spec.abstract_params)
    ck.close()
    return spec.apply, params, tok


def noise_rows(seeds, run_dir):
    import jax.numpy as jnp

    from mixjax.core import step as step_lib
    from mixjax.mixing import feasible, prospect, sample_reweight
    apply, params, tok = _load_model(run_dir)
    docs, _ = _docs()
    seq = 64
    pr = prospect.Prospect(spectrum="extremile", level=2.0, penalty="chi2", shift_cost=1.0)
    srw = sample_reweight.get("quadratic", temperature=1.0, burn_in=0)
    out = {"prospect": [], "feasible": [], "sample_reweight": []}
    for seed in seeds:
        rng = np.random.default_rng(seed)
        w_noisy = {k: [] for k in out}
        for _ in range(8):
            rows = []
            for _ in range(16):
                ids = np.asarray(tok.encode(docs[rng.integers(len(docs))]), np.int32)
                while len(ids) < seq + 1:
                    ids = np.concatenate([ids, ids])
                start = rng.integers(0, len(ids) - seq)
                rows.append(ids[start:start + seq + 1])
            tokens = np.stack(rows)
            noisy = rng.permutation(16)[:4]
            tokens[noisy] = rng.integers(1, 256, (4, seq + 1))
            tl, tm = step_lib.token_losses(apply, params, jnp.asarray(tokens), tok.pad_id)
            loss = step_lib.sequence_loss(tl, tm)
            stats = {"sample_loss": loss, "token_mask": tm}
            w = {"prospect": pr.example_weights(pr.update(pr.init(1), stats, 0), stats),
                 "sample_reweight": srw.sample_weights(loss, 0)}
            lam = feasible.dual_step(jnp.zeros(16), jnp.arange(16), loss, eps=2.5, dual_lr=1.0,
                                     slack_decay=0.0)
            w["feasible"] = 16 * lam / jnp.maximum(lam.sum(), 1e-12)    # mean 1 over the batch
            for k in out:
                w_noisy[k].append(float(np.asarray(w[k])[noisy].mean()))
        for k in out:
            out[k].append(np.mean(w_noisy[k]))
    rows = []
    for k, v in out.items():
        m, h = _t_interval(np.asarray(v) - 1.0)
        rows.append(f"| {k}: weight of noisy rows (25% random bytes) | {len(seeds)} | mean "
                    f"{np.mean(v):.2f} (uniform: 1) | {m:+.2f} ± {h:.2f} |")
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--model", default=None, help="a trained run dir for the noise check")
    args = ap.parse_args()
    seeds = list(range(args.seeds))
    print("| check | seeds | result | paired difference (95% t-interval) |")
    print("|---|---|---|---|")
    rows, embed_s = gio_rows(seeds)
    rows2, fl_s = ingenious_rows(seeds)
    for r in rows + rows2 + coreset_rows(seeds):
        print(r)
    if args.model:
        for r in noise_rows(seeds, args.model):
            print(r)
    print(f"\nembedding mixpile-tiny: {embed_s:.1f} s; facility location over all domains: "
          f"{fl_s:.1f} s")


if __name__ == "__main__":
    main()
