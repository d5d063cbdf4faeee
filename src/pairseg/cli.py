"""``pairseg`` command line: train, segment, evaluate, proxy-maps, info, demo, fill.

Every command prints a progress bar for people, or with ``--events json`` one JSON object per
line for programs (the Slicer modules). Exit codes: 0 success, 2 bad input or an output that
cannot be written (after an ``error`` event naming the file and the problem), 1 any other
failure, 130 training stopped on request (a resumable checkpoint was written) or interrupted
(SIGINT), 143 terminated (SIGTERM) outside the training loop. A reader that closes stdout or stderr
early (``pairseg info M | head -1``) ends no command and causes no traceback (``_PipeSafe``).

Output locations are checked before any data or model is loaded (see ``pairseg.train.check_output_location`` and
``_segment_outputs``); numeric options are checked by argparse (``positive_int`` ...).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import traceback
import warnings
from pathlib import Path
from typing import Sequence

from pairseg import __version__
from pairseg.architectures import architecture
from pairseg.config import add_arguments as add_train_arguments
from pairseg.config import from_arguments as train_config_from_arguments
from pairseg.config import setting
from pairseg.constants import DEFAULT_FILL_METHOD, FILL_METHODS, INFERENCE_PRECISIONS, LABEL_SUFFIXES, MODALITIES
from pairseg.errors import PairSegInputError, PairSegOutputError, PairSegWarning
from pairseg.events import HumanEvents, JsonEvents

EXIT_BAD_INPUT = 2
EXIT_STOPPED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports a process SIGTERM ended


def _number(kind: type, minimum: float, inclusive: bool = True, maximum: float | None = None):
    """An argparse type: ``kind`` (int or float) at least (or above) ``minimum``, below ``maximum``."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if kind is float and value != value:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
        low_ok = value >= minimum if inclusive else value > minimum
        if not low_ok or (maximum is not None and not value < maximum):
            bound = f"{'>=' if inclusive else '>'} {minimum:g}" + (f" and < {maximum:g}" if maximum is not None else "")
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    parse.__name__ = f"{kind.__name__}"  # argparse names the type in its messages
    return parse


#: argparse types for numeric options (the ``train`` options use them too).
positive_int = _number(int, 1)
nonnegative_int = _number(int, 0)
positive_float = _number(float, 0.0, inclusive=False, maximum=float("inf"))
nonnegative_float = _number(float, 0.0, maximum=float("inf"))
fraction = _number(float, 0.0, maximum=1.0)  # 0 <= x < 1


class Terminated(BaseException):
    """SIGTERM arrived outside the training loop (which handles it itself, resumably)."""


def _on_sigterm(signum, frame):
    raise Terminated()


def _add_common(parser: argparse.ArgumentParser, device: bool = True) -> None:
    parser.add_argument("--events", choices=["human", "json"], default="human",
                        help="progress output: a progress bar (human) or JSON lines on stdout (json)")
    if device:
        parser.add_argument("--device", default="auto", help=setting("device").help)


