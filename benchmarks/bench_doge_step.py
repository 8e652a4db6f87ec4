"""DoGE's train step before/after the one-forward change, side by side in one run.

``two-pass``: the step as it was: a full-batch forward kept as a VJP (its
pullback unused: DoGE's model gradient is the engine's ``sum_d c_d g_d``) and
then the gradient engine's stratified per-domain forward + backward.
``one-pass``: the per-domain loss and count come from the engine's pass
(``mixjax.core.step``, ``engine_losses``). The two-pass step is rebuilt here by
handing the step an engine hook that hides its losses, the fallback the step
keeps for hooks that do not expose them (same code path as before the change).

Both are the real ``make_train_step`` with the DoGE mixer (universal target:
Gram matrix; ``--target ood``: grad_dot with a target batch) and AdamW, the
``vmap`` engine at K domains. Times are medians of ``--reps`` runs, the two
steps alternating (shared machines drift); FLOPs from XLA's cost analysis of the
compiled steps.

Command (CPU, about 2 minutes)::

    python benchmarks/bench_doge_step.py                    # K = 8, B = 64, universal
    python benchmarks/bench_doge_step.py --target ood
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mixjax import mixing
from mixjax.mixing import grads
from mixjax.models import transformer
from mixjax.core import state as state_lib
from mixjax.core import step as step_lib


def hide_losses(hook):
    """The engine hook without ``domain_loss``: the step runs its own full-batch forward."""
    def wrapped(*args):
        res = hook(*args)
        plain = type("Plain", (dict,), {"combine": staticmethod(res.combine)})
        return plain(dict(res))
    return wrapped


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--target", choices=("universal", "ood"), default="universal")
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args(argv)
    k, vocab = args.k, 256
    cfg = transformer.TransformerConfig(vocab_size=vocab, d_model=args.d_model,
                                        num_layers=args.layers, num_heads=args.heads)
    apply, params, _ = transformer.init(cfg, 0)
    mixer = mixing.build("doge", {"target": args.target, "mu": 0.05},
                         domains=tuple(f"d{i}" for i in range(k)), token_counts=None,
                         apply_to=None)
    tx = optax.adamw(1e-3)
    hook = grads.make_grad_stats(grads.GradConfig(strategy="vmap"), k)
    rng = np.random.default_rng(0)
    batch = {"tokens": jnp.asarray(rng.integers(1, vocab, (args.batch, args.seq + 1)), jnp.int32),
             "domain_id": jnp.asarray(rng.permutation(np.repeat(np.arange(k), args.batch // k)),
                                      jnp.int32),
             "sampling_weights": jnp.full((k,), 1.0 / k, jnp.float32)}
    if args.target == "ood":
        batch["target_tokens"] = jnp.asarray(rng.integers(1, vocab, (8, args.seq + 1)), jnp.int32)

    steps, states, flops = {}, {}, {}
    for name, h in (("two-pass", hide_losses(hook)), ("one-pass", hook)):
        steps[name] = step_lib.make_train_step(
            apply=apply, mixer=mixer, tx=tx, num_domains=k, pad_id=0,
            lr_schedule=lambda s: 1e-3, grad_stats=h, donate=False)
        states[name] = state_lib.init_state(params, tx, mixer, k, seed=0)
        flops[name] = steps[name].lower(states[name], batch).compile().cost_analysis()["flops"]
        jax.block_until_ready(steps[name](states[name], batch))     # compile + warm up
    times = {name: [] for name in steps}
    for _ in range(args.reps):
        for name, fn in steps.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(states[name], batch))
            times[name].append(time.perf_counter() - t0)
    m1 = jax.tree.map(np.asarray, steps["one-pass"](states["one-pass"], batch)[1])
    m2 = jax.tree.map(np.asarray, steps["two-pass"](states["two-pass"], batch)[1])
    diff = max(float(np.max(np.abs(m1[key] - m2[key]))) for key in ("domain_loss", "weights"))
    med = {name: float(np.median(t)) for name, t in times.items()}
    print(f"DoGE step ({args.target} target), K={k}, B={args.batch}, S={args.seq}, "
          f"d_model={args.d_model}, layers={args.layers}, {jax.devices()[0].platform}, "
          f"median of {args.reps}")
    for name in steps:
        print(f"  {name:9s} {med[name] * 1e3:9.1f} ms   {flops[name] / 1e9:8.2f} GFLOP")
    print(f"  one-pass / two-pass time  = {med['one-pass'] / med['two-pass']:.3f} "
          f"(speed-up {100 * (1 - med['one-pass'] / med['two-pass']):.1f}%)")
    print(f"  one-pass / two-pass FLOPs = {flops['one-pass'] / flops['two-pass']:.3f}")
    print(f"  max |difference| of domain_loss/weights after one step: {diff:.2e}")


if __name__ == "__main__":
    main()
