"""Speed and memory of PairSeg on this machine, side by side in one run (issue 7, part 3).

Everything is measured in the same process run, against a large fp32 matmul measured in the same
run, as medians of ``--repeats`` timed runs after a warm-up:

- FLOPs (``torch.utils.flop_counter``: convolutions and matrix products; element-wise work is not
  counted) of a training step of 8 pairs (8 images for DeepLabv3+) at 128² and 256², its time,
  the achieved GFLOP/s and the fraction of the matmul rate; C2FCN, CFCN, DeepLabv3+;
- pairs/s over one whole epoch (up to 40 steps) of the real input pipeline (slice store, pair
  sampling, background augmentation thread) against the pure step rate measured around it;
- end-to-end segmentation of a 256×256×40 MR volume (read, normalise, infer, largest component,
  write), stage by stage, against the pure compute time at the matmul rate;
- inference variants against plain eager fp32 (``torch.no_grad``, default threads):
  ``inference_mode`` (the engine's), channels_last, bf16 autocast, 1 thread, output stride 16,
  128² input, ``torch.compile``;
- peak RSS of segmenting a 512×512×300 CT-sized volume, in a subprocess (``ru_maxrss``);
- a torch.profiler table of the top operators of C2FCN inference and of a training step;
- the Dice cost of channels_last and bf16 on the real data (a C2FCN trained by limited_data.py).

    .venv/bin/python benchmarks/speed.py                 # full run, writes results/speed.json
    .venv/bin/python benchmarks/speed.py --dry-run       # tiny sizes, a minute, work/speed_dry.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH, WORK, Cases, chaos_dir, machine_facts, make_config, write_json  # noqa: E402
from pairseg.data import normalize  # noqa: E402
from pairseg.orientation import Orientation  # noqa: E402
from pairseg.infer import Predictor, predict_volume  # noqa: E402
from pairseg.io.read import read_volume  # noqa: E402
from pairseg.io.volume import Volume  # noqa: E402
from pairseg.io.write import write_labels, write_volume  # noqa: E402
from pairseg.losses import criterion_for  # noqa: E402
from pairseg.modelfiles.weights import save_model  # noqa: E402
from pairseg.networks import build_model  # noqa: E402
from pairseg.postprocess import keep_largest_component  # noqa: E402
from pairseg.train import EpochPlan, batch_iterator, prepare_batch  # noqa: E402

CLASSES = ["liver", "right kidney", "left kidney", "spleen"]
RESULTS: dict = {}
OUT = BENCH / "results" / "speed.json"


def log(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)


def save() -> None:
    write_json(OUT, RESULTS)


def timed(fn, repeats: int, warmup: int = 1) -> dict:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        tick = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tick)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "runs": len(times),
            "all_s": times}


def flops_of(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


# ---------------------------------------------------------------------------------------------


def matmul_rate(n: int, repeats: int) -> dict:
    """fp32 n x n x n matrix product, through ``torch.mm`` (BLAS) and through oneDNN (as a 1x1
    convolution, the library that runs the networks' convolutions). The larger rate is the yardstick:
    on CPUs where the BLAS takes a narrower vector path than oneDNN, torch.mm alone understates what
    the machine can do."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    t = timed(lambda: a @ b, repeats, warmup=2)
    t["n"] = n
    t["gflops"] = 2 * n ** 3 / t["median_s"] / 1e9
    x, w = torch.randn(1, n, n, 1), torch.randn(n, n, 1, 1)  # (n x n) @ (n x n) as channels x pixels
    with torch.no_grad():
        conv = timed(lambda: torch.nn.functional.conv2d(x, w), repeats, warmup=2)
    t["onednn_1x1_conv_median_s"] = conv["median_s"]
    t["onednn_gflops"] = 2 * n ** 3 / conv["median_s"] / 1e9
    t["gflops_mm"] = t["gflops"]
    t["gflops"] = max(t["gflops_mm"], t["onednn_gflops"])
    return t


def training_step(arch: str, size: int, batch: int):
    torch.manual_seed(0)
    model = build_model(arch, 4, 3)
    model.train()
    criterion = criterion_for(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=5e-4)
    xa, xb = torch.rand(batch, 3, size, size), torch.rand(batch, 3, size, size)
    ya, yb = torch.randint(0, 5, (batch, size, size)), torch.randint(0, 5, (batch, size, size))
    pairwise = model.training_form != "single"

    def step():
        outputs = model(xa, xb) if pairwise else model(xa)
        loss = criterion(outputs, ya, yb) if pairwise else criterion(outputs, ya)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return model, step


def bench_training(args, rate: float) -> None:
    rows = []
    for size in args.train_sizes:
        for arch in ("c2fcn", "cfcn", "deeplabv3plus"):
            model, step = training_step(arch, size, args.batch)
            flops = flops_of(step)
            t = timed(step, args.repeats)
            row = {"arch": arch, "size": size, "batch": args.batch,
                   "images_per_step": args.batch * (1 if arch == "deeplabv3plus" else 2),
                   "gflop_per_step": flops / 1e9, **t, "gflops_achieved": flops / t["median_s"] / 1e9}
            row["fraction_of_matmul"] = row["gflops_achieved"] / rate
            rows.append(row)
            log(f"train {arch} {size}: {t['median_s']:.3f} s/step, {flops / 1e9:.1f} GFLOP, "
                f"{row['gflops_achieved']:.1f} GFLOP/s ({row['fraction_of_matmul']:.0%} of matmul)")
            RESULTS["training_step"] = rows
            save()


def bench_epoch(args, cases: Cases) -> None:
    """Pairs/s over one whole epoch through the real input pipeline (slice store, pair sampling,
    background gather + augmentation thread, started per epoch as in training) against the pure
    step rate on a fixed batch, measured before and after each of ``--epoch-rounds`` epochs (after a
    warm-up, so both are in the same steady state and drift hits both). Also times the pipeline's
    own work per batch, run alone."""
    import threading

    rows = []
    for size in args.epoch_sizes:
        store = cases.store([cases.names[0]], size)
        for arch in ("c2fcn", "cfcn", "deeplabv3plus"):
            config = make_config(arch, size, args.batch, 0)
            torch.manual_seed(0)
            model = build_model(arch, 4, 3)
            model.train()
            criterion = criterion_for(model)
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=5e-4)
            plan = EpochPlan(store, model.training_form, config, cases.modality)

            def step(images, labels):
                loss = criterion(model(*images), *labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

            def prepare(rows_):  # what the background thread does for one batch
                return prepare_batch(plan, store, rows_, config, torch.Generator().manual_seed(0))

            fixed = prepare(plan.batches(0)[0])
            for _ in range(args.epoch_warmup):
                step(*fixed)
            half = max(1, args.repeats // 2 + 1)
            pure = timed(lambda: step(*fixed), half, warmup=0)["all_s"]
            epoch_times, count = [], 0
            for round_ in range(args.epoch_rounds):  # epochs alternate with pure steps: drift hits both
                tick = time.perf_counter()
                epoch = batch_iterator(plan, store, plan.batches(1 + round_)[: args.epoch_steps], 0, config,
                                        torch.device("cpu"), 0, threading.Event())
                for images, labels in epoch:  # a whole epoch, thread start and first batch included
                    step(images, labels)
                    count += 1
                epoch_times.append(time.perf_counter() - tick)
                pure += timed(lambda: step(*fixed), half, warmup=0)["all_s"]
            epoch_s = sum(epoch_times)
            prep = []
            for rows_ in plan.batches(0)[1:6]:  # the background thread's work, alone
                tick = time.perf_counter()
                prepare(rows_)
                prep.append(time.perf_counter() - tick)
            epoch_rate = args.batch * count / epoch_s
            pure_rate = args.batch / statistics.mean(pure)
            rows.append({"arch": arch, "size": size, "batch": args.batch, "epoch_steps": count,
                         "epochs": args.epoch_rounds, "steps_per_epoch": plan.steps_per_epoch(),
                         "epoch_s": epoch_times,
                         "samples_per_s_epoch": epoch_rate, "samples_per_s_pure": pure_rate,
                         "epoch_over_pure": epoch_rate / pure_rate, "pure_step_times_s": pure,
                         "pipeline_ms_per_batch": 1000 * statistics.median(prep)})
            log(f"epoch {arch} {size}: {count} steps, {epoch_rate:.2f} vs pure {pure_rate:.2f} samples/s "
                f"({epoch_rate / pure_rate:.1%}); pipeline alone {1000 * statistics.median(prep):.0f} ms/batch")
            RESULTS["epoch_rate"] = rows
            save()


def make_model_file(arch: str, path: Path, size: int, modality: str = "MR", **options) -> Path:
    torch.manual_seed(0)
    model = build_model(arch, 4, 3, **options)
    meta = {"class_names": CLASSES, "class_colors": [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]],
            "modality": modality, "size": size, "preprocessing": {}, "training": {}, "validation": {}}
    return save_model(path, model, meta)


def bench_end_to_end(args, cases: Cases, rate: float, tmp: Path) -> None:
    """Segment a real 256x256x40 MR volume from file to file, per stage."""
    name = max(cases.names, key=lambda n: cases.volume[n].array.shape[0])
    vol = cases.volume[name]
    depth = min(args.e2e_depth, vol.array.shape[0])
    image = Volume(np.ascontiguousarray(vol.array[:depth]), vol.spacing, vol.origin, vol.direction)
    src = tmp / "mr_256x256x40.nii.gz"
    write_volume(src, image)
    rows = []
    for arch in ("c2fcn", "deeplabv3plus"):
        model_path = make_model_file(arch, tmp / f"{arch}.pairseg", args.e2e_size)
        predictor = Predictor(model_path, device="cpu")
        x = torch.rand(depth, 3, args.e2e_size, args.e2e_size)
        with torch.inference_mode():
            flops = flops_of(lambda: predictor.model.predict_proba(x))
        stages: dict[str, list[float]] = {k: [] for k in ("read", "normalize", "infer", "postprocess", "write", "total")}
        for repeat in range(args.repeats + 1):
            t0 = time.perf_counter()
            volume = read_volume(src)
            t1 = time.perf_counter()
            orientation = Orientation.of(volume.direction)  # as Predictor.segment: canonical layout
            norm = np.ascontiguousarray(orientation.apply(normalize(volume.array, "MR")))
            t2 = time.perf_counter()
            labels, _ = predict_volume(predictor.model, norm, args.e2e_size, predictor.device)
            t3 = time.perf_counter()
            labels = np.ascontiguousarray(orientation.invert(keep_largest_component(labels, 4).astype(np.uint8)))
            t4 = time.perf_counter()
            write_labels(tmp / "out.nii.gz", labels, volume, class_names=CLASSES)
            t5 = time.perf_counter()
            if repeat == 0:
                continue  # warm-up
            for key, value in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t5 - t0)):
                stages[key].append(value)
        # the engine's own file-to-file path (Predictor.segment_file), for completeness
        t = timed(lambda: predictor.segment_file(src, tmp / "out2.nii.gz"), 2, warmup=0)
        med = {k: statistics.median(v) for k, v in stages.items()}
        compute_s = flops / (rate * 1e9)
        rows.append({"arch": arch, "volume": f"{name} first {depth} slices, 256x256", "size": args.e2e_size,
                     "gflop_infer": flops / 1e9, "stages_median_s": med, "segment_file_median_s": t["median_s"],
                     "pure_compute_s_at_matmul_rate": compute_s, "total_over_pure_compute": med["total"] / compute_s,
                     "infer_gflops_achieved": flops / med["infer"] / 1e9})
        log(f"e2e {arch}: total {med['total']:.2f} s (infer {med['infer']:.2f}), {flops / 1e9:.0f} GFLOP, "
            f"pure compute {compute_s:.2f} s -> {med['total'] / compute_s:.2f}x")
        RESULTS["end_to_end"] = rows
        save()
    if len(rows) == 2:
        RESULTS["end_to_end_c2fcn_over_deeplab"] = rows[0]["stages_median_s"]["total"] / rows[1]["stages_median_s"]["total"]
        save()


