"""PairSegTrainer: proxy-map nodes equal numpy AND/XOR of the same slices, in slice A's geometry,
shown in the slice views with the fixed colours; pair picking at the configured offsets."""

import numpy as np
import pytest

from test_pairsegtrainer_helpers import (CHAOS_CLASSES, addSegmentation, addVolume, ijkToRas,  # noqa: F401
                                         loadChaosCase, obliqueDirections, trainerLib, trainerLogic)


def _volumes(scene):
    rng = np.random.default_rng(7)
    shape = (20, 32, 28)
    labelsA = np.zeros(shape, np.uint8)
    labelsA[3:16, 5:20, 4:15] = 1
    labelsA[6:14, 15:28, 12:25] = 2
    labelsB = np.zeros(shape, np.uint8)
    labelsB[5:18, 8:24, 2:13] = 1
    labelsB[4:12, 18:30, 14:27] = 2
    volumeA = addVolume(scene, rng.random(shape).astype(np.float32), "A", (0.9, 0.9, 3.0), (5, 6, 7), obliqueDirections())
    volumeB = addVolume(scene, rng.random(shape).astype(np.float32), "B", (1.1, 1.1, 2.0))
    segA = addSegmentation(scene, volumeA, labelsA, {1: "liver", 2: "spleen"})
    segB = addSegmentation(scene, volumeB, labelsB, {2: "Spleen", 1: "Liver"})
    return volumeA, segA, labelsA, volumeB, segB, labelsB


def test_proxy_nodes_equal_numpy_and_xor(trainerLogic, mrml_scene):
    import slicer

    volumeA, segA, labelsA, volumeB, segB, labelsB = _volumes(mrml_scene)
    from PairSegTrainerLib import proxymapnodes as proxymaps

    for (vB, sB, lB, sliceB) in ((volumeA, segA, labelsA, 12), (volumeB, segB, labelsB, 9)):
        result = trainerLogic.proxyMaps(volumeA, 8, segA, vB, sliceB, sB)
        a, b = labelsA[8], lB[sliceB]
        expectedAnd = np.zeros_like(a, bool)
        expectedXor = np.zeros_like(a, bool)
        for k in (1, 2):
            expectedAnd |= (a == k) & (b == k)
            expectedXor |= (a == k) ^ (b == k)
        andArray = slicer.util.arrayFromVolume(result.andNode)
        xorArray = slicer.util.arrayFromVolume(result.xorNode)
        overlay = slicer.util.arrayFromVolume(result.overlayNode)
        assert andArray.shape == (1,) + a.shape
        np.testing.assert_array_equal(andArray[0] > 0, expectedAnd)
        np.testing.assert_array_equal(xorArray[0] > 0, expectedXor)
        np.testing.assert_array_equal(overlay[0], np.where(expectedAnd, 1, np.where(expectedXor, 2, 0)))
        np.testing.assert_array_equal(result.andClasses, np.where(expectedAnd, a, 0))
        # engine target layout (K = 2): [AND_1, AND_2, XOR_1, XOR_2]
        targets = result.targets
        assert targets.shape == (4,) + a.shape
        np.testing.assert_array_equal(targets[1], ((a == 2) & (b == 2)).astype(np.float32))
        np.testing.assert_array_equal(targets[2], ((a == 1) ^ (b == 1)).astype(np.float32))
        # geometry: slice A of volume A
        expected = ijkToRas(volumeA)
        expected[:3, 3] += 8 * expected[:3, 2]
        np.testing.assert_allclose(ijkToRas(result.overlayNode), expected, atol=1e-9)
        # fixed colours: AND blue, XOR red
        colors = result.overlayNode.GetDisplayNode().GetColorNode()
        rgba = [0.0] * 4
        colors.GetColor(1, rgba)
        assert rgba[2] > 0.9 and rgba[0] < 0.3
        colors.GetColor(2, rgba)
        assert rgba[0] > 0.9 and rgba[2] < 0.3
    # the engine's own g_proxy agrees (when the engine is importable)
    proxy = pytest.importorskip("pairseg.proxy")
    np.testing.assert_array_equal(proxy.proxy_targets(labelsA[8], labelsB[9], 2), targets)
    # shown in the slice views: composite nodes point at volume A and the overlay
    composite = mrml_scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    proxymaps.showInSliceViews(mrml_scene, volumeA, result.overlayNode)
    assert composite.GetBackgroundVolumeID() == volumeA.GetID()
    assert composite.GetLabelVolumeID() == result.overlayNode.GetID()


