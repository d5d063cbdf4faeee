"""pairseg.train: the one training loop (events, checkpoints, exact resume, fine-tuning, archs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pairseg.augment import AugmentConfig
from pairseg.devices import bf16_supported
from pairseg.errors import PairSegInputError
from pairseg.modelfiles.weights import load_model, read_metadata, safe_torch_load
from pairseg.phantoms import make_phantom_dataset
from pairseg.train import TrainConfig, checkpoint_path, train

CLASSES = ["liver", "right kidney", "left kidney", "spleen"]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    """Three small non-square phantoms (12 x 40 x 56)."""
    return make_phantom_dataset(tmp_path_factory.mktemp("small"), n_cases=3, shape=(12, 40, 56), seed=3)


def _config(data, out, **kw) -> TrainConfig:
    base = dict(data=str(data), out=str(out), arch="c2fcn", size=32, batch_size=4, lr=1e-3, device="cpu",
                output_stride=16, cases=["case_000", "case_001"], pair_mode="intra", offsets=[5])
    base.update(kw)
    return TrainConfig(**base)


class Recorder:
    def __init__(self, stop_file: Path | None = None, stop_at: int | None = None):
        self.events: list[tuple[str, dict]] = []
        self.stop_file, self.stop_at = stop_file, stop_at

    def __call__(self, name, **fields):
        json.dumps(fields, default=str)  # every event must be serialisable
        self.events.append((name, fields))
        if name == "progress" and self.stop_at is not None and fields["step"] == self.stop_at:
            self.stop_file.touch()

    def names(self):
        return [n for n, _ in self.events]

    def of(self, name):
        return [f for n, f in self.events if n == name]


@pytest.fixture(scope="module")
def full_run(small_data, tmp_path_factory):
    """An uninterrupted 2-epoch run (3 steps per epoch) with a validation case."""
    out = tmp_path_factory.mktemp("full") / "full.pairseg"
    recorder = Recorder()
    result = train(_config(small_data, out, epochs=2, cases=["case_000", "case_001", "case_002"],
                           val_fraction=0.34), recorder)
    return out, recorder, result


def test_events_sequence_and_model_metadata(full_run):
    out, recorder, result = full_run
    names = recorder.names()
    assert names[names.index("start")] == "start" and "message" in names[: names.index("start")]
    start = recorder.of("start")[0]
    assert start["total_steps"] == 6 and start["steps_per_epoch"] == 3 and start["val_cases"] == 1
    assert start["classes"] == CLASSES and start["modality"] == "MR"
    assert start["precision"] == ("bf16" if bf16_supported(torch.device("cpu")) else "fp32")  # auto on this CPU
    progress = recorder.of("progress")
    assert [p["step"] for p in progress] == [1, 2, 3, 4, 5, 6]
    assert [p["epoch"] for p in progress] == [1, 1, 1, 2, 2, 2]
    for p in progress:
        assert p["total"] == 6 and 0 < p["fraction"] <= 1 and p["loss"] > 0 and "eta_s" in p
    assert progress[-1]["fraction"] == 1.0
    validation = recorder.of("validation")
    assert [v["epoch"] for v in validation] == [1, 2]
    assert set(validation[0]["dice"]) == set(CLASSES) and 0 <= validation[0]["mean_dice"] <= 1
    assert [c["epoch"] for c in recorder.of("checkpoint")] == [1, 2]
    assert names[-1] == "done" and recorder.of("done")[0]["outputs"] == [str(out)]
    # Order: start < progress < validation < checkpoint (per epoch) < done.
    first = {n: names.index(n) for n in ("start", "progress", "validation", "checkpoint", "done")}
    assert first["start"] < first["progress"] < first["validation"] < first["checkpoint"] < first["done"]
    assert result.steps == 6 and result.epochs == 2 and not result.stopped
    assert not checkpoint_path(out).exists()  # removed once the model file is written

    meta = read_metadata(out)
    for key in ("engine_version", "arch", "options", "class_names", "class_colors", "modality",
                "preprocessing", "size", "training", "validation", "sha256", "created"):
        assert key in meta, key
    assert meta["class_names"] == CLASSES and len(meta["class_colors"]) == 4
    assert meta["size"] == 32 and meta["options"]["output_stride"] == 16
    assert meta["preprocessing"]["mr_percentiles"] == [2, 98]
    training = meta["training"]
    assert len(training["cases"]) == 2 and training["slices"] == 24 and training["samples_per_epoch"] == 14
    assert training["settings"]["lr"] == 1e-3 and training["settings"]["batch_size"] == 4
    assert sorted(training["seen_cases"]) == sorted(training["cases"])
    assert len(training["history"]) == 2 and "val_mean_dice" in training["history"][0]
    assert set(meta["validation"]["dice"]) == set(CLASSES)


def test_stop_then_resume_equals_uninterrupted(small_data, tmp_path):
    reference = tmp_path / "ref.pairseg"
    train(_config(small_data, reference, epochs=2))
    out = tmp_path / "resumed.pairseg"
    stop = tmp_path / "STOP"
    recorder = Recorder(stop, stop_at=4)  # the stop is seen after step 4 or 5: mid-way through epoch 2
    result = train(_config(small_data, out, epochs=2, stop_file=str(stop)), recorder)
    stopped_at = result.steps
    assert result.stopped and stopped_at in (4, 5) and result.model_path is None
    assert not out.exists() and checkpoint_path(out).is_file()
    assert recorder.names()[-1] == "stopped"
    ckpt = safe_torch_load(checkpoint_path(out), "checkpoint")
    assert (ckpt["step"], ckpt["epoch"], ckpt["step_in_epoch"]) == (stopped_at, 1, stopped_at - 3)
    # No temporary files beside the checkpoint (atomic writes).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["STOP", "ref.pairseg", "resumed.pairseg.ckpt"]

    stop.unlink()
    resumed = Recorder()
    result = train(_config(small_data, out, epochs=2, resume=True), resumed)
    assert not result.stopped and result.steps == 6
    assert [p["step"] for p in resumed.of("progress")] == list(range(stopped_at + 1, 7))
    assert resumed.of("start")[0]["start_step"] == stopped_at
    a, _ = load_model(reference)
    b, meta = load_model(out)
    for name, tensor in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[name], tensor, rtol=0, atol=1e-6, msg=name)
    assert meta["training"]["steps"] == 6 and meta["training"]["epochs"] == 2


def test_resume_refuses_other_settings_or_missing_checkpoint(small_data, tmp_path):
    out = tmp_path / "m.pairseg"
    with pytest.raises(PairSegInputError, match="no checkpoint"):
        train(_config(small_data, out, steps=1, resume=True))
    stop = tmp_path / "STOP"
    stop.touch()
    assert train(_config(small_data, out, steps=3, stop_file=str(stop))).stopped
    with pytest.raises(PairSegInputError, match="size"):
        train(_config(small_data, out, steps=3, size=48, resume=True))


def test_init_from_fine_tunes_and_accumulates_seen_cases(full_run, small_data, tmp_path):
    base, _, _ = full_run
    out = tmp_path / "tuned.pairseg"
    recorder = Recorder()
    train(_config(small_data, out, arch=None, steps=1, cases=["case_002"], init_from=str(base)), recorder)
    meta = read_metadata(out)
    before = read_metadata(base)["training"]["seen_cases"]
    assert meta["arch"] == "c2fcn" and meta["options"] == read_metadata(base)["options"]
    assert meta["training"]["seen_cases"] == before + ["case_002"]
    assert meta["training"]["init_from"] == str(base)
    with pytest.raises(PairSegInputError, match="not unet"):
        train(_config(small_data, tmp_path / "x.pairseg", arch="unet", steps=1, init_from=str(base)))
    assert not (tmp_path / "x.pairseg").exists()


def test_init_from_refuses_other_classes_or_modality(full_run, small_data, tmp_path):
    base, _, _ = full_run
    manifest = json.loads((small_data / "dataset.json").read_text())
    for entry in manifest["training"]:
        entry["image"] = str((small_data / entry["image"]).resolve())
        entry["label"] = str((small_data / entry["label"]).resolve())
    ct = tmp_path / "ct"
    ct.mkdir()
    (ct / "dataset.json").write_text(json.dumps({**manifest, "modality": {"0": "CT"}}))
    with pytest.raises(PairSegInputError, match="modality"):
        train(_config(ct, tmp_path / "a.pairseg", steps=1, init_from=str(base)))
    other = tmp_path / "other"
    other.mkdir()
    labels = dict(manifest["labels"], **{"4": "pancreas"})
    (other / "dataset.json").write_text(json.dumps({**manifest, "labels": labels}))
    with pytest.raises(PairSegInputError, match="classes"):
        train(_config(other, tmp_path / "b.pairseg", steps=1, init_from=str(base)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct", "other"]


def test_init_from_accepts_the_same_classes_spelt_otherwise(full_run, small_data, tmp_path):
    """A Trainer export names its classes after the segments (``Right_Kidney``): the same classes
    as a model's ``right kidney`` under the one class-name rule (constants.class_key)."""
    base, _, _ = full_run
    manifest = json.loads((small_data / "dataset.json").read_text())
    for entry in manifest["training"]:
        entry["image"] = str((small_data / entry["image"]).resolve())
        entry["label"] = str((small_data / entry["label"]).resolve())
    spelt = {"1": "Liver", "2": "Right_Kidney", "3": "left-kidney", "4": " SPLEEN"}
    assert [manifest["labels"][k] for k in spelt] == CLASSES
    exported = tmp_path / "exported"
    exported.mkdir()
    (exported / "dataset.json").write_text(json.dumps({**manifest, "labels": {**manifest["labels"], **spelt}}))
    out = tmp_path / "tuned.pairseg"
    train(_config(exported, out, arch=None, steps=1, cases=["case_002"], init_from=str(base)))
    assert read_metadata(out)["class_names"] == ["Liver", "Right_Kidney", "left-kidney", "SPLEEN"]


