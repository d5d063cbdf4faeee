"""PairSeg: segment a volume with a pairwise-learning model (C2FCN / CFCN, Wang et al., MedIA 2021).

The module file only wires the GUI; the work is in PairSegLib (logic, background engine process,
MRML conversion, overlays, model registry, dependency installation). From the Python console::

    logic = slicer.modules.pairseg.logic()
    segmentationNode = logic.segmentVolume(volumeNode, "/path/to/model.pairseg", device="auto")
    result = logic.compareToReference(segmentationNode, referenceSegmentationNode)
"""

import logging
import os
from typing import Annotated

import ctk
import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

import PairSegLib

DOCUMENTATION_URL = "https://github.com/pairseg/SlicerPairSeg#readme"


class PairSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "PairSeg"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["The PairSeg developers"]
        self.parent.helpText = (
            "Segment organs in a CT or MR volume with a PairSeg model (C2FCN / CFCN pairwise networks, "
            "trained with the PairSegTrainer module or the <code>pairseg</code> command line). Choose the "
            "volume and a model file, then click Segment. The work runs in a background process that can "
            f"be cancelled. <a href=\"{DOCUMENTATION_URL}\">Documentation</a>.")
        self.parent.acknowledgementText = (
            "Method: R. Wang, S. Cao, K. Ma, Y. Zheng, D. Meng, \"Pairwise learning for medical image "
            "segmentation\", Medical Image Analysis 67 (2021) 101876. Sample data: CHAOS challenge "
            "(Kavur et al., Medical Image Analysis 69, 2021; CC BY-SA 4.0).")
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """Register the CHAOS MR sample case (from the challenge's public archive) in Sample Data."""
    from PairSegLib import sampledata

    sampledata.registerSampleData(os.path.join(os.path.dirname(__file__), "Resources", "Icons"))


@parameterNodeWrapper
class PairSegParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode
    modelPath: str = ""
    device: Annotated[str, Choice(list(PairSegLib.DEVICES))] = "auto"
    keepLargestComponent: bool = True
    outputSegmentation: vtkMRMLSegmentationNode
    referenceSegmentation: vtkMRMLSegmentationNode


class PairSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    DEVICE_LABELS = (("auto", "Automatic (GPU when available)"), ("cpu", "CPU"),
                     ("cuda", "CUDA (NVIDIA GPU)"), ("mps", "MPS (Apple GPU)"))

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self.task = None
        self.timer = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/PairSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = PairSegLogic()
        self.timer = qt.QTimer()
        self.timer.setInterval(100)
        self.timer.connect("timeout()", self.onTimer)
        for value, label in self.DEVICE_LABELS:
            self.ui.deviceComboBox.addItem(label, value)
        self.ui.modelPathLineEdit.filters = ctk.ctkPathLineEdit.Files
        self.ui.modelPathLineEdit.nameFilters = ["PairSeg model (*.pairseg)", "All files (*)"]
        self.ui.modelPathLineEdit.settingKey = "PairSeg/ModelPath"
        self.ui.modelPathLineEdit.connect("currentPathChanged(QString)", self.onModelPathChanged)
        self.ui.knownModelsComboBox.connect("activated(int)", self.onKnownModelChosen)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.compareButton.connect("clicked(bool)", self.onCompareButton)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.refreshKnownModels()
        self.initializeParameterNode()
        self.setRunning(False)

    def cleanup(self):
        if self.task is not None and not self.task.done:
            self.task.shutdown()  # kills the engine's whole process tree, without waiting for it
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()
        self.refreshKnownModels()

    def exit(self):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGui)

    def onSceneStartClose(self, caller, event):
        if self.task is not None and not self.task.done:
            self.task.shutdown()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolume and not firstVolume.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.inputVolume = firstVolume

    def setParameterNode(self, parameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGui)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGui)
            self.ui.modelPathLineEdit.currentPath = self._parameterNode.modelPath
            index = self.ui.deviceComboBox.findData(self._parameterNode.device)
            self.ui.deviceComboBox.setCurrentIndex(max(index, 0))
            self.updateGui()

    # -- GUI state ------------------------------------------------------------------------------

    def updateGui(self, caller=None, event=None):
        if not self._parameterNode:
            return
        running = self.task is not None and not self.task.done
        ready = bool(self._parameterNode.inputVolume and self._parameterNode.modelPath)
        self.ui.applyButton.enabled = running or ready
        self.ui.applyButton.toolTip = "Stop the segmentation" if running else (
            "Segment the input volume" if ready else "Select an input volume and a model file")
        self.ui.compareButton.enabled = not running and bool(
            self._parameterNode.outputSegmentation and self._parameterNode.referenceSegmentation)
        self.ui.deviceWarningLabel.visible = self._parameterNode.device == "cpu"

    def setRunning(self, running):
        self.ui.applyButton.text = "Cancel" if running else "Segment"
        self.ui.progressBar.visible = running
        for widget in (self.ui.inputsCollapsibleButton, self.ui.optionsCollapsibleButton,
                       self.ui.outputsCollapsibleButton, self.ui.compareCollapsibleButton):
            widget.enabled = not running
        self.updateGui()

    def refreshKnownModels(self):
        combo = self.ui.knownModelsComboBox
        combo.clear()
        combo.addItem("Registered and recent models...", "")
        for label, path in self.logic.registry.knownModels():
            combo.addItem(label, path)
            combo.setItemData(combo.count - 1, path, qt.Qt.ToolTipRole)

    def onKnownModelChosen(self, index):
        path = self.ui.knownModelsComboBox.itemData(index)
        if path:
            self.ui.modelPathLineEdit.currentPath = path

    def onModelPathChanged(self, path):
        if self._parameterNode:
            self._parameterNode.modelPath = path
        try:
            metadata = self.logic.modelMetadata(path) if path else None
            text = "\n".join(PairSegLib.describeModel(metadata)) if metadata else "No model selected."
        except PairSegLib.InputError as error:
            text = str(error)
        self.ui.modelInfoLabel.text = text

    def onDeviceChanged(self, index):
        if self._parameterNode:
            self._parameterNode.device = self.ui.deviceComboBox.itemData(index) or "auto"

    # -- actions ----------------------------------------------------------------------------------

    def onApplyButton(self):
        if self.task is not None and not self.task.done:
            self.ui.statusLabel.text = "Cancelling..."
            self.task.cancel()
            return
        p = self._parameterNode
        self.startRun(lambda: self.logic.segmentVolumeAsync(
            p.inputVolume, p.modelPath, p.outputSegmentation, p.device, p.keepLargestComponent,
            onProgress=self.onTaskProgress, onFinished=self.onTaskFinished))

    def startRun(self, start):
        """``start()`` starts an engine run (segmentation, comparison), then followed by the timer;
        bad input and a declined installation are shown in a dialog."""
        try:
            self.task = start()
        except (PairSegLib.InputError, PairSegLib.DependencyError) as error:
            slicer.util.errorDisplay(str(error), windowTitle="PairSeg")
            return
        if not self.task.done:
            self.setRunning(True)
            self.timer.start()

    def onTimer(self):
        if self.task is not None:
            self.task.poll()

    def onTaskProgress(self, task):
        self.ui.progressBar.value = int(round(100 * task.fraction))
        self.ui.statusLabel.text = task.message

    def onTaskFinished(self, task):
        self.timer.stop()
        self.setRunning(False)
        self.ui.statusLabel.text = task.message
        if task.state == PairSegLib.State.DONE:
            self._parameterNode.outputSegmentation = task.segmentationNode
            slicer.util.setSliceViewerLayers(background=task.volumeNode, fit=False)
            self.refreshKnownModels()
        elif task.state == PairSegLib.State.FAILED:
            slicer.util.errorDisplay(str(task.error), windowTitle="PairSeg segmentation failed")

    def onCompareButton(self):
        p = self._parameterNode  # pairseg evaluate runs in the background, like Segment
        self.startRun(lambda: self.logic.compareToReferenceAsync(
            p.outputSegmentation, p.referenceSegmentation, onProgress=self.onTaskProgress,
            onFinished=self.onCompareFinished))

    def onCompareFinished(self, run):
        self.timer.stop()
        self.setRunning(False)
        self.ui.statusLabel.text = run.message
        if run.state == PairSegLib.State.DONE:
            self.ui.resultsTableView.setMRMLTableNode(run.result.tableNode)
            self.ui.resultsTableView.visible = True
        elif run.state == PairSegLib.State.FAILED:
            slicer.util.errorDisplay(str(run.error), windowTitle="PairSeg comparison failed")


