"""Fixtures shared by the engine tests (tests/) and the Slicer-side tests (Testing/).

- ``chaos_dir``: the real CHAOS MR T2-SPIR data beside the project (``../shared/data/chaos_t2``,
  or ``$PAIRSEG_CHAOS_DIR``); tests using it are skipped when it is absent.
- ``phantom_dir``: a small generated phantom MR dataset (liver, kidneys, spleen).
- ``phantom_model``: a tiny C2FCN trained briefly on the phantoms (plumbing, not accuracy).
- ``chaos_model``: a tiny C2FCN trained briefly on two real CHAOS cases.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
# This checkout's engine, whatever a shared virtual environment has installed (src/ layout).
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))
# ... and in the engine processes the tests start (python -m pairseg).
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src")] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
CHAOS_CLASSES = ["liver", "right kidney", "left kidney", "spleen"]


def _chaos_path() -> Path:
    return Path(os.environ.get("PAIRSEG_CHAOS_DIR", ROOT.parent / "shared" / "data" / "chaos_t2"))


@pytest.fixture(scope="session")
def chaos_dir() -> Path:
    path = _chaos_path()
    if not (path / "dataset.json").is_file():
        pytest.skip(f"CHAOS data not found at {path}")
    return path


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    from pairseg.phantoms import make_phantom_dataset

    return Path(make_phantom_dataset(tmp_path_factory.mktemp("phantoms"), n_cases=4, seed=1))


def _tiny_model(data: Path, out: Path, cases: list[str] | None, steps: int, size: int) -> Path:
    import torch

    from pairseg.augment import AugmentConfig
    from pairseg.train import TrainConfig, train

    threads = torch.get_num_threads()
    try:
        train(TrainConfig(data=str(data), out=str(out), arch="c2fcn", steps=steps, size=size, batch_size=4,
                          lr=1e-3, device="cpu", cases=cases, augment=AugmentConfig(enabled=False)))
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="session")
def phantom_model(phantom_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("phantom-model") / "phantom.pairseg"
    return _tiny_model(phantom_dir, out, None, steps=12, size=64)


@pytest.fixture(scope="session")
def chaos_model(chaos_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("chaos-model") / "chaos.pairseg"
    return _tiny_model(chaos_dir, out, ["case_002", "case_003"], steps=12, size=64)


def _save_format1(path: Path, model, metadata: dict, with_readout: bool = True) -> Path:
    """A format-1 model file written exactly as the engine wrote it before format 2 (pairseg/modelfiles/weights.py as
    of commit 04ba74e): ``torch.save`` of {"format", "format_version": 1, "metadata": JSON text,
    "state_dict"}, the metadata's ``sha256`` over the weights only. ``with_readout=False``: as
    before commit 3fc3b62, when a C2FCN's options had no ``readout`` (the engine read out AND)."""
    import json
    import time

    import torch

    from pairseg import __version__
    from pairseg.modelfiles.weights import weights_sha256

    state = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
    meta = dict(metadata)
    options = {k: v for k, v in model.options.items() if with_readout or k != "readout"}
    meta.update(engine_version=__version__, arch=model.arch, num_classes=int(model.num_classes),
                in_channels=int(model.in_channels), options=options,
                created=meta.get("created") or time.strftime("%Y-%m-%dT%H:%M:%S%z"), sha256=weights_sha256(state))
    if len(meta.get("class_names", [])) != model.num_classes:
        raise ValueError("metadata class_names must list one name per model class")
    torch.save({"format": "pairseg-model", "format_version": 1, "metadata": json.dumps(meta, sort_keys=True),
                "state_dict": state}, path)
    return path


@pytest.fixture
def save_format1():
    """``save_format1(path, model, metadata, with_readout=True)``: see :func:`_save_format1`."""
    return _save_format1


@pytest.fixture(scope="session")
def untrained_mr_model(tmp_path_factory) -> Path:
    """An untrained two-class (liver, spleen) MR C2FCN over a narrow U-Net, size 32: a real model
    file for plumbing tests (bad input, output checks), not for accuracy."""
    import torch

    from pairseg.modelfiles.weights import save_model
    from pairseg.networks import build_model

    torch.manual_seed(0)
    return save_model(tmp_path_factory.mktemp("untrained-model") / "mr.pairseg",
                      build_model("c2fcn", 2, 3, base="unet", width=4),
                      {"class_names": ["liver", "spleen"], "class_colors": [[1, 0, 0], [0, 0, 1]],
                       "modality": "MR", "size": 32})


# ---------------------------------------------------------------------------------------------
# Ending the test process
# ---------------------------------------------------------------------------------------------
# With the full Slicer-side suite in one process (PySide6 6.12 widgets over slicer-core's VTK 9.6.2,
# Python 3.11), the interpreter's final garbage collection aborts with "Fatal Python error:
# bool_dealloc: deallocating True or False", a reference-count error in one of those C extensions
# (none of this project's code touches reference counts). It happens after the last test and the
# summary, only once enough widget tests have run in one process, and turns a passing run into
# exit code 134. So the run ends right after pytest's own end (summary printed, every plugin's
# unconfigure done), with pytest's exit status, without the interpreter's finalisation.
_EXIT_STATUS: list = []


def pytest_sessionfinish(session, exitstatus):
    _EXIT_STATUS[:] = [int(exitstatus)]


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    if _EXIT_STATUS and not os.environ.get("PAIRSEG_TEST_FINALIZE"):  # set it to see the crash
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_EXIT_STATUS[0])
