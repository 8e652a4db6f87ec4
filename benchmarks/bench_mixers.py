"""Step time of the loss-signal mixers relative to plain training, measured side by side.

    python benchmarks/bench_mixers.py [--d-model 128 --layers 2 --seq 128 --batch 16
                                       --domains 8 --steps 20 --rounds 5]

Every method compiles the same train step (``mixjax.core.step.make_train_step``)
for the same model, optimiser and batch; only the mixer (and for DoReMi/tDRO
the frozen reference forward pass) differs. Methods run in interleaved rounds
(a shuffled order each round) so machine-load drift hits them alike. Each
method's ratio is the median over rounds of (its step time / plain's step time
in the same round). Two clocks: wall time, and process CPU time (all threads),
which is far less disturbed when other jobs share the cores; on a shared
machine read the CPU-time column.

Gradient aggregators (``pcgrad``, ``mgda``, ``upgrad``) run on the vmap gradient
engine (K per-domain gradients, their Gram matrix, one weighted combine); their
ratio to plain training includes that engine. ``gram[mean]`` is the same engine
with constant coefficients 1/K, so aggregator / gram[mean] is the cost of the
K x K solve itself. ``gram[mean] two-pass`` also asks for the token mask, which
makes the step run its own full-batch forward next to the engine's (the step
before the engine supplied the per-domain losses): the cost of that pass. Aioli and Skill-it read ``eval_loss``: their rows are the
ordinary step (the update runs every step, branch-free); the evaluations they
request (Aioli: K lp_rounds + 1 per round; Skill-it: one per ``eval_every``) are
timed separately with the eval set of ``--eval-seqs`` sequences per domain and
reported as an amortised cost per round.

``dids`` runs the same vmap engine plus the target batch's gradient (``grad_dot``,
``target_grad_norm``, ``target_loss``; a 4-sequence ``target_tokens`` block in the batch)
and its round update every step.

ADO refits its power law every ``refit_every`` (1000) steps inside the step
(``lax.cond``): ``ado`` is the ordinary step, ``ado[refit]`` a step that refits
every time, and the ``ado amortised`` line adds (refit - ordinary) / 1000.

Targets (issue): <= 1.05x plain for GroupDRO, ODM, ADO, sample reweighting, ToReMi;
<= 1.45x for DoReMi and DRRho (one extra forward pass of the reference model).
``--only plain,doremi,drrho,toremi --steps 3 --rounds 5`` (2026-12-04, load ~9, plain
203 ms CPU/step): CPU ratio doremi 1.22, drrho 1.26, toremi 1.01.
``--only "plain,gram[mean],dids" --steps 5 --rounds 5`` (2026-12-05, load ~1, plain 152 ms
CPU/step): CPU ratio gram[mean] 1.01, dids 2.25 while DIDS ran the step's own forward and
backward next to the engine; with its model gradient from the engine (``model_gradient =
"coeffs"``, same load, plain 152 ms): gram[mean] 1.00, dids 1.23 (target 1.25).
``--only plain,agent --steps 3 --rounds 5`` (2026-12-05, load ~6, plain 171 ms CPU/step):
CPU ratio agent 0.99 (a random policy of the default size, deciding every step).
``--only plain,prospect,feasible,iwrm --steps 3 --rounds 5`` (2026-12-05, load ~6, plain 172 ms
CPU/step): CPU ratio prospect 1.02, feasible 1.03, iwrm 1.31 (target 1.5: the B x B Gram of
the per-sequence gradients).
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import random
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from mixjax import mixing
from mixjax.config import OptimConfig
from mixjax.mixing import sample_reweight
from mixjax.models import transformer
from mixjax.core import state as state_lib
from mixjax.core import step as step_lib
from mixjax.mixing import statistics as stat_registry

TARGETS = {"aioli": 1.05, "skillit": 1.05, "pcgrad": 1.25, "mgda": 1.25, "upgrad": 1.25,
           "groupdro": 1.05, "odm": 1.05, "odm_smoothed": 1.05, "ado": 1.05,
           "ado amortised": 1.05, "quadratic reweight": 1.05, "doremi": 1.45, "tdro": 1.45,
           "drrho": 1.45, "toremi": 1.05, "agent": 1.05, "iwrm": 1.5}


def methods(refit_every: int):
    """name -> (mixer name, hparams, sample reweighting shape or None)."""
    return {
        "plain": ("uniform", {}, None),
        "groupdro": ("groupdro", {}, None),
        "doremi": ("doremi", {"vocab_size": 264}, None),
        "tdro": ("tdro", {}, None),
        "odm": ("odm", {"warmup_steps": 0}, None),
        "odm_smoothed": ("odm_smoothed", {"warmup_steps": 0}, None),
        "ado": ("ado", {"start_step": 0, "ignore_steps": 0, "refit_every": refit_every}, None),
        "ado[refit]": ("ado", {"start_step": 0, "ignore_steps": 0, "refit_every": 1,
                               "min_fit_points": 1}, None),
        "quadratic reweight": ("uniform", {}, "quadratic"),
        "aioli": ("aioli", {"update_steps": 250, "lp_rounds": 1, "lp_steps": 5,
                            "one_hot_factor": 0.5, "ema": 0.5, "normalize_A": True}, None),
        "skillit": ("skillit", {"update_steps": 250}, None),
        "gram[mean]": ("_bench_gram_mean", {}, None),
        # DIDS: the vmap engine (K gradients, norms, dots with a target gradient) + its round
        # update, here every step (the update is branch-free); compare with gram[mean]
        "dids": ("dids", {"update_every": 1}, None),
        "gram[mean] two-pass": ("_bench_gram_mean_two_pass", {}, None),
        "pcgrad": ("pcgrad", {}, None),
        "mgda": ("mgda", {}, None),
        "upgrad": ("upgrad", {}, None),
        "drrho": ("drrho", {}, None),        # + the reference's forward pass, like DoReMi
        "toremi": ("toremi", {"adjust_every": 1}, None),   # the adjustment is branch-free
        # the Data Mixing Agent with a random policy of the default size, deciding every
        # step (the decision is branch-free: the policy runs in every step anyway)
        "agent": ("agent", {"interval": 1}, None),
        # sample-level rules (docs/selection.md): sorted-loss weights, per-sequence duals, and
        # UPGrad over the B x B Gram of the per-sequence gradients (the vmap engine)
        "prospect": ("prospect", {}, None),
        "feasible": ("feasible", {}, None),
        "iwrm": ("iwrm", {}, None),
    }


def random_policy(k: int) -> str:
    """A policy file of ``mixjax search agent``'s default size with random weights."""
    import tempfile
    from mixjax.mixing import agent_policy
    history, hidden = 2, 32     # mixjax search agent's --history / --hidden defaults
    _, params = agent_policy.init_policy(k, history, hidden, seed=0)
    d = agent_policy.feature_dim(k, history)
    stem = pathlib.Path(tempfile.mkdtemp(prefix="bench_agent_")) / "agent"
    agent_policy.save(stem, params, np.zeros(d), np.ones(d),
                      {"domains": [f"d{i}" for i in range(k)], "history": history,
                       "hidden": hidden, "interval": 1})
    return str(stem)


