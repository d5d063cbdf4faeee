"""Write the CHAOS MR cases as one compressed npz (images int16, labels uint8) with their geometry
in a JSON file beside it, for a machine without SimpleITK or a copy of the data (the lent GPU
machine: ``recipe.load_cases``, ``cv_gpu.py`` and ``scripts/train_on_device.py`` read it).

    .venv/bin/python benchmarks/chaos_npz.py --out .gpu/chaos.npz
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    from common import chaos_dir
    from pairseg.datasets import load_case, load_dataset

    dataset = load_dataset(chaos_dir())
    arrays, meta = {}, {"modality": dataset.modality, "class_names": dataset.class_names, "cases": []}
    for case in dataset.cases:
        volume, label = load_case(case, dataset)
        image = np.asarray(volume.array)
        if not np.array_equal(np.round(image), image) or image.min() < -32768 or image.max() > 32767:
            raise SystemExit(f"{case.name}: intensities are not int16 whole numbers")
        arrays[case.name + "_image"] = image.astype(np.int16)
        arrays[case.name + "_label"] = np.asarray(label, dtype=np.uint8)
        meta["cases"].append({"name": case.name, "spacing": list(volume.spacing), "origin": list(volume.origin),
                              "direction": list(volume.direction)})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    args.out.with_suffix(".json").write_text(json.dumps(meta, indent=1))
    print(f"wrote {args.out} ({args.out.stat().st_size / 2 ** 20:.1f} MiB, {len(meta['cases'])} cases)")


if __name__ == "__main__":
    main()