def test_proxy_single_class_and_errors(trainerLogic, mrml_scene):
    volumeA, segA, labelsA, volumeB, segB, labelsB = _volumes(mrml_scene)
    result = trainerLogic.proxyMaps(volumeA, 10, segA, volumeA, 13, segA, classNames=["liver"], mapping={"spleen": ""})
    assert result.targets.shape == (3,) + labelsA.shape[1:]  # K == 1: [both background, AND, XOR]
    a, b = (labelsA[10] == 1), (labelsA[13] == 1)
    np.testing.assert_array_equal(result.targets[1], (a & b).astype(np.float32))
    np.testing.assert_array_equal(result.targets[2], (a ^ b).astype(np.float32))
    with pytest.raises(ValueError, match="outside"):
        trainerLogic.proxyMaps(volumeA, 99, segA, volumeA, 3, segA)
    with pytest.raises(trainerLib().TrainingSetError, match="match no class"):
        trainerLogic.proxyMaps(volumeA, 10, segA, volumeA, 12, segA, classNames=["liver"])


def test_pick_pairs(trainerLogic, mrml_scene):
    volumeA, segA, labelsA, volumeB, segB, labelsB = _volumes(mrml_scene)
    labelled = np.flatnonzero(labelsA.reshape(labelsA.shape[0], -1).any(axis=1))
    for seed in range(8):
        sliceA, sliceB = trainerLogic.pickProxyPair(volumeA, segA, mode="intra", offsets="3,5,7", seed=seed)
        assert abs(sliceA - sliceB) in (3, 5, 7)
        assert sliceA in labelled and sliceB in labelled
    assert trainerLogic.pickProxyPair(volumeA, segA, seed=3) == trainerLogic.pickProxyPair(volumeA, segA, seed=3)
    sliceA, sliceB = trainerLogic.pickProxyPair(volumeA, segA, volumeB, segB, mode="inter", seed=1)
    assert 3 <= sliceA <= 15 and 4 <= sliceB <= 17
    # default offsets: the modality's, as the engine's pairs.default_offsets
    ctPairs = {trainerLogic.pickProxyPair(volumeA, segA, modality="CT", seed=seed) for seed in range(40)}
    assert {b - a for a, b in ctPairs} == {5, 9}   # 13 does not fit in slices 3-15
    with pytest.raises(ValueError, match="second volume|volume B"):
        trainerLogic.pickProxyPair(volumeA, segA, mode="inter")
    from PairSegTrainerLib.proxymapnodes import choosePair

    with pytest.raises(ValueError, match=r"slices 4-10 of volume A: no intra pairs.*offset 13"):
        choosePair([4, 5, 6, 7, 8, 9, 10], mode="intra", offsets=(13,), seed=0)
    with pytest.raises(ValueError, match="volume A has no labelled slice"):
        choosePair([], mode="intra")
    with pytest.raises(ValueError, match="volume B has no labelled slice"):
        choosePair([4, 5], mode="inter", labelledB=[])
    with pytest.raises(ValueError, match="unknown pair mode 'sideways'"):
        choosePair([4, 5], mode="sideways")