@mixing.register
@dataclasses.dataclass(frozen=True, kw_only=True)
class _GramMean(mixing.Mixer):
    """Bench baseline: the vmap engine's Gram matrix with constant coefficients 1/K."""
    name = "_bench_gram_mean"
    requires = frozenset({"gram", "count"})
    default_apply_to = "loss"
    model_gradient = "coeffs"

    def gradient_coeffs(self, state, stats):
        return jnp.full_like(stats["count"], 1.0 / stats["count"].shape[0])


@mixing.register
@dataclasses.dataclass(frozen=True, kw_only=True)
class _GramMeanTwoPass(_GramMean):
    """``_GramMean`` plus a per-token statistic: the step runs a second full-batch forward."""
    name = "_bench_gram_mean_two_pass"
    requires = frozenset({"gram", "count", "token_mask"})


def build(args, name, spec, params, apply, k):
    mixer_name, hp, shape = spec
    if mixer_name == "agent":
        hp = {**hp, "policy": random_policy(k)}
    mixer = mixing.get(mixer_name, **hp)
    tx, schedule = state_lib.make_optimizer(OptimConfig(), 10_000)
    needs_ref = bool(stat_registry.needing("reference", mixer.requires))
    sw = sample_reweight.get(shape, burn_in=0) if shape else None
    gs = None
    if stat_registry.needing("gradient_engine", mixer.requires):
        from mixjax.mixing import grads
        gs = grads.make_grad_stats(grads.GradConfig(strategy="vmap"), k)
    step = step_lib.make_train_step(apply=apply, mixer=mixer, tx=tx, num_domains=k, pad_id=256,
                                    lr_schedule=schedule, ref_apply=apply if needs_ref else None,
                                    sample_weights=sw, grad_stats=gs)
    frozen = state_lib.FrozenInputs(ref_params=jax.tree.map(jnp.copy, params)) \
        if needs_ref else None
    state = state_lib.init_state(jax.tree.map(jnp.copy, params), tx, mixer, k, 0)
    return (lambda s, b: step(s, b, frozen)), state


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--domains", type=int, default=8)
    p.add_argument("--steps", type=int, default=20, help="steps per timing")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--refit-every", type=int, default=1000)
    p.add_argument("--only", default=None, help="comma-separated subset of methods")
    p.add_argument("--eval-seqs", type=int, default=16, help="eval sequences per domain")
    args = p.parse_args(argv)

    k = args.domains
    cfg = transformer.TransformerConfig(vocab_size=264, d_model=args.d_model,
                                        num_layers=args.layers, num_heads=args.heads)
    apply, params, _ = transformer.init(cfg, 0)
    rng = np.random.default_rng(0)
    batch = {"tokens": jnp.asarray(rng.integers(0, 256, (args.batch, args.seq + 1)), jnp.int32),
             "domain_id": jnp.asarray(np.arange(args.batch) % k, jnp.int32),
             "sampling_weights": jnp.full((k,), 1.0 / k, jnp.float32),
             # a target batch (grads.target's split): read only by mixers that need one (dids)
             "target_tokens": jnp.asarray(rng.integers(0, 256, (4, args.seq + 1)), jnp.int32)}
    specs = methods(args.refit_every)
    if args.only:
        wanted = ["plain"] + [m for m in args.only.split(",") if m != "plain"]
        specs = {m: specs[m] for m in wanted}
    runs = {}
    for name, spec in specs.items():
        step, state = build(args, name, spec, params, apply, k)
        state, m = step(state, batch)                       # compile + first step
        jax.block_until_ready(m["objective"])
        runs[name] = [step, state]
    wall: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    order = list(runs)
    for r in range(args.rounds):
        random.Random(r).shuffle(order)
        for name in order:
            step, state = runs[name]
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                state, m = step(state, batch)
            jax.block_until_ready(m["objective"])
            wall[name].append((time.perf_counter() - t0) / args.steps)
            cpu[name].append((time.process_time() - c0) / args.steps)
            runs[name][1] = state

    def ratios(times):
        out = {name: statistics.median(t / p for t, p in zip(v, times["plain"]))
               for name, v in times.items()}
        if "ado" in out and "ado[refit]" in out:
            out["ado amortised"] = out["ado"] + (out["ado[refit]"] - out["ado"]) / args.refit_every
        return out

    wall_r, cpu_r = ratios(wall), ratios(cpu)
    amortised = {}
    if "aioli" in runs or "skillit" in runs:
        # one validation pass over K x eval_seqs sequences, in plain-step units
        eval_fn = step_lib.make_eval_fn(apply, 256)
        toks = jnp.asarray(rng.integers(0, 256, (k * args.eval_seqs, args.seq + 1)), jnp.int32)
        jax.block_until_ready(eval_fn(params, toks))
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(args.steps):
            out = eval_fn(params, toks)
        jax.block_until_ready(out)
        ev_cpu = (time.process_time() - c0) / args.steps / statistics.median(cpu["plain"])
        ev_wall = (time.perf_counter() - t0) / args.steps / statistics.median(wall["plain"])
        print(f"one evaluation ({k} x {args.eval_seqs} seqs) = {ev_wall:.2f} plain steps wall, "
              f"{ev_cpu:.2f} CPU")
        for name, n_eval in (("aioli", k + 1), ("skillit", 1)):
            if name in runs:
                amortised[name] = n_eval * ev_cpu / 250
                print(f"{name}: {n_eval} evaluations per 250-step round: +{amortised[name]:.3f} "
                      f"plain steps per step (CPU); amortised CPU ratio "
                      f"{cpu_r[name] + amortised[name]:.3f}")
    if "gram[mean]" in runs:
        for name in ("pcgrad", "mgda", "upgrad"):
            if name in runs:
                print(f"{name} / gram[mean] (the K x K solve alone): wall "
                      f"{wall_r[name] / wall_r['gram[mean]']:.3f}, CPU "
                      f"{cpu_r[name] / cpu_r['gram[mean]']:.3f}")
    print(f"device {jax.devices()[0].platform}, model d={args.d_model} L={args.layers}, "
          f"batch {args.batch}x{args.seq}, K={k}, {args.rounds} rounds x {args.steps} steps")
    print(f"plain: {1e3 * statistics.median(wall['plain']):.1f} ms/step wall, "
          f"{1e3 * statistics.median(cpu['plain']):.1f} ms/step CPU")
    print(f"{'method':<20}{'wall ratio':>11}{'CPU ratio':>11}{'target':>8}")
    for name in cpu_r:
        target = TARGETS.get(name)
        flag = "" if target is None else ("  ok" if cpu_r[name] <= target else "  OVER")
        tgt = f"{target:.2f}" if target else "-"
        print(f"{name:<20}{wall_r[name]:>11.3f}{cpu_r[name]:>11.3f}{tgt:>8}{flag}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
