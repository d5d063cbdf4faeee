"""Training throughput of ``pairseg train`` on one GPU and on N GPUs with torchrun (issue 6).

Measures the real engine end to end: for every world size asked for it runs

    python -m pairseg train ...                                    (1 process)
    python -m torch.distributed.run --standalone --nproc-per-node N -m pairseg train ...

on generated phantom MR volumes at ``--size`` (256 by default) with AMP, and reads the times of
rank 0's JSON ``progress`` events (emitted after the per-step all-reduce, so they are global step
times). Pairs per second = global batch x measured steps / their time; the first ``--warmup``
steps and every step that crossed an epoch end (checkpoint write, validation) are left out.
Scaling efficiency = pairs/s at N / (N x pairs/s at 1).

The result JSON records the GPU name and count, torch/CUDA versions and every setting. No number
in the project comes from this script unless its JSON was written on the named hardware.

    .venv/bin/python benchmarks/ddp_throughput.py --gpus 1,2,4,8            # on a GPU machine
    .venv/bin/python benchmarks/ddp_throughput.py --dry-run                 # tiny, CPU, plumbing only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

import torch  # noqa: E402


def machine(device: str) -> dict:
    facts = {"python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
             "host": platform.node(), "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
             "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if device != "cpu" and torch.cuda.is_available():
        facts.update(gpu=torch.cuda.get_device_name(0), gpu_count=torch.cuda.device_count(),
                     cuda=torch.version.cuda, bf16=torch.cuda.is_bf16_supported(),
                     gpu_memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2 ** 30, 1))
    else:
        facts.update(gpu=None, gpu_count=0)
    return facts


def make_data(folder: Path, cases: int, shape: tuple[int, int, int]) -> Path:
    from pairseg.phantoms import make_phantom_dataset

    if not (folder / "dataset.json").is_file():
        make_phantom_dataset(folder, n_cases=cases, shape=shape, seed=0)
    return folder


def command(world_size: int, args, data: Path, out: Path) -> list[str]:
    launcher = [sys.executable, "-m", "pairseg"]
    if world_size > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc-per-node", str(world_size), "-m", "pairseg"]
    train = ["train", "--data", str(data), "--out", str(out), "--arch", args.arch, "--steps", str(args.steps),
             "--size", str(args.size), "--batch-size", str(args.batch_size), "--device", args.device,
             "--events", "json", "--seed", "0"]
    if not args.amp:
        train.append("--no-amp")
    if args.sync_batchnorm and world_size > 1:
        train.append("--sync-batchnorm")
    if args.channels_last:
        train.append("--channels-last")
    if args.no_augment:
        train.append("--no-augment")
    return launcher + train


def measure(world_size: int, args, data: Path, work: Path) -> dict:
    out = work / f"bench-{world_size}.pairseg"
    cmd = command(world_size, args, data, out)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])),
               PYTHONUNBUFFERED="1")
    if args.device == "cpu":
        env["OMP_NUM_THREADS"] = str(args.threads)
    started = time.monotonic()
    try:
        proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=args.timeout,
                              start_new_session=True)
    except subprocess.TimeoutExpired:
        return {"world_size": world_size, "error": f"timed out after {args.timeout} s", "command": cmd}
    wall = time.monotonic() - started
    events = []
    for line in proc.stdout.splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            pass
    errors = [e.get("message") for e in events if e.get("event") == "error"]
    if proc.returncode != 0 or errors:
        return {"world_size": world_size, "error": errors[0] if errors else f"exit code {proc.returncode}",
                "stderr_tail": proc.stderr[-3000:], "command": cmd}
    start = next(e for e in events if e["event"] == "start")
    global_batch = args.batch_size * world_size
    # Step intervals from consecutive progress events; drop warm-up and epoch-end intervals.
    intervals, previous, crossed = [], None, False
    for event in events:
        if event["event"] in ("epoch", "checkpoint", "validation"):
            crossed = True
        elif event["event"] == "progress":
            if previous is not None and event["step"] > args.warmup and not crossed:
                intervals.append(event["time"] - previous)
            previous, crossed = event["time"], False
    if not intervals:
        return {"world_size": world_size, "error": "no step left to measure (raise --steps)", "command": cmd}
    seconds = sum(intervals)
    return {
        "world_size": world_size, "device": start.get("device"), "global_batch": global_batch,
        "steps_measured": len(intervals), "pairs_per_second": round(global_batch * len(intervals) / seconds, 2),
        "median_step_s": round(statistics.median(intervals), 4), "mean_step_s": round(seconds / len(intervals), 4),
        "samples_per_epoch": start.get("samples_per_epoch"), "wall_s": round(wall, 1), "command": cmd,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", default=None,
                        help="world sizes to run, e.g. 1,2,4 (default: 1 and every GPU of this machine)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per step and GPU (default 8)")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10, help="steps left out at the start (default 10)")
    parser.add_argument("--arch", default="c2fcn")
    parser.add_argument("--no-amp", dest="amp", action="store_false", help="measure without mixed precision")
    parser.add_argument("--sync-batchnorm", action="store_true")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--no-augment", action="store_true", help="leave augmentation out of the measurement")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (gloo; plumbing only)")
    parser.add_argument("--threads", type=int, default=1, help="OMP threads per CPU rank (--device cpu)")
    parser.add_argument("--cases", type=int, default=8, help="phantom cases (default 8)")
    parser.add_argument("--slices", type=int, default=48, help="slices per phantom case (default 48)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    parser.add_argument("--work", type=Path, help="folder for data and models (default: a temporary one)")
    parser.add_argument("--out", type=Path, help="result JSON (default benchmarks/results/ddp_throughput_<gpu>.json)")
    parser.add_argument("--dry-run", action="store_true",
                        help="tiny CPU run (size 32, 2 ranks) to check the plumbing; numbers mean nothing")
    args = parser.parse_args(argv)

    if args.dry_run:
        args.device, args.size, args.batch_size, args.steps, args.warmup = "cpu", 32, 2, 4, 1
        args.cases, args.slices, args.gpus = 2, 8, args.gpus or "1,2"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA GPU here: run on a GPU machine, or --dry-run / --device cpu for the plumbing",
              file=sys.stderr)
        return 2
    available = torch.cuda.device_count() if args.device.startswith("cuda") else os.cpu_count() or 1
    sizes = ([int(v) for v in args.gpus.split(",") if v.strip()] if args.gpus
             else sorted({1, available}))
    if args.device.startswith("cuda") and max(sizes) > available:
        print(f"asked for {max(sizes)} GPUs, this machine has {available}", file=sys.stderr)
        return 2

    facts = machine(args.device)
    with tempfile.TemporaryDirectory(prefix="pairseg-ddp-bench-") as temporary:
        work = args.work or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        data = make_data(work / "phantoms", args.cases, (args.slices, 96, 96))
        runs = []
        for world_size in sizes:
            print(f"world size {world_size} ...", file=sys.stderr, flush=True)
            runs.append(measure(world_size, args, data, work))
            print(json.dumps({k: v for k, v in runs[-1].items() if k != "command"}), file=sys.stderr, flush=True)

    base = next((r["pairs_per_second"] for r in runs if r.get("world_size") == 1 and "pairs_per_second" in r), None)
    for run in runs:
        if base and "pairs_per_second" in run:
            run["scaling_efficiency"] = round(run["pairs_per_second"] / (run["world_size"] * base), 3)
    result = {
        "benchmark": "ddp_throughput", "dry_run": bool(args.dry_run), "machine": facts,
        "settings": {"arch": args.arch, "size": args.size, "batch_size_per_gpu": args.batch_size,
                     "steps": args.steps, "warmup": args.warmup, "amp": args.amp, "device": args.device,
                     "sync_batchnorm": args.sync_batchnorm, "channels_last": args.channels_last,
                     "augment": not args.no_augment, "data": f"{args.cases} phantom cases x {args.slices} slices"},
        "runs": runs,
    }
    text = json.dumps(result, indent=1)
    print(text)
    out = args.out
    if out is None and not args.dry_run:
        name = (facts.get("gpu") or "cpu").replace(" ", "_").replace("/", "_")
        out = REPO / "benchmarks" / "results" / f"ddp_throughput_{name}.json"
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
        print(f"wrote {out}", file=sys.stderr)
    return 0 if all("pairs_per_second" in r for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
