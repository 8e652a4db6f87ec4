"""Per-domain evaluation on the fixed eval sets.

For domain d with validation tokens T_d (pad excluded)::

    loss_d = (1 / |T_d|) sum_{t in T_d} -log p(y_t | y_<t)      ppl_d = exp(loss_d)

and the summaries

    loss_avg    = (1/K) sum_d loss_d               (uniform over domains)
    loss_target = sum_d pi_d loss_d                (pi = eval.target_mixture, normalised)
    ppl_avg     = (1/K) sum_d ppl_d                ppl_target = sum_d pi_d ppl_d
    ppl_worst   = max_d ppl_d

Eval batches have a fixed shape (the last one is filled with all-pad rows,
which count for nothing) so the eval function compiles once.
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np


def prepare_eval_sets(eval_sets: Mapping[str, np.ndarray], domains: tuple[str, ...],
                      num_seqs: int, batch_size: int, pad_id: int) -> dict[str, list[np.ndarray]]:
    """Per domain: the first ``num_seqs`` sequences in fixed-shape batches."""
    out = {}
    for d in domains:
        if d not in eval_sets:
            raise ValueError(f"no eval set for domain {d!r}")
        arr = np.asarray(eval_sets[d], np.int32)[:num_seqs]
        if len(arr) == 0:
            raise ValueError(f"eval set of domain {d!r} is empty")
        bs = min(batch_size, len(arr))
        n = -(-len(arr) // bs) * bs
        padded = np.full((n, arr.shape[1]), pad_id, np.int32)
        padded[:len(arr)] = arr
        out[d] = [padded[i:i + bs] for i in range(0, n, bs)]
    return out


def target_vector(domains: tuple[str, ...], target: Mapping[str, float] | None) -> np.ndarray:
    if target is None:
        return np.full(len(domains), 1.0 / len(domains))
    unknown = sorted(set(target) - set(domains))
    if unknown:
        raise ValueError(f"eval.target_mixture: unknown domain(s) {unknown}; known: {list(domains)}")
    v = np.array([float(target.get(d, 0.0)) for d in domains])
    return v / v.sum()


def evaluate(eval_fn: Callable, params, batches: Mapping[str, list[np.ndarray]],
             domains: tuple[str, ...], target: Mapping[str, float] | None = None) -> dict:
    """Returns ``{"loss/<d>", "ppl/<d>", "tokens/<d>", "loss_avg", ...}`` (floats)."""
    sums = {}
    for d in domains:
        outs = [eval_fn(params, b) for b in batches[d]]        # dispatch all, then fetch
        loss = sum(float(np.sum(o[0])) for o in outs)
        count = sum(float(np.sum(o[1])) for o in outs)
        if count == 0:
            raise ValueError(f"eval set of domain {d!r} has no loss tokens")
        sums[d] = (loss / count, count)
    loss = np.array([sums[d][0] for d in domains])
    ppl = np.exp(loss)
    pi = target_vector(domains, target)
    out: dict[str, float] = {}
    for i, d in enumerate(domains):
        out[f"loss/{d}"] = float(loss[i])
        out[f"ppl/{d}"] = float(ppl[i])
        out[f"tokens/{d}"] = float(sums[d][1])
    out.update(loss_avg=float(loss.mean()), loss_target=float(pi @ loss),
               ppl_avg=float(ppl.mean()), ppl_target=float(pi @ ppl), ppl_worst=float(ppl.max()))
    return out


def domain_losses(result: Mapping[str, float], domains: tuple[str, ...]) -> np.ndarray:
    return np.array([result[f"loss/{d}"] for d in domains], np.float32)


def evaluate_with_heldout(eval_fn: Callable, params, batches: Mapping[str, list[np.ndarray]],
                          domains: tuple[str, ...], heldout: tuple[str, ...] = (),
                          target: Mapping[str, float] | None = None) -> dict:
    """:func:`evaluate` over the training ``domains`` (the averages and ``ppl_worst`` are
    theirs), plus ``loss/<d>``, ``ppl/<d>``, ``tokens/<d>`` for each held-out domain d
    (evaluated, never trained on)."""
    out = evaluate(eval_fn, params, batches, domains, target)
    if heldout:
        extra = evaluate(eval_fn, params, batches, tuple(heldout))
        for d in heldout:
            for key in ("loss", "ppl", "tokens"):
                out[f"{key}/{d}"] = extra[f"{key}/{d}"]
    return out
