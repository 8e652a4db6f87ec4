"""Shared machinery for DG algorithms: the functional ``Algorithm`` protocol.

A DG algorithm is a frozen dataclass built from static facts (the network's
``NetSpec``, the number of training environments K, static hyperparameters)
with three pure functions:

    state = alg.init(key, hp)                       # params, optimiser state, step, extras
    state, metrics = alg.update(hp, state, xs, ys, key)   # one step on per-env batches
    logits = alg.predict(state, x)
    logits, tt = alg.predict_with_state(state, tt, x, valid)   # test time, per environment
                                                  # (tt = alg.test_time_init(state, meta))

``xs: f32[K, b, H, W, C]`` and ``ys: int32[K, b]`` hold one minibatch per
training environment (DomainBed's ``minibatches``). ``hp`` is a dict of f32
scalars (the non-static hyperparameters), so ``jax.vmap`` over
``(hp, state, xs, ys, key)`` trains many models - different trials and
hyperparameters of one shape - in a single compiled step.

Optimiser: DomainBed's ``torch.optim.Adam(lr, weight_decay)`` adds
``weight_decay * params`` to the gradient before Adam (coupled L2, not AdamW);
:func:`adam` reproduces that with optax.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping

import jax
import jax.numpy as jnp
import optax

from mixjax.dg import hparams as H
from mixjax.dg.networks import Functional, NetSpec, network

Array = jax.Array
State = dict[str, Any]


def adam(lr, weight_decay=0.0, b1=0.9, b2=0.999) -> optax.GradientTransformation:
    """torch Adam with coupled L2 weight decay; ``lr``/``weight_decay``/``b1`` may be traced scalars."""
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.scale_by_adam(b1=b1, b2=b2), optax.scale(-lr))


def only_part(part: str, tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """``tx`` on the leaves under ``part`` of the network's params (e.g. ``featurizer``);
    the rest gets no update."""
    labels = lambda params: jax.tree_util.tree_map_with_path(  # noqa: E731
        lambda path, _: "on" if jax.tree_util.keystr(path).startswith(f"['{part}']") else "off", params)
    return optax.multi_transform({"on": tx, "off": optax.set_to_zero()}, labels)


def apply_updates(tx: optax.GradientTransformation, grads, opt_state, params):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def reset_where(flag: Array, fresh, current):
    """``fresh`` where ``flag`` else ``current`` (leafwise); used for DomainBed's Adam resets."""
    return jax.tree.map(lambda f, c: jnp.where(flag, f, c), fresh, current)


def cross_entropy(logits: Array, y: Array) -> Array:
    """Mean softmax cross-entropy over the leading axes."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def env_losses(logits: Array, ys: Array) -> Array:
    """f32[K]: R_e = mean CE of env e; logits f32[K, b, C], ys int32[K, b]."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, ys).mean(axis=-1)


