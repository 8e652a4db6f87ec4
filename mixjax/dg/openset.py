"""Open-set metrics from scores: closed-set accuracy on the known classes, AUROC of known vs
unknown and OSCR (open-set classification rate, the area under the curve of correctly
classified-and-accepted knowns against accepted unknowns as the threshold falls).

OSCR follows zzwdx/MEDIC (commit d8356de) ``util/ROC.py`` lines 4-35: rows sorted by score,
descending (ties: knowns before unknowns, then index order - the code's ``argsort`` leaves
ties unspecified), cumulative counts, trapezoidal area. AUROC is scikit-learn's
``roc_auc_score`` with known = positive.

This module only scores; the project has no open-set protocol yet (training envs restricted to
known classes, unknown classes of the test env held out): see docs/dg.md.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from mixjax.errors import ConfigError


def oscr(pred_known, y_known, score_known, score_unknown) -> float:
    correct = (np.asarray(pred_known) == np.asarray(y_known)).astype(np.float64)
    sk, su = np.asarray(score_known, np.float64), np.asarray(score_unknown, np.float64)
    score = np.concatenate([sk, su])
    order = np.argsort(-score, kind="stable")
    ck = np.concatenate([[0.0], np.cumsum(np.concatenate([correct, np.zeros(len(su))])[order])]) / len(sk)
    cu = np.concatenate([[0.0], np.cumsum(np.concatenate([np.zeros(len(sk)), np.ones(len(su))])[order])]) / len(su)
    return float((np.abs(np.diff(cu)) * (ck[1:] + ck[:-1]) / 2).sum())


def open_set_metrics(pred_known, y_known, score_known, score_unknown) -> dict[str, float]:
    """``{"closed_acc", "auroc", "oscr"}`` from the known rows' predicted and true classes, and
    the open-set scores (high = known) of the known and the unknown rows."""
    n_k, n_u = len(score_known), len(score_unknown)
    if n_k == 0 or n_u == 0 or len(pred_known) != n_k or len(y_known) != n_k:
        raise ConfigError(f"open-set metrics need known and unknown rows with matching lengths; got "
                          f"{len(pred_known)} predictions, {len(y_known)} labels, {n_k} known and {n_u} unknown scores")
    labels = np.concatenate([np.ones(n_k), np.zeros(n_u)])
    return {"closed_acc": float(np.mean(np.asarray(pred_known) == np.asarray(y_known))),
            "auroc": float(roc_auc_score(labels, np.concatenate([score_known, score_unknown]))),
            "oscr": oscr(pred_known, y_known, score_known, score_unknown)}
