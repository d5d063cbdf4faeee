"""Inference: a model file and a volume in, a label map in the volume's own geometry out.

Slices are processed in batches, so memory stays bounded for large CT volumes: besides the
image itself, only one batch of normalised 2.5D stacks and the output label map are held at once
(plus the class probabilities when they are asked for, as float16).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from pairseg.data import (Orientation, apply_window, check_image, in_plane_spacing, intensity_window, resampled_shape,
                          resize_slices, stacks_25d)
from pairseg.constants import READABLE_IMAGE_SUFFIXES, same_class_names
from pairseg.devices import bf16_supported, check_precision, resolve_device  # noqa: F401 (re-exported)
from pairseg.errors import PairSegInputError
from pairseg.events import EventSink, null_events
from pairseg.io import Volume, read_volume, write_labels, write_probabilities, write_together
from pairseg.catalog import resolve_model
from pairseg.modelfile import load_model
from pairseg.postprocess import keep_largest_component
from pairseg.proxy import decode_labels

__all__ = ["resolve_device", "predict_volume", "predict_native", "model_preprocessing", "model_grid_shape",
           "Prediction", "Predictor", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = READABLE_IMAGE_SUFFIXES


def inference_memory_format(device: torch.device) -> torch.memory_format:
    """Layout of the networks' 4D inputs and weights at inference: channels_last on the CPU,
    where oneDNN's convolutions run faster on NHWC tensors; the default layout elsewhere."""
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


#: Network inputs are padded to whole multiples of this many pixels (the largest output stride
#: of the encoders, so every encoder level has whole pixels).
INPUT_MULTIPLE = 32


def model_grid_shape(shape: Sequence[int], size: int, spacing: Sequence[float] | None,
                     model_spacing: float | None) -> tuple[int, int]:
    """The (rows, columns) a native slice of ``shape`` pixels of ``spacing`` mm becomes before the
    network: resampled to ``model_spacing`` mm (the whole slice, any field of view), or resized to
    ``size`` x ``size`` for models without a recorded spacing."""
    if model_spacing is None or spacing is None:
        return (size, size)
    return resampled_shape(shape, spacing, model_spacing)


