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


def _full_volume_reference(labels, num_classes, connectivity):
    """The straightforward version: label each class over the whole map, zero all but the largest."""
    from scipy import ndimage

    rank = {6: 1, 18: 2, 26: 3}[connectivity]
    structure = ndimage.generate_binary_structure(labels.ndim, min(rank, labels.ndim))
    out = labels.copy()
    for k in range(1, num_classes + 1):
        components, count = ndimage.label(labels == k, structure=structure)
        if count > 1:
            sizes = np.bincount(components.ravel())
            sizes[0] = 0
            out[(components != np.argmax(sizes)) & (components > 0)] = 0
    return out


@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_boxed_labelling_matches_whole_volume_labelling(connectivity):
    """Each class is labelled inside its bounding box: same result (ties included) as labelling
    the whole map, for random maps of several dtypes, shapes and class counts."""
    rng = np.random.default_rng(connectivity)
    for trial in range(60):
        shape = tuple(int(n) for n in rng.integers(1, 14, size=int(rng.integers(2, 4))))
        num_classes = int(rng.integers(1, 5))
        weights = rng.random(num_classes + 2)  # value num_classes + 1: above num_classes, untouched
        weights[0] += 2.0 * (trial % 2)  # half the maps mostly background: small, offset boxes
        labels = rng.choice(num_classes + 2, size=shape, p=weights / weights.sum())
        labels = labels.astype([np.uint8, np.int16, np.int64][trial % 3])
        out = keep_largest_component(labels, num_classes, connectivity)
        assert out.dtype == labels.dtype
        np.testing.assert_array_equal(out, _full_volume_reference(labels, num_classes, connectivity))


def test_tie_keeps_first_component_in_c_order_inside_a_box():
    labels = np.zeros((5, 9, 9), np.uint8)
    labels[0, 8, 8] = 2  # class 2 far away: class 1's box does not start at the origin
    labels[2, 5, 6:8] = 1  # first in C order of two equal components
    labels[3, 2:4, 2] = 1  # second, equal size, earlier in x and y but later in z
    out = keep_largest_component(labels, 2)
    assert out[2, 5, 6] == out[2, 5, 7] == 1 and not out[3, 2:4, 2].any()
    assert out[0, 8, 8] == 2


def test_memory_stays_a_few_bytes_per_voxel():
    """Beyond the output copy (1 byte/voxel here), an int32 component map and a boolean mask of one
    class's box: no int64 copy of the whole map (np.bincount would make one), no per-class
    full-size temporaries left alive while the next class is labelled."""
    import tracemalloc

    rng = np.random.default_rng(0)
    labels = rng.choice(3, size=(40, 64, 64), p=[0.2, 0.6, 0.2]).astype(np.uint8)  # both classes span the map
    tracemalloc.start()
    try:
        out = keep_largest_component(labels, 2)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(out, _full_volume_reference(labels, 2, 26))
    assert peak < 8 * labels.size, f"peak {peak / labels.size:.1f} bytes per voxel"
