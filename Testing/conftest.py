"""Fixtures for the Slicer-side tests (real MRML from the slicer-core wheel, real Qt offscreen).

Fixtures (usable by every Testing/test_*.py, both PairSeg and PairSegTrainer):

- ``slicer_harness`` (session): the :class:`slicer_harness.SlicerHarness` (scene, app logic,
  module logics); ``slicer.mrmlScene`` / ``slicer.modules`` / ``slicer.app`` are set.
- ``mrml_scene``: the scene, cleared before the test.
- ``load_module``: ``load_module("PairSeg")`` loads ``<root>/PairSeg/PairSeg.py`` the way Slicer's
  scripted-module factory does, on Slicer's real pure-Python module support (the newest release
  present unless a test chose one with ``slicer_release``), and returns the Python module.
- ``slicer_release``: parametrised over ``slicer_harness.SLICER_RELEASES``; makes that release's
  ``parameterNodeWrapper`` / ``ScriptedLoadableModule`` / ``i18n`` current.
- ``module_widget``: ``module_widget("PairSeg")`` -> the module's widget after ``setup()``, hosted
  in a module panel; modules are unloaded (``cleanup()``) after the test.
- ``harness``: the ``slicer_harness`` Python module itself (``loadVolume``, ``sceneSnapshot``, ...).

Tests are skipped when the slicer-core wheel, PySide6 or Slicer's Python files
(``../shared/third_party/slicer/<tag>``) are absent. Data fixtures (``chaos_dir``,
``phantom_dir``, ``phantom_model``, ``chaos_model``) come from the root conftest.py.
"""

import os
import sys

import pytest

TESTING_DIR = os.path.dirname(os.path.abspath(__file__))
if TESTING_DIR not in sys.path:
    sys.path.insert(0, TESTING_DIR)

import slicer_harness as harnessModule  # noqa: E402


@pytest.fixture(scope="session")
def harness():
    return harnessModule


@pytest.fixture(scope="session")
def slicer_harness():
    pytest.importorskip("slicer", reason="slicer-core wheel not installed")
    return harnessModule.setUpSlicer()


@pytest.fixture
def mrml_scene(slicer_harness):
    return slicer_harness.resetScene()


def _requireModuleSupport():
    if not harnessModule.qtAvailable():
        pytest.skip("PySide6 not installed (pip install PySide6-Essentials): module files need Qt")
    if not harnessModule.availableReleases():
        pytest.skip(f"Slicer's Python files not found in {harnessModule.slicerPythonDir()}")


@pytest.fixture(params=harnessModule.SLICER_RELEASES)
def slicer_release(request, slicer_harness):
    if not harnessModule.qtAvailable():
        pytest.skip("PySide6 not installed (pip install PySide6-Essentials)")
    if request.param not in harnessModule.availableReleases():
        pytest.skip(f"Slicer {request.param} Python files not found in {harnessModule.slicerPythonDir()}")
    harnessModule.useSlicerRelease(request.param)
    return request.param


@pytest.fixture
def load_module(slicer_harness):
    _requireModuleSupport()

    def load(moduleName):
        path = os.path.join(harnessModule.REPOSITORY_ROOT, moduleName, moduleName + ".py")
        return harnessModule.loadScriptedModule(path)

    yield load


@pytest.fixture
def module_widget(load_module, mrml_scene):
    def make(moduleName):
        load_module(moduleName)
        return harnessModule.moduleWidget(moduleName)

    yield make
    harnessModule.unloadModules()
