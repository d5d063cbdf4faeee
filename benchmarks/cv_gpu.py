"""Cross-validated accuracy of the shipped model's recipe and its candidates, the new-modality
fine-tune benchmark and the uncertainty map's error ranking, in one run on one GPU (issue 22).

Protocol (every figure from cases the scored model never saw):

- **4-fold cross-validation** over the 16 CHAOS MR T2-SPIR cases (fold f tests the cases whose
  position in the sorted list is f mod 4, and trains on the other 12), for every recipe in
  ``--recipes`` (``RECIPES``). Each fold model is scored on its 4 test cases: per case and organ
  Dice (largest component kept, as ``pairseg segment`` does) and ASSD, at the stored field of view
  in fp32 and bf16 inference, and with the field of view widened 1.25x and 1.5x.
- **Where to look first**: from the fp32 probabilities of f(x, x), candidate uncertainty maps
  (``uncertainty.MAPS``) are ranked against the errors of the segmentation: the share of the wrong
  voxels that the top 10 % most uncertain voxels hold (inside a 10 mm band around the reference
  and predicted organs, and in the whole volume), the AUROC in that band, and the share of wrong
  voxels in the 5 slices of highest summed uncertainty.
- **One annotated volume of a new modality** (``--ft-folds``): every test case is put through a
  fixed strong intensity transform (``new_sequence``: inverted and gamma-warped contrast, a
  stand-in for a sequence the MR model has not seen). The fold's MR model (first recipe) is
  fine-tuned on ONE transformed test case and scored on the fold's other three transformed cases,
  with each recipe of ``FINE_TUNES``, beside training from scratch and the MR model as it is.
- **The shipped candidate** (``--final``): the engine's own ``pairseg train`` (through
  ``scripts/train_on_device.py``) on the 15 cases other than case_002 with the settings file
  ``--final``, float16 weights and metadata written in pieces that the device tool can bring back.

Every job is a separate process, all started at once (one GPU holds them all); each writes
``<out>/cv_<job>.json`` when it ends, and they are merged into ``<out>/cv_gpu.json``. A job still
running ``--deadline`` seconds after the start is stopped (the shipped candidate 40 s later), so
a run that is cut short keeps what finished.

    python benchmarks/cv_gpu.py --data-npz .gpu/chaos.npz --out $OUT --final benchmarks/configs/X.train.json
    .venv/bin/python benchmarks/cv_gpu.py --dry-run        # CPU, tiny: checks the plumbing
    .venv/bin/python benchmarks/cv_gpu.py --device cpu --sequential --only shipped-f0,ft-today-f0 \
        --fold-model 0=benchmarks/work/cv-cpu/shipped-f0.pairseg   # a CPU, one fold model from pairseg train
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(HERE))

try:  # the device machine has no SimpleITK; the engine only uses it to read files, which we don't
    import SimpleITK  # noqa: F401
except ImportError:
    import types

    sys.modules["SimpleITK"] = types.ModuleType("SimpleITK")

import numpy as np  # noqa: E402
import torch  # noqa: E402

#: name: training settings that differ from the shipped recipe (192 px at 1.67 mm, output stride 16,
#: batch 8, Adam 1e-4, bf16 where native, default augmentation + shift 0.25, constant learning rate, 6500 steps).
RECIPES = {
    "shipped": {"steps": 6500},
    "poly8k": {"steps": 8000, "lr_schedule": "poly"},
}
#: Fine-tuning on one transformed case: name: (start from the MR model?, settings).
FINE_TUNES = {
    "today": (True, {"lr": 3e-5}),  # the Trainer's fine-tune today: lr 3e-5, default augmentation
    "wide": (True, {"lr": 1e-4, "lr_schedule": "poly", "augment": {"invert": 0.5, "remap": 0.5, "gamma": 0.4}}),
    "wide-lr3e-4": (True, {"lr": 3e-4, "lr_schedule": "poly",
                           "augment": {"invert": 0.5, "remap": 0.5, "gamma": 0.4}}),
    "scratch": (False, {"lr": 1e-4, "lr_schedule": "poly", "augment": {"invert": 0.5, "remap": 0.5, "gamma": 0.4}}),
}
FT_STEPS = 1000  # about 15 minutes of bf16 training at 192 px on the 2-core CPU
SIZE, SPACING = 192, 320.0 / 192  # every CHAOS case is 256 px of 1.25 mm: 320 mm on 192 px
FOV = (1.0, 1.25, 1.5)


def new_sequence(array: np.ndarray) -> np.ndarray:
    """The fixed 'new sequence' of the fine-tune benchmark: intensities scaled to [0, 1] by the
    volume's 99.5th percentile, inverted and squared, scaled back (background becomes bright,
    fat and fluid trade places, the organs' contrast is warped)."""
    top = float(np.percentile(array, 99.5))
    scaled = np.clip(array.astype(np.float32) / max(top, 1e-6), 0.0, 1.0)
    return ((1.0 - scaled) ** 2 * top).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------


