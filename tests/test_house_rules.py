"""Static rules of the house layout, checked on the source text (nothing checked is imported):

- Slicer-side code reaches the engine only through ``PairSegLib.engine.torchFreeEngineModule``;
- the engine's import graph (module-level and function-level imports) has no cycle;
- each shared fact is written out in one module: image/label suffixes, organ colours and the
  class-name rule (``pairseg.constants``), the duration format (``pairseg.events``), the
  architecture facts (``pairseg.architectures``);
- no function of the engine or the Slicer modules (tests aside) is longer than 80 lines;
- pyproject.toml packages every engine package.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENGINE = ROOT / "src" / "pairseg"
SLICER_SIDE = ("PairSeg", "PairSegTrainer")


def _python_files(top: Path):
    """The non-test Python files under ``top`` (no Testing/ or tests/ folders)."""
    return sorted(p for p in top.rglob("*.py") if not {"Testing", "tests"} & set(p.relative_to(top).parts))


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _imported_modules(tree: ast.Module):
    """(line, module name) of every absolute import statement of a module, nested ones included."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            yield node.lineno, node.module


# Known exception, in a file of the PairSeg panel's own change: PairSeg.py reads the catalog with
# a direct import (to go through ``torchFreeEngineModule("modelfiles.catalog")`` at merge).
SLICER_SIDE_EXCEPTIONS: set = set()


def test_slicer_side_reaches_the_engine_only_through_torch_free_engine_module():
    found = []
    for top in SLICER_SIDE:
        for path in _python_files(ROOT / top):
            relative = path.relative_to(ROOT).as_posix()
            for line, module in _imported_modules(_tree(path)):
                if module.split(".")[0] == "pairseg" and (relative, module) not in SLICER_SIDE_EXCEPTIONS:
                    found.append(f"{relative}:{line}: import of {module}")
    assert not found, "use PairSegLib.engine.torchFreeEngineModule(...):\n" + "\n".join(found)


# ---- the engine's import graph ---------------------------------------------------------------


def _package_modules(package: Path) -> dict[str, Path]:
    """{dotted name: file} of every module of ``package`` (sub-packages by their __init__)."""
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _imports_within(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of ``modules`` that ``name`` imports, at module level or inside functions."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # "from package import module" imports the module; "from module import name", the module
            submodules = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules]
            targets = submodules if len(submodules) == len(node.names) else [base] + submodules
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[str]:
    state: dict[str, str] = {}
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                cycles.append(" -> ".join(trail[trail.index(target):] + [node, target]) if target in trail
                              else f"{node} -> {target}")
            elif target not in state:
                visit(target, trail + [node])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    return cycles


# The engine, and the Slicer side as Slicer loads it (both module folders on sys.path: PairSegLib,
# PairSegTrainerLib and the module files import each other by these names).
HOUSE_PACKAGES = {"engine": [ENGINE], "Slicer side": [ROOT / "PairSeg" / "PairSegLib",
                                                       ROOT / "PairSegTrainer" / "PairSegTrainerLib"]}


@pytest.mark.parametrize("side", sorted(HOUSE_PACKAGES))
def test_the_import_graph_has_no_cycle(side):
    modules = {name: path for package in HOUSE_PACKAGES[side] for name, path in _package_modules(package).items()}
    if side == "Slicer side":
        modules.update({path.stem: path for path in (ROOT / "PairSeg" / "PairSeg.py",
                                                     ROOT / "PairSegTrainer" / "PairSegTrainer.py")})
    graph = {name: _imports_within(name, path, modules) for name, path in modules.items()}
    assert sum(map(len, graph.values())) > len(graph) / 2  # the scan sees imports at all
    cycles = _cycles(graph)
    assert not cycles, f"import cycles ({side}):\n" + "\n".join(cycles)


# ---- each shared fact defined once -------------------------------------------------------------


def _non_test_files():
    """Every non-test Python file of the engine and of the Slicer modules."""
    return [path for top in (ENGINE, *(ROOT / name for name in SLICER_SIDE)) for path in _python_files(top)]


def _strings(node: ast.AST) -> list[str]:
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def _numbers(node: ast.AST) -> list[tuple]:
    """The tuples of three number literals in ``node`` (colours)."""
    return [tuple(e.value for e in n.elts) for n in ast.walk(node) if isinstance(n, (ast.Tuple, ast.List))
            and len(n.elts) == 3 and all(isinstance(e, ast.Constant) and isinstance(e.value, float) for e in n.elts)]


