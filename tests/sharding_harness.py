"""Builds the real train step for many mixers at once, on any mesh (sharding tests only).

Used by ``tests/test_sharded_step.py`` (in-process, 8 fake CPU devices) and by
``tests/multiprocess_worker.py`` (2 processes x 4 fake devices). Every registered
mixer gets the real ``make_train_step`` with everything it can require: a frozen
reference model (``ref_*``), the gradient engine (``grad_dot``/``gram``/...), a
target batch, an eval-loss vector, a learning-rate schedule, non-uniform sampling
weights. All mixers run inside ONE jitted function per mesh: on 2 CPU cores XLA
compilation dominates, and one compile of N steps is far cheaper than N compiles.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mixjax import mixing
from mixjax.mixing import grads
from mixjax.parallel import sharding, step_sharding
from mixjax.models import transformer
from mixjax.core import state as state_lib
from mixjax.core import step as step_lib
from mixjax.mixing import statistics

DOMAINS = ("code", "math", "prose", "web")
K = len(DOMAINS)
TOKEN_COUNTS = (4000.0, 1000.0, 2500.0, 500.0)
VOCAB, PAD = 32, 0
SEQ = 8                      # tokens per sequence (S); rows hold S + 1
BATCH = 16                   # global batch: divisible by every 8-device batch split
MODEL = transformer.TransformerConfig(vocab_size=VOCAB, d_model=16, num_layers=1, num_heads=2,
                                      d_ff=32)
SAMPLING_WEIGHTS = np.array([0.4, 0.1, 0.3, 0.2], np.float32)

# Hyperparameters that make each method act within a few steps (defaults are sized
# for thousands of steps) or that have no default. Unknown mixers use their defaults.
HPARAMS = {
    "manual": {"weights_by_domain": {"code": 3.0, "math": 1.0, "prose": 2.0, "web": 2.0}},
    "odm": {"warmup_steps": 0},
    "odm_smoothed": {"warmup_steps": 0},
    "ado": {"start_step": 0, "ignore_steps": 0, "refit_every": 1, "min_fit_points": 2},
    "dids": {"update_every": 1},
}


def bigram_init(seed: int, vocab: int = VOCAB):
    """A two-matrix LM, ``logits = E[x] W``: compiles in a fraction of the transformer's
    time and still has parameters sharded over fsdp (``embed``) and tensor (``vocab``)."""
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    params = {"embed": 0.5 * jax.random.normal(k1, (vocab, 16), jnp.float32),
              "out": 0.5 * jax.random.normal(k2, (16, vocab), jnp.float32)}
    return params, {"embed": ("vocab", "embed"), "out": ("embed", "vocab")}


def bigram_apply(params, tokens):
    return jnp.take(params["embed"], tokens, axis=0) @ params["out"]


def model(kind: str, vocab: int = VOCAB):
    """``(apply, params, ref_params, logical_axes)`` of the ``bigram`` or ``transformer`` LM."""
    if kind == "bigram":
        params, axes = bigram_init(0, vocab)
        return bigram_apply, params, bigram_init(1, vocab)[0], axes
    cfg = dataclasses.replace(MODEL, vocab_size=vocab)
    apply, params, axes = transformer.init(cfg, 0)
    return apply, params, transformer.init(cfg, 1)[1], axes


@dataclasses.dataclass
class Built:
    names: list[str]
    skipped: dict[str, str]       # mixer -> why it cannot run here
    step_fns: dict
    states: dict                  # host-side initial states
    logical_axes: dict
    frozen: dict                  # mixer -> FrozenInputs (a reference model) or None


def build_mixer(name: str):
    """``mixing.build`` with the test's domains/hyperparameters (raises if impossible)."""
    hp = dict(HPARAMS.get(name, {}))
    known = {f.name for f in dataclasses.fields(mixing.mixer_class(name))}
    hp = {k: v for k, v in hp.items() if k in known}
    return mixing.build(name, hp, domains=DOMAINS, token_counts=TOKEN_COUNTS)