@pytest.mark.parametrize("arch, extra", [
    ("deeplabv3plus", {}), ("unet", {}), ("cfcn", {}), ("siamfcn", {}), ("c2fcn", {"base": "unet"}),
    ("c2fcn", {"aggregate": "max", "pair_mode": "intra+inter", "offsets": None}),
    ("c2fcn", {"pair_mode": "identical"}),
])
def test_every_architecture_trains_through_the_loop(arch, extra, small_data, tmp_path):
    out = tmp_path / f"{arch}.pairseg"
    recorder = Recorder()
    result = train(_config(small_data, out, arch=arch, steps=2, batch_size=2,
                           augment=AugmentConfig(flip_lr=True), **extra), recorder)
    assert result.steps == 2 and out.is_file()
    model, meta = load_model(out)
    assert meta["arch"] == arch and model.arch == arch
    if "base" in extra:
        assert meta["options"]["base"] == "unet"
    if arch == "c2fcn":  # identical pairs never supervise XOR: their model reads the AND channels
        assert meta["options"]["readout"] == ("and" if extra.get("pair_mode") == "identical" else "union")
    if arch in ("deeplabv3plus", "unet"):
        assert recorder.of("start")[0]["samples_per_epoch"] == 24  # every slice once
    assert all(p["loss"] > 0 for p in recorder.of("progress"))


