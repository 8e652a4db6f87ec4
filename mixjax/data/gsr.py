"""GSR: group-robust sample weights by influence functions, with last-layer retraining.

Qiao, Wu, Wang, Koh & Low, "Group-robust Sample Reweighting for Subpopulation Shifts via
Influence Functions", ICLR 2025, arXiv 2503.07315; reference code ``qiaoruiyt/GSR`` at
619ebbff5f286e414eaadc1549747e58f6f660e8: ``gsr.py`` ``GSRTrainer.solve`` (the outer loop,
lines ~420-520), ``GSRTrainer.get_weight_update`` (group-wise influences, softmax over group
losses, lines ~300-385), ``WeightedObjective``; ``reweight_utils.py``
``FastExactInfluenceModule`` (exact damped Hessian, per-sample gradients by ``vmap``).

Stage 1 (not here) learns a representation on group-unlabelled data; stage 2, this module,
works on its frozen features X f[n, d] (a model's last hidden layer) with labels y and a small
*target* set (X_t, y_t) whose group labels g_t are known. Sample weights s >= 0 (start: 1) of the
n training examples are learned by the outer loop, ``iterations`` times:

1. **last-layer retraining**: theta(s) = argmin_theta J(theta; s),
   ``J = (1/n) sum_i s_i l_i(theta) + lam ||W||^2`` for a softmax classifier theta = (W, b) (l_i:
   cross-entropy; minimised by scipy's L-BFGS from zero, to ``tol``);
2. **group losses** on the validation set, L_g (the reference's ``dro_metric = "loss"``), and
   their softmax q = softmax(L_g / temperature) (its ``soft_update``);
3. **influence** of each training example on each target group's mean loss, by implicit
   differentiation of the optimum: ``dtheta/ds_i = -H^{-1} grad l_i / n`` with ``H = hess J +
   damp I``, so ``dL^t_g / ds_i = -grad L^t_g^T H^{-1} grad l_i / n``; the score is
   ``score_i = sum_g q_g grad L^t_g^T H^{-1} grad l_i / n`` (the descent direction of the
   q-weighted target loss);
4. ``s <- max(0, s + step score / max_i |score_i|)`` (the reference's ``pgd`` clamp and its
   ``outer_max_magnitude`` rescaling with ``outer_lr = 1``: the largest change of a weight per
   iteration is ``step``; raw scores are O(1/n) and a fixed learning rate would depend on n).

The weights kept are those of the iteration whose retrained last layer has the best worst-group
accuracy on the validation set (the reference's model selection). Choices: the reference's
per-sample gradient also carries the regulariser's gradient (``unweighted_train_loss`` adds
``wd ||theta||^2``), which is not part of dtheta/ds_i; here it is left out (the two agree at the
reference's default ``weight_decay = 0``). Everything is closed-form numpy (softmax regression:
``grad l_i = (p_i - e_{y_i}) x~_i^T``, ``hess = (1/n) sum_i s_i (diag p_i - p_i p_i^T) (x) x~_i
x~_i^T``; x~ = [x, 1]), exact for the small last layers this is meant for (``(d + 1) K``
parameters; the Hessian is solved by least squares, never inverted: the unpenalised softmax
bias makes it singular along b + c 1, a direction no gradient has).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from mixjax.data.sources import DataError


def _aug(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return np.concatenate([x, np.ones((len(x), 1))], axis=1)


def _probs(theta: np.ndarray, xa: np.ndarray, k: int) -> np.ndarray:
    z = xa @ theta.reshape(xa.shape[1], k)
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def losses(theta: np.ndarray, x: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    """Per-example cross-entropy f64[n] of the softmax classifier theta f[(d + 1) K]."""
    p = _probs(theta, _aug(x), k)
    return -np.log(np.maximum(p[np.arange(len(y)), y], 1e-300))


def example_grads(theta, x, y, k) -> np.ndarray:
    """f64[n, (d + 1) K]: grad l_i (row-major over (feature + bias, class))."""
    xa = _aug(x)
    r = _probs(theta, xa, k)
    r[np.arange(len(y)), y] -= 1.0
    return (xa[:, :, None] * r[:, None, :]).reshape(len(y), -1)


def _penalty_mask(d: int, k: int) -> np.ndarray:
    m = np.ones((d + 1, k))
    m[-1] = 0.0                                     # the bias is not penalised
    return m.reshape(-1)


def objective(theta, x, y, s, k, lam) -> tuple[float, np.ndarray]:
    """``(J, grad J)`` of the module docstring."""
    n = len(y)
    pen = _penalty_mask(x.shape[1], k)
    j = float(np.dot(s, losses(theta, x, y, k)) / n + lam * np.sum(pen * theta ** 2))
    g = s @ example_grads(theta, x, y, k) / n + 2 * lam * pen * theta
    return j, g


def hessian(theta, x, y, s, k, lam) -> np.ndarray:
    """f64[P, P]: hess J at theta (P = (d + 1) K)."""
    xa = _aug(x)
    p = _probs(theta, xa, k)
    n = len(y)
    a = np.einsum("i,ik,kl->ikl", s, p, np.eye(k)) - np.einsum("i,ik,il->ikl", s, p, p)
    h = np.einsum("ia,ikl,ib->akbl", xa, a, xa).reshape(xa.shape[1] * k, -1) / n
    return h + np.diag(2 * lam * _penalty_mask(x.shape[1], k))


def fit(x, y, s, k, lam, tol: float = 1e-10) -> np.ndarray:
    """theta(s): the weighted last layer, by scipy's L-BFGS from zero."""
    from scipy.optimize import minimize
    x, s = np.asarray(x, np.float64), np.asarray(s, np.float64)
    res = minimize(objective, np.zeros((x.shape[1] + 1) * k), args=(x, y, s, k, lam), jac=True,
                   method="L-BFGS-B", options={"gtol": tol, "ftol": tol, "maxiter": 2000})
    return res.x


