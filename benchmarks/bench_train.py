"""Train-step speed on CPU, and what per-domain bookkeeping costs.

    .venv/bin/python benchmarks/bench_train.py [--reps 30] [--models tiny,10m]

For each model (``tiny`` = the quickstart LM, ~0.5M params, B=16 x S=128;
``10m`` = ~10.7M params, 6 layers x d_model 384, B=8 x S=256) it times, in
one process, interleaved A/B/A/B so machine load hits all variants alike:

* ``plain``:      value_and_grad of the plain token-mean loss + AdamW (the floor)
* ``per-domain``: ``make_train_step`` with the ``uniform`` mixer (per-token
                  losses, per-domain segment sums, mixer update, metrics)
* ``loss-mode``:  the same with ``apply_to=loss`` (importance-weighted loss)

and prints ms/step, tokens/s and the ratio to ``plain`` (target for
per-domain bookkeeping: < 1.03). Medians over ``--reps`` steps.

It also measures the data pipeline on mixpile-tiny with the quickstart's
sampler settings (``mixjax.data.throughput.measure_throughput``) and prints
the data-vs-model tokens/s ratio (target >= 10x the quickstart model's rate).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mixjax import mixing
from mixjax.config import OptimConfig
from mixjax.models import transformer as T
from mixjax.core import state as state_lib
from mixjax.core import step as step_lib

MODELS = {
    "tiny": dict(model=dict(d_model=128, num_layers=2, num_heads=4), batch=16, seq=128),
    "10m": dict(model=dict(d_model=384, num_layers=6, num_heads=6), batch=8, seq=256),
}
K = 8
VOCAB = 264
PAD = 256


def plain_step(apply, tx):
    """The floor: mean token loss, value_and_grad, AdamW; no per-domain work."""

    def step(state, batch):
        def loss_fn(p):
            tl, tm = step_lib.token_losses(apply, p, batch["tokens"], PAD)
            return jnp.sum(tl) / jnp.maximum(jnp.sum(tm), 1.0)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        updates, opt = tx.update(grads, state.opt_state, state.params)
        return state.replace(params=optax.apply_updates(state.params, updates),
                             opt_state=opt, step=state.step + 1), {"loss": loss}

    return jax.jit(step, donate_argnums=0)


def make_batch(b, s, rng):
    return {"tokens": jnp.asarray(rng.integers(0, 256, (b, s + 1)), jnp.int32),
            "domain_id": jnp.asarray(rng.integers(0, K, b), jnp.int32),
            "sampling_weights": jnp.full((K,), 1.0 / K, jnp.float32)}


def bench_model(name, spec, reps):
    mcfg = T.TransformerConfig(vocab_size=VOCAB, **spec["model"])
    apply, params, _ = T.init(mcfg, seed=0)
    tx, schedule = state_lib.make_optimizer(OptimConfig(), 1000)
    batch = make_batch(spec["batch"], spec["seq"], np.random.default_rng(0))
    variants = {
        "plain": (plain_step(apply, tx), mixing.get("uniform")),
    }
    for label, apply_to in (("per-domain", None), ("loss-mode", "loss")):
        mixer = mixing.build("uniform", {}, domains=tuple(map(str, range(K))), apply_to=apply_to)
        variants[label] = (step_lib.make_train_step(apply=apply, mixer=mixer, tx=tx, num_domains=K,
                                                    pad_id=PAD, lr_schedule=schedule), mixer)
    states = {}
    for label, (fn, mixer) in variants.items():
        st = state_lib.init_state(jax.tree.map(jnp.copy, params), tx, mixer, K, seed=0)
        for _ in range(3):                                   # compile + warm up
            st, m = fn(st, batch)
        jax.block_until_ready(m)
        states[label] = st
    times = {label: [] for label in variants}
    for _ in range(reps):
        for label, (fn, _) in variants.items():              # interleaved
            t0 = time.perf_counter()
            states[label], m = fn(states[label], batch)
            jax.block_until_ready(m)
            times[label].append(time.perf_counter() - t0)
    tokens = spec["batch"] * spec["seq"]
    med = {label: statistics.median(ts) for label, ts in times.items()}
    n = T.count_params(params)
    print(f"\n{name}: {n / 1e6:.2f}M params, B={spec['batch']} S={spec['seq']} "
          f"({tokens} tokens/step), median of {reps}")
    for label, t in med.items():
        print(f"  {label:11s} {t * 1e3:8.1f} ms/step  {tokens / t:10.0f} tokens/s  "
              f"ratio to plain {t / med['plain']:.3f}")
    return tokens / med["per-domain"], med["per-domain"] / med["plain"]


def data_rate(batches: int):
    from mixjax import data
    from mixjax.data.throughput import measure_throughput
    sampler = data.DomainSampler(data.corpus_sources("mixpile-tiny"), batch_size=16, seq_len=128,
                                 mode="stratified", seed=0)
    return measure_throughput(sampler, batches)["tokens_per_s"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--models", default="tiny,10m")
    p.add_argument("--data-batches", type=int, default=200)
    args = p.parse_args(argv)
    print(f"devices: {jax.devices()}")
    rates = {}
    for name in args.models.split(","):
        rates[name], ratio = bench_model(name, MODELS[name], args.reps)
        print(f"  per-domain bookkeeping overhead: {100 * (ratio - 1):+.1f}% "
              f"(target < 3%: {'met' if ratio < 1.03 else 'NOT met'})")
    if "tiny" in rates:
        d = data_rate(args.data_batches)
        r = d / rates["tiny"]
        print(f"\ndata (mixpile-tiny, B=16 S=128, stratified): {d:.0f} tokens/s; quickstart "
              f"model consumes {rates['tiny']:.0f} tokens/s -> ratio {r:.1f}x "
              f"(target >= 10x: {'met' if r >= 10 else 'NOT met'})")


if __name__ == "__main__":
    main()
