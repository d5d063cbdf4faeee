"""The README's first command: train briefly, segment a held-out volume, report Dice/ASSD."""

from __future__ import annotations

import json
from pathlib import Path

from pairseg.events import EventSink, jsonable
from pairseg.errors import PairSegInputError


def run_demo(*, data: str | None, out: str, arch: str = "c2fcn", train_cases: int = 2, steps: int = 300,
             size: int = 96, batch_size: int = 8, device: str = "auto", events: EventSink) -> dict:
    from pairseg.data import load_dataset
    from pairseg.infer import Predictor
    from pairseg.io import read_label
    from pairseg.metrics import evaluate_case, format_table, summarize
    from pairseg.phantoms import make_phantom_dataset
    from pairseg.train import TrainConfig, train

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    if data is None:
        events("message", text=f"generating phantom MR volumes in {folder / 'phantoms'}")
        data = str(make_phantom_dataset(folder / "phantoms", n_cases=train_cases + 1, seed=0))
    dataset = load_dataset(data)
    if len(dataset.cases) < train_cases + 1:
        raise PairSegInputError(f"{data}: {len(dataset.cases)} case(s); the demo needs {train_cases + 1}")
    training = [c.name for c in dataset.cases[:train_cases]]
    held_out = dataset.cases[-1]
    model_path = folder / "model.pairseg"
    events("message", text=f"training {arch} on {', '.join(training)} ({steps} steps at {size}x{size})")
    train(TrainConfig(data=data, out=str(model_path), arch=arch, steps=steps, size=size, batch_size=batch_size,
                      device=device, cases=training, overwrite=True), events)

    events("message", text=f"segmenting held-out case {held_out.name}")
    predictor = Predictor(model_path, device)
    prediction_path = folder / f"{held_out.name}_prediction.seg.nrrd"
    predictor.segment_file(held_out.image, prediction_path, events=events)
    from pairseg.io import read_volume

    image = read_volume(held_out.image)
    reference, _ = read_label(held_out.label, class_names=dataset.class_names, reference=image)
    predicted, _ = read_label(prediction_path, class_names=dataset.class_names, reference=image)
    case = evaluate_case(predicted, reference, tuple(reversed(image.spacing)), dataset.class_names)
    case["case"] = held_out.name
    summary = summarize([case])
    table = format_table(summary, [case])
    events("message", text=table)
    report = {"data": str(data), "arch": arch, "training_cases": training, "held_out": held_out.name,
              "model": str(model_path), "prediction": str(prediction_path), "metrics": case, "summary": summary}
    (folder / "metrics.json").write_text(json.dumps(jsonable(report), indent=1))
    events("done", outputs=[str(model_path), str(prediction_path), str(folder / "metrics.json")],
           mean_dice=case["mean_dice"])
    return report
