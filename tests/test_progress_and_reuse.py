"""Honest progress: the bar in a log file is not redrawn every step; `mixjax mix` phases
show their bars; the baseline of `mix doge` and `mix doremi` is one run keyed by a hash."""

import pathlib

from mixjax import config as config_lib
from mixjax import workflows
from mixjax.train import loop
from train_fakes import fake_data, tiny_config

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def test_progress_bar_in_a_log_file_is_not_redrawn_every_step(tmp_path, capsys):
    cfg = tiny_config(tmp_path / "run", steps=8, eval_every=0, ckpt_every=0)
    cfg.train.progress, cfg.train.log_every = True, 1
    loop.train(cfg, data=fake_data(cfg))
    err = capsys.readouterr().err          # captured: not a terminal, mininterval 30 s
    bar_lines = [p for p in err.replace("\r", "\n").splitlines() if p.startswith("test:")]
    assert 1 <= len(bar_lines) <= 3, bar_lines      # first draw and the final one


def _recipe_config(name: str, *sets: str):
    return config_lib.load(CONFIGS / name, ["train.steps=7", "train.progress=True", *sets])


def test_mix_phases_show_progress_and_share_the_baseline_by_config_hash(tmp_path):
    doremi = _recipe_config("lm_tiny_doremi.py")
    doge = _recipe_config("lm_tiny_doge.py")
    phase = lambda cfg, out: workflows._phase_config(cfg, out / "b", 0, f"{cfg.name}_baseline",
                                                     baseline="natural")
    a, b = phase(doremi, tmp_path / "mix_doremi"), phase(doge, tmp_path / "mix_doge")
    assert a.train.progress and b.train.progress
    da = workflows.baseline_dir(tmp_path / "mix_doremi", a)
    assert da == workflows.baseline_dir(tmp_path / "mix_doge", b)
    assert da.parent == tmp_path / "mix_baselines" and da.name.startswith("natural-")
    # anything that changes the run changes the key
    longer = phase(_recipe_config("lm_tiny_doge.py", "train.steps=8"), tmp_path / "mix_doge")
    other_seed = workflows._phase_config(doge, tmp_path / "b", 1, "x", baseline="natural")
    assert len({da, workflows.baseline_dir(tmp_path / "mix_doge", longer),
                workflows.baseline_dir(tmp_path / "mix_doge", other_seed)}) == 3
