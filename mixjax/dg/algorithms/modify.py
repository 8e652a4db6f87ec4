"""MoDify, momentum difficulty (Jiang, Huang, Jin, Lu, "Domain Generalization via Balancing
Training Difficulty and Model Capability", ICCV 2023, arXiv 2309.00844): training samples and
their augmentation are scheduled by how hard they are for the model being trained.

No reference code was found (public GitHub code searched for the paper, its first author and
"MoDify" / "loss bank" / "RGB Shuffle"), and the copies of the paper available here (arXiv
abstract, project page jiang-xueying.github.io/projects/jiang2023domain, reviews) give its
abstract and the Figure 2 caption, not its equations.
This module implements the rule as the paper describes it (Fig. 2 caption, abstract):

* a **loss bank** (momentum memory of the model's capability): the per-example losses of the
  most recent ``modify_bank`` un-augmented training examples, first in first out;
* **difficulty** of a loss l: its empirical CDF in the bank, d = |{bank < l}| / |bank| in
  [0, 1] (0.5 while the bank is empty) - "the difficulty level with the Loss Bank";
* **MoDify-DA** (no back-propagation): the original example's loss gives d_da; an "RGB
  Shuffle" of strength s = 1 - d_da (easy examples are made harder, hard ones left nearly
  alone) blends the example with a random non-identity permutation P of its channels (last
  axis), x~ = (1 - s) x + s x[..., P];
* **MoDify-NO**: the augmented example's loss gives d_no; the example is learned only if
  ``modify_low`` <= d_no <= ``modify_high``; above it is postponed (too hard for the current
  capability), below it is dropped (too easy):

    L = sum_i 1[low <= d_no_i <= high] CE(f(x~_i), y_i) / max(1, #learned)

  then the losses of the original examples enter the bank.

Our choices (the paper's equations were not available): the CDF as the normalisation of a
loss by the bank; strength as a blend weight of the shuffle (a graded strength; the paper
varies "the strength of data augmentation"); the thresholds and their ranges (low 0.1 in
U(0, 0.25), high 0.9 in U(0.75, 1)); bank size 1024 ({256, 1024, 4096}, static: it fixes
a shape). DomainBed's minibatch stream draws with replacement forever, so every example
comes back: "postpone" and "drop" both leave the example out of this step (a postponed
example is not queued for a deliberate revisit; the counts of each are reported). The K
training environments are pooled; the algorithm does not read the environment labels. On
one-channel inputs (RotatedMNIST) the shuffle is the identity, and MoDify is the NO schedule
alone; on 1-D inputs the last axis is taken as the channels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from mixjax.config import ConfigError
from mixjax.dg import hparams as H
from mixjax.dg.algorithms import register
from mixjax.dg.algorithms.base import Algorithm


def difficulty(losses, bank, count):
    """f32[n]: the fraction of the bank's filled entries below each loss (0.5 if none yet)."""
    size = bank.shape[0]
    filled = jnp.minimum(count, size)
    valid = jnp.arange(size) < filled
    below = jnp.sum(valid[None, :] & (bank[None, :] < losses[:, None]), axis=1)
    return jnp.where(filled > 0, below / jnp.maximum(filled, 1).astype(jnp.float32), 0.5)


def channel_perms(key, n: int, c: int):
    """int32[n, c]: a random permutation of c channels per example, never the identity (c > 1)."""
    perms = jnp.argsort(jax.random.uniform(key, (n, c)), axis=1)
    ident = jnp.all(perms == jnp.arange(c), axis=1, keepdims=True)
    return jnp.where(ident, jnp.roll(jnp.arange(c), 1)[None, :], perms)


def rgb_shuffle(x, perms, strength):
    """x~_i = (1 - s_i) x_i + s_i x_i[..., perm_i] (channels on the last axis)."""
    idx = perms.reshape(perms.shape[0], *([1] * (x.ndim - 2)), perms.shape[1])
    shuffled = jnp.take_along_axis(x, jnp.broadcast_to(idx, x.shape), axis=-1)
    s = strength.reshape(-1, *([1] * (x.ndim - 1)))
    return (1.0 - s) * x + s * shuffled


def push(bank, count, values):
    """Ring buffer: write ``values`` after the ``count`` already written (the newest win)."""
    size = bank.shape[0]
    values = values[-size:]
    idx = (count + jnp.arange(values.shape[0])) % size
    return bank.at[idx].set(values), count + values.shape[0]


@register
class MoDify(Algorithm):
    name = "modify"
    carry = ("bank", "bank_count")

    @classmethod
    def own_hparams(cls, small):
        return {"modify_low": H.HParam(0.1, lambda r: r.uniform(0.0, 0.25)),
                "modify_high": H.HParam(0.9, lambda r: r.uniform(0.75, 1.0)),
                "modify_bank": H.HParam(1024, lambda r: int(r.choice([256, 1024, 4096])))}

    def init(self, key, hp):
        if self.static_hp("modify_bank") < 1:     # one line, exit 2 from the CLI, before compiling
            raise ConfigError("algorithm 'modify' needs modify_bank >= 1 (loss bank size), "
                              f"got {self.static_hp('modify_bank')}")
        state = super().init(key, hp)
        return {**state, "bank": jnp.zeros((self.static_hp("modify_bank"),), jnp.float32),
                "bank_count": jnp.zeros((), jnp.int32)}

    def loss(self, params, hp, state, xs, ys, key):
        k, b = xs.shape[:2]
        x, y = xs.reshape(k * b, *xs.shape[2:]), ys.reshape(-1)
        bank, count = state["bank"], state["bank_count"]
        ce = optax.softmax_cross_entropy_with_integer_labels
        # MoDify-DA: the original example's difficulty sets the shuffle's strength (no gradient)
        l_da = ce(self.logits(jax.lax.stop_gradient(params), x), y)
        d_da = difficulty(l_da, bank, count)
        x_aug = rgb_shuffle(x, channel_perms(key, k * b, x.shape[-1]), 1.0 - d_da)
        # MoDify-NO: learn the augmented example only if its difficulty fits the capability
        l_no = ce(self.logits(params, x_aug), y)
        d_no = difficulty(jax.lax.stop_gradient(l_no), bank, count)
        learn = ((d_no >= hp["modify_low"]) & (d_no <= hp["modify_high"])).astype(jnp.float32)
        loss = jnp.sum(learn * l_no) / jnp.maximum(jnp.sum(learn), 1.0)
        new_bank, new_count = push(bank, count, l_da)
        return loss, {"loss": loss, "learn_frac": learn.mean(),
                      "postpone_frac": (d_no > hp["modify_high"]).mean(),
                      "drop_frac": (d_no < hp["modify_low"]).mean(), "strength": (1.0 - d_da).mean(),
                      "bank": new_bank, "bank_count": new_count}
