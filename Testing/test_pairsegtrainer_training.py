"""PairSegTrainer: real training runs on two CHAOS cases started through startTraining (the
engine CLI in a background process), followed through its JSON events to a registered model;
stop -> checkpoint -> resume; fine-tune from the model; the event plumbing with a stand-in engine."""

import json
import sys
import textwrap

import numpy as np
import pytest

from test_pairsegtrainer_helpers import (CHAOS_CLASSES, engineAvailable, loadChaosCase,  # noqa: F401
                                         trainerLib, trainerLogic)

TINY = dict(size=64, batch_size=2, device="cpu", use_steps=True, lr=1e-3)


def _exportChaos(logic, harness, scene, chaosDir, folder, cases=("002", "003")):
    items = []
    for case in cases:
        volume, segmentation, _ = loadChaosCase(harness, scene, chaosDir, case)
        items.append((volume, segmentation))
    logic.exportTrainingSet(items, folder, classNames=CHAOS_CLASSES, modality="MR")
    return items


@pytest.mark.slow
@pytest.mark.chaos
def test_training_run_to_registered_model(trainerLogic, mrml_scene, harness, chaos_dir, tmp_path):
    engineAvailable()
    lib = trainerLib()
    items = _exportChaos(trainerLogic, harness, mrml_scene, chaos_dir, tmp_path / "set")
    output = tmp_path / "models" / "chaos-tiny.pairseg"
    run = trainerLogic.startTraining(lib.TrainingSettings(data=str(tmp_path / "set"), out=str(output),
                                                          steps=20, val_fraction=0.5, **TINY))
    seen = []
    run.onEvent = lambda _job, event: seen.append(event["event"])
    run.wait(timeout=240)
    assert run.state == "done", run.log[-10:]
    for kind in ("start", "progress", "validation", "checkpoint", "done"):
        assert kind in seen, f"no {kind} event: {seen}"
    assert run.fraction == 1.0 and run.step == 20 and run.total == 20
    assert run.curves.lossSteps == [float(s) for s in range(1, 21)]
    assert all(np.isfinite(run.curves.lossValues))
    assert len(run.curves.valEpochs) >= 1 and set(run.curves.classDice) == set(CHAOS_CLASSES)
    # live curves in plot nodes
    steps, losses = run.plots.lossArrays()
    np.testing.assert_allclose(losses, run.curves.lossValues)
    assert run.plots.lossChart.GetNumberOfPlotSeriesNodes() == 1
    assert run.plots.diceChart.GetNumberOfPlotSeriesNodes() == 1 + len(CHAOS_CLASSES)
    # registered model: PairSeg's registry lists it; metadata records classes and seen cases
    assert run.modelPath == str(output) and output.is_file()
    assert [m["path"] for m in trainerLogic.registry.registeredModels()] == [str(output)]
    assert run.metadata["class_names"] == CHAOS_CLASSES and run.metadata["arch"] == "c2fcn"
    assert len(run.metadata["training"]["seen_cases"]) == 1  # the other case is the validation case
    assert not (tmp_path / "models" / "chaos-tiny.pairseg.stop").exists()

    # predicted proxy maps of the trained model for an intra-patient pair
    volume, segmentation = items[0]
    sliceA, sliceB = trainerLogic.pickProxyPair(volume, segmentation, mode="intra", classNames=CHAOS_CLASSES)
    assert abs(sliceA - sliceB) in (3, 5, 7)
    result = trainerLogic.proxyMaps(volume, sliceA, segmentation, volume, sliceB, segmentation, model=str(output))
    assert result.predictedAndNode is None and result.run.state == "running"  # computed in the background
    result.run.wait(timeout=120)
    import slicer

    pAnd = slicer.util.arrayFromVolume(result.predictedAndNode)
    pXor = slicer.util.arrayFromVolume(result.predictedXorNode)
    assert pAnd.shape == pXor.shape == (1, 256, 256)
    assert 0.0 <= pAnd.min() and pAnd.max() <= 1.0 and 0.0 <= pXor.min() and pXor.max() <= 1.0
    coded = slicer.util.arrayFromVolume(result.predictedOverlayNode)
    assert coded.shape == (1, 256, 256) and coded.dtype == np.uint8
    np.testing.assert_array_equal(coded, lib.proxymapnodes.predictedOverlayValues(pAnd, pXor))

    # annotate-then-retrain: fine-tune from this model -> next version, seen cases carried over
    fine = trainerLogic.fineTune(items[:1], str(output), str(tmp_path / "finetune-set"), steps=4, **{
        k: v for k, v in TINY.items() if k not in ("size", "lr")})
    fine.wait(timeout=180)
    assert fine.state == "done", fine.log[-10:]
    assert fine.modelPath.endswith("chaos-tiny_v2.pairseg")
    assert fine.settings.init_from == str(output)
    assert "case_002" in fine.metadata["training"]["seen_cases"]
    assert fine.metadata["training"]["init_from"]
    assert {m["name"] for m in trainerLogic.registry.registeredModels()} == {"chaos-tiny", "chaos-tiny_v2"}


