"""Offline training of the Data Mixing Agent's policy from mixing trajectories.

The paper (Yang et al., arXiv 2507.15640) trains its agent with offline RL; a summary
names CQL (unverified, see :mod:`mixjax.mixing.agent`). We use advantage-weighted
behaviour cloning, i.e. advantage-weighted regression (AWR; Peng, Kumar, Zhang, Levine,
arXiv 1910.00177) with a Monte-Carlo return and a fitted state-value baseline. Why: the
action is a point on the simplex and the data are a few hundred transitions from
uniformly random behaviour; AWR is supervised learning on the logged actions reweighted by
how much better than expected they turned out, so the policy stays on the data's support
(what CQL's conservative penalty enforces for a Q-function) without a critic over a
continuous action space and its bootstrapping. It is a simpler method than the paper's.

Transitions (proxy p, interval k = 0 .. T-1; validation losses L_0 (before training) ..
L_T on the eval grid of the swarm; the target weights pi over the evaluated domains)::

    s_k = features(w_{k-H} .. w_{k-1}, L_k, L_{k-1}, k > 0, k / T)   (agent_policy)
    a_k = w_k                                     the mixture trained on in interval k
    r_k = pi . L_k - pi . L_{k+1}                 drop of the target loss over interval k
    G_k = sum_{j >= k} r_j = pi . L_k - pi . L_T  (undiscounted return-to-go)

Objective::

    V(s)  = ridge regression of G on s, predicted out of fold (4 folds; scikit-learn)
    A_k   = G_k - V(s_k)
    u_k   = min(exp(A_k / (tau * std(A))), u_max)        (AWR's clipped weights)
    loss(theta) = sum_k u_k CE(a_k, pi_theta(s_k)) / sum_k u_k,
    CE(a, q)    = - sum_d a_d log q_d                    (cross-entropy to the logged mixture)

minimised by AdamW (optax), full batch. ``tau -> inf`` is plain behaviour cloning (the
mean mixture of the data); small ``tau`` imitates only the best transitions.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mixjax.mixing import agent_policy


@dataclasses.dataclass
class Transitions:
    x: np.ndarray        # f32[N, D] states
    a: np.ndarray        # f32[N, K] actions (mixtures)
    r: np.ndarray        # f64[N] rewards
    g: np.ndarray        # f64[N] returns-to-go
    proxy: np.ndarray    # int[N] the trajectory of each transition


def transitions(trajectories, losses, target, *, history: int, num_domains: int,
                alive=None) -> Transitions:
    """Transitions of the module docstring.

    trajectories f[P, T, K]; losses f[P, T + 1, K'] (L_0 .. L_T, the first K columns are
    the training domains, the state's feedback); target f[K'] (the reward's weights);
    alive bool[P] (dead proxies are dropped)."""
    traj = np.asarray(trajectories, np.float64)
    loss = np.asarray(losses, np.float64)
    p, t, k = traj.shape
    if k != num_domains or loss.shape[:2] != (p, t + 1) or loss.shape[2] < k:
        raise ValueError(f"trajectories {traj.shape} and losses {loss.shape} do not match "
                         f"({num_domains} domains)")
    alive = np.ones(p, bool) if alive is None else np.asarray(alive, bool)
    tl = loss @ np.asarray(target, np.float64)                 # [P, T + 1] target loss
    u = np.full((history, k), 1.0 / k)
    xs, acts, rs, gs, ids = [], [], [], [], []
    for i in np.flatnonzero(alive):
        padded = np.concatenate([u, traj[i]], axis=0)          # [H + T, K]
        hist = np.stack([padded[j:j + history] for j in range(t)])   # [T, H, K]
        prev = np.concatenate([loss[i, :1, :k], loss[i, :t - 1, :k]], axis=0)
        xs.append(np.asarray(agent_policy.features(
            hist, loss[i, :t, :k], prev, np.arange(t) > 0, np.arange(t) / t)))
        acts.append(traj[i])
        rs.append(tl[i, :t] - tl[i, 1:])
        gs.append(tl[i, :t] - tl[i, t])
        ids.append(np.full(t, i))
    if not xs:
        raise ValueError("no trajectory to learn from (every proxy diverged)")
    return Transitions(np.concatenate(xs).astype(np.float32),
                       np.concatenate(acts).astype(np.float32), np.concatenate(rs),
                       np.concatenate(gs), np.concatenate(ids))


def baseline(x, g, *, alpha: float = 1.0, folds: int = 4, groups=None) -> np.ndarray:
    """Out-of-fold ridge predictions of the return (the state-value baseline V)."""
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import GroupKFold, KFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    model = make_pipeline(StandardScaler(), Ridge(alpha=alpha))
    n_groups = len(np.unique(groups)) if groups is not None else len(g)
    folds = min(folds, n_groups)
    if folds < 2:
        return np.full(len(g), float(np.mean(g)))
    cv = GroupKFold(folds) if groups is not None else KFold(folds, shuffle=True,
                                                            random_state=0)
    return cross_val_predict(model, x, g, cv=cv, groups=groups)


def awr_weights(adv, *, temperature: float = 1.0, max_weight: float = 20.0) -> np.ndarray:
    """``min(exp(A / (tau std(A))), u_max)`` (1 everywhere when std(A) = 0)."""
    adv = np.asarray(adv, np.float64)
    scale = temperature * float(np.std(adv))
    if not scale > 0:
        return np.ones_like(adv)
    return np.minimum(np.exp(adv / scale), max_weight)


def weighted_ce(graphdef, params, mean, std, x, a, u):
    """``sum_k u_k CE(a_k, pi(s_k)) / sum_k u_k``."""
    logq = agent_policy.policy_log_weights(graphdef, params, mean, std, x)
    return jnp.sum(u * -jnp.sum(a * logq, axis=-1)) / jnp.sum(u)


def fit_policy(x, a, u, *, history: int, hidden: int = 32, steps: int = 500,
               lr: float = 3e-3, weight_decay: float = 1e-4, seed: int = 0):
    """``(params, mean, std, losses)``: the weighted cross-entropy minimised by AdamW."""
    x = jnp.asarray(x, jnp.float32)
    a = jnp.asarray(a, jnp.float32)
    u = jnp.asarray(u, jnp.float32)
    k = a.shape[1]
    mean = x.mean(axis=0)
    std = jnp.maximum(x.std(axis=0), 1e-6)
    graphdef, params = agent_policy.init_policy(k, history, hidden, seed)
    tx = optax.adamw(lr, weight_decay=weight_decay)
    opt = tx.init(params)

    def loss_fn(pr):
        return weighted_ce(graphdef, pr, mean, std, x, a, u)

    @jax.jit
    def run(params, opt):
        def body(carry, _):
            pr, op = carry
            val, g = jax.value_and_grad(loss_fn)(pr)
            upd, op = tx.update(g, op, pr)
            return (optax.apply_updates(pr, upd), op), val
        (params, opt), vals = jax.lax.scan(body, (params, opt), None, length=steps)
        return params, vals

    params, vals = run(params, opt)
    return params, np.asarray(mean), np.asarray(std), np.asarray(vals)


def train(tr: Transitions, *, history: int, hidden: int = 32, steps: int = 500,
          temperature: float = 1.0, max_weight: float = 20.0, seed: int = 0) -> dict:
    """The whole offline objective: baseline, advantages, weights, policy."""
    v = baseline(tr.x, tr.g, groups=tr.proxy)
    adv = tr.g - v
    u = awr_weights(adv, temperature=temperature, max_weight=max_weight)
    params, mean, std, vals = fit_policy(tr.x, tr.a, u, history=history, hidden=hidden,
                                         steps=steps, seed=seed)
    return {"params": params, "mean": mean, "std": std, "loss": vals, "weights": u,
            "advantage": adv, "value": v}
