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
import os
import queue
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from pairseg import __version__
from pairseg.augment import AugmentConfig, augment_batch
from pairseg.data import (CT_WINDOW, MR_PERCENTILES, Dataset, Orientation, SliceStore, default_spacing,
                          in_plane_spacing, load_case, load_dataset)
from pairseg.distributed import DistributedContext, tensor_digest
from pairseg.errors import PairSegInputError
from pairseg.events import EventSink, null_events
from pairseg.infer import PRECISIONS, check_precision, model_preprocessing, predict_native
from pairseg.io import default_colors
from pairseg.losses import criterion_for
from pairseg.metrics import evaluate_case, summarize
from pairseg.catalog import resolve_model
from pairseg.modelfile import atomic_torch_save, load_model, safe_torch_load, save_model
from pairseg.networks import build_model
from pairseg.pairs import default_offsets, sample_pairs

__all__ = ["TrainConfig", "TrainResult", "train", "checkpoint_path"]


@dataclass
class TrainConfig:
    """Everything a training run depends on (the CLI's ``pairseg train`` options)."""

    data: str
    out: str
    arch: str | None = None  # None: the --init-from model's, else "c2fcn"
    epochs: int | None = None
    steps: int | None = None
    size: int = 256
    spacing: float | None = None  # in-plane pixel spacing (mm) of the model; None: chosen (default_spacing)
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 5e-4
    device: str = "auto"
    seed: int = 0
    val: str | None = None
    val_fraction: float = 0.0
    resume: bool = False
    init_from: str | None = None
    cross_modality: bool = False  # fine-tune an init_from model of another modality (refused by default)
    classes: str | None = None
    modality: str | None = None
    cases: list[str] | None = None
    pair_mode: str = "intra+inter"
    offsets: list[int] | None = None
    inter_repeats: int = 2
    margin: int | None = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    output_stride: int = 8
    aggregate: str = "sum"
    readout: str | None = None  # C2FCN read-out of f(x, x); None: see model_readout()
    base: str = "deeplabv3plus"
    amp: bool = True  # CUDA mixed precision when precision is "auto"
    precision: str = "auto"  # "auto" (CUDA: AMP; elsewhere fp32), "fp32", or "bf16" (bfloat16 autocast)
    channels_last: bool = False
    sync_batchnorm: bool = False
    stop_file: str | None = None
    validate_every: int = 1

    def to_dict(self) -> dict:
        return asdict(self)

    def model_readout(self) -> str:
        """The C2FCN read-out: ``readout`` when given; otherwise "union" (AND or XOR of f(x, x)),
        except for identical pairs, whose XOR channels are never shown a foreground pixel and so
        carry nothing to read ("and")."""
        if self.readout is not None:
            return self.readout
        return "and" if self.pair_mode == "identical" else "union"

    def model_options(self, arch: str) -> dict:
        """``build_model`` options of a new ``arch`` network from this configuration."""
        uses_deeplab = arch == "deeplabv3plus" or (arch != "unet" and self.base == "deeplabv3plus")
        options = {"output_stride": self.output_stride} if uses_deeplab else {}
        if arch == "c2fcn":
            options["aggregate"] = self.aggregate
            options["readout"] = self.model_readout()
        if arch in ("c2fcn", "cfcn", "siamfcn") and self.base != "deeplabv3plus":
            options["base"] = self.base
        return options


@dataclass
class TrainResult:
    model_path: Path | None
    stopped: bool
    steps: int
    epochs: int
    history: list[dict]
    validation: dict | None


TRAIN_PRECISIONS = ("auto",) + PRECISIONS


def training_autocast(config: TrainConfig, device: torch.device) -> tuple[bool, torch.dtype]:
    """(autocast enabled, dtype) of the forward pass. ``precision="auto"``: CUDA mixed precision
    (bfloat16 where the GPU has it, else float16 with a gradient scaler) unless ``amp`` is off, and
    fp32 elsewhere; ``"bf16"``: bfloat16 autocast on any device with a native bfloat16 path
    (``infer.bf16_supported``: AVX-512 BF16/AMX CPUs, Ampere or newer GPUs), refused elsewhere;
    ``"fp32"``: no autocast."""
    if config.precision not in TRAIN_PRECISIONS:
        raise PairSegInputError(f"unknown precision {config.precision!r}; use one of {', '.join(TRAIN_PRECISIONS)}")
    if config.precision == "auto":
        use_amp = config.amp and device.type == "cuda"
        return use_amp, (torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16)
    check_precision(config.precision, device)
    return config.precision == "bf16", torch.bfloat16


