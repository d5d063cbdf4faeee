"""``pairseg fill``: annotate a structure on a few slices, get it on every slice in between.

The volume's own annotated slices are the training set (``pairseg.annotation``: a slice is
annotated for class k where k is drawn on it). A pairwise C2FCN learns from them for a time budget,
from scratch or from a model's weights with a new head (``--base``: the classes count as unknown),
then every class is filled between its first and last annotated slice (``extend`` slices more on
each side, as Slicer's *Fill between slices* fills nothing outside). Drawn voxels come back exactly
as drawn, and a class annotated on a slice is never added to or removed from that slice.

Methods (``method``; the default, ``"mci"``, is the one that measured best on this project's 2-core CPU
within the budget, see ``benchmarks/fill.py`` and benchmarks/RESULTS.md: a network trained for a
minute or two there is too unreliable to improve on the contour interpolation on average):

- ``"pairwise"``: the trained network's per-class probabilities, thresholded at 0.5;
- ``"mci"``: ITK's morphological contour interpolation alone (``MorphologicalContourInterpolator``,
  the algorithm of Slicer's *Fill between slices*; Albu et al., IEEE TMI 2008; Zukić et al.,
  Insight Journal 2016), along the canonical slice axis; no training;
- ``"fusion"``: the weighted mean (``FUSION_WEIGHT``) of the network's probability and a soft contour-interpolation prior
  (``mci_prior``: 1 inside the interpolated contour, falling off over ``PRIOR_MM`` across its
  boundary), thresholded at 0.5: the shape prior holds the structure together where the image is
  ambiguous and the network moves the boundary where the image shows it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from pairseg.annotation import annotated_mask, class_extents
from pairseg.constants import DEFAULT_FILL_METHOD, FILL_METHODS
from pairseg.errors import PairSegInputError, PairSegOutputError
from pairseg.events import EventSink, null_events
from pairseg.io.volume import Volume

__all__ = ["PRIOR_MM", "FillProblem", "FillResult", "fill_problem", "mci_fill",
           "mci_prior", "network_share", "learn", "network_probabilities", "combine", "fill_volume", "fill_files", "resolve_base",
           "default_budget_s"]

PRIOR_MM = 3.0  # width of the contour-interpolation prior's fall-off across its boundary (mm)
FUSION_WEIGHT = 0.5  # the network's share of the fused score (the prior has the rest)
FUSION_RAMP_MM = None  # None: the network's share is FUSION_WEIGHT everywhere; else see network_share


def resolve_base(base: str | None, modality: str | None) -> str | None:
    """The ``--base`` of a fill: ``"auto"`` is the catalog's default model when it is available
    and ``modality`` is unknown or its own (``benchmarks/fill.py``: a model's weights with a new head
    fill far better than a network from scratch within minutes on a CPU), else None (from scratch);
    ``"none"``/None is None; anything else is returned as it is (a model file or catalog name)."""
    if base is None or str(base).lower() == "none":
        return None
    if str(base).lower() != "auto":
        return base
    from pairseg.modelfiles.catalog import load_catalog

    try:
        catalog = load_catalog()
    except PairSegInputError:
        return None
    if catalog.default is None:
        return None
    entry = catalog.entry(catalog.default)
    if not entry.available or (modality is not None and entry.modality.upper() != modality.upper()):
        return None
    return catalog.default


def default_budget_s(device_type: str) -> float:
    """Training seconds when none is given: 3 minutes on a CPU, 1 minute on a GPU."""
    return 180.0 if device_type == "cpu" else 60.0


@dataclass
class FillProblem:
    """One volume to fill, checked, in canonical layout (``pairseg.orientation``).

    ``label``: (Z, H, W) drawn labels 0..K; ``annotated``: (Z, K) bool (``annotated_mask``);
    ``extents``: per class (first, last) annotated slice; ``class_names``: K names."""

    image: Volume
    label_volume: Volume
    label: np.ndarray
    annotated: np.ndarray
    extents: list
    class_names: list
    spacing_zyx: tuple

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass
class FillResult:
    """A filled label map (native layout of the image, uint8/uint16) and how it was made."""

    labels: np.ndarray
    method: str
    seconds: float
    train_seconds: float = 0.0
    steps: int = 0
    model: object = None
    metadata: dict = field(default_factory=dict)


def fill_problem(image: Volume, label_volume: Volume, class_names: Sequence[str], name: str = "label"
                 ) -> FillProblem:
    """Check a sparse label against its image and lay both out canonically. Raises
    ``PairSegInputError`` naming ``name``: no annotated slice; a class drawn on one slice only
    (nothing to fill between) or on every slice of the volume, or none; no class with an
    unannotated slice between its first and last annotated slice (nothing to fill)."""
    from pairseg.io.volume import same_geometry
    from pairseg.orientation import Orientation

    if label_volume.array.shape != image.array.shape or not same_geometry(label_volume, image):
        raise PairSegInputError(f"{name}: label geometry differs from the image {image.path or ''}")
    orientation = Orientation.of(image.direction)
    label = np.ascontiguousarray(orientation.apply(np.asarray(label_volume.array)))
    k = len(class_names)
    if k == 0 or not label.any():
        raise PairSegInputError(f"{name}: no annotated slice (the label is empty)")
    annotated = annotated_mask(label, k, name=name)
    depth = label.shape[0]
    extents = class_extents(annotated)
    fillable = []
    for index, (class_name, extent) in enumerate(zip(class_names, extents)):
        count = int(annotated[:, index].sum())
        if extent is None:
            raise PairSegInputError(f"{name}: class {class_name!r} is drawn on no slice")
        if count == 1:
            raise PairSegInputError(f"{name}: class {class_name!r} is drawn on one slice only (slice "
                                    f"{extent[0]} of the canonical axial order): nothing to fill between; "
                                    "draw it on at least two slices")
        if count == depth:
            raise PairSegInputError(f"{name}: class {class_name!r} is drawn on every slice of the volume: "
                                    "nothing to fill")
        if count < extent[1] - extent[0] + 1:
            fillable.append(class_name)
    if not fillable:
        raise PairSegInputError(f"{name}: every class is drawn on every slice between its first and last "
                                "drawn slice: nothing to fill")
    return FillProblem(image, label_volume, label, annotated, extents, list(class_names),
                       orientation.spacing_zyx(image.spacing))


def mci_fill(label: np.ndarray, spacing_zyx: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """ITK ``MorphologicalContourInterpolator`` along the slice axis (array axis 0) of a (Z, H, W)
    label map 0..K: every label interpolated between the slices it is drawn on (drawn slices kept).
    Needs the ``itk-morphologicalcontourinterpolation`` package."""
    import warnings

    with warnings.catch_warnings():  # ITK's SWIG modules warn about their types while they load (lazily)
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import itk
        except ImportError as error:  # pragma: no cover - a dependency of the project
            raise PairSegInputError("contour interpolation needs the itk-morphologicalcontourinterpolation "
                                    "package (pip install itk-morphologicalcontourinterpolation)") from error
        image = itk.image_from_array(np.ascontiguousarray(label.astype(np.uint8)))
        image.SetSpacing([float(spacing_zyx[2]), float(spacing_zyx[1]), float(spacing_zyx[0])])
        # One ITK thread: the filter's parallel sections corrupted the heap in a process that had
        # loaded torch first (crashes at or before exit, exit code 134/139, on an AVX2 EPYC;
        # tests/test_fill.py runs it 5 times in such a process). It takes well under a second.
        threader = itk.MultiThreaderBase
        threads = threader.GetGlobalDefaultNumberOfThreads()
        threader.SetGlobalDefaultNumberOfThreads(1)
        try:
            filled = itk.morphological_contour_interpolator(image, axis=2)  # ITK axis 2 = array axis 0
        finally:
            threader.SetGlobalDefaultNumberOfThreads(threads)
        return np.asarray(itk.array_from_image(filled)).astype(label.dtype)


def mci_prior(mci: np.ndarray, num_classes: int, spacing_zyx: Sequence[float], width_mm: float = PRIOR_MM
              ) -> np.ndarray:
    """(K, Z, H, W) float32 soft prior from an interpolated label map: per class and slice, 0.5 on
    the contour, towards 1 inside and 0 outside with the in-plane signed distance (logistic,
    scale ``width_mm`` / 4 mm)."""
    from scipy import ndimage

    prior = np.zeros((num_classes,) + mci.shape, dtype=np.float32)
    sampling = (float(spacing_zyx[1]), float(spacing_zyx[2]))
    scale = max(width_mm, 1e-3) / 4.0
    for k in range(1, num_classes + 1):
        for z in np.flatnonzero((mci == k).reshape(len(mci), -1).any(axis=1)):
            inside = mci[z] == k
            distance = (ndimage.distance_transform_edt(~inside, sampling=sampling)
                        - ndimage.distance_transform_edt(inside, sampling=sampling))
            prior[k - 1, z] = 1.0 / (1.0 + np.exp(np.clip(distance / scale, -50, 50)))
    return prior


def _head_keys(arch: str, options: dict) -> set:
    """Names of the weights that depend on the number of classes (the head) for ``arch``."""
    from pairseg.networks import build_model

    one, two = build_model(arch, 1, 3, **options).state_dict(), build_model(arch, 2, 3, **options).state_dict()
    return {key for key in one if one[key].shape != two[key].shape}


def _base_start(base: str, modality: str | None) -> tuple[dict, dict, dict, str]:
    """(metadata, weights without the class-dependent head, network options, modality) of a c2fcn
    base model; refuses another architecture or a modality other than ``modality`` (when given)."""
    from pairseg.modelfiles.catalog import resolve_model
    from pairseg.modelfiles.weights import load_model

    base_model, meta = load_model(resolve_model(base))
    if base_model.arch != "c2fcn":
        raise PairSegInputError(f"{base}: fill starts from a c2fcn model, not {base_model.arch}")
    options = dict(meta.get("options", {}))
    head = _head_keys("c2fcn", options)
    state = {key: value for key, value in base_model.state_dict().items() if key not in head}
    base_modality = str(meta["modality"]).upper()
    if modality is not None and modality.upper() != base_modality:
        raise PairSegInputError(f"{base}: an {base_modality} model; the image is said to be {modality.upper()}")
    return meta, state, options, base_modality


def learn(problem: FillProblem, *, base: str | None = None, modality: str | None = None,
          budget_s: float | None = None, device: str = "auto", size: int = 128, batch_size: int = 4,
          lr: float | None = None, seed: int = 0, freeze_encoder: bool = False, events: EventSink = null_events):
    """Train a pairwise C2FCN on ``problem``'s annotated slices for ``budget_s`` seconds (default
    ``default_budget_s``). ``base``: a model file or catalog name whose weights start the network,
    all but the class-dependent head (new, random), with its modality, pixel spacing and size; None
    trains from scratch at ``size`` pixels on the volume's field of view (``modality`` required).
    ``freeze_encoder`` (with ``base``): train the decoder and head only; the base's encoder weights
    stay as they are (its BatchNorm statistics still follow this volume), and with no gradient
    through the encoder a step costs less, so the budget buys more steps.
    Returns (model, (TrainConfig, TrainingData, TrainingState, samples per epoch), seconds)."""
    import torch

    from pairseg.config import TrainConfig
    from pairseg.data import default_spacing, SliceStore
    from pairseg.datasets import Case, Dataset
    from pairseg.orientation import in_plane_spacing
    from pairseg.devices import resolve_device
    from pairseg.infer import model_preprocessing
    from pairseg.networks import build_model
    from pairseg.train import EpochPlan, TrainingData, TrainingLoop

    if freeze_encoder and base is None:
        raise PairSegInputError("freezing the encoder needs a base model (its weights), not --base none")
    torch_device = resolve_device(device)
    budget = float(budget_s) if budget_s is not None else default_budget_s(torch_device.type)
    init_meta, init_state, options = None, None, {"output_stride": 16, "aggregate": "sum", "readout": "union"}
    if base is not None:
        init_meta, init_state, options, modality = _base_start(base, modality)
        pre = model_preprocessing(init_meta)
        size, model_spacing, mr_rule = pre["size"], pre["model_spacing"], pre["mr_rule"]
    if modality is None:
        raise PairSegInputError("--modality MR or CT is needed with --base none (it sets the intensity window)")
    modality = modality.upper()
    if base is None:
        mr_rule = "above-minimum"
        model_spacing = default_spacing([(problem.label.shape[1:], in_plane_spacing(problem.image))], size)
    config = TrainConfig(data=str(problem.image.path or "image"), out="fill.pairseg", arch="c2fcn", size=size,
                         batch_size=batch_size, lr=lr if lr is not None else (3e-4 if base else 1e-3),
                         seed=seed, device=str(torch_device), steps=10 ** 8, output_stride=16, sparse=True,
                         init_from=str(base) if base else None)
    name = Path(str(problem.image.path or "image")).name
    store = SliceStore.from_volumes([problem.image], [problem.label_volume.array], modality, size, [name],
                                    model_spacing=model_spacing, mr_rule=mr_rule, annotated=[problem.annotated])
    dataset = Dataset(Path(str(problem.image.path or ".")).parent, [Case(name, Path(str(problem.image.path)))],
                      problem.class_names, modality, list(range(1, problem.num_classes + 1)))
    data = TrainingData(dataset, dataset, None, store, [], [], model_spacing, mr_rule, "c2fcn", init_meta, None)
    torch.manual_seed(seed)
    model = build_model("c2fcn", problem.num_classes, 3, **options)
    if init_state is not None:
        missing = model.load_state_dict(init_state, strict=False).missing_keys
        if set(missing) != _head_keys("c2fcn", options):
            raise PairSegInputError(f"{base}: its weights do not fit a c2fcn network (missing {sorted(missing)[:3]})")
    if freeze_encoder:
        model.encoder.requires_grad_(False)
    model.to(torch_device)
    plan = EpochPlan(store, model.training_form, config, modality)
    loop = TrainingLoop(model, plan, config)
    start = time.monotonic()
    deadline = start + budget

    def progress(loop_: TrainingLoop, loss: float) -> None:
        elapsed = time.monotonic() - start
        events("progress", stage="train", step=loop_.state.step, loss=loss, fraction=min(1.0, elapsed / budget),
               eta_s=max(0.0, budget - elapsed))

    events("message", text=f"learning {', '.join(problem.class_names)} from {int(problem.annotated.any(1).sum())} "
                           f"annotated slices for {budget:.0f} s on {torch_device}")
    loop.net.train()
    while time.monotonic() < deadline:
        loop.run_epoch(config.steps, lambda: time.monotonic() >= deadline, on_step=progress)
    seconds = time.monotonic() - start
    return model, (config, data, loop.state, len(plan.rows(0))), seconds


def network_probabilities(model, problem: FillProblem, record, device: str = "auto") -> np.ndarray:
    """The trained network's (K, Z, H, W) float32 class probabilities in canonical layout."""
    from pairseg.devices import resolve_device
    from pairseg.infer import predict_native
    from pairseg.orientation import Orientation

    config, data = record[0], record[1]
    _, probs = predict_native(model, problem.image, data.dataset.modality, config.size, resolve_device(device),
                              keep_probabilities=True, model_spacing=data.model_spacing, mr_rule=data.mr_rule)
    orientation = Orientation.of(problem.image.direction)
    canonical = np.moveaxis(orientation.apply(np.moveaxis(probs, 1, -1)), -1, 0)  # (K, Z, H, W)
    return np.ascontiguousarray(canonical, dtype=np.float32)


