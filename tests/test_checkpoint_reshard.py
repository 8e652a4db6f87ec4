"""A checkpoint saved from 8 devices restores onto a 4-device mesh of another shape.

This process (8 fake CPU devices) places a transformer train state (params, AdamW
moments, DoGE mixer state) on a data=2 x fsdp=2 x tensor=2 mesh and saves it with
``Checkpointer(async_save=True)``; a subprocess with 4 fake devices restores it onto
data=1 x fsdp=2 x tensor=2 shardings and checks every value and the new layout.
"""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import numpy as np

import sharding_harness as H
from mixjax.parallel import sharding
from mixjax.train import checkpoint as ckpt_lib

RESTORE = textwrap.dedent("""
    import json, pathlib, sys
    sys.path.insert(0, {tests!r})
    import jax, numpy as np
    import sharding_harness as H
    from mixjax.parallel import sharding
    from mixjax.train import checkpoint as ckpt_lib

    assert jax.device_count() == 4, jax.device_count()
    built = H.build(["doge"], kind="transformer")
    state = built.states["doge"]
    mesh = sharding.make_mesh(1, 2, 2)
    shardings = sharding.train_state_shardings(state, built.logical_axes, mesh)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            state, shardings)
    ck = ckpt_lib.Checkpointer({ckpt!r})
    restored, host = ck.restore(None, abstract)
    ck.close()
    want = np.load({npz!r})
    leaves = jax.tree_util.tree_leaves_with_path(restored)
    out = {{"step": host["step"], "n": len(leaves), "bad": [], "specs": {{}}}}
    for path, x in leaves:
        key = jax.tree_util.keystr(path)
        if not np.array_equal(np.asarray(x), want[key]):
            out["bad"].append(key)
        assert x.sharding.mesh.shape == mesh.shape, key
        out["specs"][key] = str(x.sharding.spec)
    print("RESULT" + json.dumps(out))
""")


def test_save_on_8_devices_restore_on_4_devices_with_another_mesh(tmp_path):
    built = H.build(["doge"], kind="transformer")
    state = built.states["doge"]
    # Non-trivial optimizer moments and mixer state, so a restore of zeros cannot pass.
    rng = np.random.default_rng(0)
    state = jax.tree.map(lambda x: x + rng.normal(size=x.shape).astype(x.dtype)
                         if np.issubdtype(x.dtype, np.floating) else x, state)
    mesh = sharding.make_mesh(2, 2, 2)
    shardings = sharding.train_state_shardings(state, built.logical_axes, mesh)
    placed = sharding.place(state, shardings)
    assert placed.params["embed"].sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
    ck = ckpt_lib.Checkpointer(tmp_path / "ckpt", async_save=True)
    ck.save(7, placed, {"step": 7}, wait=False)
    ck.wait()
    ck.close()
    np.savez(tmp_path / "want.npz", **{jax.tree_util.keystr(p): np.asarray(x)
                                      for p, x in jax.tree_util.tree_leaves_with_path(placed)})

    code = RESTORE.format(tests=str(pathlib.Path(__file__).parent), ckpt=str(tmp_path / "ckpt"),
                          npz=str(tmp_path / "want.npz"))
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4 "
                       "--xla_cpu_use_fusion_emitters=false")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
    got = json.loads(line[len("RESULT"):])
    assert got["step"] == 7
    assert got["n"] == len(jax.tree.leaves(placed))
    assert got["bad"] == [], f"restored values differ: {got['bad']}"
    # The new layout: data=1 x fsdp=2 x tensor=2 (the saved one was 2 x 2 x 2).
    assert got["specs"][".params['embed']"] == "P('tensor', 'fsdp')"   # TrainState path
    mu_key = next(k for k in got["specs"] if k.endswith("mu['blocks'][0]['mlp']['w_up']"))
    assert got["specs"][mu_key] == "P('fsdp', 'tensor')"