def _as_float32(outputs):
    """A network's outputs (a tensor or a dict of tensors) in float32."""
    if isinstance(outputs, dict):
        return {key: value.float() for key, value in outputs.items()}
    return outputs.float()


def checkpoint_path(model_path: str | Path) -> Path:
    return Path(str(model_path) + ".ckpt")


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
        if [n.lower() for n in val_set.class_names] != [n.lower() for n in dataset.class_names]:
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
    if config.spacing is not None:
        if config.spacing <= 0:
            raise PairSegInputError(f"--spacing must be positive, got {config.spacing}")
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

    def rows(self, epoch: int) -> np.ndarray:
        """(M, 4) pair rows or (M, 2) slice rows for ``epoch``, shuffled deterministically."""
        seed = self.config.seed * 100_003 + epoch
        counts = self.store.slice_counts
        if self.pairwise:
            rows = sample_pairs(counts, mode=self.config.pair_mode, offsets=self.offsets,
                                inter_repeats=self.config.inter_repeats, labelled_ranges=self.ranges,
                                margin=self.config.margin, seed=seed)
        else:
            rows = np.array([(v, s) for v, n in enumerate(counts) for s in range(n)], dtype=np.int64)
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


def _batch_iterator(plan: EpochPlan, store: SliceStore, batches: list[np.ndarray], first_step: int,
                    config: TrainConfig, device: torch.device, rank: int, stop: threading.Event
                    ) -> Iterator[tuple[list[torch.Tensor], list[torch.Tensor]]]:
    """Gather and augment batches in a background thread, one or two ahead of the network."""
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
    """Train a model as ``config`` says and write the model file; returns a summary."""
    dist = DistributedContext.from_environment(config.device)
    try:
        return _train(config, events if dist.is_main else null_events, dist)
    finally:
        dist.close()


