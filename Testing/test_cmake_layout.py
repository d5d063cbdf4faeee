"""The extension's CMake layout, configured and built (issue 19 item 11).

Without a Slicer SDK here, a plain CMake project includes the extension's own .cmake files
(PairSeg/PairSegEngine.cmake, which includes PairSeg/PairSegResources.cmake, and
PairSeg/PairSegPytest.cmake) with the two Slicer variables they read. Covered: the catalog and the
sample case are copied into the BUILD tree at build time and installed into the install tree, the
engine's catalog/sample lookup (``pairseg.modelfiles.catalog``, run from each tree with nothing else on
sys.path) finds them and verifies the shipped model, and ctest lists the pytest suite. Not
covered: Slicer's and CTK's own macros (``slicerMacroBuildScriptedModule``, and
``ctkMacroCompilePythonScript``, replaced below by a stand-in that copies the scripts the same
way, without byte-compiling), the generated module self-tests and cpack.
"""

import filecmp
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIB_DIR = "lib/Slicer-5.8/qt-scripted-modules"

PROJECT = """
cmake_minimum_required(VERSION 3.16)
project(PairSegLayoutCheck NONE)
enable_testing()
set(PAIRSEG_SOURCE_DIR "{root}")
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR "{lib}")
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR "{lib}")

# Stand-in for CTK's ctkMacroCompilePythonScript: the scripts copied into DESTINATION_DIR at build
# time and installed into INSTALL_DIR, keeping their sub-folders (NO_INSTALL_SUBDIR).
function(ctkMacroCompilePythonScript)
  cmake_parse_arguments(A "NO_INSTALL_SUBDIR" "TARGET_NAME;SOURCE_DIR;DESTINATION_DIR;INSTALL_DIR"
                        "SCRIPTS;RESOURCES" ${{ARGN}})
  set(outputs)
  foreach(script IN LISTS A_SCRIPTS)
    add_custom_command(OUTPUT "${{A_DESTINATION_DIR}}/${{script}}"
      COMMAND ${{CMAKE_COMMAND}} -E copy_if_different "${{A_SOURCE_DIR}}/${{script}}" "${{A_DESTINATION_DIR}}/${{script}}"
      DEPENDS "${{A_SOURCE_DIR}}/${{script}}" VERBATIM)
    list(APPEND outputs "${{A_DESTINATION_DIR}}/${{script}}")
    get_filename_component(folder "${{script}}" DIRECTORY)
    install(FILES "${{A_SOURCE_DIR}}/${{script}}" DESTINATION "${{A_INSTALL_DIR}}/${{folder}}")
  endforeach()
  add_custom_target(${{A_TARGET_NAME}} ALL DEPENDS ${{outputs}})
endfunction()

include("{root}/PairSeg/PairSegEngine.cmake")
include("{root}/PairSeg/PairSegPytest.cmake")
"""

LOOKUP = """
import json, sys
sys.path.insert(0, sys.argv[1])
import pairseg.modelfiles.catalog as catalog
assert catalog.__file__.startswith(sys.argv[1]), catalog.__file__
print(json.dumps([str(catalog.catalog_folder()), str(catalog.sample_folder()),
                  str(catalog.resolve_model(catalog.load_catalog().default))]))
"""


def run(command, **options):
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, **options)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def checkTree(tree: Path):
    """The resources a self-test needs, where the engine looks, found by the engine from ``tree``."""
    lib = tree / LIB_DIR
    for kind in ("Models", "SampleData"):
        shipped = sorted(p.name for p in (ROOT / "Resources" / kind).iterdir() if p.is_file())
        placed = sorted(p.name for p in (lib / "Resources" / kind).iterdir())
        assert placed == shipped, (kind, placed)
        match, mismatch, errors = filecmp.cmpfiles(ROOT / "Resources" / kind, lib / "Resources" / kind, shipped,
                                                   shallow=False)
        assert mismatch == [] and errors == [], (mismatch, errors)
    assert (lib / "pairseg" / "paths.py").is_file() and (lib / "pairseg" / "networks" / "pairwise.py").is_file()
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("PYTHONPATH", "PAIRSEG_MODELS_DIR", "PAIRSEG_SAMPLE_DATA_DIR")}
    models, sample, model = json.loads(run([sys.executable, "-I", "-c", LOOKUP, lib], env=environment,
                                           cwd=tree))
    assert Path(models) == lib / "Resources" / "Models" and Path(sample) == lib / "Resources" / "SampleData"
    assert Path(model).parent == lib / "Resources" / "Models" and (Path(sample) / "dataset.json").is_file()


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed (pip install cmake)")
def test_build_and_install_trees_hold_what_the_self_tests_need(tmp_path):
    source, build, install = tmp_path / "project", tmp_path / "build", tmp_path / "install"
    source.mkdir()
    (source / "CMakeLists.txt").write_text(PROJECT.format(root=ROOT.as_posix(), lib=LIB_DIR))
    run(["cmake", "-S", source, "-B", build, f"-DPAIRSEG_TEST_PYTHON={sys.executable}"])
    run(["cmake", "--build", build])
    checkTree(build)
    listed = run(["ctest", "-N"], cwd=build)
    assert "PairSegPytest" in listed
    run(["cmake", "--install", build, "--prefix", install])
    checkTree(install)
    # a second build copies nothing again (the copies are made when a source file changed)
    stamp = (build / LIB_DIR / "Resources" / "Models" / "models.json").stat().st_mtime_ns
    run(["cmake", "--build", build])
    assert (build / LIB_DIR / "Resources" / "Models" / "models.json").stat().st_mtime_ns == stamp   # nothing to do
