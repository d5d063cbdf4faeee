"""The one "can the engine run?" step (PairSegLib.install.ensureEngineReady) of both modules.

- Every engine or torch use of both modules' logic asks it first, with the same confirmation; if
  the user declines, nothing starts (no process, no temporary file, no node).
- Accepting installs torch through the PyTorch extension, the other packages with pip.
- pip runs under a constraints file that pins the installed torch: checked on the arguments built
  AND with the real pip (``--dry-run``, a local wheel index holding a "torch 99" and a package that
  wants it), which must refuse instead of replacing torch.
"""

import os
import subprocess
import sys
import types
import zipfile

import numpy as np
import pytest

from test_pairsegtrainer_helpers import addSegmentation, addVolume, trainerLib


@pytest.fixture
def pairseg(load_module):
    module = load_module("PairSeg")
    trainerLib()
    return module


@pytest.fixture
def install(pairseg):
    from PairSegLib import install

    return install


class Declined(Exception):
    pass


@pytest.fixture
def torchMissing(install, monkeypatch):
    """torch and MONAI reported missing, the PyTorch extension present, the user declining; every
    confirmation text is recorded and no process may start."""
    import slicer

    asked = []
    monkeypatch.setattr(install, "missingPackages", lambda: ["torch", "monai"])
    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=lambda: None))
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda text, **kwargs: asked.append(text) or False)

    def noLaunch(command, env=None, cwd=None):
        raise AssertionError(f"a process started: {command}")

    return asked, noLaunch


def test_every_engine_and_torch_use_asks_the_same_step(pairseg, install, torchMissing, harness, mrml_scene,
                                                       phantom_model, tmp_path, monkeypatch):
    import slicer

    asked, noLaunch = torchMissing
    lib = trainerLib()
    PairSegLogic = pairseg.PairSegLogic

    monkeypatch.setattr(slicer.app, "temporaryPath", str(tmp_path / "temp"))
    os.makedirs(slicer.app.temporaryPath)
    volume = addVolume(mrml_scene, np.random.default_rng(0).random((8, 32, 32)).astype(np.float32), "case")
    labels = np.zeros((8, 32, 32), np.uint8)
    labels[2:6, 8:20, 8:20] = 1
    labels[2:6, 22:28, 4:10] = 2
    segmentation = addSegmentation(mrml_scene, volume, labels, {1: "liver", 2: "spleen"})
    reference = addSegmentation(mrml_scene, volume, labels, {1: "liver", 2: "spleen"}, "reference")
    segmentLogic = PairSegLogic()
    segmentLogic.launcher = noLaunch
    trainer = lib.PairSegTrainerCoreLogic(launcher=noLaunch)
    trainer.registry  # noqa: B018 - created before the snapshot
    trainer.exportTrainingSet([(volume, segmentation)], tmp_path / "set", modality="MR")
    before = harness.sceneSnapshot()
    uses = {
        "PairSeg Segment": lambda: segmentLogic.segmentVolumeAsync(volume, phantom_model, device="cpu"),
        "PairSeg Compare": lambda: segmentLogic.compareToReferenceAsync(segmentation, reference),
        "Trainer Train": lambda: trainer.startTraining(lib.TrainingSettings(
            data=str(tmp_path / "set"), out=str(tmp_path / "m.pairseg"), use_steps=True, steps=2), plots=False),
        "Trainer Fine-tune": lambda: trainer.fineTune([(volume, segmentation)], str(phantom_model),
                                                      str(tmp_path / "ft"), outputFolder=str(tmp_path / "out")),
        "Trainer Segment with current model": lambda: trainer.segmentVolume(volume, str(phantom_model), "cpu"),
        "Trainer predicted AND/XOR": lambda: trainer.proxyMaps(volume, 3, segmentation, sliceB=4,
                                                               model=str(phantom_model), show=False),
        "Trainer Detect GPUs": lambda: trainer.listDevices(probe=True),
    }
    for name, use in uses.items():
        count = len(asked)
        with pytest.raises(install.DependencyError, match="installation declined"):
            use()
        assert len(asked) == count + 1, f"{name} did not ask"
        assert asked[-1] == asked[0], f"{name} asked differently"
    assert "PyTorch >=2.1, through the PyTorch extension" in asked[0] and "monai>=1.3" in asked[0]
    assert not os.listdir(slicer.app.temporaryPath)   # no work folder left
    # only the proxy-map ground truth (made before the engine is needed) and its display nodes were added
    added = sorted(set(harness.sceneSnapshot()) - set(before))
    assert all(name.startswith(("AND ", "XOR ", "Proxy ", "PairSegProxyColors")) or className.endswith("DisplayNode")
               for className, name in added), added


def test_accepting_installs_torch_by_the_extension_then_packages_pinned(install, monkeypatch, tmp_path):
    import slicer

    calls = []
    state = {"missing": ["torch", "monai", "nrrd"]}

    class TorchLogic:
        def torchInstalled(self):
            return False

        def installTorch(self, askConfirmation, torchVersionRequirement):
            calls.append(("installTorch", askConfirmation, torchVersionRequirement))
            state["missing"] = [m for m in state["missing"] if m != "torch"]
            return object()

    def pipInstall(arguments):
        constraints = arguments[arguments.index("--constraint") + 1]
        calls.append(("pip", list(arguments), open(constraints).read()))
        state["missing"] = []

    monkeypatch.setattr(install, "missingPackages", lambda: list(state["missing"]))
    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=TorchLogic))
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda text, **kwargs: calls.append("asked") or True)
    monkeypatch.setattr(slicer.util, "pip_install", pipInstall, raising=False)
    assert install.ensureEngineReady() is True
    assert calls[0] == "asked" and calls[1] == ("installTorch", False, ">=2.1")
    kind, arguments, constraints = calls[2]
    assert kind == "pip" and arguments[-2:] == ["monai>=1.3", "pynrrd>=1.0"]
    assert f"torch=={install.installedVersion('torch')}" in constraints.splitlines()
    assert not os.path.exists(arguments[arguments.index("--constraint") + 1])   # removed afterwards
    assert len(calls) == 3
    # nothing missing: no dialog at all
    assert install.ensureEngineReady() is True and len(calls) == 3


