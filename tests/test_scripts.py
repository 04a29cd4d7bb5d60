"""The scripts and experiments name only what the package has.

No test runs scripts/ or experiments/ end to end (they need the real data and minutes), so a name the package
moved or renamed would break them unseen: experiments/rhythm_search.py called heartbeat.train.run's
read_spectrograms for a month after it moved to heartbeat.train.inputs. This reads each file with ast and checks
every `from heartbeat.x import name` and every `alias.attribute` of a heartbeat module it imported under an alias.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = sorted([*(REPO / "scripts").glob("*.py"), *(REPO / "experiments").glob("*.py")])


def package_names(source: str) -> list[tuple[int, str, str]]:
    """(line, module, name) of every package name a source uses: from-imports, and attributes of module aliases.

    An alias counts in the function that imports it, and a module-level one in every function that does not bind
    the same name itself (as an argument or by assignment): `png` may be a module in one function and a path in
    the next.
    """
    tree = ast.parse(source)
    used = [(node.lineno, node.module, alias.name) for node in ast.walk(tree) if _package_import(node)
            for alias in node.names]
    module_aliases = _aliases(_scope_nodes(tree))
    for scope in [tree, *(node for node in ast.walk(tree) if isinstance(node, FUNCTIONS))]:
        nodes = list(_scope_nodes(scope))
        bound = {node.id for node in nodes if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store)}
        if scope is not tree:
            bound |= {argument.arg for argument in ast.walk(scope.args) if isinstance(argument, ast.arg)}
        aliases = {name: module for name, module in module_aliases.items() if name not in bound} | _aliases(nodes)
        used += [(node.lineno, aliases[node.value.id], node.attr) for node in nodes
                 if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases]
    return used


FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


def _scope_nodes(scope):
    """The nodes of one scope: its body, not the functions and classes defined in it."""
    for child in ast.iter_child_nodes(scope):
        if isinstance(child, (*FUNCTIONS, ast.ClassDef)):
            continue
        yield child
        yield from _scope_nodes(child)


def _package_import(node) -> bool:
    return isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "heartbeat"


def _aliases(nodes) -> dict[str, str]:
    """Local name -> the heartbeat name it is bound to by the imports among nodes (a module or not: see missing)."""
    aliases = {}
    for node in nodes:
        if _package_import(node):
            aliases.update({alias.asname or alias.name: f"{node.module}.{alias.name}" for alias in node.names})
        elif isinstance(node, ast.Import):
            aliases.update({alias.asname: alias.name for alias in node.names
                            if alias.asname and alias.name.split(".")[0] == "heartbeat"})
    return aliases


def missing(module_name: str, name: str) -> bool:
    """Whether `name` is neither an attribute nor a submodule of module_name (True too if that is no module)."""
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError:
        return False  # an alias of a function or class, not a module: its attributes are not the package's names
    if hasattr(module, name):
        return False
    try:
        importlib.import_module(f"{module_name}.{name}")
    except ModuleNotFoundError:
        return True
    return False


def test_the_checker_finds_a_moved_name():
    source = ("from heartbeat.train import run as train\nfrom heartbeat.train.inputs import read_spectrograms\n"
              "train.read_spectrograms('x')\ntrain.train\n"
              "def f():\n    from heartbeat.data import png\n    return png.encode_png\n"
              "def g(png):\n    return png.name, train.nowhere\n")
    found = [(line, module, name) for line, module, name in package_names(source) if missing(module, name)]
    assert sorted(found) == [(3, "heartbeat.train.run", "read_spectrograms"), (9, "heartbeat.train.run", "nowhere")]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_every_package_name_a_script_uses_exists(script):
    absent = [f"{script.name}:{line}: {module}.{name}"
              for line, module, name in package_names(script.read_text(encoding="utf-8")) if missing(module, name)]
    assert not absent, "names the package does not have: " + "; ".join(absent)