def build_parser() -> argparse.ArgumentParser:
    """The `pairseg` command line: each sub-command's options in its ``_add_<command>_parser``; its
    work in ``cmd_<command>``, called from ``_run``."""
    parser = argparse.ArgumentParser(
        prog="pairseg", description="Pairwise medical image segmentation (CFCN, C2FCN; Wang et al., MedIA 2021).")
    parser.add_argument("--version", action="version", version=f"pairseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train_parser(sub)
    _add_segment_parser(sub)
    _add_evaluate_parser(sub)
    _add_proxy_maps_parser(sub)
    _add_info_parser(sub)
    _add_models_parser(sub)
    _add_demo_parser(sub)
    _add_fill_parser(sub)
    return parser


def _add_train_parser(sub) -> None:
    """Train a pairwise model (or a single-image baseline) on a dataset folder: a dataset.json
    (Medical Segmentation Decathlon style) or <case>_image/<case>_label files with --classes and
    --modality."""
    t = sub.add_parser("train", help="train a model on an annotated dataset folder",
                       description=_add_train_parser.__doc__)
    add_train_arguments(t)
    _add_common(t, device=False)  # --device is a training setting


def _add_segment_parser(sub) -> None:
    """Segment an image, a DICOM series folder, or a folder of images."""
    s = sub.add_parser("segment", help="segment images with a model", description=_add_segment_parser.__doc__)
    s.add_argument("--model", default=None,
                   help="model file or catalog model name (see `pairseg models`; default: the catalog's default model)")
    s.add_argument("--input", required=True, help="image file, DICOM folder, or folder of images")
    s.add_argument("--series", metavar="UID",
                   help="the DICOM series to segment when the --input folder holds several (the error lists them)")
    s.add_argument("--output", required=True,
                   help=f"label file ({', '.join(LABEL_SUFFIXES)}) or, for a folder input, an output folder")
    s.add_argument("--no-largest-component", action="store_true", help="keep every connected component")
    s.add_argument("--probabilities", help="also write per-class probabilities (file, or folder for a folder input)")
    s.add_argument("--uncertainty", help="also write an uncertainty map (summed binary entropy of the class "
                                         "probabilities, bits; file, or folder for a folder input) and list the "
                                         "slices to check first")
    s.add_argument("--uncertainty-classes", metavar="NAMES",
                   help="comma-separated classes the uncertainty map and slice ranking sum over (default: all; "
                        "for instance the structures being corrected)")
    s.add_argument("--modality", choices=MODALITIES, type=str.upper, help="refuse a model of another modality")
    s.add_argument("--batch-size", type=positive_int, default=16, help="slices per inference batch (default 16)")
    s.add_argument("--readout", choices=architecture("c2fcn").choices["readout"],
                   help="override a C2FCN model's read-out of f(x, x) (default: the model's own)")
    s.add_argument("--precision", choices=INFERENCE_PRECISIONS, default="auto", type=str.lower,
                   help="auto (default): bf16 where the CPU (AVX-512 BF16 or AMX) or GPU runs bfloat16 natively, "
                        "else fp32 (as train's auto, which runs CUDA in mixed precision); bf16: bfloat16 "
                        "autocast, the network 1.75-2.1x faster on such a CPU, Dice of the shipped model within "
                        "0.02 points of fp32 (benchmarks/RESULTS.md); refused where unsupported")
    s.add_argument("--format", default=".nii.gz",
                   help=f"output extension for folder inputs: {', '.join(LABEL_SUFFIXES)} (default .nii.gz)")
    _add_common(s)


def _add_evaluate_parser(sub) -> None:
    """Per case and class Dice and ASSD (mm); files or folders matched by case name."""
    e = sub.add_parser("evaluate", help="Dice and ASSD of predictions against references",
                       description=_add_evaluate_parser.__doc__)
    e.add_argument("--pred", required=True, help="predicted label file or folder")
    e.add_argument("--ref", required=True, help="reference label file or folder")
    e.add_argument("--classes", help="class names (default: the reference folder's dataset.json, else label values)")
    e.add_argument("--hd95", action="store_true", help="also report the 95th-percentile Hausdorff distance")
    e.add_argument("--json", help="write the full results as JSON here (.json)")


def _add_proxy_maps_parser(sub) -> None:
    """Ground-truth AND/XOR proxy maps (g_proxy) of two slices, and with --model the predicted ones,
    as PNG pictures and NIfTI images in slice A's geometry."""
    p = sub.add_parser("proxy-maps", help="write the AND/XOR proxy maps of two labelled slices",
                       description=_add_proxy_maps_parser.__doc__)
    p.add_argument("--label-a", required=True, help="label volume of slice A")
    p.add_argument("--slice-a", type=nonnegative_int, required=True)
    p.add_argument("--label-b", help="label volume of slice B (default: the same as A)")
    p.add_argument("--slice-b", type=nonnegative_int, required=True)
    p.add_argument("--image-a", help="image volume of slice A (needed with --model)")
    p.add_argument("--image-b", help="image volume of slice B (default: image A)")
    p.add_argument("--model", help="also write the model's predicted AND/XOR probability maps (file or catalog name)")
    p.add_argument("--classes", help="class names (default: the model's, or label values)")
    p.add_argument("--out", required=True, help="output folder")
    _add_common(p)


def _add_info_parser(sub) -> None:
    """Verify a model file (the checksum covers its weights and its metadata) and print what it
    records: architecture and options, classes and colours, modality, pixel spacing, training
    settings and validation. Takes a file or a catalog name."""
    i = sub.add_parser("info", help="verify a model file (checksum of weights and metadata) and print its metadata",
                       description=_add_info_parser.__doc__)
    i.add_argument("model", help="model file or catalog model name")
    i.add_argument("--json", action="store_true", help="print the metadata as JSON")


def _add_models_parser(sub) -> None:
    """The models that ship with PairSeg (Resources/Models/models.json): name, modality, classes,
    pixel spacing, held-out Dice. Use a name wherever a model file is taken."""
    m = sub.add_parser("models", help="list the ready models of the catalog", description=_add_models_parser.__doc__)
    m.add_argument("--json", action="store_true", help="print the catalog entries as JSON")


def _add_demo_parser(sub) -> None:
    """With no arguments: segment the embedded CHAOS MR case (Resources/SampleData, never seen by
    the shipped model) with the catalog's default model, print Dice/ASSD per organ against the
    expert label, write the .seg.nrrd and an overlay PNG. --train first fine-tunes the model briefly
    (the annotate-then-retrain loop)."""
    d = sub.add_parser("demo", help="segment the embedded sample case with the shipped model and report Dice/ASSD",
                       description=_add_demo_parser.__doc__)
    d.add_argument("--out", default="pairseg-demo-output", help="output folder (default pairseg-demo-output)")
    d.add_argument("--model", help="model file or catalog name (default: the catalog's default model)")
    d.add_argument("--data", help="dataset folder: its last case is segmented, the others fine-tune with --train "
                                  "(default: the embedded sample)")
    d.add_argument("--train", action="store_true", help="fine-tune the model first (the annotate-then-retrain loop)")
    d.add_argument("--steps", type=positive_int, default=60, help="fine-tuning steps with --train (default 60)")
    _add_common(d)


def _add_fill_parser(sub) -> None:
    """Fill every class between its first and last drawn slice: by ITK contour interpolation, or by
    a pairwise C2FCN learnt from the drawn slices of this volume (alone or fused with the
    interpolation): --method. Drawn voxels come back exactly as drawn; nothing is filled outside
    (--extend N: N slices more on each side)."""
    f = sub.add_parser("fill", help="fill a structure drawn on a few slices onto every slice in between",
                       description=_add_fill_parser.__doc__)
    f.add_argument("--image", required=True, help="image file (.nii.gz, .nrrd, .mha) or DICOM folder")
    f.add_argument("--label", required=True, help="the sparse label on the image's grid (.nii.gz, .nrrd, .seg.nrrd)")
    f.add_argument("--out", required=True, help="filled label file (.nii.gz, .nrrd, .seg.nrrd), image's geometry")
    f.add_argument("--base", default="auto",
                   help="model file or catalog name whose weights start the network (a new head: the classes count "
                        "as unknown), none (from scratch; needs --modality), or auto (the default: the catalog's "
                        "default model when --modality is absent or its own, else from scratch)")
    f.add_argument("--modality", choices=MODALITIES, type=str.upper, help="the image's modality (with --base none)")
    f.add_argument("--method", choices=FILL_METHODS, default=DEFAULT_FILL_METHOD,
                   help="mci (ITK contour interpolation, as Slicer's Fill between slices; no training; the default: "
                        "it measured best within a CPU budget, benchmarks/RESULTS.md), fusion (a pairwise network "
                        "trained on the drawn slices + the contour-interpolation prior), pairwise (the network alone)")
    f.add_argument("--budget-s", type=positive_float, default=None,
                   help="training seconds (default 180 on a CPU, 60 on a GPU)")
    f.add_argument("--extend", type=nonnegative_int, default=0, help="fill N slices beyond each class's drawn range")
    f.add_argument("--size", type=positive_int, default=128, help="training size in pixels with --base none (default 128)")
    f.add_argument("--seed", type=nonnegative_int, default=0)
    f.add_argument("--save-model", help="also write the learned model (.pairseg), to segment the next volume")
    f.add_argument("--overwrite", action="store_true", help="replace an existing --out or --save-model file")
    _add_common(f)


# ---------------------------------------------------------------------------------------------


def cmd_train(args, events) -> int:
    from pairseg.train import train

    result = train(train_config_from_arguments(args), events)
    return EXIT_STOPPED if result.stopped else 0


def _output_for(input_path: Path, output: Path, suffix: str, many: bool) -> Path:
    if not many:
        return output
    from pairseg.datasets import case_name

    return output / (case_name(input_path) + suffix)


#: The optional image outputs of `pairseg segment`: option, attribute, file name suffix in a folder.
SEGMENT_MAPS = (("--probabilities", "probabilities", ".probabilities.nii.gz"),
                ("--uncertainty", "uncertainty", ".uncertainty.nii.gz"))


def _segment_outputs(args, inputs: list[Path], many: bool) -> list[tuple[Path, Path, dict]]:
    """(input, label output, {attribute: map output}) per case, every location checked before
    any model or image is loaded: file types, folders, writability, and no output that is an
    input or another output (two inputs of one case name included). Stale temporaries are removed."""
    from pairseg.constants import WRITABLE_IMAGE_SUFFIXES
    from pairseg.atomic import remove_stale_temporaries
    from pairseg.io.locations import check_distinct, check_output

    output = Path(args.output)  # folders are made by the (atomic) writes: a refused run leaves none
    maps = [(option, name, suffix, Path(getattr(args, name)))
            for option, name, suffix in SEGMENT_MAPS if getattr(args, name, None)]
    if many:
        check_output(output, what="--output", folder=True)
        for option, _, _, folder in maps:
            check_output(folder, what=option, folder=True)
    cases = []
    for path in inputs:
        target = _output_for(path, output, args.format, many)
        check_output(target, LABEL_SUFFIXES, "--output")
        extra = {}
        for option, name, suffix, where in maps:
            extra[name] = _output_for(path, where, suffix, many)
            check_output(extra[name], WRITABLE_IMAGE_SUFFIXES, option)
        cases.append((path, target, extra))
    options = {name: option for option, name, _ in SEGMENT_MAPS}
    check_distinct([Path(args.input), *inputs, Path(args.model)],
                   [(option, path) for _, target, extra in cases
                    for option, path in [("--output", target)] + [(options[n], p) for n, p in extra.items()]])
    for _, target, extra in cases:
        for path in (target, *extra.values()):
            remove_stale_temporaries(path)
    return cases


def cmd_segment(args, events) -> int:
    from pairseg.infer import Predictor, list_inputs

    inputs = list_inputs(args.input)
    many = Path(args.input).is_dir() and inputs != [Path(args.input)]
    if args.series and (many or not Path(args.input).is_dir()):
        raise PairSegInputError(f"{args.input}: --series picks a series of a DICOM folder; this input is "
                                f"{'a folder of image files' if many else 'an image file'}")
    if args.model is None:
        from pairseg.modelfiles.catalog import load_catalog

        catalog = load_catalog()
        if catalog.default is None:
            raise PairSegInputError(f"no --model given and no default catalog model ({catalog.path})")
        args.model = catalog.default
    cases = _segment_outputs(args, inputs, many)
    predictor = Predictor(args.model, args.device, batch_size=args.batch_size, readout=args.readout,
                          precision=args.precision)
    predictor.check_request(args.modality)
    if args.uncertainty_classes and not args.uncertainty:
        raise PairSegInputError("--uncertainty-classes needs --uncertainty")
    uncertainty_classes = [n.strip() for n in (args.uncertainty_classes or "").split(",") if n.strip()]
    predictor.class_indices(uncertainty_classes)  # an unknown class is refused before any image is read
    events("start", model=args.model, device=str(predictor.device), precision=predictor.precision,
           inputs=[str(p) for p in inputs], classes=predictor.class_names)
    written: list[Path] = []
    failed: list[tuple[Path, str, bool]] = []  # (input, message, bad input?)
    for number, (path, target, extra) in enumerate(cases, 1):
        def progress(event, **fields):
            if event == "progress":
                fields.update(case=number, cases=len(inputs),
                              fraction=(number - 1 + fields.get("fraction", 0.0)) / len(inputs))
            events(event, **fields)

        try:
            written += predictor.segment_file(path, target, probabilities_path=extra.get("probabilities"),
                                              uncertainty_path=extra.get("uncertainty"), series_id=args.series,
                                              uncertainty_classes=uncertainty_classes,
                                              keep_largest=not args.no_largest_component, events=progress)
        except Exception as error:  # a folder run goes on with the other cases
            if not many:
                raise
            bad_input = isinstance(error, PairSegInputError)
            message = str(error) if bad_input else f"{type(error).__name__}: {error}"
            failed.append((path, message, bad_input))
            events("message", text=f"case {path.name} failed: {message}")
    outputs = [str(p) for p in written]
    if failed:
        events("done", outputs=outputs, failed=[str(p) for p, _, _ in failed], classes=predictor.class_names,
               colors=predictor.metadata["class_colors"])
        all_input = all(bad for _, _, bad in failed)
        events("error", kind="input" if all_input else "internal",
               message=f"{len(failed)} of {len(cases)} case(s) failed: "
                       + "; ".join(f"{p.name}: {m}" for p, m, _ in failed)
                       + f". Written: {', '.join(outputs) if outputs else 'nothing'}")
        return EXIT_BAD_INPUT if all_input else 1
    events("done", outputs=outputs, classes=predictor.class_names,
           colors=predictor.metadata["class_colors"])
    return 0


def _class_names_for(ref: Path, given: str | None) -> list[str] | None:
    from pairseg.datasets import parse_classes

    if given:
        return parse_classes(given)
    folder = ref if ref.is_dir() else ref.parent
    manifest = folder / "dataset.json"
    if manifest.is_file():
        labels = json.loads(manifest.read_text()).get("labels", {})
        return [labels[k] for k in sorted(labels, key=int) if int(k) != 0]
    return None


def _pair_files(pred: Path, ref: Path) -> list[tuple[str, Path, Path]]:
    from pairseg.constants import READABLE_IMAGE_SUFFIXES
    from pairseg.datasets import case_name

    for option, path in (("--pred", pred), ("--ref", ref)):
        if not path.exists():
            raise PairSegInputError(f"{path}: {option} does not exist")
    if pred.is_file() and ref.is_file():
        return [(case_name(ref), pred, ref)]
    if not (pred.is_dir() and ref.is_dir()):
        raise PairSegInputError(f"--pred and --ref must both be files or both folders ({pred}, {ref})")

    def index(folder: Path) -> dict[str, Path]:
        from pairseg.io.locations import refuse_dangling_links

        refuse_dangling_links(folder, lambda name: name.endswith(READABLE_IMAGE_SUFFIXES) and "_image" not in name)
        found = {}
        for path in sorted(folder.iterdir()):
            if path.name.endswith(READABLE_IMAGE_SUFFIXES) and "_image" not in path.name:
                found[case_name(path)] = path
        return found

    preds, refs = index(pred), index(ref)
    common = sorted(set(preds) & set(refs))
    if not common:
        raise PairSegInputError(f"no case names in common between {pred} and {ref}")
    return [(name, preds[name], refs[name]) for name in common]


def cmd_evaluate(args) -> int:
    from pairseg.atomic import remove_stale_temporaries
    from pairseg.io.locations import check_distinct, check_output
    from pairseg.io.read import read_label, read_label_volume
    from pairseg.metrics import evaluate_case, format_table, summarize

    pred_root, ref_root = Path(args.pred), Path(args.ref)
    pairs = _pair_files(pred_root, ref_root)
    if args.json:
        check_output(args.json, (".json",), "--json")
        manifest = (ref_root if ref_root.is_dir() else ref_root.parent) / "dataset.json"  # read for class names
        check_distinct([pred_root, ref_root, manifest, *(p for _, a, b in pairs for p in (a, b))],
                       [("--json", args.json)])
        remove_stale_temporaries(args.json)
    names = _class_names_for(ref_root, args.classes)
    cases = []
    for case, pred_path, ref_path in pairs:
        reference, class_names = read_label_volume(ref_path, class_names=names)
        pred, _ = read_label(pred_path, class_names=class_names, reference=reference)
        result = evaluate_case(pred, reference.array, reference.spacing_zyx, class_names, hd95=args.hd95)
        result["case"] = case
        cases.append(result)
    summary = summarize(cases)
    print(format_table(summary, cases))
    if args.json:
        from pairseg.events import jsonable
        from pairseg.io.write import write_text

        write_text(args.json, json.dumps(jsonable({"cases": cases, "summary": summary}), indent=1))
    return 0


#: The files ``proxy-maps`` writes into its --out folder.
PROXY_MAP_FILES = ("and.nii.gz", "xor.nii.gz", "proxy_truth.png", "and_predicted.nii.gz", "xor_predicted.nii.gz",
                   "proxy_predicted.png")


def cmd_proxy_maps(args, events) -> int:
    from pairseg.atomic import remove_stale_temporaries, write_together
    from pairseg.io.locations import check_distinct, check_output
    from pairseg.proxymaps import write_proxy_maps

    folder = check_output(args.out, what="--out", folder=True)
    check_distinct([args.label_a, args.label_b, args.image_a, args.image_b, args.model],
                   [(f"--out file {name}", folder / name) for name in PROXY_MAP_FILES])
    for name in PROXY_MAP_FILES:
        remove_stale_temporaries(folder / name)
    with write_together():  # the NIfTI maps appear together or not at all
        outputs = write_proxy_maps(
        label_a=args.label_a, slice_a=args.slice_a, label_b=args.label_b, slice_b=args.slice_b,
        image_a=args.image_a, image_b=args.image_b, model=args.model, classes=args.classes,
        out=args.out, device=args.device)
    events("done", outputs=[str(p) for p in outputs])
    return 0


def cmd_info(args) -> int:
    from pairseg.modelfiles.catalog import resolve_model
    from pairseg.modelfiles.weights import read_metadata
    from pairseg.modelfiles.fileformat import read_model_bytes, stored_format_version

    path = resolve_model(args.model)
    meta = read_metadata(path)  # checksum verified, metadata migrated and validated
    if args.json:
        print(json.dumps(meta, indent=1, sort_keys=True))
        return 0
    training = meta.get("training", {})
    print(f"model        {args.model}")
    print(f"architecture {meta['arch']} {meta.get('options', {})}")
    print(f"classes      {', '.join(meta['class_names'])}")
    print(f"modality     {meta['modality']}   size {meta['size']}   spacing "
          + (f"{meta['spacing']} mm" if meta["spacing"] else "none (slices resized)"))
    print(f"trained on   {len(training.get('cases', []))} case(s), {training.get('slices')} slices, "
          f"{training.get('steps')} steps, {training.get('epochs')} epoch{'' if training.get('epochs') == 1 else 's'}")
    val = meta.get("validation") or {}
    if val.get("dice"):
        dice, order = val["dice"], list(meta.get("class_names", []))  # the model's class order
        names = [n for n in order if n in dice] + [n for n in dice if n not in order]
        print("validation   " + ", ".join(f"{n} {dice[n]:.3f}" for n in names if dice[n] is not None))
    print(f"engine       {meta.get('engine_version')}   created {meta.get('created')}")
    version = stored_format_version(read_model_bytes(path), path)
    print(f"file         format {version}, {meta['weights_dtype']} weights, " +
          ("sha256 of weights and metadata verified" if version >= 2 else
           "an older format whose sha256 covers the weights only (verified); metadata migrated"))
    return 0


def cmd_models(args) -> int:
    from pairseg.modelfiles.catalog import load_catalog

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


def cmd_fill(args, events) -> int:
    from pairseg.fill import fill_files

    base = args.base
    fill_files(args.image, args.label, args.out, save_model=args.save_model, overwrite=args.overwrite,
               events=events, method=args.method,
               base=base, modality=args.modality, budget_s=args.budget_s, device=args.device, extend=args.extend,
               size=args.size, seed=args.seed)
    return 0


def cmd_demo(args, events) -> int:
    from pairseg.demo import run_demo

    run_demo(out=args.out, model=args.model, data=args.data, train=args.train, steps=args.steps, device=args.device,
             events=events)
    return 0


class _PipeSafe:
    """A text stream that survives its reader going away (``pairseg info M | head -1``): the first
    BrokenPipeError points the file descriptor at the null device and later text is dropped, so
    the command finishes its work (a segment run still writes its output) and exits without a
    traceback, also at the interpreter's final flush."""

    def __init__(self, stream):
        self._stream = stream
        self.broken = False

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._drop()
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._drop()

    def _drop(self) -> None:
        self.broken = True
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(null, self._stream.fileno())
            finally:
                os.close(null)
        except (AttributeError, OSError, ValueError):  # not a real file (a test's capture)
            pass

    def __getattr__(self, name):
        return getattr(self._stream, name)


def main(argv: Sequence[str] | None = None) -> int:
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = (s if s is None or isinstance(s, _PipeSafe) else _PipeSafe(s) for s in streams)
    try:
        return _main(argv)
    finally:
        sys.stdout, sys.stderr = streams


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    json_mode = getattr(args, "events", "human") == "json"
    events = JsonEvents() if json_mode else HumanEvents()
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: only rank 0 speaks on stdout
        events = HumanEvents(quiet=True)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
    try:
        with warnings.catch_warnings():
            # PairSeg's own warnings (a NIfTI whose qform and sform disagree ...) reach the user as messages.
            warnings.simplefilter("always", PairSegWarning)
            show = warnings.showwarning

            def report(message, category, *rest):
                if issubclass(category, PairSegWarning):
                    events("message", text=f"warning: {message}")
                else:
                    show(message, category, *rest)

            warnings.showwarning = report
            return _run(args, events, json_mode)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def _run(args, events, json_mode: bool) -> int:
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
        if args.command == "fill":
            return cmd_fill(args, events)
    except PairSegInputError as error:
        events("error", message=str(error), kind="output" if isinstance(error, PairSegOutputError) else "input")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        events("error", message="interrupted", kind="interrupted")
        return EXIT_STOPPED
    except Terminated:
        events("error", message="terminated (SIGTERM)", kind="terminated")
        return EXIT_TERMINATED
    except Exception as error:  # report, then fail
        events("error", message=f"{type(error).__name__}: {error}", kind="internal")
        if not json_mode:
            traceback.print_exc()
        return 1
    return 1


if __name__ == "__main__":
    sys.exit(main())
