"""`pairseg proxy-maps`: ground-truth AND/XOR maps of a slice pair, and a model's predicted ones."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from pairseg.cli import EXIT_BAD_INPUT, main
from pairseg.io.volume import Volume
from pairseg.io.write import write_labels, write_volume
from pairseg.modelfiles.weights import save_model
from pairseg.networks import build_model

SPACING = (0.8, 0.9, 5.0)
ORIGIN = (10.0, -20.0, 30.0)


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr().out
    return code, [json.loads(line) for line in out.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("proxy")
    rng = np.random.default_rng(0)
    like = Volume(np.zeros((6, 24, 32), np.float32), SPACING, ORIGIN)
    a = np.zeros((6, 24, 32), np.uint8)
    b = np.zeros((6, 24, 32), np.uint8)
    a[:, 4:16, 5:20] = 1
    a[:, 14:20, 18:28] = 2
    b[:, 8:20, 2:14] = 1
    b[:, 2:10, 16:30] = 2
    b[3] = np.roll(b[3], 3, axis=1)
    write_labels(folder / "a_label.nii.gz", a, like)
    write_labels(folder / "b_label.nii.gz", b, like)
    image = like.like(rng.normal(100, 20, like.shape).astype(np.float32))
    write_volume(folder / "a_image.nii.gz", image)
    return folder, a, b


def _read(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_truth_maps_equal_numpy_and_xor(volumes, tmp_path, capsys):
    folder, a, b = volumes
    code, events = run(capsys, "proxy-maps", "--label-a", folder / "a_label.nii.gz", "--slice-a", 2,
                       "--label-b", folder / "b_label.nii.gz", "--slice-b", 3, "--out", tmp_path,
                       "--events", "json")
    assert code == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["and.nii.gz", "proxy_truth.png", "xor.nii.gz"]
    assert sorted(events[-1]["outputs"]) == sorted(str(tmp_path / n) for n in names)
    sa, sb = a[2], b[3]
    and_map, xor_map = _read(tmp_path / "and.nii.gz")[0], _read(tmp_path / "xor.nii.gz")[0]
    np.testing.assert_array_equal(and_map, np.where((sa == sb) & (sa > 0), sa, 0))
    np.testing.assert_array_equal(xor_map, (sa != sb).astype(np.uint8))
    # Per class, the maps are the numpy AND / XOR of the class masks.
    for k in (1, 2):
        np.testing.assert_array_equal(and_map == k, (sa == k) & (sb == k))
        assert np.all(xor_map[(sa == k) ^ (sb == k)] == 1)
    image = sitk.ReadImage(str(tmp_path / "and.nii.gz"))  # placed where slice A is
    np.testing.assert_allclose(image.GetOrigin(), (ORIGIN[0], ORIGIN[1], ORIGIN[2] + 2 * SPACING[2]), atol=1e-4)
    np.testing.assert_allclose(image.GetSpacing(), SPACING, atol=1e-5)
    picture = sitk.ReadImage(str(tmp_path / "proxy_truth.png"))
    assert picture.GetSize() == (32, 24) and picture.GetNumberOfComponentsPerPixel() == 3


def test_binary_task_and_same_volume(volumes, tmp_path):
    folder, a, _ = volumes
    binary = (a > 0).astype(np.uint8)
    binary[4] = np.roll(binary[4], 5, axis=0)
    write_labels(tmp_path / "bin.nii.gz", binary, Volume(binary, SPACING, ORIGIN))
    out = tmp_path / "out"
    assert main(["proxy-maps", "--label-a", str(tmp_path / "bin.nii.gz"), "--slice-a", "1", "--slice-b", "4",
                 "--out", str(out)]) == 0
    sa, sb = binary[1] > 0, binary[4] > 0
    np.testing.assert_array_equal(_read(out / "and.nii.gz")[0], (sa & sb).astype(np.uint8))
    np.testing.assert_array_equal(_read(out / "xor.nii.gz")[0], (sa ^ sb).astype(np.uint8))


def test_predicted_maps_with_a_model(volumes, tmp_path, capsys):
    folder, _, _ = volumes
    torch.manual_seed(0)
    model = save_model(tmp_path / "c2fcn.pairseg", build_model("c2fcn", 2, 3, base="unet", width=4),
                       {"class_names": ["x", "y"], "class_colors": [[1, 0, 0], [0, 1, 0]], "modality": "MR",
                        "size": 32})
    out = tmp_path / "out"
    code, _ = run(capsys, "proxy-maps", "--label-a", folder / "a_label.nii.gz", "--slice-a", 1, "--slice-b", 4,
                  "--label-b", folder / "b_label.nii.gz", "--image-a", folder / "a_image.nii.gz",
                  "--model", model, "--out", out, "--device", "cpu", "--events", "json")
    assert code == 0
    for name in ("and_predicted.nii.gz", "xor_predicted.nii.gz", "proxy_predicted.png"):
        assert (out / name).is_file()
    for name in ("and_predicted.nii.gz", "xor_predicted.nii.gz"):
        values = _read(out / name)
        assert values.shape == (1, 24, 32) and values.min() >= 0.0 and values.max() <= 1.0


def test_errors_leave_no_output(volumes, tmp_path, capsys):
    folder, _, _ = volumes
    single = save_model(tmp_path / "unet.pairseg", build_model("unet", 2, 3, width=4),
                        {"class_names": ["x", "y"], "class_colors": [[1, 0, 0], [0, 1, 0]], "modality": "MR",
                         "size": 32})
    cases = [
        (["--slice-a", 9, "--slice-b", 1], "slice 9"),
        (["--slice-a", 1, "--slice-b", 1, "--model", single, "--image-a", folder / "a_image.nii.gz"],
         "no proxy maps"),
        (["--slice-a", 1, "--slice-b", 1, "--model", single], "--image-a"),
    ]
    for extra, message in cases:
        out = tmp_path / "out"
        code, events = run(capsys, "proxy-maps", "--label-a", folder / "a_label.nii.gz", "--out", out,
                           "--device", "cpu", "--events", "json", *extra)
        assert code == EXIT_BAD_INPUT and message in events[-1]["message"], events[-1]
        assert not out.exists() or list(out.iterdir()) == []
