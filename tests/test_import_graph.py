"""The package imports cleanly, its module graph has no circles, and its layers point down.

Every ``import`` / ``from ... import`` statement naming a mixjax module counts,
including the ones inside functions (a deferred import is still a dependency:
it only hides the circle until the function runs). Edges from a module to its
own parent packages are implied by Python and not counted.
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
PKG = ROOT / "mixjax"


def _modules() -> dict[str, pathlib.Path]:
    mods = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def import_graph() -> dict[str, set[str]]:
    """``module -> {mixjax modules it imports}`` from the source (all import statements)."""
    mods = _modules()

    def owner(name: str) -> str | None:   # the module a dotted name lives in
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    keep = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(keep + ([base] if base else []))
                # `from pkg import sub` depends on pkg.sub when sub is a module, else on pkg
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base
                           for a in node.names]
            else:
                continue
            for target in targets:
                dep = owner(target) if target.split(".")[0] == "mixjax" else None
                if dep and dep != mod and not mod.startswith(dep + "."):
                    graph[mod].add(dep)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path ``[a, b, ..., a]``, or None (iterative DFS)."""
    state: dict[str, int] = {}          # 1 = on the current path, 2 = done
    for root in sorted(graph):
        if root in state:
            continue
        path, stack = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def test_find_cycle_detects_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_graph_sees_deferred_imports():
    graph = import_graph()
    # methods.base imports core.step only inside token_loss_fn; the run-build checks import
    # the Methods only inside a function
    assert "mixjax.core.step" in graph["mixjax.methods.base"]
    assert "mixjax.methods" in graph["mixjax.train.checks"]


def test_module_graph_is_acyclic():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_every_module_imports_in_a_fresh_interpreter():
    mods = sorted(m for m in _modules() if not m.endswith("__main__"))
    code = ("import importlib, sys\n"
            f"for m in {mods!r}:\n"
            "    importlib.import_module(m)\n"
            "print('ok', len(sys.modules))\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env={**__import__("os").environ, "PYTHONPATH": str(ROOT),
                                           "JAX_PLATFORMS": "cpu"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.startswith("ok")


# The layers, lowest first. A module may import its own layer and any lower one, never a
# higher one (deferred imports inside functions count). Packages not listed (data, parallel,
# dg, search, compare, cli, ...) are free of this rule except that no listed layer below
# them may import them back through it (checked by the acyclic test above).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("config", ("mixjax.errors", "mixjax.registry", "mixjax.config", "mixjax.config_engine",
                "mixjax.plugins", "mixjax.atomic")),
    ("run identity", ("mixjax.run_identity",)),
    ("models", ("mixjax.models",)),
    ("mixing", ("mixjax.mixing",)),
    ("core (state, step, contract)", ("mixjax.core",)),
    ("methods", ("mixjax.methods",)),
    ("engine (train loop, run engine, eval, export)", ("mixjax.train", "mixjax.run")),
]


def layer_of(module: str) -> int | None:
    for i, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    return None


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """``a -> b`` edges where ``b`` sits in a higher layer than ``a``."""
    bad = []
    for mod, deps in sorted(graph.items()):
        lo = layer_of(mod)
        if lo is None:
            continue
        for dep in sorted(deps):
            hi = layer_of(dep)
            if hi is not None and hi > lo:
                bad.append(f"{mod} ({LAYERS[lo][0]}) imports {dep} ({LAYERS[hi][0]})")
    return bad


def test_layer_check_detects_an_upward_import():
    graph = {"mixjax.methods.base": {"mixjax.train.loop"}, "mixjax.train.loop": {"mixjax.methods"},
             "mixjax.models.hf_io": {"mixjax.train.checkpoint"}, "mixjax.config": {"mixjax.mixing"}}
    assert layer_violations(graph) == [
        "mixjax.config (config) imports mixjax.mixing (mixing)",
        "mixjax.methods.base (methods) imports mixjax.train.loop (engine (train loop, run engine, "
        "eval, export))",
        "mixjax.models.hf_io (models) imports mixjax.train.checkpoint (engine (train loop, run "
        "engine, eval, export))"]


def test_layers_point_down():
    """config < run identity < models < mixing < core < methods < engine (train/, run/):
    config loading imports no registry, models never read checkpoints, methods never import
    the loop."""
    bad = layer_violations(import_graph())
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)
