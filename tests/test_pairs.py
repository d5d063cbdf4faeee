"""Tests for pairseg.pairs: intra / inter / identical pair sampling."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from pairseg.pairs import default_offsets, sample_pairs


def test_default_offsets():
    assert default_offsets("MR") == (3, 5, 7)
    assert default_offsets("mri") == (3, 5, 7)
    assert default_offsets("CT") == (5, 9, 13)
    with pytest.raises(ValueError, match="modality"):
        default_offsets("PET")


def test_intra_counts_and_exact_offsets():
    pairs = sample_pairs([10, 4], mode="intra", offsets=(3, 5))
    assert pairs.dtype == np.int64 and pairs.shape[1] == 4
    # volume 0: 7 pairs at offset 3, 5 at offset 5; volume 1: 1 at offset 3
    assert len(pairs) == 7 + 5 + 1
    assert (pairs[:, 0] == pairs[:, 2]).all()  # never crosses volumes
    assert set((pairs[:, 3] - pairs[:, 1]).tolist()) == {3, 5}
    counts = Counter(map(tuple, pairs.tolist()))
    assert counts[(0, 0, 0, 3)] == 1 and counts[(0, 4, 0, 9)] == 1 and counts[(1, 0, 1, 3)] == 1
    assert max(counts.values()) == 1
    sizes = np.array([10, 4])
    assert (pairs[:, 3] < sizes[pairs[:, 0]]).all()


def test_intra_with_slice_index_arrays_needs_exact_partner():
    pairs = sample_pairs([np.array([2, 5, 6, 8, 11])], mode="intra", offsets=(3,))
    assert sorted(map(tuple, pairs.tolist())) == [(0, 2, 0, 5), (0, 5, 0, 8), (0, 8, 0, 11)]


def test_inter_invariants():
    sizes = [6, 9, 4]
    pairs = sample_pairs(sizes, mode="inter", inter_repeats=2, seed=3)
    assert len(pairs) == 2 * sum(sizes)
    assert (pairs[:, 0] != pairs[:, 2]).all()  # crosses volumes
    firsts = Counter(map(tuple, pairs[:, :2].tolist()))
    assert set(firsts.values()) == {2}  # every slice twice as a first member
    assert len(firsts) == sum(sizes)
    assert (pairs[:, 3] < np.array(sizes)[pairs[:, 2]]).all()
    assert sample_pairs(sizes, mode="inter", inter_repeats=3).shape == (3 * sum(sizes), 4)


def test_inter_partners_cover_other_volumes():
    pairs = sample_pairs([50, 50, 50], mode="inter", inter_repeats=4, seed=1)
    for v in range(3):
        partners = set(pairs[pairs[:, 0] == v, 2].tolist())
        assert partners == {0, 1, 2} - {v}


def test_intra_plus_inter_is_union():
    sizes = [12, 8]
    intra = sample_pairs(sizes, mode="intra")
    inter = sample_pairs(sizes, mode="inter", seed=5)
    both = sample_pairs(sizes, seed=5)
    np.testing.assert_array_equal(both, np.concatenate([intra, inter]))


def test_identical():
    pairs = sample_pairs([3, np.array([1, 4])], mode="identical")
    assert pairs.tolist() == [[0, 0, 0, 0], [0, 1, 0, 1], [0, 2, 0, 2], [1, 1, 1, 1], [1, 4, 1, 4]]


def test_deterministic_for_seed():
    a = sample_pairs([20, 15, 7], seed=11)
    b = sample_pairs([20, 15, 7], seed=11)
    c = sample_pairs([20, 15, 7], seed=12)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    g1, g2 = np.random.default_rng(4), np.random.default_rng(4)
    np.testing.assert_array_equal(sample_pairs([9, 9], seed=g1), sample_pairs([9, 9], seed=g2))


def test_single_volume_shuffled_inter():
    pairs = sample_pairs([30], mode="inter", inter_repeats=2, seed=0)
    assert len(pairs) == 60
    assert (pairs[:, 0] == 0).all() and (pairs[:, 2] == 0).all()
    assert (pairs[:, 1] != pairs[:, 3]).all()  # shuffled copy, no slice paired with itself
    for r in range(2):  # each repeat pairs the slices with a permutation of themselves
        block = pairs[r * 30 : (r + 1) * 30]
        assert sorted(block[:, 1].tolist()) == list(range(30))
        assert sorted(block[:, 3].tolist()) == list(range(30))
    both = sample_pairs([30], mode="intra+inter", offsets=(3, 5, 7))
    assert len(both) == (27 + 25 + 23) + 60


def test_single_volume_two_slices():
    pairs = sample_pairs([2], mode="inter", inter_repeats=3, seed=9)
    assert sorted(map(tuple, pairs.tolist())) == [(0, 0, 0, 1)] * 3 + [(0, 1, 0, 0)] * 3


def test_margin_filter():
    sizes = [20, 10]
    pairs = sample_pairs(
        sizes, mode="intra+inter", offsets=(3,), labelled_ranges=[(5, 9), None], margin=2, seed=0
    )
    v0 = np.concatenate([pairs[pairs[:, 0] == 0, 1], pairs[pairs[:, 2] == 0, 3]])
    assert v0.min() >= 3 and v0.max() <= 11
    intra0 = pairs[(pairs[:, 0] == 0) & (pairs[:, 2] == 0)]
    assert len(intra0) == 9 - 3  # slices 3..11, pairs (s, s+3) with s+3 <= 11
    inter0 = pairs[(pairs[:, 0] == 0) & (pairs[:, 2] == 1)]
    assert len(inter0) == 2 * 9
    assert len(pairs[(pairs[:, 0] == 1) & (pairs[:, 2] == 1)]) == 7  # volume 1 unfiltered
    with pytest.raises(ValueError, match="needs labelled_ranges"):
        sample_pairs(sizes, margin=2)
    with pytest.raises(ValueError, match="entries for 2 volumes"):
        sample_pairs(sizes, labelled_ranges=[(1, 2)], margin=0)
    with pytest.raises(ValueError, match="no usable slice"):
        sample_pairs(sizes, labelled_ranges=[(40, 45), None], margin=1)
    with pytest.raises(ValueError, match="margin"):
        sample_pairs(sizes, labelled_ranges=[(1, 2), None], margin=-1)


def test_labelled_ranges_without_margin_keep_everything():
    np.testing.assert_array_equal(sample_pairs([10], labelled_ranges=[(4, 5)]), sample_pairs([10]))


def test_bad_inputs():
    with pytest.raises(ValueError, match="no volumes"):
        sample_pairs([])
    with pytest.raises(ValueError, match="unknown pair mode"):
        sample_pairs([5], mode="cross")
    with pytest.raises(ValueError, match="offsets"):
        sample_pairs([10], offsets=(0, 3))
    with pytest.raises(ValueError, match="offsets"):
        sample_pairs([10], offsets=())
    with pytest.raises(ValueError, match="volume 1 has no slices"):
        sample_pairs([5, 0])
    with pytest.raises(ValueError, match="volume 0 has no slices"):
        sample_pairs([np.array([], dtype=np.int64)])
    with pytest.raises(ValueError, match="integers"):
        sample_pairs([np.array([0.5, 1.0])])
    with pytest.raises(ValueError, match="inter_repeats"):
        sample_pairs([5, 5], inter_repeats=0)
    with pytest.raises(ValueError, match="no intra pairs"):
        sample_pairs([2, 3], mode="intra", offsets=(3,))
