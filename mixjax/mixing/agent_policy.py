"""The Data Mixing Agent's policy: state features, the network, and its files.

Used by the ``agent`` mixer (:mod:`mixjax.mixing.agent`, the online use) and by
``mixjax search agent`` (:mod:`mixjax.search.agent_search`, the offline training); the
design and the paper's reference are in :mod:`mixjax.mixing.agent`.

State (K training domains, history length H), at a decision made after ``s`` of the
run's ``S`` steps::

    x = [ w_{k-H}, ..., w_{k-1},      the last H weight vectors the run trained on
                                      (oldest first; uniform 1/K before the first decision)
          L_k,                        per-domain validation loss after s steps (f32[K])
          L_{k-1} - L_k,              its drop since the previous decision (0 at the first)
          s / S ]                     the fraction of the run done

    dim(x) = H K + 2 K + 1

Policy: ``w_k = softmax(f((x - mu) / sigma))`` with ``f`` a flax nnx MLP (two tanh hidden
layers of ``hidden`` units, K outputs); ``mu``, ``sigma`` are the training set's feature
mean and standard deviation (sigma floored at 1e-6), stored with the weights.

Files: ``<stem>.safetensors`` (``l1.kernel``, ``l1.bias``, ``l2.*``, ``out.*``,
``norm.mean``, ``norm.std``) and ``<stem>.json`` (format, domains, history, hidden,
interval, how it was trained).
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

FORMAT = "mixjax-agent-policy/1"
LAYERS = ("l1", "l2", "out")


def feature_dim(num_domains: int, history: int) -> int:
    return history * num_domains + 2 * num_domains + 1


def features(hist, loss, prev_loss, has_prev, progress):
    """The state vector of the module docstring: f32[H K + 2 K + 1].

    hist f32[H, K] (oldest first), loss / prev_loss f32[K], has_prev bool[] (False at the
    first decision: the drop is 0), progress f32[] (s / S). Works on batches too (leading
    axes broadcast: hist [..., H, K], loss [..., K], has_prev / progress [...])."""
    hist, loss, prev_loss = jnp.asarray(hist), jnp.asarray(loss), jnp.asarray(prev_loss)
    drop = jnp.where(jnp.asarray(has_prev)[..., None], prev_loss - loss, 0.0)
    flat = hist.reshape(hist.shape[:-2] + (-1,))
    prog = jnp.asarray(progress, jnp.float32)[..., None]
    return jnp.concatenate([flat, loss, drop, prog], axis=-1).astype(jnp.float32)


class PolicyNet(nnx.Module):
    """x (standardised) -> K logits: two tanh hidden layers."""

    def __init__(self, num_in: int, num_domains: int, hidden: int, *, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(num_in, hidden, rngs=rngs)
        self.l2 = nnx.Linear(hidden, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, num_domains, rngs=rngs)

    def __call__(self, x):
        h = jnp.tanh(self.l1(x))
        h = jnp.tanh(self.l2(h))
        return self.out(h)


def abstract_policy(num_domains: int, history: int, hidden: int):
    """``(graphdef, params)`` with shapes only (nothing is computed)."""
    net = nnx.eval_shape(lambda: PolicyNet(feature_dim(num_domains, history), num_domains,
                                           hidden, rngs=nnx.Rngs(0)))
    return nnx.split(net, nnx.Param)


def init_policy(num_domains: int, history: int, hidden: int, seed: int = 0):
    """``(graphdef, params)``: the functional halves of a fresh :class:`PolicyNet`, kernels
    drawn on the host from N(0, 1 / fan_in) (LeCun normal), biases 0 (a compiled flax
    initialiser costs seconds of XLA compilation on CPU for a few thousand numbers)."""
    graphdef, params = abstract_policy(num_domains, history, hidden)
    rng = np.random.default_rng(seed)
    arrays = {}
    for layer in LAYERS:
        shape = params[layer]["kernel"].get_value().shape
        arrays[f"{layer}.kernel"] = rng.normal(0.0, 1.0 / np.sqrt(shape[0]), shape)
        arrays[f"{layer}.bias"] = np.zeros(shape[1])
    return graphdef, fill(params, arrays)


def fill(params, arrays: Mapping[str, np.ndarray]):
    """``params`` (abstract or not) with the values of ``arrays`` (:func:`flat_arrays`'s keys);
    a shape that does not fit is a ValueError naming the array."""
    for layer in LAYERS:
        for name in ("kernel", "bias"):
            want = params[layer][name].get_value().shape
            got = np.asarray(arrays[f"{layer}.{name}"], np.float32)
            if got.shape != want:
                raise ValueError(f"{layer}.{name} has shape {got.shape}, expected {want}")
            params[layer][name].set_value(jnp.asarray(got))
    return params


def policy_weights(graphdef, params, mean, std, x):
    """f32[..., K] simplex weights for state(s) ``x``."""
    z = (x - mean) / std
    return jax.nn.softmax(nnx.merge(graphdef, params)(z), axis=-1)


def policy_log_weights(graphdef, params, mean, std, x):
    z = (x - mean) / std
    return jax.nn.log_softmax(nnx.merge(graphdef, params)(z), axis=-1)


# ------------------------------------------------------------------------ files
def paths(stem: str | pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """``(weights .safetensors, metadata .json)`` of a policy named by either file or stem."""
    p = pathlib.Path(stem)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_suffix(".safetensors"), p.with_suffix(".json")


def flat_arrays(params) -> dict[str, np.ndarray]:
    """``{"l1.kernel": ..., ...}`` from an nnx Param state."""
    return {f"{layer}.{name}": np.asarray(params[layer][name][...], np.float32)
            for layer in LAYERS for name in ("kernel", "bias")}


def save(stem, params, mean, std, meta: Mapping[str, Any]) -> tuple[pathlib.Path, pathlib.Path]:
    from safetensors.numpy import save_file
    wpath, jpath = paths(stem)
    arrays = {**flat_arrays(params), "norm.mean": np.asarray(mean, np.float32),
              "norm.std": np.asarray(std, np.float32)}
    save_file(arrays, str(wpath))
    jpath.write_text(json.dumps({"format": FORMAT, **meta}, indent=1) + "\n")
    return wpath, jpath


class Policy:
    """A loaded policy: ``weights(x)`` (jittable), its metadata and raw arrays."""

    def __init__(self, meta: dict, arrays: dict[str, np.ndarray]):
        self.meta, self.arrays = meta, arrays
        self.domains = tuple(meta["domains"])
        self.history, self.hidden = int(meta["history"]), int(meta["hidden"])
        self.graphdef, params = abstract_policy(len(self.domains), self.history, self.hidden)
        self.params = fill(params, arrays)
        self.mean = jnp.asarray(arrays["norm.mean"])
        self.std = jnp.asarray(arrays["norm.std"])

    def weights(self, x):
        return policy_weights(self.graphdef, self.params, self.mean, self.std, x)


def load(stem) -> Policy:
    """Reads a policy; ``FileNotFoundError`` / ``ValueError`` name the file."""
    from safetensors.numpy import load_file
    wpath, jpath = paths(stem)
    for p in (jpath, wpath):
        if not p.is_file():
            raise FileNotFoundError(f"policy file {str(p)!r} does not exist")
    try:
        meta = json.loads(jpath.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"policy file {str(jpath)!r} is not JSON ({e})") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"policy file {str(jpath)!r}: format {meta.get('format')!r}, "
                         f"expected {FORMAT!r}")
    try:
        return Policy(meta, load_file(str(wpath)))
    except (KeyError, ValueError) as e:
        raise ValueError(f"policy file {str(wpath)!r}: {e}") from None
