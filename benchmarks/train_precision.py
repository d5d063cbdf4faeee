"""CPU training speed and Dice cost of `pairseg train --precision bf16 --channels-last` (issue 12,
item 2) on the one-case CHAOS runs: C2FCN trained on case_002, case_015 and case_031 alone
(250 steps, 128 px at 2.5 mm, batch 8, seed 0, the engine's default augmentation), once in fp32
and once with bfloat16 autocast + channels-last, the two precisions alternating so that the
machine's load hits both alike; 4-organ Dice (largest component) on held-out test cases.

    .venv/bin/python benchmarks/train_precision.py --threads 2 --out benchmarks/results/train_precision.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import chaos_dir, machine_facts, make_config, train_with_milestones, write_json  # noqa: E402
from recipe import load_cases, score  # noqa: E402

from pairseg.data import SliceStore  # noqa: E402

TRAIN = ["case_002", "case_015", "case_031"]
TEST = ["case_003", "case_010", "case_019", "case_022", "case_032", "case_036"]
VARIANTS = {"fp32": ("fp32", False), "bf16+channels_last": ("bf16", True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cases", default=",".join(TRAIN), help="training cases, comma-separated (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "train_precision.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train_cases = [c for c in args.cases.split(",") if c]
    unknown = sorted(set(train_cases) - set(TRAIN))
    if unknown:
        parser.error(f"--cases: not a one-case training case of this benchmark: {', '.join(unknown)}")
    chaos_dir()
    cases, class_names = load_cases(None, train_cases + TEST)
    spacing = 320.0 / args.size  # the CHAOS field of view (256 px of 1.25 mm) fills the training size
    result = {"steps": args.steps, "size": args.size, "spacing_mm": spacing, "train_cases": train_cases, "test_cases": TEST,
              "machine": machine_facts(), "runs": []}
    for case in train_cases:
        store = SliceStore.from_volumes([cases[case][0]], [cases[case][1]], "MR", args.size, [case],
                                        model_spacing=spacing, mr_rule="above-minimum")
        for name, (precision, channels_last) in VARIANTS.items():
            config = make_config("c2fcn", args.size, 8, seed=0, output_stride=16)
            config.precision, config.channels_last = precision, channels_last
            scores = {}

            def evaluate(model, step, epochs, loss):
                scores["eval"] = score(model, cases, TEST, class_names, spacing, args.size, torch.device("cpu"),
                                       assd=False)["1.0"]

            load = os.getloadavg()[0]
            info = train_with_milestones(store, "c2fcn", config, "MR", len(class_names), [args.steps], evaluate,
                                         log_every=0)
            run = {"train_case": case, "variant": name, "seconds_per_step": info["train_seconds_total"] / args.steps,
                   "loadavg_before": load, "loadavg_after": os.getloadavg()[0], "dice": scores["eval"]["dice"],
                   "mean_dice": scores["eval"]["mean_dice"], "final_loss": info["loss_curve"][-1]}
            result["runs"].append(run)
            print(f"{case} {name}: {run['seconds_per_step']:.3f} s/step, Dice {100 * run['mean_dice']:.1f}", flush=True)
            write_json(args.out, result)
    result["finished_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write_json(args.out, result)


if __name__ == "__main__":
    main()
