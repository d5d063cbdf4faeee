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

from pairseg.data import Orientation, apply_window, check_image, intensity_window, resize_slices, stacks_25d
from pairseg.errors import PairSegInputError
from pairseg.events import EventSink, null_events
from pairseg.io import Volume, read_volume, write_labels, write_probabilities, write_together
from pairseg.modelfile import load_model
from pairseg.postprocess import keep_largest_component
from pairseg.proxy import decode_labels

__all__ = ["resolve_device", "predict_volume", "predict_native", "Prediction", "Predictor", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; an unavailable device is an error."""
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PairSegInputError("device 'cuda' requested but no CUDA GPU is available to PyTorch")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise PairSegInputError("device 'mps' requested but Apple MPS is not available")
    if name not in ("cpu", "mps") and not name.startswith("cuda"):
        raise PairSegInputError(f"unknown device {name!r}; use auto, cpu, cuda or mps")
    return torch.device(name)


PRECISIONS = ("fp32", "bf16")


def bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` runs bfloat16 natively: a CPU with oneDNN's bfloat16 path (AVX-512 BF16 or
    AMX) or a CUDA GPU that supports it."""
    if device.type == "cpu":
        return bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)())
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return False


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse an unknown precision, and bf16 where the device cannot run it fast (``bf16_supported``)."""
    if precision not in PRECISIONS:
        raise PairSegInputError(f"unknown precision {precision!r}; use {' or '.join(PRECISIONS)}")
    if precision == "bf16" and not bf16_supported(device):
        raise PairSegInputError(f"precision bf16 is not supported on this {device.type} device; use fp32")


def inference_memory_format(device: torch.device) -> torch.memory_format:
    """Layout of the networks' 4D inputs and weights at inference: channels_last on the CPU,
    where oneDNN's convolutions run faster on NHWC tensors; the default layout elsewhere."""
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


@torch.inference_mode()
def predict_volume(model: torch.nn.Module, array: np.ndarray, size: int, device: torch.device,
                   *, window: tuple[float, float] | None = None, batch_size: int = 16,
                   keep_probabilities: bool = False, precision: str = "fp32",
                   events: EventSink = null_events) -> tuple[np.ndarray, np.ndarray | None]:
    """Segment a (Z, H, W) volume slice batch by slice batch.

    ``array`` is normalised to [0, 1] already or, given the intensity ``window`` (see
    ``intensity_window``), holds raw intensities and each batch's slices are normalised as they
    are cut, so no normalised copy of the volume is made. ``array`` may be any view (a canonical
    layout of a stored volume, for example). Returns the decoded label map (Z, H, W) uint8 and,
    when asked, the per-class probabilities (Z, K, H, W) float16 on the native grid.
    ``precision="bf16"`` runs the network under bfloat16 autocast (see ``check_precision``).
    """
    model.eval()
    depth, height, width = array.shape
    labels = np.zeros((depth, height, width), dtype=np.uint8)
    probabilities = (np.zeros((depth, model.num_classes, height, width), dtype=np.float16)
                     if keep_probabilities else None)
    start = time.monotonic()
    for first in range(0, depth, batch_size):
        stop = min(first + batch_size, depth)
        below, above = max(first - 1, 0), min(stop + 1, depth)  # the batch's slices and their neighbours
        slices = array[below:above] if window is None else apply_window(array[below:above], window)
        slices = torch.from_numpy(np.ascontiguousarray(slices, dtype=np.float32))
        stacks = stacks_25d(slices)[first - below:stop - below]
        batch = resize_slices(stacks, size).to(device, memory_format=inference_memory_format(device))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            probs = model.predict_proba(batch).float()
        probs = resize_slices(probs, (height, width)).cpu()
        labels[first:stop] = decode_labels(probs).numpy().astype(np.uint8)
        if probabilities is not None:
            probabilities[first:stop] = probs.numpy().astype(np.float16)
        elapsed = time.monotonic() - start
        events("progress", stage="segment", step=stop, total=depth, fraction=stop / depth,
               eta_s=elapsed / stop * (depth - stop))
    return labels, probabilities


def predict_native(model: torch.nn.Module, volume: Volume, modality: str, size: int, device: torch.device,
                   *, batch_size: int = 16, keep_probabilities: bool = False, precision: str = "fp32",
                   events: EventSink = null_events) -> tuple[np.ndarray, np.ndarray | None]:
    """Segment ``volume`` as stored: lay it out canonically (see ``Orientation``), normalise and
    predict batch by batch, and return labels (Z, H, W) and probabilities (Z, K, H, W) on the
    native grid (a view of the canonical array where the layout differs: no second copy)."""
    orientation = Orientation.of(volume.direction)
    labels, probabilities = predict_volume(model, orientation.apply(volume.array), size, device,
                                           window=intensity_window(volume.array, modality),
                                           batch_size=batch_size, keep_probabilities=keep_probabilities,
                                           precision=precision, events=events)
    labels = np.ascontiguousarray(orientation.invert(labels))
    if probabilities is not None:  # classes ride along as a trailing axis while axes move
        probabilities = np.moveaxis(orientation.invert(np.moveaxis(probabilities, 1, -1)), -1, 1)
    return labels, probabilities


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
        if classes is not None and [c.lower() for c in classes] != [c.lower() for c in self.class_names]:
            raise PairSegInputError(
                f"{self.model_path}: model classes {self.class_names} differ from the requested {list(classes)}")

    def segment(self, volume: Volume, *, keep_largest: bool = True, keep_probabilities: bool = False,
                events: EventSink = null_events) -> Prediction:
        check_image(volume)
        labels, probabilities = predict_native(
            self.model, volume, self.metadata["modality"], int(self.metadata["size"]), self.device,
            batch_size=self.batch_size, keep_probabilities=keep_probabilities, precision=self.precision,
            events=events)
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