def segment(model, volume, device, precision: str, keep_probabilities: bool = False):
    from pairseg.infer import predict_native
    from pairseg.postprocess import keep_largest_component

    labels, probs = predict_native(model, volume, "MR", SIZE, device, model_spacing=SPACING,
                                   mr_rule="above-minimum", precision=precision,
                                   keep_probabilities=keep_probabilities)
    return keep_largest_component(labels, model.num_classes), probs


def score_cases(model, cases: dict, names: list[str], class_names: list[str], device, *, full: bool) -> dict:
    """{variant: {case: metrics}}: fp32 with ASSD (and uncertainty ranking when ``full``), bf16
    and the widened fields of view (Dice only)."""
    from common import dice_only
    from pairseg.data import widen_field_of_view
    from pairseg.metrics import evaluate_case
    from uncertainty import rank_errors

    bf16 = "bf16" if device.type == "cpu" or torch.cuda.is_bf16_supported() else None
    out: dict = {}
    for name in names:
        volume, label = cases[name]
        spacing_zyx = tuple(float(s) for s in reversed(volume.spacing))
        pred, probs = segment(model, volume, device, "fp32", keep_probabilities=full)
        row = (evaluate_case if full else dice_only)(pred, label, spacing_zyx, class_names)
        out.setdefault("fp32", {})[name] = {k: row[k] for k in ("dice", "assd", "mean_dice")}
        if not full:
            continue
        out.setdefault("uncertainty", {})[name] = rank_errors(probs, pred, label, spacing_zyx)
        if bf16:
            pred16, _ = segment(model, volume, device, bf16)
            row = dice_only(pred16, label, spacing_zyx, class_names)
            out.setdefault("bf16", {})[name] = {"dice": row["dice"], "mean_dice": row["mean_dice"],
                                                "voxels_differing_from_fp32": int((pred16 != pred).sum())}
        for factor in FOV[1:]:
            wide, (top, left) = widen_field_of_view(volume, factor)
            predw, _ = segment(model, wide, device, "fp32")
            predw = predw[:, top:top + label.shape[1], left:left + label.shape[2]]
            row = dice_only(predw, label, spacing_zyx, class_names)
            out.setdefault(f"fov{factor}", {})[name] = {"dice": row["dice"], "mean_dice": row["mean_dice"]}
    return out


# ---------------------------------------------------------------------------------------------
# Jobs
# ---------------------------------------------------------------------------------------------


def load_cases(npz: Path | None, dry_run: bool):
    from recipe import load_cases as read

    cases, class_names = read(npz)
    if dry_run:
        cases = dict(list(cases.items())[:8])
    return cases, class_names


def folds_of(names: list[str], folds: int = 4) -> list[list[str]]:
    ordered = sorted(names)
    return [[n for i, n in enumerate(ordered) if i % folds == f] for f in range(folds)]


def make_training_config(recipe: dict, dry_run: bool):
    from common import make_config

    config = make_config("c2fcn", SIZE, 8, seed=0, output_stride=16, amp=True)
    config.channels_last, config.precision = True, "auto"  # bf16 where native (GPU, AVX-512 BF16 CPU)
    config.augment.shift = 0.25
    settings = dict(recipe)
    augment = settings.pop("augment", {})
    steps = settings.pop("steps", FT_STEPS)
    config = config.replace(**settings)
    for key, value in augment.items():
        setattr(config.augment, key, value)
    if dry_run:
        steps = 3
    return config, steps


def train_model(cases, names, class_names, config, steps, device, init_state=None, tag=""):
    from common import train_with_milestones
    from pairseg.data import SliceStore

    store = SliceStore.from_volumes([cases[n][0] for n in names], [cases[n][1] for n in names], "MR", SIZE, names,
                                    model_spacing=SPACING, mr_rule="above-minimum")
    kept = {}

    def keep(model, step, epochs, loss):
        kept["model"], kept["loss"], kept["epochs"] = model, loss, epochs

    info = train_with_milestones(store, "c2fcn", config, "MR", len(class_names), [steps], keep, device,
                                 log_every=1000, init_state=init_state,
                                 log=lambda text: print(f"[{tag}]{text}", flush=True))
    kept["model"].eval()
    return kept["model"], {"loss": kept["loss"], "epochs": kept["epochs"],
                           "train_seconds": info["train_seconds_total"], "steps": steps}


