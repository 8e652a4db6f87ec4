"""The train step: one pure, jit-compiled ``(state, batch) -> (state, metrics)``.

What one step does (B sequences, S tokens, K domains, d = domain of a token)::

    1. l[b,t] = CE(apply(params, x)[b,t], y[b,t])   one forward pass, kept as a VJP
       m[b,t] = (y[b,t] != pad)
    2. count_d = sum_{b: dom(b)=d} sum_t m[b,t]              (segment sums by domain_id)
       loss_d  = sum_{b: dom(b)=d} sum_t m l / max(count_d, 1)  (0 for absent domains)
       + what ``mixer.requires`` asks for: sample_loss, token_loss, ref_loss (a forward
         pass of the frozen reference params), grad_dot/gram/grad_norm (``grad_stats``)
    3. mix_state' = mixing.guarded_update(mixer, mix_state, stats, step)
    4. token weights r_d from w = mixer.weights(mix_state') and the sampling weights p:
         sampling:  r_d = 1
         loss:      r_d = w_d / p_d            (importance correction; 0 if p_d = 0)
         both:      r_d = w_d
       optional per-sequence weights s_b = sample_weights(sample_loss, step), times
       mixer.example_weights(mix_state', stats) when ``mixer.example_weighting`` (Prospect, DRRho,
       Feasible Learning), times batch["sample_weight"] when the data supply one
       (data.selection mode "weight")
       objective  L = sum_{b,t} s_b r_d(b) m l / sum_{b,t} s_b r_d(b) m
       (self-normalised importance weighting: for batches drawn with p it
       estimates sum_d w_d E[loss_d] / sum_d w_d, and stays finite when a
       domain is absent from a batch)
    5. grads = VJP of step 1 pulled back with cotangent dL/dl = s r m / Z;
       optax update; step += 1.

Using the *updated* mixer weights in step 4 follows GroupDRO (Sagawa et al.
2020, arXiv 1911.08731, Alg. 1) and DoReMi (Xie et al. 2023, arXiv 2305.10429,
Alg. 1), which both reweight the loss with the weights just computed from the
current batch. The VJP form gives that ordering without a second forward pass.

A mixer that prescribes the model gradient (``model_gradient = "coeffs"``, DoGE) gets
``grads = combine(c) = sum_d c_d g_d`` from the gradient engine instead of step
5's pullback. Then step 1 is skipped too when nothing needs per-token or
per-sequence losses: ``loss_d``/``count_d`` come from the engine's own forward
pass (``GradStats.domain_loss``), so the step runs one forward, not two
(docs/gradients.md, benchmarks/bench_doge_step.py).

Gradient accumulation (``grad_accum = M``): the batch is split into M
micro-batches; a first scan computes the token losses (forward only), the
statistics and cotangents are computed on the full batch, and a second scan
pulls them back per micro-batch and sums the gradients. The result equals the
M = 1 step up to float reordering; the cost is one extra forward pass.

The state is a :class:`~mixjax.core.state.TrainState` (``params``,
``opt_state``, ``mix_state``, ``step``, ``rng``, ``eval_loss``, ``extra``),
donated; a reference model comes in :class:`~mixjax.core.state.FrozenInputs`,
the step's third argument, never donated nor updated. Which statistics exist,
what each needs and how it is computed is declared once in
``mixjax.mixing.statistics``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from mixjax import mixing
from mixjax.mixing import domain_stats, statistics
from mixjax.core import contract
from mixjax.core.state import FrozenInputs, TrainState

State = TrainState
Batch = Mapping[str, jax.Array]

# grad_stats(token_loss_fn, params, batch, keys) -> {key: array} for the keys whose
# registry entry needs the "gradient_engine" (mixjax.mixing.statistics),
# where token_loss_fn(params, batch) -> (token_loss f32[B,S], token_mask f32[B,S]) and
# batch holds "tokens", "domain_id" and, for grad_dot, "target_tokens". Built by
# mixjax.mixing.grads.make_grad_stats; its result may carry ``combine(c) -> sum_d c_d g_d``,
# used as the model gradient for mixers with ``model_gradient = "coeffs"`` (DoGE).
GradStatsFn = Callable[[Callable, Any, Batch, frozenset], dict[str, jax.Array]]
# sample_weights(sample_loss f32[B], step i32[]) -> f32[B] (mixing.sample_reweight).
SampleWeightsFn = Callable[[jax.Array, jax.Array], jax.Array]


def token_losses(apply: Callable, params, tokens: jax.Array, pad_id: int, domain_id=None):
    """Per-token cross-entropy ``l`` f32[B,S] and loss mask ``m`` f32[B,S].

    ``apply(params, x) -> logits``; when ``apply.loss_chunk = C > 0`` (a
    :class:`mixjax.models.transformer.ModelApply` whose config sets ``model.loss_chunk``)
    the loss is computed from ``apply.hidden`` by :func:`chunked_cross_entropy` without the
    full [B, S, V] logits; the values are the same (up to float reordering).

    A model whose layers are selected by the row's domain (``apply.takes_domain``: DEMix,
    ``mixjax.models.demix``) receives ``domain_id`` i32[B] when it is given.

    A model with auxiliary losses (``apply.with_aux(params, x, hidden) -> (logits or
    (h, w), aux f32[B,S])``, the mixture-of-experts model ``mixjax.models.moe``) adds
    ``aux - stop_gradient(aux)`` per token: every loss value (and statistic) stays the
    cross-entropy, and the gradient of any token-weighted objective gains the same
    weighting of ``aux`` (a load-balancing loss, a router z-loss).
    """
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    chunk = getattr(apply, "loss_chunk", 0)
    with_aux = getattr(apply, "with_aux", None)
    kw = ({"domain_id": domain_id}
          if domain_id is not None and getattr(apply, "takes_domain", False) else {})
    aux = None
    if with_aux is not None:
        out, aux = with_aux(params, inputs, hidden=bool(chunk), **kw)
    else:
        out = apply.hidden(params, inputs, **kw) if chunk else apply(params, inputs, **kw)
    if chunk:
        loss = chunked_cross_entropy(*out, targets, chunk)
    else:
        loss = optax.softmax_cross_entropy_with_integer_labels(out.astype(jnp.float32),
                                                               targets)
    if aux is not None:
        # value 0, gradient d aux: the losses stay the cross-entropy, the objective's
        # gradient is that of CE + aux under the same token weights
        loss = loss + (aux - jax.lax.stop_gradient(aux))
    mask = (targets != pad_id).astype(jnp.float32)
    return loss * mask, mask


def chunked_cross_entropy(h: jax.Array, w: jax.Array, targets: jax.Array, chunk: int):
    """Per-token ``l[b,t] = logsumexp_v(z[b,t,v]) - z[b,t,y[b,t]]`` with ``z = h w^T``,
    f32[B,S], computed ``chunk`` positions at a time.

    ``h`` [B,S,d] and ``w`` [V,d] in the compute dtype; each chunk's logits are one matmul
    in that dtype accumulated in fp32 (``preferred_element_type``), then logsumexp and the
    target logit in fp32. ``lax.map`` runs the chunks in sequence and ``jax.checkpoint``
    makes the backward pass recompute a chunk's logits instead of saving them, so neither
    pass holds more than [B, chunk, V] logits (the unchunked path holds [B, S, V] fp32 for
    the backward). S is padded up to a multiple of ``chunk`` (the padded positions are
    dropped). levanter's ``maybe_fused_next_token_loss`` (``levanter/models/loss.py``) blocks
    the vocabulary instead; chunking positions keeps each chunk's logsumexp exact in one
    pass and needs no running max across blocks.
    """
    b, s, d = h.shape
    n = -(-s // chunk)
    pad = n * chunk - s
    if pad:
        h = jnp.pad(h, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)))
    hc = h.reshape(b, n, chunk, d).swapaxes(0, 1)          # [n, B, C, d]
    yc = targets.reshape(b, n, chunk).swapaxes(0, 1)       # [n, B, C]

    @jax.checkpoint
    def one(w, hx, y):
        logits = jnp.einsum("bcd,vd->bcv", hx, w, preferred_element_type=jnp.float32)
        lse = jax.nn.logsumexp(logits, axis=-1)
        target = jnp.take_along_axis(logits, y[..., None], axis=-1)[..., 0]
        return lse - target

    loss = jax.lax.map(lambda xs: one(w, *xs), (hc, yc))    # [n, B, C]
    return loss.swapaxes(0, 1).reshape(b, n * chunk)[:, :s]


def domain_sums(token_loss, token_mask, domain_id, num_domains: int):
    """``(loss_d, count_d)``: per-domain mean token loss (0 if absent) and token count."""
    return domain_stats.domain_mean(token_loss, token_mask, domain_id, num_domains)


def sequence_loss(token_loss, token_mask):
    """Mean token loss per sequence f32[B] (0 for an all-pad sequence)."""
    n = token_mask.sum(axis=1)
    return (token_loss * token_mask).sum(axis=1) / jnp.maximum(n, 1.0)


def domain_token_weights(apply_to: str, weights, sampling_weights):
    """r_d of the module docstring (f32[K])."""
    if apply_to == "sampling":
        return jnp.ones_like(weights)
    if apply_to == "loss":
        p = sampling_weights
        return jnp.where(p > 0, weights / jnp.where(p > 0, p, 1.0), 0.0)
    if apply_to == "both":
        return weights
    raise ValueError(f"apply_to must be one of {mixing.APPLY_TO}, got {apply_to!r}")


def make_train_step(*, apply: Callable, mixer: mixing.Mixer, tx: optax.GradientTransformation,
                    num_domains: int, pad_id: int, lr_schedule: Callable | None = None,
                    grad_accum: int = 1, ref_apply: Callable | None = None,
                    sample_weights: SampleWeightsFn | None = None,
                    grad_stats: GradStatsFn | None = None, jit: bool = True,
                    donate: bool = True) -> Callable[..., tuple[State, dict]]:
    """Builds the train step (see the module docstring).

    ``step(state, batch, frozen=None) -> (state, metrics)``. ``batch``: ``tokens``
    i32[B,S+1], ``domain_id`` i32[B] and ``sampling_weights`` f32[K] (the weights
    the batch was drawn with; the loop adds them). ``frozen``:
    :class:`~mixjax.core.state.FrozenInputs` (the reference model), never donated.
    Statistics the mixer does not require are not computed.
    """
    requires = frozenset(mixer.requires)
    statistics.check_known(requires, f"mixer {mixer.name!r}")
    needs = statistics.needs_of(requires)
    ref_keys = statistics.needing("reference", requires)
    grad_keys = statistics.needing("gradient_engine", requires)
    if ref_keys and ref_apply is None:
        raise ValueError(f"mixer {mixer.name!r} requires {sorted(ref_keys)}: "
                         "set train.reference to the run dir of a reference model")
    if statistics.needing("routing", requires) and not hasattr(apply, "routing"):
        raise ValueError(f"mixer {mixer.name!r} requires "
                         f"{sorted(statistics.needing('routing', requires))}: the token routing "
                         "of a mixture-of-experts model; set model.kind='moe'")
    if grad_keys and grad_stats is None:
        raise ValueError(f"mixer {mixer.name!r} requires {sorted(grad_keys)}: "
                         "no gradient-statistics function (mixjax.mixing.grads) was given")
    if mixer.model_gradient not in mixing.MODEL_GRADIENTS:
        raise ValueError(f"mixer {mixer.name!r}: model_gradient must be one of "
                         f"{mixing.MODEL_GRADIENTS}, got {mixer.model_gradient!r}")
    domain_gradient = mixer.model_gradient in ("coeffs", "example_coeffs")
    # sum_b c_b g_b over sequences (an aggregator over examples): c is f32[B]
    example_gradient = mixer.model_gradient == "example_coeffs"
    if example_gradient and not any(statistics.get(n).attribution == "sequence"
                                    for n in grad_keys):
        raise ValueError(f"mixer {mixer.name!r} prescribes the model gradient over examples "
                         "(model_gradient='example_coeffs') but requires no per-example "
                         "gradient statistic (e.g. example_gram)")
    if domain_gradient and not grad_keys:
        raise ValueError(f"mixer {mixer.name!r} prescribes the model gradient "
                         "(model_gradient='coeffs') but requires no gradient statistics")
    if grad_accum < 1:
        raise ValueError(f"grad_accum must be >= 1, got {grad_accum}")
    k = num_domains
    apply_to = mixer.apply_to

    def loss_fn(params, batch):
        return token_losses(apply, params, batch["tokens"], pad_id, batch.get("domain_id"))

    def forward(params, tokens, domain_id):
        """Token losses (and a pullback when M = 1)."""
        if grad_accum == 1:
            (tl, tm), pullback = jax.vjp(
                lambda p: token_losses(apply, p, tokens, pad_id, domain_id), params)
            return tl, tm, pullback
        micro = (_split(tokens, grad_accum), _split(domain_id, grad_accum))
        _, (tl, tm) = jax.lax.scan(
            lambda c, td: (c, token_losses(apply, params, td[0], pad_id, td[1])), None, micro)
        return _merge(tl), _merge(tm), None

    def backward(params, tokens, domain_id, pullback, cotangent):
        if grad_accum == 1:
            return pullback((cotangent, jnp.zeros_like(cotangent)))[0]

        def body(acc, xs):
            t, d, ct = xs
            _, pb = jax.vjp(lambda p: token_losses(apply, p, t, pad_id, d), params)
            g = pb((ct, jnp.zeros_like(ct)))[0]
            return jax.tree.map(jnp.add, acc, g), None

        zeros = jax.tree.map(jnp.zeros_like, params)
        grads, _ = jax.lax.scan(body, zeros, (_split(tokens, grad_accum),
                                              _split(domain_id, grad_accum),
                                              _split(cotangent, grad_accum)))
        return grads

    example_weighting = bool(getattr(mixer, "example_weighting", False))
    if example_weighting and domain_gradient:
        raise ValueError(f"mixer {mixer.name!r}: example_weighting weights the loss, but the "
                         f"model gradient is prescribed ({mixer.model_gradient!r})")
    need_sample_loss = ("sample_loss" in requires or sample_weights is not None
                        or example_gradient)
    # A mixer that prescribes the model gradient (DoGE) needs no full-batch pullback: when no
    # required statistic needs the full-batch forward (per-token/per-sequence losses), the
    # per-domain loss and count come from the gradient engine's own forward pass and the
    # step runs one forward, not two.
    engine_losses = domain_gradient and not need_sample_loss and "forward" not in needs

    def grad_statistics(params, batch):
        gbatch = {key: v for key, v in batch.items()
                  if key in ("tokens", "domain_id") or key.startswith("target_")}
        return grad_stats(loss_fn, params, gbatch, grad_keys)

    def step_fn(state: State, batch: Batch, frozen: FrozenInputs | None = None):
        params, step = state.params, state.step
        tokens, domain_id = batch["tokens"], batch["domain_id"]
        p = batch["sampling_weights"].astype(jnp.float32)

        # 1-2. forward pass and the statistics the mixer asks for (the registry computes them).
        ctx = _Context(num_domains=k, step=step, domain_id=domain_id, sampling_weights=p,
                       tokens=tokens)
        gs = grad_statistics(params, batch) if engine_losses else None
        if gs is not None and getattr(gs, "domain_loss", None) is not None:
            tl_ng = pullback = None
            tm = (tokens[:, 1:] != pad_id).astype(jnp.float32)
            loss_d, count_d = gs.domain_loss, gs.domain_count
        else:
            tl, tm, pullback = forward(params, tokens, domain_id)
            tl_ng = jax.lax.stop_gradient(tl)
            loss_d, count_d = domain_sums(tl_ng, tm, domain_id, k)
        seq_loss = sequence_loss(tl_ng, tm) if need_sample_loss else None
        ctx.set(token_loss=tl_ng, token_mask=tm, domain_loss=loss_d, domain_count=count_d,
                sample_loss=seq_loss)
        ctx.lazy("lr", lambda: jnp.asarray(lr_schedule(step) if lr_schedule else 0.0,
                                           jnp.float32))
        ctx.lazy("eval_loss", lambda: state.eval_loss)
        ctx.lazy("routing", lambda: jax.lax.stop_gradient(
            apply.routing(params, tokens[:, :-1])))
        ctx.lazy("ref_token_loss", lambda: token_losses(ref_apply, _ref_params(frozen, mixer),
                                                        tokens, pad_id, domain_id)[0])
        ctx.lazy("grad_stats", lambda: grad_statistics(params, batch) if gs is None else gs)
        stats = statistics.compute(requires, ctx)
        combine = getattr(ctx.get("grad_stats"),
                          "combine_examples" if example_gradient else "combine",
                          None) if grad_keys else None

        # 3. mixer update inside the compiled step.
        mix_state = mixing.guarded_update(mixer, state.mix_state, stats, step)
        weights = mixer.weights(mix_state)

        # 4. token weights and the normalised objective.
        r = domain_token_weights(apply_to, weights, p)[domain_id]            # [B]
        if sample_weights is not None:
            r = r * jax.lax.stop_gradient(sample_weights(seq_loss, step)).astype(jnp.float32)
        if example_weighting:          # per-example rules (Prospect, Feasible Learning)
            r = r * jax.lax.stop_gradient(mixer.example_weights(mix_state, stats)).astype(
                jnp.float32)
        if "sample_weight" in batch:   # per-sequence weights from the data (data.selection)
            r = r * batch["sample_weight"].astype(jnp.float32)
        tw = r[:, None] * tm                                                # [B, S]
        z = jnp.sum(tw)
        cotangent = tw / jnp.where(z > 0, z, 1.0)

        # 5. gradient and optimiser update.
        if domain_gradient:
            # The mixer prescribes the model gradient sum_d c_d g_d (e.g. DoGE).
            coeffs = mixer.gradient_coeffs(mix_state, stats)
            grads = combine(coeffs)
            objective = jnp.sum(coeffs * (seq_loss if example_gradient else loss_d))
        else:
            objective = jnp.sum(cotangent * tl_ng)
            grads = backward(params, tokens, domain_id, pullback, cotangent)
        updates, opt_state = tx.update(grads, state.opt_state, params)
        new_params = optax.apply_updates(params, updates)

        new_state = state.replace(params=new_params, opt_state=opt_state, mix_state=mix_state,
                                  step=step + 1)
        n_tok = jnp.sum(tm)
        more = {}
        if ref_keys:
            more["ref_domain_loss"] = stats["ref_loss"] if "ref_loss" in stats else \
                statistics.get("ref_loss").compute(ctx)
        metrics = contract.step_metrics(
            step=step, objective=objective,
            # plain token mean (from the per-domain means when the engine did the forward)
            loss=(jnp.sum(tl_ng) if tl_ng is not None else jnp.sum(loss_d * count_d))
            / jnp.maximum(n_tok, 1.0),
            tokens=n_tok, domain_loss=loss_d, domain_count=count_d, weights=weights,
            sampling_weights=p, grad_norm=optax.tree.norm(grads),
            nonfinite_domain=mix_state["nonfinite_domain"],
            lr=None if lr_schedule is None else lr_schedule(step), **more)
        return new_state, metrics

    if not jit:
        return step_fn
    return jax.jit(step_fn, donate_argnums=(0,) if donate else ())


def _ref_params(frozen, mixer):
    ref = None if frozen is None else frozen.ref_params
    if ref is None:
        raise ValueError(f"mixer {mixer.name!r} needs a reference model: call the step with "
                         "FrozenInputs(ref_params=...) as its third argument")
    return ref


class _Context:
    """The step's :class:`~mixjax.mixing.statistics.StepContext`: values set eagerly or
    computed on first use (inside the trace, so an unused one costs nothing)."""

    def __init__(self, **values):
        self._values = dict(values)
        self._thunks: dict[str, Callable[[], Any]] = {}

    def set(self, **values):
        self._values.update(values)

    def lazy(self, name: str, thunk: Callable[[], Any]):
        self._thunks[name] = thunk

    def get(self, name: str):
        if name not in self._values:
            if name not in self._thunks:
                raise AttributeError(f"the train step provides no {name!r}")
            self._values[name] = self._thunks.pop(name)()
        return self._values[name]

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return self.get(name)


def _split(x, m):
    return x.reshape((m, x.shape[0] // m) + x.shape[1:])


def _merge(x):
    return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


def make_eval_fn(apply: Callable, pad_id: int) -> Callable:
    """Jitted ``(params, tokens i32[N,S+1]) -> (loss_sum f32[N], count f32[N])``."""

    @jax.jit
    def eval_fn(params, tokens):
        tl, tm = token_losses(apply, params, tokens, pad_id)
        return (tl * tm).sum(axis=1), tm.sum(axis=1)

    return eval_fn
