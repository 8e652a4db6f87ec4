"""The leaderboard's configs: every method on one budget and one set of eval sets; the CPU-sized
leaderboard end to end in the slow tier."""

import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from configs import leaderboard_mixpile as board  # noqa: E402
from mixjax.compare import runs as runs_lib  # noqa: E402
from mixjax import mixing  # noqa: E402


@pytest.mark.parametrize("size", ["tiny", "mixpile"])
def test_every_method_shares_budget_eval_sets_and_seeds(size, tmp_path):
    cfgs = board.configs(size, reference=str(tmp_path / "ref"), policy=str(tmp_path / "p.json"))
    assert [c.name for c in cfgs] == list(board.METHODS)
    grid = runs_lib.plan_grid(cfgs, 3, [], tmp_path)   # raises on a budget / eval-set mismatch
    assert len(grid) == 3 * len(board.METHODS)
    assert len({r.run_dir for r in grid}) == len(grid)
    assert all(c.eval.split == "validation" for c in cfgs)


def test_leaderboard_covers_every_registered_mixer():
    used = {c.mixing.name for c in board.configs("tiny", reference="r", policy="p.json")}
    # Only the package's own mixers: tests and the docs' worked examples register others (plugins)
    # in the same worker. manual: user-given weights, nothing to rank. moe_dynamic: it reads the
    # expert routing of a mixture-of-experts model (model.kind=moe), and the leaderboard ranks
    # every method on one dense model; its comparison is configs/lm_tiny_moe_dynamic_mix.py.
    own = {n for n in mixing.names() if mixing.mixer_class(n).__module__.startswith("mixjax.")}
    missing = own - used - {"manual", "moe_dynamic"}
    assert not missing, f"registered mixers not on the leaderboard: {sorted(missing)}"


@pytest.mark.slow
def test_tiny_leaderboard_runs_every_method(tmp_path):
    """Every method x 3 seeds through the leaderboard script, shortened to 20 steps (the published
    table uses the full 150; docs/leaderboard.md)."""
    from experiments.leaderboard_mixpile import run
    res = run("tiny", 3, tmp_path, progress=False, compile_cache=False,
              overrides=["train.steps=20", "train.eval_every=10", "train.ckpt_every=10"])
    md = res["results_md"].read_text()
    for m in board.METHODS:
        assert f"| {m} | 3 |" in md, m
    assert res["counts"]["trained"] == 3 * len(board.METHODS)
