"""The self-tests Slicer runs for both modules (PairSegTest, PairSegTrainerTest; registered with
slicer_add_python_unittest) run here headless on real MRML: offline (no network, no pip), on the
embedded sample case, with tiny models made in the test, each in under a minute of wall time on
an idle 2-core machine (the bound asserted here is looser: this machine is shared with training).
"""

import socket
import time

import pytest

from test_pairsegtrainer_helpers import engineAvailable, trainerLib

WALL_BOUND_S = 120


@pytest.fixture
def offline(load_module, monkeypatch, tmp_path):
    """No network connection and no pip install can happen in this process."""
    import slicer

    def refuse(*args, **kwargs):
        raise AssertionError("the self-test tried to reach the network or install a package")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(slicer.util, "pip_install", refuse, raising=False)
    monkeypatch.setenv("PAIRSEG_USER_DIR", str(tmp_path / "user"))
    load_module("PairSeg")
    from PairSegLib import install

    monkeypatch.setattr(install, "installPackages", refuse)
    monkeypatch.setattr(install, "ensureEngineReady", lambda askConfirmation=True: True if not install.missingPackages()
                        else refuse())


@pytest.mark.slow
@pytest.mark.parametrize("moduleName, testName", [("PairSeg", "test_PairSeg_embeddedSample"),
                                                  ("PairSegTrainer", "test_PairSegTrainer_embeddedSample")])
def test_self_test_offline_and_quick(offline, load_module, mrml_scene, moduleName, testName):
    engineAvailable()
    trainerLib()
    module = load_module(moduleName)
    testClass = getattr(module, moduleName + "Test")
    started = time.monotonic()
    result = testClass(testName).run()
    seconds = time.monotonic() - started
    assert result.wasSuccessful(), result.errors + result.failures
    assert not result.skipped
    print(f"{moduleName} self-test: {seconds:.1f} s")
    assert seconds < WALL_BOUND_S