@pytest.mark.parametrize("mode", ["intra", "inter", "intra+inter", "identical"])
def test_picked_pairs_are_the_training_samplers(mode):
    """choosePair gives exactly the pairs of volume A that the engine's sampler (pairseg.pairs,
    margin 0 around the labelled ranges) makes: intra pairs forward at an offset, inter pairs
    with ANY slice of B's range (not one fixed by slice A's height), never other pairs."""
    from pairseg.pairs import sample_pairs

    choosePair = trainerLib().proxymapnodes.choosePair

    labelledA, labelledB = [4, 6, 9, 10, 13, 14], [20, 22, 31]   # ranges 4-14 and 20-31
    offsets = (3, 5, 7)
    engineRows = np.concatenate([sample_pairs([np.arange(4, 15), np.arange(20, 32)], mode=mode, offsets=offsets,
                                              inter_repeats=1, seed=seed) for seed in range(200)])
    expected = {(int(a), int(b)) for v, a, _, b in engineRows if v == 0}
    picked = {choosePair(labelledA, mode=mode, offsets=offsets, labelledB=labelledB, seed=seed) for seed in range(1000)}
    assert picked <= expected
    assert len(picked) > 0.8 * len(expected)
    if mode in ("inter", "intra+inter"):
        partners = {b for a, b in picked if a == 9 and b >= 20}
        assert len(partners) > 3   # slice 9 meets several slices of B
    assert choosePair(labelledA, mode=mode, labelledB=labelledB, seed=5) == \
        choosePair(labelledA, mode=mode, labelledB=labelledB, seed=5)


@pytest.mark.chaos
def test_proxy_maps_on_chaos_intra_pair(trainerLogic, mrml_scene, harness, chaos_dir):
    import slicer

    volume, segmentation, labels = loadChaosCase(harness, mrml_scene, chaos_dir, "002")
    sliceA, sliceB = trainerLogic.pickProxyPair(volume, segmentation, mode="intra", classNames=CHAOS_CLASSES, seed=0)
    result = trainerLogic.proxyMaps(volume, sliceA, segmentation, volume, sliceB, segmentation, classNames=CHAOS_CLASSES)
    a, b = labels[sliceA], labels[sliceB]
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(result.andNode)[0] > 0, (a == b) & (a > 0))
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(result.xorNode)[0] > 0, (a != b) & ((a > 0) | (b > 0)))
    assert result.targets.shape == (8, 256, 256)


def test_predicted_overlay_is_transparent_where_probability_is_zero(trainerLogic, mrml_scene):
    """Issue 19 item 10: the predicted AND/XOR overlay is a lookup table with opacity, thresholded,
    never black and opaque where the model predicts nothing."""
    import slicer

    proxymaps = trainerLib().proxymapnodes
    volumeA = _volumes(mrml_scene)[0]
    pAnd = np.zeros((32, 28), np.float32)
    pXor = np.zeros((32, 28), np.float32)
    pAnd[5:10, 5:10] = 1.0
    pAnd[12:14, 3:6] = 0.5
    pXor[20:25, 10:20] = 0.8
    node = proxymaps.addPredictedOverlay(mrml_scene, "Proxy predicted test", volumeA, 4, pAnd, pXor)
    values = slicer.util.arrayFromVolume(node)[0]
    display = node.GetDisplayNode()
    table = display.GetColorNode()
    assert table.GetName() == proxymaps.PREDICTED_COLOR_TABLE_NAME and table.GetNumberOfColors() == 256
    lookup = table.GetLookupTable()
    assert values[0, 0] == 0 and lookup.GetTableValue(0)[3] == 0.0  # nothing predicted: transparent
    assert display.GetApplyThreshold() and display.GetLowerThreshold() == 1.0
    assert (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == (0.0, 255.0)
    assert not display.GetInterpolate()
    andEntry = lookup.GetTableValue(int(values[7, 7]))
    assert values[7, 7] == 127 and andEntry[3] == 1.0 and andEntry[2] > andEntry[0]  # AND 1.0: opaque blue
    assert values[13, 4] == 64 and 0.45 < lookup.GetTableValue(64)[3] < 0.55           # half as opaque
    xorEntry = lookup.GetTableValue(int(values[22, 15]))
    assert values[22, 15] == 128 + 102 and xorEntry[0] > xorEntry[2] and 0.75 < xorEntry[3] < 0.85  # red
    # one table per scene
    again = proxymaps.addPredictedOverlay(mrml_scene, "again", volumeA, 4, pAnd, pXor)
    assert again.GetDisplayNode().GetColorNode() is table
