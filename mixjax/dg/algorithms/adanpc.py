"""AdaNPC: a kNN classifier over a memory of training features, extended at test time (Zhang
et al., "AdaNPC: Exploring Non-Parametric Classifier for Test-Time Adaptation", ICML 2023,
arXiv 2304.12566), from the authors' DomainBed fork yfzhang114/AdaNPC (commit 29fe27a):
``domainbed/knn.py`` ``MomentumQueue`` (lines 55-124), ``domainbed/algorithms.py`` ``KNN``
(lines 107-171, the training), ``domainbed/adapt_algorithms.py`` ``AdaNPC`` (lines 486-534,
the test-time step), ``domainbed/scripts/train.py`` lines 196-261 and
``scripts/unsupervised_adaptation.py`` lines 299-335 (the evaluation memory, defaults).

kNN scores (``MomentumQueue.forward``, top-k branch), z a feature, m_j the unit-norm memory:

    s_j = <z / ||z||, m_j>;  top-k (s, idx);  w = softmax(s_top / tau)
    p_c = min(sum_i w_i [y_{idx_i} = c] + 1e-5, 1)

Training (``KNN.update``): the featuriser alone minimises NLL(log p, y) on the concatenated
env batches, with the training temperature tau_t = 1 - 0.9 t / 5000 (the code's schedule;
its ``temperature`` hyperparameter is overwritten every step), against a ring buffer of
``queue_size`` features (uniform(+-sqrt(3/D)) at init, labels 0, as the code); after the step
the batch's (pre-step, normalised) features and labels are written into the ring.

Evaluation: the code rebuilds the memory from the training envs' features under the final
network. Here the ring also keeps the training *inputs* of its entries, and every
evaluation re-embeds them with the current featuriser (so the memory is the last
``queue_size`` training examples, not every training example - a bounded stand-in). ``predict``
(the model before its test-time step) is the kNN over that memory at tau = 0.1. The
test-time step (``AdaNPC.forward_and_adapt``), in a test environment: each chunk is
predicted with the memory as it stands, then every example whose confidence
``max softmax(p)`` (a softmax of the scores, as the code) is >= ``adanpc_beta`` is added with
its predicted label; later chunks see it. The code's memory grows without bound; here
``test_capacity`` slots hold the additions (a ring beyond that). The cost reported is the
number of additions. Not reproduced: the code's ``ReduceLROnPlateau`` on the training loss
(patience 500 steps), its one random entry left in the evaluation memory, and its
separate k for adaptation (one ``knn_k`` here).

Cost: the ring holds ``queue_size`` inputs (1000 x 14x14x2 floats = 1.6 MB for CMNIST; for
224-px image folders the registry's 3500 would be 2.1 GB per run - set a smaller
``hparam_overrides.queue_size`` there), and every ``predict`` call and every test-time
environment re-embeds them (``queue_size`` extra forwards).
"""

from __future__ import annotations

import math
from typing import ClassVar

import jax
import jax.numpy as jnp

from mixjax.dg import hparams as H
from mixjax.dg.algorithms import register
from mixjax.dg.algorithms.base import Algorithm, apply_updates

MAX_EPOCH = 5000        # KNN.max_epoch: the temperature schedule's length
EVAL_TAU = 0.1          # train.py: eval_knn temperature; AdaNPC adapt default 0.1


def unit(z):
    """F.normalize: z / max(||z||, 1e-12)."""
    return z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)


def knn_scores(z, mem, mem_y, filled, k: int, tau, num_classes: int):
    """p f32[n, C] (MomentumQueue.forward, top-k branch); ``filled`` bool[M] masks empty slots."""
    sim = jnp.where(filled[None, :], unit(z) @ mem.T, -jnp.inf)
    top, idx = jax.lax.top_k(sim, k)
    w = jax.nn.softmax(top / tau, axis=-1)
    w = jnp.where(jnp.isfinite(top), w, 0.0)
    votes = jnp.einsum("nk,nkc->nc", w, jax.nn.one_hot(mem_y[idx], num_classes))
    return jnp.minimum(votes + 1e-5, 1.0)


def ring_write(mem, lab, ptr, z, y, write):
    """Writes the rows of (z, y) with ``write`` at ``ptr, ptr+1, ...`` (mod M); returns the new
    memory, labels and pointer. Rows without ``write`` are dropped."""
    m = mem.shape[0]
    pos = (ptr + jnp.cumsum(write) - 1) % m
    idx = jnp.where(write, pos, m)
    return mem.at[idx].set(z, mode="drop"), lab.at[idx].set(y, mode="drop"), ptr + jnp.sum(write)


