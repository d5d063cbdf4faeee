"""The annotate-then-retrain loop in the PairSegTrainer panel (issue 19, Trainer side), offscreen,
for each supported Slicer release, clicked as a user does.

Real parts as in test_widget_trainer.py (Qt widgets from the .ui, Slicer's own
parameterNodeWrapper of the release, real MRML). Segmentation and predicted proxy maps run the
real engine (the small phantom model). Trainings run a stand-in of ``pairseg train`` (STANDIN
below) started through the panel's real command line, run file and launcher: it reads the run
file the panel wrote, prints the engine's events, honours the stop file and SIGTERM the way the
engine does (checkpoint, then exit), resumes from its checkpoint, and writes a real model file
(a copy of the phantom model) so registration, pickers and Segment work on it. Only the
training itself is not real: the engine's own refusal of an existing output is checked on the
run file the panel writes (``check_output_location``), without a torch run.
"""

import json
import os
import sys
import textwrap

import numpy as np
import pytest

from test_widget_pairseg import pump
from test_widget_trainer import syntheticCase

STANDIN = textwrap.dedent('''
    import json, os, shutil, signal, sys, time
    settings = json.load(open(sys.argv[1], encoding="utf-8"))
    out, stop = settings["out"], settings.get("stop_file")
    steps = settings.get("steps") or 20
    hang = os.environ.get("STANDIN_HANG") == "1"
    def emit(**event):
        print(json.dumps(event), flush=True)
    stopping = []
    signal.signal(signal.SIGTERM, (lambda *a: None) if hang else (lambda *a: stopping.append(1)))
    ckpt = out + ".ckpt"
    first = json.load(open(ckpt))["step"] + 1 if settings.get("resume") else 1
    emit(event="start", arch=settings.get("arch"), device="cpu", resume=bool(settings.get("resume")))
    for step in range(first, steps + 1):
        emit(event="progress", stage="train", step=step, total=steps, epoch=1, loss=1.0 / step,
             fraction=step / steps, eta_s=steps - step)
        while hang:   # a hung engine: reads no stop file, ignores SIGTERM
            time.sleep(0.1)
        if stopping or (stop and os.path.exists(stop)):
            json.dump({"step": step}, open(ckpt, "w"))
            emit(event="checkpoint", path=ckpt, step=step)
            emit(event="stopped", step=step, total=steps, checkpoint=ckpt)
            sys.exit(0)
        time.sleep(float(os.environ["STANDIN_STEP_SECONDS"]))
    shutil.copyfile(os.environ["STANDIN_MODEL"], out)
    emit(event="done", outputs=[out])
''')


@pytest.fixture
def loop(slicer_release, module_widget, mrml_scene, phantom_model, tmp_path, monkeypatch):
    """The entered Trainer panel whose ``pairseg train`` runs the stand-in; every other engine
    command (segment, proxy-maps) runs the real engine. ``loop.commands``: every command started."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PAIRSEG_USER_DIR", str(tmp_path / "user"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("STANDIN_MODEL", str(phantom_model))
    monkeypatch.setenv("STANDIN_STEP_SECONDS", "0.15")   # slow enough to click during a run, under load too
    script = tmp_path / "standin_train.py"
    script.write_text(STANDIN)
    widget = module_widget("PairSegTrainer")
    widget.parent.enter()
    from PairSegLib import engine   # on sys.path once the module is loaded, as in Slicer

    commands = []

    def launcher(command, env=None, cwd=None):
        command = [str(c) for c in command]
        commands.append(command)
        if command[1:4] == ["-m", "pairseg", "train"]:
            command = [sys.executable, str(script), command[command.index("--config") + 1]]
        return engine.launchProcess(command, env=env, cwd=cwd)

    widget.logic.launcher = launcher
    widget.commands = commands
    widget.errors = []
    monkeypatch.setattr(sys, "excepthook", lambda *info: widget.errors.append(info))   # slot exceptions
    return widget


def addCase(widget, volume, segmentation):
    widget.ui.volumeSelector.setCurrentNode(volume)
    widget.ui.segmentationSelector.setCurrentNode(segmentation)
    widget.ui.addCaseButton.click()


def setUpTraining(widget, folder, name="loop-model", steps=40):
    ui = widget.ui
    ui.classesLineEdit.text = "liver"
    ui.outputNameLineEdit.text = name
    ui.outputFolderPathLineEdit.currentPath = str(folder)
    ui.stepsRadioButton.setChecked(True)
    ui.stepsSpinBox.value = steps
    ui.sizeSpinBox.value = 32
    ui.deviceComboBox.setCurrentIndex(ui.deviceComboBox.findData("cpu"))


def groupGone(run, timeout=2.0):
    """Whether the run's whole process group is gone (reaped) within ``timeout`` seconds."""
    import subprocess
    import time

    try:
        run.process.wait(timeout)
    except subprocess.TimeoutExpired:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(run._group, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def labelsOf(segmentation, volume, name="liver"):
    import slicer

    return slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentation.GetSegmentation()
                                                      .GetSegmentIdBySegmentName(name), volume).astype(np.uint8)


