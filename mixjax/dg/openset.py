"""Open-set domain generalisation: the ``dataset.open_set_unknown`` protocol of ``mixjax dg sweep``
and its metrics (closed-set accuracy on the known classes, AUROC of known vs unknown, OSCR).

Protocol (zzwdx/MEDIC, commit 70e4b09: ``ml_open.py`` lines 21-52, the ``--known-classes`` /
``--unknown-classes`` arguments with the PACS default and the commented OfficeHome and DigitsDG
splits, and the set-up after them - ``num_classes = len(known_classes)``, the ``val_k``,
``test_k`` and ``test_u`` loaders; ``dataset/dataset.py`` ``MultiDomainData.load_dataset``,
class index = rank in the sorted class list): the classes are split into *known*
and *unknown* ones (``--known-classes`` / ``--unknown-classes``; DigitsDG: known 0-5, unknown
6-9; PACS: unknown ``person``; OfficeHome: the last 25 of 65 classes unknown). The known
classes, sorted, are relabelled ``0 .. K-1`` by rank and the network has K outputs
(``MutiClassifier(num_classes=len(known_classes))``); the source domains and their validation
split hold known classes only (``val_k``); the target domain is scored on its known rows
(``test_k``, closed-set accuracy) and its unknown rows (``test_u``, label -1).

Here ``dataset.open_set_unknown`` lists the dataset's unknown class ids; every other class is
known. :func:`split` removes the unknown rows from every environment (so training envs, their
in/out splits and the network see known classes only; DomainBed's 80/20 split is then drawn
over the known rows) and keeps each env's unknown images aside; whenever an env is a job's
test env its records carry ``env{e}_closed_acc``, ``env{e}_auroc`` and ``env{e}_oscr`` from
:func:`open_set_metrics` on the env's known **in-split** rows (the rows of DomainBed's test
accuracy, so ``closed_acc`` equals ``env{e}_in_acc``) against **all** its unknown rows (they
play no part in selection; AUROC and OSCR normalise each side by its own count).

Score hook (:func:`known_score`): an algorithm with a ``known_score(state, x) -> f32[n]``
method (high = known; MEDIC's OVA score) is scored by it; every other by the maximum softmax
probability of ``predict`` (MEDIC's ``OSCR_C``: ``torch.max`` of the closed-set softmax). An
algorithm with its own score also gets ``env{e}_auroc_msp`` / ``env{e}_oscr_msp`` (its max
softmax probability), as MEDIC logs ``OSCR_C`` next to ``OSCR_B``.
Algorithms whose predictions depend on the evaluation batch (``eval_context``, ARM) or that
have a test-time procedure (``mixjax.dg.test_time``) are refused: their open-set scores would
depend on how known and unknown rows are batched.

OSCR follows zzwdx/MEDIC (commit d8356de) ``util/ROC.py`` lines 4-35: rows sorted by score,
descending (ties: knowns before unknowns, then index order - the code's ``argsort`` leaves
ties unspecified), cumulative counts, trapezoidal area. AUROC is scikit-learn's
``roc_auc_score`` with known = positive.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from sklearn.metrics import roc_auc_score

from mixjax.errors import ConfigError

KEY = "dataset.open_set_unknown"
METRICS = ("closed_acc", "auroc", "oscr")
# recorded too for an algorithm with its own score: AUROC and OSCR under max softmax probability
MSP_METRICS = ("auroc_msp", "oscr_msp")


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


# ----------------------------------------------------------------------------- the protocol


def record_key(env: int, metric: str) -> str:
    return f"env{env}_{metric}"


def check_classes(unknown, num_classes: int, dataset: str) -> tuple[int, ...]:
    """The sorted unknown class ids; ``ConfigError`` naming the key for an id outside
    ``[0, num_classes)``, a repeated id, or a split leaving fewer than 2 known classes or no
    unknown one (a dataset needs at least 3 classes)."""
    ids = [int(c) for c in unknown]
    if num_classes < 3:
        raise ConfigError(f"config key {KEY!r}: open-set DG needs at least 3 classes (2 known, 1 unknown); "
                          f"{dataset} has {num_classes}")
    bad = [c for c in ids if not 0 <= c < num_classes]
    if bad:
        raise ConfigError(f"config key {KEY!r}: class id {bad[0]} is outside [0, {num_classes}) of {dataset}")
    if len(set(ids)) != len(ids):
        raise ConfigError(f"config key {KEY!r}: class ids repeat in {ids}")
    if num_classes - len(ids) < 2:
        raise ConfigError(f"config key {KEY!r}: {len(ids)} unknown classes of {num_classes} leave "
                          f"{num_classes - len(ids)} known; at least 2 are needed")
    return tuple(sorted(ids))


@dataclasses.dataclass(frozen=True)
class OpenSetSplit:
    """``known``: the dataset restricted to the known classes, relabelled ``0 .. K-1`` by rank;
    ``unknown_x[i]``: env i's images of the unknown classes; ``known_classes[k]``: the original
    id of known label k."""

    known: object  # EnvDataset
    unknown_x: tuple[np.ndarray, ...]
    known_classes: tuple[int, ...]
    unknown_classes: tuple[int, ...]


def split(data, unknown) -> OpenSetSplit:
    """The open-set view of ``data`` (an ``EnvDataset``) with the classes ``unknown`` held out;
    ``ConfigError`` naming the key and the env when an env has no known or no unknown rows."""
    from mixjax.dg.env_dataset import EnvDataset

    unk = check_classes(unknown, data.num_classes, data.name)
    known = tuple(c for c in range(data.num_classes) if c not in unk)
    relabel = np.full(data.num_classes, -1, np.int32)
    relabel[list(known)] = np.arange(len(known), dtype=np.int32)
    envs, unknown_x, files = [], [], []
    for e, (name, (x, y)) in enumerate(zip(data.env_names, data.envs)):
        is_known = relabel[y] >= 0
        for what, rows in (("known", is_known), ("unknown", ~is_known)):
            if not rows.any():
                raise ConfigError(f"config key {KEY!r}: env {name!r} of {data.name} has no rows of the {what} "
                                  f"classes (unknown: {list(unk)})")
        envs.append((x[is_known], relabel[y[is_known]]))
        unknown_x.append(x[~is_known])
        if data.files is not None:
            files.append(tuple(f for f, k in zip(data.files[e], is_known) if k))
    known_data = EnvDataset(data.name, data.env_names, tuple(envs), len(known),
                            files=tuple(files) if data.files is not None else None, augment=data.augment,
                            env_metadata=data.env_metadata)
    return OpenSetSplit(known_data, tuple(unknown_x), known, unk)


def check_algorithms(algorithms) -> None:
    """``ConfigError`` naming ``algorithms`` for one whose predictions depend on the batch or a
    test-time step (its open-set scores would depend on how rows are batched)."""
    from mixjax.dg import algorithms as A
    from mixjax.dg import test_time

    for a in algorithms:
        cls = A.get(a)
        if getattr(cls, "eval_context", None) or test_time.uses_hook(cls):
            raise ConfigError(f"config key 'algorithms': {a!r} predicts through the evaluation batch or a "
                              f"test-time step; {KEY} scores plain per-row predictions - leave it out")


def has_own_score(alg) -> bool:
    """Whether ``alg`` (an algorithm or its class) defines its own ``known_score``."""
    return callable(getattr(alg, "known_score", None))


def known_score(alg, state, x):
    """``(pred i32[n], score f32[n], msp f32[n])``: the closed-set prediction, the open-set
    score (high = known) - ``alg.known_score`` where the algorithm defines one, else the
    maximum softmax probability of ``predict`` (MEDIC's ``OSCR_C``) - and that maximum softmax
    probability itself (for an algorithm with its own score, both are recorded, as MEDIC's
    code logs ``OSCR_C`` next to ``OSCR_B``)."""
    import jax
    import jax.numpy as jnp

    logits = alg.predict(state, x)
    msp = jax.nn.softmax(logits, -1).max(-1)
    score = alg.known_score(state, x) if has_own_score(alg) else msp
    return jnp.argmax(logits, -1), score, msp
