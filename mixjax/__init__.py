"""mixjax: deciding what data a model trains on, in JAX/Flax.

Rooms (arrows point down only)::

    cli -> workflows -> train.loop / search / compare / dg
        -> methods (what defines a step) -> train.step / train.state
        -> {mixing (rules, statistics, gradient engine), data, models, parallel}
"""

__version__ = "0.1.0"
