"""The default Method: one model, whose domain weights come from the ``mixing`` section.

The mixer (``mixjax.mixing``: GroupDRO, DoReMi, DoGE, DGA, R&B, ...) updates
the weights inside the compiled step, from the statistics it ``requires``
(``mixjax.mixing.statistics``); the weights act on sampling and/or the loss
(``mixjax.core.step.make_train_step`` has the equations). What the step needs
follows from those statistics: a reference model (``train.reference``), a
target batch (``grads.target``) or the gradient engine (``grads`` section).
"""

from __future__ import annotations

from mixjax import mixing
from mixjax.errors import ConfigError
from mixjax.methods.base import Method, MethodContext, StepParts, register, require_per_domain
from mixjax.mixing import grads, sample_reweight, statistics
from mixjax.core import state as state_lib
from mixjax.core import step as step_lib


def weights_can_change(mixer) -> bool:
    """False only for a registered mixer whose ``update`` is the base class's no-op (uniform,
    temperature, manual, ...): its weights are fixed at init."""
    return not (isinstance(mixer, mixing.Mixer) and type(mixer).update is mixing.Mixer.update)


@register
class MixerMethod(Method):
    name = "mixer"
    uses_mixer = True

    def build(self, ctx: MethodContext, hp) -> StepParts:
        cfg, k, mixer = ctx.cfg, ctx.num_domains, ctx.mixer
        try:
            statistics.check_known(mixer.requires, f"mixer {mixer.name!r}")
        except ValueError as e:
            raise ConfigError(f"config key 'mixing.name': {e}") from e
        needs = statistics.needs_of(mixer.requires)
        ref_apply = frozen = None
        if "reference" in needs:
            if cfg.train.reference is None or ctx.load_reference is None:
                raise ConfigError(
                    f"config key 'train.reference': mixer {cfg.mixing.name!r} requires "
                    f"{sorted(statistics.needing('reference', mixer.requires))}; "
                    "set it to the run dir of a trained reference model")
            ref_apply, ref_params = ctx.load_reference()
            frozen = state_lib.FrozenInputs(ref_params=ref_params)
        grad_stats, stratified = None, False
        if "gradient_engine" in needs:
            grad_stats, stratified = _grad_stats(
                ctx, statistics.needing("gradient_engine", mixer.requires))
        step_fn = step_lib.make_train_step(
            apply=ctx.apply, mixer=mixer, tx=ctx.tx, num_domains=k, pad_id=ctx.pad_id,
            lr_schedule=ctx.schedule, grad_accum=cfg.train.grad_accum, ref_apply=ref_apply,
            sample_weights=_sample_weights_fn(cfg), grad_stats=grad_stats, jit=False)

        def init_fn(params):
            return state_lib.init_state(params, ctx.tx, mixer, k, cfg.train.seed)

        return StepParts(step_fn=step_fn, init_fn=init_fn, weights=mixer,
                         weights_move=weights_can_change(mixer),
                         needs_target="target_batch" in needs, stratified=stratified,
                         frozen=frozen)


def _sample_weights_fn(cfg):
    """Per-sequence weights ``s_b`` of ``mixing.sample_reweight`` (None: all 1)."""
    if cfg.mixing.sample_reweight is None:
        return None
    return sample_reweight.get(cfg.mixing.sample_reweight, **cfg.mixing.sample_reweight_hparams)


def _grad_stats(ctx: MethodContext, needs):
    """The gradient-statistics hook (mixjax.mixing.grads), checked before anything compiles."""
    cfg = ctx.cfg
    try:
        gcfg = grads.GradConfig(strategy=cfg.grads.strategy, layout=cfg.grads.layout,
                                chunk_size=cfg.grads.chunk_size,
                                param_filter=cfg.grads.param_filter,
                                jvp_microbatches=cfg.grads.jvp_microbatches,
                                blocked=ctx.blocked_batches)
        grads.check_request(gcfg, needs, who=f"mixer {ctx.mixer.name!r}")
    except ValueError as e:
        raise ConfigError(str(e)) from e
    # the per-example statistics take any batch composition; only per-domain ones regroup
    if gcfg.stratified and set(needs) - grads.EXAMPLE_STATS:
        require_per_domain(cfg, f"grads.layout={gcfg.layout!r} with strategy "
                                f"{gcfg.strategy!r}", " (or grads.layout=rows / grads.strategy=jvp)")
    return (grads.make_grad_stats(gcfg, ctx.num_domains),
            gcfg.stratified and bool(set(needs) - grads.EXAMPLE_STATS))
