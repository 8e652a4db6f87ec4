"""Gradient-signal mixers on mixpile-tiny: which way do the weights move?

Three checks, each a short run of a tiny LM (byte vocabulary) on four
mixpile-tiny domains (code, literature, news, science) plus, for DoGE
universal, a ``noise`` domain of uniformly random printable characters:

* ``dga``        DGA with target = code's validation split  -> code weight above 1/K
* ``doge-ood``   DoGE out-of-domain, target = code's validation split -> code above 1/K
* ``doge-univ``  DoGE universal (target = the training domains) -> noise below 1/K
* ``bilevel``    ScaleBiO-style bilevel step, validation = code -> code above 1/K

Command (about 1-2 minutes per check on a laptop CPU at the default length)::

    python -m experiments.grad_mixers_tiny [--steps 150] [--which dga,doge-ood,doge-univ,bilevel]

It prints the final and time-averaged weights per domain. The short versions
run in ``tests/test_grad_mixers_tiny.py``. Expected at 150 steps: the
direction of every check holds (code weight > 1/K; noise weight < 1/K).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import tempfile

import numpy as np

DOMAINS = ("code", "literature", "news", "science")


def noise_jsonl(path: pathlib.Path, docs: int = 60, chars: int = 2000, seed: int = 0) -> None:
    """A domain of uniformly random printable ASCII characters (nothing to learn)."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for i in range(docs):
            text = "".join(map(chr, rng.integers(32, 127, size=chars)))
            f.write(json.dumps({"domain": "noise", "source": "random", "id": f"noise:{i}",
                                "text": text}) + "\n")


def spec_file(workdir: pathlib.Path, with_noise: bool) -> pathlib.Path:
    from mixjax.data.corpus import corpus_dir
    root = corpus_dir("mixpile-tiny")
    doms = [{"name": d, "kind": "jsonl", "path": str(root / f"{d}.jsonl")} for d in DOMAINS]
    if with_noise:
        noise_jsonl(workdir / "noise.jsonl")
        doms.append({"name": "noise", "kind": "jsonl", "path": str(workdir / "noise.jsonl")})
    path = workdir / ("spec_noise.json" if with_noise else "spec.json")
    path.write_text(json.dumps({"domains": doms}))
    return path


def base_config(workdir: pathlib.Path, name: str, steps: int, with_noise: bool = False):
    from mixjax.config import Config
    cfg = Config(name=name)
    cfg.data.spec = str(spec_file(workdir, with_noise))
    cfg.data.seq_len = 64
    cfg.data.batch_size = 40 if with_noise else 32
    cfg.model.d_model = 32
    cfg.model.num_layers = 1
    cfg.model.num_heads = 2
    cfg.optim.lr = 3e-3
    cfg.optim.warmup_steps = 5
    cfg.train.steps = steps
    cfg.train.eval_every = 0
    cfg.train.ckpt_every = 0
    cfg.train.progress = False
    cfg.train.run_dir = str(workdir / name)
    cfg.eval.num_seqs = 32            # also the target batch (32 x 64 tokens)
    return cfg


def configure(cfg, which: str):
    if which == "dga":
        cfg.mixing.name = "dga"
        cfg.mixing.hparams = {"eta": 1.0, "ema": 0.5, "start_step": 20}
        cfg.grads.strategy = "jvp"
        cfg.grads.target = "code"
    elif which == "doge-ood":
        cfg.mixing.name = "doge"
        cfg.mixing.hparams = {"target": "ood", "mu": 0.01}
        cfg.mixing.sampling_weights = "uniform"
        cfg.data.sampler = "per_domain"
        cfg.grads.target = "code"
    elif which == "doge-univ":
        cfg.mixing.name = "doge"
        cfg.mixing.hparams = {"target": "universal", "mu": 0.01}
        cfg.mixing.sampling_weights = "uniform"
        cfg.data.sampler = "per_domain"
    else:
        raise ValueError(f"unknown check {which!r}")
    return cfg