def test_readout_follows_the_pair_mode_unless_given():
    def readout(**kw):
        return TrainConfig(data="d", out="o", **kw).model_readout()
    assert readout() == "union" and readout(pair_mode="intra") == "union"
    assert readout(pair_mode="identical") == "and"
    assert readout(pair_mode="identical", readout="union") == "union" and readout(readout="and") == "and"


def test_budget_and_size_checks(small_data, tmp_path):
    with pytest.raises(PairSegInputError, match="either"):
        train(_config(small_data, tmp_path / "m.pairseg", epochs=1, steps=1))
    with pytest.raises(PairSegInputError, match="at least 1"):
        train(_config(small_data, tmp_path / "m.pairseg", steps=0))
    with pytest.raises(PairSegInputError, match="--size"):
        train(_config(small_data, tmp_path / "m.pairseg", steps=1, size=8))
    with pytest.raises(PairSegInputError, match="no case named"):
        train(_config(small_data, tmp_path / "m.pairseg", steps=1, cases=["nope"]))
    with pytest.raises(PairSegInputError, match="val-fraction"):
        train(_config(small_data, tmp_path / "m.pairseg", steps=1, val_fraction=0.9, cases=["case_000"]))
    assert list(tmp_path.iterdir()) == []


def test_train_never_changes_the_callers_config(small_data, tmp_path):
    """No budget given: 20 epochs, read from the schema, and the caller's config stays as it was."""
    stop = tmp_path / "STOP"
    stop.touch()
    config = _config(small_data, tmp_path / "m.pairseg", stop_file=str(stop))
    before = config.to_json()
    recorder = Recorder()
    result = train(config, recorder)
    start = recorder.of("start")[0]
    assert result.stopped and start["total_steps"] == 20 * start["steps_per_epoch"]
    assert config.to_json() == before and config.epochs is None


