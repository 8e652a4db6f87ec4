"""ERM++'s training recipe as far as it is a per-step rule (Teterwak et al., "ERM++: An
Improved Baseline for Domain Generalization", arXiv 2304.01973), in DomainBed's form
(facebookresearch/DomainBed ``domainbed/algorithms.py`` ``ERMPlusPlus``, ``lib/misc.py``
``ErmPlusPlusMovingAvg``, ``hparams_registry.py``; commit b93c22a).

* Warm start by linear probing: while the update count t (0-based) is <= ``linear_steps``
  only the linear head trains, with its own Adam(linear_lr, weight_decay); afterwards the
  whole network trains with a separate Adam(lr, weight_decay) that starts fresh.
* Simple moving average (SMA) of the weights, used for prediction: after update t,
      w_sma = w_t                                      if t + 1 < sma_start_iter
      w_sma = (c w_sma + w_t) / (c + 1), c <- c + 1    otherwise (c counts averaged updates),
  i.e. the uniform average of the weights from update ``sma_start_iter - 2`` on.
Loss: CE on the concatenated env batches (ERM's). Hyperparameters: linear_lr 5e-5
(10^U(-5,-3.5)), linear_steps 500 (DomainBed's global hparam, not searched), sma_start_iter
600 (hard-coded in ``ErmPlusPlusMovingAvg``).

Not part of this step (the rest of the ERM++ recipe): training on the full data (in- and
out-splits; a dataset/split setting), longer training (``steps``), stronger initialisation
(ImageNet/AugMix weights; mixjax's featurisers start from scratch), the LARS option
(DomainBed's ``lars`` hparam is fixed to False) and the ReduceLROnPlateau schedule of
``ERMPlusPlus.set_lr``, which DomainBed's ``train.py`` never calls.
"""

import jax
import jax.numpy as jnp
import optax

from mixjax.dg import hparams as H
from mixjax.dg.algorithms import register
from mixjax.dg.algorithms.base import Algorithm, adam, apply_updates


def head_labels(params):
    """'head' for the linear classifier's leaves, 'body' for the featuriser's."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "head" if "classifier" in jax.tree_util.keystr(path) else "body", params)


def sma_update(sma, params, count, start, t):
    """(w_sma, c) after update t (0-based) of ``ErmPlusPlusMovingAvg.update_sma``."""
    averaging = t + 1 >= start
    new_count = jnp.where(averaging, count + 1, count)
    mixed = jax.tree.map(lambda s, w: (s * new_count + w) / (1.0 + new_count), sma, params)
    return jax.tree.map(lambda m, w: jnp.where(averaging, m, w), mixed, params), new_count


@register
class ERMPlusPlus(Algorithm):
    name = "ermplusplus"

    @classmethod
    def own_hparams(cls, small):
        return {
            "linear_lr": H.HParam(5e-5, lambda r: 10 ** r.uniform(-5, -3.5)),
            "linear_steps": H.HParam(500, lambda r: 500),
            "sma_start_iter": H.HParam(600, lambda r: 600),
        }

    def linear_tx(self, hp, params):
        body = optax.set_to_zero()
        return optax.multi_transform({"head": adam(hp["linear_lr"], hp["weight_decay"]), "body": body},
                                     head_labels(params))

    def init(self, key, hp):
        state = super().init(key, hp)
        params = state["params"]
        return {**state, "lin_opt": self.linear_tx(hp, params).init(params), "sma": params,
                "sma_count": jnp.zeros((), jnp.float32)}

    def update(self, hp, state, xs, ys, key):
        params, t = state["params"], state["step"]
        grads, aux = jax.grad(self.loss, has_aux=True)(params, hp, state, xs, ys, key)
        full, opt = apply_updates(self.tx(hp), grads, state["opt"], params)
        probe, lin_opt = apply_updates(self.linear_tx(hp, params), grads, state["lin_opt"], params)
        linear = t <= hp["linear_steps"]
        pick = lambda a, b: jax.tree.map(lambda u, v: jnp.where(linear, u, v), a, b)  # noqa: E731
        params = pick(probe, full)
        opt, lin_opt = pick(state["opt"], opt), pick(lin_opt, state["lin_opt"])
        sma, count = sma_update(state["sma"], params, state["sma_count"], hp["sma_start_iter"], t)
        new = {**state, "params": params, "opt": opt, "lin_opt": lin_opt, "sma": sma, "sma_count": count,
               "step": t + 1}
        return new, aux

    def predict(self, state, x):
        return self.logits(state["sma"], x)
