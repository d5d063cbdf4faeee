"""The PairSeg module's *Fill between slices* section (PairSegLib/fill.py), offscreen, for each
supported Slicer release: Slicer's own parameterNodeWrapper of the release, real MRML, real Qt,
and the real ``pairseg fill`` in the engine's background process (a short training budget).

Preview (Cancel, then to the end) never changes the user's segmentation; Apply adds the filled
voxels as one undo step and keeps every stroke; Undo fill restores the strokes exactly; Discard
removes the preview and leaves the segmentation as it was."""

import os

import numpy as np
import pytest


def pump(until, timeout=240.0):
    from test_widget_pairseg import pump as runEventLoop  # Testing/ is on sys.path (conftest)

    runEventLoop(until, timeout)


@pytest.fixture
def pairsegWidget(slicer_release, module_widget, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PAIRSEG_MODELS_DIR", str(tmp_path / "no-catalog"))
    widget = module_widget("PairSeg")
    widget.parent.enter()
    return widget


def strokes(harness, phantom_dir, mrml_scene):
    """The phantom volume and a segmentation with liver and spleen drawn on every 4th slice."""
    import slicer

    images = sorted(p for p in os.listdir(phantom_dir) if "_image" in p)
    volume = harness.loadVolume(str(phantom_dir / images[0]), name="phantom")
    labels = slicer.util.arrayFromVolume(harness.loadVolume(str(phantom_dir / images[0].replace("_image", "_label")),
                                                            name="truth", labelmap=True))
    labels = np.asarray(labels).copy()
    assert labels.shape == tuple(reversed(volume.GetImageData().GetDimensions()))
    segmentationNode = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "drawn")
    segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    drawn = {}
    for value, name in ((1, "liver"), (4, "spleen")):
        rows = np.flatnonzero((labels == value).reshape(len(labels), -1).any(axis=1))
        keep = sorted(set(range(rows[0], rows[-1] + 1, 4)) | {rows[-1]})
        mask = np.zeros(labels.shape, np.uint8)
        mask[keep] = labels[keep] == value
        segmentId = segmentationNode.GetSegmentation().AddEmptySegment(name, name)
        slicer.util.updateSegmentBinaryLabelmapFromArray(mask, segmentationNode, segmentId, volume)
        drawn[segmentId] = mask
    return volume, segmentationNode, drawn


def current(segmentationNode, volume):
    import slicer

    segmentation = segmentationNode.GetSegmentation()
    return {segmentation.GetNthSegmentID(i): slicer.util.arrayFromSegmentBinaryLabelmap(
        segmentationNode, segmentation.GetNthSegmentID(i), volume).astype(np.uint8)
        for i in range(segmentation.GetNumberOfSegments())}


@pytest.mark.slow
def test_fill_preview_cancel_apply_undo_discard(pairsegWidget, mrml_scene, harness, phantom_dir):
    import slicer

    widget = pairsegWidget
    panel = widget.panel.fillPanel
    node = panel.parameterNode
    assert node is not None and node.parameterNode.GetScene() is mrml_scene
    assert not panel.previewButton.enabled  # nothing chosen yet
    volume, segmentationNode, drawn = strokes(harness, phantom_dir, mrml_scene)
    panel.volumeSelector.setCurrentNode(volume)
    panel.segmentationSelector.setCurrentNode(segmentationNode)
    assert node.volume is volume and node.segmentation is segmentationNode  # GUI -> node (connectors)
    node.method = "pairwise"
    assert panel.methodComboBox.currentText == "pairwise"  # node -> GUI
    panel.budgetSpinBox.value = 5
    assert node.budgetSeconds == 5
    widget.ui.deviceComboBox.setCurrentIndex(widget.ui.deviceComboBox.findData("cpu"))
    assert panel.previewButton.enabled and not panel.applyButton.enabled

    def unchanged():
        now = current(segmentationNode, volume)
        return now.keys() == drawn.keys() and all(np.array_equal(now[k], drawn[k]) for k in drawn)

    nodesBefore = harness.sceneSnapshot()
    panel.previewButton.click()  # Preview
    assert panel.running and panel.previewButton.text == "Cancel" and panel.timer.isActive()
    assert not panel.segmentationSelector.enabled
    panel.previewButton.click()  # Cancel
    pump(lambda: panel.run.done)
    assert panel.run.state == "cancelled" and panel.run.previewNode is None
    assert panel.previewButton.text == "Preview" and unchanged() and harness.sceneSnapshot() == nodesBefore

    panel.previewButton.click()  # Preview, to the end
    pump(lambda: panel.run.done)
    assert panel.run.state == "done", (panel.statusLabel.text, panel.run.log[-5:])
    preview = panel.run.previewNode
    assert preview is not None and preview.GetScene() is mrml_scene and unchanged()  # nothing written yet
    assert panel.applyButton.enabled and panel.discardButton.enabled

    panel.applyButton.click()  # Apply: one undo step
    after = current(segmentationNode, volume)
    assert preview.GetScene() is None  # the preview is gone
    for segmentId, mask in drawn.items():
        assert np.all(after[segmentId][mask > 0] == 1)  # every stroke kept
    assert any(after[k].sum() > drawn[k].sum() for k in drawn)  # and something filled in between
    assert panel.undoButton.enabled
    panel.undoButton.click()
    assert unchanged() and not panel.undoButton.enabled

    panel.previewButton.click()  # Preview once more, then Discard
    pump(lambda: panel.run.done)
    assert panel.run.state == "done"
    preview = panel.run.previewNode
    panel.discardButton.click()
    assert preview.GetScene() is None and unchanged() and not panel.applyButton.enabled
    assert slicer.mrmlScene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems() == 1


def test_fill_refuses_an_empty_segmentation_before_starting(pairsegWidget, mrml_scene, harness, phantom_dir,
                                                            monkeypatch):
    import slicer

    panel = pairsegWidget.panel.fillPanel
    images = sorted(p for p in os.listdir(phantom_dir) if "_image" in p)
    volume = harness.loadVolume(str(phantom_dir / images[0]), name="phantom")
    empty = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty")
    panel.volumeSelector.setCurrentNode(volume)
    panel.segmentationSelector.setCurrentNode(empty)
    shown = []
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **kw: shown.append(text))
    panel.previewButton.click()
    assert shown and "has no segment" in shown[0] and panel.run is None
