"""Does each target-directed or robust mixer achieve its own objective?

Each method is run on a controlled synthetic case built so that its intended effect
is large, next to the ``uniform`` mixer on the same budget, data, model and seeds,
and judged on the objective the method states (not on the average loss):

* **target case** (DoGE, DGA, bilevel, UPGrad-target, DIDS): four training languages
  a-d; the target batch is 64 sequences of ``c`` (its data exists in one training
  domain only). Objective: ``c``'s loss on 64 other sequences after the budget.
* **out-of-domain target** (DoGE ``target=ood``): the same four training languages
  and a held-out domain ``t`` drawn from ``c``'s process (other sequences); ``t`` is
  never trained on. Objective: ``t``'s validation loss.
* **robust case** (GroupDRO, tDRO): three easy languages and a harder,
  learnable one (``d``: its next symbol depends on the one two back) that the natural mixture
  under-samples (10% of the tokens). Objective: the worst domain's validation loss.
  tDRO reads a reference model: the ``uniform`` run of the same seed. The natural
  mixture's ERM (``natural``) is shown too, since GroupDRO samples by it.
* **DRRho** (per-sequence DRO of the excess loss over a reference, whose stated aim
  is generalisation): the robust case; objective: the mean validation loss over the
  four domains; reference: the ``uniform`` run of the same seed.

A language over the symbols 0..P-1 is ``x_{t+1} = (a x_{t+1-k} + c) mod P`` with lag
k = 1 (the easy ones) or k = 2 (the hard one: the model must look two tokens back),
each symbol replaced by a uniform one with probability ``noise``; the model learns each quickly, and the losses'
differences come from how many tokens of a language it saw.

    python experiments/objective_checks.py                       # all methods, 5 seeds
    python experiments/objective_checks.py --methods groupdro --seeds 0,1,2

Output: one line per run (``--out`` JSONL, resumable: finished runs are skipped) and the
markdown table of docs/mixing.md: per method, the paired difference method - uniform
on its objective (mean, 95% t-interval over seeds; below 0 means the method achieved
its objective better than uniform).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mixjax.compare.stats import paired_interval  # noqa: E402
from mixjax.config import Config  # noqa: E402
from mixjax.data.generated import GeneratedSampler  # noqa: E402
from mixjax.train import loop  # noqa: E402
from mixjax.train.data import TrainData  # noqa: E402

P = 47           # symbols 0..P-1
PAD = P          # vocabulary P + 1


@dataclasses.dataclass(frozen=True)
class Language:
    a: int
    c: int
    order: int = 1
    noise: float = 0.05

    def sequences(self, n: int, length: int, rng: np.random.Generator) -> np.ndarray:
        x = np.empty((n, length), np.int32)
        x[:, :2] = rng.integers(0, P, (n, 2))
        for t in range(2, length):
            x[:, t] = (self.a * x[:, t - self.order] + self.c) % P
        flip = rng.random((n, length)) < self.noise
        x[flip] = rng.integers(0, P, int(flip.sum()))
        return x


TARGET_LANGS = {"a": Language(3, 1), "b": Language(5, 2), "c": Language(7, 3),
                "d": Language(11, 4)}
ROBUST_LANGS = {"a": Language(3, 1), "b": Language(5, 2), "c": Language(7, 3),
                "d": Language(11, 4, order=2)}
CASES = {
    # name: (training languages, natural token shares, held-out domains: their process)
    "target": (TARGET_LANGS, (0.25, 0.25, 0.25, 0.25), {}),
    "ood": (TARGET_LANGS, (0.25, 0.25, 0.25, 0.25), {"t": TARGET_LANGS["c"]}),
    "robust": (ROBUST_LANGS, (0.3, 0.3, 0.3, 0.1), {}),
}


def make_data(cfg: Config, case: str) -> TrainData:
    langs, shares, heldout = CASES[case]
    s, n_eval = cfg.data.seq_len, cfg.eval.num_seqs
    # Evaluation sequences, and apart from them the target batches a target-directed method
    # trains against (grads.target's split): fixed seeds, apart from every training stream,
    # so the objective is measured on sequences no method has seen.
    every = list({**langs, **heldout}.items())
    eval_sets = {d: lang.sequences(n_eval, s + 1, np.random.default_rng([10_000, i]))
                 for i, (d, lang) in enumerate(every)}
    target_sets = {d: lang.sequences(n_eval, s + 1, np.random.default_rng([20_000, i]))
                   for i, (d, lang) in enumerate(every)}

    names, seed = tuple(langs), cfg.train.seed

    def generate(k, start, n, length):   # one generator per (seed, domain, first row)
        return langs[names[k]].sequences(n, length, np.random.default_rng([seed, k, start]))

    def make_sampler(weights):
        return GeneratedSampler(names, generate, batch_size=cfg.data.batch_size, seq_len=s,
                                weights=weights, mode=cfg.data.sampler, lag=cfg.data.lag,
                                seed=seed)

    return TrainData(domains=tuple(langs), token_counts=tuple(1e6 * x for x in shares),
                     vocab_size=P + 1, pad_id=PAD, eval_sets=eval_sets,
                     make_sampler=make_sampler, heldout_domains=tuple(heldout),
                     target_sets=target_sets)


def base_config(run_dir, seed: int, steps: int) -> Config:
    cfg = Config(name="objective_check")
    cfg.data.seq_len, cfg.data.batch_size = 32, 16
    cfg.model.d_model, cfg.model.num_layers, cfg.model.num_heads = 32, 2, 4
    cfg.optim.lr, cfg.optim.warmup_steps = 1e-2, 10
    cfg.train.steps, cfg.train.seed = steps, seed
    cfg.train.eval_every, cfg.train.ckpt_every, cfg.train.log_every = 0, 0, 50
    cfg.train.progress = False
    cfg.train.run_dir = str(run_dir)
    cfg.eval.num_seqs, cfg.eval.batch_size = 64, 64
    return cfg


def _mixer(name, **hp):
    def set_(cfg):
        cfg.mixing.name, cfg.mixing.hparams = name, hp
    return set_


def _with(*setters):
    def set_(cfg):
        for f in setters:
            f(cfg)
    return set_


def _attr(path, value):
    def set_(cfg):
        obj = cfg
        *head, last = path.split(".")
        for h in head:
            obj = getattr(obj, h)
        setattr(obj, last, value)
    return set_


PER_DOMAIN = _attr("data.sampler", "per_domain")   # B/K rows of each domain per batch

# method -> (case, objective, config edits, needs the uniform run as reference)
METHODS = {
    "uniform": (None, None, _mixer("uniform"), False),
    "natural": ("robust", "worst", _mixer("natural"), False),
    "doge": ("target", "c", _with(_mixer("doge", target="ood", mu=0.01),
                                  _attr("grads.target", "c"), _attr("grads.strategy", "vmap"),
                                  _attr("mixing.sampling_weights", "uniform"), PER_DOMAIN), False),
    "doge_ood": ("ood", "t", _with(_mixer("doge", target="ood", mu=0.01),
                                   _attr("grads.target", "t"), _attr("grads.strategy", "vmap"),
                                   _attr("mixing.sampling_weights", "uniform"), PER_DOMAIN), False),
    "dga": ("target", "c", _with(_mixer("dga", eta=1.0, ema=0.5, eps=0.05, start_step=20),
                                 _attr("grads.target", "c"), _attr("grads.strategy", "jvp")),
            False),
    "bilevel": ("target", "c", _with(_attr("train.objective", "bilevel"),
                                     _attr("train.objective_hparams",
                                           {"penalty": 10.0, "lr_p": 0.05}),
                                     _attr("mixing.sampling_weights", "uniform"),
                                     _attr("grads.target", "c"), PER_DOMAIN), False),
    "upgrad_target": ("target", "c", _with(_mixer("upgrad_target"), _attr("grads.target", "c"),
                                           _attr("grads.strategy", "vmap"),
                                           _attr("mixing.sampling_weights", "uniform"), PER_DOMAIN), False),
    "dids": ("target", "c", _with(_mixer("dids", update_every=20, beta=0.2, eps=0.05),
                                  _attr("grads.target", "c"), _attr("grads.strategy", "vmap"),
                                  _attr("grads.layout", "rows")), False),
    "groupdro": ("robust", "worst", _mixer("groupdro", step_size=0.01), False),
    # the same rule with its weights routed to the sampler instead of the loss
    "groupdro_sampling": ("robust", "worst", _with(_mixer("groupdro", step_size=0.01),
                                                   _attr("mixing.apply_to", "sampling")), False),
    "tdro": ("robust", "worst", _with(_mixer("tdro", step_size=0.02, max_grad_norm=1.0),
                                      _attr("mixing.sampling_weights", "uniform"),
                                      _attr("data.sampler", "stratified")), True),
    "drrho": ("robust", "mean", _mixer("drrho", tau=1.0), True),
}


# Each method is compared with uniform; a method that samples by the natural mixture
# also with that mixture's ERM (the same draws, no reweighting).
BASELINES = {"groupdro": ("uniform", "natural"), "groupdro_sampling": ("uniform", "natural"),
             "drrho": ("uniform", "natural")}


def objective(final_eval: dict, what: str, domains) -> float:
    losses = {d: final_eval[f"loss/{d}"] for d in domains}
    if what == "worst":
        return max(losses.values())
    if what == "mean":
        return float(np.mean(list(losses.values())))
    return final_eval[f"loss/{what}"]


def run_one(method: str, case: str, seed: int, steps: int, root: pathlib.Path) -> dict:
    _, what, edit, needs_ref = METHODS[method]
    run_dir = root / f"{case}_{method}_s{seed}"
    cfg = base_config(run_dir, seed, steps)
    edit(cfg)
    if needs_ref:
        cfg.train.reference = str(root / f"{case}_uniform_s{seed}")
    t0 = time.perf_counter()
    result = loop.train(cfg, data=make_data(cfg, case), log=lambda line: None)
    ev = result.final_eval
    langs, _, heldout = CASES[case]
    return {"method": method, "case": case, "seed": seed, "steps": steps,
            "seconds": round(time.perf_counter() - t0, 1),
            "loss": {d: ev[f"loss/{d}"] for d in (*langs, *heldout)},
            "worst": objective(ev, "worst", langs), "mean": objective(ev, "mean", langs)}


def table(records: list[dict], methods, seeds) -> str:
    by = {(r["method"], r["case"], r["seed"]): r for r in records}
    lines = ["| method | case | objective | seeds | method | baseline | difference, 95% interval "
             "| achieved |", "|---|---|---|---|---|---|---|---|"]
    for m in methods:
        case, what, _, _ = METHODS[m]
        if case is None or m == "natural":
            continue

        def val(r):
            return r["loss"][what] if what in r["loss"] else r[what]
        for base in BASELINES.get(m, ("uniform",)):
            ss = [s for s in seeds if (m, case, s) in by and (base, case, s) in by]
            if not ss:
                continue
            a = [val(by[(m, case, s)]) for s in ss]
            b = [val(by[(base, case, s)]) for s in ss]
            iv = paired_interval(a, b)
            verdict = ("yes" if iv.high < 0 else
                       "no (worse)" if iv.low > 0 else "no (interval spans 0)")
            obj = {"worst": "worst-domain loss", "mean": "mean loss"}.get(what, f"loss on {what}")
            lines.append(f"| {m} | {case} | {obj} | {len(ss)} | {np.mean(a):.3f} | {base} "
                         f"{np.mean(b):.3f} | {iv.mean:+.3f} [{iv.low:+.3f}, {iv.high:+.3f}] "
                         f"| {verdict} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", default=",".join(m for m in METHODS if m != "uniform"))
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--out", default="objective_checks.jsonl")
    ap.add_argument("--workdir", default=None, help="run dirs (default: a temporary dir)")
    args = ap.parse_args(argv)
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        ap.error(f"unknown method(s) {unknown}; known: {sorted(METHODS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    root = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="objective_checks_"))
    out = pathlib.Path(args.out)
    records = [json.loads(x) for x in out.read_text().splitlines()] if out.exists() else []
    done = {(r["method"], r["case"], r["seed"]) for r in records}
    cases = sorted({METHODS[m][0] for m in methods})
    for seed in seeds:
        for case in cases:
            todo = ["uniform"] + [m for m in methods if METHODS[m][0] == case]
            for m in todo:
                needs_run = (m, case, seed) not in done or (
                    m == "uniform" and any(METHODS[x][3] for x in todo))
                if not needs_run:
                    continue
                if m == "uniform" and (m, case, seed) in done and \
                        (root / f"{case}_uniform_s{seed}" / "checkpoints").is_dir():
                    continue
                rec = run_one(m, case, seed, args.steps, root)
                if (m, case, seed) not in done:
                    records.append(rec)
                    done.add((m, case, seed))
                    with out.open("a") as f:
                        f.write(json.dumps(rec) + "\n")
                print(f"{m:>14} {case:>6} seed {seed}: worst {rec['worst']:.3f} mean "
                      f"{rec['mean']:.3f} ({rec['seconds']} s)", flush=True)
    print(table(records, methods, seeds))


if __name__ == "__main__":
    main()
