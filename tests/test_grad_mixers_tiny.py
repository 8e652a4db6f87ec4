"""Behaviour of the gradient-signal mixers on mixpile-tiny (tiny model, 40-50 steps each).

The longer versions and their printed weights: ``python -m experiments.grad_mixers_tiny``.
"""

import pathlib

import pytest

from experiments import grad_mixers_tiny as exp

STEPS = 50


@pytest.fixture
def workdir(tmp_path) -> pathlib.Path:
    return tmp_path


def _weight(result, domain, which="final"):
    return result[which][result["domains"].index(domain)]


def test_dga_with_code_target_raises_code_weight(workdir):
    r = exp.run_check("dga", 40, workdir)     # updates from step 20 (start_step)
    k = len(r["domains"])
    assert _weight(r, "code") > 1 / k, r
    assert _weight(r, "code", "average") > 1 / k, r


def test_doge_ood_with_code_target_raises_code_weight(workdir):
    r = exp.run_check("doge-ood", STEPS, workdir)
    assert _weight(r, "code") > 1 / len(r["domains"]), r


def test_doge_universal_pushes_random_bytes_down(workdir):
    r = exp.run_check("doge-univ", STEPS, workdir)
    k = len(r["domains"])
    assert _weight(r, "noise") < 1 / k, r
    assert _weight(r, "noise", "average") < 1 / k, r


def test_bilevel_with_code_validation_raises_code_weight(workdir):
    r = exp.run_check("bilevel", STEPS, workdir)
    assert _weight(r, "code") > 1 / len(r["domains"]), r
