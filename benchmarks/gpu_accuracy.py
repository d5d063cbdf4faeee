"""Accuracy, GPU profile (issue 7, part 2): the paper's training setting on one GPU.

256x256 input, Adam lr 1e-4, weight decay 5e-4, batch 20, AMP (bf16 where supported, else fp16),
DeepLabv3+ (ResNet-18, output stride 8) and C2FCN on it, on CHAOS MR T2-SPIR:

- 4-fold cross-validation over the 16 cases (folds fixed by dataset order: cases i with i % 4 == f
  are fold f's test set), C2FCN and DeepLabv3+ trained with the same steps;
- the one-case regime: train on one case (three fixed choices), test on the other 15.

Budget: ``--cv-steps`` and ``--one-steps`` are sized so that the 8 + 6 trainings and their
evaluations take about 10 minutes on one H100-class GPU (an estimate from FLOPs: it has not been
run on a GPU yet). ``--time-limit`` stops starting new jobs once that many seconds have passed;
results are written after every job to ``results/gpu_accuracy.json`` with the GPU's name.

    .venv/bin/python benchmarks/gpu_accuracy.py                 # on a CUDA machine
    .venv/bin/python benchmarks/gpu_accuracy.py --dry-run       # CPU, tiny: checks the plumbing
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH, WORK, Cases, chaos_dir, evaluate_model, machine_facts, make_config, train_with_milestones, write_json  # noqa: E402,E501

ONE_CASE = ["case_002", "case_015", "case_031"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--cv-steps", type=int, default=1500, help="steps per cross-validation training")
    parser.add_argument("--one-steps", type=int, default=1000, help="steps per one-case training")
    parser.add_argument("--output-stride", type=int, default=8, choices=[8, 16])
    parser.add_argument("--methods", default="c2fcn,deeplabv3plus")
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--time-limit", type=float, default=660.0, help="start no new job after this many seconds")
    parser.add_argument("--out", default=str(BENCH / "results" / "gpu_accuracy.json"))
    parser.add_argument("--dry-run", action="store_true", help="CPU, 64x64, 3 steps, 2 folds, 2 test cases")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.dry_run else "cpu")
    out = Path(args.out)
    if args.dry_run:
        args.size, args.batch_size, args.cv_steps, args.one_steps, args.folds = 64, 2, 3, 3, 2
        out = WORK / "gpu_accuracy_dry.json"
    elif device.type != "cuda":
        raise SystemExit("no CUDA GPU: run with --dry-run to check the script on a CPU")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    methods = args.methods.split(",")
    cases = Cases(chaos_dir())
    names = cases.names
    jobs = []
    for fold in range(args.folds):
        test = [n for i, n in enumerate(names) if i % 4 == fold]
        train = [n for n in names if n not in test]
        for method in methods:
            jobs.append({"regime": "4-fold CV", "fold": fold, "method": method, "train": train, "test": test,
                         "steps": args.cv_steps})
    for case in ONE_CASE:
        for method in methods:
            jobs.append({"regime": "one case", "method": method, "train": [case],
                         "test": [n for n in names if n != case], "steps": args.one_steps})
    if args.dry_run:
        for job in jobs:
            job["test"] = job["test"][:2]
        jobs = jobs[:2] + jobs[-2:]
    record = {"machine": machine_facts(), "device": str(device),
              "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
              "settings": {"size": args.size, "batch_size": args.batch_size, "lr": 1e-4, "weight_decay": 5e-4,
                           "amp": device.type == "cuda", "output_stride": args.output_stride, "augment": True},
              "command": " ".join(["benchmarks/gpu_accuracy.py"] + (argv or sys.argv[1:])), "jobs": []}
    started = time.perf_counter()
    for job in jobs:
        if time.perf_counter() - started > args.time_limit:
            record["stopped_early"] = f"time limit {args.time_limit} s reached before {len(record['jobs'])}/{len(jobs)} jobs"
            break
        config = make_config(job["method"], args.size, args.batch_size, 0, output_stride=args.output_stride,
                             amp=device.type == "cuda")
        store = cases.store(job["train"], args.size)
        tick = time.perf_counter()
        result = {}

        def on_milestone(model, step, epochs, loss):
            if device.type == "cuda":
                torch.cuda.synchronize()
            result["train_seconds"] = time.perf_counter() - tick
            result.update(step=step, epochs=epochs, loss=loss)
            result["eval"] = evaluate_model(model, cases, job["test"], args.size, device=device)

        summary = train_with_milestones(store, job["method"], config, cases.modality, len(cases.class_names),
                                        [job["steps"]], on_milestone, device=device, log_every=0)
        entry = {**job, **result, "steps_per_epoch": summary["steps_per_epoch"],
                 "samples_per_epoch": summary["samples_per_epoch"], "wall_seconds": time.perf_counter() - tick}
        if device.type == "cuda":
            entry["max_memory_gb"] = torch.cuda.max_memory_allocated() / 2 ** 30
        record["jobs"].append(entry)
        mean = result["eval"]["lcc"]["mean"]
        print(f"{job['regime']} {job.get('fold', job['train'][0])} {job['method']}: Dice {mean['dice_mean']:.4f} "
              f"(LCC), ASSD {mean['assd_mean']} mm, {entry['wall_seconds']:.0f} s", flush=True)
        record["elapsed_seconds"] = time.perf_counter() - started
        write_json(out, record)
    record["elapsed_seconds"] = time.perf_counter() - started
    write_json(out, record)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
