"""Resuming a DEMix run's whole train state with a domain expert added or removed.

    mixjax demix RUN_DIR --add D (--from E | --closest-on F) --out-run NEW_RUN_DIR [--set K=V]
    mixjax demix RUN_DIR --remove D --out-run NEW_RUN_DIR [--set K=V]
    mixjax train NEW_RUN_DIR/config.json --resume [--set train.steps=N]

``--out-run`` reads the run's latest checkpoint (params, Adam state, mixer state, step,
RNG, sampler state) and writes ``NEW_RUN_DIR`` as a run that stopped at the same step with
the edited domain set: ``config.json`` (the run's config with ``model.hparams.num_experts``,
``data.domains`` in the new expert order, ``train.run_dir``, ``model.init_from`` unset and
the LR schedule's length kept in ``optim.schedule_steps``), ``checkpoints/<step>/``, and
``demix_edit.json`` (the source run, step, edit and domain map). Resuming it continues the
run; its logs start at that step (the source run's logs stay in the source run dir).

Every edit is one map over domains, ``index``: new domain ``j`` is old domain ``index[j]``
(an added domain maps to the expert it copies, a removed one is left out), applied to

* the params: every DEMix layer's stacked experts (:func:`mixjax.models.demix.select_experts`);
* the optimiser state: every params-shaped subtree of it (Adam's ``mu`` and ``nu``, found by
  ``optax.tree_utils.tree_map_params``) gets the same gather on its expert leaves, so an
  added expert starts with **its source expert's moments** and a removed one's are dropped;
  the counts (Adam's bias correction, the LR schedule's step) are kept. Why copy, not zero:
  optax keeps one count for all parameters, so after ``t`` steps the bias corrections
  ``1 - b^t`` are ~1 and a zeroed expert's first update is ``m/sqrt(v) = (1-b1) g /
  sqrt((1-b2) g^2)``: a sign step of ``(1-b1)/sqrt(1-b2)`` x lr on every coordinate
  whatever the gradient's history (3.2 with b2 0.999: the largest step Adam can take,
  Kingma & Ba 2015 sec. 2.1; 0.45 with the default b2 0.95), and ``v`` then rests on a handful of gradients for
  ~1/(1-b2) steps. The copied moments describe the same weights' gradient statistics (on
  the source domain), so the new expert's first steps are scaled like its source's; the
  price is that the source domain's momentum direction lingers for ~1/(1-b1) = 10 steps;
* the mixer state: each leaf is compared with the mixer's fresh state for the new domain
  count; an axis whose size goes from K to K' is a domain axis and is gathered (an added
  domain starts from its source domain's entries); a leaf changing otherwise is an error
  naming it. The common ``weights`` (a distribution) are renormalised to sum 1 and
  ``weight_sum`` to sum ``num_weights``;
* ``eval_loss`` (the added domain shows its source's until the next evaluation);
* the sampler state: the per-domain stream positions are kept by name (an added domain's
  stream starts at its beginning), the weight schedule gathered and renormalised, the
  stratified remainder gathered (0 for an added domain).

The step counter and the RNG are kept. Only the default ``train.objective='mixer'`` is
supported (a Method's own ``extra`` state is refused with one line naming the key).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mixjax import config as config_lib
from mixjax import mixing
from mixjax.config import ConfigError
from mixjax.core import state as state_lib
from mixjax.models import demix
from mixjax.train import checkpoint as ckpt_lib


def domain_map(domains, *, add=None, source=None, remove=None) -> tuple[list, np.ndarray]:
    """``(new_domains, index)``: the new expert order and ``index[j]``, the old domain new
    domain ``j`` is (module docstring); ``source``: the index ``add`` copies."""
    domains = list(domains)
    if add is not None:
        return domains + [add], np.array(list(range(len(domains))) + [source], np.int32)
    j = domains.index(remove)
    keep = [i for i in range(len(domains)) if i != j]
    return [domains[i] for i in keep], np.array(keep, np.int32)


def _expert_mask(params):
    return demix._expert_leaves(jax.tree.map(lambda _: False, params), lambda _: True)


def edit_opt_state(tx: optax.GradientTransformation, opt_state, params, index):
    """``opt_state`` with every params-shaped subtree's expert leaves gathered by ``index``
    (``params``: the state's params, for the expert leaves; counts untouched)."""
    idx = jnp.asarray(index, jnp.int32)
    return optax.tree_utils.tree_map_params(
        tx, lambda x, expert: jnp.take(x, idx, axis=0) if expert else x, opt_state,
        _expert_mask(params))


def edit_mix_state(mix_state, fresh, index, k_old: int):
    """The mixer state for the new domains (module docstring); ``fresh``: the mixer's state
    (or its shapes) for ``len(index)`` domains."""
    k_new = len(index)
    if jax.tree.structure(mix_state) != jax.tree.structure(fresh):
        raise ConfigError("config key 'mixing.name': the mixer's state has another layout "
                          f"for {k_new} domains than for {k_old}; it cannot be carried over")

    def one(path, x, like):
        x = np.asarray(x)
        if x.shape == tuple(like.shape):
            return x
        ok = len(x.shape) == len(like.shape) and all(
            (m, n) in ((k_old, k_new),) for m, n in zip(x.shape, like.shape) if m != n)
        if not ok:
            raise ConfigError(f"config key 'mixing.name': mixer state leaf "
                              f"{jax.tree_util.keystr(path)} goes from shape {x.shape} to "
                              f"{tuple(like.shape)}, not along a domain axis ({k_old} -> "
                              f"{k_new}); it cannot be carried over")
        for axis, (m, n) in enumerate(zip(x.shape, like.shape)):
            if m != n:
                x = np.take(x, index, axis=axis)
        return x

    out = jax.tree_util.tree_map_with_path(one, mix_state, fresh)
    if isinstance(out, dict) and np.ndim(out.get("weights")) == 1:
        w = np.asarray(_normalised(np.asarray(out["weights"], np.float64)))
        out["weights"] = w.astype(np.asarray(out["weights"]).dtype)
        if np.ndim(out.get("weight_sum")) == 1 and "num_weights" in out:
            ws = np.asarray(out["weight_sum"], np.float64)
            if ws.sum() > 0:
                out["weight_sum"] = (ws * float(out["num_weights"]) / ws.sum()).astype(
                    np.asarray(out["weight_sum"]).dtype)
    return out


def edit_sampler_state(state: dict, new_domains, index) -> dict:
    """A ``DomainSampler.get_state()`` for the new domains (module docstring)."""
    state = json.loads(json.dumps(state))            # a deep copy
    names = set(new_domains)
    state["config"]["domains"] = list(new_domains)
    for key in ("domains", "weights"):               # per-domain stream states, by name
        if isinstance(state.get(key), dict):
            state[key] = {n: v for n, v in state[key].items() if n in names}
    comp = state["composer"]
    idx = list(index)
    k_old = len(comp["remainder"])
    comp["schedule"] = [[s, _normalised(np.asarray(w, np.float64)[idx])]
                        for s, w in comp["schedule"]]
    comp["remainder"] = [float(comp["remainder"][i]) if j < k_old else 0.0
                         for j, i in enumerate(idx)]
    return state


def _normalised(w: np.ndarray) -> list:
    """``w`` scaled to sum 1 (uniform when nothing is left: the weighted domains removed)."""
    return list(w / w.sum() if w.sum() > 0 else np.full(len(w), 1.0 / len(w)))


def abstract_state(cfg, mcfg: demix.DEMixConfig, domains):
    """``(tx, TrainState of ShapeDtypeStructs)`` a run of ``cfg`` over ``domains`` with the
    model ``mcfg`` has (the default ``mixer`` objective's state)."""
    _, abstract, _ = demix.abstract_init(mcfg)
    tx, _ = state_lib.make_optimizer(cfg.optim, cfg.optim.schedule_steps or cfg.train.steps)
    k = len(domains)
    target = cfg.grads.target
    try:
        mixer = mixing.build(cfg.mixing.name, cfg.mixing.hparams, domains=tuple(domains),
                             token_counts=np.ones(k, np.int64), apply_to=cfg.mixing.apply_to,
                             total_steps=cfg.train.steps,
                             tokens_per_step=cfg.data.batch_size * cfg.data.seq_len,
                             num_targets=None if target is None else
                             (len(target) if isinstance(target, tuple) else 1))
    except (ValueError, TypeError, KeyError) as e:
        msg = e.args[0] if e.args and isinstance(e.args[0], str) else str(e)
        raise ConfigError(f"config key 'mixing.hparams': with domains {list(domains)}: "
                          f"{msg}") from None
    return tx, jax.eval_shape(
        lambda p: state_lib.init_state(p, tx, mixer, k, cfg.train.seed), abstract)


def edit_train_state(state, *, tx, index, new_abstract):
    """The whole train state for the new domains (module docstring), checked against
    ``new_abstract`` (the state a run over them has)."""
    if state.extra:
        raise ConfigError(f"config key 'train.objective': its state {sorted(state.extra)} "
                          "cannot be carried over an expert edit (the mixer objective can)")
    idx = np.asarray(index)
    new = state_lib.TrainState(
        params=demix.select_experts(state.params, idx),
        opt_state=edit_opt_state(tx, state.opt_state, state.params, idx),
        mix_state=edit_mix_state(state.mix_state, new_abstract.mix_state, idx,
                                 int(np.shape(state.eval_loss)[0])),
        step=state.step, rng=state.rng, eval_loss=np.asarray(state.eval_loss)[idx], extra={})
    new = jax.tree.map(lambda x, a: jnp.asarray(x, a.dtype), new, new_abstract)
    problem = ckpt_lib._tree_problem(new, new_abstract)
    if problem:
        raise ConfigError(f"config key 'model.hparams': the edited state does not fit the new "
                          f"run: {problem}")
    return new


def new_config(cfg, new_domains, out_run, overrides=()):
    """The config of the edited run (module docstring)."""
    new = config_lib.from_dict(config_lib.to_dict(cfg))
    new.model.hparams = {**(new.model.hparams or {}), "num_experts": len(new_domains)}
    new.data.domains = tuple(new_domains)
    new.train.run_dir = str(out_run)
    new.model.init_from = None
    new.optim.schedule_steps = cfg.optim.schedule_steps or cfg.train.steps
    for item in overrides:
        config_lib.apply_override(new, item)
    config_lib.validate(new)
    return new


def plan_run(out_run, *, cfg, info, new_domains, overrides=()):
    """``(new_cfg, tx, new_abstract)`` of the edited run, checked before any checkpoint is
    read (an existing ``out_run``, a bad ``--set``, a mixer that cannot take the new domains:
    one line naming it)."""
    from mixjax.train import checks
    out_run = pathlib.Path(out_run)
    if out_run.exists() and any(out_run.iterdir()):
        raise FileExistsError(f"--out-run {str(out_run)!r} already exists; pick a new directory")
    new_cfg = new_config(cfg, new_domains, out_run, overrides)
    checks.check_names(new_cfg)
    mcfg = dataclasses.replace(demix.DEMixConfig(**info["model"]), num_experts=len(new_domains))
    tx, new_abstract = abstract_state(new_cfg, mcfg, new_domains)
    return new_cfg, tx, new_abstract


def write_run(run_dir, out_run, *, new_cfg, tx, new_abstract, new_domains, index, how, step,
              state, host):
    """Writes ``out_run`` (module docstring) from the restored ``state`` and ``host`` of
    checkpoint ``step`` (:func:`plan_run` gives ``new_cfg``, ``tx``, ``new_abstract``)."""
    out_run = pathlib.Path(out_run)
    new_state = edit_train_state(state, tx=tx, index=index, new_abstract=new_abstract)
    sampler = edit_sampler_state(host["sampler"], new_domains, index)
    host = {k: v for k, v in host.items() if k not in ("checksum", "sampler")}
    out_run.mkdir(parents=True, exist_ok=True)
    (out_run / "config.json").write_text(config_lib.to_json(new_cfg) + "\n")
    ck = ckpt_lib.Checkpointer(out_run / "checkpoints")
    try:
        ck.save(step, new_state, {**host, "sampler": sampler}, process={"sampler": sampler})
    finally:
        ck.close()
    (out_run / "demix_edit.json").write_text(json.dumps(
        {"source_run": str(run_dir), "step": int(step), **how, "domains": list(new_domains),
         "index": [int(i) for i in index]}, indent=2) + "\n")


def restore_run(run_dir, cfg, info):
    """``(step, state, host)`` of the run's latest checkpoint (its whole train state)."""
    run_dir = pathlib.Path(run_dir)
    if cfg.train.objective != "mixer":
        raise ConfigError(f"config key 'train.objective': {cfg.train.objective!r}; --out-run "
                          "carries the 'mixer' objective's state only")
    _, abstract = abstract_state(cfg, demix.DEMixConfig(**info["model"]), info["domains"])
    ck = ckpt_lib.Checkpointer(run_dir / "checkpoints")
    try:
        step = ck.latest_step()
        if step is None:
            raise FileNotFoundError(f"run dir {str(run_dir)!r} has no checkpoint")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sharding info not provided")
            state, host, _ = ck.restore_verified(step, abstract)
    finally:
        ck.close()
    return step, state, host
