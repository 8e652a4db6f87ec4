"""Offline mixture search: proxy swarms, fitted mixture models and laws, simplex search.

    designs.py   candidate mixtures (RegMix Dirichlet, uniform Dirichlet, Latin hypercube,
                 one-hot / leave-one-out) under per-domain min/max and epoch constraints
    swarm.py     P proxy models trained together in one jit-compiled step (vmap or lax.map
                 over a leading proxy axis, optionally sharded over a ``models`` mesh axis)
    regmix.py    RegMix (Liu et al. 2025): LightGBM / linear regression of target loss on the
                 mixture, held-out rank correlation, simulate-and-average-top-k search
    laws.py      Data Mixing Laws (Ye et al. 2025) and the additive / joint optimal-mixture
                 scaling laws (Shukor et al. 2025): fits and constrained simplex search
    pipeline.py  swarm -> fit -> search -> target models, resumable phases (regmix, law)
    scaling_search.py  one swarm per proxy size and the optimal-mixture scaling law
    cpt_search.py  the D-CPT and SFT laws' swarms (dcpt_law.py, sft_law.py)
    settings.py  typed search settings and the --out identity check; phases.py the shared
                 phases (swarms, target models); report.py results.md and fit.png
    command.py   ``mixjax search``: parser and dispatch over every route

See docs/search.md for the equations, the two data routes and measured figures.
"""