def network_share(annotated: np.ndarray, slice_mm: float, weight: float = FUSION_WEIGHT,
                  ramp_mm: float | None = FUSION_RAMP_MM) -> np.ndarray:
    """(K, Z) float32 share of the network in the fused score, per class and slice: ``weight``
    everywhere when ``ramp_mm`` is None; otherwise ``weight * min(1, d / ramp_mm)``, d the distance
    (mm, ``slice_mm`` per slice) from the slice to the nearest slice annotated for the class, so that
    the contour interpolation decides next to the drawn slices and the network between distant ones.

    ``annotated``: (Z, K) bool, as ``FillProblem.annotated``."""
    from scipy import ndimage

    depth, k = annotated.shape
    share = np.full((k, depth), float(weight), dtype=np.float32)
    if ramp_mm is None:
        return share
    for c in range(k):
        if annotated[:, c].any():
            nearest = ndimage.distance_transform_edt(~annotated[:, c], sampling=float(slice_mm))
            share[c] *= np.minimum(1.0, nearest / max(float(ramp_mm), 1e-6)).astype(np.float32)
    return share


def combine(problem: FillProblem, method: str, probabilities: np.ndarray | None = None,
            mci: np.ndarray | None = None, extend: int = 0, weight: float = FUSION_WEIGHT,
            ramp_mm: float | None = FUSION_RAMP_MM) -> np.ndarray:
    """The filled (Z, H, W) canonical label map: per class a score ((K, Z, H, W): the network's
    probability, the contour interpolation (0/1) or their fusion, see the module), kept only on the
    slices between the class's first and last annotated slice (``extend`` more each side) that are
    not annotated for it; one label per voxel (the highest score >= 0.5); drawn voxels on top.
    ``weight``, ``ramp_mm``: the network's share w of the fusion score (``w * p + (1 - w) * prior``),
    constant or growing with the distance to the drawn slices (``network_share``)."""
    if method not in FILL_METHODS:
        raise ValueError(f"unknown fill method {method!r}; expected one of {FILL_METHODS}")
    k = problem.num_classes
    if method == "pairwise":
        scores = np.array(probabilities, dtype=np.float32)
    elif method == "mci":
        scores = np.stack([(mci == c) for c in range(1, k + 1)]).astype(np.float32)
    else:
        share = network_share(problem.annotated, problem.spacing_zyx[0], weight, ramp_mm)[:, :, None, None]
        scores = (share * np.asarray(probabilities, dtype=np.float32)
                  + (1.0 - share) * mci_prior(mci, k, problem.spacing_zyx))
    depth = problem.label.shape[0]
    for c, (first, last) in enumerate(problem.extents):
        window = np.zeros(depth, dtype=bool)
        window[max(0, first - extend):min(depth, last + extend + 1)] = True
        scores[c, ~window | problem.annotated[:, c]] = 0.0
    best = scores.argmax(axis=0)
    top = np.take_along_axis(scores, best[None], axis=0)[0]
    out = np.where(top >= 0.5, best + 1, 0).astype(problem.label.dtype)
    drawn = problem.label > 0
    out[drawn] = problem.label[drawn]
    return out


