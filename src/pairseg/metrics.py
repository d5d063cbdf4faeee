"""Segmentation accuracy: Dice, ASSD and HD95 per case and class, and summaries over cases.

Definitions (METHOD.md, "Evaluation"):

- Dice of a class in a case: 2|P ∩ R| / (|P| + |R|) over the 3D volume.
- Dice-per-case: mean over cases of those Dice values; Dice-global: the Dice of all cases taken
  together, sum of 2|P ∩ R| over sum of |P| + |R| (the case dicts keep the voxel counts for it).
- ASSD (mm): the border voxels of both surfaces are taken together and the distance of each to
  the other surface is averaged (symmetric, physical units with the voxel spacing). A border voxel
  is a foreground voxel with a 6-neighbour outside the mask (or on the array edge).
- HD95 (mm, optional): max of the two directed 95th-percentile surface distances (MONAI's
  convention).

Surface distances come from MONAI (``monai.metrics.utils.get_edge_surface_distance``, Euclidean
distance transform with spacing); the tests cross-check them against an independent scipy
computation.

Empty masks (no silent NaN anywhere):

- prediction and reference both empty: Dice 1, ASSD 0, HD95 0;
- exactly one empty: Dice 0, ASSD and HD95 ``None`` (``null`` in JSON). Such values are left out
  of the means and counted in ``n_empty``.

Standard deviations are population standard deviations (ddof = 0).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

__all__ = ["dice", "surface_distances", "evaluate_case", "summarize", "format_table"]

Cases = Union[Sequence[Mapping[str, Any]], Mapping[str, Mapping[str, Any]]]


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice of two binary masks; 1.0 when both are empty."""
    p, r = np.asarray(pred, bool), np.asarray(ref, bool)
    size = int(p.sum()) + int(r.sum())
    return 1.0 if size == 0 else 2.0 * int(np.logical_and(p, r).sum()) / size


