"""Proxy maps of a slice pair as files: what the proxy supervision g_proxy asks a network to see.

For two labelled slices, the ground-truth AND map (foreground in both, per class) and XOR map
(foreground in exactly one) are written as images in slice A's geometry, plus a PNG picture
(AND blue, XOR red, as in the paper's Fig. 3). With a pairwise model, its predicted AND/XOR
probability maps for the same pair are written too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from pairseg.data import normalize, resize_slices, stack_25d
from pairseg.datasets import parse_classes
from pairseg.orientation import Orientation
from pairseg.errors import PairSegInputError
from pairseg.io.read import read_label, read_volume
from pairseg.io.volume import Volume
from pairseg.io.write import write_volume
from pairseg.io.write import write_png as io_write_png
from pairseg.proxy import proxy_probabilities, proxy_targets

AND_COLOR = np.array([40, 90, 255], dtype=np.float32)
XOR_COLOR = np.array([255, 40, 40], dtype=np.float32)


def slice_volume(reference: Volume, index: int, plane: np.ndarray) -> Volume:
    """One axial slice ``plane`` (H, W) as a single-slice volume placed where slice ``index`` is."""
    image = reference.to_sitk()
    origin = image.TransformIndexToPhysicalPoint((0, 0, int(index)))
    return Volume(plane[None].astype(np.float32), tuple(reference.spacing), tuple(origin),
                  tuple(reference.direction), None)


def and_xor(label_a: np.ndarray, label_b: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(AND label map with class ids, XOR binary map of any class) of two label slices."""
    proxy = proxy_targets(label_a, label_b, num_classes)
    if num_classes == 1:
        return proxy[1].astype(np.uint8), proxy[2].astype(np.uint8)
    ands = proxy[:num_classes]
    and_map = np.where(ands.max(axis=0) > 0, ands.argmax(axis=0) + 1, 0).astype(np.uint8)
    return and_map, (proxy[num_classes:].max(axis=0) > 0).astype(np.uint8)


def picture(background: np.ndarray | None, and_map: np.ndarray, xor_map: np.ndarray) -> np.ndarray:
    """RGB uint8 picture: grey image with AND in blue and XOR in red (weights 0..1 per map)."""
    if background is None:
        grey = np.zeros(and_map.shape + (3,), dtype=np.float32)
    else:
        grey = np.repeat((np.clip(background, 0, 1) * 255.0)[..., None], 3, axis=-1).astype(np.float32)
    a = np.clip(and_map, 0, 1)[..., None].astype(np.float32) * 0.7
    x = np.clip(xor_map, 0, 1)[..., None].astype(np.float32) * 0.7
    out = grey * (1 - a - x).clip(0, 1) + AND_COLOR * a + XOR_COLOR * x
    return np.clip(out, 0, 255).astype(np.uint8)


def write_png(path: Path, rgb: np.ndarray) -> Path:
    """Write an (H, W, 3) uint8 picture, top row first as it is stored (y down), atomically."""
    return Path(io_write_png(path, sitk.GetImageFromArray(rgb, isVector=True)))


def predicted_and_xor(model_path: str, image_a: Volume, slice_a: int, image_b: Volume, slice_b: int,
                      device: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """A pairwise model's AND and XOR probability maps (max over classes) on slice A's grid."""
    from pairseg.devices import resolve_device
    from pairseg.modelfiles.catalog import resolve_model
    from pairseg.modelfiles.weights import load_model

    dev = resolve_device(device)
    model, meta = load_model(resolve_model(model_path), dev)
    if model.training_form not in ("proxy", "conjugate"):
        raise PairSegInputError(f"{model_path}: a {meta['arch']} model predicts no proxy maps")
    size = int(meta["size"])
    stacks = []
    for volume, index in ((image_a, slice_a), (image_b, slice_b)):
        orientation = Orientation.of(volume.direction)
        if orientation.axes[0] != 0:
            raise PairSegInputError(f"{volume.path or 'image'}: slices are not axial; proxy maps need axial slices")
        canonical = np.ascontiguousarray(orientation.apply(normalize(volume.array, meta["modality"])))
        index = canonical.shape[0] - 1 - index if orientation.flips[0] else index
        stacks.append(resize_slices(torch.from_numpy(stack_25d(canonical, index))[None], size).to(dev))
    plane_a = Orientation.of(image_a.direction)
    with torch.inference_mode():
        output = model(*stacks)
        logits = output["proxy"] if isinstance(output, dict) else output
        probs = proxy_probabilities(logits.float(), model.num_classes)
        canonical_plane = plane_a.apply(image_a.array[:1]).shape[1:]
        probs = resize_slices(probs, canonical_plane).cpu().numpy()[0]
    k = model.num_classes
    maps = (probs[1], probs[2]) if k == 1 else (probs[:k].max(axis=0), probs[k:].max(axis=0))
    return tuple(np.ascontiguousarray(plane_a.invert(m[None])[0]) for m in maps)  # type: ignore[return-value]


def write_proxy_maps(*, label_a: str, slice_a: int, label_b: str | None, slice_b: int, out: str,
                     image_a: str | None = None, image_b: str | None = None, model: str | None = None,
                     classes: str | None = None, device: str = "auto") -> list[Path]:
    """Write the ground-truth (and predicted) AND/XOR maps of slice A and slice B into ``out``."""
    from pairseg.modelfiles.catalog import resolve_model
    from pairseg.modelfiles.weights import read_metadata

    names = parse_classes(classes) if classes else (read_metadata(resolve_model(model))["class_names"] if model else None)
    labels_a, names_a = read_label(label_a, class_names=names)
    labels_b, _ = read_label(label_b or label_a, class_names=names or names_a)
    num_classes = len(names or names_a or []) or int(max(labels_a.max(), labels_b.max()))
    for labels, index, path in ((labels_a, slice_a, label_a), (labels_b, slice_b, label_b or label_a)):
        if not 0 <= index < labels.shape[0]:
            raise PairSegInputError(f"{path}: slice {index} outside 0..{labels.shape[0] - 1}")
    if labels_a.shape[1:] != labels_b.shape[1:]:
        raise PairSegInputError(f"{label_b}: slice size {labels_b.shape[1:]} differs from {labels_a.shape[1:]}")
    if model and not image_a:
        raise PairSegInputError("--model needs --image-a (and --image-b for another volume)")
    reference = read_volume(image_a) if image_a else read_volume(label_a)
    and_map, xor_map = and_xor(labels_a[slice_a], labels_b[slice_b], num_classes)
    background = normalize(reference.array, "MR")[slice_a] if image_a else None
    predicted = None
    if model:  # computed before anything is written: a failure leaves no partial output
        second = read_volume(image_b) if image_b else reference
        predicted = predicted_and_xor(model, reference, slice_a, second, slice_b, device)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    written = [write_volume(folder / "and.nii.gz", slice_volume(reference, slice_a, and_map)),
               write_volume(folder / "xor.nii.gz", slice_volume(reference, slice_a, xor_map))]
    written.append(write_png(folder / "proxy_truth.png", picture(background, and_map > 0, xor_map)))
    if predicted is not None:
        p_and, p_xor = predicted
        written += [write_volume(folder / "and_predicted.nii.gz", slice_volume(reference, slice_a, p_and)),
                    write_volume(folder / "xor_predicted.nii.gz", slice_volume(reference, slice_a, p_xor)),
                    write_png(folder / "proxy_predicted.png", picture(background, p_and, p_xor))]
    return [Path(p) for p in written]