def fill_volume(image: Volume, label_volume: Volume, class_names: Sequence[str], *, method: str = DEFAULT_FILL_METHOD,
                base: str | None = None, modality: str | None = None, budget_s: float | None = None,
                device: str = "auto", extend: int = 0, size: int = 128, seed: int = 0,
                events: EventSink = null_events, name: str = "label") -> FillResult:
    """Fill a sparsely drawn label map of ``image``; returns the labels in the image's own layout.
    See ``fill_problem`` (checks, before any training), ``learn``, ``combine``."""
    from pairseg.orientation import Orientation

    if method not in FILL_METHODS:
        raise PairSegInputError(f"unknown fill method {method!r}; expected one of {', '.join(FILL_METHODS)}")
    base = resolve_base(base, modality) if method != "mci" else None
    if extend < 0:
        raise PairSegInputError(f"--extend must be >= 0, got {extend}")
    if method != "mci" and base is None and modality is None:
        raise PairSegInputError("--modality MR or CT is needed to train from scratch (--base none, or no catalog "
                                "model for this image); it sets the intensity window")
    if method != "mci" and base is not None:
        from pairseg.modelfiles.catalog import resolve_model

        resolve_model(base)  # a missing model file is refused before any work
    start = time.monotonic()
    problem = fill_problem(image, label_volume, class_names, name)
    model, record, train_seconds, probabilities, mci = None, None, 0.0, None, None
    if method != "mci":
        events("message", text=f"network: {'from the weights of ' + str(base) + ' with a new head' if base else 'from scratch'}")
    if method != "pairwise":
        events("message", text="interpolating contours (ITK MorphologicalContourInterpolator)")
        mci = mci_fill(problem.label, problem.spacing_zyx)
    if method != "mci":
        model, record, train_seconds = learn(problem, base=base, modality=modality, budget_s=budget_s,
                                             device=device, size=size, seed=seed, events=events)
        events("message", text="segmenting the slices in between")
        probabilities = network_probabilities(model, problem, record, device)
    canonical = combine(problem, method, probabilities, mci, extend)
    labels = np.ascontiguousarray(Orientation.of(image.direction).invert(canonical))
    result = FillResult(labels, method, time.monotonic() - start, train_seconds,
                        record[2].step if record else 0, model)
    if record is not None:
        from pairseg.train import model_metadata

        result.metadata = model_metadata(record[0], record[1], record[2], record[3])
    return result


