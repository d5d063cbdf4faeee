"""``pairseg`` command line: train, segment, evaluate, proxy-maps, info, demo.

Every command prints a progress bar for people, or with ``--events json`` one JSON object per
line for programs (the Slicer modules). Exit codes: 0 success, 2 bad input (after an ``error``
event naming the file and the problem), 1 any other failure, 130 training stopped on request
(a resumable checkpoint was written).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Sequence

from pairseg import __version__
from pairseg.errors import PairSegInputError
from pairseg.events import HumanEvents, JsonEvents

EXIT_BAD_INPUT = 2
EXIT_STOPPED = 130


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from error
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", choices=["human", "json"], default="human",
                        help="progress output: a progress bar (human) or JSON lines on stdout (json)")
    parser.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pairseg", description="Pairwise medical image segmentation (CFCN, C2FCN; Wang et al., MedIA 2021).")
    parser.add_argument("--version", action="version", version=f"pairseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a model on an annotated dataset folder",
                       description="Train a pairwise model (or a single-image baseline) on a dataset folder: "
                                   "a dataset.json (Medical Segmentation Decathlon style) or <case>_image/<case>_label "
                                   "files with --classes and --modality.")
    t.add_argument("--data", required=True, help="dataset folder")
    t.add_argument("--out", required=True, help="model file to write (e.g. liver.pairseg)")
    t.add_argument("--arch", choices=["c2fcn", "cfcn", "deeplabv3plus", "unet", "siamfcn"], default=None,
                   help="architecture (default c2fcn, or the --init-from model's)")
    budget = t.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=int, help="number of epochs (default 20)")
    budget.add_argument("--steps", type=int, help="number of optimiser steps")
    t.add_argument("--size", type=int, default=256, help="training slice size in pixels (default 256)")
    t.add_argument("--spacing", type=float, help="in-plane pixel spacing of the model in mm (default: the training "
                                                  "set's median field of view divided by --size); slices are resampled "
                                                  "to it for training and inference")
    t.add_argument("--batch-size", type=int, default=8, help="samples (pairs) per step and GPU (default 8)")
    t.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (default 1e-4)")
    t.add_argument("--weight-decay", type=float, default=5e-4, help="Adam weight decay (default 5e-4)")
    t.add_argument("--seed", type=int, default=0)
    val = t.add_mutually_exclusive_group()
    val.add_argument("--val", help="validation dataset folder")
    val.add_argument("--val-fraction", type=float, default=0.0, help="hold out this fraction of the cases for validation")
    t.add_argument("--resume", action="store_true", help="continue from <out>.ckpt")
    t.add_argument("--init-from", help="fine-tune from this model file or catalog model name")
    t.add_argument("--cross-modality", action="store_true",
                   help="allow --init-from a model of another modality (e.g. an MR model on CT data); the new model "
                        "records the dataset's modality and normalisation")
    t.add_argument("--classes", help='class names for a folder without dataset.json, e.g. liver,"right kidney"')
    t.add_argument("--modality", choices=["MR", "CT"], type=str.upper, help="modality for a folder without dataset.json")
    t.add_argument("--cases", help="comma-separated case names to train on (default all)")
    g = t.add_argument_group("pair sampling")
    g.add_argument("--pair-mode", choices=["intra+inter", "intra", "inter", "identical"], default="intra+inter")
    g.add_argument("--offsets", type=_int_list, help="intra-patient slice offsets (default 3,5,7 MR; 5,9,13 CT)")
    g.add_argument("--inter-repeats", type=int, default=2, help="inter-patient pairs per slice and epoch (default 2)")
    g.add_argument("--margin", type=int, help="keep only slices within this many slices of the labelled range")
    n = t.add_argument_group("network")
    n.add_argument("--output-stride", type=int, choices=[8, 16], default=8)
    n.add_argument("--aggregate", choices=["sum", "max"], default="sum", help="C2FCN feature aggregation")
    n.add_argument("--readout", choices=["union", "and"],
                   help="C2FCN read-out of f(x, x): AND or XOR (union; the default) or the AND channels "
                        "alone (paper Eq. 12; the default with --pair-mode identical); see benchmarks/RESULTS.md")
    n.add_argument("--base", choices=["deeplabv3plus", "unet"], default="deeplabv3plus", help="network a pairwise model wraps")
    n.add_argument("--sync-batchnorm", action="store_true", help="synchronise BatchNorm across GPUs (torchrun)")
    n.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    n.add_argument("--no-amp", action="store_true", help="disable mixed precision on CUDA")
    n.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="auto: mixed precision on CUDA, fp32 elsewhere; bf16: bfloat16 autocast on a CPU or GPU "
                        "with a native bfloat16 path (about 2x faster training on AVX-512 BF16/AMX CPUs; "
                        "benchmarks/RESULTS.md), refused elsewhere")
    a = t.add_argument_group("augmentation")
    a.add_argument("--no-augment", action="store_true", help="no augmentation")
    a.add_argument("--rotation", type=float, default=10.0, help="max rotation in degrees (default 10)")
    a.add_argument("--scale", type=float, default=0.1, help="max relative scaling (default 0.1)")
    a.add_argument("--flip", action="store_true", help="random left-right flips (swaps lateral organs: off by default)")
    a.add_argument("--intensity", type=float, default=0.1, help="brightness/contrast jitter (default 0.1)")
    t.add_argument("--validate-every", type=int, default=1, help="validate every N epochs (default 1)")
    t.add_argument("--stop-file", help="stop cleanly (resumable) when this file appears")
    _add_common(t)

    s = sub.add_parser("segment", help="segment images with a model",
                       description="Segment an image, a DICOM series folder, or a folder of images.")
    s.add_argument("--model", default=None,
                   help="model file or catalog model name (see `pairseg models`; default: the catalog's default model)")
    s.add_argument("--input", required=True, help="image file, DICOM folder, or folder of images")
    s.add_argument("--output", required=True,
                   help="label file (.nii.gz, .nrrd, .seg.nrrd) or, for a folder input, an output folder")
    s.add_argument("--no-largest-component", action="store_true", help="keep every connected component")
    s.add_argument("--probabilities", help="also write per-class probabilities (file, or folder for a folder input)")
    s.add_argument("--modality", choices=["MR", "CT"], type=str.upper, help="refuse a model of another modality")
    s.add_argument("--batch-size", type=int, default=16, help="slices per inference batch (default 16)")
    s.add_argument("--readout", choices=["and", "union"],
                   help="override a C2FCN model's read-out of f(x, x) (default: the model's own)")
    s.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: bfloat16 autocast, about 1.9x faster on CPUs with AVX-512 BF16 or AMX, Dice "
                        "within 0.2 points of fp32 on CHAOS (benchmarks/RESULTS.md); refused where unsupported")
    s.add_argument("--format", default=".nii.gz", help="output extension for folder inputs (default .nii.gz)")
    _add_common(s)

    e = sub.add_parser("evaluate", help="Dice and ASSD of predictions against references",
                       description="Per case and class Dice and ASSD (mm); files or folders matched by case name.")
    e.add_argument("--pred", required=True, help="predicted label file or folder")
    e.add_argument("--ref", required=True, help="reference label file or folder")
    e.add_argument("--classes", help="class names (default: the reference folder's dataset.json, else label values)")
    e.add_argument("--hd95", action="store_true", help="also report the 95th-percentile Hausdorff distance")
    e.add_argument("--json", help="write the full results as JSON here")

    p = sub.add_parser("proxy-maps", help="write the AND/XOR proxy maps of two labelled slices",
                       description="Ground-truth AND/XOR proxy maps (g_proxy) of two slices, and with --model the "
                                   "predicted ones, as PNG pictures and NIfTI images in slice A's geometry.")
    p.add_argument("--label-a", required=True, help="label volume of slice A")
    p.add_argument("--slice-a", type=int, required=True)
    p.add_argument("--label-b", help="label volume of slice B (default: the same as A)")
    p.add_argument("--slice-b", type=int, required=True)
    p.add_argument("--image-a", help="image volume of slice A (needed with --model)")
    p.add_argument("--image-b", help="image volume of slice B (default: image A)")
    p.add_argument("--model", help="also write the model's predicted AND/XOR probability maps (file or catalog name)")
    p.add_argument("--classes", help="class names (default: the model's, or label values)")
    p.add_argument("--out", required=True, help="output folder")
    _add_common(p)

    i = sub.add_parser("info", help="print a model file's metadata")
    i.add_argument("model", help="model file or catalog model name")
    i.add_argument("--json", action="store_true", help="print the raw metadata JSON")

    m = sub.add_parser("models", help="list the ready models of the catalog",
                       description="The models that ship with PairSeg (Resources/Models/models.json): name, modality, "
                                   "classes, pixel spacing, held-out Dice. Use a name wherever a model file is taken.")
    m.add_argument("--json", action="store_true", help="print the catalog entries as JSON")

    d = sub.add_parser("demo", help="train briefly, segment a held-out case and report Dice/ASSD",
                       description="With no arguments: generate phantom MR volumes, train a C2FCN briefly, segment a "
                                   "held-out volume, print Dice/ASSD and write every output. --data takes a real dataset.")
    d.add_argument("--data", help="dataset folder (default: generated phantoms)")
    d.add_argument("--out", default="pairseg-demo-output", help="output folder (default pairseg-demo-output)")
    d.add_argument("--arch", default="c2fcn", choices=["c2fcn", "cfcn", "deeplabv3plus", "unet", "siamfcn"])
    d.add_argument("--train-cases", type=int, default=2, help="number of training cases (default 2)")
    d.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    d.add_argument("--size", type=int, default=96, help="training size (default 96)")
    d.add_argument("--batch-size", type=int, default=8)
    _add_common(d)
    return parser


# ---------------------------------------------------------------------------------------------


def _augment_config(args):
    from pairseg.augment import AugmentConfig

    return AugmentConfig(enabled=not args.no_augment, rotation_deg=args.rotation, scale=args.scale,
                         flip_lr=args.flip, brightness=args.intensity, contrast=args.intensity)


def cmd_train(args, events) -> int:
    from pairseg.train import TrainConfig, train

    config = TrainConfig(
        data=args.data, out=args.out, arch=args.arch, epochs=args.epochs, steps=args.steps, size=args.size,
        spacing=args.spacing, cross_modality=args.cross_modality,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, device=args.device,
        seed=args.seed, val=args.val, val_fraction=args.val_fraction, resume=args.resume,
        init_from=args.init_from, classes=args.classes, modality=args.modality,
        cases=[c.strip() for c in args.cases.split(",")] if args.cases else None,
        pair_mode=args.pair_mode, offsets=args.offsets, inter_repeats=args.inter_repeats, margin=args.margin,
        augment=_augment_config(args), output_stride=args.output_stride, aggregate=args.aggregate,
        base=args.base, readout=args.readout, amp=not args.no_amp, precision=args.precision, channels_last=args.channels_last,
        sync_batchnorm=args.sync_batchnorm, stop_file=args.stop_file, validate_every=args.validate_every)
    result = train(config, events)
    return EXIT_STOPPED if result.stopped else 0


def _output_for(input_path: Path, output: Path, suffix: str, many: bool) -> Path:
    if not many:
        return output
    from pairseg.data import _case_name

    return output / (_case_name(input_path) + suffix)


def cmd_segment(args, events) -> int:
    from pairseg.infer import Predictor, list_inputs

    inputs = list_inputs(args.input)
    many = Path(args.input).is_dir() and inputs != [Path(args.input)]
    output = Path(args.output)  # folders are made by the (atomic) writes: a refused run leaves none
    if args.model is None:
        from pairseg.catalog import load_catalog

        catalog = load_catalog()
        if catalog.default is None:
            raise PairSegInputError(f"no --model given and no default catalog model ({catalog.path})")
        args.model = catalog.default
    predictor = Predictor(args.model, args.device, batch_size=args.batch_size, readout=args.readout,
                          precision=args.precision)
    predictor.check_request(args.modality)
    events("start", model=args.model, device=str(predictor.device), inputs=[str(p) for p in inputs],
           classes=predictor.class_names)
    written = []
    for number, path in enumerate(inputs, 1):
        def progress(event, **fields):
            if event == "progress":
                fields.update(case=number, cases=len(inputs),
                              fraction=(number - 1 + fields.get("fraction", 0.0)) / len(inputs))
            events(event, **fields)

        target = _output_for(path, output, args.format, many)
        probs = _output_for(path, Path(args.probabilities), ".probabilities.nii.gz", many) if args.probabilities else None
        written += predictor.segment_file(path, target, probabilities_path=probs,
                                          keep_largest=not args.no_largest_component, events=progress)
    events("done", outputs=[str(p) for p in written], classes=predictor.class_names,
           colors=predictor.metadata["class_colors"])
    return 0


def _class_names_for(ref: Path, given: str | None) -> list[str] | None:
    from pairseg.data import parse_classes

    if given:
        return parse_classes(given)
    folder = ref if ref.is_dir() else ref.parent
    manifest = folder / "dataset.json"
    if manifest.is_file():
        labels = json.loads(manifest.read_text()).get("labels", {})
        return [labels[k] for k in sorted(labels, key=int) if int(k) != 0]
    return None


def _pair_files(pred: Path, ref: Path) -> list[tuple[str, Path, Path]]:
    from pairseg.data import IMAGE_SUFFIXES, _case_name

    if pred.is_file() and ref.is_file():
        return [(_case_name(ref), pred, ref)]
    if not (pred.is_dir() and ref.is_dir()):
        raise PairSegInputError(f"--pred and --ref must both be files or both folders ({pred}, {ref})")

    def index(folder: Path) -> dict[str, Path]:
        found = {}
        for path in sorted(folder.iterdir()):
            if path.name.endswith(IMAGE_SUFFIXES) and "_image" not in path.name:
                found[_case_name(path)] = path
        return found

    preds, refs = index(pred), index(ref)
    common = sorted(set(preds) & set(refs))
    if not common:
        raise PairSegInputError(f"no case names in common between {pred} and {ref}")
    return [(name, preds[name], refs[name]) for name in common]


def cmd_evaluate(args) -> int:
    from pairseg.io import read_label, read_label_volume
    from pairseg.metrics import evaluate_case, format_table, summarize

    pred_root, ref_root = Path(args.pred), Path(args.ref)
    names = _class_names_for(ref_root, args.classes)
    cases = []
    for case, pred_path, ref_path in _pair_files(pred_root, ref_root):
        reference, class_names = read_label_volume(ref_path, class_names=names)
        pred, _ = read_label(pred_path, class_names=class_names, reference=reference)
        result = evaluate_case(pred, reference.array, reference.spacing_zyx, class_names, hd95=args.hd95)
        result["case"] = case
        cases.append(result)
    summary = summarize(cases)
    print(format_table(summary, cases))
    if args.json:
        from pairseg.events import _jsonable

        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(_jsonable({"cases": cases, "summary": summary}), indent=1))
    return 0


def cmd_proxy_maps(args, events) -> int:
    from pairseg.proxymaps import write_proxy_maps

    outputs = write_proxy_maps(
        label_a=args.label_a, slice_a=args.slice_a, label_b=args.label_b, slice_b=args.slice_b,
        image_a=args.image_a, image_b=args.image_b, model=args.model, classes=args.classes,
        out=args.out, device=args.device)
    events("done", outputs=[str(p) for p in outputs])
    return 0


def cmd_info(args) -> int:
    from pairseg.modelfile import read_metadata

    from pairseg.catalog import resolve_model

    meta = read_metadata(resolve_model(args.model))
    if args.json:
        print(json.dumps(meta, indent=1, sort_keys=True))
        return 0
    training = meta.get("training", {})
    print(f"model        {args.model}")
    print(f"architecture {meta['arch']} {meta.get('options', {})}")
    print(f"classes      {', '.join(meta['class_names'])}")
    print(f"modality     {meta['modality']}   size {meta['size']}")
    print(f"trained on   {len(training.get('cases', []))} case(s), {training.get('slices')} slices, "
          f"{training.get('steps')} steps, {training.get('epochs')} epochs")
    val = meta.get("validation") or {}
    if val.get("dice"):
        print("validation   " + ", ".join(f"{k} {v:.3f}" for k, v in val["dice"].items() if v is not None))
    print(f"engine       {meta.get('engine_version')}   created {meta.get('created')}")
    return 0


def cmd_models(args) -> int:
    from pairseg.catalog import load_catalog

    catalog = load_catalog()
    if args.json:
        print(json.dumps({"catalog": str(catalog.path), "default": catalog.default,
                          "models": [{**{k: v for k, v in vars(e).items() if k != "extra"}, "file": str(e.file),
                                      "available": e.available} for e in catalog.entries]}, indent=1))
        return 0
    if not catalog.entries:
        print(f"no catalog models ({catalog.path} not found)")
        return 0
    for entry in catalog.entries:
        flag = " (default)" if entry.name == catalog.default else ""
        state = "" if entry.available else "   [file missing]"
        print(f"{entry.name}{flag}   {entry.title}, v{entry.version}{state}")
        print(f"    {entry.modality}, {', '.join(entry.class_names)}; {entry.arch} at {entry.spacing_mm:.3g} mm "
              f"pixels, {entry.size}x{entry.size}; {entry.file_size_bytes / 1e6:.1f} MB")
        evaluation = entry.evaluation
        dice = ", ".join(f"{k} {100 * v:.1f}" for k, v in evaluation.get("dice", {}).items())
        print(f"    Dice on held-out {evaluation.get('case')}: {dice} (mean {100 * evaluation.get('mean_dice', 0):.1f}); "
              f"segments it in {entry.cpu_segment_seconds:.0f} s on a 2-core CPU")
    return 0


def cmd_demo(args, events) -> int:
    from pairseg.demo import run_demo

    run_demo(data=args.data, out=args.out, arch=args.arch, train_cases=args.train_cases, steps=args.steps,
             size=args.size, batch_size=args.batch_size, device=args.device, events=events)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    json_mode = getattr(args, "events", "human") == "json"
    events = JsonEvents() if json_mode else HumanEvents()
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: only rank 0 speaks on stdout
        events = HumanEvents(quiet=True)
    try:
        if args.command == "train":
            return cmd_train(args, events)
        if args.command == "segment":
            return cmd_segment(args, events)
        if args.command == "evaluate":
            return cmd_evaluate(args)
        if args.command == "proxy-maps":
            return cmd_proxy_maps(args, events)
        if args.command == "info":
            return cmd_info(args)
        if args.command == "models":
            return cmd_models(args)
        if args.command == "demo":
            return cmd_demo(args, events)
    except PairSegInputError as error:
        events("error", message=str(error), kind="input")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        events("error", message="interrupted", kind="interrupted")
        return EXIT_STOPPED
    except Exception as error:  # report, then fail
        events("error", message=f"{type(error).__name__}: {error}", kind="internal")
        if not json_mode:
            traceback.print_exc()
        return 1
    return 1


if __name__ == "__main__":
    sys.exit(main())
