"""Multi-seed comparisons of mixing methods on one budget (``mixjax compare``).

:mod:`~mixjax.compare.runs` plans/trains/reads the runs, :mod:`~mixjax.compare.stats`
holds the statistics (mean ± SE, paired t-intervals), :mod:`~mixjax.compare.report`
writes results.md/.csv and the plots, :mod:`~mixjax.compare.cli` is the command.
"""

from mixjax.compare.runs import CompareError, config_hash
from mixjax.compare.stats import mean_se, paired_interval, time_averaged

__all__ = ["CompareError", "config_hash", "mean_se", "paired_interval", "time_averaged"]
