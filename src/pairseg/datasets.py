"""Datasets on disk: a folder with a ``dataset.json`` (Medical Segmentation Decathlon style) or a
bare folder of ``<case>_image.<ext>`` / ``<case>_label.<ext>`` files, and reading one case.

Class names are compared with the one rule of ``pairseg.constants.class_key``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from pairseg.constants import LABEL_SUFFIXES, MODALITIES, READABLE_IMAGE_SUFFIXES, class_key, same_class_names
from pairseg.errors import PairSegInputError
from pairseg.io.locations import refuse_dangling_links
from pairseg.io.read import read_label, read_volume
from pairseg.io.volume import Volume

__all__ = ["Case", "Dataset", "case_name", "parse_classes", "load_dataset", "load_case", "check_image"]


def check_image(volume: Volume, min_slices: int = 3) -> None:
    """Reject images the engine cannot segment, naming the file and the problem."""
    name = volume.path or "image"
    array = volume.array
    if array.ndim != 3:
        raise PairSegInputError(f"{name}: expected a 3D image, got {array.ndim} dimensions")
    if array.shape[0] < min_slices:
        raise PairSegInputError(
            f"{name}: has {array.shape[0]} slice(s); at least {min_slices} are needed for 2.5D input"
        )
    if not np.isfinite(array).all():
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise PairSegInputError(f"{name}: contains {bad} NaN or infinite voxel(s)")
    if array.size == 0 or float(array.max()) == float(array.min()):
        raise PairSegInputError(f"{name}: image is empty or constant (nothing to segment)")


@dataclass
class Case:
    """One annotated volume of a dataset."""

    name: str
    image: Path
    label: Path | None = None
    annotated_slices: list[int] | None = None  # fully annotated slices (pairseg.annotation), if listed


@dataclass
class Dataset:
    """A list of cases with the class names (in label-value order) and the modality."""

    folder: Path
    cases: list[Case]
    class_names: list[str]
    modality: str
    label_values: list[int] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, names: Iterable[str]) -> "Dataset":
        keep = set(names)
        return Dataset(self.folder, [c for c in self.cases if c.name in keep], self.class_names,
                       self.modality, self.label_values)


def case_name(path: str | Path) -> str:
    """The case a file belongs to: its name without the file type (``.nii.gz``, ``.seg.nrrd``,
    ...) and without a ``_image``/``_label``/``_seg``/``_0000`` tag (``liver_03_label.nii.gz`` ->
    ``liver_03``)."""
    name = Path(path).name
    for suffix in sorted(set(READABLE_IMAGE_SUFFIXES + LABEL_SUFFIXES), key=len, reverse=True):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    for tag in ("_image", "_label", "_seg", "_0000"):
        if name.endswith(tag):
            return name[: -len(tag)]
    return name


def parse_classes(text: str | Sequence[str]) -> list[str]:
    """``liver,"right kidney",spleen`` or a list -> clean class names (no background)."""
    import csv

    items = next(csv.reader([text], skipinitialspace=True)) if isinstance(text, str) else list(text)
    names = [item.strip() for item in items if item.strip()]
    if not names:
        raise PairSegInputError("no class names given")
    if len({class_key(n) for n in names}) != len(names):
        raise PairSegInputError(f"duplicate class names in {names}")
    return names


def load_dataset(folder: str | Path, classes: str | Sequence[str] | None = None,
                 modality: str | None = None) -> Dataset:
    """Open a dataset folder: a ``dataset.json`` (Medical Segmentation Decathlon style) or a bare
    folder of ``<case>_image.<ext>`` + ``<case>_label.<ext>`` pairs (then ``classes`` and
    ``modality`` say what the labels mean)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PairSegInputError(f"{folder}: dataset folder does not exist")
    manifest = folder / "dataset.json"
    if manifest.is_file():
        try:
            spec = json.loads(manifest.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise PairSegInputError(f"{manifest}: not a readable JSON file ({error})") from error
        labels = {int(k): str(v).strip() for k, v in spec.get("labels", {}).items()}
        values = sorted(v for v in labels if v != 0)
        if not values:
            raise PairSegInputError(f"{manifest}: 'labels' lists no foreground class")
        if values != list(range(1, len(values) + 1)):
            raise PairSegInputError(f"{manifest}: label values must be 1..K, got {values}")
        names = [labels[v] for v in values]
        if classes is not None and not same_class_names(parse_classes(classes), names):
            raise PairSegInputError(f"{manifest}: classes {names} differ from the requested {parse_classes(classes)}")
        found = str(spec.get("modality", {}).get("0", modality or "")).upper()
        if found not in MODALITIES:
            raise PairSegInputError(f"{manifest}: modality must be MR or CT, got {found!r}")
        if modality is not None and modality.upper() != found:
            raise PairSegInputError(f"{manifest}: dataset modality {found} differs from requested {modality.upper()}")
        cases = []
        for entry in spec.get("training", []):
            image = (folder / entry["image"]).resolve()
            label = (folder / entry["label"]).resolve() if entry.get("label") else None
            listed = entry.get("annotated_slices")
            if listed is not None and (not isinstance(listed, list) or not all(
                    isinstance(z, int) and not isinstance(z, bool) and z >= 0 for z in listed)):
                raise PairSegInputError(f"{manifest}: 'annotated_slices' of {entry['image']} must be a list "
                                        f"of slice indices >= 0, got {listed!r}")
            cases.append(Case(case_name(image), image, label, listed))
        if not cases:
            raise PairSegInputError(f"{manifest}: 'training' lists no case")
        return Dataset(folder, cases, names, found, values)

    if classes is None or modality is None:
        raise PairSegInputError(
            f"{folder}: no dataset.json; give --classes and --modality for a folder of "
            "<case>_image / <case>_label files")
    if modality.upper() not in MODALITIES:
        raise PairSegInputError(f"modality must be MR or CT, got {modality!r}")
    names = parse_classes(classes)
    images = {}
    labels_found = {}
    refuse_dangling_links(folder, lambda name: "_image" in name or "_label" in name or name.endswith(".seg.nrrd"),
                          "dataset folder")
    for path in sorted(folder.iterdir()):
        stem = path.name
        if "_image" in stem:
            images[case_name(path)] = path
        elif "_label" in stem or stem.endswith(".seg.nrrd"):
            labels_found[case_name(path)] = path
    cases = [Case(name, image, labels_found.get(name)) for name, image in sorted(images.items())]
    if not cases:
        raise PairSegInputError(f"{folder}: no <case>_image.<ext> files found")
    return Dataset(folder, cases, names, modality.upper(), list(range(1, len(names) + 1)))


def load_case(case: Case, dataset: Dataset) -> tuple[Volume, np.ndarray]:
    """Read and check one annotated case: (image volume, label map z, y, x uint8)."""
    image = read_volume(case.image)
    check_image(image)
    if case.label is None:
        raise PairSegInputError(f"{case.image}: case {case.name} has no label file")
    labels, _ = read_label(case.label, class_names=dataset.class_names, reference=image)
    if labels.shape != image.array.shape:
        raise PairSegInputError(
            f"{case.label}: label shape {labels.shape} differs from image shape {image.array.shape}")
    high = int(labels.max()) if labels.size else 0
    if labels.min() < 0 or high > dataset.num_classes:
        raise PairSegInputError(
            f"{case.label}: label values up to {high} but only {dataset.num_classes} classes "
            f"{dataset.class_names} are defined")
    return image, labels.astype(np.uint8)
