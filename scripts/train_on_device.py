"""Run `pairseg train --config CONFIG` on a machine that has a GPU but no SimpleITK and no copy of
the data: the development workplace's lent GPU machine (see README, "The shipped model").

Everything is the engine's own ``pairseg.train.train`` with the settings of CONFIG, except where
the volumes come from: the CHAOS cases were read here by SimpleITK into ``chaos.npz`` (images
int16 — the CHAOS intensities are whole numbers — labels uint8, geometry in ``chaos.json``), and
this script hands those arrays to the dataset reader instead of the files. The model file is
written by the engine as usual; ``--half-out`` also writes its weights as float16 with the
metadata in pieces small enough to bring back, and ``scripts/make_shipped_model.py`` turns them
into the catalog's model file.

    python scripts/train_on_device.py --config Resources/Models/chaos-mr-t2-c2fcn.train.json \
        --npz .gpu/chaos.npz --out $OUT/model.pairseg --device cuda --half-out $OUT
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

try:
    import SimpleITK  # noqa: F401
except ImportError:  # the engine imports it to read files, which this script replaces
    sys.modules["SimpleITK"] = types.ModuleType("SimpleITK")

import numpy as np  # noqa: E402
import torch  # noqa: E402


def install_npz_reader(npz: Path) -> Path:
    """Make the dataset reader take volumes and labels from ``npz``; returns a dataset folder
    whose dataset.json lists the cases (the files themselves are never opened)."""
    import pairseg.datasets as datasets
    from pairseg.io.volume import Volume

    meta = json.loads(npz.with_suffix(".json").read_text())
    arrays = np.load(npz)
    geometry = {case["name"]: case for case in meta["cases"]}

    def key(path) -> str:
        return Path(path).name.split(".")[0]  # case_003_image / case_003_label

    def read_volume(path, *args, **kwargs):
        name = key(path)[: -len("_image")]
        case = geometry[name]
        return Volume(arrays[name + "_image"].astype(np.float32), tuple(case["spacing"]), tuple(case["origin"]),
                      tuple(case["direction"]), path=str(path))

    def read_label(path, class_names=None, reference=None, **kwargs):
        return arrays[key(path)], list(meta["class_names"])

    datasets.read_volume, datasets.read_label = read_volume, read_label
    folder = Path(tempfile.mkdtemp(prefix="pairseg-npz-"))
    (folder / "dataset.json").write_text(json.dumps({
        "modality": {"0": meta["modality"]},
        "labels": {"0": "background", **{str(i + 1): n for i, n in enumerate(meta["class_names"])}},
        "training": [{"image": f"./{c['name']}_image.nii.gz", "label": f"./{c['name']}_label.nii.gz"}
                     for c in meta["cases"]]}))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--npz", required=True, type=Path)
    parser.add_argument("--out", required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--half-out", type=Path, help="also write float16 weights + metadata in <16 MB pieces here")
    args = parser.parse_args()

    from pairseg.config import TrainConfig
    from pairseg.events import HumanEvents
    from pairseg.modelfiles.weights import load_model
    from pairseg.train import train

    config = TrainConfig.read(args.config)
    config.data, config.out, config.device = str(install_npz_reader(args.npz)), args.out, args.device
    train(config, HumanEvents())
    if args.half_out:
        model, metadata = load_model(args.out, "cpu")
        half = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
        blob = args.half_out / "weights-fp16.pt"
        torch.save(half, blob)
        data = blob.read_bytes()
        blob.unlink()
        for index in range(0, len(data), 15 << 20):
            (args.half_out / f"weights-fp16.part{index // (15 << 20)}").write_bytes(data[index:index + (15 << 20)])
        (args.half_out / "metadata.json").write_text(json.dumps(metadata, indent=1, default=str))
        Path(args.out).unlink()  # too large to bring back; the pieces hold it


if __name__ == "__main__":
    main()
