"""Gradient-engine cost: step time and memory of each strategy, side by side with plain training.

Same model, same batch (B sequences, K domains, B/K per domain), in one run:

* ``plain``      value_and_grad of the mean token loss + AdamW (the baseline step);
* ``plain+tgt``  plain + the target gradient g_t (the floor for DoGE-OOD / DGA);
* ``vmap-univ``  stratified vmap(grad): gram + grad_norm, model gradient sum_d w_d g_d
                 from the materialised per-domain gradients (DoGE universal's step; no
                 target batch);
* ``vmap``       the same plus grad_dot with a target gradient (DoGE-OOD's step);
* ``vmap-rows``  one forward, vmap of the VJP over K one-hot rows (any composition);
* ``chunked``    lax.map over groups of ``--chunk`` domains: grad_dot + grad_norm,
                 then one weighted backward;
* ``jvp``        jax.jvp for grad_dot, then one VJP for the model gradient (DGA's step);
* ``jvp-lin``    jvp_mode="linearize": one linearisation, tangent pass + its transpose;
* ``jvp-m1``     ``jvp`` with the tangent pass over the whole batch (``jvp_microbatches=1``;
                 ``jvp`` itself uses 4 micro-batches when B allows);
* ``reference``  the reference-code way (DoGE's trainer): one jitted backward per
                 domain in a Python loop, each gradient flattened into a K x P host
                 numpy matrix, scores and the weighted gradient on the host, then AdamW.

Every step except ``plain`` and ``vmap-univ`` also computes the target gradient g_t on a
target batch of ``--target-seqs`` sequences (DoGE-OOD / DGA need it; ``plain`` does not),
a fixed extra cost of about target-seqs / batch of a plain step.
Times are medians of ``--reps`` runs alternating with the plain step (the ratio
column divides by the plain step's median over the same window), since shared
machines drift. Memory: XLA's compiled memory analysis (``jitted.lower(...).compile().memory_analysis()``),
temp + output + argument - alias bytes; "extra" is that minus the plain step's,
in units of the parameter bytes. The reference's host matrix is K x P x 4 bytes of
host RAM on top of its device memory.

Command (CPU, about 5 minutes; numbers in docs/gradients.md)::

    python benchmarks/bench_grads.py                 # K = 8 and K = 32, B = 64
    python benchmarks/bench_grads.py --d-model 512 --layers 8 --seq 512 --batch 64   # accelerator
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mixjax.mixing import grads as G
from mixjax.models import transformer
from mixjax.core import step as step_lib


def build(args, vocab=256):
    cfg = transformer.TransformerConfig(vocab_size=vocab, d_model=args.d_model,
                                        num_layers=args.layers, num_heads=args.heads)
    apply, params, _ = transformer.init(cfg, 0)

    def tlf(p, b):
        return step_lib.token_losses(apply, p, b["tokens"], pad_id=0)
    return tlf, params


def batch_for(k, args, seed=0):
    rng = np.random.default_rng(seed)
    b = args.batch
    dom = rng.permutation(np.repeat(np.arange(k), b // k)).astype(np.int32)
    tokens = rng.integers(1, 256, size=(b, args.seq + 1)).astype(np.int32)
    tgt = rng.integers(1, 256, size=(args.target_seqs, args.seq + 1)).astype(np.int32)
    return {"tokens": jnp.asarray(tokens), "domain_id": jnp.asarray(dom),
            "target_tokens": jnp.asarray(tgt)}


def make_steps(tlf, k, tx, chunk):
    def plain(params, opt, batch):
        g = jax.grad(lambda p: G.mean_loss(tlf, p, {"tokens": batch["tokens"]}))(params)
        u, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, u), opt

    def engine(cfg, needs):
        def step(params, opt, batch):
            gt = None
            if "grad_dot" in needs:
                gt = G.target_grad(tlf, params, G.target_batch(batch))
            out = G.domain_grads(tlf, params, batch, num_domains=k, needs=needs, config=cfg,
                                 target=gt)
            # a DoGE/DGA-like weight from the statistics, then the weighted gradient
            score = out.stats["grad_dot"] if "grad_dot" in needs else out.stats["gram"].sum(1)
            w = jax.nn.softmax(score)
            g = out.combine(w)
            u, opt = tx.update(g, opt, params)
            return optax.apply_updates(params, u), opt, out.stats
        return step

    def plain_target(params, opt, batch):
        """plain + the target gradient: the floor for methods that need g_t."""
        g = jax.grad(lambda p: G.mean_loss(tlf, p, {"tokens": batch["tokens"]}))(params)
        gt = G.target_grad(tlf, params, G.target_batch(batch))
        g = jax.tree.map(lambda a, b: a + 1e-3 * b, g, gt)
        u, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, u), opt

    full = {"grad_dot", "gram", "grad_norm"}
    return {
        "plain": plain,
        "plain+tgt": plain_target,
        "vmap-univ": engine(G.GradConfig(strategy="vmap"), {"gram", "grad_norm"}),
        "vmap": engine(G.GradConfig(strategy="vmap"), full),
        "vmap-rows": engine(G.GradConfig(strategy="vmap", layout="rows"), full),
        "chunked": engine(G.GradConfig(strategy="chunked", chunk_size=chunk),
                          {"grad_dot", "grad_norm"}),
        "jvp": engine(G.GradConfig(strategy="jvp"), {"grad_dot"}),
        "jvp-lin": engine(G.GradConfig(strategy="jvp", jvp_mode="linearize"), {"grad_dot"}),
        # the tangent pass over the whole batch at once (before jvp_microbatches)
        "jvp-m1": engine(G.GradConfig(strategy="jvp", jvp_microbatches=1), {"grad_dot"}),
    }


def mem_bytes(compiled):
    m = compiled.memory_analysis()
    if m is None:
        return float("nan")
    return (m.temp_size_in_bytes + m.output_size_in_bytes + m.argument_size_in_bytes
            - m.alias_size_in_bytes)


def timeit_pair(fn, base, reps):
    """Median times of ``fn`` and ``base``, run alternately (shared machines drift)."""
    fn(), base()  # warm
    ts, bs = [], []
    for _ in range(reps):
        for f, out in ((base, bs), (fn, ts)):
            t0 = time.perf_counter()
            f()
            out.append(time.perf_counter() - t0)
    return float(np.median(ts)), float(np.median(bs))


def reference_step(tlf, params, opt, batch, k, tx):
    """The DoGE reference's way: K backward passes, flattened to a host K x P matrix."""
    leaves, treedef = jax.tree.flatten(params)
    sizes = [x.size for x in leaves]

    @jax.jit
    def dom_grad(p, b, d):
        return jax.grad(lambda q: G.domain_loss_vector(tlf, q, b, k)[0][d])(p)

    @jax.jit
    def tgt_grad(p, b):
        return G.target_grad(tlf, p, G.target_batch(b))

    @jax.jit
    def apply(p, o, g):
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o

    def run():
        mat = np.zeros((k, sum(sizes)), np.float32)
        for d in range(k):
            g = dom_grad(params, batch, d)
            mat[d] = np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(g)])
        t = np.concatenate([np.asarray(x).ravel()
                            for x in jax.tree.leaves(tgt_grad(params, batch))])
        dots = mat @ t
        gram = mat @ mat.T  # noqa: F841  (what DoGE universal uses)
        w = np.exp(dots - dots.max())
        w /= w.sum()
        flat = w @ mat
        parts = np.split(flat, np.cumsum(sizes)[:-1])
        g = jax.tree.unflatten(treedef, [jnp.asarray(x.reshape(l.shape))
                                         for x, l in zip(parts, leaves)])
        out = apply(params, opt, g)
        jax.block_until_ready(out)
    return run, k * sum(sizes) * 4