def influence_scores(theta, x, y, s, k, lam, x_t, y_t, g_t, q, damp: float = 0.0
                     ) -> np.ndarray:
    """f64[n]: ``sum_g q_g grad L^t_g^T H^{-1} grad l_i / n`` (module docstring, step 3)."""
    h = hessian(theta, x, y, s, k, lam) + damp * np.eye(theta.size)
    gt = example_grads(theta, x_t, y_t, k)
    groups = np.unique(g_t)
    v = np.zeros(theta.size)
    for g, qg in zip(groups, q):
        v += qg * gt[g_t == g].mean(axis=0)
    # the softmax's unpenalised bias is defined up to a constant over classes: H is singular
    # along b + c 1, where every gradient has no component; the least-norm solution is H^{-1}
    # on the gradients' span
    return example_grads(theta, x, y, k) @ np.linalg.lstsq(h, v, rcond=None)[0] / len(y)


def group_metrics(theta, x, y, g, k) -> tuple[np.ndarray, np.ndarray]:
    """(mean loss, accuracy) per group, groups in np.unique(g) order."""
    ls = losses(theta, x, y, k)
    acc = _probs(theta, _aug(x), k).argmax(1) == y
    groups = np.unique(g)
    return (np.array([ls[g == j].mean() for j in groups]),
            np.array([acc[g == j].mean() for j in groups]))


@dataclasses.dataclass
class GSRResult:
    weights: np.ndarray            # the sample weights of the selected iteration
    theta: np.ndarray              # its retrained last layer
    iteration: int                 # 0: uniform weights (ERM) were best
    val_worst_acc: list[float]     # per iteration, worst-group validation accuracy


def gsr(x, y, x_t, y_t, g_t, x_v, y_v, g_v, *, num_classes: int | None = None,
        iterations: int = 10, step: float = 1.0, lam: float = 1e-3, temperature: float = 1.0,
        damp: float = 0.0) -> GSRResult:
    """The outer loop of the module docstring over training features ``x``/labels ``y``, the
    group-labelled target set (``x_t``, ``y_t``, ``g_t``) and validation set (``x_v``, ...)."""
    y, y_t, y_v = (np.asarray(a, np.int64) for a in (y, y_t, y_v))
    if len(x_t) == 0 or len(x_v) == 0:
        raise DataError("GSR needs a non-empty group-labelled target set and validation set")
    if not (iterations >= 1 and step > 0 and lam >= 0 and temperature > 0 and damp >= 0):
        raise DataError(f"GSR: want iterations >= 1, step > 0, lam >= 0, temperature > 0, "
                        f"damp >= 0; got {iterations}, {step}, {lam}, {temperature}, {damp}")
    k = int(num_classes or max(y.max(), y_t.max(), y_v.max()) + 1)
    s = np.ones(len(y))
    best = None
    worst = []
    for it in range(iterations):
        theta = fit(x, y, s, k, lam)
        val_loss, val_acc = group_metrics(theta, x_v, y_v, g_v, k)
        worst.append(float(val_acc.min()))
        if best is None or worst[-1] > best[0]:
            best = (worst[-1], it, s.copy(), theta)
        if it == iterations - 1:
            break
        # the groups of the target set, weighted by the validation loss of the same groups
        groups_t = np.unique(g_t)
        loss_by_group = dict(zip(np.unique(g_v).tolist(), val_loss))
        lg = np.array([loss_by_group.get(int(g), val_loss.max()) for g in groups_t])
        q = np.exp((lg - lg.max()) / temperature)
        q /= q.sum()
        score = influence_scores(theta, x, y, s, k, lam, x_t, y_t, np.asarray(g_t), q, damp)
        top = np.abs(score).max()
        if top == 0:
            break
        s = np.maximum(0.0, s + step * score / top)
    return GSRResult(best[2], best[3], best[1], worst)


def balanced_groups(g: Sequence[int]) -> np.ndarray:
    """Inverse group-frequency weights with mean 1 (the oracle baseline that knows the training
    groups, which GSR does not use)."""
    g = np.asarray(g)
    _, inv, counts = np.unique(g, return_inverse=True, return_counts=True)
    w = 1.0 / counts[inv]
    return w * len(g) / w.sum()