def _is_suffix_list(node: ast.AST) -> bool:
    """A literal tuple or list of file suffixes that names an image format (".nii", ".nrrd" ...)."""
    if not isinstance(node, (ast.Tuple, ast.List)) or len(node.elts) < 3:
        return False
    values = [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
    return len(values) == len(node.elts) and {".nii", ".nrrd"} <= set(values)


ARCHITECTURE_FACTS = {"ARCHITECTURE_TABLE", "ARCHITECTURES", "ARCHITECTURE_LABELS", "ARCHITECTURE_NAMES",
                      "ARCH_OPTIONS", "PAIRWISE_ARCHITECTURES", "BASES"}
ARCHITECTURE_NAMES = {"c2fcn", "cfcn", "deeplabv3plus", "unet", "siamfcn"}


def _is_architecture_fact(node: ast.AST) -> bool:
    """An assignment of one of the architecture facts' names to a value that spells out
    architecture names (not one computed from the table), or a GUI label of one."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value.startswith("C2FCN (")
    if not isinstance(node, (ast.Assign, ast.AnnAssign)) or node.value is None:
        return False
    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
    names = {t.id for t in targets if isinstance(t, ast.Name)}
    return bool(names & ARCHITECTURE_FACTS) and bool(ARCHITECTURE_NAMES & set(_strings(node.value)))


LIVER_COLOUR = (0.867, 0.510, 0.396)
CLASS_RULE = re.compile(r"\[(?=[^\]]*\\s)(?=[^\]]*_)(?=[^\]]*\\-)[^\]]*\]\+")  # a [\s_\-]+ class, any order
DURATION = re.compile(r"h\{.*:02d\}m")

# Known exceptions, as (path, fact): none today.
FACT_EXCEPTIONS: set = set()


def _facts(path: Path) -> set[str]:
    """Which shared facts ``path`` writes out itself."""
    tree, found = _tree(path), set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            if _is_suffix_list(node.value):
                found.add("image/label suffixes")
        if _is_architecture_fact(node):
            found.add("architecture names")
        if isinstance(node, (ast.Tuple, ast.List)) and {"mci", "fusion", "pairwise"} <= {
                e.value for e in node.elts if isinstance(e, ast.Constant)}:
            found.add("fill methods")
    if LIVER_COLOUR in _numbers(tree):
        found.add("organ colours")
    strings = _strings(tree)
    if any(CLASS_RULE.search(s) for s in strings):
        found.add("class-name rule")
    formats = [ast.unparse(n) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr)]
    if any(DURATION.search(s) for s in strings + formats):
        found.add("duration format")
    return found


HOMES = {"image/label suffixes": "src/pairseg/constants.py", "organ colours": "src/pairseg/constants.py",
         "class-name rule": "src/pairseg/constants.py", "duration format": "src/pairseg/events.py",
         "architecture names": "src/pairseg/architectures.py", "fill methods": "src/pairseg/constants.py"}


def test_each_shared_fact_is_written_out_once():
    where: dict[str, list[str]] = {fact: [] for fact in HOMES}
    for path in _non_test_files():
        relative = path.relative_to(ROOT).as_posix()
        for fact in _facts(path):
            if (relative, fact) not in FACT_EXCEPTIONS:
                where[fact].append(relative)
    assert where == {fact: [home] for fact, home in HOMES.items()}


# ---- size of functions, packaging ---------------------------------------------------------------

MAX_FUNCTION_LINES = 80
# Known exceptions: none today (a function of another change that grows past the limit goes here,
# as "path:function", until it is split).
LONG_FUNCTION_EXCEPTIONS: set[str] = set()


def test_no_function_is_longer_than_80_lines():
    long = []
    for path in _non_test_files():
        relative = path.relative_to(ROOT).as_posix()
        for node in ast.walk(_tree(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                lines = node.end_lineno - first + 1
                if lines > MAX_FUNCTION_LINES and f"{relative}:{node.name}" not in LONG_FUNCTION_EXCEPTIONS:
                    long.append(f"{relative}:{first}: {node.name} has {lines} lines")
    assert not long, "\n".join(long)


def test_every_engine_package_is_packaged():
    """pyproject.toml lists each engine package: a wheel without one cannot import it (the
    extension's CMake list is checked by Testing/test_pairseg_module.py)."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    packages = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["packages"]
    found = sorted(".".join(p.parent.relative_to(ENGINE.parent).parts) for p in ENGINE.rglob("__init__.py"))
    assert sorted(packages) == found


# ---- the torch-free engine modules the Slicer side reads ----------------------------------------


def _torch_free_names() -> set[str]:
    """The module names Slicer-side code passes to ``torchFreeEngineModule("...")``."""
    names = set()
    for top in SLICER_SIDE:
        for path in _python_files(ROOT / top):
            for node in ast.walk(_tree(path)):
                if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) \
                        == "torchFreeEngineModule" and node.args and isinstance(node.args[0], ast.Constant):
                    names.add(node.args[0].value)
    return names


# The homes of the shared facts: standard library only (no numpy either).
STANDARD_LIBRARY_ONLY = {"constants", "architectures", "config", "events", "atomic", "errors", "paths",
                         "modelfiles.fileformat", "modelfiles.catalog"}


def test_torch_free_engine_modules_import_without_torch():
    """Every module the Slicer side asks for by name imports with torch blocked; the fact homes
    with numpy blocked too."""
    import subprocess
    import sys

    names = _torch_free_names()
    assert {"constants", "modelfiles.catalog", "modelfiles.fileformat", "events"} <= names
    script = (f"import importlib, sys\nsys.path.insert(0, {str(ROOT / 'src')!r})\n"
              "blocked = sys.argv[1].split(',')\n"
              "for name in blocked: sys.modules[name] = None\n"
              "for name in sys.argv[2].split(','): importlib.import_module('pairseg.' + name)\n")
    for blocked, modules in (("torch,monai", names), ("torch,monai,numpy,SimpleITK", STANDARD_LIBRARY_ONLY)):
        done = subprocess.run([sys.executable, "-c", script, blocked, ",".join(sorted(modules))],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
