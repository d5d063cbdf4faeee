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

from pairseg.data import apply_window, intensity_window, resampled_shape, resize_slices, stacks_25d
from pairseg.datasets import check_image
from pairseg.orientation import in_plane_spacing, Orientation
from pairseg.constants import READABLE_IMAGE_SUFFIXES, class_key, same_class_names
from pairseg.devices import resolve_device, resolve_inference_precision
from pairseg.errors import PairSegInputError
from pairseg.events import EventSink, null_events
from pairseg.atomic import write_together
from pairseg.io.locations import refuse_dangling_links
from pairseg.io.read import read_volume
from pairseg.io.volume import Volume
from pairseg.io.write import write_labels, write_probabilities, write_volume
from pairseg.modelfiles.catalog import resolve_model
from pairseg.modelfiles.weights import load_model
from pairseg.postprocess import keep_largest_component
from pairseg.proxy import decode_labels
from pairseg.uncertainty import rank_slices, uncertainty_map

__all__ = ["resolve_device", "predict_volume", "predict_native", "model_preprocessing", "model_grid_shape",
           "Prediction", "Predictor"]


def inference_memory_format(device: torch.device) -> torch.memory_format:
    """Layout of the networks' 4D inputs and weights at inference: channels_last on the CPU,
    where oneDNN's convolutions run faster on NHWC tensors; the default layout elsewhere."""
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


def model_grid_shape(shape: Sequence[int], size: int, spacing: Sequence[float] | None,
                     model_spacing: float | None) -> tuple[int, int]:
    """The (rows, columns) a native slice of ``shape`` pixels of ``spacing`` mm becomes before the
    network: resampled to ``model_spacing`` mm (the whole slice, any field of view), or resized to
    ``size`` x ``size`` for models without a recorded spacing."""
    if model_spacing is None or spacing is None:
        return (size, size)
    return resampled_shape(shape, spacing, model_spacing)


