"""``pairseg fill``: bad input refused (exit 2) before any training, drawn voxels kept exactly,
nothing filled outside each class's drawn range, the learned model written on request."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pairseg.cli import main
from pairseg.fill import combine, fill_problem, network_share
from pairseg.io.read import read_label, read_volume
from pairseg.io.volume import Volume
from pairseg.io.write import write_labels, write_volume
from pairseg.phantoms import PHANTOM_CLASSES, make_phantom_case


def _every_kth_slice(labels: np.ndarray, every: int) -> np.ndarray:
    """Each class kept on every ``every``-th slice of its own extent, its last slice included."""
    sparse = np.zeros_like(labels)
    for k in range(1, int(labels.max()) + 1):
        rows = np.flatnonzero((labels == k).reshape(len(labels), -1).any(axis=1))
        for z in sorted(set(range(rows[0], rows[-1] + 1, every)) | {rows[-1]}):
            sparse[z][labels[z] == k] = k
    return sparse


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A small phantom and its label kept on every third slice of each class's extent."""
    folder = tmp_path_factory.mktemp("fill")
    image, labels = make_phantom_case(2, 0, (14, 32, 32), (1.5, 1.5, 6.0), "MR")
    write_volume(folder / "image.nii.gz", image)
    sparse = _every_kth_slice(labels, 3)
    write_labels(folder / "sparse.nii.gz", sparse, image, PHANTOM_CLASSES)
    return folder, image, labels, sparse


def _run(*argv) -> tuple[int, list[dict]]:
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(["fill", *argv, "--events", "json"])
    return code, [json.loads(line) for line in buffer.getvalue().splitlines() if line.startswith("{")]


def _label_file(folder, name, array, image):
    path = folder / name
    write_labels(path, array, image, PHANTOM_CLASSES[: max(1, int(array.max()))])
    return path


@pytest.mark.parametrize("problem,expect", [
    ("empty", "no annotated slice"),
    ("one slice", "drawn on one slice only"),
    ("every slice", "drawn on every slice of the volume"),
    ("no gap", "nothing to fill"),
    ("geometry", "geometry differs"),
    ("modality", "--modality MR or CT is needed"),
])
def test_bad_input_is_refused_before_any_training(case, tmp_path, problem, expect):
    folder, image, labels, sparse = case
    label = folder / "sparse.nii.gz"
    extra = ["--modality", "MR"]
    if problem == "empty":
        label = _label_file(tmp_path, "l.nii.gz", np.zeros_like(labels), image)
    elif problem == "one slice":
        one = np.zeros_like(labels)
        one[5] = labels[5] == 1
        label = _label_file(tmp_path, "l.nii.gz", one, image)
    elif problem == "every slice":
        every = np.zeros_like(labels)
        every[:, 2:6, 2:6] = 1
        label = _label_file(tmp_path, "l.nii.gz", every, image)
    elif problem == "no gap":
        label = _label_file(tmp_path, "l.nii.gz", (labels == 1).astype(np.uint8), image)
    elif problem == "geometry":
        moved = Volume(sparse, image.spacing, tuple(np.add(image.origin, (5.0, 0, 0))), image.direction)
        label = tmp_path / "l.nii.gz"
        write_labels(label, sparse, moved, PHANTOM_CLASSES)
    else:
        extra = []
    out = tmp_path / "out.nii.gz"
    code, events = _run("--image", str(folder / "image.nii.gz"), "--label", str(label), "--out", str(out),
                        "--method", "pairwise", "--base", "none", *extra)
    assert code == 2
    errors = [e for e in events if e["event"] == "error"]
    assert errors and expect in errors[0]["message"], errors
    assert not any(e["event"] == "progress" for e in events)  # no training step was taken
    assert not out.exists()


