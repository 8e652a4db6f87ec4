"""Methods: everything that defines a train step (``base`` has the protocol).

``build(name, ctx, hparams)`` makes one. Importing this package imports every
module in it, so each built-in Method registers itself: adding one is adding a
module, with no list to edit.
"""

import importlib
import pkgutil

from mixjax.methods.base import (METRIC_KEYS, Method, MethodContext, OwnWeights, StepParts,
                                 WeightsView, build, first_nonfinite, get, names, register,
                                 resolved_hparams, step_metrics)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["METRIC_KEYS", "Method", "MethodContext", "OwnWeights", "StepParts", "WeightsView",
           "build", "first_nonfinite", "get", "names", "register", "resolved_hparams",
           "step_metrics"]