def surface_distances(
    pred: np.ndarray, ref: np.ndarray, spacing_zyx: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each border voxel of ``pred`` to ``ref``'s border, and back.

    Both masks must be non-empty.
    """
    import torch
    from monai.metrics.utils import get_edge_surface_distance

    pred, ref = np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool)
    # Crop to the union's bounding box plus one voxel: same borders and distances, much less work.
    union = pred | ref
    box = []
    for axis in range(union.ndim):
        hit = np.flatnonzero(np.any(union, axis=tuple(a for a in range(union.ndim) if a != axis)))
        box.append(slice(max(int(hit[0]) - 1, 0), int(hit[-1]) + 2))
    p = torch.as_tensor(np.ascontiguousarray(pred[tuple(box)]))
    r = torch.as_tensor(np.ascontiguousarray(ref[tuple(box)]))
    with warnings.catch_warnings():  # MONAI warns about its own internal use of a deprecated argument
        warnings.simplefilter("ignore", FutureWarning)
        _, distances, _ = get_edge_surface_distance(
            p, r, distance_metric="euclidean", spacing=[float(s) for s in spacing_zyx], symmetric=True, warn_empty=False
        )
    d_pred, d_ref = (np.asarray(d.detach().cpu().numpy(), dtype=np.float64).ravel() for d in distances)
    return d_pred, d_ref


def _json_float(value: float) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"metric value {value} is not finite")
    return value


def evaluate_case(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing_zyx: Sequence[float],
    class_names: Sequence[str],
    hd95: bool = False,
) -> dict[str, Any]:
    """Metrics of one case: label maps ``pred`` and ``ref`` (z, y, x), classes 1..K.

    Returns a JSON-ready dict::

        {"dice": {name: float}, "assd": {name: float | None}, ["hd95": {name: float | None},]
         "intersection": {name: int}, "pred_voxels": {name: int}, "ref_voxels": {name: int},
         "empty": {name: "both" | "pred" | "ref" | None}, "n_empty": int,
         "mean_dice": float, "mean_assd": float | None, ["mean_hd95": ...,] "spacing_zyx": [...]}

    ``n_empty`` counts the classes whose ASSD is undefined (exactly one mask empty); the means
    are over classes and leave undefined values out (``None`` when none is defined).
    """
    pred = np.asarray(pred)
    ref = np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    if len(spacing_zyx) != pred.ndim:
        raise ValueError(f"spacing {tuple(spacing_zyx)} does not match a {pred.ndim}D label map")
    if any(not math.isfinite(float(s)) or float(s) <= 0 for s in spacing_zyx):
        raise ValueError(f"spacing must be positive and finite, got {tuple(spacing_zyx)}")
    names = [str(n) for n in class_names]
    result: dict[str, Any] = {
        "dice": {},
        "assd": {},
        "intersection": {},
        "pred_voxels": {},
        "ref_voxels": {},
        "empty": {},
    }
    if hd95:
        result["hd95"] = {}
    for k, name in enumerate(names, start=1):
        p = pred == k
        r = ref == k
        n_p, n_r = int(p.sum()), int(r.sum())
        inter = int(np.logical_and(p, r).sum())
        result["intersection"][name] = inter
        result["pred_voxels"][name] = n_p
        result["ref_voxels"][name] = n_r
        if n_p == 0 and n_r == 0:
            result["empty"][name] = "both"
            result["dice"][name] = 1.0
            result["assd"][name] = 0.0
            if hd95:
                result["hd95"][name] = 0.0
            continue
        result["dice"][name] = _json_float(2.0 * inter / (n_p + n_r))
        if n_p == 0 or n_r == 0:
            result["empty"][name] = "pred" if n_p == 0 else "ref"
            result["assd"][name] = None
            if hd95:
                result["hd95"][name] = None
            continue
        result["empty"][name] = None
        d_pred, d_ref = surface_distances(p, r, spacing_zyx)
        both = np.concatenate([d_pred, d_ref])
        result["assd"][name] = _json_float(both.mean())
        if hd95:
            result["hd95"][name] = _json_float(max(np.percentile(d_pred, 95), np.percentile(d_ref, 95)))
    result["n_empty"] = sum(1 for v in result["assd"].values() if v is None)
    result["mean_dice"] = _mean(list(result["dice"].values()))
    result["mean_assd"] = _mean(list(result["assd"].values()))
    if hd95:
        result["mean_hd95"] = _mean(list(result["hd95"].values()))
    result["spacing_zyx"] = [float(s) for s in spacing_zyx]
    return result


def _mean(values: Sequence[Optional[float]]) -> Optional[float]:
    kept = [float(v) for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def _std(values: Sequence[Optional[float]]) -> Optional[float]:
    kept = [float(v) for v in values if v is not None]
    return float(np.std(kept)) if kept else None


def _case_list(cases: Cases) -> list[tuple[str, Mapping[str, Any]]]:
    if isinstance(cases, Mapping):
        return [(str(k), v) for k, v in cases.items()]
    return [(str(c.get("case", f"case {i}")), c) for i, c in enumerate(cases)]


def summarize(cases: Cases) -> dict[str, Any]:
    """Summary over cases (a list of :func:`evaluate_case` dicts, or a dict name -> case dict).

    Returns ``{"n_cases", "classes": {name: {dice_mean, dice_std, dice_global, assd_mean,
    assd_std, n_assd, n_empty[, hd95_mean, hd95_std]}}, "mean": {dice_mean, dice_global,
    assd_mean[, hd95_mean]}, "dice": {name: dice_mean}, "mean_dice"}``. ``mean`` is the mean
    over classes (the "all-organ" mean); undefined values are left out and ``None`` when none.
    """
    items = _case_list(cases)
    if not items:
        raise ValueError("summarize needs at least one case")
    names: list[str] = []
    for _, case in items:
        for name in case["dice"]:
            if name not in names:
                names.append(name)
    with_hd95 = all("hd95" in case for _, case in items)
    classes: dict[str, dict[str, Any]] = {}
    for name in names:
        rows = [case for _, case in items if name in case["dice"]]
        dices = [case["dice"][name] for case in rows]
        assds = [case["assd"][name] for case in rows]
        inter = sum(int(case["intersection"][name]) for case in rows)
        size = sum(int(case["pred_voxels"][name]) + int(case["ref_voxels"][name]) for case in rows)
        entry: dict[str, Any] = {
            "n_cases": len(rows),
            "dice_mean": _mean(dices),
            "dice_std": _std(dices),
            "dice_global": 1.0 if size == 0 else 2.0 * inter / size,
            "assd_mean": _mean(assds),
            "assd_std": _std(assds),
            "n_assd": sum(1 for v in assds if v is not None),
            "n_empty": sum(1 for v in assds if v is None),
        }
        if with_hd95:
            hds = [case["hd95"][name] for case in rows]
            entry["hd95_mean"] = _mean(hds)
            entry["hd95_std"] = _std(hds)
        classes[name] = entry
    mean: dict[str, Optional[float]] = {
        key: _mean([classes[n][key] for n in names])
        for key in ("dice_mean", "dice_global", "assd_mean") + (("hd95_mean",) if with_hd95 else ())
    }
    return {
        "n_cases": len(items),
        "classes": classes,
        "mean": mean,
        "dice": {n: classes[n]["dice_mean"] for n in names},
        "mean_dice": mean["dice_mean"],
    }


def _fmt(value: Optional[float], scale: float = 1.0, digits: int = 2) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def format_table(summary: Mapping[str, Any], cases: Optional[Cases] = None) -> str:
    """A readable plain-text table: one row per case (if given), then per-class summary rows.

    Dice in percent, ASSD / HD95 in mm; "-" marks an undefined value (one mask empty).
    """
    names = list(summary["classes"])
    width = max([12] + [len(n) for n in names]) + 2
    lines: list[str] = []
    if cases is not None:
        items = _case_list(cases)
        case_w = max([8] + [len(c) for c, _ in items]) + 2
        lines.append("Dice (%) / ASSD (mm) per case")
        lines.append("case".ljust(case_w) + "".join(n.rjust(width) for n in names) + "mean".rjust(width))
        for case_name, case in items:
            cells = [
                f"{_fmt(case['dice'].get(n), 100)}/{_fmt(case['assd'].get(n))}" if n in case["dice"] else "n/a"
                for n in names
            ]
            mean_cell = f"{_fmt(case.get('mean_dice'), 100)}/{_fmt(case.get('mean_assd'))}"
            lines.append(case_name.ljust(case_w) + "".join(c.rjust(width) for c in cells) + mean_cell.rjust(width))
        lines.append("")
    has_hd = "hd95_mean" in summary["mean"]
    header = ["Dice/case (%)", "± std", "Dice global", "ASSD (mm)", "± std", "n empty"]
    header += ["HD95 (mm)"] if has_hd else []
    col_w = max(len(h) for h in header) + 2
    label_w = max([8] + [len(n) for n in names]) + 2
    lines.append(f"Summary over {summary['n_cases']} case(s)")
    lines.append("class".ljust(label_w) + "".join(h.rjust(col_w) for h in header))
    for n in names:
        c = summary["classes"][n]
        row = [
            _fmt(c["dice_mean"], 100),
            _fmt(c["dice_std"], 100),
            _fmt(c["dice_global"], 100),
            _fmt(c["assd_mean"]),
            _fmt(c["assd_std"]),
            str(c["n_empty"]),
        ] + ([_fmt(c.get("hd95_mean"))] if has_hd else [])
        lines.append(n.ljust(label_w) + "".join(v.rjust(col_w) for v in row))
    m = summary["mean"]
    row = [_fmt(m["dice_mean"], 100), "", _fmt(m["dice_global"], 100), _fmt(m["assd_mean"]), "", ""]
    row += [_fmt(m.get("hd95_mean"))] if has_hd else []
    lines.append("mean".ljust(label_w) + "".join(v.rjust(col_w) for v in row))
    return "\n".join(lines)
