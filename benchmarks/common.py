"""Shared pieces of the PairSeg benchmarks: data location, machine facts, the training loop used
by the accuracy benchmarks and the evaluation of a model on held-out cases.

The training loop here is the engine's own (``pairseg.train.TrainingLoop``: the same pair
sampling, batch producer with augmentation, criterion, Adam settings, mixed precision and seeding),
driven on an in-memory ``SliceStore`` and paused at *milestone* steps through its ``on_step`` hook
to evaluate the model in memory. The engine has no learning-rate schedule, so the model at
milestone ``s`` of a long run is the model a run of ``--steps s`` produces with the same seed and
data.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from pairseg.constants import PAIRWISE_ARCHITECTURES
from pairseg.data import normalize, SliceStore
from pairseg.datasets import load_case, load_dataset
from pairseg.distributed import DistributedContext
from pairseg.infer import predict_volume
from pairseg.metrics import dice as dice_of
from pairseg.metrics import evaluate_case, summarize
from pairseg.networks import build_model
from pairseg.postprocess import keep_largest_component
from pairseg.train import EpochPlan, TrainConfig, TrainingLoop

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
WORK = BENCH / "work"  # git-ignored: trained weights, predictions


def chaos_dir() -> Path:
    folder = Path(os.environ.get("PAIRSEG_CHAOS_DIR", REPO.parent / "shared" / "data" / "chaos_t2"))
    if not (folder / "dataset.json").is_file():
        raise SystemExit(f"CHAOS data not found at {folder} (set PAIRSEG_CHAOS_DIR)")
    return folder


def machine_facts() -> dict:
    facts = {"python": platform.python_version(), "torch": torch.__version__,
             "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
             "loadavg": list(os.getloadavg()), "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in text.splitlines():
            if line.startswith("Model name:"):
                facts["cpu_model"] = line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    if torch.cuda.is_available():
        facts["gpu"] = torch.cuda.get_device_name(0)
    return facts


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


class Cases:
    """Every CHAOS case read once: raw volume, normalised array, labels, spacing."""

    def __init__(self, folder: Path, names: list[str] | None = None):
        self.dataset = load_dataset(folder)
        self.class_names = self.dataset.class_names
        self.modality = self.dataset.modality
        self.names = [c.name for c in self.dataset.cases]
        wanted = set(names) if names else set(self.names)
        self.volume, self.label, self.norm = {}, {}, {}
        for case in self.dataset.cases:
            if case.name not in wanted:
                continue
            image, label = load_case(case, self.dataset)
            self.volume[case.name] = image
            self.label[case.name] = label
            self.norm[case.name] = normalize(image.array, self.modality)

    def spacing_zyx(self, name: str) -> tuple[float, float, float]:
        return tuple(float(s) for s in reversed(self.volume[name].spacing))

    def store(self, names: list[str], size: int) -> SliceStore:
        return SliceStore.from_arrays([self.volume[n].array for n in names], [self.label[n] for n in names],
                                      self.modality, size, names)


# ---------------------------------------------------------------------------------------------
# Training with milestones
# ---------------------------------------------------------------------------------------------


def make_config(arch: str, size: int, batch_size: int, seed: int, pair_mode: str = "intra+inter",
                augment: bool = True, lr: float = 1e-4, weight_decay: float = 5e-4,
                output_stride: int = 8, amp: bool = False, margin: int | None = None) -> TrainConfig:
    config = TrainConfig(data="", out="", arch=arch, size=size, batch_size=batch_size, seed=seed,
                         pair_mode=pair_mode, lr=lr, weight_decay=weight_decay, output_stride=output_stride,
                         amp=amp, margin=margin)
    config.augment.enabled = augment
    return config


def plan_info(store: SliceStore, arch: str, config: TrainConfig, modality: str) -> dict:
    """Samples and steps per epoch of ``arch`` on ``store`` (pairs for a pairwise architecture)."""
    form = "pairwise" if arch in PAIRWISE_ARCHITECTURES else "single"  # EpochPlan asks pairwise or not
    plan = EpochPlan(store, form, config, modality)
    return {"samples_per_epoch": int(len(plan.rows(0))), "steps_per_epoch": int(plan.steps_per_epoch())}


def train_with_milestones(store: SliceStore, arch: str, config: TrainConfig, modality: str, num_classes: int,
                          milestones: list[int], on_milestone, device: torch.device = torch.device("cpu"),
                          log_every: int = 25, log=print, init_state: dict | None = None) -> dict:
    """Train ``arch`` for max(milestones) steps with the engine's loop (``pairseg.train.TrainingLoop``)
    and call ``on_milestone(model, step, epochs_done, mean loss of the last epoch's steps)`` at
    each milestone, from the loop's ``on_step`` hook. The time spent in ``on_milestone`` is left
    out of ``train_seconds_total``. ``init_state``: start from these weights (fine-tuning)."""
    torch.manual_seed(config.seed)  # the engine's start (seed + rank 0): the same initial weights
    model = build_model(arch, num_classes, 3, **config.model_options(arch))
    if init_state is not None:
        model.load_state_dict(init_state)
    model = model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    total = max(milestones)
    loop = TrainingLoop(model, EpochPlan(store, model.training_form, config, modality), config,
                        DistributedContext(device=device), total_steps=total)
    per_epoch = loop.steps_per_epoch
    pending = sorted(set(milestones))
    losses: list[float] = []
    paused = 0.0  # seconds spent evaluating at milestones

    def on_step(loop: TrainingLoop, loss: float) -> None:
        nonlocal paused
        step = loop.state.step
        losses.append(loss)
        if log_every and step % log_every == 0:
            seconds = time.perf_counter() - tick - paused
            log(f"  {arch} step {step}/{total} loss {np.mean(losses[-log_every:]):.4f} "
                f"({seconds / step:.2f} s/step)")
        if pending and step == pending[0]:
            pending.pop(0)
            start = time.perf_counter()
            on_milestone(model, step, step / per_epoch, float(np.mean(losses[-per_epoch:])))
            model.train()
            paused += time.perf_counter() - start

    tick = time.perf_counter()
    model.train()
    while loop.state.step < total:
        loop.run_epoch(total, on_step=on_step)
    train_seconds = time.perf_counter() - tick - paused
    return {"steps_per_epoch": per_epoch, "samples_per_epoch": int(len(loop.plan.rows(0))),
            "train_seconds_total": train_seconds, "loss_curve": [float(np.mean(losses[i:i + 25]))
                                                                 for i in range(0, len(losses), 25)]}


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


def decode_softbg(probs: np.ndarray) -> np.ndarray:
    """Alternative decoding: argmax over [max(0, 1 - sum_k p_k), p_1..p_K] (the usual argmax over
    K+1 softmax channels for single models; for sigmoid AND maps a soft implicit background)."""
    background = np.clip(1.0 - probs.sum(axis=1, keepdims=True), 0.0, None)
    return np.argmax(np.concatenate([background, probs], axis=1), axis=1).astype(np.uint8)


def compact(case: dict) -> dict:
    keep = ("dice", "assd", "intersection", "pred_voxels", "ref_voxels", "n_empty", "mean_dice", "mean_assd")
    return {k: case[k] for k in keep}


def evaluate_model(model: torch.nn.Module, cases: Cases, test_names: list[str], size: int,
                   device: torch.device = torch.device("cpu"), save_pred: Path | None = None,
                   amp_dtype: torch.dtype | None = None, assd: bool = True, other_readout: bool = False) -> dict:
    """Per-case metrics on ``test_names`` with and without largest-component post-processing,
    plus the Dice of the alternative decoding (soft background argmax) and, with
    ``other_readout`` for a C2FCN, the Dice of its other read-out of f(x, x)."""
    names = cases.class_names
    k = len(names)
    raw, lcc, alt = {}, {}, {}
    preds = {}
    tick = time.perf_counter()
    infer_seconds = 0.0
    for name in test_names:
        t0 = time.perf_counter()
        if amp_dtype is not None:
            with torch.autocast(device_type=device.type, dtype=amp_dtype):
                labels, probs = predict_volume(model, cases.norm[name], size, device, keep_probabilities=True)
        else:
            labels, probs = predict_volume(model, cases.norm[name], size, device, keep_probabilities=True)
        infer_seconds += time.perf_counter() - t0
        ref = cases.label[name]
        spacing = cases.spacing_zyx(name)
        score = evaluate_case if assd else dice_only
        raw[name] = compact(score(labels, ref, spacing, names))
        post = keep_largest_component(labels, k).astype(np.uint8)
        lcc[name] = compact(score(post, ref, spacing, names))
        soft = decode_softbg(probs.astype(np.float32))
        alt[name] = {"dice": {c: dice_of(soft == i + 1, ref == i + 1) for i, c in enumerate(names)}}
        if save_pred is not None:
            preds[name] = post
    if save_pred is not None:
        save_pred.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(save_pred, **preds)
    other = other_readout_dice(model, cases, test_names, size, device) if other_readout else None
    return {"raw": summary_of(raw), "lcc": summary_of(lcc), "assd_computed": assd, "other_readout": other,
            "alt_decode_dice": {c: float(np.mean([alt[n]["dice"][c] for n in test_names])) for c in names},
            "per_case": {"raw": raw, "lcc": lcc},
            "infer_seconds": infer_seconds, "eval_seconds": time.perf_counter() - tick}


def other_readout_dice(model: torch.nn.Module, cases: Cases, test_names: list[str], size: int,
                       device: torch.device) -> dict | None:
    """Mean Dice per organ (raw and largest component) of a C2FCN read out the other way
    ("and" for a "union" model and vice versa): the same weights, only the decoding differs."""
    if not hasattr(model, "readout"):
        return None
    own = model.readout
    model.readout = {"union": "and", "and": "union"}[own]
    try:
        result = evaluate_model(model, cases, test_names, size, device, assd=False)
        readout = model.readout
    finally:
        model.readout = own

    def dice(summary):
        return {"classes": {c: v["dice_mean"] for c, v in summary["classes"].items()},
                "mean": summary["mean"]["dice_mean"]}

    return {"readout": readout, "raw": dice(result["raw"]), "lcc": dice(result["lcc"])}


def dice_only(pred: np.ndarray, ref: np.ndarray, spacing, names) -> dict:
    """evaluate_case's Dice fields without the (slow) surface distances: ASSD left None."""
    out = {"dice": {}, "assd": {}, "intersection": {}, "pred_voxels": {}, "ref_voxels": {}}
    for i, c in enumerate(names, start=1):
        p, r = pred == i, ref == i
        out["intersection"][c] = int(np.logical_and(p, r).sum())
        out["pred_voxels"][c], out["ref_voxels"][c] = int(p.sum()), int(r.sum())
        out["dice"][c] = dice_of(p, r)
        out["assd"][c] = None
    out["n_empty"] = 0
    out["mean_dice"] = float(np.mean(list(out["dice"].values())))
    out["mean_assd"] = None
    return out


def summary_of(per_case: dict) -> dict:
    s = summarize(per_case)
    return {"classes": {c: {key: v[key] for key in ("dice_mean", "dice_std", "dice_global", "assd_mean", "n_empty")}
                        for c, v in s["classes"].items()},
            "mean": s["mean"]}
