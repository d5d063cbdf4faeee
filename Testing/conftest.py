"""Fixtures for the Slicer-side tests (real MRML from the slicer-core wheel, headless).

Fixtures (usable by every Testing/test_*.py, both PairSeg and PairSegTrainer):

- ``slicer_harness`` (session): the :class:`slicer_harness.SlicerHarness` (scene, app logic,
  module logics); ``slicer.mrmlScene`` / ``slicer.modules`` / ``slicer.app`` are set.
- ``mrml_scene``: the scene, cleared before the test.
- ``load_module``: ``load_module("PairSeg")`` imports ``<root>/PairSeg/PairSeg.py`` headless with
  the test-only stand-ins and returns the Python module.
- ``harness``: the ``slicer_harness`` Python module itself (helpers: ``loadVolume``,
  ``sceneSnapshot``, ...).

Tests are skipped when the slicer-core wheel is not installed. Data fixtures (``chaos_dir``,
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


@pytest.fixture(scope="session")
def load_module(slicer_harness):
    def load(moduleName):
        path = os.path.join(harnessModule.REPOSITORY_ROOT, moduleName, moduleName + ".py")
        return harnessModule.loadScriptedModule(path)

    return load
