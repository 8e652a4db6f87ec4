"""mixjax: deciding what data a model trains on, in JAX/Flax.

Rooms (arrows point down only; tests/test_import_graph.py enforces the order)::

    cli -> workflows / search / compare / dg
        -> train (the loop, eval, export, checkpoints), run (the loop engine)
        -> methods (what defines a step)
        -> core (the typed train state, the default step, the metrics contract)
        -> {mixing (rules, statistics, gradient engine), data, models, parallel}
        -> run_identity -> config -> errors, registry
"""

__version__ = "0.1.0"
