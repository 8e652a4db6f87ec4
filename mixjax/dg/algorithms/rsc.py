"""RSC, Representation Self-Challenging (Huang et al., ECCV 2020, arXiv 2007.02454),
DomainBed's form (facebookresearch/DomainBed ``domainbed/algorithms.py`` ``RSC``, commit b93c22a).

On the concatenated batch, features f = phi(x) f32[N, D], logits p = w(f), one-hot o:

    g = d(sum p * o)/df                                   (Eq. 1)
    mask_f[i, d] = g[i, d] < percentile_{100(1 - f_drop)}(g[i, :])   (Eq. 2, per example)
    s = softmax(p), s' = softmax(w(f * mask_f))
    c_i = <s_i, o_i> - <s'_i, o_i>
    mask_b[i] = c_i < percentile_{100(1 - b_drop)}(c)      (Section 3.3, over the batch)
    L = CE(w(f * (mask_f OR mask_b)), y)                  (Eq. 5)

Percentiles are numpy's linear interpolation (``jnp.percentile`` is the same); the masks are
constants (no gradient), as in torch.
Hyperparameters: rsc_f_drop_factor 1/3 (U(0,0.5)), rsc_b_drop_factor 1/3 (U(0,0.5)).
"""

import jax
import jax.numpy as jnp

from mixjax.dg import hparams as H
from mixjax.dg.algorithms import register
from mixjax.dg.algorithms.base import Algorithm, cross_entropy


def rsc_mask(classify, f, y, num_classes, f_drop, b_drop):
    """f32[N, D] 0/1 mask of the kept feature entries."""
    f = jax.lax.stop_gradient(f)
    o = jax.nn.one_hot(y, num_classes, dtype=f.dtype)
    g = jax.grad(lambda ff: (classify(ff) * o).sum())(f)
    pct_f = jnp.percentile(g, (1.0 - f_drop) * 100.0, axis=1, keepdims=True)
    mask_f = g < pct_f
    s = jax.nn.softmax(classify(f), -1)
    s_muted = jax.nn.softmax(classify(f * mask_f), -1)
    changes = (s * o).sum(1) - (s_muted * o).sum(1)
    mask_b = changes < jnp.percentile(changes, (1.0 - b_drop) * 100.0)
    return jax.lax.stop_gradient((mask_f | mask_b[:, None]).astype(f.dtype))


@register
class RSC(Algorithm):
    name = "rsc"

    @classmethod
    def own_hparams(cls, small):
        return {
            "rsc_f_drop_factor": H.HParam(1 / 3, lambda r: r.uniform(0, 0.5)),
            "rsc_b_drop_factor": H.HParam(1 / 3, lambda r: r.uniform(0, 0.5)),
        }

    def loss(self, params, hp, state, xs, ys, key):
        k, b = xs.shape[:2]
        y = ys.reshape(-1)
        f = self.features(params, xs.reshape(k * b, *xs.shape[2:]))
        mask = rsc_mask(lambda z: self.classify(params, z), f, y, self.net.num_classes,
                        hp["rsc_f_drop_factor"], hp["rsc_b_drop_factor"])
        loss = cross_entropy(self.classify(params, f * mask), y)
        return loss, {"loss": loss}
