"""Tests of pairseg.phantoms: the built-in synthetic dataset."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from scipy import ndimage

from pairseg.io.read import read_label, read_volume
from pairseg.io.volume import same_geometry
from pairseg.phantoms import PHANTOM_CLASSES, make_phantom_case, make_phantom_dataset

SHAPE = (12, 48, 48)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("phantoms")
    return make_phantom_dataset(folder, n_cases=3, shape=SHAPE, seed=7)


def test_dataset_files_and_description(dataset):
    desc = json.loads((dataset / "dataset.json").read_text())
    assert desc["modality"] == {"0": "MR"}
    assert desc["labels"] == {"0": "background", "1": "liver", "2": "right kidney", "3": "left kidney", "4": "spleen"}
    assert desc["numTraining"] == 3 and len(desc["training"]) == 3
    for entry in desc["training"]:
        image = read_volume(dataset / entry["image"])
        labels, names = read_label(dataset / entry["label"], PHANTOM_CLASSES, reference=image)
        assert image.shape == SHAPE and labels.shape == SHAPE
        assert image.array.dtype == np.float32 and np.all(np.isfinite(image.array))
        assert image.spacing == pytest.approx((1.5, 1.5, 6.0))
        assert names == PHANTOM_CLASSES
        assert set(np.unique(labels)) == {0, 1, 2, 3, 4}  # every organ present in every case
    assert sorted(p.name for p in dataset.iterdir() if p.name.startswith(".")) == []  # no temporary files


def test_anatomy_is_placed_like_a_patient():
    for index in range(4):
        image, labels = make_phantom_case(seed=3, index=index)
        assert image.shape == (24, 96, 96)
        com = {k: ndimage.center_of_mass(labels == k) for k in range(1, 5)}  # (z, y, x) indices
        world = {k: image.ijk_to_lps() @ np.array([c[2], c[1], c[0], 1.0]) for k, c in com.items()}
        liver, rk, lk, spleen = (world[k] for k in range(1, 5))
        # LPS: x grows to the patient's left, y posterior, z superior.
        assert liver[0] < spleen[0] and rk[0] < lk[0]  # liver and right kidney on the patient's right
        assert rk[1] > liver[1] and lk[1] > liver[1]  # kidneys posterior
        assert liver[2] > rk[2]  # liver above the kidneys
        sizes = np.bincount(labels.ravel(), minlength=5)
        assert sizes[1] > 3 * max(sizes[2:])  # liver is the largest organ
        # Organs differ in intensity (kidneys and spleen brighter than liver on T2).
        mean = {k: float(image.array[labels == k].mean()) for k in range(1, 5)}
        assert mean[2] > mean[1] and mean[4] > mean[1]


def test_deterministic_under_seed_and_varied_between_cases():
    a_img, a_lab = make_phantom_case(seed=5, index=1, shape=SHAPE)
    b_img, b_lab = make_phantom_case(seed=5, index=1, shape=SHAPE)
    np.testing.assert_array_equal(a_img.array, b_img.array)
    np.testing.assert_array_equal(a_lab, b_lab)
    assert same_geometry(a_img, b_img)
    c_img, c_lab = make_phantom_case(seed=5, index=2, shape=SHAPE)
    d_img, d_lab = make_phantom_case(seed=6, index=1, shape=SHAPE)
    assert not np.array_equal(a_lab, c_lab) and not np.array_equal(a_lab, d_lab)


def test_dataset_is_reproducible(tmp_path, dataset):
    again = make_phantom_dataset(tmp_path, n_cases=2, shape=SHAPE, seed=7)
    for name in ["case_000", "case_001"]:
        np.testing.assert_array_equal(
            read_volume(again / f"{name}_image.nii.gz").array, read_volume(dataset / f"{name}_image.nii.gz").array
        )
        np.testing.assert_array_equal(
            read_label(again / f"{name}_label.nii.gz")[0], read_label(dataset / f"{name}_label.nii.gz")[0]
        )


def test_fast_and_ct_variant(tmp_path):
    start = time.perf_counter()
    image, labels = make_phantom_case(seed=0, index=0)
    assert time.perf_counter() - start < 2.0  # ~0.2 s; target < 1 s, margin for a loaded machine
    ct, ct_labels = make_phantom_case(seed=0, index=0, modality="CT", shape=SHAPE)
    assert ct.array.min() < -500  # air in HU
    assert set(np.unique(ct_labels)) == {0, 1, 2, 3, 4}
    folder = make_phantom_dataset(tmp_path, n_cases=1, shape=SHAPE, modality="CT")
    assert json.loads((folder / "dataset.json").read_text())["modality"] == {"0": "CT"}
    with pytest.raises(ValueError):
        make_phantom_case(modality="PET")