def bench_variants(args, cases: Cases, tmp: Path) -> None:
    """C2FCN inference core (2.5D stacks, resize, predict_proba) of one batch of 16 slices of a real
    volume, variants vs plain eager fp32."""
    name = max(cases.names, key=lambda n: cases.volume[n].array.shape[0])
    norm = cases.norm[name][: args.variant_depth]
    rows = []
    threads = torch.get_num_threads()

    def run(model, size, mode="inference_mode", channels_last=False, bf16=False):
        def infer():
            ctx = torch.inference_mode() if mode == "inference_mode" else torch.no_grad()
            with ctx, torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                depth = norm.shape[0]
                volume = torch.from_numpy(norm)
                for first in range(0, depth, 16):
                    index = torch.arange(first, min(first + 16, depth))
                    stacks = torch.stack([volume[(index - 1).clamp(min=0)], volume[index],
                                          volume[(index + 1).clamp(max=depth - 1)]], dim=1)
                    batch = torch.nn.functional.interpolate(stacks, size=(size, size), mode="bilinear",
                                                            align_corners=False)
                    if channels_last:
                        batch = batch.contiguous(memory_format=torch.channels_last)
                    model.predict_proba(batch).float()
        return infer

    def model_for(os_=8, channels_last=False):
        torch.manual_seed(0)
        m = build_model("c2fcn", 4, 3, output_stride=os_).eval()
        if channels_last:
            m = m.to(memory_format=torch.channels_last)
        return m

    base = model_for()
    plan = [("plain eager fp32 (no_grad)", base, args.e2e_size, dict(mode="no_grad")),
            ("inference_mode (engine)", base, args.e2e_size, {}),
            ("channels_last", model_for(channels_last=True), args.e2e_size, dict(channels_last=True)),
            ("bf16 autocast", base, args.e2e_size, dict(bf16=True)),
            ("channels_last + bf16", model_for(channels_last=True), args.e2e_size, dict(channels_last=True, bf16=True)),
            ("output stride 16", model_for(16), args.e2e_size, {}),
            ("input 128", base, args.small_size, {}),
            ("output stride 16 + input 128 + bf16", model_for(16), args.small_size, dict(bf16=True))]
    for label, model, size, kw in plan:
        t = timed(run(model, size, **kw), args.repeats)
        rows.append({"variant": label, "size": size, "threads": threads, **t})
        log(f"variant {label}: {t['median_s']:.3f} s")
        RESULTS["inference_variants"] = rows
        save()
    # threads
    torch.set_num_threads(1)
    t = timed(run(base, args.e2e_size), args.repeats)
    torch.set_num_threads(threads)
    rows.append({"variant": "inference_mode, 1 thread", "size": args.e2e_size, "threads": 1, **t})
    log(f"variant 1 thread: {t['median_s']:.3f} s")
    save()
    plain = rows[0]["median_s"]
    for row in rows:
        row["speedup_vs_plain"] = plain / row["median_s"]
    save()


