"""mixjax: deciding what data a model trains on, in JAX/Flax.

Rooms (arrows point down only)::

    cli -> workflows -> train / dg -> {mixing, stats, data, models, parallel}
"""

__version__ = "0.1.0"
