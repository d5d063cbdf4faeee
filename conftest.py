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
