"""Evidence for the shipped model's recipe (issue 12): resolution, budget, learning rate, output
stride and augmentation, the field-of-view robustness of physical-resolution models, and
fine-tuning from a many-case model against training from scratch in the one-case regime.

Protocol: C2FCN trained on 12 CHAOS cases; every milestone is evaluated on the 4 held-out cases
(case_002, the sample case the shipped model never sees, and case_015, case_031, case_039); 4-organ
Dice-per-case after the largest-component step, as ``pairseg segment`` produces it. At the last
milestone the held-out volumes are also segmented padded with background to 1.25x and 1.5x the
field of view (the anatomy unchanged) and scored on the original region. Configurations run as
parallel processes (one GPU is enough); each writes ``<out>/<config>.json`` after every milestone.

Phase 2 (config ``s192``, the CPU recipe): the 12-case model is fine-tuned for ``--ft-steps`` on
each held-out case alone (case_015, case_031, case_039), and a model is trained from scratch on
the same case for the same steps and seed; both are scored on the other three held-out cases.

    python benchmarks/recipe.py --data-npz .gpu/chaos.npz --out results/recipe --device cuda
    python benchmarks/recipe.py --dry-run      # CPU, tiny, from ../shared/data/chaos_t2

The npz (images int16, labels uint8, geometry in the .json beside it) lets the device machine,
which has no SimpleITK, read the CHAOS volumes that were converted here.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

try:  # the device machine has no SimpleITK; the engine only uses it to read files, which we don't
    import SimpleITK  # noqa: F401
except ImportError:
    import types

    sys.modules["SimpleITK"] = types.ModuleType("SimpleITK")

import numpy as np  # noqa: E402
import torch  # noqa: E402

HELD_OUT = ["case_002", "case_015", "case_031", "case_039"]
CONFIGS = {  # name: (size, output stride, lr, augment)
    "s192": (192, 16, 1e-4, True),   # the CPU recipe of the shipped model
    "s128": (128, 16, 1e-4, True),
    "s256": (256, 16, 1e-4, True),
    "s192-lr3e-4": (192, 16, 3e-4, True),
    "s192-os8": (192, 8, 1e-4, True),
    "s192-noaug": (192, 16, 1e-4, False),
}


def load_cases(npz: Path | None, names: list[str] | None = None):
    """{name: (Volume, labels)} from the npz or, without one, from the CHAOS folder."""
    from pairseg.io.volume import Volume

    if npz is None:
        from common import chaos_dir
        from pairseg.datasets import load_case, load_dataset

        dataset = load_dataset(chaos_dir())
        cases = {c.name: load_case(c, dataset) for c in dataset.cases if names is None or c.name in names}
        return cases, dataset.class_names
    meta = json.loads(npz.with_suffix(".json").read_text())
    arrays = np.load(npz)
    cases = {}
    for case in meta["cases"]:
        if names is not None and case["name"] not in names:
            continue
        image = arrays[case["name"] + "_image"].astype(np.float32)
        cases[case["name"]] = (Volume(image, tuple(case["spacing"]), tuple(case["origin"]), tuple(case["direction"])),
                               arrays[case["name"] + "_label"])
    return cases, meta["class_names"]


def score(model, cases: dict, names: list[str], class_names: list[str], spacing: float, size: int, device,
          fov=(1.0,), assd: bool = True) -> dict:
    """{fov: {case: metrics}} of ``model`` on ``names``, largest component kept."""
    from common import dice_only
    from pairseg.data import widen_field_of_view
    from pairseg.infer import predict_native
    from pairseg.metrics import evaluate_case
    from pairseg.postprocess import keep_largest_component

    out = {}
    for factor in fov:
        per_case = {}
        for name in names:
            volume, label = cases[name]
            source, (top, left) = (volume, (0, 0)) if factor == 1.0 else widen_field_of_view(volume, factor)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                pred, _ = predict_native(model, source, "MR", size, device, model_spacing=spacing,
                                         mr_rule="above-minimum")
            pred = keep_largest_component(pred, len(class_names))
            pred = pred[:, top:top + label.shape[1], left:left + label.shape[2]]
            spacing_zyx = tuple(float(s) for s in reversed(volume.spacing))
            result = (evaluate_case if assd else dice_only)(pred, label, spacing_zyx, class_names)
            per_case[name] = {k: result[k] for k in ("dice", "assd", "mean_dice") if k in result}
        out[str(factor)] = {"cases": per_case,
                            "mean_dice": float(np.mean([c["mean_dice"] for c in per_case.values()])),
                            "dice": {c: float(np.mean([v["dice"][c] for v in per_case.values()])) for c in class_names}}
    return out


def run_config(name: str, args) -> None:
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // len(args.configs)))
    torch.backends.cudnn.benchmark = True
    from common import make_config, train_with_milestones, write_json
    from pairseg.data import SliceStore

    device = torch.device(args.device)
    size, stride, lr, augment = CONFIGS[name]
    if args.dry_run:
        size = 64
    spacing = 320.0 / size  # every CHAOS case is 256 px of 1.25 mm: the field of view fills `size`
    cases, class_names = load_cases(args.data_npz)
    held_out = [n for n in HELD_OUT if n in cases][: (2 if args.dry_run else None)]
    training = [n for n in cases if n not in HELD_OUT][: (2 if args.dry_run else None)]
    store = SliceStore.from_volumes([cases[n][0] for n in training], [cases[n][1] for n in training], "MR", size,
                                    training, model_spacing=spacing, mr_rule="above-minimum")
    config = make_config("c2fcn", size, args.batch_size, seed=0, augment=augment, lr=lr, output_stride=stride,
                         amp=True)
    config.channels_last = True
    milestones = [int(m) for m in args.milestones.split(",")]
    result = {"config": name, "size": size, "spacing_mm": spacing, "output_stride": stride, "lr": lr,
              "augment": augment, "batch_size": args.batch_size, "training_cases": training, "held_out": held_out,
              "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu", "milestones": []}
    path = Path(args.out) / f"{name}.json"
    started = time.time()

    def on_milestone(model, step, epochs, loss):
        last = step == max(milestones)
        fov = (1.0, 1.25, 1.5) if last else (1.0,)
        evaluation = score(model, cases, held_out, class_names, spacing, size, device, fov=fov, assd=last)
        result["milestones"].append({"step": step, "epochs": epochs, "loss": loss, "seconds": time.time() - started,
                                     "eval": evaluation})
        print(f"[{name}] step {step} Dice {100 * evaluation['1.0']['mean_dice']:.1f} "
              + " ".join(f"fov{f}={100 * evaluation[f]['mean_dice']:.1f}" for f in evaluation), flush=True)
        write_json(path, result)
        if last:
            final[0] = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if args.keep_weights:
                torch.save(final[0], Path(args.out) / f"{name}.pt")

    final: list = [None]
    info = train_with_milestones(store, "c2fcn", config, "MR", len(class_names), milestones, on_milestone, device,
                                 log_every=0)
    result["train"] = {k: v for k, v in info.items() if k != "loss_curve"}
    result["loss_curve"] = info["loss_curve"]
    write_json(path, result)

    if name != "s192" or args.ft_steps <= 0:
        return
    # Phase 2: fine-tune the 12-case model on one held-out case vs train from scratch on it.
    result["fine_tune"] = []
    for case in held_out[1:]:
        others = [n for n in held_out if n != case]
        one = SliceStore.from_volumes([cases[case][0]], [cases[case][1]], "MR", size, [case],
                                      model_spacing=spacing, mr_rule="above-minimum")
        row = {"train_case": case, "test_cases": others, "steps": args.ft_steps}
        for mode, init in (("fine-tuned", final[0]), ("scratch", None)):
            scores = {}

            def keep(model, step, epochs, loss, scores=scores):
                scores[step] = score(model, cases, others, class_names, spacing, size, device, assd=False)["1.0"]

            train_with_milestones(one, "c2fcn", config, "MR", len(class_names),
                                  sorted({args.ft_steps // 2, args.ft_steps}), keep, device, log_every=0,
                                  init_state=init)
            row[mode] = {str(step): s for step, s in scores.items()}
            print(f"[{name}] {mode} on {case}: Dice {100 * scores[args.ft_steps]['mean_dice']:.1f}", flush=True)
        result["fine_tune"].append(row)
        write_json(path, result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-npz", type=Path, help="CHAOS as npz (default: read ../shared/data/chaos_t2)")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--milestones", default="500,1000,2000,3000,4500,6000,8000")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--ft-steps", type=int, default=500)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "recipe"))
    parser.add_argument("--keep-weights", action="store_true")
    parser.add_argument("--dry-run", action="store_true", help="CPU, 64 px, 2 training and 2 test cases, 4 steps")
    args = parser.parse_args()
    args.configs = args.configs.split(",")
    if args.dry_run:
        args.device, args.milestones, args.ft_steps = "cpu", "2,4", 2
        args.out = str(Path(__file__).resolve().parent / "work" / "recipe-dry")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if len(args.configs) == 1:
        run_config(args.configs[0], args)
        return
    context = mp.get_context("spawn")
    workers = [context.Process(target=run_config, args=(name, args), name=name) for name in args.configs]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    failed = [w.name for w in workers if w.exitcode != 0]
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