def test_fill_keeps_drawn_voxels_fills_only_inside_and_saves_the_model(case, tmp_path):
    folder, image, labels, sparse = case
    out, model = tmp_path / "filled.seg.nrrd", tmp_path / "learned.pairseg"
    code, events = _run("--image", str(folder / "image.nii.gz"), "--label", str(folder / "sparse.nii.gz"),
                        "--out", str(out), "--method", "pairwise", "--base", "none", "--modality", "MR", "--budget-s", "3",
                        "--size", "32", "--device", "cpu", "--save-model", str(model))
    assert code == 0, events
    assert [e for e in events if e["event"] == "done"][0]["steps"] >= 1
    _check_filled(folder, out, sparse)
    assert model.is_file()
    before = out.read_bytes()
    code, events = _run("--image", str(folder / "image.nii.gz"), "--label", str(folder / "sparse.nii.gz"),
                        "--out", str(out), "--method", "pairwise", "--base", "none", "--modality", "MR")
    assert code == 2 and "--overwrite" in events[-1]["message"] and out.read_bytes() == before


@pytest.mark.slow
def test_default_method_is_contour_interpolation(case, tmp_path):
    folder, image, labels, sparse = case
    out = tmp_path / "filled.nii.gz"
    code, events = _run("--image", str(folder / "image.nii.gz"), "--label", str(folder / "sparse.nii.gz"),
                        "--out", str(out))
    done = [e for e in events if e["event"] == "done"]
    assert code == 0 and done[0]["method"] == "mci" and done[0]["steps"] == 0
    filled = _check_filled(folder, out, sparse)
    assert (filled > 0).sum() > (sparse > 0).sum()  # the slices in between were filled


def _check_filled(folder, out, sparse):
    filled, names = read_label(out, reference=read_volume(folder / "image.nii.gz"))
    assert names == [f"label_{k}" for k in range(1, 5)]  # a plain label file names no class
    drawn = sparse > 0
    assert np.array_equal(filled[drawn], sparse[drawn])  # every drawn voxel as drawn
    for k in range(1, len(PHANTOM_CLASSES) + 1):
        rows = np.flatnonzero((sparse == k).reshape(len(sparse), -1).any(axis=1))
        on = np.flatnonzero((filled == k).reshape(len(filled), -1).any(axis=1))
        assert on.min() >= rows.min() and on.max() <= rows.max()  # nothing outside the drawn range
        for z in rows:  # an annotated slice of class k: k exactly as drawn there
            assert np.array_equal(filled[z] == k, sparse[z] == k)
    return filled


def test_combine_extends_and_never_paints_over_an_annotated_class(case):
    folder, image, labels, sparse = case
    problem = fill_problem(image, Volume(sparse, image.spacing, image.origin, image.direction), PHANTOM_CLASSES)
    k = len(PHANTOM_CLASSES)
    everywhere = np.ones((k,) + sparse.shape, np.float32)
    everywhere[1:] = 0.0  # the "network" says class 1 on every voxel
    out = combine(problem, "pairwise", everywhere, None, extend=1)
    first, last = problem.extents[0]
    on = np.flatnonzero((out == 1).reshape(len(out), -1).any(axis=1))
    assert on.min() == max(0, first - 1) and on.max() == min(len(out) - 1, last + 1)
    for z in np.flatnonzero(problem.annotated[:, 0]):
        assert np.array_equal(out[z] == 1, sparse[z] == 1)


_MCI_IN_A_TORCH_PROCESS = """
import sys
import numpy as np, torch  # torch first, as in pairseg fill
from pairseg.fill import mci_fill
sparse = np.load(sys.argv[1])
for _ in range(5):
    filled = mci_fill(sparse, (7.7, 1.25, 1.25))
print("filled", int((filled > 0).sum()))
"""


