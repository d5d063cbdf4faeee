"""Canonical orientation: what the networks see does not depend on how a volume is stored."""

import itertools

import numpy as np
import SimpleITK as sitk

from pairseg.orientation import Orientation
from pairseg.io.volume import Volume


def _volume(permutation, signs, rng):
    direction = np.zeros((3, 3))
    for index_axis, (world_axis, sign) in enumerate(zip(permutation, signs)):
        direction[world_axis, index_axis] = sign
    return Volume(rng.random((4, 5, 6)).astype(np.float32), (1.0, 2.0, 3.0), (0.0, 0.0, 0.0), direction.ravel())


def test_canonical_layout_matches_simpleitk_dicomorient_for_every_axis_order():
    rng = np.random.default_rng(0)
    for permutation in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            volume = _volume(permutation, signs, rng)
            orientation = Orientation.of(volume.direction)
            reference = sitk.DICOMOrient(volume.to_sitk(), "LPS")
            canonical = orientation.apply(volume.array)
            assert np.array_equal(canonical, sitk.GetArrayFromImage(reference))
            assert np.array_equal(orientation.invert(canonical), volume.array)
            assert orientation.spacing_zyx(volume.spacing) == tuple(reversed(reference.GetSpacing()))


def test_oblique_direction_picks_the_closest_axes():
    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    flipped = rotation @ np.diag([1, -1, -1])
    orientation = Orientation.of(flipped.ravel())
    assert orientation.axes == (0, 1, 2)
    assert orientation.flips == (True, True, False)


def test_trailing_channel_axis_rides_along():
    orientation = Orientation((2, 1, 0), (True, False, True))
    array = np.arange(4 * 5 * 6 * 2).reshape(4, 5, 6, 2)
    assert np.array_equal(orientation.invert(orientation.apply(array)), array)
    assert orientation.apply(array).shape == (6, 5, 4, 2)


def test_segmentation_is_the_same_however_the_volume_is_stored(phantom_dir, phantom_model):
    """Reverse the slices and mirror the columns in storage (geometry adjusted so every voxel keeps
    its physical place): the predicted label of every physical voxel must not change."""
    from pairseg.infer import Predictor
    from pairseg.io.read import read_volume

    volume = read_volume(sorted(phantom_dir.glob("*_image.nii.gz"))[-1])
    direction = np.asarray(volume.direction).reshape(3, 3)
    spacing = np.asarray(volume.spacing)
    depth, _, width = volume.shape
    mirrored_direction = direction.copy()
    mirrored_direction[:, 0] *= -1
    mirrored_direction[:, 2] *= -1
    origin = (np.asarray(volume.origin) + direction[:, 0] * spacing[0] * (width - 1)
              + direction[:, 2] * spacing[2] * (depth - 1))
    mirrored = Volume(volume.array[::-1, :, ::-1].copy(), volume.spacing, origin, mirrored_direction.ravel())
    predictor = Predictor(phantom_model, "cpu")
    native = predictor.segment(volume, keep_largest=False).labels.array
    stored_otherwise = predictor.segment(mirrored, keep_largest=False).labels.array
    assert native.any()
    assert np.array_equal(native, stored_otherwise[::-1, :, ::-1])