def build(names=None, kind: str = "bigram", vocab: int = VOCAB, pad: int = PAD) -> Built:
    """Step functions (unjitted) and initial states for ``names`` (all registered mixers)."""
    names = list(mixing.names() if names is None else names)
    apply, params, ref_params, axes = model(kind, vocab)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(3e-2, weight_decay=0.1))
    schedule = optax.constant_schedule(3e-2)
    grad_stats = grads.make_grad_stats(grads.GradConfig(), K)
    ok, skipped, fns, states, frozen = [], {}, {}, {}, {}
    for name in names:
        try:
            mixer = build_mixer(name)
        except (TypeError, ValueError) as e:
            skipped[name] = f"cannot build with the test's domains/hyperparameters: {e}"
            continue
        if statistics.needing("routing", mixer.requires):
            skipped[name] = ("reads an MoE model's routing (model.kind=moe), not this dense "
                             "model's; the MoE model's sharding: tests/test_moe_parallel.py")
            continue
        needs_ref = bool(statistics.needing("reference", mixer.requires))
        fns[name] = step_lib.make_train_step(
            apply=apply, mixer=mixer, tx=tx, num_domains=K, pad_id=pad, lr_schedule=schedule,
            ref_apply=apply if needs_ref else None, grad_stats=grad_stats, jit=False)
        st = state_lib.init_state(params, tx, mixer, K, seed=0)
        states[name] = st.replace(eval_loss=jnp.asarray([3.2, 2.9, 3.4, 3.0], jnp.float32))
        frozen[name] = state_lib.FrozenInputs(ref_params=ref_params) if needs_ref else None
        ok.append(name)
    return Built(ok, skipped, fns, states, axes, frozen)


def global_batches(num_steps: int, seed: int = 0) -> list[dict]:
    """Host batches: B/K rows per domain in shuffled order (the gradient engine's
    stratified layout), random tokens with pad tails, a fixed target batch."""
    rng = np.random.default_rng(seed)
    target = rng.integers(1, VOCAB, (4, SEQ + 1)).astype(np.int32)
    out = []
    for _ in range(num_steps):
        ids = rng.permutation(np.repeat(np.arange(K), BATCH // K)).astype(np.int32)
        tokens = rng.integers(1, VOCAB, (BATCH, SEQ + 1)).astype(np.int32)
        tokens[rng.random(BATCH) < 0.3, -3:] = PAD      # some rows end in padding
        out.append({"tokens": tokens, "domain_id": ids, "sampling_weights": SAMPLING_WEIGHTS,
                    "target_tokens": target})
    return out


def run(built: Built, mesh, batches, *, global_batch_size=BATCH):
    """Runs every mixer for ``len(batches)`` steps on ``mesh``.

    ``batches``: whole global batches, or on a multi-process run this process's rows of
    them. Returns ``(per-mixer list of host metrics per step, final states, the jitted
    function)``.
    """
    shardings = {n: sharding.train_state_shardings(built.states[n], built.logical_axes, mesh)
                 for n in built.names}
    states = sharding.place({n: built.states[n] for n in built.names}, shardings)
    frozen_sh = {n: sharding.frozen_shardings(built.frozen[n], built.states[n].params,
                                              built.logical_axes, mesh) for n in built.names}
    frozen = sharding.place({n: built.frozen[n] for n in built.names}, frozen_sh)
    fns = built.step_fns

    def multi(states, batch, frozen):
        outs = {n: fns[n](states[n], batch, frozen[n]) for n in built.names}
        return {n: o[0] for n, o in outs.items()}, {n: o[1] for n, o in outs.items()}

    step = step_sharding.jit_sharded_step(multi, shardings, frozen_shardings=frozen_sh)
    history = {n: [] for n in built.names}
    with jax.set_mesh(mesh):
        for b in batches:
            states, metrics = step(states, step_sharding.shard_batch(b, mesh, global_batch_size),
                                   frozen)
            for n in built.names:
                history[n].append(jax.device_get(metrics[n]))
    return history, states, step


def sampler_batches(process_index: int, process_count: int, num_steps: int, seed: int = 3):
    """Batches of the real ``DomainSampler`` on 4 mixpile-tiny domains: this process's rows
    (it reads only its share of each domain) plus the replicated per-batch values."""
    from mixjax import data
    sources = data.corpus_sources("mixpile-tiny")
    sources = {d: sources[d] for d in ("code", "math", "science", "conversation")}
    sampler = data.DomainSampler(sources, seq_len=SEQ, batch_size=BATCH, mode="stratified",
                                 seed=seed, process_index=process_index,
                                 process_count=process_count)
    target = np.random.default_rng(seed).integers(0, 256, (4, SEQ + 1)).astype(np.int32)
    out = []
    for t in range(num_steps):
        p = np.asarray(sampler.weights_for(t), np.float32)
        b = next(sampler)
        out.append({"tokens": b["tokens"], "domain_id": b["domain_id"], "sampling_weights": p,
                    "target_tokens": target})
    return sampler, out


def concat_processes(per_process: list[list[dict]]) -> list[dict]:
    """Global batches from every process's rows (what a multi-process job trains on)."""
    out = []
    for parts in zip(*per_process):
        glob = dict(parts[0])
        for k in ("tokens", "domain_id"):
            glob[k] = np.concatenate([p[k] for p in parts])
        out.append(glob)
    return out


COMPARED = ("weights", "domain_loss", "domain_count", "loss", "objective", "grad_norm")