@torch.inference_mode()
def predict_volume(model: torch.nn.Module, array: np.ndarray, size: int, device: torch.device,
                   *, window: tuple[float, float] | None = None, batch_size: int = 16,
                   keep_probabilities: bool = False, precision: str = "fp32",
                   spacing: Sequence[float] | None = None, model_spacing: float | None = None,
                   events: EventSink = null_events) -> tuple[np.ndarray, np.ndarray | None]:
    """Segment a (Z, H, W) volume slice batch by slice batch.

    ``array`` is normalised to [0, 1] already or, given the intensity ``window`` (see
    ``intensity_window``), holds raw intensities and each batch's slices are normalised as they
    are cut, so no normalised copy of the volume is made. ``array`` may be any view (a canonical
    layout of a stored volume, for example). Returns the decoded label map (Z, H, W) uint8 and,
    when asked, the per-class probabilities (Z, K, H, W) float16 on the native grid.

    Physical resolution: with ``model_spacing`` (the model's pixel spacing, mm) and ``spacing``
    (the array's (row, column) pixel spacing, mm), each whole slice is resampled to the model's
    spacing (``model_grid_shape``), zero-padded to a multiple of ``INPUT_MULTIPLE`` pixels, run
    through the fully convolutional network, cropped and resampled back to the native grid, so
    the network sees anatomy at the size it was trained on whatever the field of view. Without
    them (models written before 0.2) slices are resized to ``size`` x ``size``. Memory stays
    bounded: a batch holds at most ``batch_size`` x ``size``² network pixels (at least one slice).
    ``precision="bf16"`` runs the network under bfloat16 autocast (see ``check_precision``).
    """
    model.eval()
    depth, height, width = array.shape
    labels = np.zeros((depth, height, width), dtype=np.uint8)
    probabilities = (np.zeros((depth, model.num_classes, height, width), dtype=np.float16)
                     if keep_probabilities else None)
    grid = model_grid_shape((height, width), size, spacing, model_spacing)
    padded = grid if model_spacing is None or spacing is None else \
        tuple(-(-n // INPUT_MULTIPLE) * INPUT_MULTIPLE for n in grid)
    per_batch = max(1, min(batch_size, batch_size * size * size // (padded[0] * padded[1])))
    start = time.monotonic()
    for first in range(0, depth, per_batch):
        stop = min(first + per_batch, depth)
        below, above = max(first - 1, 0), min(stop + 1, depth)  # the batch's slices and their neighbours
        slices = array[below:above] if window is None else apply_window(array[below:above], window)
        slices = torch.from_numpy(np.ascontiguousarray(slices, dtype=np.float32))
        stacks = stacks_25d(slices)[first - below:stop - below]
        batch = resize_slices(stacks, grid)
        if padded != grid:
            batch = torch.nn.functional.pad(batch, (0, padded[1] - grid[1], 0, padded[0] - grid[0]))
        batch = batch.to(device, memory_format=inference_memory_format(device))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            probs = model.predict_proba(batch).float()
        probs = resize_slices(probs[..., :grid[0], :grid[1]], (height, width)).cpu()
        labels[first:stop] = decode_labels(probs).numpy().astype(np.uint8)
        if probabilities is not None:
            probabilities[first:stop] = probs.numpy().astype(np.float16)
        elapsed = time.monotonic() - start
        events("progress", stage="segment", step=stop, total=depth, fraction=stop / depth,
               eta_s=elapsed / stop * (depth - stop))
    return labels, probabilities


def predict_native(model: torch.nn.Module, volume: Volume, modality: str, size: int, device: torch.device,
                   *, batch_size: int = 16, keep_probabilities: bool = False, precision: str = "fp32",
                   model_spacing: float | None = None, mr_rule: str = "volume",
                   events: EventSink = null_events) -> tuple[np.ndarray, np.ndarray | None]:
    """Segment ``volume`` as stored: lay it out canonically (see ``Orientation``), normalise
    (``intensity_window`` with ``mr_rule``) and predict batch by batch (``predict_volume``, at the
    model's pixel spacing ``model_spacing`` when it has one), and return labels (Z, H, W) and
    probabilities (Z, K, H, W) on the native grid (probabilities a view of the canonical array
    where the layout differs: no second copy)."""
    orientation = Orientation.of(volume.direction)
    labels, probabilities = predict_volume(model, orientation.apply(volume.array), size, device,
                                           window=intensity_window(volume.array, modality, mr_rule),
                                           batch_size=batch_size, keep_probabilities=keep_probabilities,
                                           precision=precision, spacing=in_plane_spacing(volume),
                                           model_spacing=model_spacing, events=events)
    labels = np.ascontiguousarray(orientation.invert(labels))
    if probabilities is not None:  # classes ride along as a trailing axis while axes move
        probabilities = np.moveaxis(orientation.invert(np.moveaxis(probabilities, 1, -1)), -1, 1)
    return labels, probabilities


def model_preprocessing(metadata: dict) -> dict:
    """How a model file's network expects its input: ``size`` (pixels), ``model_spacing`` (mm, None
    for models that resize), ``mr_rule`` (``intensity_window``; "volume" for models written
    before it was recorded)."""
    spacing = metadata.get("spacing")
    if isinstance(spacing, (list, tuple)):
        spacing = float(spacing[0])
    return {"size": int(metadata["size"]), "model_spacing": float(spacing) if spacing else None,
            "mr_rule": str(metadata.get("preprocessing", {}).get("mr_window_rule", "volume"))}


@dataclass
class Prediction:
    """A segmentation in the input's geometry."""

    labels: Volume
    probabilities: np.ndarray | None
    class_names: list[str]
    class_colors: list[list[float]]


class Predictor:
    """In-process predictor: load a model file once, segment many volumes."""

    def __init__(self, model_path: str | Path, device: str = "auto", batch_size: int = 16,
                 readout: str | None = None, precision: str = "fp32"):
        self.device = resolve_device(device)
        check_precision(precision, self.device)
        self.precision = precision
        model_path = resolve_model(model_path)
        self.model, self.metadata = load_model(model_path, self.device)
        self.model.to(memory_format=inference_memory_format(self.device))
        if readout is not None:
            if not hasattr(self.model, "readout"):
                raise PairSegInputError(f"{model_path}: a {self.metadata['arch']} model has no proxy read-out to choose")
            self.model.readout = readout
        self.model_path = Path(model_path)
        self.batch_size = batch_size

    @property
    def class_names(self) -> list[str]:
        return list(self.metadata["class_names"])

    def check_request(self, modality: str | None = None, classes: Sequence[str] | None = None) -> None:
        """Refuse a request whose modality or classes the model was not trained for."""
        model_modality = str(self.metadata.get("modality", "")).upper()
        if modality and modality.upper() != model_modality:
            raise PairSegInputError(
                f"{self.model_path}: model was trained on {model_modality}, but the image is {modality.upper()}")
        if classes is not None and not same_class_names(classes, self.class_names):
            raise PairSegInputError(
                f"{self.model_path}: model classes {self.class_names} differ from the requested {list(classes)}")

    def segment(self, volume: Volume, *, keep_largest: bool = True, keep_probabilities: bool = False,
                events: EventSink = null_events) -> Prediction:
        check_image(volume)
        labels, probabilities = predict_native(
            self.model, volume, self.metadata["modality"], device=self.device, batch_size=self.batch_size,
            keep_probabilities=keep_probabilities, precision=self.precision, events=events,
            **model_preprocessing(self.metadata))
        if keep_largest:
            labels = keep_largest_component(labels, self.model.num_classes)
        return Prediction(volume.like(labels), probabilities, self.class_names,
                          [list(c) for c in self.metadata["class_colors"]])

    def segment_file(self, input_path: str | Path, output_path: str | Path, *,
                     probabilities_path: str | Path | None = None, keep_largest: bool = True,
                     modality: str | None = None, series_id: str | None = None,
                     events: EventSink = null_events) -> list[Path]:
        """Read, segment and write one image (``series_id``: the DICOM series of a folder holding
        several). The outputs appear only once complete, and together: when one cannot be written,
        none replaces an existing file."""
        self.check_request(modality)
        volume = read_volume(input_path, series_id)
        prediction = self.segment(volume, keep_largest=keep_largest,
                                  keep_probabilities=probabilities_path is not None, events=events)
        with write_together():
            written = [Path(write_labels(output_path, prediction.labels.array, volume,
                                         class_names=prediction.class_names, colors=prediction.class_colors))]
            if probabilities_path is not None:  # streamed from the float16 array: no float32 copy
                written.append(Path(write_probabilities(probabilities_path, prediction.probabilities, volume)))
        return written


def list_inputs(path: str | Path) -> list[Path]:
    """An image file, a DICOM folder, or a folder of image files."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise PairSegInputError(f"{path}: input does not exist")
    images = sorted(p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES)
                    and not p.name.lower().endswith(".seg.nrrd"))
    return images or [path]  # no image files: treat the folder as one DICOM series
