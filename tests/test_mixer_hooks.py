"""Every hook the loop and the step read from a mixer is declared on the ``Mixer`` base class
(with a default and documentation), and on ``OwnWeights``, the view of a Method that owns
its weights: a new mixer sees all of them in one place (docs/extending.md)."""

import pathlib
import re

from mixjax import mixing
from mixjax.methods import OwnWeights, WeightsView

ROOT = pathlib.Path(__file__).resolve().parents[1]
READERS = ["mixjax/train/loop.py", "mixjax/core/step.py", "mixjax/methods/mixer.py",
           "mixjax/search/swarm.py", "mixjax/run"]
# what the loop reads through the weights view, which a Method's OwnWeights must have too
VIEW = {"name", "apply_to", "requires", "weights", "average", "multi_target", "wants_eval"}


def _read_hooks() -> set[str]:
    names = set()
    for rel in READERS:
        path = ROOT / rel
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path] if path.exists() else []
        for f in files:
            text = f.read_text()
            names |= set(re.findall(r"\bmixer\.([a-z_]+)", text))
            names |= set(re.findall(r"getattr\((?:self\.)?mixer, \"([a-z_]+)\"", text))
    return names


def test_every_hook_the_loop_reads_is_declared_on_the_base_class():
    hooks = _read_hooks()
    assert {"wants_eval", "multi_target", "requires", "apply_to"} <= hooks, hooks
    missing = sorted(h for h in hooks if not hasattr(mixing.Mixer, h))
    assert not missing, f"read by the loop/step but not declared on Mixer: {missing}"
    source = (ROOT / "mixjax/mixing/base.py").read_text()
    for hook in ("multi_target", "wants_eval"):
        # declared with a docstring right below it
        assert re.search(rf"\n    {hook}: ClassVar\[.*\] = .*\n    \"\"\"", source), hook


def test_defaults_and_views():
    m = mixing.get("uniform")
    assert m.multi_target is False and m.wants_eval is None
    assert mixing.get("doge").multi_target is True
    assert callable(mixing.get("aioli").wants_eval)
    own = OwnWeights(name="own")
    for attr in VIEW:
        assert hasattr(own, attr), attr
        assert attr in WeightsView.__annotations__ or hasattr(WeightsView, attr), attr
    assert own.multi_target is False and own.wants_eval is None
