"""Tests of pairseg.postprocess.keep_largest_component."""

from __future__ import annotations

import numpy as np
import pytest

from pairseg.postprocess import keep_largest_component


def test_keeps_largest_component_per_class():
    labels = np.zeros((6, 10, 10), np.uint8)
    labels[0:3, 0:4, 0:4] = 1  # 48 voxels: kept
    labels[5, 8:10, 8:10] = 1  # 4 voxels: removed
    labels[3:5, 5:7, 0:2] = 2  # 8 voxels: kept
    labels[0, 9, 0] = 2  # 1 voxel: removed
    labels[5, 0, 9] = 3  # single component: kept
    out = keep_largest_component(labels, num_classes=3)
    expected = labels.copy()
    expected[5, 8:10, 8:10] = 0
    expected[0, 9, 0] = 0
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == labels.dtype
    assert labels[5, 8, 8] == 1  # input untouched


def test_connectivity_26_by_default_6_on_request():
    labels = np.zeros((4, 4, 4), np.int64)
    labels[0:2, 0:2, 0:2] = 1  # 8 voxels
    labels[2, 2, 2] = 1  # touches the cube by a corner only
    labels[3, 3, 3] = 1  # touches that voxel by a corner only
    np.testing.assert_array_equal(keep_largest_component(labels, 1), labels)
    out6 = keep_largest_component(labels, 1, connectivity=6)
    assert out6.sum() == 8 and out6[2, 2, 2] == 0 and out6[3, 3, 3] == 0
    with pytest.raises(ValueError):
        keep_largest_component(labels, 1, connectivity=5)


def test_values_above_num_classes_and_empty_classes_untouched():
    labels = np.zeros((3, 5, 5), np.uint8)
    labels[0, 0, 0] = 4
    labels[2, 4, 4] = 4
    labels[1, 1:3, 1:3] = 1
    out = keep_largest_component(labels, num_classes=3)
    np.testing.assert_array_equal(out, labels)


def test_2d_input_and_bad_dimensions():
    labels = np.zeros((6, 6), np.uint8)
    labels[0:3, 0:3] = 1
    labels[3, 3] = 1  # diagonal neighbour
    labels[5, 5] = 1
    assert keep_largest_component(labels, 1).sum() == 10
    assert keep_largest_component(labels, 1, connectivity=6).sum() == 9
    with pytest.raises(ValueError):
        keep_largest_component(np.zeros((2, 2, 2, 2), np.uint8), 1)
