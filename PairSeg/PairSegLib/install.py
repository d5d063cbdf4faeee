"""Installing what the engine needs, at the point of use (never at import).

torch comes ONLY from the PyTorch extension (PyTorch Utils module), which picks the build that
matches the computer's GPU driver; other packages through ``slicer.packaging.pip_ensure``
(Slicer >= 5.11) or, on older Slicer, ``slicer.util.pip_install`` after a confirmation. Packages
Slicer ships (numpy, scipy, SimpleITK, vtk) are never reinstalled.
"""

import importlib.util
import logging

import slicer

#: import name -> pip requirement, for the engine's packages that Slicer does not ship
ENGINE_REQUIREMENTS = {
    "monai": "monai>=1.3",
    "slicerio": "slicerio>=1.0",
    "nrrd": "pynrrd>=1.0",
    "safetensors": "safetensors>=0.4",
}


class DependencyError(RuntimeError):
    pass


def isInstalled(importName):
    try:
        return importlib.util.find_spec(importName) is not None
    except (ImportError, ValueError):
        return False


def missingPackages():
    """Import names of the engine requirements not installed yet (torch first)."""
    missing = [] if isInstalled("torch") else ["torch"]
    return missing + [name for name in ENGINE_REQUIREMENTS if not isInstalled(name)]


def ensureTorch(askConfirmation=True):
    """Install torch through the PyTorch extension; DependencyError if that is not possible."""
    if isInstalled("torch"):
        return True
    try:
        import PyTorchUtils
    except ImportError as error:
        raise DependencyError(
            "PairSeg needs PyTorch. Install the 'PyTorch' extension from the Extension Manager, "
            "restart Slicer, and try again.") from error
    torchLogic = PyTorchUtils.PyTorchUtilsLogic()
    if not torchLogic.torchInstalled():
        torch = torchLogic.installTorch(askConfirmation=askConfirmation, torchVersionRequirement=">=2.1")
        if torch is None:
            raise DependencyError("PyTorch was not installed: PairSeg cannot run without it.")
    return True


def ensurePackages(askConfirmation=True):
    """Install the engine's other requirements that are missing."""
    missing = [ENGINE_REQUIREMENTS[name] for name in ENGINE_REQUIREMENTS if not isInstalled(name)]
    if not missing:
        return True
    packaging = getattr(slicer, "packaging", None)
    if packaging is not None and hasattr(packaging, "pip_ensure"):
        packaging.pip_ensure(missing, requester="PairSeg")
    else:
        if askConfirmation and not slicer.util.confirmOkCancelDisplay(
                "PairSeg needs these Python packages, which will now be downloaded and installed:\n"
                + "\n".join(missing), windowTitle="PairSeg"):
            raise DependencyError("Required packages were not installed: " + ", ".join(missing))
        slicer.util.pip_install(missing)
    importlib.invalidate_caches()
    still = [name for name in ENGINE_REQUIREMENTS if not isInstalled(name)]
    if still:
        raise DependencyError("These packages could not be installed: " + ", ".join(still))
    return True


def ensureEngineDependencies(askConfirmation=True):
    """torch (PyTorch extension) plus the other engine packages; raises DependencyError."""
    ensureTorch(askConfirmation)
    ensurePackages(askConfirmation)
    logging.info("PairSeg: engine dependencies are installed")
    return True