def test_no_pytorch_extension_gives_clear_error(install, monkeypatch):
    monkeypatch.setattr(install, "missingPackages", lambda: ["torch"])
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)
    with pytest.raises(install.DependencyError, match="Install the 'PyTorch' extension"):
        install.ensureEngineReady()


def writeWheel(folder, name, version, requires=()):
    """A minimal valid wheel (metadata only) for a local pip index."""
    distInfo = f"{name}-{version}.dist-info"
    path = os.path.join(folder, f"{name}-{version}-py3-none-any.whl")
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + \
        "".join(f"Requires-Dist: {r}\n" for r in requires)
    files = {f"{distInfo}/METADATA": metadata,
             f"{distInfo}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{distInfo}/RECORD"] = "".join(f"{n},,\n" for n in files) + f"{distInfo}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as archive:
        for member, text in files.items():
            archive.writestr(member, text)
    return path


def pipDryRun(arguments, index):
    """``pip install --dry-run`` from the local wheel folder only, with no pip configuration of
    this machine (its own constraints or indexes) in the way."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    environment["PIP_CONFIG_FILE"] = os.devnull
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--find-links",
                             index, "--disable-pip-version-check", *arguments],
                            capture_output=True, text=True, timeout=300, env=environment)
    return result.returncode, result.stdout + result.stderr


@pytest.mark.slow
def test_real_pip_cannot_change_torch_under_the_constraints(install, tmp_path):
    torchVersion = install.installedVersion("torch")
    if torchVersion is None:
        pytest.skip("torch is not installed here")
    index = tmp_path / "index"
    index.mkdir()
    writeWheel(str(index), "torch", "99.0")
    writeWheel(str(index), "wants_new_torch", "1.0", ["torch>=99"])
    writeWheel(str(index), "wants_any_torch", "1.0", ["torch"])
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("\n".join(install.constraintLines()) + "\n")
    assert f"torch=={torchVersion}" in constraints.read_text().splitlines()

    # the test can fail: without the constraints pip would replace torch
    code, output = pipDryRun(["wants_new_torch"], str(index))
    assert code == 0 and "torch-99.0" in output, output
    # with PairSeg's arguments it refuses, and a package content with the installed torch installs alone
    code, output = pipDryRun(install.pipInstallArguments(["wants_new_torch"], constraints), str(index))
    assert code != 0 and "Would install" not in output, output
    code, output = pipDryRun(install.pipInstallArguments(["wants_any_torch"], constraints), str(index))
    assert code == 0, output
    wouldInstall = [line for line in output.splitlines() if line.startswith("Would install")]
    assert wouldInstall == ["Would install wants_any_torch-1.0"], output


@pytest.mark.parametrize("system, machine, torch, numpy, numpy1", [
    ("Darwin", "x86_64", "2.2.2", "2.2.6", True),     # Slicer 5.10 under Rosetta / an Intel Mac
    ("Darwin", "x86_64", None, "2.2.6", True),        # torch not installed yet: only 2.2.x can come
    ("Darwin", "x86_64", "2.2.2", "1.26.4", False),   # Slicer 5.6 / 5.8: NumPy 1 already
    ("Darwin", "arm64", "2.5.1", "2.2.6", False),     # Apple silicon build
    ("Linux", "x86_64", "2.5.1+cu121", "2.2.6", False),
    ("Windows", "AMD64", "2.5.1", "2.2.6", False),
])
def test_rosetta_numpy_constraint(install, system, machine, torch, numpy, numpy1):
    """Issue 19 item 12: on macOS x86_64 the last torch (2.2.x) needs NumPy < 2, so the constraints
    say numpy<2 there instead of pinning Slicer 5.10's NumPy 2; elsewhere every pin stays."""
    versions = {"torch": torch, "numpy": numpy, "scipy": "1.15.2", "SimpleITK": "2.4.0", "vtk": "9.4.2"}
    assert install.needsNumpy1(system, machine, torch or "", numpy) is numpy1
    lines = install.constraintLines(system, machine, versions)
    assert ("numpy<2" in lines) is numpy1 and (f"numpy=={numpy}" in lines) is not numpy1
    assert "scipy==1.15.2" in lines and "vtk==9.4.2" in lines
    assert (f"torch=={torch}" in lines) is bool(torch)
    requirements = install.requirementsToInstall(["monai"], system, machine, torch or "", numpy)
    assert requirements == ["monai>=1.3"] + (["numpy<2"] if numpy1 else [])
    macX86 = system == "Darwin" and machine == "x86_64"
    assert install.torchRequirement(system, machine) == (">=2.1,<2.3" if macX86 else ">=2.1")


def test_rosetta_numpy_change_is_in_the_confirmation(install):
    text = install.confirmationText(["numpy"])
    assert "numpy<2" in text and "Rosetta" in text