def test_contour_interpolation_leaves_the_process_sound(tmp_path):
    """ITK's multithreaded MorphologicalContourInterpolator corrupted the heap of a process that
    had loaded torch (the embedded CHAOS case, 5 runs: exit 139 every time before the fix; also
    ``pairseg fill`` exited 134 after writing its output). The process must end cleanly."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from pairseg.modelfiles.catalog import sample_folder

    label, _ = read_label(sample_folder() / "case_002_label.nii.gz")
    np.save(tmp_path / "sparse.npy", _every_kth_slice(np.asarray(label), 4))
    src = Path(__file__).resolve().parents[1] / "src"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", _MCI_IN_A_TORCH_PROCESS, str(tmp_path / "sparse.npy")],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert int(done.stdout.split()[-1]) > 0


def test_network_share_grows_with_the_distance_to_the_nearest_drawn_slice():
    annotated = np.zeros((9, 2), bool)
    annotated[[0, 8], 0] = True  # class 1 drawn on slices 0 and 8, slices 5 mm apart
    annotated[[0, 2], 1] = True
    constant = network_share(annotated, 5.0, 0.5, None)
    assert constant.shape == (2, 9) and np.all(constant == 0.5)
    ramp = network_share(annotated, 5.0, 0.6, 20.0)
    # class 1: distances 0, 5, 10, 15, 20, 15, 10, 5, 0 mm -> 0.6 * min(1, d / 20)
    assert np.allclose(ramp[0], 0.6 * np.array([0, 5, 10, 15, 20, 15, 10, 5, 0]) / 20.0)
    # class 2: slice 1 is 5 mm from both drawn slices; beyond slice 2 the distance keeps growing, capped
    assert np.allclose(ramp[1], 0.6 * np.minimum(1.0, np.array([0, 5, 0, 5, 10, 15, 20, 25, 30]) / 20.0))


def test_ramped_fusion_follows_the_interpolation_next_to_drawn_slices(case):
    """With the ramp, a network that says 'everywhere' cannot move the interpolated contour on a
    slice next to a drawn one (share 0), while the constant fusion at weight 1 follows it."""
    from pairseg.fill import mci_fill

    folder, image, labels, sparse = case
    problem = fill_problem(image, Volume(sparse, image.spacing, image.origin, image.direction), PHANTOM_CLASSES)
    mci = mci_fill(problem.label, problem.spacing_zyx)
    everywhere = np.zeros((problem.num_classes,) + sparse.shape, np.float32)
    everywhere[0] = 1.0
    ramped = combine(problem, "fusion", everywhere, mci, weight=1.0, ramp_mm=1e6)
    plain = combine(problem, "fusion", everywhere, mci, weight=1.0)
    first, last = problem.extents[0]
    gap = [z for z in range(first, last + 1) if not problem.annotated[z, 0]]
    assert np.array_equal(ramped[gap] == 1, mci[gap] == 1)  # share ~ 0 everywhere: the interpolation
    undrawn = problem.label[gap] == 0
    assert np.all(plain[gap][undrawn] == 1)  # share 1: the network's "everywhere" (other classes' strokes kept)


def test_freezing_the_encoder_trains_only_decoder_and_head(case, tmp_path):
    import torch

    from pairseg.fill import learn
    from pairseg.modelfiles.weights import save_model
    from pairseg.networks import build_model

    folder, image, labels, sparse = case
    torch.manual_seed(3)
    base = build_model("c2fcn", 2, 3, base="unet", width=4)
    base_file = save_model(tmp_path / "base.pairseg", base, {"class_names": ["a", "b"], "modality": "MR", "size": 32,
                                                          "class_colors": [[1, 0, 0], [0, 1, 0]]})
    problem = fill_problem(image, Volume(sparse, image.spacing, image.origin, image.direction), PHANTOM_CLASSES)
    with pytest.raises(Exception, match="needs a base model"):
        learn(problem, modality="MR", budget_s=1, device="cpu", freeze_encoder=True)
    model, record, _ = learn(problem, base=str(base_file), budget_s=3, device="cpu", freeze_encoder=True)
    assert record[2].step > 0
    before, after = base.state_dict(), model.state_dict()
    weights = [k for k in before if k.startswith("encoder.") and k.endswith("weight")]
    assert weights and all(torch.equal(before[k], after[k].cpu()) for k in weights)  # encoder kept
    decoder = [k for k in before if k.startswith("decoder.") and k.endswith("weight")]
    assert any(not torch.equal(before[k], after[k].cpu()) for k in decoder)  # decoder learned


def test_auto_base_is_the_catalog_default_for_its_modality_only(tmp_path, monkeypatch):
    from pairseg.modelfiles.catalog import load_catalog
    from pairseg.fill import resolve_base

    default = load_catalog().default
    assert default is not None and resolve_base("auto", None) == default
    assert resolve_base("auto", "MR") == default and resolve_base("auto", "CT") is None
    assert resolve_base("none", "MR") is None and resolve_base("my.pairseg", "CT") == "my.pairseg"
    monkeypatch.setenv("PAIRSEG_MODELS_DIR", str(tmp_path))  # no catalog: from scratch
    assert resolve_base("auto", "MR") is None