@register
class AdaNPC(Algorithm):
    name = "adanpc"
    test_capacity: ClassVar[int] = 2048

    @classmethod
    def own_hparams(cls, small):
        # KNN (hparams_registry.py lines 89-97) and the adaptation grid (unsupervised_adaptation.py)
        if small:
            q = H.HParam(1000, lambda r: int(r.choice([500, 1000, 2000, 2500, 3500])))
            k = H.HParam(10, lambda r: int(r.choice([5, 10, 20, 50, 100, 150])))
        else:
            q = H.HParam(3500, lambda r: int(r.choice([1000, 1500, 2000, 2500, 3500, 5000])))
            k = H.HParam(150, lambda r: int(r.choice([25, 50, 75, 100, 125, 150, 200, 500])))
        return {"queue_size": q, "knn_k": k,
                "adanpc_beta": H.HParam(0.1, lambda r: float(r.choice([0.0, 0.25, 0.75, 1.1])))}

    @property
    def q(self) -> int:
        return self.static_hp("queue_size")

    @property
    def k(self) -> int:
        return min(self.static_hp("knn_k"), self.q)

    def init(self, key, hp):
        k_net, k_mem = jax.random.split(key)
        state = super().init(k_net, hp)
        d = self.model.abstract.featurizer.n_outputs
        stdv = 1.0 / math.sqrt(d / 3)
        return {**state,
                "mem_z": jax.random.uniform(k_mem, (self.q, d), minval=-stdv, maxval=stdv),
                "mem_y": jnp.zeros((self.q,), jnp.int32),
                "mem_x": jnp.zeros((self.q, *self.net.input_shape)),
                "mem_ptr": jnp.zeros((), jnp.int32),
                # the test-time threshold travels in the state: the hook sees no hparams
                "beta": jnp.asarray(hp["adanpc_beta"], jnp.float32)}

    def loss(self, params, hp, state, xs, ys, key):
        x, y = xs.reshape(-1, *xs.shape[2:]), ys.reshape(-1)
        z = self.features(params, x)
        tau = 1.0 - 0.9 * state["step"].astype(jnp.float32) / MAX_EPOCH
        p = knn_scores(z, state["mem_z"], state["mem_y"], jnp.ones((self.q,), bool), self.k, tau,
                       self.net.num_classes)
        loss = -jnp.mean(jnp.take_along_axis(jnp.log(p), y[:, None], 1))
        return loss, {"loss": loss, "z": jax.lax.stop_gradient(z)}

    def update(self, hp, state, xs, ys, key):
        grads, aux = jax.grad(self.loss, has_aux=True)(state["params"], hp, state, xs, ys, key)
        params, opt = apply_updates(self.tx(hp), grads, state["opt"], state["params"])
        x, y = xs.reshape(-1, *xs.shape[2:]), ys.reshape(-1)
        write = jnp.ones(y.shape, bool)
        mem_z, mem_y, ptr = ring_write(state["mem_z"], state["mem_y"], state["mem_ptr"], unit(aux.pop("z")), y, write)
        mem_x, _, _ = ring_write(state["mem_x"], state["mem_y"], state["mem_ptr"], x, y, write)
        return {**state, "params": params, "opt": opt, "step": state["step"] + 1, "mem_z": mem_z,
                "mem_y": mem_y, "mem_x": mem_x, "mem_ptr": ptr}, aux

    # ---- evaluation
    def train_memory(self, state):
        """The ring's inputs re-embedded by the current featuriser, labels, filled slots."""
        z = unit(self.features(state["params"], state["mem_x"]))
        return z, state["mem_y"], jnp.arange(self.q) < jnp.minimum(state["mem_ptr"], self.q)

    def predict(self, state, x):
        # compiled as a whole even when called eagerly (a kNN over the memory is many small ops)
        return _predict(self, state, x)

    def _predict(self, state, x):
        z, y, filled = self.train_memory(state)
        p = knn_scores(self.features(state["params"], x), z, y, filled, self.k, EVAL_TAU, self.net.num_classes)
        return jnp.log(p)

    def test_time_init(self, state, meta):
        z, y, filled = self.train_memory(state)
        t = self.test_capacity
        return {"z": jnp.concatenate([z, jnp.zeros((t, z.shape[1]))]),
                "y": jnp.concatenate([y, jnp.zeros((t,), jnp.int32)]),
                "filled": jnp.concatenate([filled, jnp.zeros((t,), bool)]),
                "ptr": jnp.zeros((), jnp.int32), "adapt": meta["is_test"],
                "cost": jnp.zeros((), jnp.float32)}

    def predict_with_state(self, state, tt, x, valid):
        f = self.features(state["params"], x)
        p = knn_scores(f, tt["z"], tt["y"], tt["filled"], self.k, EVAL_TAU, self.net.num_classes)
        conf = jax.nn.softmax(p, axis=-1).max(-1)
        write = valid & tt["adapt"] & (conf >= state["beta"])
        q = self.q
        tz, ty, ptr = ring_write(tt["z"][q:], tt["y"][q:], tt["ptr"], unit(f), jnp.argmax(p, -1), write)
        tf = jnp.arange(self.test_capacity) < jnp.minimum(ptr, self.test_capacity)
        return jnp.log(p), {**tt, "z": tt["z"].at[q:].set(tz), "y": tt["y"].at[q:].set(ty),
                            "filled": tt["filled"].at[q:].set(tf), "ptr": ptr,
                            "cost": tt["cost"] + jnp.sum(write).astype(jnp.float32)}


_predict = jax.jit(lambda alg, state, x: alg._predict(state, x), static_argnums=0)
