"""Static rules of the house layout, checked on the source text (no imports of the code checked):

- Slicer-side code reaches the engine only through ``PairSegLib.engine.torchFreeEngineModule``;
"""

from __future__ import annotations

import ast
from pathlib import Path

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
SLICER_SIDE_EXCEPTIONS = {("PairSeg/PairSeg.py", "pairseg.modelfiles.catalog")}


def test_slicer_side_reaches_the_engine_only_through_torch_free_engine_module():
    found = []
    for top in SLICER_SIDE:
        for path in _python_files(ROOT / top):
            relative = path.relative_to(ROOT).as_posix()
            for line, module in _imported_modules(_tree(path)):
                if module.split(".")[0] == "pairseg" and (relative, module) not in SLICER_SIDE_EXCEPTIONS:
                    found.append(f"{relative}:{line}: import of {module}")
    assert not found, "use PairSegLib.engine.torchFreeEngineModule(...):\n" + "\n".join(found)
