"""The search settings (``get_search()``, ``--search-set``), typed and checked before
anything trains, and the search's files (``--out``): atomic JSON and the identity check
that keeps a repeated command from reusing another search's phases."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import pathlib
import sys
from typing import Any

import numpy as np


@dataclasses.dataclass(kw_only=True)
class SearchSettings:
    """The search settings (``get_search()`` and ``--search-set K=V``), typed and checked by
    the same engine as :class:`mixjax.config.Config` (``config.set_value``: a wrong type or
    an unknown key is an error naming the key, exit status 2)."""

    proxies: int = 32
    design: str = "regmix"            # regmix | dirichlet | lhs | onehot
    design_seed: int = 42
    route: str = "upsample"           # upsample | upweight
    strategy: str = "auto"            # vmap | map | auto (measured per backend)
    models: int = 1                   # devices of the models mesh axis (proxies)
    data_shards: int = 1              # devices of the data axis (each proxy's batch rows)
    fsdp: int = 1                     # devices of the fsdp axis (rows and d_model of params)
    proxy_overrides: list[str] = dataclasses.field(default_factory=list)  # target -> proxy config
    target: str | dict[str, int | float] = "average"   # average | a domain | {domain: weight}
    regressor: str = "auto"           # lightgbm | linear | auto (better held-out Spearman)
    lgbm_params: dict[str, Any] = dataclasses.field(default_factory=dict)  # regmix.LGBM_PARAMS
    folds: int = 4
    samples: int = 100_000
    top_k: int = 128
    bootstrap: int = 32
    min_weight: dict[str, int | float] = dataclasses.field(default_factory=dict)
    max_weight: dict[str, int | float] = dataclasses.field(default_factory=dict)
    max_epochs: int | float | None = None   # at most E epochs of each domain in the target run
    law_restarts: int = 16
    # law: fit each proxy's step law on its eval history (train.eval_every) and fit the
    # mixture law to the losses it predicts at this step (Ye et al.'s nesting)
    extrapolate_step: int | float | None = None
    baselines: list[str] = dataclasses.field(default_factory=lambda: ["uniform", "natural"])
    # law: proxy d_model values (2-3); one swarm per size and Shukor et al.'s scaling law
    # L(N, D, h) instead of Ye's law
    sizes: list[int] | None = None
    scaling_law: str = "additive"     # additive | joint (with sizes)
    # dcpt (cpt_search.py): the general and the domain corpus (two training domains), the
    # swarm's domain ratios r, the general-loss budget (1 + tau) x the general-only loss,
    # an optional target domain loss, and the law's eps
    general: str | None = None
    domain: str | None = None
    ratios: list[int | float] = dataclasses.field(
        default_factory=lambda: [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0])
    tau: float = 0.05
    target_domain_loss: float | None = None
    dcpt_eps: float = 0.01
    # dcpt / sft: proxies per mixture under different seeds (the swarm's seed axis)
    seeds_per_mixture: int = 1


DEFAULTS: dict[str, Any] = dataclasses.asdict(SearchSettings())
METHODS = ("regmix", "law")
# Settings a repeated search may change: target-run baselines, and the device layout of
# the swarm (the same computation on another mesh; its checkpoint restores onto it).
LAYOUT_ONLY = ("baselines", "models", "data_shards", "fsdp")


class SearchError(ValueError):
    """Bad search input (exit status 2)."""


# --------------------------------------------------------------------- config
def load_search_config(path: str, overrides=(), search_overrides=(), proxy_overrides=()):
    """``(target Config, proxy Config, settings)`` from a search config file."""
    from mixjax import config as config_lib
    path = pathlib.Path(path)
    if not path.is_file():
        raise SearchError(f"config file {str(path)!r} does not exist")
    target = config_lib.load(path, overrides)
    spec = importlib.util.spec_from_file_location(f"_mixjax_search_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    root = str(path.resolve().parent.parent)
    sys.path.insert(0, root)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(root)
    typed = SearchSettings()
    given = module.get_search() if hasattr(module, "get_search") else {}
    for key, value in list(given.items()) + [_split(s) for s in search_overrides]:
        if key not in DEFAULTS:
            raise SearchError(f"unknown search setting {key!r}; known: {sorted(DEFAULTS)}")
        try:
            config_lib.set_value(typed, key, value)
        except config_lib.ConfigError as e:
            raise SearchError(f"search setting {str(e)[len('config key '):]}"
                              if str(e).startswith("config key ") else str(e)) from None
    settings = dataclasses.asdict(typed)
    proxy = config_lib.from_dict(config_lib.to_dict(target))
    for item in list(settings["proxy_overrides"]) + list(overrides) + list(proxy_overrides):
        config_lib.apply_override(proxy, item)
    config_lib.validate(proxy)
    from mixjax.train import checks
    for c in (target, proxy):     # registered names (mixer, Method), before anything trains
        checks.check_names(c)
    return target, proxy, settings


def _split(item: str):
    from mixjax.config import parse_value
    if "=" not in item:
        raise SearchError(f"search setting {item!r} is not of the form key=value")
    k, v = item.split("=", 1)
    return k.strip(), parse_value(v.strip())


def check_settings(s: dict, method: str, k: int) -> None:
    from mixjax.search import designs, swarm
    if method not in METHODS:
        raise SearchError(f"unknown search method {method!r}; known: {METHODS}")
    if not isinstance(s["proxies"], int) or s["proxies"] < 1:
        raise SearchError(f"--proxies must be a positive integer, got {s['proxies']!r}")
    if s["design"] not in designs.DESIGNS:
        raise SearchError(f"search setting 'design': unknown {s['design']!r}; "
                          f"known: {list(designs.DESIGNS)}")
    if s["route"] not in swarm.ROUTES:
        raise SearchError(f"search setting 'route': must be one of {swarm.ROUTES}")
    if s["strategy"] not in swarm.STRATEGIES:
        raise SearchError(f"search setting 'strategy': must be one of {swarm.STRATEGIES}")
    if method == "regmix" and s["proxies"] < max(s["folds"], 4) * 2:
        raise SearchError(f"RegMix needs at least {max(s['folds'], 4) * 2} proxies for its "
                          f"{s['folds']}-fold held-out check, got {s['proxies']}")
    if s["sizes"] is not None:
        sizes = s["sizes"]
        if method != "law" or not isinstance(sizes, (list, tuple)) or len(set(sizes)) < 2 or \
                not all(isinstance(x, int) and x > 0 for x in sizes):
            raise SearchError("search setting 'sizes' (law only): a list of >= 2 distinct "
                              f"positive proxy d_model values, got {sizes!r}")
        if s["scaling_law"] not in ("additive", "joint"):
            raise SearchError("search setting 'scaling_law': additive or joint, got "
                              f"{s['scaling_law']!r}")
    elif method == "law":
        # every training fold of the held-out check must determine the law too
        f = max(int(s["folds"]), 2)
        need = next(p for p in range(k + 2, 100 * (k + 2)) if p - -(-p // f) >= k + 2)
        if s["proxies"] < need:
            raise SearchError(f"the mixing law has {k + 1} identifiable parameters per target "
                              f"for {k} domains: with its {f}-fold held-out check it needs at "
                              f"least {need} proxies, got {s['proxies']}")
    for b in s["baselines"]:
        if b not in ("uniform", "natural"):
            raise SearchError(f"search setting 'baselines': unknown {b!r} (uniform, natural)")


# ------------------------------------------------------------------------ files
def write_json(path: pathlib.Path, obj) -> None:
    """``obj`` as indented JSON, written atomically (numpy values as lists/scalars)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=json_default) + "\n")
    tmp.replace(path)


def json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(type(o))




def claim_out(out: pathlib.Path, name: str, record: dict, normalise=None) -> None:
    """Writes ``out/name`` (a search's identity), or checks that an existing one is this
    search's: the phases under ``--out`` are reused on a repeat, so a different search must
    not find them. ``normalise(key, old_value)`` maps a saved value to today's form."""
    path = out / name
    if path.exists():
        old = json.loads(path.read_text())
        if normalise is not None:
            old = {key: normalise(key, value) for key, value in old.items()}
        diff = sorted(key for key in set(old) | set(record)
                      if json.dumps(old.get(key), default=json_default, sort_keys=True)
                      != json.dumps(record.get(key), default=json_default, sort_keys=True))
        if diff:
            raise SearchError(f"--out {str(out)!r} holds a different search ({', '.join(diff)} "
                              "differ); pick another --out or repeat the same command")
        return
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, record)