def bench_compile(args, cases: Cases) -> None:
    """torch.compile of C2FCN's inference path, if it works here and pays."""
    rows = RESULTS.setdefault("inference_variants", [])
    name = max(cases.names, key=lambda n: cases.volume[n].array.shape[0])
    norm = torch.from_numpy(cases.norm[name][: args.variant_depth])
    stacks = torch.nn.functional.interpolate(torch.stack([norm, norm, norm], 1), size=(args.e2e_size,) * 2,
                                             mode="bilinear", align_corners=False)
    torch.manual_seed(0)
    model = build_model("c2fcn", 4, 3).eval()

    def eager():
        with torch.inference_mode():
            model.predict_proba(stacks)
    base = timed(eager, args.repeats)
    rows.append({"variant": "compile baseline: inference_mode eager, same input", "size": args.e2e_size,
                 "threads": torch.get_num_threads(), **base})
    if not args.no_compile:
        try:
            compiled = torch.compile(model.predict_proba)

            def fast():
                with torch.inference_mode():
                    compiled(stacks)
            tick = time.perf_counter()
            fast()
            compile_s = time.perf_counter() - tick
            t = timed(fast, args.repeats, warmup=1)
            rows.append({"variant": "torch.compile (predict_proba)", "size": args.e2e_size,
                         "threads": torch.get_num_threads(), "compile_and_first_run_s": compile_s, **t,
                         "speedup_vs_eager_same_input": base["median_s"] / t["median_s"]})
            log(f"variant torch.compile: {t['median_s']:.3f} s (compile {compile_s:.0f} s)")
        except Exception as error:  # report, do not fail the benchmark
            rows.append({"variant": "torch.compile (predict_proba)", "error": repr(error)[:500]})
            log(f"torch.compile failed: {error!r}"[:300])
        save()


