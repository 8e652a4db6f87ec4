"""The gradient engine: per-domain gradient statistics as pure functions.

Notation: K domains, ``L_d(theta)`` = mean token loss of domain ``d``'s
sequences in the batch (0 when ``d`` is absent), ``g_d = grad L_d``, ``g_t`` =
gradient of the mean token loss of a *target* batch (a held-out domain's split,
a validation set, ...). The engine returns what a mixer's ``requires`` names:

* ``grad_dot``  f32[K]    ``<g_d, g_t>``
* ``gram``      f32[K,K]  ``G_ij = <g_i, g_j>``
* ``grad_norm`` f32[K]    ``||g_d||``
* ``target_grad_norm`` f32[]  ``||g_t||`` (for methods that clip g_t)
* ``target_loss`` f32[]  the target batch's mean token loss (the value whose gradient
  is ``g_t``; from :func:`make_grad_stats`, which draws ``g_t`` itself)
* ``loss``, ``count`` f32[K] per-domain mean loss and token count (always)

and a ``combine(c)`` function giving the training gradient ``sum_d c_d g_d``
over *all* parameters (e.g. DoGE's ``sum_d alpha_d clip(g_d)``).

Per-sequence gradients (``example_gram``, ``combine_examples``) are computed by
:mod:`mixjax.mixing.example_grads`; the pytree algebra both use is
:mod:`mixjax.mixing.grad_algebra`.

With several target domains (``grads.target`` a list: the target batch is
``[T, N, S+1]``, one row block per target domain ``t``, each with its own
gradient ``g_t``), ``grad_dot`` is f32[K, T] ``<g_d, g_t>`` and
``target_grad_norm`` and ``target_loss`` f32[T] (DoGE's out-of-domain rule clips each
``g_t`` separately and sums).

Everything works from a *token loss function* and never sees a model::

    token_loss_fn(params, batch) -> (token_loss f32[B,S], token_mask f32[B,S])

Strategies (``GradConfig.strategy``):

``vmap``
    ``jax.vmap(jax.grad)`` over domains: materialises the K per-domain
    gradients (memory K x params) in one batched backward pass.
    ``layout="stratified"`` (default, fast) regroups the batch as
    ``[K, B/K, ...]`` by a stable sort on ``domain_id``; it *requires* exactly
    ``B/K`` sequences per domain (the sampler's ``stratified`` mode; check it
    on the host with :func:`check_stratified`). ``layout="rows"`` accepts any
    batch composition: one forward, then ``vmap`` of the VJP over the K
    one-hot domain-indicator rows (K backward passes; jax-stack.md B6).
``jvp``
    Forward mode on the per-domain loss vector ``L(theta) in R^K``:
    ``grad_dot = J_L g_t`` by one ``jax.jvp`` (primal and tangent together,
    nothing stored for a backward pass; run over ``jvp_microbatches`` micro-batches
    so its activations are a fraction of the batch's), then ``combine(c) = J_L^T c``
    by one VJP (a plain forward + backward). Any batch composition; extra memory
    O(1) x params (g_t and the tangents), whatever K. ``jvp_mode="linearize"``
    instead linearises once and transposes the same linearisation (one forward
    pass fewer, but the residuals stay alive through the tangent pass: more
    activation memory). Supplies inner products with one direction only:
    asking it for ``gram`` or ``grad_norm`` is a config error.
``chunked``
    ``jax.lax.map`` over groups of ``chunk_size`` domains of the stratified
    layout: memory ``chunk_size`` x params. ``grad_dot``/``grad_norm`` cost one
    backward; ``gram`` recomputes group gradients pairwise
    (``K/chunk_size + 1`` backward passes); ``combine`` is one more weighted
    backward.

``param_filter`` (a regex on the parameter path as printed by
``jax.tree_util.keystr``) restricts the *statistics* (dots, Gram, norms) to
the matching leaves, like DoGE's ``cc_selection`` (e.g. last layers only);
``combine`` always covers all parameters (for ``vmap``/``chunked`` with a
filter it costs one extra weighted backward, since only the filtered
per-domain gradients are materialised).

All strategies agree with a direct per-domain ``jax.grad`` to fp32 tolerance
(``tests/test_grads.py``). Inner products use ``Precision.HIGHEST`` so TPUs do
not round them to bf16.

This file is ~500 lines for one job, the per-domain engine and its three strategies
(vmap, chunked, jvp), which share their masks, layouts and statistics; the algebra
they use is in ``grad_algebra.py`` and the per-example statistics in ``example_grads.py``.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mixjax import forward_mode
from mixjax.mixing import domain_stats, statistics
from mixjax.mixing.example_grads import EXAMPLE_STATS, example_grads
from mixjax.mixing.grad_algebra import (Array, PyTree, TokenLossFn, merge_leaves, param_mask,
                                        per_example, split_leaves, stack_dots, stack_gram, tree_dot,
                                        weighted_sum)

STRATEGIES = ("vmap", "jvp", "chunked")
LAYOUTS = ("stratified", "rows")
# What the engine supplies: the statistics whose registry entry needs the gradient engine.
GRAD_STATS = tuple(sorted(statistics.needing("gradient_engine")))


@dataclasses.dataclass(frozen=True, kw_only=True)
class GradConfig:
    """How the engine computes per-domain gradient statistics (``grads.*`` in the config)."""

    strategy: str = "vmap"
    layout: str = "stratified"        # vmap only: "stratified" or "rows"
    chunk_size: int = 1               # chunked only: domains per group (must divide K)
    param_filter: str | None = None   # regex on keystr(path); None = all parameters
    jvp_mode: str = "separate"        # jvp only: "separate" (jvp, then a VJP) or "linearize"
    # jvp "separate" only: the tangent pass runs over this many micro-batches (lax.map), so
    # its primal+tangent activations are 1/M of the batch's. None: the largest of 4, 2, 1
    # that divides the batch size.
    jvp_microbatches: int | None = None
    # stratified layout: the rows arrive grouped by domain (domain 0's B/K rows, then domain
    # 1's, ...), as the run loop's host batches do; the engine then reshapes instead of
    # sorting and gathering the batch on the device
    blocked: bool = False

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"grads.strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"grads.layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.jvp_mode not in ("separate", "linearize"):
            raise ValueError(f"grads.jvp_mode must be 'separate' or 'linearize', "
                             f"got {self.jvp_mode!r}")
        if self.chunk_size < 1:
            raise ValueError(f"grads.chunk_size must be >= 1, got {self.chunk_size}")
        if self.jvp_microbatches is not None and self.jvp_microbatches < 1:
            raise ValueError(f"grads.jvp_microbatches must be >= 1 or None, "
                             f"got {self.jvp_microbatches}")
        if self.param_filter is not None:
            try:
                re.compile(self.param_filter)
            except re.error as e:
                raise ValueError(f"grads.param_filter {self.param_filter!r} is not a regex: {e}")

    @property
    def stratified(self) -> bool:
        """Whether this config needs exactly B/K sequences per domain in every batch."""
        return self.strategy == "chunked" or (self.strategy == "vmap" and self.layout == "stratified")


def check_request(config: GradConfig, needs: frozenset[str] | set[str], who: str = "mixer") -> None:
    """Raises a clear config error if ``config.strategy`` cannot supply ``needs``."""
    if config.strategy == "jvp":
        bad = sorted(set(needs) & {"gram", "grad_norm"})
        if bad:
            raise ValueError(
                f"{who} requires {bad}, which grads.strategy='jvp' cannot supply (it gives inner "
                f"products with one target direction only); use grads.strategy='vmap' or 'chunked'")


def check_stratified(domain_counts: Any, batch_size: int, *, step: int | None = None,
                     domains: tuple[str, ...] | None = None) -> None:
    """Host check: every domain holds exactly ``batch_size / K`` sequences.

    The ``vmap`` (stratified layout) and ``chunked`` strategies regroup the
    batch as ``[K, B/K]``; any other composition would mix domains silently.
    """
    counts = np.asarray(domain_counts)
    k = counts.shape[0]
    where = f" at step {step}" if step is not None else ""
    if batch_size % k:
        raise ValueError(f"stratified gradient layout: batch size {batch_size} is not a multiple "
                         f"of the {k} domains")
    want = batch_size // k
    for d, c in enumerate(counts):
        if c != want:
            name = repr(domains[d]) if domains else f"#{d}"
            raise ValueError(
                f"stratified gradient layout{where}: domain {name} has {int(c)} sequences, needs "
                f"{want} (= B/K); use the sampler's stratified mode, or grads.layout='rows' / "
                f"grads.strategy='jvp' for other batch compositions")


class DomainGrads(NamedTuple):
    """The engine's answer: statistics, and the training gradient as a function of weights."""

    stats: dict[str, Array]
    combine: Callable[[Array], PyTree]   # c f32[K] -> sum_d c_d g_d (all parameters)


