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


#: the first PyTorch release without macOS x86_64 wheels: Intel Macs, and Slicer's Intel build
#: under Rosetta on Apple silicon, get at most 2.2.x, which is built against NumPy 1 and cannot
#: run with NumPy 2 (Slicer 5.10 ships NumPy 2)
MACOS_X86_64_TORCH_END = (2, 3)
NUMPY_1_REQUIREMENT = "numpy<2"


def _versionTuple(version):
    parts = []
    for part in str(version).split("+")[0].split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def isMacX86_64(system=None, machine=None):
    """macOS on x86_64: an Intel Mac or an x86_64 Slicer under Rosetta (which reports x86_64)."""
    import platform

    system = platform.system() if system is None else system
    machine = platform.machine() if machine is None else machine
    return system == "Darwin" and machine.lower() in ("x86_64", "amd64", "i386")


def needsNumpy1(system=None, machine=None, torchVersion=None, numpyVersion=None):
    """Whether the engine needs NumPy < 2 here: on macOS x86_64 with a torch older than
    MACOS_X86_64_TORCH_END (installed, or the only one that can be installed when none is) while
    NumPy 2 is installed. Versions default to the installed ones."""
    if not isMacX86_64(system, machine):
        return False
    torchVersion = installedVersion("torch") if torchVersion is None else torchVersion
    numpyVersion = installedVersion("numpy") if numpyVersion is None else numpyVersion
    if not numpyVersion or _versionTuple(numpyVersion) < (2,):
        return False
    return not torchVersion or _versionTuple(torchVersion) < MACOS_X86_64_TORCH_END


def torchRequirement(system=None, machine=None):
    """The version range of torch to install: TORCH_REQUIREMENT, capped below
    MACOS_X86_64_TORCH_END on macOS x86_64 (no newer wheels exist there)."""
    if isMacX86_64(system, machine):
        return TORCH_REQUIREMENT + ",<" + ".".join(str(p) for p in MACOS_X86_64_TORCH_END)
    return TORCH_REQUIREMENT


def missingPackages():
    """Import names of the engine requirements not installed yet (torch first); "numpy" last when
    the installed NumPy must be replaced by NumPy 1 (``needsNumpy1``)."""
    missing = [] if isInstalled("torch") else ["torch"]
    missing += [name for name in ENGINE_REQUIREMENTS if not isInstalled(name)]
    return missing + (["numpy"] if needsNumpy1() else [])


def requirementsToInstall(missing, system=None, machine=None, torchVersion=None, numpyVersion=None):
    """pip requirements for ``missing`` (import names, torch excluded: the PyTorch extension
    installs it), with NUMPY_1_REQUIREMENT when ``needsNumpy1`` (the versions as there)."""
    requirements = [ENGINE_REQUIREMENTS[name] for name in missing if name in ENGINE_REQUIREMENTS]
    if needsNumpy1(system, machine, torchVersion, numpyVersion):
        requirements.append(NUMPY_1_REQUIREMENT)
    return requirements


def installedVersion(distribution):
    """The installed version of a distribution (no import), or None."""
    if importlibMetadata is None:
        return None
    try:
        return importlibMetadata.version(distribution)
    except importlibMetadata.PackageNotFoundError:
        return None


def constraintLines(system=None, machine=None, versions=None):
    """``name==version`` for every installed distribution of PINNED_DISTRIBUTIONS, except NumPy
    where the engine needs NumPy 1 (``needsNumpy1``: macOS x86_64 with the last torch for it):
    there ``numpy<2``. ``versions``: {distribution: version or None} instead of the installed ones."""
    versions = versions if versions is not None else {d: installedVersion(d) for d in PINNED_DISTRIBUTIONS}
    numpy1 = needsNumpy1(system, machine, versions.get("torch") or "", versions.get("numpy") or "")
    lines = []
    for distribution in PINNED_DISTRIBUTIONS:
        version = versions.get(distribution)
        if distribution == "numpy" and numpy1:
            lines.append(NUMPY_1_REQUIREMENT)
        elif version:
            lines.append(f"{distribution}=={version}")
    return lines


def pipInstallArguments(requirements, constraintsPath):
    """The arguments after ``pip install``: the requirements under ``--constraint`` (the pins of
    ``constraintLines()``, written to ``constraintsPath``), upgrading nothing not needed."""
    return ["--constraint", os.fspath(constraintsPath), "--upgrade-strategy", "only-if-needed",
            *[str(r) for r in requirements]]


def installPackages(requirements):
    """pip-install ``requirements`` (through Slicer's ``pip_install``) without changing torch or
    Slicer's own packages; the constraints file is removed afterwards. DependencyError when pip
    fails (offline, a proxy, no matching version), with pip's exit status."""
    from subprocess import CalledProcessError  # pip's failure, raised by slicer.util.pip_install

    import slicer

    handle, constraintsPath = tempfile.mkstemp(prefix="pairseg-constraints-", suffix=".txt")
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write("\n".join(constraintLines()) + "\n")
        slicer.util.pip_install(pipInstallArguments(requirements, constraintsPath))
    except CalledProcessError as error:
        raise DependencyError(
            f"Installing {', '.join(str(r) for r in requirements)} failed (pip exit status {error.returncode}). "
            "Check the internet connection (and the proxy settings), then press the button again; pip's "
            "messages are in the Python console.") from error
    except OSError as error:
        raise DependencyError(f"Installing {', '.join(str(r) for r in requirements)} failed: {error}") from error
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
    if "numpy" in missing:
        lines.append(f"- NumPy 1 ({NUMPY_1_REQUIREMENT}) instead of the installed NumPy 2: the last PyTorch for "
                     "macOS on Intel (x86_64, also under Rosetta) cannot run with NumPy 2")
    lines += ["", "Download and install now? This can take several minutes."]
    return "\n".join(lines)


_installing = False


def installationRunning():
    """Whether ``ensureEngineReady`` is installing right now (Slicer keeps processing events while
    pip runs, so a button may be pressed again meanwhile)."""
    return _installing


def ensureEngineReady(askConfirmation=True):
    """Install what the engine needs, after one confirmation; DependencyError when it cannot run,
    when an installation fails (the message says why and what to do) and when an installation is
    already running (never two at once, whichever module asks).

    Returns True at once (no dialog) when everything is installed."""
    global _installing
    missing = missingPackages()
    if not missing:
        return True
    if _installing:
        raise DependencyError("PairSeg's packages are being installed: wait until the installation ends.")
    _installing = True
    try:
        return _install(missing, askConfirmation)
    finally:
        _installing = False


def _install(missing, askConfirmation):
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
            try:
                installed = torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=torchRequirement())
            except Exception as error:  # pip's CalledProcessError, a download error
                raise DependencyError(f"Installing PyTorch failed ({error}). Check the internet connection, "
                                      "or install PyTorch in the PyTorch Utils module, then try again.") from error
            if installed is None:
                raise DependencyError("PyTorch was not installed: PairSeg cannot run without it.")
    packages = requirementsToInstall(missing)
    if packages:
        installPackages(packages)
    importlib.invalidate_caches()
    still = missingPackages()
    if still:
        raise DependencyError("These packages could not be installed: " + ", ".join(still))
    logging.info("PairSeg: the engine's dependencies are installed")
    return True
