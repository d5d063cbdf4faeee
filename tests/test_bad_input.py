"""Bad input through the command line: exit code 2, an error naming the file and the problem, and
no partial output (no label file, no model file, no checkpoint)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from pairseg.cli import EXIT_BAD_INPUT, main
from pairseg.io.volume import Volume
from pairseg.io.write import write_labels, write_volume

CLASSES = "liver,spleen"


def run(capsys, *argv) -> dict:
    """Run the CLI; require exit code 2 and return the final error event."""
    code = main([str(a) for a in argv] + ["--events", "json"])
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert code == EXIT_BAD_INPUT, lines[-3:]
    assert lines[-1]["event"] == "error" and lines[-1]["kind"] == "input"
    return lines[-1]


def _image(shape=(6, 16, 20), seed=0) -> Volume:
    array = np.random.default_rng(seed).normal(100, 20, shape).astype(np.float32)
    return Volume(array, (1.0, 1.0, 3.0))


def _labels(shape=(6, 16, 20), classes=(1, 2)) -> np.ndarray:
    labels = np.zeros(shape, np.uint8)
    for k in classes:
        labels[1:-1, 2 * k:2 * k + 3, 4:10] = k
    return labels


@pytest.fixture(scope="module")
def model(untrained_mr_model) -> Path:
    return untrained_mr_model


def _write_raw(path: Path, array: np.ndarray) -> Path:
    """Write any array as it is, in the format the suffix names."""
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    return path


def _cut(path: Path, fraction: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


# ---------------------------------------------------------------------------------------------
# segment
# ---------------------------------------------------------------------------------------------


def _nan_volume():
    array = _image().array
    array[2, 3, 4] = np.nan
    return array


def _inf_volume():
    array = _image().array
    array[1, 1, 1] = np.inf
    return array


SEGMENT_CASES = {
    "2d": (lambda: np.random.rand(16, 20).astype(np.float32), "2D"),
    "4d": (lambda: np.random.rand(2, 4, 16, 20).astype(np.float32), "4D"),
    "two_slices": (lambda: _image((2, 16, 20)).array, "at least 3"),
    "constant": (lambda: np.full((5, 16, 20), 42.0, np.float32), "constant"),
    "zeros": (lambda: np.zeros((5, 16, 20), np.float32), "constant"),
    "nan": (_nan_volume, "NaN"),
    "inf": (_inf_volume, "infinite"),
}


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz", ".nii", ".mha"])
@pytest.mark.parametrize("name", sorted(SEGMENT_CASES))
def test_segment_bad_images(name, suffix, model, tmp_path, capsys):
    """Every format: ITK's NIfTI reader alone would hide NaN/Inf as 0."""
    make, problem = SEGMENT_CASES[name]
    source = _write_raw(tmp_path / f"{name}_image{suffix}", make())
    out = tmp_path / "out.seg.nrrd"
    error = run(capsys, "segment", "--model", model, "--input", source, "--output", out,
                "--probabilities", tmp_path / "p.nii.gz", "--device", "cpu")
    assert source.name in error["message"] and problem in error["message"], error["message"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [source.name]


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_segment_and_evaluate_truncated_files(suffix, model, tmp_path, capsys):
    scan = _cut(Path(write_volume(tmp_path / f"scan{suffix}", _image((12, 32, 40)))))
    out = tmp_path / "out.nii.gz"
    error = run(capsys, "segment", "--model", model, "--input", scan, "--output", out, "--device", "cpu")
    assert error["message"].startswith(f"{scan}: ") and "truncated" in error["message"]
    labels = _cut(Path(write_labels(tmp_path / f"pred{suffix}", _labels((12, 32, 40)), _image((12, 32, 40)))))
    ref = write_labels(tmp_path / "ref.nii.gz", _labels((12, 32, 40)), _image((12, 32, 40)))
    code = main(["evaluate", "--pred", str(labels), "--ref", ref])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT and f"{labels}: " in err and "truncated" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([scan.name, labels.name, "ref.nii.gz"])


def test_segment_unreadable_files(model, tmp_path, capsys):
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(os.urandom(2000))
    out = tmp_path / "out.nii.gz"
    error = run(capsys, "segment", "--model", model, "--input", garbage, "--output", out)
    assert "garbage.nii.gz" in error["message"] and "cannot read" in error["message"]
    error = run(capsys, "segment", "--model", model, "--input", tmp_path / "missing.nii.gz", "--output", out)
    assert "missing.nii.gz" in error["message"]
    good = tmp_path / "good.nii.gz"
    write_volume(good, _image())
    error = run(capsys, "segment", "--model", garbage, "--input", good, "--output", out)
    assert "garbage.nii.gz" in error["message"] and "model" in error["message"]
    error = run(capsys, "segment", "--model", tmp_path / "none.pairseg", "--input", good, "--output", out)
    assert "none.pairseg" in error["message"] and "does not exist" in error["message"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["garbage.nii.gz", "good.nii.gz"]


def test_segment_folder_with_bad_model_leaves_no_output_folder(tmp_path, capsys):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    write_volume(inputs / "a_image.nii.gz", _image())
    junk = tmp_path / "junk.pairseg"
    junk.write_bytes(b"PK\x03\x04 not really a zip")
    error = run(capsys, "segment", "--model", junk, "--input", inputs, "--output", tmp_path / "out",
                "--probabilities", tmp_path / "probs")
    assert "junk.pairseg" in error["message"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inputs", "junk.pairseg"]


def test_segment_model_of_other_modality(model, tmp_path, capsys):
    good = tmp_path / "ct.nii.gz"
    write_volume(good, _image())
    error = run(capsys, "segment", "--model", model, "--input", good, "--output", tmp_path / "o.nii.gz",
                "--modality", "CT")
    assert "mr.pairseg" in error["message"] and "CT" in error["message"]
    assert not (tmp_path / "o.nii.gz").exists()


# ---------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------


def _dataset(folder: Path, image: Volume | np.ndarray | None = None, labels: np.ndarray | None = None,
             label_like: Volume | None = None) -> Path:
    """Two cases: a good one and one built from the arguments."""
    folder.mkdir()
    good = _image(seed=1)
    write_volume(folder / "good_image.nii.gz", good)
    write_labels(folder / "good_label.nii.gz", _labels(), good)
    if isinstance(image, np.ndarray):
        _write_raw(folder / "bad_image.nrrd", image)
        reference = Volume(np.zeros(image.shape if image.ndim == 3 else (6, 16, 20), np.float32))
    else:
        reference = image if image is not None else _image(seed=2)
        write_volume(folder / "bad_image.nii.gz", reference)
    write_labels(folder / "bad_label.nii.gz", _labels() if labels is None else labels, label_like or reference)
    return folder


def _train(capsys, data: Path, tmp_path: Path, *extra) -> dict:
    out = tmp_path / "model.pairseg"
    error = run(capsys, "train", "--data", data, "--out", out, "--classes", CLASSES, "--modality", "MR",
                "--steps", "1", "--size", "32", "--device", "cpu", *extra)
    assert not out.exists() and not Path(str(out) + ".ckpt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".model")]
    return error


@pytest.mark.parametrize("name", ["2d", "4d", "two_slices", "constant", "nan", "inf"])
def test_train_bad_images(name, tmp_path, capsys):
    make, problem = SEGMENT_CASES[name]
    array = make()
    data = _dataset(tmp_path / "data", array, labels=np.zeros(array.shape, np.uint8) if array.ndim == 3 else None)
    error = _train(capsys, data, tmp_path)
    assert "bad_image.nrrd" in error["message"] and problem in error["message"], error["message"]


def test_label_geometry_differs_from_image(tmp_path, capsys):
    shifted = Volume(np.zeros((6, 16, 20), np.float32), (1.0, 1.0, 3.0), (5.0, 0.0, 0.0))
    error = _train(capsys, _dataset(tmp_path / "data", label_like=shifted), tmp_path)
    assert "bad_label.nii.gz" in error["message"] and "geometry" in error["message"]


def test_label_shape_differs_from_image(tmp_path, capsys):
    data = _dataset(tmp_path / "data", labels=_labels((6, 16, 24)), label_like=_image((6, 16, 24)))
    error = _train(capsys, data, tmp_path)
    assert "bad_label.nii.gz" in error["message"]


def test_label_values_outside_class_list(tmp_path, capsys):
    data = _dataset(tmp_path / "data", labels=_labels(classes=(1, 2, 3)))
    error = _train(capsys, data, tmp_path)
    assert "bad_label.nii.gz" in error["message"] and "3" in error["message"]


def test_class_absent_from_every_label(tmp_path, capsys):
    folder = tmp_path / "data"
    folder.mkdir()
    for seed in (1, 2):
        image = _image(seed=seed)
        write_volume(folder / f"c{seed}_image.nii.gz", image)
        write_labels(folder / f"c{seed}_label.nii.gz", _labels(classes=(1,)), image)
    error = _train(capsys, folder, tmp_path)
    assert "spleen" in error["message"] and "absent" in error["message"]


@pytest.mark.parametrize("kind", ["label", "image"])
def test_truncated_training_file_is_named(kind, tmp_path, capsys):
    """A cut label was read as zeros and blamed as "spleen absent from every label"."""
    data = _dataset(tmp_path / "data")
    _cut(data / f"bad_{kind}.nii.gz", 0.6)
    error = _train(capsys, data, tmp_path)
    assert f"bad_{kind}.nii.gz: file is truncated" in error["message"] and "absent" not in error["message"]


def test_unreadable_training_files(tmp_path, capsys):
    data = _dataset(tmp_path / "data")
    (data / "bad_label.nii.gz").write_bytes(b"\x00garbage" * 50)
    error = _train(capsys, data, tmp_path)
    assert "bad_label.nii.gz" in error["message"]
    (data / "bad_label.nii.gz").unlink()  # an image without its label
    error = _train(capsys, data, tmp_path)
    assert "bad" in error["message"] and "label" in error["message"]


def test_init_from_model_with_other_classes_or_modality(model, tmp_path, capsys):
    data = _dataset(tmp_path / "data")
    error = _train(capsys, data, tmp_path, "--init-from", model, "--classes", "liver,kidney")
    assert "mr.pairseg" in error["message"] and "classes" in error["message"]
    error = run(capsys, "train", "--data", data, "--out", tmp_path / "m.pairseg", "--classes", CLASSES,
                "--modality", "CT", "--steps", "1", "--init-from", model, "--device", "cpu")
    assert "mr.pairseg" in error["message"] and "modality" in error["message"]
    garbage = tmp_path / "junk.pairseg"
    garbage.write_bytes(os.urandom(300))
    error = _train(capsys, data, tmp_path, "--init-from", garbage)
    assert "junk.pairseg" in error["message"]


def test_evaluate_mismatched_shapes(tmp_path, capsys):
    write_labels(tmp_path / "a.nii.gz", _labels(), _image())
    write_labels(tmp_path / "b.nii.gz", _labels((6, 16, 24)), _image((6, 16, 24)))
    code = main(["evaluate", "--pred", str(tmp_path / "a.nii.gz"), "--ref", str(tmp_path / "b.nii.gz"),
                 "--json", str(tmp_path / "m.json")])
    assert code == EXIT_BAD_INPUT and "a.nii.gz" in capsys.readouterr().err
    assert not (tmp_path / "m.json").exists()
