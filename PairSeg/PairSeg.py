"""PairSeg: segment a volume with a pairwise-learning model (C2FCN / CFCN, Wang et al., MedIA 2021).

The module file only wires the GUI; the work is in PairSegLib (logic, background engine process,
MRML conversion, overlays, model registry, dependency installation). From the Python console::

    import PairSeg
    logic = PairSeg.PairSegLogic()   # or slicer.util.getModuleLogic("PairSeg"), the module panel's logic
    segmentationNode = logic.segmentVolume(volumeNode, "/path/to/model.pairseg", device="auto")
    result = logic.compareToReference(segmentationNode, referenceSegmentationNode)

(``slicer.modules.pairseg.logic()`` is the C++ scripted-module logic that Slicer makes for every
scripted module; it has none of these methods.)
"""

import logging
import os
import sys
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
import PairSegLib.gui


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
            "volume and a model (a ready model of the catalog is preselected), then click Segment. The work "
            "runs in a background process that can be cancelled. The README of the extension's source "
            "documents the module.")
        self.parent.acknowledgementText = (
            "Method: R. Wang, S. Cao, K. Ma, Y. Zheng, D. Meng, \"Pairwise learning for medical image "
            "segmentation\", Medical Image Analysis 67 (2021) 101876. Sample data: CHAOS challenge "
            "(Kavur et al., Medical Image Analysis 69, 2021; CC BY-SA 4.0).")
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """Register the CHAOS MR sample case (from the challenge's public archive) in Sample Data."""
    from PairSegLib import sampledata

    sampledata.registerSampleData(os.path.join(os.path.dirname(__file__), "Resources", "Icons"))


def readCatalog():
    """The ready-model catalog (``pairseg.modelfiles.catalog``, standard library only) or None when absent."""
    root = PairSegLib.engineRoot()
    if root not in sys.path:
        sys.path.append(root)
    from pairseg.modelfiles.catalog import load_catalog

    try:
        return load_catalog()
    except Exception as error:  # a damaged catalog must not break the module panel
        logging.warning(f"PairSeg: model catalog not readable: {error}")
        return None


def describeCatalogEntry(entry):
    """Lines shown for a catalog model: title, description, held-out Dice per class."""
    lines = [f"Ready model: {entry.title} (version {entry.version}, {entry.modality})", entry.description]
    evaluation = entry.evaluation or {}
    if evaluation.get("mean_dice") is not None:
        perClass = ", ".join(f"{name} {100 * value:.1f}" for name, value in (evaluation.get("dice") or {}).items())
        lines.append(f"Measured Dice on held-out {evaluation.get('case', 'case')}: mean {100 * evaluation['mean_dice']:.1f}"
                     + (f" ({perClass})" if perClass else ""))
    if not entry.available:
        lines.append(f"The model file {entry.file} is missing" + (f"; download it from {entry.url}" if entry.url else "."))
    return lines


@parameterNodeWrapper
class PairSegParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode
    modelPath: str = ""
    device: Annotated[str, Choice(list(PairSegLib.DEVICES))] = "auto"
    keepLargestComponent: bool = True
    structures: str = ""
    outputSegmentation: vtkMRMLSegmentationNode
    replaceOutput: bool = False
    show3D: bool = False
    referenceSegmentation: vtkMRMLSegmentationNode


class PairSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    DEVICE_LABELS = (("auto", "Automatic (GPU when available)"), ("cpu", "CPU"),
                     ("cuda", "CUDA (NVIDIA GPU)"), ("mps", "MPS (Apple GPU)"))

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.catalogEntries = {}
        self.defaultModelPath = ""
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self.task = None
        self.timer = None
        self.installing = False
        self._observedInputVolume = None

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
        import PairSegLib.fill  # the Fill between slices section (PairSegLib/fill.py)

        self.fillPanel = PairSegLib.fill.FillPanel(self.layout, self.logic, device=lambda: (
            self._parameterNode.device if self._parameterNode else "auto"))

    def cleanup(self):
        if getattr(self, "fillPanel", None) is not None:
            self.fillPanel.cleanup()
        if self.timer is not None:
            self.timer.stop()
        if self.task is not None and not self.task.done:
            self.task.shutdown()  # kills the engine's whole process tree, without waiting for it
        self.setParameterNode(None)
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()
        self.refreshKnownModels()

    def exit(self):
        self.setParameterNode(None)

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
        if not self._parameterNode.modelPath and self.defaultModelPath:
            self.ui.modelPathLineEdit.currentPath = self.defaultModelPath

    def setParameterNode(self, parameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGui)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._observedInputVolume = self._parameterNode.inputVolume
            self._parameterNodeGuiTag = PairSegLib.gui.connectParameterNode(self._parameterNode, self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGui)
            self.ui.modelPathLineEdit.currentPath = self._parameterNode.modelPath
            index = self.ui.deviceComboBox.findData(self._parameterNode.device)
            self.ui.deviceComboBox.setCurrentIndex(max(index, 0))
            self.updateGui()

    # -- GUI state ------------------------------------------------------------------------------

    def updateGui(self, caller=None, event=None):
        if not self._parameterNode:
            return
        self.keepOutputConsistentWithInput()
        running = self.task is not None and not self.task.done
        ready = bool(self._parameterNode.inputVolume and self._parameterNode.modelPath)
        self.ui.applyButton.enabled = not self.installing and (running or ready)
        self.ui.applyButton.toolTip = "Wait: the engine's packages are being installed" if self.installing else (
            "Stop the segmentation" if running else (
                "Segment the input volume" if ready else "Select an input volume and a model file"))
        self.ui.compareButton.enabled = not running and not self.installing and bool(
            self._parameterNode.outputSegmentation and self._parameterNode.referenceSegmentation)
        self.ui.deviceWarningLabel.visible = self._parameterNode.device == "cpu"

    def keepOutputConsistentWithInput(self):
        """When the input volume changes, the output goes back to "Create new segmentation" unless it
        was made for the new input (``mrml.sourceVolume``): a segmentation of patient A never receives
        patient B's organs."""
        p = self._parameterNode
        if p.inputVolume is self._observedInputVolume:
            return
        self._observedInputVolume = p.inputVolume
        output = p.outputSegmentation
        if output is not None and PairSegLib.mrml.sourceVolume(output) is not p.inputVolume:
            p.outputSegmentation = None

    def setInstalling(self, installing):
        """While the engine's packages install: every button that may start an engine run (and so
        an installation) is disabled, and the status says why."""
        self.installing = installing
        if installing:
            self.ui.statusLabel.text = "Installing the engine's packages (this can take several minutes)..."
        self.updateGui()

    def setRunning(self, running):
        self.ui.applyButton.text = "Cancel" if running else "Segment"
        self.ui.progressBar.visible = running
        for widget in (self.ui.inputsCollapsibleButton, self.ui.optionsCollapsibleButton,
                       self.ui.outputsCollapsibleButton, self.ui.compareCollapsibleButton):
            widget.enabled = not running
        self.updateGui()

    def refreshKnownModels(self):
        """Catalog (ready) models first, then models registered by the Trainer and recent files."""
        combo = self.ui.knownModelsComboBox
        combo.clear()
        combo.addItem("Ready, registered and recent models...", "")
        self.catalogEntries = {}
        self.defaultModelPath = ""
        catalog = readCatalog()
        for entry in (catalog.entries if catalog else []):
            path = str(entry.file)
            self.catalogEntries[os.path.normcase(os.path.abspath(path))] = entry
            default = " (default)" if entry.name == catalog.default else ""
            combo.addItem(f"Ready model: {entry.title}{default}" + ("" if entry.available else " [file missing]"), path)
            combo.setItemData(combo.count - 1, entry.summary(), qt.Qt.ToolTipRole)
            if default and entry.available:
                self.defaultModelPath = path
        for label, path in self.logic.registry.knownModels():
            combo.addItem(label, path)
            combo.setItemData(combo.count - 1, path, qt.Qt.ToolTipRole)

    def catalogEntry(self, path):
        """The catalog entry whose file is ``path``, or None."""
        return self.catalogEntries.get(os.path.normcase(os.path.abspath(path))) if path else None

    def onKnownModelChosen(self, index):
        path = self.ui.knownModelsComboBox.itemData(index)
        if path:
            self.ui.modelPathLineEdit.currentPath = path

    def onModelPathChanged(self, path):
        if self._parameterNode:
            self._parameterNode.modelPath = path
        entry = self.catalogEntry(path)
        lines = describeCatalogEntry(entry) if entry is not None else []
        try:
            metadata = self.logic.modelMetadata(path) if path else None
            lines += PairSegLib.describeModel(metadata) if metadata else ([] if lines else ["No model selected."])
        except PairSegLib.InputError as error:
            lines.append(str(error))
        self.ui.modelInfoLabel.text = "\n".join(lines)

    def onDeviceChanged(self, index):
        if self._parameterNode:
            self._parameterNode.device = self.ui.deviceComboBox.itemData(index) or "auto"

    # -- actions ----------------------------------------------------------------------------------

    def onApplyButton(self):
        if self.installing:
            return  # Slicer processes events while pip runs: a second click starts nothing
        if self.task is not None and not self.task.done:
            self.ui.statusLabel.text = "Cancelling..."
            self.task.cancel()
            return
        p = self._parameterNode
        self.startRun(lambda: self.logic.segmentVolumeAsync(
            p.inputVolume, p.modelPath, p.outputSegmentation, p.device, p.keepLargestComponent,
            onProgress=self.onTaskProgress, onFinished=self.onTaskFinished, replace=p.replaceOutput,
            structures=p.structures, show3D=p.show3D))

    def startRun(self, start):
        """``start()`` starts an engine run (segmentation, comparison), then followed by the timer;
        bad input, a declined or failed installation are shown in a dialog and the status line.
        While packages install (``install.ensureEngineReady`` inside ``start()``), the buttons
        that could start another run are disabled (``setInstalling``)."""
        from PairSegLib import install

        if self.installing or install.installationRunning():
            return
        if install.missingPackages():
            self.setInstalling(True)
        try:
            self.task = start()
        except (PairSegLib.InputError, PairSegLib.DependencyError) as error:
            self.ui.statusLabel.text = str(error)
            slicer.util.errorDisplay(str(error), windowTitle="PairSeg")
            return
        finally:
            if self.installing:
                self.setInstalling(False)
        if not self.task.done:
            self.setRunning(True)
            self.timer.start()

    def onTimer(self):
        if self.task is not None:
            self.task.poll()

    def onTaskProgress(self, task):
        self.ui.progressBar.value = int(round(100 * task.fraction))
        self.ui.statusLabel.text = task.message

    def runParameterNode(self):
        """The parameter node a finishing run reports to: the panel's, or, when the user left the
        module meanwhile (``exit()`` disconnects the panel), the module's node in the scene, which the
        panel shows again on ``enter()``."""
        if self._parameterNode is not None:
            return self._parameterNode
        return self.logic.getParameterNode() if slicer.mrmlScene is not None else None

    def onTaskFinished(self, task):
        self.timer.stop()
        self.setRunning(False)
        self.ui.statusLabel.text = task.message
        if task.state == PairSegLib.State.DONE:
            parameterNode = self.runParameterNode()
            if parameterNode is not None and parameterNode.inputVolume is task.volumeNode:
                parameterNode.outputSegmentation = task.segmentationNode
            slicer.util.setSliceViewerLayers(background=task.volumeNode, fit=False)
            self.ui.modelPathLineEdit.addCurrentPathToHistory()
            self.refreshKnownModels()
        elif task.state == PairSegLib.State.FAILED:
            slicer.util.errorDisplay(str(task.error), windowTitle="PairSeg segmentation failed")

    def onCompareButton(self):
        if self.installing:
            return
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
