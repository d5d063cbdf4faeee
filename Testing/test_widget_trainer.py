"""PairSegTrainer module widget, offscreen, for each supported Slicer release.

Real parts as in test_widget_pairseg.py: Qt widgets from the .ui, Slicer's own
parameterNodeWrapper / ScriptedLoadableModule of the release, real MRML, and the real engine
(``pairseg train`` in a background process) for Train -> Stop -> Resume -> registered model.
"""

import json
import os

import numpy as np
import pytest

from test_pairsegtrainer_helpers import addSegmentation, addVolume
from test_widget_pairseg import pump


@pytest.fixture
def trainerWidget(slicer_release, module_widget, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    widget = module_widget("PairSegTrainer")
    widget.parent.enter()
    return widget


def syntheticCase(scene, name="case", seed=0):
    """A small MR-like volume with a bright 'liver' blob and its segmentation."""
    rng = np.random.default_rng(seed)
    shape = (10, 48, 48)
    zz, yy, xx = np.mgrid[:shape[0], :shape[1], :shape[2]]
    liver = ((yy - 22) ** 2 + (xx - 20) ** 2 < (10 + zz % 3) ** 2).astype(np.uint8)
    image = (rng.normal(100, 10, shape) + 300.0 * liver).astype(np.float32)
    volume = addVolume(scene, image, name=name, spacing=(1.2, 1.2, 3.0))
    segmentation = addSegmentation(scene, volume, liver, {1: "liver"}, name=name + " segmentation")
    return volume, segmentation


def test_spin_box_ranges_come_from_the_parameters(trainerWidget):
    """Fault 3: the connectors set the spin boxes from the declared ranges (not +-2^31 / +-inf)."""
    ui = trainerWidget.ui
    node = trainerWidget.panel._parameterNode
    for widget, parameter in ((ui.epochsSpinBox, "training.epochs"), (ui.stepsSpinBox, "training.steps"),
                              (ui.batchSizeSpinBox, "training.batch_size"), (ui.sizeSpinBox, "training.size"),
                              (ui.learningRateSpinBox, "training.lr"), (ui.valFractionSpinBox, "training.val_fraction"),
                              (ui.gpusSpinBox, "training.gpus"), (ui.interRepeatsSpinBox, "training.inter_repeats")):
        assert widget.minimum > 0 or parameter == "training.val_fraction", (parameter, widget.minimum)
        assert widget.maximum < 1e8, (parameter, widget.maximum)
        widget.value = widget.minimum - 1  # typed below the range: clamped by the widget
        assert node.getValue(parameter) == pytest.approx(widget.minimum)
        with pytest.raises(ValueError):
            node.setValue(parameter, widget.minimum - 1)  # the node refuses it too
    ui.learningRateSpinBox.value = 0.0005
    assert node.training.lr == pytest.approx(0.0005)
    assert ui.learningRateSpinBox.decimals == 6


#: parameter-node name -> the engine's TrainConfig setting it shows
ENGINE_SETTINGS = {"training.epochs": "epochs", "training.steps": "steps", "training.batch_size": "batch_size",
                   "training.size": "size", "training.lr": "lr", "training.val_fraction": "val_fraction",
                   "training.inter_repeats": "inter_repeats"}


def test_defaults_and_ranges_are_the_engine_schema(trainerWidget):
    """Issue 15 item 1: the parameter node's defaults and ranges are the engine's TrainConfig
    settings (no second copy that can drift: 50 vs 20 epochs, 0.2 vs 0.0 validation), the spin
    boxes show exactly them, and a fresh node builds the engine's default TrainConfig."""
    import xml.etree.ElementTree as ElementTree

    from pairseg.config import TrainConfig, setting

    ui = trainerWidget.ui
    node = trainerWidget.panel._parameterNode
    spinBoxes = {"training.epochs": ui.epochsSpinBox, "training.steps": ui.stepsSpinBox,
                 "training.batch_size": ui.batchSizeSpinBox, "training.size": ui.sizeSpinBox,
                 "training.lr": ui.learningRateSpinBox, "training.val_fraction": ui.valFractionSpinBox,
                 "training.inter_repeats": ui.interRepeatsSpinBox}
    uiFile = os.path.join(os.path.dirname(__file__), os.pardir, "PairSegTrainer", "Resources", "UI",
                          "PairSegTrainer.ui")
    designed = {}
    for widget in ElementTree.parse(uiFile).iter("widget"):
        properties = {p.get("name"): p[0].text for p in widget.findall("property") if len(p)}
        if properties.get("SlicerParameterName") in ENGINE_SETTINGS:
            designed[properties["SlicerParameterName"]] = properties
    for parameter, name in ENGINE_SETTINGS.items():
        spec = setting(name)
        box = spinBoxes[parameter]
        low = spec.minimum if spec.minimum is not None else spec.exclusive_minimum
        high = spec.maximum if spec.maximum is not None else spec.exclusive_maximum
        assert low <= box.minimum <= box.maximum <= high, (parameter, box.minimum, box.maximum, low, high)
        assert spec.problem(spec.kind == "int" and int(box.minimum) or box.minimum) is None, parameter
        assert spec.problem(spec.kind == "int" and int(box.maximum) or box.maximum) is None, parameter
        # the .ui file's own numbers (what Designer shows) are the same range
        assert float(designed[parameter]["minimum"]) == pytest.approx(box.minimum), parameter
        assert float(designed[parameter]["maximum"]) == pytest.approx(box.maximum), parameter
        if parameter != "training.steps":   # steps: no engine default (unset, the budget is in epochs)
            expected = spec.default if spec.default is not None else spec.fallback
            assert node.getValue(parameter) == pytest.approx(expected), parameter
            assert box.value == pytest.approx(expected), parameter
            assert float(designed[parameter]["value"]) == pytest.approx(expected), parameter
    assert node.training.epochs == 20 and node.training.val_fraction == 0.0   # the two defaults that had drifted
    assert [ui.architectureComboBox.itemData(i) for i in range(ui.architectureComboBox.count)] == list(
        setting("arch").choices)
    built = trainerWidget.panel.runSettings(os.path.dirname(uiFile)).engineSettings()
    defaults = TrainConfig(data="d", out="o.pairseg")
    for parameter, name in ENGINE_SETTINGS.items():
        if name not in ("steps", "epochs"):
            assert built[name] == getattr(defaults, name), name
    assert built["epochs"] == defaults.budget()[0] and built["steps"] is None


def test_console_api_and_dependency(trainerWidget):
    """Fault 7 for the Trainer and its declared dependency on PairSeg (fault 11)."""
    import slicer

    assert slicer.util.getModuleLogic("PairSegTrainer") is trainerWidget.logic
    assert not hasattr(slicer.modules.pairsegtrainer.logic(), "startTraining")
    assert list(slicer.modules.pairsegtrainer.dependencies) == ["PairSeg"]
    assert hasattr(slicer.modules, "pairseg")  # loaded first, as Slicer does for a dependency


def test_device_choices(trainerWidget, monkeypatch, tmp_path):
    """Fault 9: Detect GPUs offers cuda:N, which the configuration accepts; a saved device that is
    not detected here is shown as itself, not as Automatic."""
    panel = trainerWidget.panel
    ui = trainerWidget.ui
    node = panel._parameterNode
    devices = [("auto", "Automatic"), ("cpu", "CPU"), ("cuda:0", "GPU 0: A"), ("cuda:1", "GPU 1: B")]
    monkeypatch.setattr(panel.logic, "listDevices", lambda probe=False: list(devices) if probe else devices[:2])
    ui.refreshDevicesButton.click()
    assert [ui.deviceComboBox.itemData(i) for i in range(ui.deviceComboBox.count)] == [d[0] for d in devices]
    assert ui.gpusSpinBox.maximum == 2
    ui.deviceComboBox.setCurrentIndex(3)
    assert node.training.device == "cuda:1"
    config = panel.runSettings(str(tmp_path))
    (tmp_path / "dataset.json").write_text("{}")
    config.out = str(tmp_path / "m.pairseg")
    config.use_steps, config.steps = True, 10
    config.validate()  # cuda:1 accepted
    # a scene saved with "cuda" on a GPU computer, opened here without probing
    node.training.device = "cuda"
    panel.setParameterNode(panel.parameterClass(panel.logic.getParameterNode()))
    assert ui.deviceComboBox.currentData == "cuda" and node.training.device == "cuda"
    assert "not detected" in ui.deviceComboBox.currentText


def test_parameter_node_only_in_scenes_where_entered(slicer_release, module_widget, mrml_scene, tmp_path, monkeypatch):
    """Fault 11: a set-up but never entered Trainer does not put its node into every new scene."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    widget = module_widget("PairSegTrainer")
    mrml_scene.Clear(1)
    assert mrml_scene.GetSingletonNode("PairSegTrainer", "vtkMRMLScriptedModuleNode") is None
    widget.parent.enter()
    assert mrml_scene.GetSingletonNode("PairSegTrainer", "vtkMRMLScriptedModuleNode") is not None
    mrml_scene.Clear(1)
    assert widget.panel._parameterNode is not None
    assert widget.panel._parameterNode.parameterNode.GetScene() is mrml_scene


def test_add_case_and_train_stop_resume_to_registered_model(trainerWidget, mrml_scene, tmp_path, monkeypatch):
    import slicer

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    widget = trainerWidget
    panel = widget.panel
    ui = widget.ui
    node = panel._parameterNode
    volume, segmentation = syntheticCase(mrml_scene)
    # Add case: nothing selected -> message; then the volume and its segmentation
    ui.volumeSelector.setCurrentNode(None)
    ui.addCaseButton.click()
    assert ui.trainingTable.rowCount == 0
    ui.volumeSelector.setCurrentNode(volume)
    ui.segmentationSelector.setCurrentNode(segmentation)
    ui.addCaseButton.click()
    assert ui.trainingTable.rowCount == 1 and ui.trainButton.enabled
    assert "liver" in ui.trainingTable.item(0, 2).text() or "liver" in ui.mappingStatusLabel.text
    # settings through the widgets
    ui.classesLineEdit.text = "liver"
    ui.outputNameLineEdit.text = "widget-model"
    ui.outputFolderPathLineEdit.currentPath = str(tmp_path / "out")
    ui.stepsRadioButton.setChecked(True)
    ui.stepsSpinBox.value = 60
    ui.sizeSpinBox.value = 32
    ui.batchSizeSpinBox.value = 2
    ui.valFractionSpinBox.value = 0.0
    ui.deviceComboBox.setCurrentIndex(ui.deviceComboBox.findData("cpu"))
    training = node.training
    assert (training.use_steps, training.steps, training.size, training.batch_size, training.device) == \
        (True, 60, 32, 2, "cpu")
    assert not ui.epochsSpinBox.enabled and ui.stepsSpinBox.enabled

    ui.trainButton.click()  # Train
    run = panel.latestRun
    assert run is not None and ui.trainButton.text == "Stop" and panel.timer.isActive()
    pump(lambda: (run.step or 0) >= 2 or not run.running, timeout=240)
    assert run.running, run.log[-10:]
    assert "step" in ui.statusLabel.text and "ETA" in ui.statusLabel.text
    ui.trainButton.click()  # Stop
    pump(lambda: not run.running and not panel.timer.isActive(), timeout=120)
    assert run.state == "cancelled", run.log[-10:]
    assert ui.trainButton.text == "Train" and ui.resumeButton.enabled
    assert "Resume" in ui.statusLabel.text
    stoppedAt = run.step
    assert ui.logTextEdit.toPlainText()  # the engine's log reached the panel

    ui.resumeButton.click()  # Resume from the checkpoint
    resumed = panel.latestRun
    assert resumed is not run and ui.trainButton.text == "Stop"
    pump(lambda: not resumed.running and not panel.timer.isActive(), timeout=600)
    assert resumed.state == "done", resumed.log[-10:]
    modelPath = str(tmp_path / "out" / "widget-model.pairseg")
    assert os.path.isfile(modelPath) and resumed.step == 60 and stoppedAt < 60
    assert node.currentModel == modelPath == ui.currentModelPathLineEdit.currentPath
    assert "registered for PairSeg" in ui.statusLabel.text
    assert [m["path"] for m in panel.logic.registry.registeredModels()] == [modelPath]
    assert ui.fineTuneButton.enabled and ui.segmentNewButton.enabled
    # the Dice chart keeps its 0..1 axis (auto range off, else SetYAxisRange has no effect)
    chart = resumed.plots.diceChart
    assert not chart.GetYAxisRangeAuto() and tuple(chart.GetYAxisRange()) == (0.0, 1.0)
    # PairSeg lists the registered model
    pairsegWidget = slicer.util.getModuleWidget("PairSeg")
    pairsegWidget.panel.refreshKnownModels()
    combo = pairsegWidget.ui.knownModelsComboBox
    assert modelPath in [combo.itemData(i) for i in range(combo.count)]


def test_cleanup_stops_timer_and_disconnects(trainerWidget, mrml_scene):
    import slicer

    panel = trainerWidget.panel
    panel.timer.start()
    slicer.app.moduleManager().moduleAboutToBeUnloaded.emit("PairSegTrainer")
    assert not panel.timer.isActive() and panel._parameterNode is None


def test_developer_reload_keeps_isinstance(slicer_release, module_widget, mrml_scene, harness, tmp_path, monkeypatch):
    """Fault 11: after a developer-mode Reload the module's Logic derives from the reloaded
    PairSegTrainerLib classes (the Reload & Test section of Slicer's own widget base is built too)."""
    import sys

    import qt

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    qt.QSettings().setValue("Developer/DeveloperMode", "true")
    try:
        widget = module_widget("PairSegTrainer")
        assert widget.developerMode and widget.reloadButton is not None
        first = sys.modules["PairSegTrainerLib.trainerlogic"].PairSegTrainerCoreLogic
        assert isinstance(widget.logic, first)
        harness.unloadModules()  # Reload: the module file runs again
        widget = module_widget("PairSegTrainer")
        reloaded = sys.modules["PairSegTrainerLib.trainerlogic"].PairSegTrainerCoreLogic
        assert reloaded is not first  # the Lib was reloaded
        assert isinstance(widget.logic, reloaded)
        package = sys.modules["PairSegTrainerLib"]  # and the package's names are the reloaded classes
        assert package.TrainingSetError is sys.modules["PairSegTrainerLib.trainingset"].TrainingSetError
        assert package.PairSegTrainerCoreLogic is reloaded
    finally:
        qt.QSettings().remove("Developer/DeveloperMode")


def test_annotate_then_retrain_mapping_and_proxy_maps(trainerWidget, mrml_scene, phantom_model, tmp_path, monkeypatch):
    """Segment with current model -> Add corrected case -> Fine-tune (stopped), Remove case, the
    segment-name mapping table, and the ground-truth proxy maps of a picked pair."""
    import shutil

    import slicer

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    panel = trainerWidget.panel
    ui = trainerWidget.ui
    node = panel._parameterNode
    model = tmp_path / "models" / "phantom.pairseg"
    model.parent.mkdir()
    shutil.copy(phantom_model, model)
    volume, segmentation = syntheticCase(mrml_scene)
    other, otherSegmentation = syntheticCase(mrml_scene, name="other", seed=1)

    # segment-name mapping: a segment named unlike the classes is flagged, then mapped
    ui.volumeSelector.setCurrentNode(other)
    ui.segmentationSelector.setCurrentNode(otherSegmentation)
    otherSegmentation.GetSegmentation().GetNthSegment(0).SetName("Leber")
    ui.addCaseButton.click()
    ui.classesLineEdit.text = "liver"
    ui.classesLineEdit.editingFinished.emit()
    assert "Leber" in ui.mappingStatusLabel.text
    row = [ui.mappingTable.item(r, 0).text() for r in range(ui.mappingTable.rowCount)].index("Leber")
    ui.mappingTable.item(row, 1).setText("liver")  # the user types the class: cellChanged
    assert json.loads(node.mapping) == {"Leber": "liver"}
    assert "Leber" not in ui.mappingStatusLabel.text
    # Remove case
    ui.trainingTable.selectRow(0)
    ui.removeCaseButton.click()
    assert ui.trainingTable.rowCount == 0

    # Segment with current model (real engine) -> the new segmentation is selected for correction
    ui.currentModelPathLineEdit.currentPath = str(model)
    assert node.currentModel == str(model) and ui.segmentNewButton.enabled
    ui.deviceComboBox.setCurrentIndex(ui.deviceComboBox.findData("cpu"))
    ui.newVolumeSelector.setCurrentNode(volume)
    ui.segmentNewButton.click()
    run = panel.latestRun
    pump(lambda: not run.running and not panel.timer.isActive(), timeout=240)
    assert run.state == "done", run.log[-10:]
    created = ui.segmentationSelector.currentNode()
    assert created is not None and created is run.segmentationNode and ui.volumeSelector.currentNode() is volume
    assert "Created" in ui.logTextEdit.toPlainText()
    # Add corrected case, then Fine-tune (stopped once running)
    ui.addCorrectedButton.click()
    assert ui.trainingTable.rowCount == 1 and ui.fineTuneButton.enabled
    ui.outputFolderPathLineEdit.currentPath = str(tmp_path / "out")
    ui.batchSizeSpinBox.value = 2
    ui.fineTuneButton.click()
    fine = panel.latestRun
    assert fine is not run and fine.settings.init_from == str(model) and ui.trainButton.text == "Stop"
    pump(lambda: fine.step is not None or not fine.running, timeout=240)
    ui.trainButton.click()
    pump(lambda: not fine.running and not panel.timer.isActive(), timeout=120)
    assert fine.state in ("cancelled", "done"), fine.log[-10:]

    # proxy maps of an intra-patient pair (ground truth, no engine)
    ui.proxyVolumeASelector.setCurrentNode(volume)
    ui.proxySegmentationASelector.setCurrentNode(segmentation)
    ui.proxyVolumeBSelector.setCurrentNode(None)
    ui.pickIntraPairButton.click()
    assert node.proxySliceA != node.proxySliceB
    assert (ui.proxySliceASpinBox.value, ui.proxySliceBSpinBox.value) == (node.proxySliceA, node.proxySliceB)
    before = mrml_scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    ui.showProxyButton.click()
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") > before, ui.statusLabel.text
    assert slicer.util.getModuleLogic("PairSegTrainer") is panel.logic
