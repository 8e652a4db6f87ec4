"""The run engine: the host services every long job needs, and its step loop.

Clients (``mixjax.train.loop``'s LM trainer, ``mixjax.search.swarm_train``'s proxy
swarm, ``mixjax.dg.group_client``'s DomainBed jobs) supply their state, step,
batches and evaluation; the engine owns the loop, signals, checkpoints, resume
and the run logs. It depends on jax, orbax and the standard library plus
``mixjax.train.checkpoint`` / ``metrics`` / ``tracking`` / ``atomic`` /
``prefetch`` and the leaf modules ``mixjax.progress`` / ``mixjax.provenance``;
never on ``methods``, ``search`` or ``dg`` (clients import the engine, never the
reverse).
"""
