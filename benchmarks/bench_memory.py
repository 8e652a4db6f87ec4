"""Activation memory of the 124M config with and without scan / remat (XLA memory analysis).

For each layout (``model.scan_layers``) and remat policy (``model.remat``) the
loss-and-gradient of the train step's token loss (``mixjax.core.step.token_losses``,
mean over the batch) for ``configs/lm_124m_gpu.py``'s model (GPT-2 vocabulary,
bf16 compute, fp32 params) at batch 32 x 1024 is compiled on CPU — compiled only,
never run — and XLA's buffer assignment is read:
``jitted.lower(params, tokens).compile().memory_analysis()``. "temp" is the
memory the compiled function allocates besides its arguments and outputs: the
activations kept for the backward pass and the working buffers. Ratios divide
by the no-remat loop layout, measured in the same run.

Command (CPU, compile only, about 3-6 minutes on 2 cores)::

    python benchmarks/bench_memory.py
    python benchmarks/bench_memory.py --batch 8 --seq 512      # quicker
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import pathlib
import time

import jax
import jax.numpy as jnp

from mixjax.models import transformer
from mixjax.core import step as step_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
GPT2_VOCAB = 50257


def model_config(path: pathlib.Path, **overrides) -> transformer.TransformerConfig:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    fields = {**dataclasses.asdict(mod.get_config().model), **overrides}
    return transformer.TransformerConfig(vocab_size=GPT2_VOCAB, **fields)


def compiled_memory(cfg, batch: int, seq: int):
    apply, params, _ = transformer.abstract_init(cfg)
    tokens = jax.ShapeDtypeStruct((batch, seq + 1), jnp.int32)

    def loss(p, toks):
        tl, tm = step_lib.token_losses(apply, p, toks, pad_id=0)
        return jnp.sum(tl) / jnp.maximum(jnp.sum(tm), 1.0)

    t0 = time.perf_counter()
    compiled = jax.jit(jax.value_and_grad(loss)).lower(params, tokens).compile()
    return compiled.memory_analysis(), time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs/lm_124m_gpu.py"))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=1024)
    args = ap.parse_args(argv)
    rows = [("loop", False, "none"), ("scan", True, "none"), ("scan", True, "dots"),
            ("scan", True, "full"), ("loop", False, "full")]
    gib = 2.0 ** 30
    print(f"{pathlib.Path(args.config).name}: batch {args.batch} x {args.seq}, "
          f"{jax.devices()[0].platform} compile only (XLA memory analysis)")
    base = None
    for layout, scan, remat in rows:
        cfg = model_config(pathlib.Path(args.config), scan_layers=scan, remat=remat)
        mem, secs = compiled_memory(cfg, args.batch, args.seq)
        temp = mem.temp_size_in_bytes
        base = base or temp
        print(f"  {layout:4s} remat={remat:4s}  temp {temp / gib:7.2f} GiB   "
              f"args {mem.argument_size_in_bytes / gib:5.2f} GiB   "
              f"none/this = {base / temp:5.2f}x   (compile {secs:.0f} s)")


if __name__ == "__main__":
    main()
