"""PairSeg module widget, offscreen, for each supported Slicer release.

Real parts: the module's .ui loaded by Qt (PySide6) through the PythonQt-like layer
(Testing/pythonqt.py), Slicer's own parameterNodeWrapper / ScriptedLoadableModule of the release
under test, real MRML, and the real engine (a tiny phantom model) in its background process.
Clicks are real ``click()`` calls on the buttons; the task is followed by the module's QTimer.
"""

import hashlib
import json
import os
import time

import pytest


def pump(until, timeout=120.0):
    """Run the Qt event loop (timers fire) until ``until()`` is true."""
    import slicer

    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached while running the event loop")
        slicer.app.processEvents()
        time.sleep(0.02)


def phantomVolume(harness, phantom_dir):
    images = sorted(p for p in os.listdir(phantom_dir) if "_image" in p)
    return harness.loadVolume(str(phantom_dir / images[0]), name="phantom")


@pytest.fixture
def pairsegWidget(slicer_release, module_widget, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # model registry of this test only
    monkeypatch.setenv("PAIRSEG_MODELS_DIR", str(tmp_path / "no-catalog"))
    widget = module_widget("PairSeg")
    widget.parent.enter()
    return widget


def test_setup_binds_parameter_node(pairsegWidget, mrml_scene):
    import slicer

    widget = pairsegWidget
    ui = widget.ui
    node = widget.panel._parameterNode
    assert node is not None and node.parameterNode.GetScene() is mrml_scene
    # GUI -> node and node -> GUI through Slicer's connectors
    ui.largestComponentCheckBox.checked = False
    assert node.keepLargestComponent is False
    node.keepLargestComponent = True
    assert ui.largestComponentCheckBox.checked is True
    # device menu (not a connector: labels) -> node; the CPU warning follows
    ui.deviceComboBox.setCurrentIndex(ui.deviceComboBox.findData("cpu"))
    assert node.device == "cpu" and ui.deviceWarningLabel.isVisibleTo(widget.parent)
    ui.deviceComboBox.setCurrentIndex(ui.deviceComboBox.findData("cuda"))
    assert node.device == "cuda" and not ui.deviceWarningLabel.isVisibleTo(widget.parent)
    # nothing to segment yet
    assert not ui.applyButton.enabled and ui.applyButton.text == "Segment"
    volume = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "v")
    assert ui.inputVolumeSelector.currentNode() is volume and node.inputVolume is volume  # selector picked it
    labels = mrml_scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    assert labels not in [ui.inputVolumeSelector.nodeFromIndex(i) for i in range(ui.inputVolumeSelector.nodeCount())]
    # the console API of the docs (fault 7)
    assert slicer.util.getModuleLogic("PairSeg") is widget.logic
    assert not hasattr(slicer.modules.pairseg.logic(), "segmentVolume")


def test_exit_enter_and_cleanup_disconnect(pairsegWidget, mrml_scene):
    import slicer

    widget = pairsegWidget
    node = widget.panel._parameterNode
    widget.parent.exit()
    assert widget.panel._parameterNode is None
    node.keepLargestComponent = False
    assert widget.ui.largestComponentCheckBox.checked is True  # no longer bound
    widget.parent.enter()
    assert widget.ui.largestComponentCheckBox.checked is False  # bound again, from the node
    widget.panel.timer.start()
    slicer.app.moduleManager().moduleAboutToBeUnloaded.emit("PairSeg")  # Slicer exit / unload
    assert not widget.panel.timer.isActive() and widget.panel._parameterNode is None


def test_scene_close_makes_a_new_parameter_node_only_when_entered(pairsegWidget, mrml_scene):
    widget = pairsegWidget
    old = widget.panel._parameterNode.parameterNode
    mrml_scene.Clear(1)  # close, singletons too (as when a scene file replaces the scene)
    assert widget.panel._parameterNode is not None and widget.panel._parameterNode.parameterNode is not old
    assert widget.panel._parameterNode.parameterNode.GetScene() is mrml_scene
    widget.parent.exit()
    mrml_scene.Clear(1)
    assert mrml_scene.GetSingletonNode("PairSeg", "vtkMRMLScriptedModuleNode") is None


