"""``mixjax search dcpt`` / ``sft``: proxies continue pre-trained parameters, bad input exits 2
before anything trains, and (slow) the tiny D-CPT search runs end to end."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from mixjax import cli

CONFIG = textwrap.dedent('''
    from mixjax.config import Config

    def get_config():
        cfg = Config(name="search_cpt_test")
        cfg.data.corpus = "mixpile-tiny"
        cfg.data.seq_len = 16
        cfg.data.batch_size = 8
        cfg.data.sampler = "stratified"
        cfg.model.d_model = 16
        cfg.model.num_layers = 1
        cfg.model.num_heads = 2
        cfg.train.steps = 4
        cfg.train.eval_every = 2
        cfg.eval.num_seqs = 2
        cfg.eval.batch_size = 2
        return cfg

    def get_search():
        return {"general": "news", "domain": "code", "ratios": [0.0, 0.5, 1.0]}
''')


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "cpt_cfg.py"
    path.write_text(CONFIG)
    return str(path)


def test_swarm_proxies_start_from_model_init_from(tmp_path):
    from mixjax import config as config_lib
    from mixjax.models import hf_io, transformer
    from mixjax.search import swarm as S
    from mixjax.train.data import build_data
    from mixjax.train.lm_model import model_config
    cfg = config_lib.load(importlib_config(tmp_path))
    data = build_data(cfg)
    mcfg = model_config(cfg, data.vocab_size)
    _, params, _ = transformer.init(mcfg, 123)
    path = tmp_path / "pre.safetensors"
    hf_io.save_safetensors(hf_io.to_llama(jax.tree.map(np.asarray, params), mcfg), path)
    cfg.model.init_from = str(path)
    sw = S.Swarm(cfg, np.array([[1.0] + [0.0] * 7, [0.5, 0.5] + [0.0] * 6]), data=data)
    state = sw.init_state_unplaced()
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(state["proxy"].params)):
        for p in range(2):      # every proxy holds the pre-trained parameters
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b[p]))
    cfg.model.init_from = str(tmp_path / "missing.safetensors")
    with pytest.raises(S.SwarmError, match="model.init_from"):
        S.Swarm(cfg, np.array([[1.0] + [0.0] * 7]), data=data)


def importlib_config(tmp_path):
    path = tmp_path / "cfg_for_swarm.py"
    path.write_text(CONFIG)
    return str(path)


@pytest.mark.parametrize("method,extra,message", [
    ("dcpt", [], "no pre-trained run to continue"),
    ("sft", [], "no pre-trained run to continue"),
    ("dcpt", ["--init-from", "/no/such/run"], "no such run '/no/such/run'"),
    ("dcpt", ["--init-from", "RUN", "--search-set", "ratios=[0.0, 0.5, 1.5]"],
     "must lie in [0, 1], got [1.5]"),
    ("dcpt", ["--init-from", "RUN", "--search-set", "ratios=[0.5, 0.5, 1.0]"],
     ">= 3 distinct ratios"),
    ("dcpt", ["--init-from", "RUN", "--search-set", "general=code"], "two different"),
    ("dcpt", ["--init-from", "RUN", "--search-set", "domain=poetry"],
     "'poetry' is not a training domain"),
    ("dcpt", ["--init-from", "RUN", "--proxy-set", "train.eval_every=0"],
     "needs >= 2 evaluations per proxy"),
])
def test_bad_input_exits_2_with_one_line_before_training(config, tmp_path, capsys, method,
                                                         extra, message):
    run = tmp_path / "run"
    run.mkdir()
    extra = [str(run) if x == "RUN" else x for x in extra]
    out = tmp_path / "out"
    assert cli.main(["search", method, config, "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert err.strip().count("\n") == 0
    assert not any(out.glob("swarm_*"))


def test_an_out_dir_of_another_search_is_refused(tmp_path):
    from mixjax.search.settings import SearchError, claim_out
    rec = {"method": "dcpt", "ratios": np.array([0.0, 0.5, 1.0]), "init_from": ["a"]}
    claim_out(tmp_path, "design.json", rec)
    claim_out(tmp_path, "design.json", dict(rec))          # the same search: reused
    with pytest.raises(SearchError, match=r"holds a different search \(ratios differ\)"):
        claim_out(tmp_path, "design.json", {**rec, "ratios": np.array([0.0, 1.0, 0.2])})


@pytest.mark.slow
def test_tiny_dcpt_search_runs_end_to_end(tmp_path):
    """Two tiny pre-trained runs (d_model 16 and 32), then the dcpt search on them."""
    env = {**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).resolve().parents[1])}
    runs = []
    for d in (16, 32):
        run = tmp_path / f"pre{d}"
        subprocess.run([sys.executable, "-m", "mixjax", "train", "configs/lm_tiny_uniform.py",
                        "--set", f"model.d_model={d}", "--set", "model.num_layers=1",
                        "--set", "model.num_heads=2", "--set", "data.seq_len=16",
                        "--set", "data.batch_size=8", "--set", "train.steps=20",
                        "--set", "train.eval_every=0", "--set", f"train.run_dir={run}"],
                       check=True, env=env, cwd=env["PYTHONPATH"], capture_output=True)
        runs.append(str(run))
    out = tmp_path / "dcpt"
    assert cli.main(["search", "dcpt", "configs/search_tiny_dcpt.py", "--init-from",
                     ",".join(runs), "--out", str(out), "--proxy-set", "train.steps=20",
                     "--proxy-set", "train.eval_every=5", "--set", "data.seq_len=16"]) == 0
    fit = json.loads((out / "fit.json").read_text())
    w = json.loads((out / "weights.json").read_text())
    r = fit["usages"]["ratio_under_budget"]
    assert 0.0 <= r <= 1.0
    assert w["weights_by_domain"]["code"] == pytest.approx(r)
    assert w["weights_by_domain"]["news"] == pytest.approx(1 - r)
    assert fit["usages"]["general_loss_at_ratio"] <= fit["usages"]["general_budget"] + 1e-9
    assert len(fit["sizes_N"]) == 2 and (out / "dcpt.png").exists()
    # a repeat reuses both swarms; other ratios into the same --out are refused
    args = ["search", "dcpt", "configs/search_tiny_dcpt.py", "--init-from", ",".join(runs),
            "--out", str(out), "--proxy-set", "train.steps=20", "--proxy-set",
            "train.eval_every=5", "--set", "data.seq_len=16"]
    assert cli.main(args) == 0
    assert json.loads((out / "fit.json").read_text())["usages"]["ratio_under_budget"] == r
    assert cli.main(args + ["--search-set", "ratios=[0.0, 0.5, 1.0]"]) == 2
