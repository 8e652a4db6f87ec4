"""Train-step factories, chosen by ``train.objective``: the loop's extension point.

The run loop (``mixjax.train.loop``) drives any step with the signature
``step(state, batch, frozen) -> (state, metrics)`` over one
:class:`~mixjax.train.state.TrainState` (donated) and
:class:`~mixjax.train.state.FrozenInputs` (not donated). Which step (and
which state) is built is decided here, by name:

* ``mixer`` (default): one model; the ``mixing`` section's mixer updates the
  domain weights inside the step, which act on sampling and/or the loss
  (``mixjax.train.step.make_train_step``; DoGE, DGA, R&B, GroupDRO, DoReMi, ...).
* ``bilevel``: ScaleBiO-style first-order bilevel step (``mixjax.bilevel``):
  two model copies, the upper-level one ``w`` is the evaluated model.
* ``fish``: one Fish meta step per batch over the K domains of a stratified
  batch (``mixjax.fish``).

A factory takes the :class:`~mixjax.train.loop.Trainer` under construction
(its ``cfg``, ``domains``, ``apply``, ``pad_id``, ``mixer``) and returns
:class:`StepParts`. The contract every step honours, so that the loop needs no
per-method code:

* the state's ``params`` is the model that is evaluated (its optimiser state
  is ``opt_state``), ``mix_state`` is read by ``parts.mixer.weights``; a
  method's own arrays go in ``extra`` (params-shaped subtrees are sharded like
  the model, the rest replicated: ``mixjax.parallel.train_state_shardings``);
  the whole state is checkpointed and restored.
* ``metrics`` holds ``loss``, ``objective``, ``grad_norm``, ``tokens``,
  ``domain_loss`` f32[K], ``domain_count`` f32[K], ``weights`` f32[K],
  ``sampling_weights`` f32[K], ``nonfinite_domain`` i32[] (-1: none), optionally
  ``lr`` and ``extra`` ({name: scalar}, written to metrics.jsonl as is).
* ``batch`` holds ``tokens``, ``domain_id``, ``sampling_weights`` and, when
  ``needs_target``, ``target_tokens`` (the validation split of ``grads.target``,
  which may be a domain that is not trained on).

To add an objective: write a factory, ``register("name", factory,
hparams={...defaults})``, and it is selectable with
``--set train.objective=name``. ``register`` also declares the name, its
hyperparameters and their check in ``objective_specs``, the table config
validation reads without importing the train package.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from mixjax import mixing
from mixjax.mixing import domain_stats, statistics
from mixjax.train import objective_specs
from mixjax.train.objective_specs import BILEVEL_HPARAMS, FISH_HPARAMS


@dataclasses.dataclass(frozen=True)
class StepParts:
    step_fn: Callable                  # unjitted (state, batch) -> (state, metrics)
    init_fn: Callable                  # params -> TrainState (jitted by the trainer)
    mixer: Any                         # .name, .apply_to, .requires, .weights(mix_state)
    needs_target: bool = False         # batch["target_tokens"] from grads.target
    stratified: bool = False           # exactly B/K rows per domain, checked per batch
    frozen: Any = None                 # FrozenInputs (a reference model), never donated


# Factories by name; names, hyperparameters and checks live in objective_specs (what config
# validation reads without importing the train package).
_FACTORIES: dict[str, Callable[[Any], StepParts]] = {}

names = objective_specs.names
hparam_names = objective_specs.hparam_names
resolved_hparams = objective_specs.resolved_hparams
check_hparams = objective_specs.check_hparams


def register(name: str, factory: Callable[[Any], StepParts], *,
             hparams: Mapping[str, Any] = (), check=None) -> None:
    """Adds an objective; ``hparams`` are its hyperparameters with their defaults."""
    objective_specs.declare(name, hparams=hparams, check=check)
    _FACTORIES[name] = factory


def build(name: str, trainer) -> StepParts:
    if name not in _FACTORIES:
        raise KeyError(f"unknown train.objective {name!r}; known: {sorted(_FACTORIES)}")
    return _FACTORIES[name](trainer)


def _token_loss_fn(trainer):
    from mixjax.train import step as step_lib
    apply, pad_id = trainer.apply, trainer.pad_id

    def loss_fn(params, batch):
        return step_lib.token_losses(apply, params, batch["tokens"], pad_id)

    return loss_fn


def _first_nonfinite(*vectors) -> jax.Array:
    """Index of the first domain with a non-finite entry in any vector, else -1."""
    bad = jnp.zeros(vectors[0].shape, bool)
    for v in vectors:
        bad = bad | ~jnp.isfinite(v)
    return jnp.where(bad.any(), jnp.argmax(bad), -1).astype(jnp.int32)


# -- mixer: the default one-model step -----------------------------------------------------
def _mixer_objective(trainer) -> StepParts:
    from mixjax.train import state as state_lib
    from mixjax.train import step as step_lib
    cfg, k, mixer = trainer.cfg, len(trainer.domains), trainer.mixer
    ref_apply, ref_params = None, None
    try:
        statistics.check_known(mixer.requires, f"mixer {mixer.name!r}")
    except ValueError as e:
        from mixjax.config import ConfigError
        raise ConfigError(f"config key 'mixing.name': {e}") from e
    needs = statistics.needs_of(mixer.requires)
    if "reference" in needs:
        from mixjax.config import ConfigError
        from mixjax.train.reference import load_reference
        if cfg.train.reference is None:
            raise ConfigError(f"config key 'train.reference': mixer {cfg.mixing.name!r} "
                              f"requires {sorted(statistics.needing('reference', mixer.requires))}; "
                              "set it to the run dir of a trained reference model")
        ref_apply, ref_params = load_reference(cfg.train.reference, trainer.data.vocab_size)
    grad_stats, needs_target, stratified = None, False, False
    if "gradient_engine" in needs:
        grad_stats, stratified = _grad_stats(
            trainer, statistics.needing("gradient_engine", mixer.requires))
    needs_target = "target_batch" in needs
    step_fn = step_lib.make_train_step(
        apply=trainer.apply, mixer=mixer, tx=trainer.tx, num_domains=k, pad_id=trainer.pad_id,
        lr_schedule=trainer.schedule, grad_accum=cfg.train.grad_accum, ref_apply=ref_apply,
        sample_weights=_sample_weights_fn(cfg), grad_stats=grad_stats, jit=False)
    init_fn = lambda p: state_lib.init_state(p, trainer.tx, mixer, k, cfg.train.seed)  # noqa: E731
    frozen = None if ref_params is None else state_lib.FrozenInputs(ref_params=ref_params)
    return StepParts(step_fn=step_fn, init_fn=init_fn, mixer=mixer, needs_target=needs_target,
                     stratified=stratified, frozen=frozen)


def _sample_weights_fn(cfg):
    """Per-sequence weights ``s_b`` of ``mixing.sample_reweight`` (None: all 1)."""
    if cfg.mixing.sample_reweight is None:
        return None
    from mixjax.mixing import sample_reweight
    return sample_reweight.get(cfg.mixing.sample_reweight, **cfg.mixing.sample_reweight_hparams)


def _grad_stats(trainer, needs):
    """The gradient-statistics hook (mixjax.grads), checked before anything compiles."""
    from mixjax import grads
    from mixjax.config import ConfigError
    cfg, k = trainer.cfg, len(trainer.domains)
    try:
        gcfg = grads.GradConfig(strategy=cfg.grads.strategy, layout=cfg.grads.layout,
                                chunk_size=cfg.grads.chunk_size,
                                param_filter=cfg.grads.param_filter,
                                jvp_microbatches=cfg.grads.jvp_microbatches)
        grads.check_request(gcfg, needs, who=f"mixer {trainer.mixer.name!r}")
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if gcfg.stratified:
        _require_per_domain(cfg, f"grads.layout={gcfg.layout!r} with strategy "
                                 f"{gcfg.strategy!r}",
                            " (or grads.layout=rows / grads.strategy=jvp)")
    return grads.make_grad_stats(gcfg, k), gcfg.stratified


def _require_per_domain(cfg, who: str, alternative: str = "") -> None:
    from mixjax.config import ConfigError
    if cfg.data.sampler != "per_domain":
        raise ConfigError(f"config key 'data.sampler': {who} needs exactly B/K sequences per "
                          f"domain; use data.sampler=per_domain{alternative}")


register("mixer", _mixer_objective)


# -- bilevel (ScaleBiO) ----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, kw_only=True)
class SoftmaxWeights:
    """The weights view of a custom step whose weights are ``mix_state["weights"]``.

    Not a registered mixer (its update lives in the step); ``apply_to`` says how
    the loop treats the sampler: ``loss`` keeps the sampler at its initial weights.
    """

    name: str
    apply_to: str = "loss"
    requires: frozenset = frozenset()

    def init(self, num_domains: int, **extra):
        return mixing.init_state(jnp.full((num_domains,), 1.0 / num_domains, jnp.float32),
                                 **extra)

    def weights(self, state):
        return state["weights"]

    def average(self, state):
        return state["weight_sum"] / state["num_weights"]


def _bilevel_objective(trainer) -> StepParts:
    """ScaleBiO (Pan et al. 2025, arXiv 2406.19976) in the loop's state layout::

        params = w (upper level, evaluated), opt_state = opt_w
        lower_params = u, lower_opt_state = opt_u
        mix_state = {weights = softmax(p), weight_sum, num_weights, nonfinite_domain,
                     logits = p, logits_opt_state = opt_p}

    w and u use the ``optim`` section's AdamW and schedule (``lower_lr`` sets
    u's peak lr; None = optim.lr, the reference's lr_u = lr_w); p uses Adam
    with the constant ``lr_p``. The validation batch L1 is ``grads.target``'s
    validation split. The sampler keeps its initial weights (softmax(p) weights
    the loss, as in the reference).
    """
    from mixjax import bilevel
    from mixjax.train import state as state_lib
    cfg, k = trainer.cfg, len(trainer.domains)
    hp = resolved_hparams("bilevel", cfg.train.objective_hparams)
    tx_w, schedule = trainer.tx, trainer.schedule
    if hp["lower_lr"] is None:
        tx_u = tx_w
    else:
        tx_u, _ = state_lib.make_optimizer(
            dataclasses.replace(cfg.optim, lr=float(hp["lower_lr"])), trainer.schedule_steps)
    tx_p = optax.adam(float(hp["lr_p"]))
    view = SoftmaxWeights(name="bilevel")
    loss_fn = _token_loss_fn(trainer)
    penalty = float(hp["penalty"])

    def init_fn(params):
        p = jnp.zeros((k,), jnp.float32)
        mix_state = view.init(k, logits=p, logits_opt_state=tx_p.init(p))
        return state_lib.new_state(params, tx_w.init(params), mix_state, k, cfg.train.seed,
                                   extra={"lower_params": params,
                                          "lower_opt_state": tx_u.init(params)})

    def step_fn(state, batch, frozen=None):
        del frozen
        ms = state.mix_state
        uwp = {"u": state.extra["lower_params"], "w": state.params, "p": ms["logits"],
               "opt_u": state.extra["lower_opt_state"], "opt_w": state.opt_state,
               "opt_p": ms["logits_opt_state"]}
        new, m = bilevel.bilevel_update(loss_fn, uwp, batch, num_domains=k, tx_u=tx_u,
                                        tx_w=tx_w, tx_p=tx_p, penalty=penalty)
        count = m["domain_count"]
        bad = _first_nonfinite(m["domain_loss"], m["domain_loss_u"], m["grad_p"])
        ok = bad < 0
        # Non-finite losses: keep the previous p (the host then raises, naming the domain).
        logits = jnp.where(ok, new["p"], ms["logits"])
        logits_opt = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new["opt_p"],
                                  ms["logits_opt_state"])
        w_new = jax.nn.softmax(logits)
        mix_state = mixing.record_weights(ms, w_new, logits=logits,
                                          logits_opt_state=logits_opt, nonfinite_domain=bad)
        new_state = state.replace(params=new["w"], opt_state=new["opt_w"], mix_state=mix_state,
                                  step=state.step + 1,
                                  extra={"lower_params": new["u"],
                                         "lower_opt_state": new["opt_u"]})
        n_tok = count.sum()
        gap = m["L2_w"] - m["L2_u"]
        metrics = {
            "step": state.step,
            "objective": m["val_loss"] + penalty * gap,
            "loss": jnp.dot(m["domain_loss"], count) / jnp.maximum(n_tok, 1.0),  # w, token mean
            "tokens": n_tok, "domain_loss": m["domain_loss"], "domain_count": count,
            "weights": w_new, "sampling_weights": batch["sampling_weights"].astype(jnp.float32),
            "grad_norm": m["grad_norm_w"], "nonfinite_domain": bad,
            "lr": jnp.asarray(schedule(state.step), jnp.float32),
            "extra": {"val_loss": m["val_loss"], "L2_w": m["L2_w"], "L2_u": m["L2_u"],
                      "L2_gap": gap},
        }
        return new_state, metrics

    return StepParts(step_fn=step_fn, init_fn=init_fn, mixer=view, needs_target=True)


register("bilevel", _bilevel_objective, hparams=BILEVEL_HPARAMS,
         check=objective_specs.check_bilevel)


# -- Fish --------------------------------------------------------------------------------------
def _fish_objective(trainer) -> StepParts:
    """Fish (Shi et al. 2022, arXiv 2104.09937) on the K text domains of each batch.

    One train step = one meta step (``mixjax.fish.fish_lm_step``): K inner
    AdamW steps (one per domain, random order from ``fold_in(rng, step)``),
    then ``θ += meta_lr (θ̃ − θ)`` (``/K`` with ``divide_by_meta_steps``). The
    inner optimiser (``optim`` section) makes K updates per train step, so its
    schedule spans ``K * train.steps`` updates (``optim.warmup_steps`` counts
    inner updates). ``opt_state`` is the inner optimiser's, carried across
    meta steps as in the official code. Needs ``data.sampler=per_domain``.
    Logged: ``domain_loss`` = each domain's inner loss (at the iterate its
    inner step started from), ``grad_norm`` = ‖θ̃ − θ‖ (the meta direction).
    """
    from mixjax import fish
    from mixjax.train import state as state_lib
    cfg, k = trainer.cfg, len(trainer.domains)
    _require_per_domain(cfg, "train.objective='fish'")
    hp = resolved_hparams("fish", cfg.train.objective_hparams)
    tx, schedule = state_lib.make_optimizer(cfg.optim, k * trainer.schedule_steps)
    view = trainer.mixer   # uniform: the sampler's stratified batches, every domain equal
    loss_fn = _token_loss_fn(trainer)
    meta_lr, divide = float(hp["meta_lr"]), bool(hp["divide_by_meta_steps"])

    def init_fn(params):
        return state_lib.new_state(params, tx.init(params), view.init(k), k, cfg.train.seed)

    def step_fn(state, batch, frozen=None):
        del frozen
        params, step = state.params, state.step
        rng = jax.random.fold_in(state.rng, step)
        new_params, opt_state, inner = fish.fish_lm_step(
            loss_fn, params, state.opt_state, tx,
            {"tokens": batch["tokens"], "domain_id": batch["domain_id"]}, rng,
            num_domains=k, meta_lr=meta_lr, divide_by_meta_steps=divide)
        mask = (batch["tokens"][:, 1:] != trainer.pad_id).astype(jnp.float32)
        _, count = domain_stats.domain_totals(mask, mask, batch["domain_id"], k)
        n_tok = count.sum()
        loss = jnp.dot(inner, count) / jnp.maximum(n_tok, 1.0)
        scale = meta_lr / k if divide else meta_lr
        meta_norm = optax.tree.norm(jax.tree.map(
            lambda a, b: (a - b).astype(jnp.float32), new_params, params)) / scale
        bad = _first_nonfinite(inner)
        mix_state = {**state.mix_state, "nonfinite_domain": bad}
        metrics = {"step": step, "objective": loss, "loss": loss, "tokens": n_tok,
                   "domain_loss": inner, "domain_count": count,
                   "weights": view.weights(mix_state),
                   "sampling_weights": batch["sampling_weights"].astype(jnp.float32),
                   "grad_norm": meta_norm, "nonfinite_domain": bad,
                   # inner lr at this meta step's first inner update
                   "lr": jnp.asarray(schedule(step * k), jnp.float32)}
        new_state = state.replace(params=new_params, opt_state=opt_state, mix_state=mix_state,
                                  step=step + 1)
        return new_state, metrics

    return StepParts(step_fn=step_fn, init_fn=init_fn, mixer=view, stratified=True)


register("fish", _fish_objective, hparams=FISH_HPARAMS, check=objective_specs.check_fish)