def test_segment_cancel_then_segment_and_compare(pairsegWidget, mrml_scene, harness, phantom_dir, phantom_model):
    import slicer

    widget = pairsegWidget
    ui = widget.ui
    volume = phantomVolume(harness, phantom_dir)
    ui.inputVolumeSelector.setCurrentNode(volume)
    ui.modelPathLineEdit.currentPath = str(phantom_model)
    assert widget.panel._parameterNode.modelPath == str(phantom_model)
    assert ui.modelInfoLabel.text.startswith("Classes: liver")
    ui.deviceComboBox.setCurrentIndex(ui.deviceComboBox.findData("cpu"))
    assert ui.applyButton.enabled

    before = harness.sceneSnapshot()
    ui.applyButton.click()  # Segment
    assert widget.panel.run is not None and not widget.panel.run.done
    assert ui.applyButton.text == "Cancel" and ui.progressBar.isVisibleTo(widget.parent)
    assert not ui.inputsCollapsibleButton.enabled and widget.panel.timer.isActive()
    ui.applyButton.click()  # Cancel
    pump(lambda: widget.panel.run.done)
    assert widget.panel.run.state == "cancelled"
    assert widget.panel.run.process is None or widget.panel.run.process.poll() is not None  # the engine is gone
    assert ui.applyButton.text == "Segment" and not ui.progressBar.isVisibleTo(widget.parent)
    assert not widget.panel.timer.isActive() and harness.sceneSnapshot() == before

    ui.applyButton.click()  # Segment again, to the end
    fractions = []
    pump(lambda: fractions.append(ui.progressBar.value) or widget.panel.run.done, timeout=180)
    assert widget.panel.run.state == "done", ui.statusLabel.text
    output = widget.panel._parameterNode.outputSegmentation
    assert output is not None and ui.outputSegmentationSelector.currentNode() is output
    segmentation = output.GetSegmentation()
    assert [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())][0] == "liver"
    # the model path went into the path editor's history (QSettings under its settingKey)
    history = [ui.modelPathLineEdit.comboBox().itemText(i) for i in range(ui.modelPathLineEdit.comboBox().count())]
    assert history[0] == str(phantom_model)
    # and into the recent models of the known-models menu
    combo = ui.knownModelsComboBox
    assert str(phantom_model) in [combo.itemData(i) for i in range(combo.count)]

    # Compare with a reference: a copy of the result, so Dice is exactly 1
    reference = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "reference")
    reference.GetSegmentation().DeepCopy(segmentation)
    ui.compareCollapsibleButton.collapsed = False
    ui.referenceSegmentationSelector.setCurrentNode(reference)
    assert widget.panel._parameterNode.referenceSegmentation is reference and ui.compareButton.enabled
    composite = mrml_scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")  # one slice view
    ui.compareButton.click()  # pairseg evaluate in the background, followed by the timer
    pump(lambda: widget.panel.run.done and not widget.panel.timer.isActive(), timeout=180)
    assert widget.panel.run.state == "done", ui.statusLabel.text
    # issue 19 item 10: the distance overlay is the foreground, not hidden under the fills
    distanceNode = widget.panel.run.result.distanceVolumeNode
    assert composite.GetForegroundVolumeID() == distanceNode.GetID() and composite.GetForegroundOpacity() == 1.0
    assert distanceNode.GetDisplayNode().GetApplyThreshold() and distanceNode.GetDisplayNode().GetLowerThreshold() == 0.0
    for compared in (output, reference):
        assert not compared.GetDisplayNode().GetVisibility2DFill() and compared.GetDisplayNode().GetVisibility2DOutline()
    assert ui.resultsTableView.isVisibleTo(widget.parent)
    table = ui.resultsTableView.mrmlTableNode()
    assert table is not None and table.GetTable().GetNumberOfRows() >= 1
    assert ui.resultsTableView.cellText(0, 0) == "liver"
    assert float(ui.resultsTableView.cellText(0, 1)) == pytest.approx(1.0)


def test_segment_refuses_bad_model_with_a_message(pairsegWidget, mrml_scene, harness, phantom_dir, tmp_path, caplog):
    widget = pairsegWidget
    ui = widget.ui
    phantomVolume(harness, phantom_dir)
    broken = tmp_path / "broken.pairseg"
    broken.write_bytes(b"not a model")
    ui.modelPathLineEdit.currentPath = str(broken)
    assert str(broken) in ui.modelInfoLabel.text or "model" in ui.modelInfoLabel.text.lower()
    before = mrml_scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
    ui.applyButton.click()
    assert widget.panel.run is None and ui.applyButton.text == "Segment"
    assert any(record.levelname == "ERROR" for record in caplog.records)  # errorDisplay (testing mode logs)
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == before


