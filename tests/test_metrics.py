"""Tests of pairseg.metrics, cross-checked against an independent scipy computation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import ndimage

from pairseg.metrics import dice, evaluate_case, format_table, summarize


def _reference_distances(a: np.ndarray, b: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    """Independent surface distances: 6-connected borders and exact EDT with spacing."""
    cross = ndimage.generate_binary_structure(a.ndim, 1)

    def border(m):
        return m & ~ndimage.binary_erosion(m, structure=cross, border_value=0)

    ba, bb = border(a), border(b)
    to_b = ndimage.distance_transform_edt(~bb, sampling=spacing)
    to_a = ndimage.distance_transform_edt(~ba, sampling=spacing)
    return to_b[ba], to_a[bb]


def _sphere(shape, center, radius_mm, spacing):
    grids = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    return sum((g - c * s) ** 2 for g, c, s in zip(grids, center, spacing)) <= radius_mm**2


SPACING = (4.0, 1.2, 0.8)  # z, y, x (mm)


def test_assd_and_hd95_match_independent_computation():
    shape = (20, 50, 90)
    ref = _sphere(shape, (10, 25, 30), 18.0, SPACING)
    pred = _sphere(shape, (11, 27, 34), 16.0, SPACING)
    box = np.zeros(shape, bool)
    box[3:9, 10:20, 62:85] = True
    box_shift = np.zeros(shape, bool)
    box_shift[4:10, 12:20, 64:82] = True
    pred_l = pred.astype(np.uint8) + 2 * box_shift
    ref_l = ref.astype(np.uint8) + 2 * box
    assert not np.any((pred & box_shift) | (ref & box))  # classes do not overlap
    case = evaluate_case(pred_l, ref_l, SPACING, ["sphere", "box"], hd95=True)
    for name, (p, r) in {"sphere": (pred, ref), "box": (box_shift, box)}.items():
        d_pr, d_rp = _reference_distances(p, r, SPACING)
        both = np.concatenate([d_pr, d_rp])
        assert case["assd"][name] == pytest.approx(both.mean(), rel=1e-5)
        hd = max(np.percentile(d_pr, 95), np.percentile(d_rp, 95))
        assert case["hd95"][name] == pytest.approx(hd, rel=1e-5)
        assert case["dice"][name] == pytest.approx(2 * (p & r).sum() / (p.sum() + r.sum()))
        assert case["assd"][name] > 0.5  # spacing matters: a clear, non-trivial distance
    # Same masks with isotropic unit spacing give a different (voxel-unit) ASSD.
    iso = evaluate_case(pred_l, ref_l, (1.0, 1.0, 1.0), ["sphere", "box"])
    assert iso["assd"]["sphere"] != pytest.approx(case["assd"]["sphere"], rel=1e-2)


def test_parallel_planes_hand_computed():
    shape = (10, 6, 7)
    pred = np.zeros(shape, np.uint8)
    ref = np.zeros(shape, np.uint8)
    pred[2] = 1
    ref[5] = 1
    case = evaluate_case(pred, ref, (2.5, 1.0, 0.7), ["plane"], hd95=True)
    assert case["assd"]["plane"] == pytest.approx(7.5)  # 3 slices x 2.5 mm, for every border voxel
    assert case["hd95"]["plane"] == pytest.approx(7.5)
    assert case["dice"]["plane"] == 0.0
    # Two one-voxel-thick slabs one slice apart, and overlapping cubes: hand-counted Dice.
    a = np.zeros((4, 4, 4), np.uint8)
    b = np.zeros((4, 4, 4), np.uint8)
    a[0:2, 0:2, 0:2] = 1  # 8 voxels
    b[1:3, 0:2, 0:2] = 1  # 8 voxels, 4 shared
    c = evaluate_case(a, b, (3.0, 1.0, 1.0), ["cube"])
    assert c["dice"]["cube"] == pytest.approx(0.5)
    assert c["intersection"]["cube"] == 4 and c["pred_voxels"]["cube"] == 8 and c["ref_voxels"]["cube"] == 8
    # All voxels are border voxels; half lie on the other's surface, half one slice (3 mm) away.
    assert c["assd"]["cube"] == pytest.approx(1.5)


def test_empty_conventions_and_json():
    ref = np.zeros((5, 8, 8), np.uint8)
    pred = np.zeros_like(ref)
    ref[1:3, 2:5, 2:5] = 1
    pred[1:3, 2:5, 2:5] = 1
    pred[4, 0, 0] = 2  # class 2 predicted, absent from the reference
    ref[0, 7, 7] = 3  # class 3 in the reference, missed
    case = evaluate_case(pred, ref, (2.0, 1.0, 1.0), ["a", "b", "c", "d"], hd95=True)
    assert case["dice"] == {"a": 1.0, "b": 0.0, "c": 0.0, "d": 1.0}
    assert case["assd"] == {"a": 0.0, "b": None, "c": None, "d": 0.0}
    assert case["hd95"]["b"] is None and case["hd95"]["d"] == 0.0
    assert case["empty"] == {"a": None, "b": "ref", "c": "pred", "d": "both"}
    assert case["n_empty"] == 2
    assert case["mean_dice"] == pytest.approx(0.5)
    assert case["mean_assd"] == 0.0  # None values left out of the mean
    text = json.dumps(case, allow_nan=False)  # no NaN anywhere
    assert json.loads(text)["assd"]["b"] is None


def test_summarize_dice_global_and_means():
    rng = np.random.default_rng(0)
    names = ["liver", "spleen"]
    preds, refs, cases = [], [], []
    for i in range(3):
        ref = np.zeros((6, 12, 12), np.uint8)
        ref[1:5, 2:9, 2:9] = 1
        ref[2:4, 9:11, 9:12] = 2
        pred = ref.copy()
        flip = rng.random(ref.shape) < 0.08 * (i + 1)
        pred[flip] = rng.integers(0, 3, int(flip.sum()))
        if i == 2:
            pred[pred == 2] = 0  # spleen missed entirely: ASSD undefined
        preds.append(pred)
        refs.append(ref)
        case = evaluate_case(pred, ref, (3.0, 1.0, 1.0), names)
        case["case"] = f"case_{i}"
        cases.append(case)
    summary = summarize(cases)
    assert summary["n_cases"] == 3
    big_p, big_r = np.concatenate(preds), np.concatenate(refs)
    for k, name in enumerate(names, start=1):
        entry = summary["classes"][name]
        assert entry["dice_global"] == pytest.approx(dice(big_p == k, big_r == k))
        per_case = [c["dice"][name] for c in cases]
        assert entry["dice_mean"] == pytest.approx(np.mean(per_case))
        assert entry["dice_std"] == pytest.approx(np.std(per_case))
    spleen = summary["classes"]["spleen"]
    assert spleen["n_empty"] == 1 and spleen["n_assd"] == 2
    assert spleen["assd_mean"] == pytest.approx(np.mean([cases[0]["assd"]["spleen"], cases[1]["assd"]["spleen"]]))
    mean = summary["mean"]
    assert mean["dice_mean"] == pytest.approx(np.mean([summary["classes"][n]["dice_mean"] for n in names]))
    assert mean["assd_mean"] == pytest.approx(np.mean([summary["classes"][n]["assd_mean"] for n in names]))
    assert summary["mean_dice"] == mean["dice_mean"]
    json.dumps(summary, allow_nan=False)
    # A mapping of cases works too, and the table names cases, classes and undefined values.
    by_name = {c["case"]: c for c in cases}
    assert summarize(by_name)["classes"] == summary["classes"]
    table = format_table(summary, by_name)
    for word in ["case_0", "case_2", "liver", "spleen", "mean", "Dice global", "ASSD"]:
        assert word in table
    assert "/-" in table  # the missed spleen's ASSD
    assert "liver" in format_table(summary)


def test_summary_without_any_distance():
    pred = np.zeros((3, 4, 4), np.uint8)
    ref = np.zeros_like(pred)
    ref[1, 1, 1] = 1
    summary = summarize([evaluate_case(pred, ref, (1.0, 1.0, 1.0), ["x"], hd95=True)])
    assert summary["classes"]["x"]["assd_mean"] is None
    assert summary["mean"]["assd_mean"] is None and summary["mean"]["hd95_mean"] is None
    assert summary["classes"]["x"]["dice_global"] == 0.0
    assert "-" in format_table(summary)


def test_input_checks():
    a = np.zeros((3, 4, 4), np.uint8)
    with pytest.raises(ValueError, match="shape"):
        evaluate_case(a, np.zeros((3, 4, 5), np.uint8), (1, 1, 1), ["x"])
    with pytest.raises(ValueError, match="spacing"):
        evaluate_case(a, a, (1, 1), ["x"])
    with pytest.raises(ValueError, match="spacing"):
        evaluate_case(a, a, (1, math.nan, 1), ["x"])
    with pytest.raises(ValueError):
        summarize([])
