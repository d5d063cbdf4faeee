"""The one training loop, for pairwise models and single-image baselines alike.

An epoch is the set of training samples drawn for it: slice pairs (intra- and inter-patient,
``pairseg.pairs``) for pairwise models, every slice once for single-image baselines. Batches are
gathered from an in-memory ``SliceStore`` and augmented by a background thread while the network
computes. Every random draw depends only on (seed, epoch) or (seed, step), so a run resumed from a
checkpoint continues exactly as the uninterrupted run would have.

A checkpoint (``<model>.ckpt``) is written atomically after every epoch and when a stop is
requested (SIGINT/SIGTERM or a stop file); ``resume=True`` continues from it. The final model
file is written atomically at the end.
"""

from __future__ import annotations

import json
import math
import queue
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from pairseg import __version__
from pairseg.augment import augment_batch
from pairseg.config import AugmentConfig, TrainConfig
from pairseg.constants import (CHECKPOINT_SUFFIX, DEFAULT_ARCHITECTURE, MODEL_SUFFIX, TRAIN_PRECISIONS, default_colors,
                               same_class_names)
from pairseg.data import CT_WINDOW, default_spacing, MR_PERCENTILES, SliceStore
from pairseg.datasets import Dataset, load_case, load_dataset
from pairseg.orientation import in_plane_spacing, Orientation
from pairseg.distributed import DistributedContext, tensor_digest
from pairseg.errors import PairSegInputError, PairSegOutputError
from pairseg.events import EventSink, null_events
from pairseg import devices
from pairseg.infer import model_preprocessing, predict_native
from pairseg.losses import criterion_for
from pairseg.metrics import evaluate_case, summarize
from pairseg.modelfiles.catalog import resolve_model
from pairseg.modelfiles.weights import atomic_torch_save, load_model, safe_torch_load, save_model
from pairseg.networks import build_model
from pairseg.pairs import default_offsets, sample_pairs
from pairseg.annotation import annotated_offsets, canonical_annotation, empty_slices_inside, summarize_annotation

__all__ = ["TrainConfig", "AugmentConfig", "TrainResult", "train", "checkpoint_path", "EpochPlan", "batch_iterator",
           "prepare_batch", "batch_annotation", "TrainingData", "load_training_data", "build_training_model", "training_budget",
           "TrainingState", "EpochResult", "TrainingLoop", "model_metadata"]


@dataclass
class TrainResult:
    model_path: Path | None
    stopped: bool
    steps: int
    epochs: int
    history: list[dict]
    validation: dict | None


def training_autocast(config: TrainConfig, device: torch.device) -> tuple[bool, torch.dtype]:
    """(autocast enabled, dtype) of the forward pass. ``precision="auto"`` (unless ``amp`` is off,
    which means fp32): on CUDA mixed precision (bfloat16 where the GPU has it, else float16 with a
    gradient scaler), elsewhere bfloat16 autocast where the device runs it natively
    (``devices.bf16_supported``: AVX-512 BF16/AMX CPUs; about 2x faster training at the same Dice,
    benchmarks/RESULTS.md section 3) and fp32 on other CPUs; ``"bf16"``: bfloat16 autocast on any
    device with a native bfloat16 path (AVX-512 BF16/AMX CPUs, Ampere or newer GPUs), refused
    elsewhere; ``"fp32"``: no autocast."""
    if config.precision not in TRAIN_PRECISIONS:
        raise PairSegInputError(f"unknown precision {config.precision!r}; use one of {', '.join(TRAIN_PRECISIONS)}")
    if config.precision == "auto":
        if device.type == "cuda":
            return config.amp, (torch.bfloat16 if config.amp and torch.cuda.is_bf16_supported() else torch.float16)
        return config.amp and devices.bf16_supported(device), torch.bfloat16
    devices.check_precision(config.precision, device)
    return config.precision == "bf16", torch.bfloat16


def precision_name(enabled: bool, dtype: torch.dtype) -> str:
    """"fp32", "bf16" or "fp16": what ``training_autocast``'s answer runs the forward pass in."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype] if enabled else "fp32"


def _as_float32(outputs):
    """A network's outputs (a tensor or a dict of tensors) in float32."""
    if isinstance(outputs, dict):
        return {key: value.float() for key, value in outputs.items()}
    return outputs.float()