def _catalog(folder, model, default=True):
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "phantom.pairseg"
    target.write_bytes(model.read_bytes())
    entry = {
        "name": "phantom-organs", "title": "Phantom organs (test)", "description": "A tiny model made by the test.",
        "version": "1.0", "modality": "MR", "arch": "c2fcn", "file": "phantom.pairseg",
        "sha256": hashlib.sha256(target.read_bytes()).hexdigest(), "file_size_bytes": target.stat().st_size,
        "classes": [{"name": "liver", "color": [200, 100, 50], "terminology": {}}], "spacing_mm": 1.25,
        "size": 64, "training_data": {"dataset": "phantoms", "cases": [], "licence": "CC0", "citation": "-"},
        "evaluation": {"case": "phantom_000", "dice": {"liver": 0.912}, "assd_mm": {"liver": 1.0},
                       "mean_dice": 0.912, "command": "pairseg evaluate"},
        "cpu_segment_seconds": 1.0, "url": None,
    }
    (folder / "models.json").write_text(json.dumps({"catalog_version": 1, "default": "phantom-organs" if default else None,
                                                    "models": [entry]}))
    return target


def test_catalog_default_model_preselected(slicer_release, module_widget, mrml_scene, harness, phantom_dir,
                                           phantom_model, tmp_path, monkeypatch):
    """Issue 12 item 6: after installing, load sample -> Segment works with the default ready model."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    modelFile = _catalog(tmp_path / "catalog", phantom_model)
    monkeypatch.setenv("PAIRSEG_MODELS_DIR", str(tmp_path / "catalog"))
    widget = module_widget("PairSeg")
    widget.parent.enter()
    ui = widget.ui
    combo = ui.knownModelsComboBox
    labels = [combo.itemText(i) for i in range(combo.count)]
    assert "Ready model: Phantom organs (test) (default)" in labels
    assert widget.panel._parameterNode.modelPath == str(modelFile) == ui.modelPathLineEdit.currentPath
    info = ui.modelInfoLabel.text
    assert "A tiny model made by the test." in info and "mean 91.2" in info and "liver 91.2" in info
    volume = phantomVolume(harness, phantom_dir)  # "load sample"
    assert widget.panel._parameterNode.inputVolume is volume and ui.applyButton.enabled
    # choosing another model and back through the menu
    ui.modelPathLineEdit.currentPath = ""
    assert ui.modelInfoLabel.text == "No model selected."
    combo.setCurrentIndex(labels.index("Ready model: Phantom organs (test) (default)"))
    combo.activated.emit(combo.currentIndex)
    assert widget.panel._parameterNode.modelPath == str(modelFile)


def test_catalog_absent_or_damaged_keeps_panel_working(slicer_release, module_widget, mrml_scene, tmp_path,
                                                       monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "catalog").mkdir()
    (tmp_path / "catalog" / "models.json").write_text("{not json")
    monkeypatch.setenv("PAIRSEG_MODELS_DIR", str(tmp_path / "catalog"))
    widget = module_widget("PairSeg")
    widget.parent.enter()
    assert widget.panel._parameterNode.modelPath == "" and widget.ui.knownModelsComboBox.count == 1


def test_sample_data_registered_at_startup(slicer_release, module_widget, mrml_scene, monkeypatch, tmp_path):
    """registerSampleData runs from the application's startupCompleted() signal."""
    import slicer

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    calls = []
    from PairSegLib import sampledata

    monkeypatch.setattr(sampledata, "registerSampleData", lambda iconsPath: calls.append(iconsPath))
    module_widget("PairSeg")
    slicer.app.startupCompleted.emit()
    assert calls and os.path.isdir(calls[-1])



# -- issue 19: the annotate-then-retrain loop ------------------------------------------------------