def recalibrate_batchnorm(model, volumes, device) -> None:
    """Re-estimate every BatchNorm's running statistics on the unlabelled ``volumes`` (cumulative
    averages over their slices, f(x, x) as at inference); weights unchanged."""
    from pairseg.data import SliceStore

    store = SliceStore.from_volumes(volumes, [np.zeros(v.array.shape, np.uint8) for v in volumes], "MR", SIZE,
                                    model_spacing=SPACING, mr_rule="above-minimum")
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    model.train()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        for stack in store.images:
            for first in range(0, stack.shape[0], 16):
                model.predict_proba(stack[first:first + 16].to(device))
    for norm in norms:
        norm.momentum = 0.1
    model.eval()


def run_job(job: dict, args) -> None:
    torch.set_num_threads(2)
    torch.backends.cudnn.benchmark = True
    from common import write_json

    device = torch.device(args.device)
    cases, class_names = load_cases(args.data_npz, args.dry_run)
    folds = folds_of(list(cases))
    path = Path(args.out) / f"cv_{job['name']}.json"
    result = {**job, "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"}
    started = time.time()
    if job["kind"] == "cv":
        test = folds[job["fold"]]
        train = [n for n in cases if n not in test]
        config, steps = make_training_config(RECIPES[job["recipe"]], args.dry_run)
        trained = args.fold_models.get(job["fold"]) if job["recipe"] == args.recipes.split(",")[0] else None
        if trained:  # a fold model trained elsewhere (pairseg train, e.g. on a CPU): scored, not retrained
            model, meta = _fold_model(trained, train, device)
            info = {"model_file": str(trained), "steps": meta["training"]["steps"]}
        else:
            model, info = train_model(cases, train, class_names, config, steps, device, tag=job["name"])
        result.update(train=info, training_cases=train, test_cases=test, settings=config.to_dict())
        if job.get("keep"):  # for the fine-tune jobs, which wait for it
            weights = Path(args.work) / f"{job['recipe']}-f{job['fold']}.pt"
            torch.save(model.state_dict(), weights.with_suffix(".part"))
            os.replace(weights.with_suffix(".part"), weights)
        result["scores"] = score_cases(model, cases, test, class_names, device, full=True)
    else:  # fine-tune on one transformed case of the fold
        from pairseg.io.volume import Volume

        test = folds[job["fold"]]
        weights = Path(args.work) / f"{job['base']}-f{job['fold']}.pt"
        if job["fold"] in args.fold_models:
            init = _fold_model(args.fold_models[job["fold"]], [n for n in cases if n not in test],
                               torch.device("cpu"))[0].state_dict()
        else:
            while not weights.exists() and time.time() - args.t0 < args.deadline + 300:
                time.sleep(2)
            init = torch.load(weights, map_location="cpu", weights_only=True)
        moved = {n: (Volume(new_sequence(v.array), v.spacing, v.origin, v.direction), lab)
                 for n, (v, lab) in cases.items() if n in test}
        source, targets = test[0], test[1:]
        from_mr, settings = FINE_TUNES[job["recipe"]]
        config, steps = make_training_config(settings, args.dry_run)
        if job["recipe"] == "today":  # the MR model on the new sequence as it is, once
            from pairseg.networks import build_model

            base = build_model("c2fcn", len(class_names), 3, **config.model_options("c2fcn"))
            base.load_state_dict(init)
            result["as_is"] = score_cases(base.to(device).eval(), moved, targets, class_names, device, full=False)
        model, info = train_model(moved, [source], class_names, config, steps, device,
                                  init_state=init if from_mr else None, tag=job["name"])
        result.update(train=info, source=source, targets=targets, settings=config.to_dict())
        result["scores"] = score_cases(model, moved, targets, class_names, device, full=False)
        recalibrate_batchnorm(model, [moved[n][0] for n in [source] + targets], device)
        result["scores_bn_recalibrated"] = score_cases(model, moved, targets, class_names, device, full=False)
    result["seconds"] = time.time() - started
    write_json(path, result)
    print(f"[{job['name']}] done in {result['seconds']:.0f} s", flush=True)


def _fold_model(path: Path, training_cases: list[str], device):
    """A fold's model file (``pairseg train --cases`` with the fold's training cases): loaded safely,
    in float32, refused unless it saw exactly those cases (so no test case leaks into it)."""
    from pairseg.modelfiles.weights import load_model

    model, meta = load_model(path, device)
    seen = sorted(meta["training"]["seen_cases"])
    if seen != sorted(training_cases):
        raise SystemExit(f"{path}: trained on {seen}, not on this fold's training cases {sorted(training_cases)}")
    grid = (meta["size"], round(float(meta["spacing"]), 4), meta["preprocessing"]["mr_window_rule"])
    if grid != (SIZE, round(SPACING, 4), "above-minimum"):
        raise SystemExit(f"{path}: size, spacing and MR window rule {grid}; this benchmark scores "
                         f"{(SIZE, round(SPACING, 4), 'above-minimum')}")
    return model.float().eval(), meta