def tile_starts(length: int, size: int) -> list[int]:
    """First pixels of the ``size``-pixel windows that cover ``length`` pixels (``length`` >=
    ``size``): windows overlap by at least half, their number is odd so one is centred (where a
    training slice's anatomy sits), and the first and last touch the two ends."""
    if length <= size:
        return [0]
    count = -(-(length - size) // (size // 2)) + 1
    count += 1 - count % 2
    return [int(round(i * (length - size) / (count - 1))) for i in range(count)]


def _tile_weights(size: int) -> torch.Tensor:
    """(size, size) Gaussian weights (sigma = size / 8, as nnU-Net blends its windows), so each
    window's centre, where the network has the most context, counts most."""
    axis = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    gauss = torch.exp(-0.5 * (axis / (size / 8)) ** 2)
    weights = gauss[:, None] * gauss[None, :]
    return (weights / weights.max()).clamp_min(1e-3)


#: Canvases up to this many times the training slice's area are run whole; larger ones (very large
#: slices) in ``size`` x ``size`` windows, which bounds the memory of one network call.
WHOLE_SLICE_AREA = 4
#: Whole canvases are padded to multiples of this many pixels (the encoders' largest stride).
INPUT_MULTIPLE = 32


def _run(model: torch.nn.Module, batch: torch.Tensor, device: torch.device, precision: str) -> torch.Tensor:
    batch = batch.to(device, memory_format=inference_memory_format(device))
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        return model.predict_proba(batch).float().cpu()


def _predict_canvas(model: torch.nn.Module, canvas: torch.Tensor, size: int, device: torch.device,
                    precision: str, batch_size: int) -> torch.Tensor:
    """Per-class probabilities (N, K, H, W) of a (N, 3, H, W) canvas at least ``size`` pixels on
    each side. Up to ``WHOLE_SLICE_AREA`` x ``size``² pixels the network (fully convolutional)
    sees the whole canvas, zero-padded to a multiple of ``INPUT_MULTIPLE``, a few slices per call
    so one call holds about ``batch_size`` x ``size``² pixels; larger canvases go through
    ``size`` x ``size`` windows (``tile_starts``) blended with Gaussian weights."""
    height, width = canvas.shape[-2:]
    if height * width <= WHOLE_SLICE_AREA * size * size:
        if (height, width) == (size, size):  # the training slice size, as the network was trained on it
            padded_h, padded_w = height, width
        else:
            padded_h, padded_w = (-(-n // INPUT_MULTIPLE) * INPUT_MULTIPLE for n in (height, width))
        canvas = torch.nn.functional.pad(canvas, (0, padded_w - width, 0, padded_h - height))
        step = max(1, batch_size * size * size // (padded_h * padded_w))
        return torch.cat([_run(model, canvas[i:i + step], device, precision)
                          for i in range(0, canvas.shape[0], step)])[..., :height, :width]
    total = None
    weight_sum = torch.zeros(height, width)
    weights = _tile_weights(size)
    for top in tile_starts(height, size):
        for left in tile_starts(width, size):
            probs = _run(model, canvas[..., top:top + size, left:left + size], device, precision)
            if total is None:
                total = torch.zeros(canvas.shape[0], probs.shape[1], height, width)
            total[..., top:top + size, left:left + size] += probs * weights
            weight_sum[top:top + size, left:left + size] += weights
    return total / weight_sum


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
    spacing (``model_grid_shape``); a slice smaller than ``size`` x ``size`` is centred on zeros
    of that size, as training pads it; the network then sees the whole canvas (very large slices:
    overlapping ``size`` windows, see ``_predict_canvas``), and the probabilities are cropped and
    resampled back to the native grid, so the network sees anatomy at the size it was trained on
    whatever the field of view. Without a spacing (models written before 0.2) slices are resized
    to ``size`` x ``size``. Memory stays bounded by about ``batch_size`` x ``size``² network
    pixels per call. ``precision="bf16"`` runs the network under bfloat16 autocast (see
    ``check_precision``).
    """
    model.eval()
    depth, height, width = array.shape
    labels = np.zeros((depth, height, width), dtype=np.uint8)
    probabilities = (np.zeros((depth, model.num_classes, height, width), dtype=np.float16)
                     if keep_probabilities else None)
    grid = model_grid_shape((height, width), size, spacing, model_spacing)
    canvas = (max(grid[0], size), max(grid[1], size))
    offset = ((canvas[0] - grid[0]) // 2, (canvas[1] - grid[1]) // 2)  # as crop_or_pad centres
    start = time.monotonic()
    for first in range(0, depth, batch_size):
        stop = min(first + batch_size, depth)
        below, above = max(first - 1, 0), min(stop + 1, depth)  # the batch's slices and their neighbours
        slices = array[below:above] if window is None else apply_window(array[below:above], window)
        slices = torch.from_numpy(np.ascontiguousarray(slices, dtype=np.float32))
        stacks = resize_slices(stacks_25d(slices)[first - below:stop - below], grid)
        if canvas != grid:
            stacks = torch.nn.functional.pad(stacks, (offset[1], canvas[1] - grid[1] - offset[1],
                                                      offset[0], canvas[0] - grid[0] - offset[0]))
        probs = _predict_canvas(model, stacks, size, device, precision, batch_size)
        probs = probs[..., offset[0]:offset[0] + grid[0], offset[1]:offset[1] + grid[1]]
        probs = resize_slices(probs, (height, width))
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
                 readout: str | None = None, precision: str = "auto"):
        self.device = resolve_device(device)
        self.precision = resolve_inference_precision(precision, self.device)  # "auto": bf16 where native
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

    def class_indices(self, names: Sequence[str] | None = None) -> list[int]:
        """0-based indices of the model's classes ``names`` (the class-name rule ``class_key``);
        all classes for None or empty. PairSegInputError names an unknown one and the classes."""
        if not names:
            return list(range(len(self.class_names)))
        keys = [class_key(n) for n in self.class_names]
        unknown = [n for n in names if class_key(n) not in keys]
        if unknown:
            raise PairSegInputError(f"{self.model_path}: no class {', '.join(map(repr, unknown))}; "
                                    f"its classes are {', '.join(self.class_names)}")
        return sorted({keys.index(class_key(n)) for n in names})

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
                     probabilities_path: str | Path | None = None, uncertainty_path: str | Path | None = None,
                     uncertainty_classes: Sequence[str] | None = None, keep_largest: bool = True, modality: str | None = None, series_id: str | None = None,
                     events: EventSink = null_events) -> list[Path]:
        """Read, segment and write one image (``series_id``: the DICOM series of a folder holding
        several). With ``uncertainty_path``, also the uncertainty map (``pairseg.uncertainty``,
        float32, bits; over ``uncertainty_classes`` only when given: names of the model's classes)
        and an ``uncertainty`` event naming the slices (first array axis, the file's k index) to
        check first. The outputs appear only once complete, and together: when
        one cannot be written, none replaces an existing file."""
        self.check_request(modality)
        volume = read_volume(input_path, series_id)
        keep = probabilities_path is not None or uncertainty_path is not None
        prediction = self.segment(volume, keep_largest=keep_largest, keep_probabilities=keep, events=events)
        uncertainty = None
        if uncertainty_path is not None:
            chosen = self.class_indices(uncertainty_classes)
            uncertainty = uncertainty_map(prediction.probabilities, chosen)
            events("uncertainty", path=str(uncertainty_path), check_slices=rank_slices(uncertainty),
                   max_bits=float(len(chosen)), classes=[self.class_names[k] for k in chosen])
        with write_together():
            written = [Path(write_labels(output_path, prediction.labels.array, volume,
                                         class_names=prediction.class_names, colors=prediction.class_colors))]
            if probabilities_path is not None:  # streamed from the float16 array: no float32 copy
                written.append(Path(write_probabilities(probabilities_path, prediction.probabilities, volume)))
            if uncertainty is not None:
                written.append(Path(write_volume(uncertainty_path, volume.like(uncertainty))))
        return written


def list_inputs(path: str | Path) -> list[Path]:
    """An image file, a DICOM folder, or a folder of image files."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise PairSegInputError(f"{path}: input does not exist")
    def counts(name: str) -> bool:
        return name.lower().endswith(READABLE_IMAGE_SUFFIXES) and not name.lower().endswith(".seg.nrrd")

    refuse_dangling_links(path, counts)
    images = sorted(p for p in path.iterdir() if p.is_file() and counts(p.name))
    if not images:
        refuse_dangling_links(path, what="DICOM folder")  # every entry of a DICOM folder counts
        if not any(p.is_file() for p in path.iterdir()):
            raise PairSegInputError(f"{path}: folder holds no image files ({', '.join(READABLE_IMAGE_SUFFIXES)}) "
                                    "and no DICOM files")
    return images or [path]  # no image files: treat the folder as one DICOM series