@pytest.fixture
def slotErrors(monkeypatch):
    """Exceptions raised inside Qt slots and timers (Qt prints them through sys.excepthook and goes
    on, as Slicer's Python console does): recorded, so that a test can assert there were none."""
    import sys

    errors = []
    monkeypatch.setattr(sys, "excepthook", lambda kind, value, tb: errors.append(value))
    return errors


def segmentOnce(widget, timeout=180):
    """Click Segment and follow the run (the module's timer) to its end; returns the run."""
    widget.ui.applyButton.click()
    assert widget.panel.run is not None
    pump(lambda: widget.panel.run.done and not widget.panel.timer.isActive(), timeout=timeout)
    assert widget.panel.run.state == "done", widget.ui.statusLabel.text
    return widget.panel.run


def segmentArrays(segmentationNode, volume):
    """{segment ID: (name, bytes of its mask on the volume's grid)}: what 'byte for byte' compares."""
    import numpy as np
    import slicer

    segmentation = segmentationNode.GetSegmentation()
    result = {}
    for index in range(segmentation.GetNumberOfSegments()):
        segmentId = segmentation.GetNthSegmentID(index)
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volume)
        result[segmentId] = (segmentation.GetNthSegment(index).GetName(), np.asarray(mask, np.uint8).tobytes())
    return result


