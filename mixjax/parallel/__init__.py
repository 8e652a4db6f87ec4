"""Running on many devices and hosts: ``sharding`` (meshes, logical-axis rules, sharded
init and state placement), ``step_sharding`` (batch placement and the jitted sharded
step), ``activations`` (activation constraints by logical name) and ``distributed``
(the multi-host set-up and per-process batch rows)."""