@pytest.mark.slow
@pytest.mark.chaos
def test_stop_leaves_checkpoint_that_resumes(trainerLogic, mrml_scene, harness, chaos_dir, tmp_path):
    engineAvailable()
    lib = trainerLib()
    _exportChaos(trainerLogic, harness, mrml_scene, chaos_dir, tmp_path / "set", cases=("008",))
    output = tmp_path / "stop" / "stopped.pairseg"
    run = trainerLogic.startTraining(lib.TrainingSettings(data=str(tmp_path / "set"), out=str(output),
                                                          steps=10, val_fraction=0.0, **TINY))

    def stopEarly(runningRun, event):
        if event["event"] == "progress" and event.get("step", 0) >= 2 and not runningRun.stopRequested:
            runningRun.stop()

    run.onEvent = stopEarly
    run.wait(timeout=180)
    assert run.state == "cancelled", run.log[-10:]
    assert run.checkpoint and (tmp_path / "stop" / "stopped.pairseg.ckpt").is_file()
    assert not output.exists()  # no partial model
    assert run.resumable and trainerLogic.registry.registeredModels() == []
    stoppedAt = run.step
    assert 2 <= stoppedAt < 10

    resumed = run.resume()
    resumed.wait(timeout=180)
    assert resumed.state == "done", resumed.log[-10:]
    assert json.loads(open(resumed.settings.runFile).read())["resume"] is True   # pairseg train --config
    progress = [e for e in resumed.events if e["event"] == "progress"]
    assert progress[0]["step"] == stoppedAt + 1 and progress[-1]["step"] == 10
    assert resumed.curves is run.curves and resumed.curves.lossSteps[-1] == 10.0
    assert output.is_file() and [m["path"] for m in trainerLogic.registry.registeredModels()] == [str(output)]


# ----------------------------------------------------------------------------------------------
# Event plumbing with a stand-in engine (fast; no torch)
# ----------------------------------------------------------------------------------------------

FAKE_ENGINE = textwrap.dedent("""
    import json, signal, sys, time
    mode = sys.argv[1]
    def emit(**event):
        print(json.dumps(event), flush=True)
    emit(event="start", arch="c2fcn")
    print("a plain log line", flush=True)
    print("a warning on stderr", file=sys.stderr, flush=True)
    output = sys.argv[2]
    if mode == "error":
        emit(event="error", message="dataset.json lists no case", kind="input")
        sys.exit(2)
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    for step in range(1, 6 if mode == "ok" else 1000):
        emit(event="progress", stage="train", step=step, total=5, epoch=1, loss=1.0 / step,
             fraction=step / 5, eta_s=5 - step)
        if stop:
            emit(event="checkpoint", path="ckpt", step=step, epoch=0, stopped=True)
            emit(event="stopped", step=step, total=5, checkpoint="ckpt")
            sys.exit(130)
        time.sleep(0.02 if mode == "ok" else 0.05)
    emit(event="validation", epoch=1, dice={"liver": 0.5, "spleen": None}, mean_dice=0.5)
    open(output, "w").write("model")
    emit(event="done", outputs=[output])
""")


def _fakeRun(mode, folder):
    lib = trainerLib()
    output = str(folder / f"{mode}.pairseg")
    settings = lib.TrainingSettings(out=output)
    return lib.TrainingRun(settings, logic=None, register=False, ensureEngine=False,
                           command=[sys.executable, "-c", FAKE_ENGINE, mode, output]).start()


def test_start_training_builds_the_engine_config_once(trainerLogic, tmp_path, monkeypatch):
    """Issue 21 item 1: on the way from the settings to the engine, the engine's TrainConfig is
    built (and checked) once; the run file is that config; the given settings are not changed."""
    lib = trainerLib()
    from PairSegLib import engine

    schema = engine.torchFreeEngineModule("config")
    built = []
    fromDict = schema.TrainConfig.from_dict.__func__

    def counted(cls, values, source="training settings"):
        built.append(dict(values))
        return fromDict(cls, values, source)

    monkeypatch.setattr(schema.TrainConfig, "from_dict", classmethod(counted))
    commands = []

    def launcher(command, env=None, cwd=None):
        commands.append([str(c) for c in command])
        return engine.launchProcess([sys.executable, "-c", "pass"], env=env, cwd=cwd)

    trainerLogic.launcher = launcher
    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "dataset.json").write_text("{}")
    settings = lib.TrainingSettings(data=str(tmp_path / "set"), out=str(tmp_path / "m.pairseg"), use_steps=True,
                                    steps=5, sparse=True)
    run = trainerLogic.startTraining(settings, plots=False, register=False)
    run.wait(timeout=30, raiseOnError=False)   # the stand-in exits without events: a failed run
    assert len(built) == 1 and len(commands) == 1
    runFile = commands[0][commands[0].index("--config") + 1]
    written = json.loads(open(runFile, encoding="utf-8").read())
    assert written == schema.TrainConfig.from_dict(built[0]).to_dict()   # the config that was checked
    assert (written["steps"], written["epochs"], written["sparse"]) == (5, None, True)
    assert settings.stop_file == "" and run.settings.stop_file == str(tmp_path / "m.pairseg.stop")


