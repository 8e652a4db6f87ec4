"""``mixjax compare --swarm``: static mixtures' seeds as one swarm; non-static configs exit 2."""

import json
import textwrap

import numpy as np
import pytest

from mixjax import cli

CONFIG = textwrap.dedent('''
    from mixjax.config import Config

    def get_config():
        cfg = Config(name="{name}")
        cfg.data.corpus = "mixpile-tiny"
        cfg.data.seq_len = 16
        cfg.data.batch_size = 8
        cfg.data.sampler = "stratified"
        cfg.model.d_model = 16
        cfg.model.num_layers = 1
        cfg.model.num_heads = 2
        cfg.train.steps = 3
        cfg.train.eval_every = 0
        cfg.train.ckpt_every = 0
        cfg.eval.num_seqs = 2
        cfg.eval.batch_size = 2
        cfg.mixing.name = "{mixer}"
        return cfg
''')


def _cfg(tmp_path, name, mixer):
    p = tmp_path / f"{name}.py"
    p.write_text(CONFIG.format(name=name, mixer=mixer))
    return str(p)


def test_a_non_static_mixer_exits_2_naming_the_config(tmp_path, capsys):
    cfgs = [_cfg(tmp_path, "uni", "uniform"), _cfg(tmp_path, "dro", "groupdro")]
    out = tmp_path / "out"
    assert cli.main(["compare", *cfgs, "--swarm", "--seeds", "8", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "config 'dro': --swarm trains static mixtures only" in err
    assert err.strip().count("\n") == 0 and not any(out.glob("swarm_*"))


@pytest.mark.slow
def test_eight_seeds_of_two_static_mixtures_as_swarms(tmp_path, capsys):
    cfgs = [_cfg(tmp_path, "uni", "uniform"), _cfg(tmp_path, "nat", "natural")]
    out = tmp_path / "out"
    assert cli.main(["compare", *cfgs, "--swarm", "--seeds", "8", "--out", str(out)]) == 0
    res = json.loads((out / "results_swarm.json").read_text())
    assert res["baseline"] == "uni"
    for name in ("uni", "nat"):
        loss = np.array(res["methods"][name]["losses"])
        assert loss.shape == (8, 8) and np.isfinite(loss).all()
        assert len(np.unique(loss[:, 0])) == 8          # 8 different seeds
    # a repeat reuses the finished swarms and reproduces the table
    first = (out / "results_swarm.md").read_text()
    assert cli.main(["compare", *cfgs, "--swarm", "--seeds", "8", "--out", str(out)]) == 0
    assert (out / "results_swarm.md").read_text() == first
