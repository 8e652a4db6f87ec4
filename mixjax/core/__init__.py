"""The compiled step's core: the typed train state, the default step, the metrics contract.

Below ``methods`` (which build steps from these) and below the loop (``train.loop``,
``run``), above ``mixing``, ``models`` and ``parallel``:

* ``state``: :class:`~mixjax.core.state.TrainState`, :class:`~mixjax.core.state.FrozenInputs`
  and the checkpoint layout;
* ``step``: the default (``mixer`` Method's) train step;
* ``contract``: ``step_metrics``, the metrics every Method's step returns.
"""