def editLiver(segmentationNode, volume):
    """What a Segment Editor paint stroke does: the 'liver' mask gains a block of voxels."""
    import numpy as np
    import slicer

    from PairSegLib import mrml

    segmentId = mrml.findSegmentByName(segmentationNode.GetSegmentation(), "liver")
    mask = np.array(slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volume), np.uint8)
    z, y, x = (size // 2 for size in mask.shape)
    mask[z - 2:z + 2, y - 5:y + 5, x - 5:x + 5] = 1 - mask[z - 2:z + 2, y - 5:y + 5, x - 5:x + 5]
    slicer.util.updateSegmentBinaryLabelmapFromArray(mask, segmentationNode, segmentId, volume)


def readyPanel(widget, harness, phantom_dir, phantom_model):
    ui = widget.ui
    volume = phantomVolume(harness, phantom_dir)
    ui.inputVolumeSelector.setCurrentNode(volume)
    ui.modelPathLineEdit.currentPath = str(phantom_model)
    ui.deviceComboBox.setCurrentIndex(ui.deviceComboBox.findData("cpu"))
    return volume


def test_segment_again_never_overwrites_edits_or_training_sets(pairsegWidget, mrml_scene, harness, phantom_dir,
                                                              phantom_model, slotErrors):
    """Issue 19 item 1: segment -> edit -> segment again keeps the edited labels byte for byte (a
    new, versioned segmentation beside the volume); a segmentation in a training set is never
    written into, not even with Replace; Replace (explicit) does write into an edited one."""
    import slicer

    from PairSegLib import mrml

    widget = pairsegWidget
    ui = widget.ui
    volume = readyPanel(widget, harness, phantom_dir, phantom_model)
    assert not ui.replaceOutputCheckBox.checked and widget.panel._parameterNode.replaceOutput is False

    segmentOnce(widget)
    first = widget.panel._parameterNode.outputSegmentation
    assert first.GetName() == "phantom PairSeg" and ui.outputSegmentationSelector.currentNode() is first
    assert first.GetAttribute(mrml.FINGERPRINT_ATTRIBUTE) == mrml.segmentationFingerprint(first)
    assert first.GetNodeReference(mrml.SOURCE_VOLUME_REFERENCE) is volume
    shNode = slicer.mrmlScene.GetSubjectHierarchyNode()
    assert shNode.GetItemParent(shNode.GetItemByDataNode(first)) == \
        shNode.GetItemParent(shNode.GetItemByDataNode(volume))  # beside the input

    editLiver(first, volume)
    edited = segmentArrays(first, volume)
    assert mrml.protectionReason(first, volume) == "'phantom PairSeg' was edited after PairSeg wrote it"
    segmentOnce(widget)  # "segment again", output selector still on the edited segmentation
    second = widget.panel._parameterNode.outputSegmentation
    assert second is not first and second.GetName() == "phantom PairSeg 2"
    assert segmentArrays(first, volume) == edited  # byte for byte
    assert "was edited after PairSeg wrote it" in ui.statusLabel.text
    assert shNode.GetItemParent(shNode.GetItemByDataNode(second)) == \
        shNode.GetItemParent(shNode.GetItemByDataNode(volume))

    # the Trainer marks a segmentation it put in a training set: protected even with Replace on
    second.SetAttribute(mrml.TRAINING_SET_ATTRIBUTE, "1")
    inTrainingSet = segmentArrays(second, volume)
    fingerprint = second.GetAttribute(mrml.FINGERPRINT_ATTRIBUTE)
    ui.replaceOutputCheckBox.click()
    assert widget.panel._parameterNode.replaceOutput is True
    segmentOnce(widget)
    third = widget.panel._parameterNode.outputSegmentation
    assert third.GetName() == "phantom PairSeg 3" and "is in a training set" in ui.statusLabel.text
    assert segmentArrays(second, volume) == inTrainingSet
    assert second.GetAttribute(mrml.FINGERPRINT_ATTRIBUTE) == fingerprint

    # Replace, chosen explicitly, writes into the edited one: same node, the model's labels back
    ui.outputSegmentationSelector.setCurrentNode(first)
    nodes = mrml_scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
    segmentOnce(widget)
    assert widget.panel._parameterNode.outputSegmentation is first
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == nodes
    assert list(segmentArrays(first, volume).values()) == list(segmentArrays(third, volume).values())
    assert segmentArrays(first, volume) != edited
    assert mrml.protectionReason(first, volume) is None  # unedited PairSeg output again
    assert not slotErrors


def test_changing_the_input_resets_the_output(pairsegWidget, mrml_scene, harness, phantom_dir, phantom_model,
                                              slotErrors):
    """Issue 19 item 1: patient A's segmentation never receives patient B's organs."""
    from PairSegLib import mrml

    widget = pairsegWidget
    ui = widget.ui
    volumeA = readyPanel(widget, harness, phantom_dir, phantom_model)
    segmentOnce(widget)
    outputA = widget.panel._parameterNode.outputSegmentation
    labelsA = segmentArrays(outputA, volumeA)
    images = sorted(p for p in os.listdir(phantom_dir) if "_image" in p)
    volumeB = harness.loadVolume(str(phantom_dir / images[1]), name="other")
    ui.inputVolumeSelector.setCurrentNode(volumeB)
    assert widget.panel._parameterNode.outputSegmentation is None
    assert ui.outputSegmentationSelector.currentNode() is None
    ui.inputVolumeSelector.setCurrentNode(volumeA)
    ui.outputSegmentationSelector.setCurrentNode(outputA)
    ui.inputVolumeSelector.setCurrentNode(volumeA)  # no change: kept
    assert widget.panel._parameterNode.outputSegmentation is outputA
    # chosen again by hand for B, even with Replace on: B's organs go into a new segmentation
    ui.inputVolumeSelector.setCurrentNode(volumeB)
    ui.outputSegmentationSelector.setCurrentNode(outputA)
    ui.replaceOutputCheckBox.checked = True
    segmentOnce(widget)
    outputB = widget.panel._parameterNode.outputSegmentation
    assert outputB is not outputA and outputB.GetName() == "other PairSeg"
    assert mrml.sourceVolume(outputB) is volumeB and "belongs to volume 'phantom'" in ui.statusLabel.text
    assert segmentArrays(outputA, volumeA) == labelsA
    assert not slotErrors


def test_leaving_the_module_during_a_run(pairsegWidget, mrml_scene, harness, phantom_dir, phantom_model,
                                         slotErrors):
    """Issue 19 item 2: exit() during a run (every module switch) must not break the finishing run:
    the result goes to the module's parameter node, and enter() shows it."""
    widget = pairsegWidget
    ui = widget.ui
    volume = readyPanel(widget, harness, phantom_dir, phantom_model)
    ui.applyButton.click()
    assert widget.panel.run is not None and not widget.panel.run.done
    widget.parent.exit()  # the user switches to the Segment Editor
    assert widget.panel._parameterNode is None
    pump(lambda: widget.panel.run.done and not widget.panel.timer.isActive(), timeout=180)
    assert not slotErrors, slotErrors
    assert widget.panel.run.state == "done", ui.statusLabel.text
    output = widget.panel.run.segmentationNode
    assert output is not None and output.GetScene() is mrml_scene
    assert widget.logic.getParameterNode().outputSegmentation is output
    widget.parent.enter()
    assert ui.outputSegmentationSelector.currentNode() is output
    assert ui.applyButton.enabled and ui.applyButton.text == "Segment"
    assert str(phantom_model) in [ui.knownModelsComboBox.itemData(i) for i in range(ui.knownModelsComboBox.count)]
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 1
    assert volume.GetScene() is mrml_scene


def test_failing_install_is_reported_and_never_reentered(pairsegWidget, mrml_scene, harness, phantom_dir,
                                                         phantom_model, monkeypatch, caplog, slotErrors):
    """Issue 19 item 4: pip failing (offline, proxy) ends in a dialog and the status line; while it
    runs Segment and Compare are disabled and a second click starts no second pip."""
    import subprocess

    import slicer

    from PairSegLib import install

    widget = pairsegWidget
    ui = widget.ui
    readyPanel(widget, harness, phantom_dir, phantom_model)
    monkeypatch.setattr(install, "missingPackages", lambda: ["monai"])
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda text, **kwargs: True)
    calls = []

    def failingPip(arguments):
        calls.append((ui.applyButton.enabled, ui.compareButton.enabled, install.installationRunning()))
        ui.applyButton.click()  # Slicer processes events while pip runs: the user clicks again
        ui.compareButton.click()
        raise subprocess.CalledProcessError(1, ["python", "-m", "pip", "install", *arguments])

    monkeypatch.setattr(slicer.util, "pip_install", failingPip)
    before = harness.sceneSnapshot()
    ui.applyButton.click()
    assert calls == [(False, False, True)]  # one pip, buttons disabled meanwhile
    assert widget.panel.run is None and not install.installationRunning()
    expected = "Installing monai>=1.3 failed (pip exit status 1)"
    assert expected in ui.statusLabel.text and "internet connection" in ui.statusLabel.text
    assert any(record.levelname == "ERROR" and expected in record.getMessage() for record in caplog.records)
    assert ui.applyButton.enabled and ui.applyButton.text == "Segment"
    assert harness.sceneSnapshot() == before and not slotErrors
    ui.applyButton.click()  # trying again asks pip again (nothing stuck)
    assert len(calls) == 2