def bench_dice_cost(args, cases: Cases) -> None:
    """Dice cost of the numerics variants on the real data: a C2FCN trained by limited_data.py
    (case_002, 250 steps, 128², OS16) segments the 15 other cases in plain fp32, channels_last and
    bf16 autocast; Dice-per-case (LCC) and inference seconds of each."""
    from common import evaluate_model

    weights = WORK / "models" / "c2fcn__case_002__250.pt"
    if not weights.is_file():
        RESULTS["dice_cost"] = {"error": f"{weights.name} missing: run limited_data.py first"}
        save()
        return
    saved = torch.load(weights, weights_only=True)
    test = [n for n in cases.names if n != "case_002"]
    rows = []
    for label, channels_last, bf16 in (("fp32", False, False), ("fp32 channels_last", True, False),
                                       ("bf16 autocast", False, True), ("channels_last + bf16", True, True)):
        model = build_model(saved["arch"], len(CLASSES), 3, **saved["options"])
        model.load_state_dict(saved["state_dict"])
        model.eval()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        result = evaluate_model(model, cases, test, 128, amp_dtype=torch.bfloat16 if bf16 else None, assd=False)
        rows.append({"variant": label, "dice_mean_lcc": result["lcc"]["mean"]["dice_mean"],
                     "dice_lcc": {c: v["dice_mean"] for c, v in result["lcc"]["classes"].items()},
                     "infer_seconds_15_cases": result["infer_seconds"]})
        log(f"dice cost {label}: {100 * rows[-1]['dice_mean_lcc']:.2f} mean Dice, {result['infer_seconds']:.1f} s")
        RESULTS["dice_cost"] = {"model": weights.name, "test_cases": test, "rows": rows}
        save()