def run_check(which: str, steps: int, workdir: pathlib.Path) -> dict:
    """Runs one check; returns {"domains", "final", "average"}."""
    if which == "bilevel":
        return run_bilevel(steps, workdir)
    from mixjax.train.loop import train
    cfg = configure(base_config(workdir, which, steps, with_noise=(which == "doge-univ")), which)
    res = train(cfg)
    lines = (pathlib.Path(cfg.train.run_dir) / "weights.jsonl").read_text().splitlines()
    rows = [json.loads(x) for x in lines]
    domains = list(json.loads((pathlib.Path(cfg.train.run_dir) / "run_info.json").read_text())
                   ["domains"])
    final = _weights_row(rows[-1], domains)
    # time average from the mixer state (the quantity DoGE outputs)
    from mixjax import mixing
    mixer = mixing.get(cfg.mixing.name, **cfg.mixing.hparams)
    avg = np.asarray(mixer.average(res.state.mix_state)) if res.state is not None else None
    return {"domains": domains, "final": final, "average": None if avg is None else avg.tolist()}


def _weights_row(row, domains):
    w = row.get("weights", row)
    if isinstance(w, dict):
        return [float(w[d]) for d in domains]
    return [float(x) for x in w]


def run_bilevel(steps: int, workdir: pathlib.Path) -> dict:
    """The bilevel Method's step (mixjax.methods.bilevel) driven by a minimal loop, with the
    target batch from ``code``. u and w share AdamW(3e-3, weight decay 5e-4); p uses Adam(0.05).
    (The figures in docs/gradients.md were taken with an earlier standalone step that gave u
    no weight decay.)"""
    import jax
    import jax.numpy as jnp
    import optax

    from mixjax import methods
    from mixjax.models import transformer
    from mixjax.train.data import build_data
    from mixjax.train.loop import model_config

    cfg = base_config(workdir, "bilevel", steps)
    cfg.data.sampler = "per_domain"
    data = build_data(cfg)
    k = len(data.domains)
    apply, params, _ = transformer.init(model_config(cfg, data.vocab_size), cfg.train.seed)
    ctx = methods.MethodContext(cfg=cfg, domains=tuple(data.domains), apply=apply,
                                pad_id=data.pad_id, tx=optax.adamw(3e-3, weight_decay=5e-4),
                                schedule=lambda s: 3e-3, schedule_steps=steps, mixer=None)
    parts = methods.build("bilevel", ctx, {"penalty": 10.0, "lr_p": 0.05})
    state, step = parts.init_fn(params), jax.jit(parts.step_fn, donate_argnums=(0,))
    uniform = np.full(k, 1.0 / k)
    sampler = data.make_sampler(uniform)
    target = jnp.asarray(np.asarray(data.eval_sets["code"]))
    for _ in range(steps):
        b = next(sampler)
        state, _ = step(state, {"tokens": jnp.asarray(b["tokens"]),
                                "domain_id": jnp.asarray(b["domain_id"]),
                                "sampling_weights": jnp.asarray(uniform, jnp.float32),
                                "target_tokens": target})
    return {"domains": list(data.domains),
            "final": np.asarray(parts.weights.weights(state.mix_state)).tolist(),
            "average": np.asarray(parts.weights.average(state.mix_state)).tolist()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--which", default="dga,doge-ood,doge-univ,bilevel")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        wd = pathlib.Path(args.workdir or tmp)
        wd.mkdir(parents=True, exist_ok=True)
        for which in args.which.split(","):
            r = run_check(which, args.steps, wd)
            print(f"{which}: 1/K = {1 / len(r['domains']):.3f}")
            for i, d in enumerate(r["domains"]):
                avg = "" if r["average"] is None else f"  average {r['average'][i]:.3f}"
                print(f"  {d:<12} final {r['final'][i]:.3f}{avg}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
