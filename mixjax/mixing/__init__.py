"""Mixing algorithms: ``get(name, **hparams)`` builds one (see ``base``).

Each method lives in its own module with its update rule in the docstring.
Importing this package imports every module in it, which registers every
built-in method.
"""

import importlib
import pkgutil

from mixjax.mixing.base import (APPLY_TO, MODEL_GRADIENTS, STATS, Mixer, NonFiniteStatsError, build,
                                check_weight_vector, get, guarded_update, init_state,
                                mixer_class, names, record_weights, register)

# Every module of the package is imported, so each built-in mixer registers itself
# (``@register``): adding one is adding a module, with no list to edit.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["APPLY_TO", "MODEL_GRADIENTS", "STATS", "Mixer", "NonFiniteStatsError", "build", "check_weight_vector",
           "get", "guarded_update", "init_state", "mixer_class", "names", "record_weights",
           "register"]