def _train(config: TrainConfig, events: EventSink, dist: DistributedContext) -> TrainResult:
    torch.manual_seed(config.seed + dist.rank)
    if config.epochs is not None and config.steps is not None:
        raise PairSegInputError("give either --epochs or --steps, not both")
    if config.epochs is None and config.steps is None:
        config.epochs = 20
    if (config.epochs is not None and config.epochs < 1) or (config.steps is not None and config.steps < 1):
        raise PairSegInputError("--epochs/--steps must be at least 1")
    if config.size < 32 or config.batch_size < 1:
        raise PairSegInputError("--size must be >= 32 and --batch-size >= 1")
    out = Path(config.out)
    ckpt_file = checkpoint_path(out)
    device = dist.device

    dataset = load_dataset(config.data, config.classes, config.modality)
    train_set, val_set = _split_cases(dataset, config)

    init_meta: dict | None = None
    init_state = None
    if config.init_from:
        init_model, init_meta = load_model(resolve_model(config.init_from))
        if [n.lower() for n in init_meta["class_names"]] != [n.lower() for n in dataset.class_names]:
            raise PairSegInputError(f"{config.init_from}: model classes {init_meta['class_names']} differ "
                                    f"from the dataset's {dataset.class_names}")
        if str(init_meta["modality"]).upper() != dataset.modality and not config.cross_modality:
            raise PairSegInputError(f"{config.init_from}: model modality {init_meta['modality']} differs "
                                    f"from the dataset's {dataset.modality} (--cross-modality fine-tunes it "
                                    f"anyway; the new model is a {dataset.modality} model)")
        if config.arch and config.arch != init_meta["arch"]:
            raise PairSegInputError(f"{config.init_from}: is a {init_meta['arch']} model, not {config.arch}")
        init_state = init_model.state_dict()
    arch = config.arch or (init_meta["arch"] if init_meta else "c2fcn")

    events("message", text=f"loading {len(train_set.cases)} training case(s) from {dataset.folder}")
    volumes, label_maps = _load_arrays(train_set)
    model_spacing, mr_rule = _input_grid(config, volumes, init_meta, dataset.modality)
    store = SliceStore.from_volumes(volumes, label_maps, dataset.modality, config.size,
                                    [c.name for c in train_set.cases], model_spacing=model_spacing,
                                    mr_rule=mr_rule)
    present = store.class_presence(dataset.num_classes)
    absent = [name for name, count in zip(dataset.class_names, present) if count == 0]
    if absent:
        raise PairSegInputError(f"{dataset.folder}: class(es) {', '.join(absent)} absent from every training label")
    val_volumes, val_labels = _load_arrays(val_set) if val_set else ([], [])

    options = dict(init_meta.get("options", {})) if init_meta is not None else config.model_options(arch)
    model = build_model(arch, dataset.num_classes, 3, **options)
    if init_state is not None:
        model.load_state_dict(init_state)
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    form = model.training_form
    criterion = criterion_for(model)
    plan = EpochPlan(store, form, config, dataset.modality, dist.world_size)
    per_epoch = plan.steps_per_epoch()
    total_steps = config.steps if config.steps is not None else config.epochs * per_epoch
    signature = {**_signature(train_set, config, arch, dist.world_size), "spacing": round(model_spacing, 6)}
    if dist.enabled:  # before DDP, which would fail obscurely on different models
        shared = {k: v for k, v in config.to_dict().items() if k not in ("data", "out", "val", "init_from",
                                                                           "stop_file", "device")}
        dist.check_agreement({**shared, "arch": arch, "options": options, "classes": dataset.class_names,
                              "modality": dataset.modality, "cases": [c.name for c in train_set.cases],
                              "slices": store.slice_counts, "labels": tensor_digest(store.labels),
                              "images": tensor_digest(store.images, stride=97), "total_steps": total_steps})
    net = dist.wrap(model, sync_batchnorm=config.sync_batchnorm)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    use_amp, amp_dtype = training_autocast(config, device)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    step, epoch, step_in_epoch = 0, 0, 0
    history: list[dict] = []
    validation: dict | None = None
    if config.resume:
        ckpt, problem = None, None
        try:  # every rank reads the checkpoint; a rank that cannot makes all ranks fail alike
            ckpt = _read_checkpoint(ckpt_file, signature)
        except PairSegInputError as error:
            problem = str(error)
        problems = [(r, p) for r, p in enumerate(dist.gather_objects(problem)) if p]
        if problems:
            raise PairSegInputError(problems[0][1] if not dist.enabled else
                                    f"rank {problems[0][0]}: {problems[0][1]} (with several machines, --out "
                                    "must be on a file system that every rank can read)")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        step, epoch, step_in_epoch = int(ckpt["step"]), int(ckpt["epoch"]), int(ckpt["step_in_epoch"])
        history = json.loads(ckpt["history"])
        validation = json.loads(ckpt["validation"]) if ckpt.get("validation") else None
        dist.check_agreement({"resumed_at_step": step, "epoch": epoch, "step_in_epoch": step_in_epoch})
        events("message", text=f"resumed from {ckpt_file} at step {step} (epoch {epoch + 1})")

    pairs_per_epoch = len(plan.rows(0))
    events("start", arch=arch, device=str(device), world_size=dist.world_size, cases=len(train_set.cases),
           val_cases=len(val_set.cases) if val_set else 0, slices=store.num_slices,
           samples_per_epoch=pairs_per_epoch, steps_per_epoch=per_epoch, total_steps=total_steps,
           start_step=step, classes=dataset.class_names, modality=dataset.modality, size=config.size,
           batch_size=config.batch_size)

    def save_checkpoint(stopped: bool) -> None:
        if not dist.is_main:
            return
        atomic_torch_save({
            "format": "pairseg-checkpoint", "engine_version": __version__,
            "signature": json.dumps(signature), "config": json.dumps(config.to_dict(), default=str),
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else {},
            "step": step, "epoch": epoch, "step_in_epoch": step_in_epoch,
            "history": json.dumps(history), "validation": json.dumps(validation) if validation else "",
        }, ckpt_file)
        events("checkpoint", path=str(ckpt_file), step=step, epoch=epoch, stopped=stopped)

    start_time = time.monotonic()
    start_step = step
    stopped = False
    net.train()
    with _StopRequest(config.stop_file) as stop_request:
        while step < total_steps and not stopped:
            batches = plan.batches(epoch, dist.rank)[step_in_epoch:]
            losses: list[float] = []
            halt = threading.Event()
            iterator = _batch_iterator(plan, store, batches, step, config, device, dist.rank, halt)
            for images, labels in iterator:
                # Dropout draws depend only on (seed, step, rank): a resumed run repeats them exactly.
                torch.manual_seed((config.seed * 1_000_003 + step * 7_919 + dist.rank) % (2 ** 63))
                images = [t.to(device, non_blocking=True) for t in images]
                labels = [t.to(device, non_blocking=True) for t in labels]
                if config.channels_last:
                    images = [t.contiguous(memory_format=torch.channels_last) for t in images]
                with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=use_amp):
                    outputs = net(*images)
                if use_amp:  # the Dice losses in float32 whatever the forward pass ran in
                    outputs = _as_float32(outputs)
                loss = criterion(outputs, *labels)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                step += 1
                step_in_epoch += 1
                # Loss averaged over the ranks, and whether any rank asked to stop: one all-reduce.
                value, stop_now = dist.reduce_step(float(loss.detach()), stop_request.requested())
                if not math.isfinite(value):
                    halt.set()
                    raise RuntimeError(f"training diverged: loss is {value} at step {step}")
                losses.append(value)
                elapsed = time.monotonic() - start_time
                rate = (step - start_step) / elapsed if elapsed > 0 else 0.0
                events("progress", stage="train", step=step, total=total_steps, epoch=epoch + 1,
                       loss=value, fraction=step / total_steps,
                       eta_s=(total_steps - step) / rate if rate > 0 else None)
                if step >= total_steps or stop_now:
                    stopped = step < total_steps
                    halt.set()
                    break
            for _ in iterator:  # drain the producer thread after an early break
                pass
            epoch_done = not stopped and (step_in_epoch >= per_epoch or step >= total_steps)
            if epoch_done:
                record = {"epoch": epoch + 1, "step": step,
                          "loss": float(np.mean(losses)) if losses else None}
                is_last = step >= total_steps
                if val_volumes and dist.is_main and ((epoch + 1) % config.validate_every == 0 or is_last):
                    validation = _validate(model, val_volumes, val_labels, dataset.class_names,
                                           dataset.modality, config.size, device, model_spacing, mr_rule)
                    record.update(val_dice=validation["dice"], val_mean_dice=validation["mean_dice"])
                    events("validation", epoch=epoch + 1, step=step, **validation)
                history.append(record)
                events("epoch", **record)
                epoch += 1
                step_in_epoch = 0
            save_checkpoint(stopped)
            dist.barrier()

    if stopped:
        events("stopped", step=step, total=total_steps, checkpoint=str(ckpt_file))
        return TrainResult(None, True, step, epoch, history, validation)

    if dist.is_main:
        seen = list(dict.fromkeys((init_meta or {}).get("training", {}).get("seen_cases", []) +
                                  [c.name for c in train_set.cases]))
        metadata = {
            "class_names": dataset.class_names,
            "class_colors": [list(c) for c in default_colors(dataset.class_names)],
            "modality": dataset.modality,
            "size": config.size,
            "spacing": model_spacing,
            "preprocessing": {"modality": dataset.modality, "ct_window": list(CT_WINDOW),
                              "mr_percentiles": list(MR_PERCENTILES), "mr_window_rule": mr_rule,
                              "stack": "2.5D (z-1, z, z+1)",
                              "resample": f"in-plane {model_spacing:.4g} mm pixels (bilinear); training slices "
                                          f"centred on {config.size}x{config.size}"},
            "training": {
                "dataset": dataset.folder.name, "cases": [c.name for c in train_set.cases],
                "seen_cases": seen, "slices": store.num_slices, "samples_per_epoch": pairs_per_epoch,
                "steps": step, "epochs": epoch, "world_size": dist.world_size,
                "init_from": str(config.init_from) if config.init_from else None,
                "settings": {k: v for k, v in config.to_dict().items() if k not in ("data", "out", "resume", "stop_file")},
                "history": history,
            },
            "validation": validation or {},
        }
        save_model(out, model, metadata)
        ckpt_file.unlink(missing_ok=True)
        events("done", outputs=[str(out)], steps=step, epochs=epoch, validation=validation,
               seconds=round(time.monotonic() - start_time, 2))
    dist.barrier()
    return TrainResult(out, False, step, epoch, history, validation)