def test_training_set_keeps_the_labels_as_added(loop, mrml_scene, tmp_path):
    """Item 1: the case holds a hidden snapshot made at Add; a later write into the user's
    segmentation (a Segment Editor edit, a model output) leaves the exported labels byte for byte
    as they were; the user's node is marked PairSeg.TrainingSet; Remove leaves no stray node."""
    import SimpleITK as sitk
    import slicer

    from PairSegTrainerLib import trainingset

    ui = loop.ui
    volume, segmentation = syntheticCase(mrml_scene)
    added = labelsOf(segmentation, volume)
    nodesBefore = mrml_scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
    addCase(loop, volume, segmentation)
    (item,) = loop.panel.items()
    snapshot = item.segmentationNode
    assert snapshot is not segmentation and trainingset.isSnapshot(snapshot)
    assert segmentation.GetAttribute("PairSeg.TrainingSet") == "1" == snapshot.GetAttribute("PairSeg.TrainingSet")
    assert snapshot.GetHideFromEditors() and snapshot.GetDisplayNode() is None
    selectable = [ui.segmentationSelector.nodeFromIndex(i) for i in range(ui.segmentationSelector.nodeCount())]
    assert snapshot not in selectable and segmentation in selectable   # hidden from the selectors

    # a later write into the user's node: other labels for 'liver' and a new segment
    changed = np.zeros_like(added)
    changed[2:6, 5:30, 5:30] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(changed, segmentation, segmentation.GetSegmentation()
                                                     .GetSegmentIdBySegmentName("liver"), volume)
    assert not np.array_equal(labelsOf(segmentation, volume), added)

    ui.classesLineEdit.text = "liver"
    loop.panel.logic.exportTrainingSet(loop.panel.items(), tmp_path / "set", classNames=["liver"], modality="MR")
    manifest = json.loads((tmp_path / "set" / "dataset.json").read_text())
    labelFile = tmp_path / "set" / manifest["training"][0]["label"]
    exported = sitk.GetArrayFromImage(sitk.ReadImage(str(labelFile)))
    assert exported.astype(np.uint8).tobytes() == added.tobytes()

    # adding again takes the labels as they are now, replacing the old snapshot (no stray copy)
    addCase(loop, volume, segmentation)
    (item,) = loop.panel.items()
    assert item.segmentationNode is not snapshot and snapshot.GetScene() is None
    assert np.array_equal(labelsOf(item.segmentationNode, volume), changed)
    # Remove: the snapshot goes, the user's node is no longer marked
    ui.trainingTable.selectRow(0)
    ui.removeCaseButton.click()
    assert loop.panel.items() == [] and segmentation.GetAttribute("PairSeg.TrainingSet") is None
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == nodesBefore
    assert not loop.errors


