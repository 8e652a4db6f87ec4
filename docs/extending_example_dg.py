"""Worked example of docs/extending.md, section 7: a DG algorithm with a test-time procedure.

A kNN memory classifier in the manner of AdaNPC (Zhang et al., "AdaNPC: Exploring
Non-Parametric Classifier for Test-Time Adaptation", ICML 2023, arXiv 2304.12566). Training
is ERM; besides, the state keeps a ring buffer of the M latest training features
``z = f(x) / ||f(x)||`` with their labels. At test time, per environment, an example with
feature z is classified by its k most similar memory entries m_j (cosine similarity s_j):

    p(y | z) = sum_{j in top-k} softmax_j(s_j / tau) [y_j = y]
    logits   = log(p + 1e-6)

and, in a test environment, is then written to the memory with its predicted label (the
"adaptation": later test examples see earlier ones). Every environment starts from the
trained memory. The number of memory writes is the reported cost (``env{e}_tt_cost``).
tests/test_extending_example.py runs it on the tiny synthetic DG dataset.
"""

from __future__ import annotations

from typing import ClassVar

import jax
import jax.numpy as jnp

from mixjax.dg import algorithms as A


def _unit(z):
    return z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)


def _write(memory, labels, ptr, z, y, valid):
    """Appends the valid rows of (z, y) to the ring buffer at ``ptr``; rows that are not
    valid are dropped (scatter index M is out of range)."""
    m = memory.shape[0]
    pos = (ptr + jnp.cumsum(valid) - 1) % m
    idx = jnp.where(valid, pos, m)
    return (memory.at[idx].set(z, mode="drop"), labels.at[idx].set(y, mode="drop"),
            ptr + jnp.sum(valid))


@A.register
class KNNMemory(A.Algorithm):
    name = "knn_memory"
    memory_size: ClassVar[int] = 128
    k: ClassVar[int] = 5
    tau: ClassVar[float] = 0.1

    def init(self, key, hp):
        state = super().init(key, hp)
        d = self.model.abstract.featurizer.n_outputs
        return {**state, "mem_z": jnp.zeros((self.memory_size, d)),
                "mem_y": jnp.zeros((self.memory_size,), jnp.int32),
                "mem_n": jnp.zeros((), jnp.int32)}

    def update(self, hp, state, xs, ys, key):
        new, metrics = super().update(hp, state, xs, ys, key)
        x = xs.reshape(-1, *xs.shape[2:])
        z = _unit(jax.lax.stop_gradient(self.features(new["params"], x)))
        mz, my, n = _write(new["mem_z"], new["mem_y"], new["mem_n"], z, ys.reshape(-1),
                           jnp.ones((z.shape[0],), bool))
        return {**new, "mem_z": mz, "mem_y": my, "mem_n": n}, metrics

    # -- the test-time hook
    def test_time_init(self, state, meta):
        return {"z": state["mem_z"], "y": state["mem_y"], "n": state["mem_n"],
                "adapt": meta["is_test"], "cost": jnp.zeros((), jnp.float32)}

    def predict_with_state(self, state, tt, x, valid):
        z = _unit(self.features(state["params"], x))
        filled = jnp.arange(self.memory_size) < jnp.minimum(tt["n"], self.memory_size)
        sim = jnp.where(filled[None, :], z @ tt["z"].T, -jnp.inf)
        top, idx = jax.lax.top_k(sim, self.k)
        w = jax.nn.softmax(top / self.tau, axis=-1)
        onehot = jax.nn.one_hot(tt["y"][idx], self.net.num_classes)
        logits = jnp.log(jnp.einsum("nk,nkc->nc", w, onehot) + 1e-6)
        write = valid & tt["adapt"]
        mz, my, n = _write(tt["z"], tt["y"], tt["n"], z, jnp.argmax(logits, -1), write)
        return logits, {**tt, "z": mz, "y": my, "n": n,
                        "cost": tt["cost"] + jnp.sum(write).astype(jnp.float32)}
