"""The floor plan's rules (docs/design.md), checked on the source: no import cycle, import-free package
__init__s, and modules and functions of a readable size.

The import graph is read with ast, not by importing: an import inside a function counts as much as one at the
top (it is a cycle all the same, only later), `from heartbeat.x import y` counts y when y is a module, and
importing heartbeat.a.b counts heartbeat.a (its __init__ runs first). Standard library only.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "heartbeat"
# The stage packages' __init__s: `heartbeat --help` and predict import through them, so they stay import-free.
STAGE_INITS = ["data", "train", "report", "train/recipes"]
HEAVY = ("numpy", "torch", "torchvision", "fastai", "pandas", "matplotlib", "onnxruntime", "onnx", "soundfile", "PIL")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 50  # from the first decorator to the last line, docstring included

# Known offenders on the day this test was written, while the modules are being split (issue 19). Each may only
# shrink; the test fails when one grows, when a new one appears, and when one is gone (then delete its line).
KNOWN_CYCLES: set[frozenset[str]] = set()
KNOWN_LONG_MODULES: dict[str, int] = {}  # path under heartbeat/: lines
KNOWN_LONG_FUNCTIONS: dict[str, int] = {}  # "path:function": lines


def module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(root: Path, path: Path, known: set[str]) -> set[str]:
    """The known modules a file imports, at any depth (relative imports resolved)."""
    name = module_name(root, path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return {module for module in found if module in known}


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the package's modules it imports; importing a.b.c also runs a and a.b (their __init__s)."""
    files = {module_name(root, path): path for path in (root / package).rglob("*.py")}
    graph = {name: imported_modules(root, path, set(files)) - {name} for name, path in files.items()}
    for name, targets in graph.items():
        for target in list(targets):
            parts = target.split(".")
            # Ancestors the importer lives in are already being imported when it runs (a package's own
            # __init__ re-exporting its submodules is no cycle); an explicit import of one still counts.
            targets |= {ancestor for ancestor in (".".join(parts[:i]) for i in range(1, len(parts)))
                        if ancestor != name and not name.startswith(ancestor + ".")}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """Every elementary cycle, as the set of its modules (each found once, from its smallest module)."""
    cycles = set()

    def visit(node: str, path: list[str]) -> None:
        for target in sorted(graph.get(node, ())):
            if target == path[0]:
                cycles.add(frozenset(path))
            elif target not in path and target > path[0]:
                visit(target, path + [target])

    for start in sorted(graph):
        visit(start, [start])
    return cycles


def line_counts() -> tuple[dict[str, int], dict[str, int]]:
    """({module path: lines}, {"path:function": lines}) for every module and function of heartbeat/."""
    modules, functions = {}, {}
    for path in sorted(PACKAGE.rglob("*.py")):
        key, text = path.relative_to(PACKAGE).as_posix(), path.read_text(encoding="utf-8")
        modules[key] = len(text.splitlines())
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno] + [decorator.lineno for decorator in node.decorator_list])
                functions[f"{key}:{node.name}"] = max(functions.get(f"{key}:{node.name}", 0), node.end_lineno - start + 1)
    return modules, functions


def over_the_limit(sizes: dict[str, int], limit: int, known: dict[str, int]) -> list[str]:
    """What breaks the limit beyond the known list, and known entries that grew or are gone."""
    problems = [f"{key}: {lines} lines (limit {limit})" for key, lines in sizes.items()
                if lines > limit and lines > known.get(key, limit)]
    problems += [f"{key}: no longer over {limit} lines (or gone): delete it from the known list"
                 for key in known if sizes.get(key, 0) <= limit]
    return problems


# ---------------------------------------------------------------- import cycles

def test_the_cycle_finder_sees_function_level_and_from_package_imports(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def later():\n    from pkg import b\n")  # `from package import module`, lazily
    (package / "b.py").write_text("import pkg.c\n")
    (package / "c.py").write_text("from .a import later\n")
    (package / "sub" / "__init__.py").write_text("from pkg import d\n")
    (package / "sub" / "e.py").write_text("")
    (package / "d.py").write_text("import pkg.sub.e\n")  # runs pkg/sub/__init__ first, which imports d
    cycles = find_cycles(import_graph(tmp_path, "pkg"))
    assert frozenset({"pkg.a", "pkg.b", "pkg.c"}) in cycles
    assert frozenset({"pkg.d", "pkg.sub"}) in cycles


def test_a_package_re_exporting_its_submodules_is_no_cycle_unless_one_imports_the_package(tmp_path):
    package = tmp_path / "pkg"
    (package / "facade").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "facade" / "__init__.py").write_text("from pkg.facade.part import f\n")
    (package / "facade" / "part.py").write_text("from pkg.facade.other import g\n")
    (package / "facade" / "other.py").write_text("")
    assert find_cycles(import_graph(tmp_path, "pkg")) == set()
    (package / "facade" / "other.py").write_text("from pkg.facade import f\n")  # back into the package: a cycle
    assert frozenset({"pkg.facade", "pkg.facade.part", "pkg.facade.other"}) in find_cycles(import_graph(tmp_path, "pkg"))


def test_no_import_cycle_in_the_package():
    cycles = find_cycles(import_graph(REPO, "heartbeat"))
    new = [" -> ".join(sorted(cycle)) for cycle in cycles - KNOWN_CYCLES]
    gone = [" -> ".join(sorted(cycle)) for cycle in KNOWN_CYCLES - cycles]
    assert not new, f"import cycles: {new}"
    assert not gone, f"no longer a cycle, delete it from KNOWN_CYCLES: {gone}"


# ---------------------------------------------------------------- package __init__s

@pytest.mark.parametrize("package", STAGE_INITS)
def test_stage_package_inits_import_only_the_standard_library(package):
    path = PACKAGE / package / "__init__.py"
    imported = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add("." if node.level else (node.module or "").split(".")[0])
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, (path, imported)


def test_importing_the_stage_packages_loads_nothing_heavy():
    code = ("import sys\nimport " + ", ".join("heartbeat." + package.replace("/", ".") for package in STAGE_INITS)
            + f"\nprint(','.join(sorted(set({HEAVY!r}) & set(sys.modules))))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


# ---------------------------------------------------------------- sizes

def test_no_module_over_the_line_limit_beyond_the_known_ones():
    modules, _ = line_counts()
    assert over_the_limit(modules, MAX_MODULE_LINES, KNOWN_LONG_MODULES) == []


def test_no_function_over_the_line_limit_beyond_the_known_ones():
    _, functions = line_counts()
    assert over_the_limit(functions, MAX_FUNCTION_LINES, KNOWN_LONG_FUNCTIONS) == []


def test_the_size_guard_flags_growth_new_offenders_and_stale_entries():
    known = {"a.py": 450, "b.py": 420}
    assert over_the_limit({"a.py": 440, "b.py": 420, "c.py": 100}, 400, known) == []
    assert len(over_the_limit({"a.py": 451, "b.py": 420}, 400, known)) == 1  # grew
    assert len(over_the_limit({"a.py": 450, "b.py": 420, "c.py": 401}, 400, known)) == 1  # new
    assert len(over_the_limit({"a.py": 450, "b.py": 399}, 400, known)) == 1  # fixed: its line must go