def tree_dot(a, b) -> Array:
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Algorithm:
    """Base class: ERM's network and optimiser; subclasses override ``loss`` or ``update``.

    ``static`` holds the shape-fixing hyperparameters (see ``hparams.STATIC``).
    """

    net: NetSpec
    num_envs: int
    static: tuple[tuple[str, int], ...] = ()

    name: ClassVar[str] = ""
    # keys of the loss's aux dict that are carried into the state (e.g. GroupDRO's q)
    carry: ClassVar[tuple[str, ...]] = ()
    # per-environment numbers the algorithm reads (``EnvDataset.env_metadata`` names, e.g. a
    # rotation angle for continuous environments); a dataset without them is refused before
    # anything is built (``mixjax.dg.test_time.check_requirements``)
    needs_env_metadata: ClassVar[tuple[str, ...]] = ()
    # reads the metadata of the job's training envs, all of the dataset's fields sorted by name,
    # as ``hp["train_env_meta"]`` f32[K, M] in the update (the rows follow ``xs``) and at test
    # time as ``meta["train_env_meta"]`` next to the evaluated env's ``meta["env_meta"]`` f32[M]
    # (D3G's domain relations); a dataset without metadata is refused (same check)
    needs_train_env_metadata: ClassVar[bool] = False
    # reads a convolutional feature map of the featuriser (refused on an MLP featuriser, same check)
    needs_feature_map: ClassVar[bool] = False

    # ---- hyperparameters
    @classmethod
    def hparam_space(cls, small: bool) -> dict[str, H.HParam]:
        """Common (lr, weight_decay, batch_size) + this algorithm's own, defaults and ranges."""
        return {**H.common_space(small), **cls.own_hparams(small)}

    @classmethod
    def own_hparams(cls, small: bool) -> dict[str, H.HParam]:
        return {}

    def static_hp(self, name: str) -> int:
        return dict(self.static)[name]

    # ---- network
    @property
    def model(self) -> Functional:
        return network(self.net)

    def features(self, params, x: Array) -> Array:
        return self.model.merge(params).featurizer(x)

    def classify(self, params, z: Array) -> Array:
        return self.model.merge(params).classifier(z)

    def logits(self, params, x: Array) -> Array:
        return self.model.merge(params)(x)

    def env_logits(self, params, xs: Array) -> Array:
        """One forward on the concatenation of the K env batches -> f32[K, b, C]."""
        k, b = xs.shape[:2]
        return self.logits(params, xs.reshape(k * b, *xs.shape[2:])).reshape(k, b, -1)

    def predict(self, state: State, x: Array) -> Array:
        return self.logits(state["params"], x)

    # ---- test time (mixjax.dg.test_time)
    def test_time_init(self, state: State, meta: Mapping[str, Array]) -> State:
        """The test-time state for one evaluation environment, from the trained ``state`` and
        the environment's metadata ``meta`` (``env`` i32[], ``is_test`` bool[], ``size``
        i32[] and the dataset's per-environment numbers, ``EnvDataset.env_metadata``).
        Built afresh for every environment, so one environment never sees another's data.
        A key ``cost`` f32[], if present, is reported per environment (``env{e}_tt_cost``)."""
        del state, meta
        return {}

    def predict_with_state(self, state: State, tt_state: State, x: Array,
                           valid: Array) -> tuple[Array, State]:
        """``(logits, tt_state')`` for one evaluation chunk ``x`` (``valid`` bool[n]: rows
        that are real examples, not padding). The evaluation calls it on an environment's
        examples in index order, chunk after chunk, threading ``tt_state``; memory,
        statistics re-estimated at test time or adaptation steps live there. The default is
        plain :meth:`predict`; an algorithm that overrides this method is evaluated through
        it (``mixjax.dg.test_time.uses_hook``), every other one by the batched plain
        ``predict`` as before."""
        del valid
        return self.predict(state, x), tt_state

    # ---- optimisation
    def tx(self, hp: Mapping[str, Array]) -> optax.GradientTransformation:
        return adam(hp["lr"], hp["weight_decay"])

    def init(self, key: Array, hp: Mapping[str, Array]) -> State:
        params = self.model.init(key)
        return {"params": params, "opt": self.tx(hp).init(params), "step": jnp.zeros((), jnp.int32)}

    def loss(self, params, hp, state: State, xs: Array, ys: Array, key: Array) -> tuple[Array, dict]:
        """Objective to minimise and metrics; the default is ERM's."""
        loss = cross_entropy(self.env_logits(params, xs), ys)
        return loss, {"loss": loss}

    def update(self, hp, state: State, xs: Array, ys: Array, key: Array) -> tuple[State, dict]:
        grads, aux = jax.grad(self.loss, has_aux=True)(state["params"], hp, state, xs, ys, key)
        params, opt = apply_updates(self.tx(hp), grads, state["opt"], state["params"])
        carried = {k: aux.pop(k) for k in self.carry}
        return {**state, **carried, "params": params, "opt": opt, "step": state["step"] + 1}, aux


class AnnealedPenalty(Algorithm):
    """Shared IRM / VREx / Fishr schedule: L = mean_e R_e + lambda_t * penalty.

    lambda_t = ``lambda`` if step >= ``anneal_iters`` else ``before`` (DomainBed: 1.0 for
    IRM/VREx, 0 for Fishr); Adam is re-initialised at step == anneal_iters (DomainBed
    re-creates the optimiser there because Adam "doesn't like the sharp jump in gradient
    magnitudes").
    """

    lambda_key: ClassVar[str] = ""
    anneal_key: ClassVar[str] = ""
    before: ClassVar[float] = 1.0

    def penalty_weight(self, hp, step: Array) -> Array:
        return jnp.where(step >= hp[self.anneal_key], hp[self.lambda_key], self.before)

    def update(self, hp, state, xs, ys, key):
        fresh = self.tx(hp).init(state["params"])
        state = {**state, "opt": reset_where(state["step"] == hp[self.anneal_key], fresh, state["opt"])}
        return super().update(hp, state, xs, ys, key)
