"""DoGE's step runs one forward pass: its loss statistics come from the gradient engine.

The step of a mixer that prescribes the model gradient (``gradient_coeffs``)
used to run a full-batch forward kept as a VJP (whose pullback was never used)
and then the engine's per-domain pass. Now the per-domain loss and count come
from the engine's pass. Checked against the two-pass step (forced by an engine
hook that does not expose its losses): same states and metrics up to float
reordering, and fewer FLOPs in the compiled step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mixjax import mixing
from mixjax.mixing import grads
from mixjax.models import transformer as T
from mixjax.core import state as state_lib
from mixjax.core import step as step_lib
from train_fakes import PAD, VOCAB, domain_sequence

K, S, PER = 3, 8, 2
CFG = T.TransformerConfig(vocab_size=VOCAB, d_model=16, num_layers=1, num_heads=2)
APPLY, PARAMS, _ = T.init(CFG, seed=0)


def batches(n):
    out = []
    for i in range(n):
        ids = np.repeat(np.arange(K), PER)[np.random.default_rng(i).permutation(K * PER)]
        tokens = np.stack([domain_sequence(int(d), 10 * i + j, S + 1) for j, d in enumerate(ids)])
        tokens[1, -3:] = PAD          # some padding, masked out of the loss
        out.append({"tokens": jnp.asarray(tokens, jnp.int32),
                    "domain_id": jnp.asarray(ids, jnp.int32),
                    "sampling_weights": jnp.full((K,), 1.0 / K, jnp.float32)})
    return out


def two_pass(hook):
    """The engine hook without its losses: the step falls back to its own forward."""
    def wrapped(*args):
        res = hook(*args)
        out = dict(res)
        return type("Plain", (dict,), {"combine": staticmethod(res.combine)})(out)
    return wrapped


def make(hook, mixer):
    tx = optax.adamw(1e-2)
    step = step_lib.make_train_step(apply=APPLY, mixer=mixer, tx=tx, num_domains=K, pad_id=PAD,
                                    lr_schedule=lambda s: 1e-2, grad_stats=hook, donate=False)
    return step, state_lib.init_state(PARAMS, tx, mixer, K, seed=0)


def test_one_pass_doge_step_equals_two_pass_step():
    mixer = mixing.build("doge", {"mu": 0.05}, domains=("a", "b", "c"), token_counts=None,
                         apply_to=None)
    hook = grads.make_grad_stats(grads.GradConfig(strategy="vmap"), K)
    one, s1 = make(hook, mixer)
    two, s2 = make(two_pass(hook), mixer)
    for batch in batches(2):
        s1, m1 = one(s1, batch)
        s2, m2 = two(s2, batch)
        for key in ("loss", "objective", "domain_loss", "domain_count", "weights", "grad_norm",
                    "tokens"):
            np.testing.assert_allclose(np.asarray(m1[key]), np.asarray(m2[key]), rtol=2e-5,
                                       atol=1e-7, err_msg=key)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7),
                 s1.params, s2.params)
    # the per-domain losses are the model's: positive and different per domain
    assert np.all(np.asarray(m1["domain_loss"]) > 0)

    # one forward fewer in the lowered step (HLO cost analysis, no second compile)
    flops = [f.lower(s, batches(1)[0]).cost_analysis()["flops"] for f, s in ((one, s1), (two, s2))]
    assert flops[0] < flops[1], flops


def test_steps_needing_token_losses_keep_their_forward():
    """Sample reweighting reads per-sequence losses: the step keeps its own forward pass."""
    mixer = mixing.build("doge", {"mu": 0.05}, domains=("a", "b", "c"), token_counts=None,
                         apply_to=None)
    hook = grads.make_grad_stats(grads.GradConfig(strategy="vmap"), K)
    seen = []

    def sw(seq_loss, step):
        seen.append(seq_loss.shape)
        return jnp.ones_like(seq_loss)

    step = step_lib.make_train_step(apply=APPLY, mixer=mixer, tx=optax.sgd(0.1), num_domains=K,
                                    pad_id=PAD, lr_schedule=lambda s: 1e-2, grad_stats=hook,
                                    sample_weights=sw, donate=False)
    state = state_lib.init_state(PARAMS, optax.sgd(0.1), mixer, K, seed=0)
    _, m = step(state, batches(1)[0])
    assert seen == [(K * PER,)] and np.isfinite(float(m["loss"]))
