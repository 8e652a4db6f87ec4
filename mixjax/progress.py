"""Progress bars of the long-running commands (train, dg sweep, search swarm).

One look everywhere: tqdm on stderr, redrawn 10x/s on a terminal and at most
every 30 s when stderr is a log file (cluster jobs, CI), so logs stay readable.
"""

from __future__ import annotations

import sys


def bar(**kwargs):
    """A ``tqdm`` bar with the defaults above; ``kwargs`` go to tqdm (and win)."""
    from tqdm import tqdm
    opts = {"file": sys.stderr, "dynamic_ncols": True,
            "mininterval": 0.1 if sys.stderr.isatty() else 30.0}
    return tqdm(**{**opts, **kwargs})
