"""The swarm step's device memory: a config-only estimate, XLA's figure, the check."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mixjax.search.swarm_mesh import SwarmError


def estimate_memory(model_cfg, params_per_proxy: int, num_proxies: int, batch: int,
                    seq_len: int, strategy: str, route: str) -> dict:
    """A config-only estimate of the swarm step's device memory (bytes, fp32).

    state:  vmap: P x params x 4 B x 4.5 (params, Adam mu and nu, the gradient and part of
            the update; the donated state is updated in place); map: P x params x 4 B x 6
            (the loop's stacked output is a second copy of params, mu, nu; the slope in P
            of XLA's figure for P = 8 -> 32)
    acts:   per proxy, per token, the values kept for the backward pass:
            2 V (logits and their gradient) + per layer 8 d + 6 d_ff (SwiGLU; 4 d_ff for
            GELU) + 3 H S (attention scores, probabilities and their gradient);
            times the proxies alive at once (P for vmap, 1 for map)
    batch:  tokens (P copies for upsample, 1 for upweight)

    The constants are a non-negative least-squares fit to XLA's compiled memory analysis
    (:func:`compiled_memory_bytes`) of ten proxy shapes on CPU (d_model 16-128, 1-3 layers,
    S 16-128, B 4-16, 2-8 heads, SwiGLU and GELU; every one within 12%), rounded;
    ``tests/test_search_swarm.py`` checks other shapes within 20%, and
    benchmarks/bench_swarm.py prints both for the benchmark's proxies.
    """
    b4 = 4
    d, layers, v = model_cfg.d_model, model_cfg.num_layers, model_cfg.vocab_size
    heads = model_cfg.num_heads
    d_ff = getattr(model_cfg, "ff_dim", None) or model_cfg.d_ff or 4 * d
    ff_values = 6 if getattr(model_cfg, "mlp", "swiglu") == "swiglu" else 4
    tokens = batch * seq_len
    copies = 4.5 if strategy == "vmap" else 6.0
    state = int(copies * num_proxies * params_per_proxy * b4)
    per_proxy_acts = tokens * b4 * (2 * v + layers * (8 * d + ff_values * d_ff
                                                      + 3 * heads * seq_len))
    live = num_proxies if strategy == "vmap" else 1
    acts = live * per_proxy_acts
    data = (num_proxies if route == "upsample" else 1) * batch * (seq_len + 1) * 4
    return {"state": state, "activations": acts, "batch": data, "total": state + acts + data}


def compiled_memory_bytes(swarm) -> int:
    """Device bytes of the swarm's compiled train step by XLA's memory analysis:
    arguments + outputs - aliased (the donated state) + temporaries. Compiles the step
    for the swarm's shapes (abstract: nothing is initialised or run); one device."""
    state = jax.eval_shape(swarm.init_state_unplaced)
    n, b, s1 = swarm.num_proxies, swarm.cfg.data.batch_size, swarm.cfg.data.seq_len + 1
    k = len(swarm.domains)
    lead = (n,) if swarm.route == "upsample" else ()
    batch = {"tokens": jax.ShapeDtypeStruct(lead + (b, s1), jnp.int32),
             "domain_id": jax.ShapeDtypeStruct(lead + (b,), jnp.int32),
             "sampling_weights": jax.ShapeDtypeStruct(lead + (k,), jnp.float32)}
    compiled = jax.jit(swarm.swarm_step_fn(), donate_argnums=(0,)).lower(state, batch).compile()
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
               + m.temp_size_in_bytes)


def available_memory_bytes() -> int | None:
    """Free memory of the first device (accelerator stats, else the host's MemAvailable)."""
    dev = jax.devices()[0]
    try:
        stats = dev.memory_stats()
    except Exception:   # noqa: BLE001 - not every backend reports stats
        stats = None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_memory(swarm, fraction: float = 0.8) -> dict:
    """Refuses (SwarmError, with the estimate) a swarm whose estimate exceeds ``fraction``
    of the free memory of one device; returns the estimate."""
    est = swarm.memory_estimate()
    shape = {"models": 1, "data": 1, "fsdp": 1} if swarm.mesh is None else swarm.mesh.shape
    m, rows = shape["models"], shape["data"] * shape["fsdp"]
    # state split over models x fsdp; activations and batch over models x data x fsdp
    # (map: one proxy per models shard is live, its activations split over data x fsdp)
    acts = est["activations"] / (rows * (m if swarm.strategy == "vmap" else 1))
    per_device = est["state"] / (m * shape["fsdp"]) + acts + est["batch"] / (m * rows)
    free = available_memory_bytes()
    if free is not None and per_device > fraction * free:
        raise SwarmError(
            f"a swarm of {swarm.num_proxies} proxies ({swarm.params_per_proxy} parameters each, "
            f"strategy {swarm.strategy}) needs about {per_device / 2**30:.2f} GiB per device "
            f"(state {est['state'] / 2**30:.2f} GiB, activations "
            f"{est['activations'] / 2**30:.2f} GiB); {free / 2**30:.2f} GiB are free. Use "
            "--strategy map, fewer proxies, or more devices (--models)")
    return est