def test_show_3d_and_only_these_structures(pairsegWidget, mrml_scene, harness, phantom_dir, phantom_model, caplog,
                                           slotErrors):
    """Issue 19 item 13: 'Only these structures' keeps the chosen classes (same labels as a full
    run), 'Show 3D' adds closed surfaces; an unknown structure name is refused before any run."""
    import numpy as np
    import slicer

    from PairSegLib import models

    widget = pairsegWidget
    ui = widget.ui
    volume = readyPanel(widget, harness, phantom_dir, phantom_model)
    classes = models.readModelMetadata(str(phantom_model))["class_names"]
    ui.structuresLineEdit.text = "no such organ"
    assert widget.panel._parameterNode.structures == "no such organ"
    ui.applyButton.click()
    assert widget.panel.run is None
    assert any("no structure named 'no such organ'" in r.getMessage() and ", ".join(classes) in r.getMessage()
               for r in caplog.records if r.levelname == "ERROR")

    ui.structuresLineEdit.text = ""
    segmentOnce(widget)  # every structure, no 3D
    full = widget.panel._parameterNode.outputSegmentation
    closedSurface = slicer.vtkSegmentationConverter.GetClosedSurfaceRepresentationName()
    assert not full.GetSegmentation().ContainsRepresentation(closedSurface)
    wanted = classes[-1]
    ui.structuresLineEdit.text = f" {wanted.upper()} "
    ui.show3DCheckBox.checked = True
    assert widget.panel._parameterNode.show3D is True
    ui.outputSegmentationSelector.setCurrentNode(None)
    segmentOnce(widget)
    subset = widget.panel._parameterNode.outputSegmentation
    segmentation = subset.GetSegmentation()
    assert [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())] == [wanted]
    assert segmentation.ContainsRepresentation(closedSurface)
    full_ids = full.GetSegmentation()
    fullMask = slicer.util.arrayFromSegmentBinaryLabelmap(full, full_ids.GetSegmentIdBySegmentName(wanted), volume)
    subsetMask = slicer.util.arrayFromSegmentBinaryLabelmap(subset, segmentation.GetNthSegmentID(0), volume)
    np.testing.assert_array_equal(np.asarray(subsetMask) > 0, np.asarray(fullMask) > 0)
    assert not slotErrors