def check_output_location(config: TrainConfig) -> Path:
    """Refuse a run's model file location before any data is loaded, and clear what a killed run
    left; returns the model path.

    ``config.out`` must be a writable ``.pairseg`` file location (not a folder), as must its
    checkpoint ``<out>.ckpt``. Without ``resume`` or ``overwrite``, an existing model or an earlier
    run's checkpoint is refused (it would be replaced silently); with ``overwrite`` the new run
    replaces them as it writes its own. Stale temporaries of both files (from a write killed half
    way) are removed. Raises ``PairSegOutputError`` (a ``PairSegInputError``) naming the path.
    """
    from pairseg.atomic import remove_stale_temporaries
    from pairseg.io.locations import check_output

    model = check_output(config.out, (MODEL_SUFFIX,), "model")
    ckpt = check_output(checkpoint_path(model), None, "checkpoint")
    if not config.resume and not config.overwrite:
        if model.exists():
            raise PairSegOutputError(f"{model}: model file exists; pass --overwrite to replace it "
                                     "(or choose another --out)")
        if ckpt.exists():
            raise PairSegOutputError(f"{ckpt}: an earlier run's checkpoint exists; --resume continues it, "
                                     "--overwrite starts afresh and replaces it")
    for path in (model, ckpt):
        remove_stale_temporaries(path)
    return model


def checkpoint_path(model_path: str | Path) -> Path:
    return Path(str(model_path) + CHECKPOINT_SUFFIX)


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def _split_cases(dataset: Dataset, config: TrainConfig) -> tuple[Dataset, Dataset | None]:
    train_set = dataset.subset(config.cases) if config.cases else dataset
    if config.cases:
        missing = sorted(set(config.cases) - {c.name for c in train_set.cases})
        if missing:
            raise PairSegInputError(f"{dataset.folder}: no case named {', '.join(missing)}")
    if config.val:
        val_set = load_dataset(config.val, config.classes, dataset.modality)
        if not same_class_names(val_set.class_names, dataset.class_names):
            raise PairSegInputError(f"{config.val}: validation classes {val_set.class_names} differ "
                                    f"from training classes {dataset.class_names}")
        return train_set, val_set
    if config.val_fraction > 0:
        count = len(train_set.cases)
        n_val = max(1, int(round(config.val_fraction * count)))
        if n_val >= count:
            raise PairSegInputError(f"--val-fraction {config.val_fraction} leaves no training case "
                                    f"out of {count}")
        order = np.random.default_rng(config.seed).permutation(count)
        val_names = {train_set.cases[i].name for i in order[:n_val]}
        return (train_set.subset(c.name for c in train_set.cases if c.name not in val_names),
                train_set.subset(val_names))
    return train_set, None


def _input_grid(config: TrainConfig, volumes, init_meta: dict | None, modality: str) -> tuple[float, str]:
    """(model pixel spacing in mm, MR window rule) of a run: ``config.spacing``, else the
    ``init_from`` model's own (fine-tuning keeps the grid it learnt on), else ``default_spacing``
    of the training volumes for ``config.size``. The MR rule is the init model's, else
    "above-minimum" (``intensity_window``)."""
    previous = model_preprocessing(init_meta) if init_meta is not None else None
    same_modality = previous is not None and str(init_meta["modality"]).upper() == modality
    mr_rule = previous["mr_rule"] if same_modality else "above-minimum"
    if config.spacing is not None:  # TrainConfig.check: > 0
        return float(config.spacing), mr_rule
    if previous is not None and previous["model_spacing"]:
        return previous["model_spacing"], mr_rule
    grids = [(Orientation.of(v.direction).apply(v.array).shape[1:], in_plane_spacing(v)) for v in volumes]
    return default_spacing(grids, config.size), mr_rule


def _load_arrays(dataset: Dataset):
    images, labels = [], []
    for case in dataset.cases:
        image, label = load_case(case, dataset)
        images.append(image)
        labels.append(label)
    return images, labels


