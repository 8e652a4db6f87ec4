"""DG algorithms, one module each; ``get(name)`` returns the class.

Each is a pure, jit-compilable step over per-environment batches
``xs f32[K, b, ...], ys int32[K, b]`` (see ``base.Algorithm``). Update rules
follow facebookresearch/DomainBed ``domainbed/algorithms.py`` (commit
b93c22a) unless a module's docstring says otherwise.
"""

from __future__ import annotations

from mixjax.dg.algorithms.base import Algorithm

ALGORITHMS: dict[str, type[Algorithm]] = {}


def register(cls: type[Algorithm]) -> type[Algorithm]:
    if not cls.name or cls.name in ALGORITHMS:
        raise ValueError(f"cannot register DG algorithm {cls.__name__} under name {cls.name!r}")
    ALGORITHMS[cls.name] = cls
    return cls


def get(name: str) -> type[Algorithm]:
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise KeyError(f"unknown DG algorithm {name!r}; known: {sorted(ALGORITHMS)}") from None


from mixjax.dg.algorithms import (  # noqa: E402,F401  (registration side effects)
    andmask,
    cad,
    causirl,
    coral,
    dann,
    eqrm,
    erm,
    fish,
    fishr,
    groupdro,
    ib,
    iga,
    irm,
    mixup,
    mldg,
    mmd,
    rdm,
    ridg,
    rsc,
    sagnet,
    sam,
    sandmask,
    sd,
    selfreg,
    vrex,
)
from mixjax.dg.algorithms import ccfp, dsrm, ermpp, qtdog, udim  # noqa: E402,F401  (founding-paper algorithms)
from mixjax.dg.algorithms import (  # noqa: E402,F401  DomainBed's remaining algorithms
    adrmx,
    arm,
    mtl,
    transfer,
    trm,
    urm,
)
from mixjax.dg.algorithms import adanpc  # noqa: E402,F401  test-time methods
from mixjax.dg.algorithms import dmg, sdat, xded  # noqa: E402,F401  founding papers, third round
from mixjax.dg.algorithms import irm_gram, ttss  # noqa: E402,F401  DG round 3
from mixjax.dg.algorithms import wakd  # noqa: E402,F401  DG round 4
from mixjax.dg.algorithms import d3g, mmld, mode  # noqa: E402,F401  DG round 3, second set (founding papers)
from mixjax.dg.algorithms import gaqat  # noqa: E402,F401  DG round 5
from mixjax.dg.algorithms import metadmoe  # noqa: E402,F401  DG round 5, test-time
from mixjax.dg.algorithms import medic  # noqa: E402,F401  open-set DG (one-vs-all heads)
from mixjax.dg.algorithms import cil  # noqa: E402,F401  continuous environments (metadata)
from mixjax.dg.algorithms import ddg  # noqa: E402,F401  DG round 6 (founding papers: disentanglement)
from mixjax.dg.algorithms import modify  # noqa: E402,F401  founding papers, DG round 6 (difficulty scheduling)
from mixjax.dg.algorithms import metacausal  # noqa: E402,F401  single-source DG (meta-causal), test-time