# -- issue 22 item 4: where to look first ---------------------------------------------------------


def colorAlphas(colorNode):
    alphas = []
    for index in range(colorNode.GetNumberOfColors()):
        rgba = [0.0, 0.0, 0.0, 0.0]
        colorNode.GetColor(index, rgba)
        alphas.append(rgba[3])
    return alphas


def sliceCentre(volume, sliceIndex):
    """RAS of the centre of slice K = ``sliceIndex``, from the volume's IJK-to-RAS matrix."""
    import numpy as np
    import slicer
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    nx, ny, _ = volume.GetImageData().GetDimensions()
    return (slicer.util.arrayFromVTKMatrix(matrix) @ np.array([(nx - 1) / 2.0, (ny - 1) / 2.0, sliceIndex, 1.0]))[:3]


def test_uncertainty_overlay_and_uncertain_slices(pairsegWidget, mrml_scene, harness, phantom_dir, phantom_model,
                                                 slotErrors):
    """Issue 22 item 4: Segment (Show uncertainty on by default) passes --uncertainty; the map
    comes back on the input's grid as "<input> uncertainty", the slice views' foreground, through a
    colour table whose opacity grows with the uncertainty; Next / Previous uncertain slice centre
    every slice view on the engine's ranked slices in order and go round at the ends; a second run
    updates the same node (no duplicate)."""
    import numpy as np
    import slicer
    import vtk

    from PairSegLib import models

    widget = pairsegWidget
    ui, panel = widget.ui, widget.panel
    volume = readyPanel(widget, harness, phantom_dir, phantom_model)
    assert ui.showUncertaintyCheckBox.checked and panel._parameterNode.showUncertainty is True
    assert not ui.nextUncertainButton.enabled and not ui.previousUncertainButton.enabled
    composite = mrml_scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    sliceNode = mrml_scene.AddNewNodeByClass("vtkMRMLSliceNode")

    run = segmentOnce(widget)
    option = run.command.index("--uncertainty")
    assert run.command[option + 1] == run.uncertaintyPath
    assert os.path.dirname(run.uncertaintyPath) == run.workDirectory and not os.path.exists(run.workDirectory)
    node = run.uncertaintyNode
    assert node is not None and node.GetScene() is mrml_scene and node.GetName() == "phantom uncertainty"
    assert node.GetImageData().GetDimensions() == volume.GetImageData().GetDimensions()
    nodeMatrix, volumeMatrix = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(nodeMatrix)
    volume.GetIJKToRASMatrix(volumeMatrix)
    np.testing.assert_allclose(slicer.util.arrayFromVTKMatrix(nodeMatrix), slicer.util.arrayFromVTKMatrix(volumeMatrix))
    values = np.array(slicer.util.arrayFromVolume(node))
    classCount = len(models.readModelMetadata(str(phantom_model))["class_names"])
    assert 0.0 <= values.min() < 0.01 and 0.1 < values.max() <= classCount + 1e-4  # bits, not a constant map
    # the ranking is the engine's event, and it ranks the slices (first array axis) of the map shown
    (event,) = [e for e in run.events if e.get("event") == "uncertainty"]
    ranked = [entry["slice"] for entry in event["check_slices"]]
    assert run.checkSlices == ranked and len(ranked) >= 2
    sums = values.reshape(values.shape[0], -1).sum(axis=1, dtype=np.float64)
    assert [int(k) for k in np.argsort(-sums, kind="stable")[:len(ranked)]] == ranked
    # shown: foreground of the slice views, transparent where certain, opaque from 1 bit
    assert composite.GetForegroundVolumeID() == node.GetID() and composite.GetBackgroundVolumeID() == volume.GetID()
    display = node.GetDisplayNode()
    alphas = colorAlphas(display.GetColorNode())
    assert alphas[0] == 0.0 and alphas[-1] == 1.0 and all(b >= a for a, b in zip(alphas, alphas[1:]))
    assert (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == (0.0, 1.0)

    # Next walks the ranking in order, centred on each slice, and goes round after the last
    count = len(ranked)
    assert ui.nextUncertainButton.enabled and ui.uncertainSlicesLabel.text == f"{count} slices to check, most uncertain first"
    for position in list(range(count)) + [0]:
        ui.nextUncertainButton.click()
        assert ui.uncertainSlicesLabel.text == f"slice {position + 1} of {count} to check (IJK slice index K = {ranked[position]})"
        sliceToRas = sliceNode.GetSliceToRAS()
        np.testing.assert_allclose([sliceToRas.GetElement(row, 3) for row in range(3)],
                                   sliceCentre(volume, ranked[position]), atol=1e-6)
    ui.previousUncertainButton.click()  # from the first, Previous goes round to the last
    assert ui.uncertainSlicesLabel.text == f"slice {count} of {count} to check (IJK slice index K = {ranked[-1]})"
    ui.previousUncertainButton.click()
    assert ui.uncertainSlicesLabel.text == f"slice {count - 1} of {count} to check (IJK slice index K = {ranked[-2]})"

    # a second run replaces the map: the same node, one of its name, one colour table
    segmentOnce(widget)
    assert panel.run.uncertaintyNode is node and node.GetScene() is mrml_scene
    assert [name for _, name in harness.sceneSnapshot()].count("phantom uncertainty") == 1
    assert mrml_scene.GetNodesByClassByName("vtkMRMLColorTableNode", "PairSeg uncertainty").GetNumberOfItems() == 1
    assert ui.uncertainSlicesLabel.text == f"{len(panel.run.checkSlices)} slices to check, most uncertain first"
    assert not slotErrors


def test_uncertainty_cancel_failure_and_off_leave_no_nodes(pairsegWidget, mrml_scene, harness, phantom_dir,
                                                           phantom_model, monkeypatch, caplog, slotErrors):
    """Issue 22 item 4: a cancelled run and a run that fails on the uncertainty map add no node
    and leave no work file (the map is read before anything enters the scene); with Show
    uncertainty off the engine gets no --uncertainty."""
    from PairSegLib import mrml

    widget = pairsegWidget
    ui, panel = widget.ui, widget.panel
    readyPanel(widget, harness, phantom_dir, phantom_model)
    before = harness.sceneSnapshot()
    ui.applyButton.click()
    run = panel.run
    assert "--uncertainty" in run.command and not run.done
    ui.applyButton.click()  # Cancel
    pump(lambda: run.done and not panel.timer.isActive())
    assert run.state == "cancelled" and harness.sceneSnapshot() == before
    assert not os.path.exists(run.workDirectory)

    readOnGrid = mrml.readArrayOnGrid

    def unreadableUncertainty(path, *arguments):
        if os.path.basename(path) == "uncertainty.nrrd":
            raise IOError(f"{path} could not be read as an image.")
        return readOnGrid(path, *arguments)

    monkeypatch.setattr(mrml, "readArrayOnGrid", unreadableUncertainty)
    ui.applyButton.click()
    run = panel.run
    pump(lambda: run.done and not panel.timer.isActive(), timeout=180)
    assert run.state == "failed" and "Importing the uncertainty map failed" in ui.statusLabel.text
    assert any("uncertainty map" in r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    assert harness.sceneSnapshot() == before and not os.path.exists(run.workDirectory)
    assert not ui.nextUncertainButton.enabled
    monkeypatch.setattr(mrml, "readArrayOnGrid", readOnGrid)

    ui.showUncertaintyCheckBox.checked = False
    assert panel._parameterNode.showUncertainty is False
    ui.applyButton.click()
    run = panel.run
    assert "--uncertainty" not in run.command and run.uncertaintyPath is None
    ui.applyButton.click()  # Cancel: the command is what this part checks
    pump(lambda: run.done and not panel.timer.isActive())

    # "Only these structures": the uncertainty and its ranking are of those structures only
    ui.showUncertaintyCheckBox.checked = True
    from PairSegLib import models

    names = models.readModelMetadata(panel._parameterNode.modelPath)["class_names"]
    panel._parameterNode.structures = names[-1]
    ui.applyButton.click()
    run = panel.run
    option = run.command.index("--uncertainty-classes")
    assert run.command[option + 1] == names[-1] and "--uncertainty" in run.command
    ui.applyButton.click()  # Cancel
    pump(lambda: run.done and not panel.timer.isActive())
    assert harness.sceneSnapshot() == before and not slotErrors