def test_show_proxy_during_training_then_train_again_then_cleanup(loop, mrml_scene, phantom_model, tmp_path):
    """Item 3 and "twice in a row": Show AND/XOR (a real predicted-maps run) during a training
    keeps the training followed (curves grow, Stop stays, the model is registered); Train again
    with the same name saves a new version (no --overwrite error); cleanup() leaves no process."""
    ui = loop.ui
    panel = loop.panel
    volume, segmentation = syntheticCase(mrml_scene)
    addCase(loop, volume, segmentation)
    setUpTraining(loop, tmp_path / "out", steps=60)
    ui.trainButton.click()
    training = panel.trainingRun
    assert training is not None and ui.trainButton.text == "Stop"
    pump(lambda: (training.step or 0) >= 3, timeout=60)

    ui.proxyVolumeASelector.setCurrentNode(volume)
    ui.proxySegmentationASelector.setCurrentNode(segmentation)
    ui.proxyVolumeBSelector.setCurrentNode(None)
    ui.proxySliceASpinBox.value, ui.proxySliceBSpinBox.value = 3, 6
    ui.proxyModelPathLineEdit.currentPath = str(phantom_model)
    ui.showProxyButton.click()
    proxyRun = panel.latestRun
    assert proxyRun is not training and panel.trainingRun is training
    assert ui.trainButton.text == "Stop" and not ui.fineTuneButton.enabled
    lossesAtClick = len(training.curves.lossValues)
    offered = []   # moments the training ran while Train was offered again

    def bothOver():
        if training.running and (ui.trainButton.text != "Stop" or panel.trainingRun is not training):
            offered.append(training.step)
        return not proxyRun.running and not training.running

    pump(bothOver, timeout=240)
    assert proxyRun.state == "done", proxyRun.log[-10:]
    assert proxyRun.result.predictedAndNode is not None
    assert offered == []
    assert training.state == "done", training.log[-10:]
    assert len(training.curves.lossValues) == 60 > lossesAtClick
    assert training.plots.lossArrays()[0][-1] == 60.0              # the plot followed to the end
    first = str(tmp_path / "out" / "loop-model.pairseg")
    assert panel._parameterNode.currentModel == first
    assert first in [m["path"] for m in panel.logic.registry.registeredModels()]
    assert ui.trainButton.text == "Train"

    # Train again, same name: a new version, nothing replaced, no engine error
    firstBytes = open(first, "rb").read()
    ui.trainButton.click()
    again = panel.trainingRun
    assert again is not training and again.settings.out == str(tmp_path / "out" / "loop-model_v2.pairseg")
    assert panel._parameterNode.outputName == "loop-model_v2" and not again.settings.overwrite
    pump(lambda: (again.step or 0) >= 2, timeout=60)
    assert open(first, "rb").read() == firstBytes
    # module clean-up (Slicer closing) while it runs: the process group is gone
    panel.cleanup()
    assert again.state == "cancelled" and groupGone(again)
    assert not loop.errors


def test_only_drawn_slices_checkbox_reaches_the_run_file(loop, mrml_scene, tmp_path):
    """Issue 20 in the Trainer: the checkbox "Only drawn slices are annotated" is the engine's
    ``sparse`` setting (``training.sparse`` of the parameter node's settings pack); unticked the
    run's settings leave it off, ticked the run file that Train writes (and the engine reads)
    carries it."""
    from pairseg.config import TrainConfig

    ui, panel = loop.ui, loop.panel
    volume, segmentation = syntheticCase(mrml_scene)
    addCase(loop, volume, segmentation)
    setUpTraining(loop, tmp_path / "out", name="sparse-model", steps=3)
    assert not ui.sparseCheckBox.isChecked() and panel._parameterNode.training.sparse is False
    assert panel.runSettings(str(tmp_path)).engineSettings()["sparse"] is False
    ui.sparseCheckBox.setChecked(True)
    assert panel._parameterNode.training.sparse is True
    ui.trainButton.click()
    run = panel.trainingRun
    pump(lambda: not run.running and not panel.timer.isActive(), timeout=60)
    assert run.state == "done", run.log[-10:]
    written = json.loads(open(run.settings.runFile, encoding="utf-8").read())
    assert written["sparse"] is True and TrainConfig.read(run.settings.runFile).sparse is True
    assert written["out"] == str(tmp_path / "out" / "sparse-model.pairseg") and written["steps"] == 3
    assert not loop.errors


