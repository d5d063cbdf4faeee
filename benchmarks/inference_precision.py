"""Inference precision (issue 22.2): does bfloat16 autocast move the shipped model's Dice, and
how much faster is it on this CPU?

Each case is segmented twice by the same model in one process, fp32 then bf16 (``pairseg segment
--precision``), largest component as ``pairseg segment``. Reported per case: per-organ Dice of each
precision against the expert label, the Dice between the two label maps (how much bf16 changes the
result at all), and the seconds of each run (the network's work, reading excluded; the first case
is run once before timing, so no precision pays the warm-up).

Which cases count as held out is read from the model (``training.seen_cases``): for the shipped
model only case_002 is; the other cases show the size of the *change* bf16 makes, not accuracy.

    .venv/bin/python benchmarks/inference_precision.py --model chaos-mr-t2-c2fcn
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

PRECISIONS = ("fp32", "bf16")


def agreement(a: np.ndarray, b: np.ndarray, num_classes: int) -> float:
    """Mean over classes 1..K of the Dice between two label maps (1.0 where both lack a class)."""
    from pairseg.metrics import dice

    return float(np.mean([dice(a == k, b == k) for k in range(1, num_classes + 1)]))


def run_case(predictors: dict, volume, label, classes) -> dict:
    from pairseg.metrics import evaluate_case

    spacing_zyx = tuple(float(s) for s in reversed(volume.spacing))
    row, labels = {}, {}
    for precision, predictor in predictors.items():
        start = time.perf_counter()
        labels[precision] = predictor.segment(volume).labels.array
        seconds = time.perf_counter() - start
        scores = evaluate_case(labels[precision], label, spacing_zyx, classes)
        row[precision] = {"dice": scores["dice"], "mean_dice": scores["mean_dice"], "seconds": seconds}
    row["agreement_dice"] = agreement(labels["fp32"], labels["bf16"], len(classes))
    return row


def summary(rows: dict, cases: list[str]) -> dict:
    if not cases:
        return {}
    out = {}
    for precision in PRECISIONS:
        means = [rows[c][precision]["mean_dice"] for c in cases]
        out[precision] = {"mean_dice": float(np.mean(means)),
                          "seconds": float(np.mean([rows[c][precision]["seconds"] for c in cases]))}
    out["mean_dice_change"] = out["bf16"]["mean_dice"] - out["fp32"]["mean_dice"]
    out["largest_case_change"] = float(max(abs(rows[c]["bf16"]["mean_dice"] - rows[c]["fp32"]["mean_dice"])
                                           for c in cases))
    out["agreement_dice"] = float(np.mean([rows[c]["agreement_dice"] for c in cases]))
    out["speed_up"] = out["fp32"]["seconds"] / out["bf16"]["seconds"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="chaos-mr-t2-c2fcn", help="model file or catalog name")
    parser.add_argument("--cases", default="", help="comma-separated cases (default: all)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "inference_precision.json")
    args = parser.parse_args()
    import torch

    from common import chaos_dir
    from pairseg.data import load_case, load_dataset
    from pairseg.infer import Predictor

    predictors = {p: Predictor(args.model, "cpu", precision=p) for p in PRECISIONS}
    metadata = predictors["fp32"].metadata
    classes = list(metadata["class_names"])
    seen = set(metadata.get("training", {}).get("seen_cases", []))
    dataset = load_dataset(chaos_dir())
    wanted = [c for c in args.cases.split(",") if c]
    rows, warmed = {}, False
    for case in dataset.cases:
        if wanted and case.name not in wanted:
            continue
        volume, label = load_case(case, dataset)
        if not warmed:
            for predictor in predictors.values():
                predictor.segment(volume)
            warmed = True
        rows[case.name] = run_case(predictors, volume, label, classes)
        r = rows[case.name]
        print(f"{case.name}{' (seen)' if case.name in seen else ''}: fp32 {100 * r['fp32']['mean_dice']:.2f} "
              f"{r['fp32']['seconds']:.1f} s, bf16 {100 * r['bf16']['mean_dice']:.2f} {r['bf16']['seconds']:.1f} s, "
              f"agreement {100 * r['agreement_dice']:.2f}", flush=True)
    result = {"model": args.model, "threads": torch.get_num_threads(), "cases": rows,
              "held_out": summary(rows, [c for c in rows if c not in seen]),
              "all": summary(rows, list(rows))}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({"held_out": result["held_out"], "all": result["all"]}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
