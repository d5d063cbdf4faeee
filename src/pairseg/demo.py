"""The README's first command (`pairseg demo`): the main job on real anatomy, out of the box.

Default: segment the embedded sample case (CHAOS MR T2-SPIR patient 2, ``Resources/SampleData``,
which the shipped model never saw) with the catalog's default model, score it against the
expert label (Dice, ASSD per organ) and write the segmentation (``.seg.nrrd``, opens in Slicer)
and an overlay picture. ``--train`` shows the annotate-then-retrain loop instead: a short
fine-tune of the model on annotated cases (by default the sample case's expert label, standing
in for a case a user corrected), then the same segmentation and scores with the new model.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np

from pairseg.atomic import write_json
from pairseg.errors import PairSegInputError
from pairseg.events import EventSink, jsonable

__all__ = ["run_demo", "overlay_picture"]


def overlay_picture(path: Path, image: np.ndarray, predicted: np.ndarray, reference: np.ndarray,
                    colors: Sequence[Sequence[float]], spacing_zyx: Sequence[float]) -> Path:
    """Write a PNG of the axial slice with the most reference foreground: the image, the image
    with the prediction filled in the class colours, and with the reference's outlines drawn over
    the prediction (left to right). Arrays are (z, y, x) in canonical layout; colours RGB 0..1."""
    import SimpleITK as sitk

    index = int(np.argmax((reference > 0).reshape(reference.shape[0], -1).sum(axis=1)))
    low, high = np.percentile(image[index], (1, 99))
    gray = np.clip((image[index] - low) / max(high - low, 1e-6), 0, 1)
    base = np.repeat(gray[..., None], 3, axis=2)
    filled = base.copy()
    outlined = base.copy()
    for value, color in enumerate(colors, start=1):
        mask = predicted[index] == value
        filled[mask] = 0.45 * filled[mask] + 0.55 * np.asarray(color)
        outlined[mask] = filled[mask]
        ref = reference[index] == value
        edge = ref & ~(np.roll(ref, 1, 0) & np.roll(ref, -1, 0) & np.roll(ref, 1, 1) & np.roll(ref, -1, 1))
        outlined[edge] = (1.0, 1.0, 0.0)
    picture = np.concatenate([base, filled, outlined], axis=1)
    picture = (np.clip(picture, 0, 1) * 255).astype(np.uint8)
    itk = sitk.GetImageFromArray(picture, isVector=True)
    itk.SetSpacing((float(spacing_zyx[2]), float(spacing_zyx[1])))
    rows = max(1, int(round(picture.shape[0] * spacing_zyx[1] / spacing_zyx[2])))  # square pixels on screen
    resampled = sitk.Resample(itk, [picture.shape[1], rows], sitk.Transform(), sitk.sitkLinear, (0.0, 0.0),
                              (float(spacing_zyx[2]), float(spacing_zyx[2])), (1.0, 0.0, 0.0, 1.0))
    from pairseg.io.write import write_png

    return write_png(path, resampled)


def run_demo(*, out: str, model: str | None = None, data: str | None = None, train: bool = False,
             steps: int = 60, device: str = "auto", events: EventSink) -> dict:
    """Segment (and with ``train`` first fine-tune) as described in the module docstring.

    ``data``: a dataset folder; its last case is segmented and, with ``train``, the others are the
    fine-tuning cases (a one-case dataset, like the default sample, fine-tunes on that case).
    Returns the report also written to ``<out>/metrics.json``. Raises ``PairSegInputError``.
    """
    from pairseg.modelfiles.catalog import load_catalog, resolve_model, sample_folder
    from pairseg.datasets import load_dataset
    from pairseg.infer import Predictor
    from pairseg.io.locations import check_output
    from pairseg.io.read import read_label, read_volume
    from pairseg.metrics import evaluate_case, format_table, summarize
    from pairseg.orientation import Orientation

    folder = check_output(out, what="--out", folder=True)
    dataset = load_dataset(data or sample_folder())
    target = dataset.cases[-1]
    for name in ("fine-tuned.pairseg.ckpt", "metrics.json", f"{target.name}_segmentation.seg.nrrd",
                 f"{target.name}_overlay.png"):
        check_output(folder / name, None, "--out file")  # the hidden temporaries' names must fit too
    if model is None:
        catalog = load_catalog()
        if catalog.default is None:
            raise PairSegInputError(f"no model given and no default catalog model ({catalog.path})")
        model = catalog.default
    model_path = resolve_model(model)
    report: dict = {"data": str(dataset.folder), "case": target.name, "model": str(model)}
    folder.mkdir(parents=True, exist_ok=True)
    if train:
        from pairseg.config import TrainConfig
        from pairseg.train import train as train_model

        tuning = [c.name for c in dataset.cases[:-1]] or [target.name]
        tuned = folder / "fine-tuned.pairseg"
        events("message", text=f"fine-tuning {model} on {', '.join(tuning)} ({steps} steps)"
               + (" - the case segmented below, as a stand-in for a case you corrected: on your own data, "
                  "fine-tune on corrected cases and segment new ones" if tuning == [target.name] else ""))
        train_model(TrainConfig(data=str(dataset.folder), out=str(tuned), init_from=str(model_path), steps=steps,
                                cases=tuning, device=device, overwrite=True, lr=5e-5), events)
        report.update(fine_tuned_on=tuning, fine_tune_steps=steps)
        model_path = tuned
    events("message", text=f"segmenting {target.name} with {model_path.name}")
    predictor = Predictor(model_path, device)
    prediction_path = folder / f"{target.name}_segmentation.seg.nrrd"
    tick = time.perf_counter()
    predictor.segment_file(target.image, prediction_path, events=events)
    seconds = time.perf_counter() - tick
    image = read_volume(target.image)
    reference, _ = read_label(target.label, class_names=predictor.class_names, reference=image)
    predicted, _ = read_label(prediction_path, class_names=predictor.class_names, reference=image)
    case = evaluate_case(predicted, reference, tuple(reversed(image.spacing)), predictor.class_names)
    case["case"] = target.name
    events("message", text=format_table(summarize([case]), [case]))
    orientation = Orientation.of(image.direction)
    canonical = [orientation.apply(a) for a in (image.array, predicted, reference)]
    picture = overlay_picture(folder / f"{target.name}_overlay.png", *canonical, predictor.metadata["class_colors"],
                              orientation.spacing_zyx(image.spacing))
    report.update(prediction=str(prediction_path), overlay=str(picture), segment_seconds=seconds, metrics=case)
    write_json(folder / "metrics.json", jsonable(report))
    outputs = [str(prediction_path), str(picture), str(folder / "metrics.json")]
    if train:
        outputs.insert(0, str(folder / "fine-tuned.pairseg"))
    events("done", outputs=outputs, mean_dice=case["mean_dice"], seconds=round(seconds, 1))
    return report
