"""Limited-data accuracy on CHAOS MR T2-SPIR, CPU profile (issue 7, part 1).

One job = one method trained on one set of training cases with a fixed seed, evaluated at
milestone steps on every case not used for training. Jobs are listed in priority order; ``--shard
i/n`` runs every n-th job so that n single-threaded workers can share the machine. Every job
writes ``<out>/<job>.json`` after each milestone, so partial results survive an interruption and a
rerun skips finished milestones' jobs.

Methods: c2fcn, deeplabv3plus, cfcn, unet (the engine's networks) and c2fcn-identical (C2FCN
trained on identical pairs only, ``--pair-mode identical``, the paper's Table 3 ablation). Plan
``speed-trade`` trains C2FCN at output stride 8 and at 256² on the first training case: the Dice
side of the faster configurations (output stride 16, 128² input) that speed.py times. Plan
``augment`` repeats C2FCN and DeepLabv3+ on the three one-case training sets without augmentation
(methods c2fcn-noaug, deeplabv3plus-noaug).

Equal budgets: every job records the epochs done at each milestone. Single-image baselines get
extra milestones at the step counts where they have done as many epochs as C2FCN at its
milestones on the same training set ("equal epochs"); C2FCN milestones are "equal steps".

    .venv/bin/python benchmarks/limited_data.py --plan main --queue --shard 0/2 --threads 1 &
    .venv/bin/python benchmarks/limited_data.py --plan main --queue --shard 1/2 --threads 1 &
    .venv/bin/python benchmarks/limited_data.py --plan speed-trade --threads 1
    .venv/bin/python benchmarks/limited_data.py --plan augment --queue --shard 0/2 --threads 1 &   # and 1/2
    .venv/bin/python benchmarks/limited_data.py --plan main --dry-run     # tiny, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (BENCH, WORK, Cases, chaos_dir, evaluate_model, machine_facts, make_config,  # noqa: E402
                    plan_info, train_with_milestones, write_json)

# Training cases of the one-case regime: dataset order indices 0, 5, 10 (fixed before any result).
ONE_CASE = ["case_002", "case_015", "case_031"]
# Multi-case training sets for the Dice-vs-number-of-cases curve (nested, fixed).
MULTI = {2: ["case_002", "case_015"], 4: ["case_002", "case_015", "case_031", "case_019"],
         8: ["case_002", "case_015", "case_031", "case_019", "case_003", "case_010", "case_021", "case_034"]}
METHODS = {
    "c2fcn": {"arch": "c2fcn", "pair_mode": "intra+inter"},
    "deeplabv3plus": {"arch": "deeplabv3plus"},
    "cfcn": {"arch": "cfcn", "pair_mode": "intra+inter"},
    "unet": {"arch": "unet"},
    "c2fcn-identical": {"arch": "c2fcn", "pair_mode": "identical"},
    "c2fcn-os8": {"arch": "c2fcn", "pair_mode": "intra+inter", "output_stride": 8},
    "c2fcn-256": {"arch": "c2fcn", "pair_mode": "intra+inter", "size": 256},
    "c2fcn-noaug": {"arch": "c2fcn", "pair_mode": "intra+inter", "augment": False},
    "deeplabv3plus-noaug": {"arch": "deeplabv3plus", "augment": False},
}


def job_list(plan: str, steps: list[int]) -> list[dict]:
    """Jobs in priority order."""
    jobs = []

    def add(method, train, max_steps, tag=""):
        jobs.append({"method": method, "train": train, "steps": max_steps, "seed": 0,
                     "name": f"{method}__{'+'.join(train)}__{max_steps}{tag}"})

    if plan in ("main", "dry"):
        first = steps[0]
        # 1. C2FCN vs DeepLabv3+ on three one-case training sets.
        for case in ONE_CASE:
            add("c2fcn", [case], first)
            add("deeplabv3plus", [case], first)
        # 2. The other methods at the same budget, first training case.
        for method in ("cfcn", "c2fcn-identical", "unet"):
            add(method, [ONE_CASE[0]], first)
        # 3. More training cases (C2FCN vs DeepLabv3+), one training set each.
        for n, train in MULTI.items():
            add("c2fcn", train, first)
            add("deeplabv3plus", train, first)
        # 4. The other methods on the other training cases.
        for method in ("cfcn", "c2fcn-identical", "unet"):
            for case in ONE_CASE[1:]:
                add(method, [case], first)
        # 5. Longer budget (sweep), C2FCN vs DeepLabv3+, first training case.
        for longer in steps[1:]:
            add("c2fcn", [ONE_CASE[0]], longer)
            add("deeplabv3plus", [ONE_CASE[0]], longer)
    elif plan == "augment":  # the same one-case runs without augmentation
        for case in ONE_CASE:
            add("c2fcn-noaug", [case], steps[0])
            add("deeplabv3plus-noaug", [case], steps[0])
    elif plan == "speed-trade":  # the Dice side of the speed/accuracy trade (speed.py has the time side)
        add("c2fcn-os8", [ONE_CASE[0]], steps[0])
        add("c2fcn-256", [ONE_CASE[0]], steps[0])
    else:
        raise SystemExit(f"unknown plan {plan}")
    return jobs


def run_job(job: dict, cases: Cases, args, out_dir: Path, log) -> None:
    path = out_dir / f"{job['name']}.json"
    if path.is_file() and json.loads(path.read_text()).get("complete"):
        log(f"skip {job['name']} (done)")
        return
    method = METHODS[job["method"]]
    arch = method["arch"]
    size = method.get("size", args.size)
    augment = method.get("augment", not args.no_augment)
    config = make_config(arch, size, args.batch_size, job["seed"], pair_mode=method.get("pair_mode", "intra+inter"),
                         augment=augment, output_stride=method.get("output_stride", args.output_stride))
    store = cases.store(job["train"], size)
    test_names = [n for n in cases.names if n not in job["train"]]
    if args.dry_run:
        test_names = test_names[:2]
    own = plan_info(store, arch, config, cases.modality)
    pair_config = make_config("c2fcn", size, args.batch_size, job["seed"])
    pairwise = plan_info(store, "c2fcn", pair_config, cases.modality)
    milestones = sorted({m for m in args.milestones if m <= job["steps"]} | {job["steps"]})
    if arch in ("deeplabv3plus", "unet"):
        # equal-epoch milestone: the step where this model has done the epochs C2FCN did at the end
        milestones.append(max(1, round(job["steps"] / pairwise["steps_per_epoch"] * own["steps_per_epoch"])))
        milestones = sorted(set(milestones))
    record = {"job": job, "method": job["method"], "arch": arch, "train_cases": job["train"], "test_cases": test_names,
              "settings": {"size": size, "batch_size": args.batch_size, "augment": augment,
                           "lr": config.lr, "weight_decay": config.weight_decay, "seed": job["seed"],
                           "pair_mode": config.pair_mode, "output_stride": config.output_stride,
                           "threads": torch.get_num_threads()},
              "plan": own, "c2fcn_plan": pairwise, "milestones": {}, "machine_start": machine_facts(),
              "complete": False}
    log(f"start {job['name']}: {own['samples_per_epoch']} samples/epoch, {own['steps_per_epoch']} steps/epoch, "
        f"milestones {milestones}, {len(test_names)} test cases")
    started = time.perf_counter()

    assd_at = {job["steps"]}
    if arch in ("deeplabv3plus", "unet"):
        assd_at.add(max(1, round(job["steps"] / pairwise["steps_per_epoch"] * own["steps_per_epoch"])))
    if args.dry_run:
        assd_at = {job["steps"]}

    def on_milestone(model, step, epochs, loss):
        save = WORK / "preds" / f"{job['name']}__{step}.npz" if step == job["steps"] else None
        result = evaluate_model(model, cases, test_names, size, save_pred=save, assd=step in assd_at,
                                other_readout=step == job["steps"])
        result.update(step=step, epochs=epochs, loss=loss, wall_seconds=time.perf_counter() - started,
                      loadavg=machine_facts()["loadavg"])
        record["milestones"][str(step)] = result
        write_json(path, record)
        if step == job["steps"]:
            weights = WORK / "models" / f"{job['name']}.pt"
            weights.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"arch": arch, "options": dict(model.options), "state_dict": model.state_dict()}, weights)
        m = result["lcc"]["mean"]
        log(f"  {job['name']} @ {step} ({epochs:.1f} ep): mean Dice {result['raw']['mean']['dice_mean']:.4f} "
            f"raw / {m['dice_mean']:.4f} LCC, ASSD {m['assd_mean']} mm, eval {result['eval_seconds']:.0f} s")

    summary = train_with_milestones(store, arch, config, cases.modality, len(cases.class_names), milestones,
                                    on_milestone, log_every=args.log_every, log=log)
    record.update(summary)
    record["complete"] = True
    record["machine_end"] = machine_facts()
    write_json(path, record)
    log(f"done {job['name']} in {time.perf_counter() - started:.0f} s")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", default="main")
    parser.add_argument("--steps", default="250,1000", help="main budget, then longer budgets for the sweep")
    parser.add_argument("--milestones", default="100,250,500,1000")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--output-stride", type=int, default=16, choices=[8, 16],
                        help="DeepLabv3+ output stride of every ResNet-based model (16: half the CPU cost of 8)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--no-augment", action="store_true")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--shard", default="0/1")
    parser.add_argument("--queue", action="store_true",
                        help="workers take jobs from a shared queue (claim files) instead of fixed shards")
    parser.add_argument("--only", help="comma-separated job names to run")
    parser.add_argument("--out", default=str(BENCH / "results" / "limited"))
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--dry-run", action="store_true", help="tiny: 4 steps, 2 test cases, results to work/dry")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = [int(s) for s in args.steps.split(",")]
    args.milestones = [int(s) for s in args.milestones.split(",")]
    out_dir = Path(args.out)
    if args.dry_run:
        steps, args.milestones, args.size = [4, 6], [2, 4, 6], 64
        out_dir = WORK / "dry"
    jobs = job_list(args.plan, steps)
    if args.only:
        wanted = set(args.only.split(","))
        jobs = [j for j in jobs if j["name"] in wanted]
    index, count = (int(v) for v in args.shard.split("/"))
    mine = jobs if args.queue else [j for i, j in enumerate(jobs) if i % count == index]
    if args.dry_run:
        mine = mine[:3] + [j for j in mine if j["method"] in ("cfcn", "unet", "c2fcn-identical")][:3]
    log_path = out_dir / f"log_shard{index}of{count}.txt"
    out_dir.mkdir(parents=True, exist_ok=True)

    def log(text):
        line = f"{time.strftime('%H:%M:%S')} {text}"
        print(line, flush=True)
        with open(log_path, "a") as handle:
            handle.write(line + "\n")

    log(f"shard {index}/{count}: {len(mine)} jobs: {[j['name'] for j in mine]}; machine {machine_facts()}")
    cases = Cases(chaos_dir())
    for job in mine:
        if args.queue:  # dynamic sharing between workers: the first to claim a job runs it
            try:
                os.close(os.open(out_dir / f"{job['name']}.claim", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                continue
        run_job(job, cases, args, out_dir, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