def test_existing_model_file_needs_overwrite(small_data, tmp_path):
    out = tmp_path / "m.pairseg"
    out.write_bytes(b"an earlier model")
    with pytest.raises(PairSegInputError, match="--overwrite"):
        train(_config(small_data, out, steps=1))
    assert out.read_bytes() == b"an earlier model" and sorted(tmp_path.iterdir()) == [out]
    train(_config(small_data, out, steps=1, overwrite=True))
    assert read_metadata(out)["training"]["steps"] == 1


def _load_benchmarks_common():
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "common.py"
    spec = importlib.util.spec_from_file_location("pairseg_benchmarks_common", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_loops_public_steps_and_milestone_hook_reproduce_train(small_data, tmp_path):
    """The benchmarks' milestone training is the engine's loop: the model at milestone s is the
    model ``train`` writes after s steps, with the same per-step losses."""
    from pairseg.train import EpochPlan, TrainingLoop, build_training_model, load_training_data, training_budget

    config = _config(small_data, tmp_path / "m.pairseg", steps=4)
    recorder = Recorder()
    train(config, recorder)
    engine_losses = [p["loss"] for p in recorder.of("progress")]
    engine_weights = load_model(config.out)[0].state_dict()

    torch.manual_seed(config.seed)
    data = load_training_data(config)
    common = _load_benchmarks_common()
    snapshots, logged = {}, []

    def on_milestone(model, step, epochs, loss):
        snapshots[step] = ({k: v.clone() for k, v in model.state_dict().items()}, epochs, loss)

    summary = common.train_with_milestones(data.store, "c2fcn", config, data.dataset.modality,
                                           data.dataset.num_classes, [2, 4], on_milestone, log_every=2,
                                           log=logged.append)
    assert sorted(snapshots) == [2, 4] and len(logged) == 2 and "step 4/4" in logged[-1]
    assert set(summary) == {"steps_per_epoch", "samples_per_epoch", "train_seconds_total", "loss_curve"}
    assert summary["steps_per_epoch"] == recorder.of("start")[0]["steps_per_epoch"]
    weights, epochs, loss = snapshots[4]
    assert epochs == 4 / summary["steps_per_epoch"]
    for name, value in engine_weights.items():
        assert torch.equal(weights[name], value), name
    assert summary["loss_curve"] == [pytest.approx(sum(engine_losses) / 4)]

    # and the same steps driven by hand, with the on_step hook seeing every step once
    torch.manual_seed(config.seed)
    model = build_training_model(config, data, torch.device("cpu"))
    loop = TrainingLoop(model, EpochPlan(data.store, model.training_form, config, "MR"), config)
    steps_seen = []
    total = training_budget(config, loop.plan)
    assert total == 4
    while loop.state.step < total:
        result = loop.run_epoch(total, on_step=lambda lp, value: steps_seen.append((lp.state.step, value)))
    assert result.completed == loop.state.epoch and not result.stopped
    assert steps_seen == list(zip([1, 2, 3, 4], engine_losses))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in engine_weights.items())