def fill_files(image_path: str | Path, label_path: str | Path, out_path: str | Path, *,
               save_model: str | Path | None = None, overwrite: bool = False, events: EventSink = null_events,
               **options) -> list[Path]:
    """``pairseg fill``: read IMG and the sparse label (.nii.gz, .nrrd, .seg.nrrd: on IMG's grid),
    fill, write OUT (same types, IMG's geometry; atomically) and with ``save_model`` the learned
    model (``.pairseg``). Output locations are checked before anything is read (an existing file is
    replaced only with ``overwrite``); every input problem
    is a ``PairSegInputError`` before any training. ``options``: those of ``fill_volume``."""
    from pairseg.constants import LABEL_SUFFIXES, MODEL_SUFFIX, default_colors
    from pairseg.datasets import check_image
    from pairseg.atomic import remove_stale_temporaries
    from pairseg.io.locations import check_distinct, check_output
    from pairseg.io.read import read_label_volume, read_volume
    from pairseg.io.write import write_labels

    out = check_output(out_path, LABEL_SUFFIXES, "--out")
    model_out = check_output(save_model, (MODEL_SUFFIX,), "--save-model") if save_model else None
    if model_out is not None and options.get("method", DEFAULT_FILL_METHOD) == "mci":
        raise PairSegInputError("--save-model: the mci method trains no model (use --method fusion or pairwise)")
    check_distinct([Path(image_path), Path(label_path)], [("--out", out), ("--save-model", model_out)])
    for option, path in (("--out", out), ("--save-model", model_out)):
        if path is not None and path.exists() and not overwrite:
            raise PairSegOutputError(f"{path}: {option} exists; pass --overwrite to replace it")
    for path in (out, model_out):
        if path is not None:
            remove_stale_temporaries(path)
    image = read_volume(image_path)
    check_image(image)
    label_volume, names = read_label_volume(label_path, reference=image)
    result = fill_volume(image, label_volume, names, events=events, name=str(label_path), **options)
    written = [Path(write_labels(out, result.labels, image, names, default_colors(names)))]
    if model_out is not None:
        from pairseg.modelfiles.weights import save_model as write_model

        written.append(Path(write_model(model_out, result.model, result.metadata)))
    events("done", outputs=[str(p) for p in written], method=result.method, seconds=round(result.seconds, 2),
           train_seconds=round(result.train_seconds, 2), steps=result.steps, classes=names)
    return written