def run_final(args) -> None:
    """The shipped candidate: the engine's pairseg train through scripts/train_on_device.py."""
    out = Path(args.final_out or Path(args.out) / "final")
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(ROOT / "scripts" / "train_on_device.py"), "--config", str(args.final),
               "--npz", str(args.data_npz), "--out", str(Path(args.work) / "final.pairseg"), "--device", args.device,
               "--half-out", str(out)]
    with open(out / "final.log", "w") as log:
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
    print(f"[final] exit {code}", flush=True)


def merge(out: Path) -> dict:
    merged = {"jobs": {}}
    for path in sorted(out.glob("cv_*.json")):
        if path.name != "cv_gpu.json":
            merged["jobs"][path.stem[3:]] = json.loads(path.read_text())
    (out / "cv_gpu.json").write_text(json.dumps(merged, indent=1))
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-npz", type=Path, help="CHAOS as npz (default: read ../shared/data/chaos_t2)")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--ft-folds", default="0,1", help="folds whose first test case is fine-tuned on")
    parser.add_argument("--final", type=Path, help="settings file of the shipped candidate to train")
    parser.add_argument("--final-out", type=Path, help="folder for its weights and metadata (default <out>/final)")
    parser.add_argument("--merged", type=Path, help="also copy the merged results here")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--deadline", type=float, default=480.0, help="start no job after this many seconds")
    parser.add_argument("--out", default=str(HERE / "results" / "cv_gpu"))
    parser.add_argument("--work", default="/tmp/pairseg-cv-work")
    parser.add_argument("--dry-run", action="store_true", help="CPU, 3 steps, 8 cases")
    parser.add_argument("--only", help="run only these jobs (comma-separated names, e.g. shipped-f0,ft-today-f0)")
    parser.add_argument("--sequential", action="store_true",
                        help="one job after the other, no deadline (a CPU: each job has the cores to itself)")
    parser.add_argument("--fold-model", action="append", default=[], metavar="FOLD=MODEL.pairseg",
                        help="fold FOLD's model of the first recipe, trained elsewhere with pairseg train: scored "
                             "instead of trained, and the fine-tune jobs of that fold start from it")
    args = parser.parse_args()
    args.fold_models = {int(spec.split("=", 1)[0]): Path(spec.split("=", 1)[1]) for spec in args.fold_model}
    args.t0 = time.time()
    if args.dry_run:
        args.device, args.out = "cpu", str(HERE / "work" / "cv-dry")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    recipes = args.recipes.split(",")
    ft_folds = [int(f) for f in args.ft_folds.split(",") if f]
    jobs = [{"kind": "cv", "name": f"{r}-f{f}", "recipe": r, "fold": f, "keep": r == recipes[0] and f in ft_folds}
            for r in recipes for f in range(4)]
    jobs += [{"kind": "ft", "name": f"ft-{r}-f{f}", "recipe": r, "fold": f, "base": recipes[0]}
             for f in ft_folds for r in FINE_TUNES]
    if args.dry_run:
        jobs = jobs[:1] + [j for j in jobs if j["kind"] == "ft"][:2]
    if args.only:
        wanted = args.only.split(",")
        unknown = sorted(set(wanted) - {j["name"] for j in jobs})
        if unknown:
            raise SystemExit(f"--only: no job named {', '.join(unknown)}; jobs: {', '.join(j['name'] for j in jobs)}")
        jobs = [j for j in jobs if j["name"] in wanted]
    if args.sequential:
        for job in jobs:
            run_job(job, args)
        print(f"{len(merge(Path(args.out))['jobs'])} jobs recorded; {time.time() - args.t0:.0f} s", flush=True)
        return
    context = mp.get_context("spawn")
    workers = []
    if args.final and not args.dry_run:
        workers.append(context.Process(target=run_final, args=(args,), name="final"))
    workers += [context.Process(target=run_job, args=(job, args), name=job["name"]) for job in jobs]
    for worker in workers:
        worker.start()
    for worker in workers:  # the shipped candidate is given 40 s more than the benchmark jobs
        grace = 40 if worker.name == "final" else 0
        worker.join(max(1.0, args.deadline + grace - (time.time() - args.t0)))
        if worker.is_alive() and worker.name != "final":
            print(f"[{worker.name}] still running at the deadline: stopped", flush=True)
            worker.terminate()
    for worker in workers:
        if worker.is_alive():
            print(f"[{worker.name}] still running at the deadline: stopped", flush=True)
            worker.terminate()
    failed = [w.name for w in workers if w.exitcode not in (0, None)]
    merged = merge(Path(args.out))
    if args.merged:
        args.merged.write_text((Path(args.out) / "cv_gpu.json").read_text())
    print(f"{len(merged['jobs'])} jobs recorded; failed: {failed or 'none'}; {time.time() - args.t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