def main(argv=None):
    ap = argparse.ArgumentParser(description="gradient-engine step time and memory")
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--target-seqs", type=int, default=8)
    ap.add_argument("--ks", default="8,32")
    ap.add_argument("--chunk", type=int, default=4)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--memory-only", action="store_true", help="compile and report memory only")
    ap.add_argument("--only", default=None,
                    help="comma-separated subset of the steps (plain is always included)")
    args = ap.parse_args(argv)

    tlf, params = build(args)
    tx = optax.adamw(1e-3)
    opt = tx.init(params)
    n_params = sum(x.size for x in jax.tree.leaves(params))
    p_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
    print(f"device {jax.devices()[0].device_kind}; model d={args.d_model} L={args.layers}, "
          f"{n_params / 1e6:.2f}M params ({p_bytes / 2**20:.1f} MiB); batch {args.batch} x "
          f"{args.seq} tokens; target batch {args.target_seqs} seqs")
    print(f"{'K':>3} {'strategy':<10} {'ms/step':>9} {'x plain':>8} {'mem MiB':>9} "
          f"{'extra/params':>13}")
    for k in [int(x) for x in args.ks.split(",")]:
        batch = batch_for(k, args)
        steps = make_steps(tlf, k, tx, min(args.chunk, k))
        if args.only:
            keep = {"plain", *args.only.split(",")}
            steps = {n: f for n, f in steps.items() if n in keep}
        compiled = {name: jax.jit(fn).lower(params, opt, batch).compile()
                    for name, fn in steps.items()}
        runner = {name: (lambda c=c: jax.block_until_ready(c(params, opt, batch)))
                  for name, c in compiled.items()}
        base_m = mem_bytes(compiled["plain"])
        for name in steps:
            mem = mem_bytes(compiled[name])
            if args.memory_only:
                print(f"{k:>3} {name:<10} {'-':>9} {'-':>8} {mem / 2**20:>9.1f} "
                      f"{(mem - base_m) / p_bytes:>13.2f}", flush=True)
                continue
            t, tb = timeit_pair(runner[name], runner["plain"], args.reps)
            print(f"{k:>3} {name:<10} {t * 1e3:>9.1f} {t / tb:>8.2f} {mem / 2**20:>9.1f} "
                  f"{(mem - base_m) / p_bytes:>13.2f}", flush=True)
        if not (args.skip_reference or args.memory_only):
            run, host = reference_step(tlf, params, opt, batch, k, tx)
            t, tb = timeit_pair(run, runner["plain"], max(2, args.reps // 2))
            print(f"{k:>3} {'reference':<10} {t * 1e3:>9.1f} {t / tb:>8.2f} "
                  f"{'host +' + format(host / 2**20, '.1f'):>9} {'(K x P host)':>13}", flush=True)


if __name__ == "__main__":
    main()
