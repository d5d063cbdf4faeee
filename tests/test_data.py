"""pairseg.data: datasets on disk, intensity normalisation, 2.5D stacks, resizing, slice store."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pairseg.data import (crop_or_pad, CT_WINDOW, default_spacing, intensity_window, normalize, resampled_shape,
                          resize_slices, SliceStore, stack_25d, stacks_25d)
from pairseg.datasets import check_image, load_case, load_dataset, parse_classes
from pairseg.errors import PairSegInputError
from pairseg.io.volume import Volume
from pairseg.io.write import write_labels, write_volume


def _case(folder, name, shape=(6, 20, 28), classes=2, suffix=".nrrd", seed=0):
    rng = np.random.default_rng(seed)
    image = Volume(rng.normal(100, 20, shape).astype(np.float32), (0.8, 0.8, 3.0))
    labels = np.zeros(shape, np.uint8)
    for k in range(1, classes + 1):
        labels[1:-1, 2 * k:2 * k + 4, 3:9] = k
    write_volume(folder / f"{name}_image{suffix}", image)
    write_labels(folder / f"{name}_label{suffix}", labels, image)
    return image, labels


# ---------------------------------------------------------------------------------------------
# Normalisation
# ---------------------------------------------------------------------------------------------


def test_ct_window_maps_minus200_250_to_unit_interval():
    hu = np.array([[[-1000.0, -200.0, 25.0, 250.0, 3000.0]]], dtype=np.float32)
    out = normalize(hu, "CT")
    assert CT_WINDOW == (-200.0, 250.0)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.ravel(), [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(normalize(hu, "ct"), out)  # case-insensitive


def test_mr_clips_2nd_to_98th_percentile():
    rng = np.random.default_rng(0)
    array = rng.gamma(2.0, 50.0, size=(8, 32, 32)).astype(np.float32)
    array[0, 0, 0] = 1e6  # an outlier must not squash the range
    out = normalize(array, "MR")
    low, high = np.percentile(array[array > array.min()], [2, 98])
    assert out.min() == 0.0 and out.max() == 1.0
    np.testing.assert_allclose(out, np.clip((array - low) / (high - low), 0, 1), atol=1e-5)
    assert np.mean(out == 0.0) == pytest.approx(0.02, abs=0.005)
    assert np.mean(out == 1.0) == pytest.approx(0.02, abs=0.005)


def test_normalize_rejects_unknown_modality_and_constant_window():
    with pytest.raises(PairSegInputError, match="modality"):
        normalize(np.zeros((3, 4, 4)), "PET")
    with pytest.raises(PairSegInputError, match="constant"):
        normalize(np.full((3, 4, 4), 7.0), "MR")


# ---------------------------------------------------------------------------------------------
# 2.5D stacks and resizing
# ---------------------------------------------------------------------------------------------


def test_stack_25d_replicates_edges():
    volume = np.arange(4, dtype=np.float32)[:, None, None] * np.ones((4, 2, 3), np.float32)
    first = stack_25d(volume, 0)
    last = stack_25d(volume, 3)
    middle = stack_25d(volume, 2)
    assert first.shape == (3, 2, 3)
    assert [float(first[c, 0, 0]) for c in range(3)] == [0, 0, 1]
    assert [float(middle[c, 0, 0]) for c in range(3)] == [1, 2, 3]
    assert [float(last[c, 0, 0]) for c in range(3)] == [2, 3, 3]
    with pytest.raises(IndexError):
        stack_25d(volume, 4)


def test_stacks_25d_matches_per_slice_stacks():
    volume = np.random.default_rng(1).random((5, 6, 7)).astype(np.float32)
    stacks = stacks_25d(volume)
    assert tuple(stacks.shape) == (5, 3, 6, 7)
    for z in range(5):
        np.testing.assert_array_equal(stacks[z].numpy(), stack_25d(volume, z))


def test_resize_images_bilinear_and_labels_nearest_non_square():
    labels = torch.zeros(2, 40, 56, dtype=torch.uint8)
    labels[:, 10:30, 14:42] = 3
    small = resize_slices(labels, 32, labels=True)
    assert small.dtype == torch.uint8 and tuple(small.shape) == (2, 32, 32)
    assert set(torch.unique(small).tolist()) == {0, 3}  # no interpolated label values
    back = resize_slices(small, (40, 56), labels=True)
    assert tuple(back.shape) == (2, 40, 56)
    assert (back == labels).float().mean() > 0.97
    images = torch.rand(2, 3, 40, 56)
    resized = resize_slices(images, (20, 28))
    assert tuple(resized.shape) == (2, 3, 20, 28)
    assert resize_slices(images, (40, 56)) is images  # same size: untouched


def test_slice_store_holds_stacks_at_training_size():
    rng = np.random.default_rng(2)
    volumes = [rng.random((5, 40, 56)).astype(np.float32) * 100, rng.random((7, 40, 56)).astype(np.float32)]
    labels = [np.zeros((5, 40, 56), np.uint8), np.zeros((7, 40, 56), np.uint8)]
    labels[0][2, 5:20, 5:20] = 1
    labels[1][1:4, 5:20, 5:20] = 2
    store = SliceStore.from_arrays(volumes, labels, "MR", 32, ["a", "b"])
    assert store.slice_counts == [5, 7] and store.num_slices == 12
    assert tuple(store.images[1].shape) == (7, 3, 32, 32)
    assert float(store.images[0].min()) >= 0.0 and float(store.images[0].max()) <= 1.0
    assert store.labelled_ranges() == [(2, 2), (1, 3)]
    assert store.class_presence(3).tolist() == [1, 1, 0]
    images, gathered = store.gather(np.array([1, 0]), np.array([2, 2]))
    assert tuple(images.shape) == (2, 3, 32, 32) and gathered.dtype == torch.int64
    torch.testing.assert_close(images[0], store.images[1][2])


# ---------------------------------------------------------------------------------------------
# Image checks
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("array, message", [
    (np.zeros((4, 4)), "3D"),
    (np.zeros((2, 4, 4, 4)), "3D"),
    (np.random.default_rng(0).random((2, 8, 8)), "at least 3"),
    (np.full((4, 8, 8), 5.0), "constant"),
    (np.where(np.eye(8)[None].repeat(4, 0) > 0, np.nan, 1.0), "NaN"),
    (np.where(np.eye(8)[None].repeat(4, 0) > 0, np.inf, 1.0), "infinite"),
])
def test_check_image_names_file_and_problem(array, message):
    volume = Volume.__new__(Volume)  # bypass geometry checks to hold any array
    volume.array, volume.path = np.asarray(array, dtype=np.float32), "/data/bad_image.nii.gz"
    with pytest.raises(PairSegInputError, match=message) as info:
        check_image(volume)
    assert "bad_image.nii.gz" in str(info.value)


# ---------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------


def test_parse_classes_quoted_and_duplicates():
    assert parse_classes('liver,"right kidney", spleen') == ["liver", "right kidney", "spleen"]
    assert parse_classes(["a", " b "]) == ["a", "b"]
    with pytest.raises(PairSegInputError, match="duplicate"):
        parse_classes("liver,Liver")
    with pytest.raises(PairSegInputError):
        parse_classes(" , ")


def test_dataset_json_folder(phantom_dir):
    dataset = load_dataset(phantom_dir)
    assert dataset.class_names == ["liver", "right kidney", "left kidney", "spleen"]
    assert dataset.modality == "MR" and dataset.num_classes == 4
    assert [c.name for c in dataset.cases] == [f"case_{i:03d}" for i in range(4)]
    assert all(c.image.is_file() and c.label.is_file() for c in dataset.cases)
    assert [c.name for c in dataset.subset(["case_001"]).cases] == ["case_001"]
    with pytest.raises(PairSegInputError, match="differ"):
        load_dataset(phantom_dir, classes="liver,spleen")
    with pytest.raises(PairSegInputError, match="modality"):
        load_dataset(phantom_dir, modality="CT")
    image, labels = load_case(dataset.cases[0], dataset)
    assert labels.dtype == np.uint8 and labels.shape == image.array.shape


def test_bare_folder_needs_classes_and_modality(tmp_path):
    _case(tmp_path, "alpha", seed=1)
    _case(tmp_path, "beta", seed=2)
    with pytest.raises(PairSegInputError, match="--classes"):
        load_dataset(tmp_path)
    dataset = load_dataset(tmp_path, classes="liver,spleen", modality="mr")
    assert dataset.class_names == ["liver", "spleen"] and dataset.modality == "MR"
    assert [c.name for c in dataset.cases] == ["alpha", "beta"]
    assert dataset.cases[0].label.name == "alpha_label.nrrd"
    image, labels = load_case(dataset.cases[1], dataset)
    assert set(np.unique(labels)) == {0, 1, 2}
    with pytest.raises(PairSegInputError, match="modality"):
        load_dataset(tmp_path, classes="liver", modality="PET")


def test_label_values_outside_class_list(tmp_path):
    _case(tmp_path, "alpha", classes=3)
    dataset = load_dataset(tmp_path, classes="liver,spleen", modality="MR")
    with pytest.raises(PairSegInputError, match="alpha_label.nrrd"):
        load_case(dataset.cases[0], dataset)


def test_bad_manifests(tmp_path):
    with pytest.raises(PairSegInputError, match="does not exist"):
        load_dataset(tmp_path / "missing")
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(PairSegInputError, match="dataset.json"):
        load_dataset(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"0": "bg", "2": "x"}, "modality": {"0": "MR"},
                                                       "training": []}))
    with pytest.raises(PairSegInputError, match="1..K"):
        load_dataset(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"0": "bg", "1": "x"}, "modality": {"0": "US"},
                                                       "training": [{"image": "a", "label": "b"}]}))
    with pytest.raises(PairSegInputError, match="MR or CT"):
        load_dataset(tmp_path)


def test_mr_window_ignores_zero_filled_padding_unless_the_old_rule_is_asked_for():
    rng = np.random.default_rng(1)
    body = rng.gamma(2.0, 50.0, size=(6, 40, 40)).astype(np.float32)
    body[:, :6, :] = 0.0  # some background of the scan itself
    padded = np.zeros((6, 80, 80), np.float32)  # the same scan in a field of view twice as wide
    padded[:, 20:60, 20:60] = body
    assert intensity_window(padded, "MR") == intensity_window(body, "MR")
    assert intensity_window(body, "MR") == tuple(np.percentile(body[body > 0], [2, 98]))
    # the rule of models written before 0.3: every voxel, so padding shifts the window
    assert intensity_window(body, "MR", "volume") == tuple(np.percentile(body, [2, 98]))
    assert intensity_window(padded, "MR", "volume")[1] < intensity_window(body, "MR", "volume")[1]
    with pytest.raises(ValueError, match="rule"):
        intensity_window(body, "MR", "median")


def test_resampled_shape_keeps_the_physical_extent():
    assert resampled_shape((256, 256), (1.25, 1.25), 320 / 192) == (192, 192)
    assert resampled_shape((512, 384), (0.7, 0.9), 1.5) == (239, 230)  # anisotropic pixels
    with pytest.raises(PairSegInputError, match="positive"):
        resampled_shape((4, 4), (1.0, 0.0), 1.0)


def test_crop_or_pad_centres_images_and_labels():
    image = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    out = crop_or_pad(image, 8)  # rows padded 2 + 2, columns 1 + 1
    assert out.shape == (2, 3, 8, 8)
    assert torch.equal(out[..., 2:6, 1:7], image) and out[..., :2, :].abs().sum() == 0
    labels = torch.randint(0, 4, (2, 10, 7), dtype=torch.uint8)
    cropped = crop_or_pad(labels, 5)  # rows cropped 2 + 3, columns 1 + 1
    assert torch.equal(cropped, labels[:, 2:7, 1:6])
    assert crop_or_pad(image, 4).shape == (2, 3, 4, 4)


def test_slice_store_resamples_to_the_model_spacing():
    """Training slices on the model's grid: a case of 2 mm pixels and one of 1 mm pixels with the
    same anatomy end up the same size in a 1.5 mm store; without a spacing they are only resized."""
    square = np.zeros((3, 60, 60), np.float32)
    square[:, 15:45, 15:45] = 100.0  # 30 px x 2 mm = 60 mm organ
    fine = np.zeros((3, 120, 120), np.float32)
    fine[:, 30:90, 30:90] = 100.0  # the same 60 mm organ at 1 mm
    labels = [(square > 0).astype(np.uint8), (fine > 0).astype(np.uint8)]
    store = SliceStore.from_arrays([square, fine], labels, "MR", 64, ["coarse", "fine"],
                                   spacings=[(2.0, 2.0), (1.0, 1.0)], model_spacing=1.5)
    areas = [int(label[1].sum()) for label in store.labels]
    assert areas[0] == areas[1] == 40 * 40  # 60 mm / 1.5 mm = 40 px, centred on 64 x 64
    assert store.images[0].shape == (3, 3, 64, 64)
    resized = SliceStore.from_arrays([square, fine], labels, "MR", 64)
    assert int(resized.labels[0][1].sum()) == int(resized.labels[1][1].sum()) == 32 * 32


def test_default_spacing_fills_the_size_with_the_median_field_of_view():
    grids = [((256, 256), (1.25, 1.25)), ((256, 200), (1.5, 1.5)), ((512, 512), (0.5, 0.5))]
    assert default_spacing(grids, 192) == pytest.approx(320 / 192)


def test_widen_field_of_view_keeps_every_voxel_in_place():
    from pairseg.data import widen_field_of_view

    angle = np.deg2rad(15)
    direction = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    volume = Volume(np.arange(2 * 8 * 6, dtype=np.float32).reshape(2, 8, 6) + 1, (0.5, 1.5, 3.0), (10.0, -4.0, 2.0),
                    direction.ravel())
    wide, (top, left) = widen_field_of_view(volume, 1.5)
    assert wide.array.shape == (2, 12, 8) and (top, left) == (2, 1)
    assert np.array_equal(wide.array[:, top:top + 8, left:left + 6], volume.array)
    assert wide.array.sum() == volume.array.sum()  # the rest is background
    for z, y, x in ((0, 0, 0), (1, 7, 5), (1, 3, 2)):
        before = volume.to_sitk().TransformIndexToPhysicalPoint((x, y, z))
        after = wide.to_sitk().TransformIndexToPhysicalPoint((x + left, y + top, z))
        np.testing.assert_allclose(after, before, atol=1e-9)
