"""Where to look first (issue 22.4): how well the uncertainty map of ``pairseg segment
--uncertainty`` ranks a model's own errors on cases it never saw.

For each case: the model's segmentation (largest component, as ``pairseg segment``) and its
uncertainty maps (``MAPS``: the engine's summed binary entropy, and the largest per-class entropy
as the alternative) against the expert label. Reported per case: the share of the wrong voxels
held by the top 10 % most uncertain voxels inside a 10 mm band around the reference and the
predicted organs (and in the whole volume), the AUROC in that band, and the share of the wrong voxels in the 5 slices that ``rank_slices`` puts first.

    .venv/bin/python benchmarks/uncertainty.py --model chaos-mr-t2-c2fcn --cases case_002
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from pairseg.uncertainty import _entropy_bits, rank_slices, uncertainty_map  # noqa: E402

BAND_MM = 10.0

MAPS = {"entropy_sum": uncertainty_map,
        "entropy_max": lambda probabilities: _entropy_bits(probabilities).max(axis=1)}


def organ_band(ref: np.ndarray, pred: np.ndarray, spacing_zyx) -> np.ndarray:
    """Voxels within ``BAND_MM`` of a reference or predicted organ voxel."""
    from scipy.ndimage import distance_transform_edt

    return distance_transform_edt((ref == 0) & (pred == 0), sampling=spacing_zyx) <= BAND_MM


def error_ranking(uncertainty: np.ndarray, errors: np.ndarray, band: np.ndarray) -> dict:
    """How well ``uncertainty`` (Z, Y, X) ranks the wrong voxels ``errors`` (bool): the share of
    errors in its top 10 % voxels (inside ``band`` and in the whole volume), the AUROC in the
    band, and the share of errors in the 5 slices ``rank_slices`` puts first."""
    out = {}
    for name, region in (("band", band), ("volume", np.ones_like(band))):
        values, wrong = uncertainty[region], errors[region]
        top = np.argsort(values)[::-1][: max(1, int(0.1 * values.size))]
        out[f"top10_error_share_{name}"] = float(wrong[top].sum() / max(int(wrong.sum()), 1))
    wrong, right = uncertainty[band & errors], uncertainty[band & ~errors]
    if wrong.size and right.size:  # AUROC = Mann-Whitney U / (n_wrong x n_right)
        from scipy.stats import mannwhitneyu

        statistic = mannwhitneyu(wrong, right, alternative="two-sided").statistic
        out["auroc_band"] = float(statistic / (wrong.size * right.size))
    else:
        out["auroc_band"] = None
    slices = [r["slice"] for r in rank_slices(uncertainty)]
    out["top5_slices_error_share"] = float(errors[slices].sum() / max(int(errors.sum()), 1))
    out["top5_slices"] = slices
    out["errors"] = int(errors.sum())
    return out


def rank_errors(probabilities: np.ndarray, pred: np.ndarray, ref: np.ndarray, spacing_zyx) -> dict:
    """``error_ranking`` of every map in ``MAPS`` for one case."""
    errors, band = pred != ref, organ_band(ref, pred, spacing_zyx)
    return {name: error_ranking(rule(probabilities), errors, band) for name, rule in MAPS.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="chaos-mr-t2-c2fcn", help="model file or catalog name")
    parser.add_argument("--cases", default="case_002", help="comma-separated cases the model never saw")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "uncertainty.json")
    args = parser.parse_args()
    from common import chaos_dir
    from pairseg.datasets import load_case, load_dataset
    from pairseg.infer import Predictor

    predictor = Predictor(args.model, "cpu", precision=args.precision)
    dataset = load_dataset(chaos_dir())
    seen = set(predictor.metadata.get("training", {}).get("seen_cases", []))
    result = {"model": args.model, "precision": args.precision, "band_mm": BAND_MM, "cases": {}}
    for case in dataset.cases:
        if case.name not in args.cases.split(","):
            continue
        if case.name in seen:
            raise SystemExit(f"{case.name}: the model was trained on it")
        volume, label = load_case(case, dataset)
        prediction = predictor.segment(volume, keep_probabilities=True)
        spacing_zyx = tuple(float(s) for s in reversed(volume.spacing))
        row = rank_errors(prediction.probabilities, prediction.labels.array, label, spacing_zyx)
        result["cases"][case.name] = row
        print(case.name, json.dumps({k: {m: v[m] for m in ("top10_error_share_band", "auroc_band",
                                                          "top5_slices_error_share")} for k, v in row.items()}))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
