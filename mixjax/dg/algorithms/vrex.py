"""V-REx (Krueger et al., arXiv 2003.00688), DomainBed's form.

    L = mean_e R_e + lambda_t * (1/E) sum_e (R_e - mean_e R_e)^2,
    lambda_t = vrex_lambda if step >= anneal else 1.0;

Adam re-initialised at step == vrex_penalty_anneal_iters.
Defaults: vrex_lambda 1e1 (10^U(-1,5)), vrex_penalty_anneal_iters 500 (int 10^U(0,4)).
"""

from mixjax.dg import hparams as H
from mixjax.dg.algorithms import register
from mixjax.dg.algorithms.base import AnnealedPenalty, env_losses


def vrex_penalty(losses):
    """Variance of per-env risks f32[E] (biased, 1/E)."""
    return ((losses - losses.mean()) ** 2).mean()


@register
class VREx(AnnealedPenalty):
    name = "vrex"
    lambda_key = "vrex_lambda"
    anneal_key = "vrex_penalty_anneal_iters"
    before = 1.0

    @classmethod
    def own_hparams(cls, small):
        return {
            "vrex_lambda": H.HParam(1e1, lambda r: 10 ** r.uniform(-1, 5)),
            "vrex_penalty_anneal_iters": H.HParam(500, lambda r: int(10 ** r.uniform(0, 4))),
        }

    def loss(self, params, hp, state, xs, ys, key):
        losses = env_losses(self.env_logits(params, xs), ys)
        penalty = vrex_penalty(losses)
        loss = losses.mean() + self.penalty_weight(hp, state["step"]) * penalty
        return loss, {"loss": loss, "nll": losses.mean(), "penalty": penalty}
