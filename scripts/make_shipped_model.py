"""Package a trained model as a catalog model and measure it on the embedded sample case.

Takes what `scripts/train_on_device.py --half-out` brought back (the engine's metadata and the
weights as float16, in pieces) or a model file, writes ``Resources/Models/<name>.pairseg`` with
float16 weights (loaded as float32), segments the held-out sample case
(``Resources/SampleData/case_002``) on the CPU with ``pairseg segment`` as a user would, scores
it against the expert label (Dice, ASSD), repeats with the same anatomy in a 1.25x and 1.5x
wider field of view (400 and 480 mm instead of 320, padded with background, scored on the
original region), and writes the catalog entry and ``benchmarks/results/shipped_model.json``.

    .venv/bin/python scripts/make_shipped_model.py --pieces DIR      # or --model FILE
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pairseg.modelfiles.catalog import CATALOG_FILE, file_sha256  # noqa: E402
from pairseg.data import widen_field_of_view  # noqa: E402
from pairseg.io.read import read_label, read_volume  # noqa: E402
from pairseg.io.write import write_volume  # noqa: E402
from pairseg.metrics import evaluate_case  # noqa: E402
from pairseg.modelfiles.weights import load_model, read_metadata, write_model_file  # noqa: E402

NAME = "chaos-mr-t2-c2fcn"
MODELS = ROOT / "Resources" / "Models"
SAMPLE = ROOT / "Resources" / "SampleData"
CHAOS_CITATION = ("A. E. Kavur et al., CHAOS Challenge - combined (CT-MR) healthy abdominal organ segmentation, "
                  "Medical Image Analysis 69 (2021) 101950, doi:10.1016/j.media.2020.101950; data: Zenodo 3431873")


def terminology():
    """PairSeg's SNOMED CT codes (PairSeg/PairSegLib/terminology.py, plain Python)."""
    spec = importlib.util.spec_from_file_location("terminology", ROOT / "PairSeg" / "PairSegLib" / "terminology.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def from_pieces(folder: Path) -> tuple[dict, dict]:
    pieces = sorted(folder.glob("weights-fp16.part*"), key=lambda p: int(p.suffix[len(".part"):]))
    state = torch.load(io.BytesIO(b"".join(p.read_bytes() for p in pieces)), weights_only=True)
    return state, json.loads((folder / "metadata.json").read_text())


def segment(model: Path, image: Path, out: Path) -> float:
    """Wall time of `pairseg segment` on the CPU, as a user runs it (process start included)."""
    tick = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pairseg", "segment", "--model", str(model), "--input", str(image),
                    "--output", str(out), "--device", "cpu"], check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    return time.perf_counter() - tick


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--pieces", type=Path, help="folder from train_on_device.py --half-out")
    source.add_argument("--model", type=Path, help="a trained model file")
    parser.add_argument("--trained-on", default="the 2-core CPU of the development machine (bf16 autocast, channels-last)")
    parser.add_argument("--version", default="1.0.0")
    args = parser.parse_args()

    if args.pieces:
        state, metadata = from_pieces(args.pieces)
    else:
        model, metadata = load_model(args.model)
        state = model.state_dict()
    config = json.loads((MODELS / f"{NAME}.train.json").read_text())
    metadata = dict(metadata)
    metadata["training"] = {**metadata.get("training", {}), "dataset": "CHAOS MR T2-SPIR (16 cases; case_002 held out)",
                            "licence": "CC BY-SA 4.0", "citation": CHAOS_CITATION, "trained_on": args.trained_on,
                            "command": f"pairseg train --config Resources/Models/{NAME}.train.json "
                                       "--data ../shared/data/chaos_t2 --out chaos-mr-t2-c2fcn.pairseg"}
    out = MODELS / f"{NAME}.pairseg"
    write_model_file(out, state, metadata, torch.float16)
    metadata = read_metadata(out)
    class_names = metadata["class_names"]

    image_path, label_path = SAMPLE / "case_002_image.nii.gz", SAMPLE / "case_002_label.nii.gz"
    image = read_volume(image_path)
    label, _ = read_label(label_path, class_names=class_names, reference=image)
    results = {"model": str(out.relative_to(ROOT)), "case": "case_002", "fields_of_view": {}}
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        for factor in (1.0, 1.25, 1.5):
            source = image_path
            top, left = 0, 0
            if factor != 1.0:
                wide, (top, left) = widen_field_of_view(image, factor)
                source = work / f"wide{factor}.nii.gz"
                write_volume(source, wide)
            prediction = work / f"pred{factor}.nii.gz"
            seconds = segment(out, source, prediction)
            pred = read_volume(prediction).array[:, top:top + label.shape[1], left:left + label.shape[2]]
            case = evaluate_case(pred, label, tuple(reversed(image.spacing)), class_names)
            fov = round(image.array.shape[2] * image.spacing[0] * factor)
            results["fields_of_view"][f"{fov} mm"] = {"dice": case["dice"], "assd_mm": case["assd"],
                                                      "mean_dice": case["mean_dice"], "mean_assd_mm": case["mean_assd"],
                                                      "segment_seconds": seconds}
            print(f"FOV {fov} mm: Dice " + ", ".join(f"{c} {100 * v:.1f}" for c, v in case["dice"].items())
                  + f"; mean {100 * case['mean_dice']:.1f}, ASSD {case['mean_assd']:.2f} mm; {seconds:.1f} s")
    native = results["fields_of_view"]["320 mm"]
    results["threads"] = torch.get_num_threads()
    (ROOT / "benchmarks" / "results" / "shipped_model.json").write_text(json.dumps(results, indent=1))

    codes = terminology()
    classes = [{"name": name, "color": [int(round(255 * c)) for c in color],
                "terminology": {"entry": codes.terminologyEntry(name)}}
               for name, color in zip(class_names, metadata["class_colors"])]
    entry = {
        "name": NAME, "title": "Abdominal organs, MR T2-SPIR (CHAOS)",
        "description": "C2FCN (pairwise, Wang et al. 2021) for liver, right and left kidney and spleen on abdominal "
                       "T2-weighted fat-suppressed (T2-SPIR) MR, trained on 15 CHAOS cases at 1.67 mm in-plane pixels. "
                       "Works on any field of view and orientation; not for CT (fine-tune it with --cross-modality).",
        "version": args.version, "modality": metadata["modality"], "arch": metadata["arch"],
        "file": out.name, "url": None, "sha256": file_sha256(out), "file_size_bytes": out.stat().st_size,
        "classes": classes, "spacing_mm": float(metadata["spacing"]), "size": int(metadata["size"]),
        "training_data": {"dataset": "CHAOS MR T2-SPIR", "cases": metadata["training"]["cases"],
                          "licence": "CC BY-SA 4.0", "citation": CHAOS_CITATION,
                          "command": metadata["training"]["command"]},
        "evaluation": {"case": "case_002", "dice": native["dice"], "assd_mm": native["assd_mm"],
                       "mean_dice": native["mean_dice"],
                       "command": ".venv/bin/python scripts/make_shipped_model.py (benchmarks/results/shipped_model.json)"},
        "cpu_segment_seconds": round(native["segment_seconds"], 1),
    }
    (MODELS / CATALOG_FILE).write_text(json.dumps({"catalog_version": 1, "default": NAME, "models": [entry]},
                                                  indent=1) + "\n")
    print(f"wrote {out.relative_to(ROOT)} ({out.stat().st_size / 1e6:.1f} MB) and {CATALOG_FILE}")


if __name__ == "__main__":
    main()