def _masked_mean(token_loss: Array, token_mask: Array) -> tuple[Array, Array]:
    n = token_mask.sum()
    return (token_loss * token_mask).sum() / jnp.maximum(n, 1.0), n


def _microbatched_jvp(token_loss_fn, params, batch, k: int, direction, microbatches,
                      stacked: bool = False):
    """``(L f32[K], count f32[K], J_L direction f32[K])`` with the tangent pass over M
    micro-batches (``lax.map``).

    L_d = S_d / n_d with S_d the domain's token-loss sum and n_d its token count
    (constant in theta), so ``J_L v = (sum_m J_{S^(m)} v) / n``: the micro-batch
    tangents add. Why: a whole-batch ``jax.jvp`` keeps B x S x d_ff primal and
    tangent activations live next to the weighted backward's residuals (XLA's
    buffer assignment: +6.1 P at 12.7M params, B 64 x 32; growing with B);
    with M = 4 the step's extra memory over a plain step is ~0 P
    (benchmarks/bench_grads.py --memory-only).
    """
    ex = per_example(batch)
    b = batch["domain_id"].shape[0]
    m = microbatches or next(c for c in (4, 2, 1) if b % c == 0)
    if b % m:
        raise ValueError(f"grads.jvp_microbatches={m} does not divide the batch size {b}")

    def sums(p, one):
        tl, tm = token_loss_fn(p, one)     # the per-sequence arrays, as domain_loss_vector
        return domain_stats.domain_totals(tl, tm, one["domain_id"], k)

    micro = jax.tree.map(lambda v: v.reshape((m, b // m) + v.shape[1:]), ex)

    def one(mb):
        (tot, cnt), (dtot, _) = jax.jvp(lambda p: sums(p, mb), (params,), (direction,))
        return tot, cnt, dtot

    def one_stacked(mb):   # T tangents, one primal: dtot [K, T]
        jvp = lambda d: jax.jvp(lambda p: sums(p, mb), (params,), (d,))   # noqa: E731
        (tot, cnt), (dtot, _) = jax.vmap(jvp, out_axes=((None, None), (1, None)))(direction)
        return tot, cnt, dtot

    with forward_mode.tracing():   # the model picks kernels forward mode can differentiate
        tot, cnt, dtot = jax.lax.map(one_stacked if stacked else one, micro)
    cnt = cnt.sum(axis=0)
    return (domain_stats.safe_ratio(tot.sum(axis=0), cnt), cnt,
            domain_stats.safe_ratio(dtot.sum(axis=0), cnt[:, None] if stacked else cnt))


def domain_loss_vector(token_loss_fn: TokenLossFn, params: PyTree, batch: Mapping[str, Array],
                       num_domains: int) -> tuple[Array, Array]:
    """(L f32[K], count f32[K]): per-domain mean token loss and token count; any composition."""
    tl, tm = token_loss_fn(params, per_example(batch))
    return domain_stats.domain_mean(tl, tm, batch["domain_id"], num_domains)


def mean_loss(token_loss_fn: TokenLossFn, params: PyTree, batch: Mapping[str, Array]) -> Array:
    """Mean token loss of a whole batch (the target objective)."""
    tl, tm = token_loss_fn(params, batch)
    return _masked_mean(tl.astype(jnp.float32), tm.astype(jnp.float32))[0]


def target_batch(batch: Mapping[str, Array]) -> dict[str, Array]:
    """The target batch carried inside a training batch as ``target_*`` keys."""
    out = {k[len("target_"):]: v for k, v in batch.items() if k.startswith("target_")}
    if "tokens" not in out:
        raise KeyError("the mixer needs a target batch: the training batch has no 'target_tokens' "
                       "(the loop supplies it from the target domain's split)")
    return out


def stratify(batch: Mapping[str, Array], num_domains: int, *,
             blocked: bool = False) -> dict[str, Array]:
    """Regroups per-sequence arrays as [K, B/K, ...] by a stable sort on domain_id.

    ``blocked``: the rows already come grouped by domain in id order
    (:func:`block_rows` on the host): a reshape, no device-side sort or gather.
    """
    ex = per_example(batch)
    b = batch["domain_id"].shape[0]
    if b % num_domains:
        raise ValueError(f"stratified gradient layout: batch size {b} is not a multiple of the "
                         f"{num_domains} domains")
    if not blocked:
        order = jnp.argsort(batch["domain_id"], stable=True)
        ex = {k: v[order] for k, v in ex.items()}
    return {k: v.reshape(num_domains, b // num_domains, *v.shape[1:]) for k, v in ex.items()}


def block_rows(domain_id: np.ndarray) -> np.ndarray:
    """The host-side row order that groups a batch by domain id (stable): ``batch[order]``
    is what :func:`stratify` expects with ``blocked=True``."""
    return np.argsort(np.asarray(domain_id), kind="stable")


# -- the engine -----------------------------------------------------------------------------
def domain_grads(token_loss_fn: TokenLossFn, params: PyTree, batch: Mapping[str, Array], *,
                 num_domains: int, needs: frozenset[str] | set[str] = frozenset(),
                 config: GradConfig = GradConfig(), target: PyTree | None = None,
                 targets_stacked: bool = False) -> DomainGrads:
    """Per-domain gradient statistics for ``needs`` (a subset of :data:`GRAD_STATS`).

    ``target``: the target direction ``g_t`` (a params-shaped pytree) or None;
    required for ``grad_dot`` / ``target_grad_norm``. Use :func:`target_grad`
    to get it from a target batch. ``targets_stacked``: ``target`` holds T
    directions on a leading axis (:func:`target_grads`); then ``grad_dot`` is
    [K, T] and ``target_grad_norm`` [T]. Call inside ``jit``.
    """
    needs = (frozenset(needs) & frozenset(GRAD_STATS)) - EXAMPLE_STATS
    check_request(config, needs)
    if needs & {"grad_dot", "target_grad_norm"} and target is None:
        raise ValueError(f"grad_dot/target_grad_norm need a target direction (target=...); "
                         f"needs={sorted(needs)}")
    k = num_domains
    mask = param_mask(params, config.param_filter)
    full = config.param_filter is None
    t_sel = split_leaves(target, mask)[0] if target is not None else None
    stats: dict[str, Array] = {}
    if "target_grad_norm" in needs:
        stats["target_grad_norm"] = (jnp.sqrt(jnp.diagonal(stack_gram(t_sel, t_sel))) if targets_stacked
                                     else jnp.sqrt(tree_dot(t_sel, t_sel)))
    # grad_dot of a stack of per-domain gradients with the target direction(s): [K] or [K, T]
    dots_with_target = stack_gram if targets_stacked else stack_dots

    def loss_vec(p):
        return domain_loss_vector(token_loss_fn, p, batch, k)

    def backward_combine(c):
        # One weighted backward: grad of sum_d c_d L_d over all parameters. (Tying its
        # forward to c with an optimization_barrier raised XLA's peak memory; not used.)
        _, pull = jax.vjp(lambda q: loss_vec(q)[0], params)
        return pull(c.astype(jnp.float32))[0]

    if config.strategy == "jvp":
        lead = (jax.tree.leaves(t_sel)[0].shape[0],) if targets_stacked else ()
        if "grad_dot" in needs:
            direction = merge_leaves(t_sel, jax.tree.map(lambda x: jnp.zeros(lead + x.shape, x.dtype),
                                                   split_leaves(params, mask)[1]))
        else:
            direction = jax.tree.map(lambda x: jnp.zeros(lead + x.shape, x.dtype), params)
        if config.jvp_mode == "linearize":
            with forward_mode.tracing():
                losses, lin, counts = jax.linearize(loss_vec, params, has_aux=True)
            dots = jax.vmap(lin)(direction).T if targets_stacked else lin(direction)
            transpose = jax.linear_transpose(lin, params)
            combine = lambda c: transpose(c.astype(jnp.float32))[0]   # noqa: E731
        else:
            losses, counts, dots = _microbatched_jvp(token_loss_fn, params, batch, k, direction,
                                                     config.jvp_microbatches, targets_stacked)
            combine = backward_combine
        stats["loss"], stats["count"] = losses, counts
        if "grad_dot" in needs:
            stats["grad_dot"] = dots
        return DomainGrads(stats, combine)

    if config.strategy == "vmap" and config.layout == "rows":
        sel, rest = split_leaves(params, mask)
        losses, pull, counts = jax.vjp(lambda s: loss_vec(merge_leaves(s, rest)), sel, has_aux=True)
        grads = jax.vmap(lambda row: pull(row)[0])(jnp.eye(k, dtype=jnp.float32))
        stats["loss"], stats["count"] = losses, counts
        _matrix_stats(stats, needs, grads, t_sel, dots_with_target)
        combine = (lambda c: weighted_sum(c, grads)) if full else backward_combine
        return DomainGrads(stats, combine)

    sub = stratify(batch, k, blocked=config.blocked)
    sel, rest = split_leaves(params, mask)

    def sub_loss(s, one):  # one domain's [B/K, ...] sub-batch
        tl, tm = token_loss_fn(merge_leaves(s, rest), one)
        return _masked_mean(tl.astype(jnp.float32), tm.astype(jnp.float32))

    def grad_sub(s, one):
        (loss, n), g = jax.value_and_grad(sub_loss, has_aux=True)(s, one)
        return g, (loss, n)

    group_grads = jax.vmap(grad_sub, in_axes=(None, 0))   # over the domains of one group

    if config.strategy == "vmap":
        grads, (losses, counts) = group_grads(sel, sub)
        stats["loss"], stats["count"] = losses, counts   # row d = domain d (sorted ids)
        _matrix_stats(stats, needs, grads, t_sel, dots_with_target)
        combine = (lambda c: weighted_sum(c, grads)) if full else backward_combine
        return DomainGrads(stats, combine)

    # chunked
    c = config.chunk_size
    if k % c:
        raise ValueError(f"grads.chunk_size={c} must divide the number of domains K={k}")
    groups = jax.tree.map(lambda v: v.reshape(k // c, c, *v.shape[1:]), sub)

    def per_group(g):
        gr, (ls, cn) = group_grads(sel, g)
        out = {"loss": ls, "count": cn}
        if "grad_dot" in needs:
            out["grad_dot"] = dots_with_target(gr, t_sel)
        if needs & {"grad_norm", "gram"}:
            out["sq"] = jnp.diagonal(stack_gram(gr, gr))
        return out

    res = jax.lax.map(per_group, groups)
    res = {key: v.reshape(k, *v.shape[2:]) for key, v in res.items()}
    stats["loss"], stats["count"] = res["loss"], res["count"]
    if "grad_dot" in needs:
        stats["grad_dot"] = res["grad_dot"]
    if "grad_norm" in needs:
        stats["grad_norm"] = jnp.sqrt(res["sq"])
    if "gram" in needs:
        def row_block(ga):
            gra, _ = group_grads(sel, ga)
            return jax.lax.map(lambda gb: stack_gram(gra, group_grads(sel, gb)[0]), groups)
        blocks = jax.lax.map(row_block, groups)            # [K/c, K/c, c, c]
        stats["gram"] = blocks.transpose(0, 2, 1, 3).reshape(k, k)
    return DomainGrads(stats, backward_combine)


def _matrix_stats(stats: dict, needs: frozenset[str], grads: PyTree, t_sel: PyTree | None,
                  dots_with_target: Callable = stack_dots) -> None:
    if needs & {"gram", "grad_norm"}:
        gram = stack_gram(grads, grads)
        if "gram" in needs:
            stats["gram"] = gram
        if "grad_norm" in needs:
            stats["grad_norm"] = jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0))
    if "grad_dot" in needs:
        stats["grad_dot"] = dots_with_target(grads, t_sel)


def target_grad(token_loss_fn: TokenLossFn, params: PyTree, target: Mapping[str, Array]) -> PyTree:
    """``g_t``: gradient of the target batch's mean token loss."""
    return target_loss_and_grad(token_loss_fn, params, target)[1]


def target_loss_and_grad(token_loss_fn: TokenLossFn, params: PyTree,
                         target: Mapping[str, Array]) -> tuple[Array, PyTree]:
    """``(L_t f32[], g_t)``: the target batch's mean token loss and its gradient."""
    return jax.value_and_grad(lambda p: mean_loss(token_loss_fn, p, target))(params)


def target_grads(token_loss_fn: TokenLossFn, params: PyTree, target: Mapping[str, Array]) -> PyTree:
    """``g_t`` for each of T target domains, stacked on a leading axis: ``target`` holds
    ``[T, N, ...]`` arrays (row block t = target domain t); one gradient at a time."""
    return target_losses_and_grads(token_loss_fn, params, target)[1]


def target_losses_and_grads(token_loss_fn: TokenLossFn, params: PyTree,
                            target: Mapping[str, Array]) -> tuple[Array, PyTree]:
    """``(L_t f32[T], g_t stacked)`` for T target domains (row blocks of ``[T, N, ...]``)."""
    return jax.lax.map(lambda one: target_loss_and_grad(token_loss_fn, params, one), dict(target))


def direct_domain_grads(token_loss_fn: TokenLossFn, params: PyTree, batch: Mapping[str, Array],
                        num_domains: int) -> list[PyTree]:
    """Reference: one ``jax.grad`` per domain on the masked full batch (tests, benchmarks).

    The domain is an argument of one compiled gradient, called K times (op-by-op
    execution of K gradients cost seconds even for a tiny model)."""
    @jax.jit
    def grad_of_domain(p, b, d):
        return jax.grad(lambda q: domain_loss_vector(token_loss_fn, q, b, num_domains)[0][d])(p)
    return [grad_of_domain(params, dict(batch), d) for d in range(num_domains)]


# -- the train step's hook ------------------------------------------------------------------
class GradStats(dict):
    """The statistics dict the train step merges into its stats, plus ``combine``.

    ``combine(c)`` gives ``sum_d c_d g_d`` over all parameters, reusing what the
    engine already computed (for mixers that prescribe the model gradient, e.g.
    mixers with ``model_gradient = "coeffs"``, e.g. DoGE).
    """

    combine: Callable[[Array], PyTree]
    # The engine's own per-domain mean loss and token count f32[K] (row d = domain d), from
    # the forward pass it runs anyway: a step whose model gradient is ``combine`` (DoGE)
    # reads its loss statistics from here and runs no separate full-batch forward.
    domain_loss: Array
    domain_count: Array
    # ``c f32[B] -> sum_b c_b g_b`` when a per-example statistic was asked for (the model
    # gradient of ``model_gradient = "example_coeffs"`` mixers); else None.
    combine_examples: Callable[[Array], PyTree] | None = None


def make_grad_stats(config: GradConfig, num_domains: int) -> Callable[..., GradStats]:
    """The train step's ``grad_stats(token_loss_fn, params, batch, keys) -> GradStats``.

    ``grad_dot``/``target_grad_norm`` read the target batch from ``batch["target_tokens"]``
    (the loop supplies it from the target domain's split).
    """

    def grad_stats(token_loss_fn: TokenLossFn, params: PyTree, batch: Mapping[str, Array],
                   keys: frozenset[str] | set[str]) -> GradStats:
        keys = frozenset(keys) & frozenset(GRAD_STATS)
        ex = None
        if keys & EXAMPLE_STATS:
            ex = example_grads(token_loss_fn, params, batch, param_filter=config.param_filter)
            keys = keys - EXAMPLE_STATS
            if not keys:   # nothing per domain: the step runs its own forward for loss_d
                res = GradStats({"example_gram": ex.gram})
                res.combine_examples = ex.combine
                res.domain_loss = res.domain_count = None
                res.combine = lambda c: jax.grad(   # noqa: E731
                    lambda p: jnp.dot(c, domain_loss_vector(token_loss_fn, p, batch,
                                                            num_domains)[0]))(params)
                return res
        target, stacked, t_loss = None, False, None
        if keys & {"grad_dot", "target_grad_norm", "target_loss"}:
            tb = target_batch(batch)
            stacked = tb["tokens"].ndim == 3     # [T, N, S+1]: several target domains
            t_loss, target = (target_losses_and_grads if stacked else target_loss_and_grad)(
                token_loss_fn, params, tb)
        out = domain_grads(token_loss_fn, params, batch, num_domains=num_domains,
                           needs=keys - {"target_loss"}, config=config, target=target,
                           targets_stacked=stacked)
        res = GradStats({k: v for k, v in out.stats.items() if k in keys})
        if "target_loss" in keys:   # the value whose gradient is g_t (no extra pass)
            res["target_loss"] = jax.lax.stop_gradient(t_loss)
        res.combine = out.combine
        res.domain_loss, res.domain_count = out.stats["loss"], out.stats["count"]
        if ex is not None:
            res["example_gram"] = ex.gram
            res.combine_examples = ex.combine
        return res

    return grad_stats