def test_existing_output_choices_resume_after_restart_and_stop_escalation(loop, slicer_release, module_widget,
                                                                          mrml_scene, tmp_path, monkeypatch):
    """Item 5: with a checkpoint left by an earlier session, a restarted panel offers Resume and
    continues it; Train on an existing model asks (new version / replace / resume / cancel), and
    the replace run file is one the engine's own output check accepts; Stop of a hung engine
    escalates to a kill."""
    from pairseg.config import TrainConfig
    from pairseg.errors import PairSegInputError
    from pairseg.train import check_output_location

    from PairSegTrainerLib import trainingrun

    ui = loop.ui
    volume, segmentation = syntheticCase(mrml_scene)
    addCase(loop, volume, segmentation)
    setUpTraining(loop, tmp_path / "out", steps=30)
    ui.trainButton.click()
    first = loop.panel.trainingRun
    pump(lambda: (first.step or 0) >= 3, timeout=60)
    ui.trainButton.click()   # Stop
    pump(lambda: not first.running, timeout=60)
    assert first.state == "cancelled" and first.resumable
    stoppedAt = first.step

    # "restart": the module is unloaded and made again; only the files are left
    from slicer_harness import unloadModules

    unloadModules()
    mrml_scene.Clear(0)
    widget = module_widget("PairSegTrainer")
    widget.parent.enter()
    widget.logic.launcher = loop.logic.launcher
    ui = widget.ui
    assert not ui.resumeButton.enabled            # the default output name has no checkpoint
    volume, segmentation = syntheticCase(mrml_scene)
    ui.outputNameLineEdit.text = "loop-model"
    ui.outputFolderPathLineEdit.currentPath = str(tmp_path / "out")
    widget.panel.updateGui()
    assert ui.resumeButton.enabled
    ui.resumeButton.click()
    resumed = widget.panel.trainingRun
    assert resumed.settings.resume and resumed.settings.out == first.settings.out
    pump(lambda: (resumed.step or 0) >= stoppedAt + 2, timeout=60)
    progress = [e for e in resumed.events if e["event"] == "progress"]
    assert progress[0]["step"] == stoppedAt + 1
    ui.trainButton.click()   # Stop again
    pump(lambda: not resumed.running, timeout=60)
    stoppedAgain = resumed.step

    # Train while the unfinished run's checkpoint is there: asked, and Resume continues it
    addCase(widget, volume, segmentation)
    asked = []
    answers = []
    monkeypatch.setattr(widget.panel, "askOutputConflict",
                        lambda path, conflict, versioned: asked.append((path, dict(conflict), versioned))
                        or answers.pop(0))
    answers.append(widget.panel.RESUME)
    ui.trainButton.click()
    assert asked[-1][1] == {"model": False, "checkpoint": True, "resumable": True}
    finishing = widget.panel.trainingRun
    assert finishing.settings.resume and finishing is not resumed
    pump(lambda: not finishing.running, timeout=60)
    assert finishing.state == "done", finishing.log[-10:]
    progress = [e for e in finishing.events if e["event"] == "progress"]
    assert progress[0]["step"] == stoppedAgain + 1 and progress[-1]["step"] == 30
    assert not ui.resumeButton.enabled   # a finished run's checkpoint is not offered

    # Train with the existing name: each answer of the question
    answers.append(widget.panel.CANCEL)
    ui.trainButton.click()
    assert widget.panel.trainingRun is None and asked[-1][0] == first.settings.out
    assert asked[-1][1] == {"model": True, "checkpoint": True, "resumable": False}
    assert asked[-1][2].endswith("loop-model_v2.pairseg")
    answers.append(widget.panel.OVERWRITE)
    ui.trainButton.click()
    replacing = widget.panel.trainingRun
    assert replacing.settings.overwrite and replacing.settings.out == first.settings.out
    # the engine's own rule accepts the run file the panel wrote; without overwrite it refuses
    check_output_location(TrainConfig.read(replacing.settings.runFile))
    with pytest.raises(PairSegInputError, match="exists"):
        check_output_location(TrainConfig.read(replacing.settings.runFile).replace(overwrite=False))

    # Stop of a hung engine: stop file and SIGTERM do nothing; the tree is killed after the timeout
    widget.panel.cleanup()
    widget.panel.setParameterNode(widget.panel.parameterClass(widget.logic.getParameterNode()))
    monkeypatch.setenv("STANDIN_HANG", "1")
    monkeypatch.setattr(trainingrun, "STOP_KILL_SECONDS", 1.0)
    answers.append(widget.panel.NEW_VERSION)
    ui.trainButton.click()
    hung = widget.panel.trainingRun
    pump(lambda: hung.step is not None, timeout=60)
    ui.trainButton.click()   # Stop
    pump(lambda: not hung.running, timeout=15)
    assert hung.state == "cancelled" and groupGone(hung)
    assert ui.trainButton.text == "Train"
    assert not loop.errors