class EpochPlan:
    """Which samples each epoch visits, in which order, split into batches per rank."""

    def __init__(self, store: SliceStore, form: str, config: TrainConfig, modality: str,
                 world_size: int = 1):
        self.store = store
        self.pairwise = form != "single"
        self.config = config
        self.offsets = tuple(config.offsets or default_offsets(modality))
        self.world_size = world_size
        self.ranges = store.labelled_ranges() if config.margin is not None else None
        # Partially annotated volumes: samples only among annotated slices, intra pairs also at
        # the offsets that occur between consecutive annotated slices (pairseg.annotation).
        self.volumes = store.annotated_slices() if store.sparse else store.slice_counts
        if store.sparse:
            sparse = [s for s, a in zip(self.volumes, store.annotated) if a is not None]
            self.offsets = tuple(sorted(set(self.offsets) | set(annotated_offsets(sparse))))

    def rows(self, epoch: int) -> np.ndarray:
        """(M, 4) pair rows or (M, 2) slice rows for ``epoch``, shuffled deterministically."""
        seed = self.config.seed * 100_003 + epoch
        counts = self.store.slice_counts
        if self.pairwise:
            rows = sample_pairs(self.volumes, mode=self.config.pair_mode, offsets=self.offsets,
                                inter_repeats=self.config.inter_repeats, labelled_ranges=self.ranges,
                                margin=self.config.margin, seed=seed)
        else:
            rows = np.array([(v, s) for v, slices in enumerate(self.volumes) for s in np.asarray(slices).tolist()]
                            if self.store.sparse else [(v, s) for v, n in enumerate(counts) for s in range(n)],
                            dtype=np.int64)
            if self.ranges is not None:
                keep = [r for r in rows if self.ranges[r[0]] is not None
                        and self.ranges[r[0]][0] - self.config.margin <= r[1] <= self.ranges[r[0]][1] + self.config.margin]
                rows = np.array(keep, dtype=np.int64).reshape(-1, 2)
        if len(rows) == 0:
            raise PairSegInputError("the training set yields no sample (check --margin and the labels)")
        return rows[np.random.default_rng(seed).permutation(len(rows))]

    def steps_per_epoch(self) -> int:
        global_batch = self.config.batch_size * self.world_size
        return max(1, len(self.rows(0)) // global_batch)

    def batches(self, epoch: int, rank: int = 0) -> list[np.ndarray]:
        """This rank's batches: every rank gets the same number; each global batch is split.

        Global batch ``b`` is rows ``[b*G, (b+1)*G)`` of the epoch's shuffled rows (G = batch
        size x world size) and rank ``r`` takes its ``r``-th slice of ``batch_size`` rows. So the
        ranks' batches of an epoch together hold every row once, except the last ``len % G``
        rows, which are dropped (a different remainder each epoch, as the shuffle changes), and
        the concatenation of the ranks' batch ``b`` is exactly a one-process run's batch ``b``
        with ``batch_size x world size``. A set smaller than G is repeated to fill one batch.
        """
        rows = self.rows(epoch)
        size = self.config.batch_size
        global_batch = size * self.world_size
        usable = max(1, len(rows) // global_batch) * global_batch
        if len(rows) < global_batch:  # tiny training sets: repeat rows to fill one batch
            rows = np.resize(rows, (global_batch, rows.shape[1]))
        rows = rows[:usable]
        return [rows[b * global_batch + rank * size: b * global_batch + (rank + 1) * size]
                for b in range(usable // global_batch)]


def prepare_batch(plan: EpochPlan, store: SliceStore, rows: np.ndarray, config: TrainConfig,
                  generator: torch.Generator) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Gather one batch's slices (both members of each pair for a pairwise model) and augment it."""
    if plan.pairwise:
        xa, ya = store.gather(rows[:, 0], rows[:, 1])
        xb, yb = store.gather(rows[:, 2], rows[:, 3])
        return augment_batch([xa, xb], [ya, yb], config.augment, generator)
    x, y = store.gather(rows[:, 0], rows[:, 1])
    return augment_batch([x], [y], config.augment, generator)


def batch_annotation(plan: EpochPlan, store: SliceStore, rows: np.ndarray, num_classes: int
                     ) -> list[torch.Tensor] | None:
    """The (N, K) annotated (slice, class) flags of each pair member of a batch (augmentation
    moves pixels, not these), or None when the store is fully annotated."""
    if not store.sparse:
        return None
    members = ((0, 1), (2, 3)) if plan.pairwise else ((0, 1),)
    return [store.gather_annotated(rows[:, a], rows[:, b], num_classes) for a, b in members]


def batch_iterator(plan: EpochPlan, store: SliceStore, batches: list[np.ndarray], first_step: int,
                    config: TrainConfig, device: torch.device, rank: int, stop: threading.Event,
                    num_classes: int | None = None) -> Iterator[tuple]:
    """Gather and augment batches in a background thread, one or two ahead of the network.
    Yields (images, labels), and for a partially annotated store (images, labels, annotated)
    with ``batch_annotation``'s flags (``num_classes`` is then required)."""
    if store.sparse and num_classes is None:
        raise ValueError("a partially annotated store needs num_classes for its annotation flags")
    ready: queue.Queue = queue.Queue(maxsize=2)
    sentinel = object()

    def produce() -> None:
        try:
            for offset, rows in enumerate(batches):
                if stop.is_set():
                    break
                generator = torch.Generator().manual_seed(
                    (config.seed * 1_000_003 + (first_step + offset) * 131 + rank) % (2 ** 63))
                images, labels = prepare_batch(plan, store, rows, config, generator)
                if device.type == "cuda":
                    images = [t.pin_memory() for t in images]
                if store.sparse:  # partially annotated: the flags ride along as a third item
                    ready.put((images, labels, batch_annotation(plan, store, rows, num_classes)))
                else:
                    ready.put((images, labels))
        except BaseException as error:  # surfaced in the consumer
            ready.put(error)
        ready.put(sentinel)

    thread = threading.Thread(target=produce, name="pairseg-batches", daemon=True)
    thread.start()
    while True:
        item = ready.get()
        if item is sentinel:
            break
        if isinstance(item, BaseException):
            raise item
        yield item
    thread.join()


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def _validate(model: torch.nn.Module, volumes, labels, class_names: list[str], modality: str,
              size: int, device: torch.device, model_spacing: float | None = None,
              mr_rule: str = "above-minimum") -> dict:
    cases = []
    was_training = model.training
    for volume, label in zip(volumes, labels):
        pred, _ = predict_native(model, volume, modality, size, device, model_spacing=model_spacing,
                                 mr_rule=mr_rule)
        cases.append(evaluate_case(pred, label, volume.spacing_zyx, class_names))
    model.train(was_training)
    summary = summarize(cases)
    dice = {name: summary["classes"][name]["dice_mean"] for name in class_names}
    assd = {name: summary["classes"][name]["assd_mean"] for name in class_names}
    mean = float(np.mean([v for v in dice.values() if v is not None])) if dice else float("nan")
    return {"dice": dice, "assd": assd, "mean_dice": mean}


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


class _StopRequest:
    """SIGINT/SIGTERM or the appearance of a stop file ask the loop to stop after this step."""

    def __init__(self, stop_file: str | None):
        self.stop_file = Path(stop_file) if stop_file else None
        self.flag = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.flag = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def requested(self) -> bool:
        if self.stop_file is not None and self.stop_file.exists():
            self.flag = True
        return self.flag


def _signature(dataset: Dataset, config: TrainConfig, arch: str, world_size: int = 1) -> dict:
    """What a checkpoint must agree with to be resumed. The global batch (batch size x ranks)
    counts, not the per-rank one: a checkpoint from 2 ranks x 4 resumes in 1 process x 8."""
    return {"arch": arch, "size": config.size, "global_batch_size": config.batch_size * world_size,
            "classes": dataset.class_names, "cases": [c.name for c in dataset.cases],
            "pair_mode": config.pair_mode, "seed": config.seed}


def _read_checkpoint(ckpt_file: Path, signature: dict) -> dict:
    if not ckpt_file.is_file():
        raise PairSegInputError(f"{ckpt_file}: no checkpoint to resume")
    ckpt = safe_torch_load(ckpt_file, "checkpoint")
    if ckpt.get("format") != "pairseg-checkpoint":
        raise PairSegInputError(f"{ckpt_file}: not a PairSeg checkpoint")
    saved = json.loads(ckpt["signature"])
    if saved != json.loads(json.dumps(signature)):
        changed = sorted(k for k in signature if saved.get(k) != json.loads(json.dumps(signature)).get(k))
        raise PairSegInputError(f"{ckpt_file}: checkpoint was made with different settings ({', '.join(changed)})")
    return ckpt


def train(config: TrainConfig, events: EventSink = null_events) -> TrainResult:
    """Train a model as ``config`` says and write the model file; returns a summary.

    ``config`` is checked (``TrainConfig.check``) and never changed. Events: ``message``,
    ``start``, ``progress`` (every step), ``validation``, ``epoch``, ``checkpoint``, then ``done``
    or ``stopped``. Raises ``PairSegInputError`` for bad settings or data, before any training.
    """
    config.check()
    check_output_location(config)
    dist = DistributedContext.from_environment(config.device)
    try:
        return _train(config, events if dist.is_main else null_events, dist)
    finally:
        dist.close()


# ---------------------------------------------------------------------------------------------
# The loop's steps: data, model, budget, optimiser (TrainingLoop), restore, epochs, metadata
# ---------------------------------------------------------------------------------------------


@dataclass
class TrainingData:
    """What a run trains on, read once: the dataset, its split, the in-memory slices and the
    model grid, and the ``init_from`` model (metadata and weights) when fine-tuning."""

    dataset: Dataset
    train_set: Dataset
    val_set: Dataset | None
    store: SliceStore
    val_volumes: list
    val_labels: list
    model_spacing: float
    mr_rule: str
    arch: str
    init_meta: dict | None = None
    init_state: dict | None = None


def load_training_data(config: TrainConfig, events: EventSink = null_events) -> TrainingData:
    """Open the dataset, split off validation cases, check the ``init_from`` model against it and
    load every training slice into a ``SliceStore`` on the model grid. Raises ``PairSegInputError``
    naming the file and the problem."""
    dataset = load_dataset(config.data, config.classes, config.modality)
    train_set, val_set = _split_cases(dataset, config)

    init_meta: dict | None = None
    init_state = None
    if config.init_from:
        init_model, init_meta = load_model(resolve_model(config.init_from))
        if not same_class_names(init_meta["class_names"], dataset.class_names):
            raise PairSegInputError(f"{config.init_from}: model classes {init_meta['class_names']} differ "
                                    f"from the dataset's {dataset.class_names}")
        if str(init_meta["modality"]).upper() != dataset.modality and not config.cross_modality:
            raise PairSegInputError(f"{config.init_from}: model modality {init_meta['modality']} differs "
                                    f"from the dataset's {dataset.modality} (--cross-modality fine-tunes it "
                                    f"anyway; the new model is a {dataset.modality} model)")
        if config.arch and config.arch != init_meta["arch"]:
            raise PairSegInputError(f"{config.init_from}: is a {init_meta['arch']} model, not {config.arch}")
        init_state = init_model.state_dict()
    arch = config.arch or (init_meta["arch"] if init_meta else DEFAULT_ARCHITECTURE)

    events("message", text=f"loading {len(train_set.cases)} training case(s) from {dataset.folder}")
    volumes, label_maps = _load_arrays(train_set)
    model_spacing, mr_rule = _input_grid(config, volumes, init_meta, dataset.modality)
    annotated = _annotation(config, train_set, volumes, label_maps, events)
    store = SliceStore.from_volumes(volumes, label_maps, dataset.modality, config.size,
                                    [c.name for c in train_set.cases], model_spacing=model_spacing,
                                    mr_rule=mr_rule, annotated=annotated)
    present = store.class_presence(dataset.num_classes)
    absent = [name for name, count in zip(dataset.class_names, present) if count == 0]
    if absent:
        raise PairSegInputError(f"{dataset.folder}: class(es) {', '.join(absent)} absent from every training label")
    val_volumes, val_labels = _load_arrays(val_set) if val_set else ([], [])
    return TrainingData(dataset, train_set, val_set, store, val_volumes, val_labels, model_spacing, mr_rule,
                        arch, init_meta, init_state)


def _annotation(config: TrainConfig, train_set: Dataset, volumes, label_maps, events: EventSink
                ) -> list[np.ndarray | None] | None:
    """Per training case, its (Z, K) annotation map (canonical slice order) when it is partially
    annotated, else None (``pairseg.annotation``): a case is partial with ``config.sparse``, when
    it lists ``annotated_slices`` (dataset.json or ``--annotated-slices``), or when a class is
    missing from slices inside its own extent (then a message says so). None when no case is."""
    from pairseg.annotation import parse_annotated_slices

    listed = parse_annotated_slices(config.annotated_slices) if config.annotated_slices else {}
    unknown = sorted(set(listed) - {c.name for c in train_set.cases})
    if unknown:
        raise PairSegInputError(f"--annotated-slices: no training case named {', '.join(unknown)}")
    k = train_set.num_classes
    out: list[np.ndarray | None] = []
    for case, volume, label in zip(train_set.cases, volumes, label_maps):
        slices = list(case.annotated_slices or []) + listed.get(case.name, [])
        mask = canonical_annotation(volume, label, k, slices, str(case.label))
        partial = config.sparse or bool(slices) or empty_slices_inside(mask) > 0
        if not partial:
            out.append(None)
            continue
        if not mask.any():
            raise PairSegInputError(f"{case.label}: case {case.name} has no annotated slice")
        summary = summarize_annotation(case.name, train_set.class_names, mask)
        how = ("--sparse" if config.sparse else "annotated_slices listed" if slices
               else "detected: unlabelled slices between labelled ones")
        events("message", text=(summary.message() if summary.sparse else
                                f"{case.name}: partially annotated ({how}); training on annotated slices only"))
        out.append(mask)
    return out if any(m is not None for m in out) else None


def build_training_model(config: TrainConfig, data: TrainingData, device: torch.device) -> torch.nn.Module:
    """The network to train, on ``device``: the ``init_from`` model's architecture, options and
    weights when fine-tuning, else a new ``data.arch`` network (weights from torch's RNG)."""
    options = (dict(data.init_meta.get("options", {})) if data.init_meta is not None
               else config.model_options(data.arch))
    model = build_model(data.arch, data.dataset.num_classes, 3, **options)
    if data.init_state is not None:
        model.load_state_dict(data.init_state)
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def training_budget(config: TrainConfig, plan: EpochPlan) -> int:
    """Total optimiser steps of the run: ``steps``, else epochs (default ``DEFAULT_EPOCHS``) x
    steps per epoch of ``plan``."""
    epochs, steps = config.budget()
    return steps if steps is not None else epochs * plan.steps_per_epoch()


def learning_rate(config: TrainConfig, step: int, total_steps: int) -> float:
    """Adam's learning rate for optimiser step ``step`` (0-based) of ``total_steps``:
    ``config.lr`` throughout (``lr_schedule="constant"``), ``lr * (1 - step / total) ** 0.9``
    ("poly", the DeepLab / nnU-Net schedule) or ``lr * (1 + cos(pi * step / total)) / 2``
    ("cosine", Loshchilov & Hutter 2017). A function of the step alone: a resumed run continues
    the schedule exactly."""
    fraction = min(max(step / max(total_steps, 1), 0.0), 1.0)
    if config.lr_schedule == "poly":
        return config.lr * (1.0 - fraction) ** 0.9
    if config.lr_schedule == "cosine":
        return config.lr * 0.5 * (1.0 + math.cos(math.pi * fraction))
    return config.lr


@dataclass
class TrainingState:
    """Where a run is: optimiser steps taken, epochs completed, steps into the current epoch,
    one history record per completed epoch and the latest validation."""

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    history: list = field(default_factory=list)
    validation: dict | None = None


@dataclass
class EpochResult:
    """What ``TrainingLoop.run_epoch`` did: the (rank-averaged) loss of each step, whether a stop
    was requested before the budget, and the number (1-based) of the epoch it completed, if any."""

    losses: list
    stopped: bool
    completed: int | None


StepHook = Callable[["TrainingLoop", float], None]


class TrainingLoop:
    """The optimisation of one model over an ``EpochPlan``: Adam, mixed precision, the training
    step and the epoch. ``pairseg.train`` drives it with checkpoints and validation; the
    benchmarks drive it with milestone evaluations (an ``on_step`` hook).

    Every random draw depends only on (seed, step, rank): dropout is reseeded before each step and
    the batches are drawn by ``batch_iterator``, so a loop restored at step ``s`` continues exactly
    as an uninterrupted one. ``dist`` defaults to one process on the model's device.
    """

    def __init__(self, model: torch.nn.Module, plan: EpochPlan, config: TrainConfig,
                 dist: DistributedContext | None = None, total_steps: int | None = None):
        self.model = model
        self.total_steps = total_steps if total_steps is not None else training_budget(config, plan)
        self.plan = plan
        self.config = config
        self.dist = dist if dist is not None else DistributedContext(device=next(model.parameters()).device)
        self.device = self.dist.device
        self.criterion = criterion_for(model)
        self.net = self.dist.wrap(model, sync_batchnorm=config.sync_batchnorm)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.use_amp, self.amp_dtype = training_autocast(config, self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.amp_dtype == torch.float16)
        self.steps_per_epoch = plan.steps_per_epoch()
        self.state = TrainingState()

    def training_step(self, images: Sequence[torch.Tensor], labels: Sequence[torch.Tensor],
                      annotated: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """One optimiser step on one batch: ``images`` (one (N, 3, S, S) tensor per pair member)
        and ``labels`` ((N, S, S) int64 each), as ``batch_iterator`` yields them, and for
        partially annotated data ``annotated`` ((N, K) bool each: only those positions count).
        Returns this rank's loss (a detached scalar tensor) and advances ``state.step``."""
        config, device = self.config, self.device
        # Dropout draws depend only on (seed, step, rank): a resumed run repeats them exactly.
        torch.manual_seed((config.seed * 1_000_003 + self.state.step * 7_919 + self.dist.rank) % (2 ** 63))
        images = [t.to(device, non_blocking=True) for t in images]
        labels = [t.to(device, non_blocking=True) for t in labels]
        if config.channels_last:
            images = [t.contiguous(memory_format=torch.channels_last) for t in images]
        with torch.autocast(device_type=device.type, dtype=self.amp_dtype, enabled=self.use_amp):
            outputs = self.net(*images)
        if self.use_amp:  # the Dice losses in float32 whatever the forward pass ran in
            outputs = _as_float32(outputs)
        if annotated is not None:
            annotated = [t.to(device) for t in annotated]
        loss = self.criterion(outputs, *labels, annotated=annotated)
        rate = learning_rate(config, self.state.step, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = rate
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.state.step += 1
        self.state.step_in_epoch += 1
        return loss.detach()

    def run_epoch(self, total_steps: int, stop_requested: Callable[[], bool] = lambda: False,
                  on_step: StepHook | None = None) -> EpochResult:
        """Train the rest of the current epoch, or up to ``total_steps``, or until a rank asks to
        stop (``stop_requested``, checked after each step). ``on_step(loop, loss)`` is called
        after every step with the loss averaged over the ranks. A completed epoch advances
        ``state.epoch``. Raises RuntimeError if the loss is not finite."""
        state = self.state
        batches = self.plan.batches(state.epoch, self.dist.rank)[state.step_in_epoch:]
        losses: list[float] = []
        stopped = False
        halt = threading.Event()
        iterator = batch_iterator(self.plan, self.plan.store, batches, state.step, self.config, self.device,
                                  self.dist.rank, halt, self.model.num_classes)
        for batch in iterator:
            loss = self.training_step(*batch)
            # Loss averaged over the ranks, and whether any rank asked to stop: one all-reduce.
            value, stop_now = self.dist.reduce_step(float(loss), stop_requested())
            if not math.isfinite(value):
                halt.set()
                raise RuntimeError(f"training diverged: loss is {value} at step {state.step}")
            losses.append(value)
            if on_step is not None:
                on_step(self, value)
            if state.step >= total_steps or stop_now:
                stopped = state.step < total_steps
                halt.set()
                break
        for _ in iterator:  # drain the producer thread after an early break
            pass
        completed = None
        if not stopped and (state.step_in_epoch >= self.steps_per_epoch or state.step >= total_steps):
            state.epoch += 1
            state.step_in_epoch = 0
            completed = state.epoch
        return EpochResult(losses, stopped, completed)

    def checkpoint(self, signature: dict) -> dict:
        """The resumable state (``restore`` reads it): weights, optimiser, scaler, counters, history."""
        state = self.state
        return {
            "format": "pairseg-checkpoint", "engine_version": __version__,
            "signature": json.dumps(signature), "config": json.dumps(self.config.to_dict(), default=str),
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "step": state.step, "epoch": state.epoch, "step_in_epoch": state.step_in_epoch,
            "history": json.dumps(state.history),
            "validation": json.dumps(state.validation) if state.validation else "",
        }

    def restore(self, ckpt: dict) -> None:
        """Continue from a ``checkpoint()`` dict (already checked by ``_read_checkpoint``)."""
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.state = TrainingState(int(ckpt["step"]), int(ckpt["epoch"]), int(ckpt["step_in_epoch"]),
                                   json.loads(ckpt["history"]),
                                   json.loads(ckpt["validation"]) if ckpt.get("validation") else None)


def _restore(loop: TrainingLoop, ckpt_file: Path, signature: dict, events: EventSink) -> None:
    """``--resume``: every rank reads the checkpoint; a rank that cannot makes all ranks fail alike."""
    dist = loop.dist
    ckpt, problem = None, None
    try:
        ckpt = _read_checkpoint(ckpt_file, signature)
    except PairSegInputError as error:
        problem = str(error)
    problems = [(r, p) for r, p in enumerate(dist.gather_objects(problem)) if p]
    if problems:
        raise PairSegInputError(problems[0][1] if not dist.enabled else
                                f"rank {problems[0][0]}: {problems[0][1]} (with several machines, --out "
                                "must be on a file system that every rank can read)")
    loop.restore(ckpt)
    state = loop.state
    dist.check_agreement({"resumed_at_step": state.step, "epoch": state.epoch, "step_in_epoch": state.step_in_epoch})
    events("message", text=f"resumed from {ckpt_file} at step {state.step} (epoch {state.epoch + 1})")


def _check_ranks_agree(config: TrainConfig, data: TrainingData, model: torch.nn.Module, dist: DistributedContext,
                       total_steps: int) -> None:
    """Before DDP, which would fail obscurely on different models: every rank has the same settings and data."""
    shared = {k: v for k, v in config.to_dict().items() if k not in ("data", "out", "val", "init_from",
                                                                       "stop_file", "device")}
    store = data.store
    dist.check_agreement({**shared, "arch": data.arch, "options": model.options, "classes": data.dataset.class_names,
                          "modality": data.dataset.modality, "cases": [c.name for c in data.train_set.cases],
                          "slices": store.slice_counts, "labels": tensor_digest(store.labels),
                          "images": tensor_digest(store.images, stride=97), "total_steps": total_steps})


def model_metadata(config: TrainConfig, data: TrainingData, state: TrainingState, samples_per_epoch: int,
                   world_size: int = 1) -> dict:
    """The metadata of the trained model file (``modelfiles.weights.save_model`` adds format, weights hash,
    architecture and options): classes, colours, modality, grid, preprocessing and training record."""
    dataset, train_set = data.dataset, data.train_set
    seen = list(dict.fromkeys((data.init_meta or {}).get("training", {}).get("seen_cases", []) +
                              [c.name for c in train_set.cases]))
    return {
        "class_names": dataset.class_names,
        "class_colors": [list(c) for c in default_colors(dataset.class_names)],
        "modality": dataset.modality,
        "size": config.size,
        "spacing": data.model_spacing,
        "preprocessing": {"modality": dataset.modality, "ct_window": list(CT_WINDOW),
                          "mr_percentiles": list(MR_PERCENTILES), "mr_window_rule": data.mr_rule,
                          "stack": "2.5D (z-1, z, z+1)",
                          "resample": f"in-plane {data.model_spacing:.4g} mm pixels (bilinear); training slices "
                                      f"centred on {config.size}x{config.size}"},
        "training": {
            "dataset": dataset.folder.name, "cases": [c.name for c in train_set.cases],
            "seen_cases": seen, "slices": data.store.num_slices, "samples_per_epoch": samples_per_epoch,
            "steps": state.step, "epochs": state.epoch, "world_size": world_size,
            "init_from": str(config.init_from) if config.init_from else None,
            "settings": {k: v for k, v in config.to_dict().items()
                         if k not in ("data", "out", "resume", "stop_file", "overwrite")},
            "history": state.history,
        },
        "validation": state.validation or {},
    }


def _train(config: TrainConfig, events: EventSink, dist: DistributedContext) -> TrainResult:
    torch.manual_seed(config.seed + dist.rank)
    out = Path(config.out)
    ckpt_file = checkpoint_path(out)
    training_autocast(config, dist.device)  # an unsupported precision is refused before any data is read
    data = load_training_data(config, events)
    model = build_training_model(config, data, dist.device)
    plan = EpochPlan(data.store, model.training_form, config, data.dataset.modality, dist.world_size)
    total_steps = training_budget(config, plan)
    signature = {**_signature(data.train_set, config, data.arch, dist.world_size),
                 "spacing": round(data.model_spacing, 6)}
    if dist.enabled:
        _check_ranks_agree(config, data, model, dist, total_steps)
    loop = TrainingLoop(model, plan, config, dist, total_steps)
    if config.resume:
        _restore(loop, ckpt_file, signature, events)
    state = loop.state

    samples_per_epoch = len(plan.rows(0))
    events("start", arch=data.arch, device=str(dist.device), world_size=dist.world_size,
           cases=len(data.train_set.cases), val_cases=len(data.val_set.cases) if data.val_set else 0,
           slices=data.store.num_slices, samples_per_epoch=samples_per_epoch, steps_per_epoch=loop.steps_per_epoch,
           total_steps=total_steps, start_step=state.step, classes=data.dataset.class_names,
           modality=data.dataset.modality, size=config.size, batch_size=config.batch_size,
           precision=precision_name(loop.use_amp, loop.amp_dtype))

    start_time, start_step = time.monotonic(), state.step

    def progress(loop: TrainingLoop, loss: float) -> None:
        step = loop.state.step
        elapsed = time.monotonic() - start_time
        rate = (step - start_step) / elapsed if elapsed > 0 else 0.0
        events("progress", stage="train", step=step, total=total_steps, epoch=loop.state.epoch + 1, loss=loss,
               fraction=step / total_steps, eta_s=(total_steps - step) / rate if rate > 0 else None)

    stopped = False
    loop.net.train()
    with _StopRequest(config.stop_file) as stop_request:
        while state.step < total_steps and not stopped:
            result = loop.run_epoch(total_steps, stop_request.requested, on_step=progress)
            stopped = result.stopped
            if result.completed is not None:
                record = {"epoch": result.completed, "step": state.step,
                          "loss": float(np.mean(result.losses)) if result.losses else None}
                is_last = state.step >= total_steps
                if data.val_volumes and dist.is_main and (result.completed % config.validate_every == 0 or is_last):
                    state.validation = _validate(model, data.val_volumes, data.val_labels, data.dataset.class_names,
                                                 data.dataset.modality, config.size, dist.device,
                                                 data.model_spacing, data.mr_rule)
                    record.update(val_dice=state.validation["dice"], val_mean_dice=state.validation["mean_dice"])
                    events("validation", epoch=result.completed, step=state.step, **state.validation)
                state.history.append(record)
                events("epoch", **record)
            if dist.is_main:
                atomic_torch_save(loop.checkpoint(signature), ckpt_file)
                events("checkpoint", path=str(ckpt_file), step=state.step, epoch=state.epoch, stopped=stopped)
            dist.barrier()

    if stopped:
        events("stopped", step=state.step, total=total_steps, checkpoint=str(ckpt_file))
        return TrainResult(None, True, state.step, state.epoch, state.history, state.validation)

    if dist.is_main:
        save_model(out, model, model_metadata(config, data, state, samples_per_epoch, dist.world_size))
        ckpt_file.unlink(missing_ok=True)
        events("done", outputs=[str(out)], steps=state.step, epochs=state.epoch, validation=state.validation,
               seconds=round(time.monotonic() - start_time, 2))
    dist.barrier()
    return TrainResult(out, False, state.step, state.epoch, state.history, state.validation)
