"""pairseg.uncertainty and `pairseg segment --uncertainty`: the map, the slice ranking, the file."""

from __future__ import annotations

import numpy as np
import pytest

from pairseg.uncertainty import rank_slices, uncertainty_map


def test_map_is_summed_binary_entropy_in_bits():
    probs = np.zeros((3, 2, 4, 4), np.float16)
    probs[1, 0] = 0.5  # one class undecided: 1 bit
    probs[2] = 0.5  # both classes undecided: 2 bits
    probs[0, 1] = 1.0  # certain foreground: 0
    out = uncertainty_map(probs)
    assert out.dtype == np.float32 and out.shape == (3, 4, 4)
    np.testing.assert_allclose(out[0], 0.0, atol=1e-4)
    np.testing.assert_allclose(out[1], 1.0, atol=1e-4)
    np.testing.assert_allclose(out[2], 2.0, atol=1e-4)
    p = 0.9
    one = np.full((1, 1, 1, 1), p, np.float32)
    assert uncertainty_map(one)[0, 0, 0] == pytest.approx(-(p * np.log2(p) + (1 - p) * np.log2(1 - p)), rel=1e-4)
    with pytest.raises(ValueError, match="Z, K, H, W"):
        uncertainty_map(np.zeros((3, 4, 4)))


def test_slices_ranked_by_summed_uncertainty():
    volume = np.zeros((6, 5, 5), np.float32)
    volume[4, :2] = 1.0  # 10 bits
    volume[1, 0, 0] = 3.0  # 3 bits
    volume[2, :] = 0.5  # 12.5 bits
    ranked = rank_slices(volume, count=5)
    assert [r["slice"] for r in ranked] == [2, 4, 1]  # zero slices left out
    assert ranked[0]["uncertainty"] == pytest.approx(12.5)
    assert rank_slices(volume, count=1) == ranked[:1]


def test_map_over_chosen_classes_only():
    probs = np.zeros((2, 3, 4, 4), np.float16)
    probs[:, 0] = 0.5  # class 0 undecided everywhere: 1 bit
    probs[1, 2] = 0.5  # class 2 undecided on slice 1
    np.testing.assert_allclose(uncertainty_map(probs, [0]), 1.0, atol=1e-4)
    only2 = uncertainty_map(probs, [2])
    np.testing.assert_allclose(only2[0], 0.0, atol=1e-4) and np.testing.assert_allclose(only2[1], 1.0, atol=1e-4)
    np.testing.assert_allclose(uncertainty_map(probs, [2, 0, 2]), uncertainty_map(probs, [0]) + only2, atol=1e-4)
    np.testing.assert_array_equal(uncertainty_map(probs, None), uncertainty_map(probs, [0, 1, 2]))
    for bad in ([], [3], [-1]):
        with pytest.raises(ValueError, match="must pick some of the 3 classes"):
            uncertainty_map(probs, bad)