def test_scene_close_during_runs(loop, mrml_scene, phantom_model, tmp_path):
    """Item 6: a scene closed while Segment new runs imports nothing into the new scene; closed
    during a training, the training stops (resumable), no error at its end, no node of the old run
    (plots, segmentations) in the new scene, and Resume continues it there."""
    ui = loop.ui
    panel = loop.panel
    volume, segmentation = syntheticCase(mrml_scene)
    ui.currentModelPathLineEdit.currentPath = str(phantom_model)
    ui.deviceComboBox.setCurrentIndex(ui.deviceComboBox.findData("cpu"))
    ui.newVolumeSelector.setCurrentNode(volume)
    ui.segmentNewButton.click()
    segmentRun = panel.latestRun
    assert segmentRun.running
    mrml_scene.Clear(0)
    pump(lambda: not panel.timer.isActive(), timeout=60)
    assert segmentRun.state == "cancelled" and segmentRun.segmentationNode is None
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0
    assert groupGone(segmentRun)

    volume, segmentation = syntheticCase(mrml_scene)
    addCase(loop, volume, segmentation)
    setUpTraining(loop, tmp_path / "out", steps=40)
    ui.trainButton.click()
    training = panel.trainingRun
    pump(lambda: (training.step or 0) >= 5, timeout=60)
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLPlotSeriesNode") > 0
    mrml_scene.Clear(0)
    pump(lambda: not training.running and not panel.timer.isActive(), timeout=60)
    assert training.state == "cancelled" and training.resumable, training.log[-10:]
    for className in ("vtkMRMLPlotSeriesNode", "vtkMRMLPlotChartNode", "vtkMRMLTableNode",
                      "vtkMRMLSegmentationNode", "vtkMRMLScalarVolumeNode"):
        assert mrml_scene.GetNumberOfNodesByClass(className) == 0, className
    assert panel._parameterNode is not None and panel._parameterNode.parameterNode.GetScene() is mrml_scene
    assert ui.resumeButton.enabled and "Resume" in ui.statusLabel.text
    ui.resumeButton.click()
    resumed = panel.trainingRun
    pump(lambda: not resumed.running, timeout=60)
    assert resumed.state == "done", resumed.log[-10:]
    assert resumed.plots.lossTable.GetScene() is mrml_scene   # new plots, in the new scene
    assert not loop.errors


def test_catalog_name_and_model_pickers(loop, mrml_scene, phantom_model, tmp_path, monkeypatch):
    """Item 8: "Segment with current model" with a catalog model's name runs the engine on the
    shipped file (pairseg.modelfiles.catalog resolution, as the PairSeg module); the pickers list the
    catalog and registered models and set the current model / fine-tune-from path."""
    from test_pairsegtrainer_helpers import makeCatalog

    shipped = makeCatalog(tmp_path / "catalog", phantom_model, name="phantom-organs")
    monkeypatch.setenv("PAIRSEG_MODELS_DIR", str(tmp_path / "catalog"))
    registered = tmp_path / "mine.pairseg"
    registered.write_bytes(open(phantom_model, "rb").read())
    loop.logic.registerModel(str(registered))
    ui = loop.ui
    panel = loop.panel
    panel.enter()   # the pickers are refreshed on enter
    for combo in (ui.currentModelsComboBox, ui.initFromModelsComboBox):
        paths = [combo.itemData(i) for i in range(combo.count)]
        assert paths[1:] == [str(shipped), str(registered)], paths
        assert "Phantom organs" in combo.itemText(1)
    ui.initFromModelsComboBox.activated.emit(2)
    assert panel._parameterNode.training.init_from == str(registered)

    volume, _ = syntheticCase(mrml_scene)
    ui.currentModelPathLineEdit.currentPath = "phantom-organs"   # typed: the catalog name
    ui.deviceComboBox.setCurrentIndex(ui.deviceComboBox.findData("cpu"))
    ui.newVolumeSelector.setCurrentNode(volume)
    ui.segmentNewButton.click()
    run = panel.latestRun
    assert loop.commands[-1][loop.commands[-1].index("--model") + 1] == str(shipped)
    pump(lambda: not run.running, timeout=240)
    assert run.state == "done", run.log[-10:]
    assert ui.segmentationSelector.currentNode() is run.segmentationNode
    # the picker: choosing the catalog model sets the current model to its file
    ui.currentModelsComboBox.activated.emit(1)
    assert panel._parameterNode.currentModel == str(shipped) and ui.currentModelsComboBox.currentIndex == 0
    assert not loop.errors