def test_bf16_training_runs_bfloat16_autocast_or_is_refused(small_data, tmp_path, monkeypatch):
    """--precision bf16: the forward pass in bfloat16 (losses in float32) where the device has a
    native path; refused with a clear error, before any data is read, where it has none."""
    import pairseg.devices as devices
    from pairseg.train import training_autocast

    cpu = torch.device("cpu")
    native = devices.bf16_supported(cpu)
    # auto: bf16 where the CPU runs it natively, else (and with --no-amp) fp32
    assert training_autocast(_config(small_data, tmp_path / "a.pairseg"), cpu) == (native, torch.bfloat16)
    assert training_autocast(_config(small_data, tmp_path / "a.pairseg", amp=False), cpu)[0] is False
    if devices.bf16_supported(cpu):
        seen = []
        hook = torch.nn.Conv2d.forward

        def spy(self, x):
            seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
            return hook(self, x)

        monkeypatch.setattr(torch.nn.Conv2d, "forward", spy)
        result = train(_config(small_data, tmp_path / "bf16.pairseg", steps=2, precision="bf16",
                               channels_last=True))
        monkeypatch.undo()
        assert seen and set(seen) == {torch.bfloat16}
        assert all(torch.isfinite(h["loss"]) if isinstance(h["loss"], torch.Tensor) else h["loss"] == h["loss"]
                   for h in result.history) and read_metadata(result.model_path)["spacing"] > 0
    monkeypatch.setattr(devices, "bf16_supported", lambda device: False)
    assert training_autocast(_config(small_data, tmp_path / "a.pairseg"), cpu) == (False, torch.bfloat16)
    with pytest.raises(PairSegInputError, match="bf16 is not supported"):
        train(_config(small_data.parent / "missing", tmp_path / "no.pairseg", steps=2, precision="bf16"))
    assert not (tmp_path / "no.pairseg").exists()


def test_learning_rate_schedules():
    from pairseg.train import learning_rate

    def config(schedule):
        return TrainConfig(data="d", out="o.pairseg", lr=1e-3, lr_schedule=schedule)

    assert [learning_rate(config("constant"), s, 10) for s in (0, 5, 10)] == [1e-3] * 3
    assert learning_rate(config("poly"), 0, 10) == pytest.approx(1e-3)
    assert learning_rate(config("poly"), 5, 10) == pytest.approx(1e-3 * 0.5 ** 0.9)
    assert learning_rate(config("poly"), 10, 10) == 0.0
    assert learning_rate(config("cosine"), 5, 10) == pytest.approx(5e-4)
    with pytest.raises(PairSegInputError, match="lr_schedule"):
        TrainConfig.from_dict({"data": "d", "out": "o.pairseg", "lr_schedule": "step"})


def test_poly_schedule_resumes_exactly(small_data, tmp_path):
    reference = tmp_path / "ref.pairseg"
    train(_config(small_data, reference, steps=6, lr_schedule="poly"))
    out = tmp_path / "resumed.pairseg"
    stop = tmp_path / "STOP"
    result = train(_config(small_data, out, steps=6, lr_schedule="poly", stop_file=str(stop)), Recorder(stop, stop_at=2))
    assert result.stopped
    stop.unlink()
    train(_config(small_data, out, steps=6, lr_schedule="poly", resume=True))
    a, _ = load_model(reference)
    b, meta = load_model(out)
    for name, tensor in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[name], tensor, rtol=0, atol=1e-6, msg=name)
    assert meta["training"]["settings"]["lr_schedule"] == "poly"