RSS_CHILD = r"""
import sys, time, json
sys.path.insert(0, sys.argv[3])
from pairseg.infer import Predictor
tick = time.perf_counter()
p = Predictor(sys.argv[1], device="cpu")
p.segment_file(sys.argv[2], sys.argv[2] + ".labels.nii.gz")
# VmHWM, not ru_maxrss: a child started by subprocess inherits the parent's ru_maxrss on Linux
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"peak_rss_mb": hwm / 1024,
                  "seconds": time.perf_counter() - tick}))
"""


def bench_rss(args, tmp: Path) -> None:
    shape = args.ct_shape  # z, y, x
    rng = np.random.default_rng(0)
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n, dtype=np.float32) for n in shape), indexing="ij")
    ct = np.where(x ** 2 + y ** 2 < 0.8, 40.0, -1000.0).astype(np.float32)
    ct += np.where((x - 0.2) ** 2 + (y + 0.1) ** 2 + z ** 2 < 0.15, 60.0, 0.0).astype(np.float32)
    ct += rng.normal(0, 20, size=shape).astype(np.float32)
    src = tmp / "ct_512x512x300.nii"
    write_volume(src, Volume(ct.astype(np.int16), (0.8, 0.8, 1.5), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1)))
    del ct, x, y, z
    model_path = make_model_file("c2fcn", tmp / "ct.pairseg", args.e2e_size, modality="CT")
    out = subprocess.run([sys.executable, "-c", RSS_CHILD, str(model_path), str(src), str(BENCH.parent)],
                         capture_output=True, text=True, timeout=args.rss_timeout)
    if out.returncode != 0:
        RESULTS["ct_peak_rss"] = {"error": out.stderr[-2000:]}
    else:
        RESULTS["ct_peak_rss"] = {"shape_zyx": list(shape), "input": "int16 NIfTI (uncompressed)",
                                  **json.loads(out.stdout.strip().splitlines()[-1])}
    log(f"CT RSS: {RESULTS['ct_peak_rss']}")
    save()


