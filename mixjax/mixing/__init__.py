"""Mixing algorithms: ``get(name, **hparams)`` builds one (see ``base``).

Each method lives in its own module with its update rule in the docstring.
Importing this package registers every built-in method.
"""

from mixjax.mixing.base import (APPLY_TO, MODEL_GRADIENTS, STATS, Mixer, NonFiniteStatsError, build,
                                check_weight_vector, get, guarded_update, init_state,
                                mixer_class, names, record_weights, register)
from mixjax.mixing import static  # noqa: F401  (registers uniform/natural/temperature/manual)
from mixjax.mixing import ado, doremi, groupdro, odm, tdro  # noqa: F401  (loss-signal mixers)
from mixjax.mixing import sample_reweight  # noqa: F401  (per-sequence loss weights)
from mixjax.mixing import dga, doge, rnb  # noqa: F401  (gradient-signal mixers)
from mixjax.mixing import aggregators  # noqa: F401  (pcgrad/mgda/upgrad/upgrad_target)
from mixjax.mixing import schedules  # noqa: F401  (staged/linear_schedule/upsample_end)
from mixjax.mixing import skillit  # noqa: F401  (skills-graph multiplicative weights)
from mixjax.mixing import aioli  # noqa: F401  (online mixing-law estimation)

__all__ = ["APPLY_TO", "MODEL_GRADIENTS", "STATS", "Mixer", "NonFiniteStatsError", "build", "check_weight_vector",
           "get", "guarded_update", "init_state", "mixer_class", "names", "record_weights",
           "register"]
