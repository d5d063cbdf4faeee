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
