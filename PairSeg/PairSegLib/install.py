"""The one "can the engine run here?" step of both modules, at the point of use (never at import).

Every engine run (``engine.EngineRun.start``) and every torch use in Slicer's process (the
Trainer's GPU query) goes through ``ensureEngineReady()``: when something is missing it shows ONE
confirmation listing everything it will install, then

- torch comes ONLY from the PyTorch extension (PyTorch Utils module), which picks the build that
  matches the computer's GPU driver;
- the engine's other packages are installed with pip under a constraints file that pins the
  installed torch and the packages Slicer ships (numpy, scipy, SimpleITK, vtk) to their installed
  versions: pip can add packages but never upgrade, downgrade or replace those (a requirement that
  would need another torch fails with pip's error instead of breaking the GPU build).
"""

import importlib
import importlib.machinery
import logging
import os
import tempfile

try:
    from importlib import metadata as importlibMetadata
except ImportError:  # pragma: no cover - Python < 3.8
    importlibMetadata = None

#: import name -> pip requirement, for the engine's packages that Slicer does not ship
ENGINE_REQUIREMENTS = {
    "monai": "monai>=1.3",
    "slicerio": "slicerio>=1.0",
    "nrrd": "pynrrd>=1.0",
    "safetensors": "safetensors>=0.4",
    "itk": "itk-morphologicalcontourinterpolation>=2.1",  # pairseg fill (contour interpolation)
}
#: distributions pip must never change: torch (the PyTorch extension's build) and Slicer's own
PINNED_DISTRIBUTIONS = ("torch", "numpy", "scipy", "SimpleITK", "vtk")
TORCH_REQUIREMENT = ">=2.1"


class DependencyError(RuntimeError):
    """What the engine needs is missing and was not installed; the message says what to do."""


def isInstalled(importName):
    """Whether a top-level package is installed on sys.path (found, never imported)."""
    try:
        return importlib.machinery.PathFinder.find_spec(importName) is not None
    except (ImportError, ValueError):
        return False


def missingPackages():
    """Import names of the engine requirements not installed yet (torch first)."""
    missing = [] if isInstalled("torch") else ["torch"]
    return missing + [name for name in ENGINE_REQUIREMENTS if not isInstalled(name)]


def installedVersion(distribution):
    """The installed version of a distribution (no import), or None."""
    if importlibMetadata is None:
        return None
    try:
        return importlibMetadata.version(distribution)
    except importlibMetadata.PackageNotFoundError:
        return None


def constraintLines():
    """``name==version`` for every installed distribution of PINNED_DISTRIBUTIONS."""
    lines = []
    for distribution in PINNED_DISTRIBUTIONS:
        version = installedVersion(distribution)
        if version:
            lines.append(f"{distribution}=={version}")
    return lines


def pipInstallArguments(requirements, constraintsPath):
    """The arguments after ``pip install``: the requirements under ``--constraint`` (the pins of
    ``constraintLines()``, written to ``constraintsPath``), upgrading nothing not needed."""
    return ["--constraint", os.fspath(constraintsPath), "--upgrade-strategy", "only-if-needed",
            *[str(r) for r in requirements]]


def installPackages(requirements):
    """pip-install ``requirements`` (through Slicer's ``pip_install``) without changing torch or
    Slicer's own packages; the constraints file is removed afterwards."""
    import slicer

    handle, constraintsPath = tempfile.mkstemp(prefix="pairseg-constraints-", suffix=".txt")
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write("\n".join(constraintLines()) + "\n")
        slicer.util.pip_install(pipInstallArguments(requirements, constraintsPath))
    finally:
        os.remove(constraintsPath)


def confirmationText(missing):
    """The one confirmation both modules show before installing ``missing`` (import names)."""
    lines = ["PairSeg needs software that is not installed yet:", ""]
    if "torch" in missing:
        lines.append(f"- PyTorch {TORCH_REQUIREMENT}, through the PyTorch extension (the build that matches this "
                     "computer's GPU driver)")
    packages = [ENGINE_REQUIREMENTS[name] for name in missing if name in ENGINE_REQUIREMENTS]
    if packages:
        lines.append("- Python packages " + ", ".join(packages) + " (PyTorch and Slicer's own packages are "
                     "left exactly as they are)")
    lines += ["", "Download and install now? This can take several minutes."]
    return "\n".join(lines)


def ensureEngineReady(askConfirmation=True):
    """Install what the engine needs, after one confirmation; DependencyError when it cannot run.

    Returns True at once (no dialog) when everything is installed."""
    missing = missingPackages()
    if not missing:
        return True
    import slicer

    torchUtils = None
    if "torch" in missing:
        try:
            import PyTorchUtils as torchUtils
        except ImportError as error:
            raise DependencyError(
                "PairSeg needs PyTorch. Install the 'PyTorch' extension from the Extension Manager, "
                "restart Slicer, and try again.") from error
    if askConfirmation and not slicer.util.confirmOkCancelDisplay(confirmationText(missing), windowTitle="PairSeg"):
        raise DependencyError("PairSeg cannot run without: " + ", ".join(missing) + " (installation declined).")
    if torchUtils is not None:
        torchLogic = torchUtils.PyTorchUtilsLogic()
        if not torchLogic.torchInstalled():
            if torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT) is None:
                raise DependencyError("PyTorch was not installed: PairSeg cannot run without it.")
    packages = [ENGINE_REQUIREMENTS[name] for name in missing if name in ENGINE_REQUIREMENTS]
    if packages:
        installPackages(packages)
    importlib.invalidate_caches()
    still = missingPackages()
    if still:
        raise DependencyError("These packages could not be installed: " + ", ".join(still))
    logging.info("PairSeg: the engine's dependencies are installed")
    return True
