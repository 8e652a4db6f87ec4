"""Out-of-tree extensions from the command line (mixjax/plugins.py): a plugin package in
tmp_path registers a mixer with its own state; `mixjax train --plugin` trains with it and
records it; `mixjax eval` and `mixjax export` of that run import it by themselves, and
work even where it is not importable (a stored config loads without its registry). The
`mixjax.plugins` entry-point group is imported at CLI start."""

from __future__ import annotations

import json
import pathlib
import sys
import textwrap

import numpy as np
import pytest

from mixjax import cli, mixing, plugins

ROOT = pathlib.Path(__file__).resolve().parents[1]
UNIFORM = str(ROOT / "configs" / "lm_tiny_uniform.py")
TINY = ["train.steps=5", "model.d_model=16", "model.num_layers=1", "model.num_heads=2",
        "data.seq_len=16", "data.batch_size=8", "eval.num_seqs=2", "eval.batch_size=16",
        "train.eval_every=0", "train.ckpt_every=0", "optim.warmup_steps=1",
        "train.progress=False", "train.trackers=[]"]

PLUGIN = '''
"""A mixer with its own state: an EMA of each domain's loss, weights softmax(eta * ema)."""
import dataclasses

import jax
import jax.numpy as jnp

from mixjax import mixing


@mixing.register
@dataclasses.dataclass(frozen=True, kw_only=True)
class EMADRO(mixing.Mixer):
    name = "{name}"
    requires = frozenset({{"loss", "count"}})
    eta: float = 1.0
    decay: float = 0.5

    def init(self, num_domains):
        state = super().init(num_domains)
        return {{**state, "ema_loss": jnp.zeros((num_domains,), jnp.float32),
                "updates": jnp.zeros((), jnp.int32)}}

    def update(self, state, stats, step):
        present = stats["count"] > 0
        ema = jnp.where(present, self.decay * state["ema_loss"]
                        + (1.0 - self.decay) * stats["loss"], state["ema_loss"])
        w = jax.nn.softmax(self.eta * ema)
        return mixing.record_weights(state, w, ema_loss=ema, updates=state["updates"] + 1)
'''


def _forget(module: str, mixer: str) -> None:
    """What a fresh process without the plugin sees."""
    sys.modules.pop(module, None)
    plugins._loaded.pop(module, None)
    mixing.base._MIXERS._classes.pop(mixer, None)


def _package(root: pathlib.Path, module: str, mixer: str) -> pathlib.Path:
    pkg = root / module
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent(PLUGIN.format(name=mixer)))
    return root


def test_train_eval_export_with_a_plugin_mixer(tmp_path, monkeypatch, capsys):
    module, mixer = "mixjax_test_plugin_ema", "plugin_ema_dro"
    src = _package(tmp_path / "src", module, mixer)
    run = tmp_path / "run"
    argv = ["train", UNIFORM, "--out", str(run), "--set", f"mixing.name={mixer}",
            "--set", "mixing.hparams.eta=2.0"]
    for s in TINY:
        argv += ["--set", s]
    # without the plugin: exit 2 naming the key, before anything is built
    assert cli.main(argv) == 2
    assert "'mixing.name'" in capsys.readouterr().err and not run.exists()

    monkeypatch.syspath_prepend(str(src))
    try:
        assert cli.main(argv + ["--plugin", module]) == 0, capsys.readouterr().err
        capsys.readouterr()
        saved = json.loads((run / "config.json").read_text())
        assert saved["train"]["plugins"] == [module] and saved["mixing"]["name"] == mixer
        assert module in json.loads((run / "run_info.json").read_text())["plugins"]
        # the mixer's own state was trained and checkpointed
        rows = [json.loads(x) for x in (run / "weights.jsonl").read_text().splitlines()]
        w = np.array(list(rows[-1]["weights"].values()))
        assert abs(w.sum() - 1) < 1e-5 and not np.allclose(w, w[0])

        # eval and export import the recorded plugin by themselves
        _forget(module, mixer)
        assert cli.main(["eval", str(run)]) == 0, capsys.readouterr().err
        assert module in sys.modules and mixer in mixing.names()
        assert cli.main(["export", str(run), "--format", "safetensors"]) == 0
        assert (run / "model.safetensors").stat().st_size > 0
    finally:
        _forget(module, mixer)

    # where the plugin is not importable, the run's config still loads: eval and export work
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(src)])
    capsys.readouterr()
    assert cli.main(["eval", str(run), "--split", "test"]) == 0
    err = capsys.readouterr().err
    assert f"note: plugin recorded by {run}: {module!r} cannot be imported" in err
    assert cli.main(["export", str(run), "--format", "safetensors", "--out",
                     str(tmp_path / "again.safetensors")]) == 0


def test_entry_point_group_is_loaded_at_cli_start(tmp_path, monkeypatch, capsys):
    module, mixer = "mixjax_test_plugin_ep", "plugin_ep_dro"
    src = _package(tmp_path / "src", module, mixer)
    dist = src / "mixjax_test_plugin_ep-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mixjax-test-plugin-ep\n"
                                   "Version: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[mixjax.plugins]\nema = {module}\n")
    monkeypatch.syspath_prepend(str(src))
    try:
        assert mixer not in mixing.names()
        # any command: the plugin's mixer is known before the command runs
        assert cli.main(["data", "info", "mixpile-tiny"]) == 0
        assert mixer in mixing.names() and module in plugins.loaded()
    finally:
        _forget(module, mixer)


def test_plugin_errors_name_the_module(capsys):
    assert cli.main(["--plugin", "no_such_module_xyz", "data", "info", "mixpile-tiny"]) == 2
    assert "--plugin 'no_such_module_xyz' cannot be imported" in capsys.readouterr().err
    assert plugins.split_argv(["a", "--plugin", "m", "b", "--plugin=n"]) == (["a", "b"], ["m", "n"])
    with pytest.raises(plugins.PluginError, match="needs a module"):
        plugins.split_argv(["x", "--plugin"])