def bench_profile(args) -> None:
    from torch.profiler import ProfilerActivity, profile
    tables = {}
    torch.manual_seed(0)
    model = build_model("c2fcn", 4, 3).eval()
    x = torch.rand(16, 3, args.e2e_size, args.e2e_size)
    with torch.inference_mode():
        model.predict_proba(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model.predict_proba(x)
    tables["c2fcn_inference_16x256"] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
    _, step = training_step("c2fcn", args.train_sizes[0], args.batch)
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    tables[f"c2fcn_train_step_8pairs_{args.train_sizes[0]}"] = prof.key_averages().table(
        sort_by="self_cpu_time_total", row_limit=12)
    RESULTS["profiles"] = tables
    for key, table in tables.items():
        log(f"profile {key}\n{table}")
    save()


def main(argv=None) -> int:
    global OUT
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--parts", default="matmul,train,epoch,e2e,variants,rss,profile,compile,dicecost")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--out", help="results file (default results/speed.json)")
    parser.add_argument("--merge", action="store_true",
                        help="keep the other parts' results already in the output file (partial rerun)")
    args = parser.parse_args(argv)
    if args.out:
        OUT = Path(args.out)
    args.train_sizes, args.epoch_sizes, args.e2e_size, args.small_size = [128, 256], [128, 256], 256, 128
    args.train_sizes, args.epoch_sizes = [128, 256], [128]
    args.e2e_depth, args.ct_shape, args.epoch_steps, args.rss_timeout, args.matmul_n = 40, (300, 512, 512), 40, 900, 2048
    args.epoch_warmup, args.epoch_rounds = 4, 3
    args.variant_depth = 16
    if args.dry_run:
        args.repeats, args.batch, args.train_sizes, args.epoch_sizes = 1, 2, [64], [64]
        args.e2e_size, args.small_size, args.e2e_depth, args.ct_shape = 64, 32, 6, (20, 96, 96)
        args.epoch_steps, args.epoch_warmup, args.epoch_rounds, args.matmul_n, args.variant_depth = 3, 1, 1, 256, 4
        OUT = WORK / "speed_dry.json"
    parts = set(args.parts.split(","))
    command = " ".join([".venv/bin/python", "benchmarks/speed.py"] + (argv or sys.argv[1:]))
    if args.merge and OUT.is_file():  # a partial rerun replaces only its parts' entries
        RESULTS.update(json.loads(OUT.read_text()))
        RESULTS.setdefault("partial_reruns", []).append({"command": command, "parts": sorted(parts),
                                                         "machine": machine_facts()})
    else:
        RESULTS["machine_start"] = machine_facts()
        RESULTS["command"] = command
    RESULTS["notes"] = ("FLOPs from torch.utils.flop_counter (conv / matmul only); times are medians of "
                        f"{args.repeats} runs after a warm-up; weights untrained for pure speed rows.")
    log(f"machine {RESULTS['machine_start']}")
    rate = None
    if parts & {"matmul", "train", "e2e"}:
        RESULTS["matmul"] = matmul_rate(args.matmul_n, max(args.repeats, 5))
        rate = RESULTS["matmul"]["gflops"]
        log(f"matmul {args.matmul_n}: {rate:.1f} GFLOP/s")
        save()
    cases = Cases(chaos_dir()) if parts & {"epoch", "e2e", "variants", "compile", "dicecost"} else None
    with tempfile.TemporaryDirectory(dir=WORK if WORK.exists() else None) as folder:
        tmp = Path(folder)
        if "train" in parts:
            bench_training(args, rate)
        if "epoch" in parts:
            bench_epoch(args, cases)
        if "e2e" in parts:
            bench_end_to_end(args, cases, rate, tmp)
        if "variants" in parts:
            bench_variants(args, cases, tmp)
        if "rss" in parts:
            bench_rss(args, tmp)
        if "profile" in parts:
            bench_profile(args)
        if "compile" in parts:
            bench_compile(args, cases)
        if "dicecost" in parts:
            bench_dice_cost(args, cases)
    if rate is not None and not args.merge:  # matmul again at the end: did the machine's speed change?
        RESULTS["matmul_end"] = matmul_rate(args.matmul_n, max(args.repeats, 5))
    if not args.merge:
        RESULTS["machine_end"] = machine_facts()
    save()
    log(f"done: {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
