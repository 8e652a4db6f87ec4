"""Running on many devices and hosts: ``sharding`` (meshes, logical-axis rules for
parameters and activations, sharded init and placement, the sharded step) and
``distributed`` (the multi-host set-up and per-process batch rows)."""