class PairSegLogic(ScriptedLoadableModuleLogic, PairSegLib.PairSegCoreLogic):
    """segmentVolume / segmentVolumeAsync / compareToReference: see PairSegLib.logic."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        PairSegLib.PairSegCoreLogic.__init__(self)

    def getParameterNode(self):
        return PairSegParameterNode(super().getParameterNode())


class PairSegTest(ScriptedLoadableModuleTest):
    """Offline, in under a minute: the embedded sample case -> a tiny model trained on it by the
    engine (4 steps, 64 px, CPU) -> Segment -> Compare. No download and no installation: skipped
    when the engine's packages (PyTorch, MONAI) are not installed."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_PairSeg_embeddedSample()

    def test_PairSeg_embeddedSample(self):
        import shutil
        import tempfile

        from PairSegLib import install, sampledata
        from PairSegLib.engine import EngineRun

        missing = install.missingPackages()
        if missing:
            self.skipTest("the engine's packages are not installed (" + ", ".join(missing) + "): press Segment once "
                          "to install them, then run the self-test again")
        self.delayDisplay("Loading the embedded CHAOS MR sample case")
        volumeNode, referenceNode = sampledata.loadEmbeddedSample()
        self.assertEqual(referenceNode.GetSegmentation().GetNumberOfSegments(), 4)

        self.delayDisplay("Training a tiny model on the sample case (engine process)")
        folder = tempfile.mkdtemp(prefix="PairSegTest-")
        try:
            modelPath = os.path.join(folder, "selftest.pairseg")
            run = EngineRun(["train", "--data", sampledata.embeddedCaseFolder(), "--out", modelPath, "--steps", "4",
                             "--size", "64", "--batch-size", "2", "--device", "cpu", "--events", "json"],
                            name="self-test training").start()
            run.wait(timeout=300)

            self.delayDisplay("Segmenting")
            logic = PairSegLogic()
            segmentationNode = logic.segmentVolume(volumeNode, modelPath, device="cpu")
            segmentation = segmentationNode.GetSegmentation()
            self.assertEqual([segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())],
                             sampledata.CHAOS_MR_CLASSES)

            self.delayDisplay("Comparing with the expert segmentation")
            result = logic.compareToReference(segmentationNode, referenceNode)
            dice = result.tableNode.GetTable().GetValueByName(0, "Dice").ToDouble()
            self.assertTrue(0.0 <= dice <= 1.0)
            self.assertIsNotNone(result.distanceVolumeNode)
            logging.info(f"PairSeg self-test: liver Dice {dice:.3f} (a 4-step model)")
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        self.delayDisplay("Test passed")