def test_run_events_progress_and_curves(tmp_path):
    run = _fakeRun("ok", tmp_path).wait(timeout=30)
    assert run.state == "done" and run.returnCode == 0
    assert run.fraction == 1.0 and run.outputs == [str(tmp_path / "ok.pairseg")]
    assert run.modelPath == str(tmp_path / "ok.pairseg")
    assert run.curves.lossValues == pytest.approx([1.0, 0.5, 1 / 3, 0.25, 0.2])
    assert run.curves.meanDice == [0.5] and run.curves.classDice["liver"] == [0.5]
    assert np.isnan(run.curves.classDice["spleen"][0])
    assert "a plain log line" in run.log and "a warning on stderr" in run.log
    assert json.dumps(run.events)  # events stay JSON-able


def test_run_error_and_stop(tmp_path):
    failed = _fakeRun("error", tmp_path).wait(timeout=30, raiseOnError=False)
    assert failed.state == "failed" and failed.returnCode == 2
    assert failed.errorMessage == "dataset.json lists no case" and failed.errorKind == "input"
    with pytest.raises(trainerLib().EngineError, match="lists no case"):
        _fakeRun("error", tmp_path).wait(timeout=30)
    running = _fakeRun("long", tmp_path)
    while running.poll() and running.step is None:
        pass
    running.stop()
    running.wait(timeout=30)
    assert running.state == "cancelled" and running.checkpoint == "ckpt"
    from PairSegTrainerLib.trainingrun import formatDuration

    assert formatDuration(75) == "1m15s" and formatDuration(None) == "?" and formatDuration(7300) == "2h01m"


def test_fine_tune_starts_from_a_catalog_model_by_name(trainerLogic, mrml_scene, harness, phantom_dir, phantom_model,
                                                        tmp_path, monkeypatch):
    """``fineTune(items, "<catalog name>", ...)``: the catalog's file (checked) is the base, its
    classes and modality shape the export, and the new version is written to the output folder
    (the catalog lives in the extension's folder)."""
    import os
    import subprocess

    from pairseg.modelfiles.weights import read_metadata

    from test_pairsegtrainer_helpers import makeCatalog

    catalog = tmp_path / "catalog"
    makeCatalog(catalog, phantom_model, name="phantom-organs")
    metadata = read_metadata(phantom_model)
    monkeypatch.setenv("PAIRSEG_MODELS_DIR", str(catalog))
    commands = []

    def recordingLauncher(command, env=None, cwd=None):
        commands.append(list(command))
        return subprocess.Popen([sys.executable, "-c", "pass"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)

    trainerLogic.launcher = recordingLauncher
    volume = harness.loadVolume(str(phantom_dir / "case_000_image.nii.gz"), name="case")
    labelNode = harness.loadVolume(str(phantom_dir / "case_000_label.nii.gz"), name="labels", labelmap=True)
    import slicer

    from test_pairsegtrainer_helpers import addSegmentation

    labels = slicer.util.arrayFromVolume(labelNode).copy()
    names = {index + 1: name for index, name in enumerate(metadata["class_names"])}
    segmentation = addSegmentation(mrml_scene, volume, labels, names)
    run = trainerLogic.fineTune([(volume, segmentation)], "phantom-organs", str(tmp_path / "set"),
                                outputFolder=str(tmp_path / "models"), use_steps=True, steps=2)
    (command,) = commands
    settings = json.loads(open(command[command.index("--config") + 1]).read())   # the run file
    assert settings["init_from"] == str(catalog / "phantom-organs.pairseg")
    assert settings["out"] == str(tmp_path / "models" / "phantom-organs_v2.pairseg")
    manifest = json.loads((tmp_path / "set" / "dataset.json").read_text())
    assert list(manifest["labels"].values())[1:] == metadata["class_names"]
    run.wait(timeout=30, raiseOnError=False)   # the stand-in process sends no "done": a failure
    assert run.state == "failed"
    with pytest.raises(ValueError, match="no catalog model of that name"):
        trainerLogic.fineTune([(volume, segmentation)], "no-such-model", str(tmp_path / "set2"))
    assert not os.path.exists(tmp_path / "set2")
