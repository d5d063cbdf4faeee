"""GUI wiring of the PairSeg module (Qt only here; the work goes through ``PairSegCoreLogic``).

``SegmentPanel`` connects the widgets of ``Resources/UI/PairSeg.ui`` to the module's parameter
node and to the logic (``segmentlogic.PairSegCoreLogic``): model choice (catalog, registered and
recent models), Segment / Cancel, where to look first (the uncertainty overlay and Previous /
Next uncertain slice), Compare with a reference, and the *Fill between slices* section
(``fill.FillPanel``). A QTimer polls the background run (``engine.EngineRun``: one
``pairseg segment`` or ``pairseg evaluate`` process) and moves its progress into the GUI.

``PairSeg.py`` holds only the module, the widget shell that loads the .ui and hands it to this
panel, the module logic and the self-test, as Slicer wants them.
"""

import logging
import os

import ctk
import slicer
import vtk

from . import gui, models, mrml
from .engine import RunState, torchFreeEngineModule
from .install import DependencyError
from .mrml import InputError

#: what the device menu shows for the engine's device names (pairseg.constants.DEVICES, the one
#: list; a device without a label here is shown by its name)
DEVICE_LABELS = {"auto": "Automatic (GPU when available)", "cpu": "CPU", "cuda": "CUDA (NVIDIA GPU)",
                 "mps": "MPS (Apple GPU)"}
POLL_MS = 100


def readCatalog():
    """The ready-model catalog (``pairseg.modelfiles.catalog.load_catalog``, standard library only); an
    absent or damaged catalog gives an empty one with a warning, so it cannot break the panel."""
    catalogModule = torchFreeEngineModule("modelfiles.catalog")
    try:
        return catalogModule.load_catalog()
    except Exception as error:
        logging.warning(f"PairSeg: model catalog not readable: {error}")
        return catalogModule.Catalog(path=None, default=None, entries=[])


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


class SegmentPanel:
    """The PairSeg module panel. ``ui``: ``slicer.util.childWidgetVariables`` of the loaded .ui;
    ``logic``: the module logic (``getParameterNode()`` returns the wrapped parameter node);
    ``moduleWidget``: the ScriptedLoadableModuleWidget (its layout, observers and ``parent``).
    ``run``: the engine run started last (segmentation or comparison), None before the first."""

    def __init__(self, ui, logic, moduleWidget):
        self.ui = ui
        self.logic = logic
        self.moduleWidget = moduleWidget
        self.catalogEntries = {}
        self.defaultModelPath = ""
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._observedInputVolume = None
        self.run = None
        self.installing = False
        self.checkSlices = []       # the last uncertainty ranking: K indices, most uncertain first
        self.checkVolume = None     # the volume it ranks
        self.checkPosition = None   # index into checkSlices of the slice shown, None before the first
        self.timer = gui.pollTimer(POLL_MS, self.onTimer)
        self._connect()
        self.refreshKnownModels()
        self.initializeParameterNode()
        self.setRunning(False)
        from . import fill  # the Fill between slices section

        self.fillPanel = fill.FillPanel(moduleWidget.layout, logic, device=lambda: (
            self._parameterNode.device if self._parameterNode else "auto"))

    def _connect(self):
        ui = self.ui
        for value in torchFreeEngineModule("constants").DEVICES:
            ui.deviceComboBox.addItem(DEVICE_LABELS.get(value, value), value)
        ui.modelPathLineEdit.filters = ctk.ctkPathLineEdit.Files
        ui.modelPathLineEdit.nameFilters = ["PairSeg model (*.pairseg)", "All files (*)"]
        ui.modelPathLineEdit.settingKey = "PairSeg/ModelPath"
        ui.modelPathLineEdit.connect("currentPathChanged(QString)", self.onModelPathChanged)
        ui.knownModelsComboBox.connect("activated(int)", self.onKnownModelChosen)
        ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        ui.compareButton.connect("clicked(bool)", self.onCompareButton)
        ui.nextUncertainButton.connect("clicked(bool)", lambda checked=False: self.stepUncertainSlice(+1))
        ui.previousUncertainButton.connect("clicked(bool)", lambda checked=False: self.stepUncertainSlice(-1))
        scene = slicer.mrmlScene
        self.moduleWidget.addObserver(scene, scene.StartCloseEvent, self.onSceneStartClose)
        self.moduleWidget.addObserver(scene, scene.EndCloseEvent, self.onSceneEndClose)

    # -- module life cycle ----------------------------------------------------------------------

    def cleanup(self):
        self.fillPanel.cleanup()
        self.timer.stop()
        if self.run is not None and not self.run.done:
            self.run.shutdown()  # kills the engine's whole process tree, without waiting for it
        self.setParameterNode(None)

    def enter(self):
        self.initializeParameterNode()
        self.refreshKnownModels()

    def exit(self):
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event):
        if self.run is not None and not self.run.done:
            self.run.shutdown()
        self.setCheckSlices([], None)
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.moduleWidget.parent.isEntered:
            self.initializeParameterNode()

    # -- parameter node -------------------------------------------------------------------------

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
            self.moduleWidget.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGui)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._observedInputVolume = self._parameterNode.inputVolume
            self._parameterNodeGuiTag = gui.connectParameterNode(self._parameterNode, self.ui)
            self.moduleWidget.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGui)
            self.ui.modelPathLineEdit.currentPath = self._parameterNode.modelPath
            index = self.ui.deviceComboBox.findData(self._parameterNode.device)
            self.ui.deviceComboBox.setCurrentIndex(max(index, 0))
            self.updateGui()

    def runParameterNode(self):
        """The parameter node a finishing run reports to: the panel's, or, when the user left the
        module meanwhile (``exit()`` disconnects the panel), the module's node in the scene, which the
        panel shows again on ``enter()``."""
        if self._parameterNode is not None:
            return self._parameterNode
        return self.logic.getParameterNode() if slicer.mrmlScene is not None else None

    # -- GUI state ------------------------------------------------------------------------------

    def updateGui(self, caller=None, event=None):
        if not self._parameterNode:
            return
        self.keepOutputConsistentWithInput()
        running = self.run is not None and not self.run.done
        ready = bool(self._parameterNode.inputVolume and self._parameterNode.modelPath)
        ui = self.ui
        ui.applyButton.enabled = not self.installing and (running or ready)
        ui.applyButton.toolTip = "Wait: the engine's packages are being installed" if self.installing else (
            "Stop the segmentation" if running else (
                "Segment the input volume" if ready else "Select an input volume and a model file"))
        ui.compareButton.enabled = not running and not self.installing and bool(
            self._parameterNode.outputSegmentation and self._parameterNode.referenceSegmentation)
        ui.deviceWarningLabel.visible = self._parameterNode.device == "cpu"

    def keepOutputConsistentWithInput(self):
        """When the input volume changes, the output goes back to "Create new segmentation" unless it
        was made for the new input (``mrml.sourceVolume``): a segmentation of patient A never receives
        patient B's organs."""
        p = self._parameterNode
        if p.inputVolume is self._observedInputVolume:
            return
        self._observedInputVolume = p.inputVolume
        output = p.outputSegmentation
        if output is not None and mrml.sourceVolume(output) is not p.inputVolume:
            p.outputSegmentation = None

    def setInstalling(self, installing):
        """While the engine's packages install: every button that may start an engine run (and so
        an installation) is disabled, and the status says why."""
        self.installing = installing
        if installing:
            self.ui.statusLabel.text = "Installing the engine's packages (this can take several minutes)..."
        self.updateGui()

    def setRunning(self, running):
        ui = self.ui
        ui.applyButton.text = "Cancel" if running else "Segment"
        ui.progressBar.visible = running
        for widget in (ui.inputsCollapsibleButton, ui.optionsCollapsibleButton,
                       ui.outputsCollapsibleButton, ui.compareCollapsibleButton):
            widget.enabled = not running
        self.updateGui()

    # -- models ---------------------------------------------------------------------------------

    def refreshKnownModels(self):
        """Catalog (ready) models first, then models registered by the Trainer and recent files
        (``models.modelChoices``, the list the Trainer's pickers show too)."""
        catalog = readCatalog()
        self.catalogEntries = {os.path.normcase(os.path.abspath(str(entry.file))): entry for entry in catalog.entries}
        default = [entry for entry in catalog.entries if entry.name == catalog.default and entry.available]
        self.defaultModelPath = str(default[0].file) if default else ""
        gui.fillModelCombo(self.ui.knownModelsComboBox, "Ready, registered and recent models...",
                           models.modelChoices(self.logic.registry, catalog))

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
            lines += models.describeModel(metadata) if metadata else ([] if lines else ["No model selected."])
        except InputError as error:
            lines.append(str(error))
        self.ui.modelInfoLabel.text = "\n".join(lines)

    def onDeviceChanged(self, index):
        if self._parameterNode:
            self._parameterNode.device = self.ui.deviceComboBox.itemData(index) or "auto"

    # -- runs -----------------------------------------------------------------------------------

    def onApplyButton(self):
        if self.installing:
            return  # Slicer processes events while pip runs: a second click starts nothing
        if self.run is not None and not self.run.done:
            self.ui.statusLabel.text = "Cancelling..."
            self.run.cancel()
            return
        p = self._parameterNode
        self.startRun(lambda: self.logic.segmentVolumeAsync(
            p.inputVolume, p.modelPath, p.outputSegmentation, p.device, p.keepLargestComponent,
            onProgress=self.onRunProgress, onFinished=self.onSegmentationFinished, replace=p.replaceOutput,
            structures=p.structures, show3D=p.show3D, uncertainty=p.showUncertainty))

    def startRun(self, start):
        """``start()`` starts an engine run (segmentation, comparison), then followed by the timer;
        bad input, a declined or failed installation are shown in a dialog and the status line.
        While packages install (``install.ensureEngineReady`` inside ``start()``), the buttons
        that could start another run are disabled (``setInstalling``)."""
        from . import install

        if self.installing or install.installationRunning():
            return
        if install.missingPackages():
            self.setInstalling(True)
        try:
            self.run = start()
        except (InputError, DependencyError) as error:
            self.ui.statusLabel.text = str(error)
            slicer.util.errorDisplay(str(error), windowTitle="PairSeg")
            return
        finally:
            if self.installing:
                self.setInstalling(False)
        if not self.run.done:
            self.setRunning(True)
            self.timer.start()

    def onTimer(self):
        if self.run is not None:
            self.run.poll()

    def onRunProgress(self, run):
        self.ui.progressBar.value = int(round(100 * run.fraction))
        self.ui.statusLabel.text = run.message

    def _runEnded(self, run):
        self.timer.stop()
        self.setRunning(False)
        self.ui.statusLabel.text = run.message

    def onSegmentationFinished(self, run):
        self._runEnded(run)
        if run.state == RunState.DONE:
            parameterNode = self.runParameterNode()
            if parameterNode is not None and parameterNode.inputVolume is run.volumeNode:
                parameterNode.outputSegmentation = run.segmentationNode
            slicer.util.setSliceViewerLayers(background=run.volumeNode, fit=False)
            if run.uncertaintyNode is not None:
                self.setCheckSlices(run.checkSlices, run.volumeNode)
            self.ui.modelPathLineEdit.addCurrentPathToHistory()
            self.refreshKnownModels()
        elif run.state == RunState.FAILED:
            slicer.util.errorDisplay(str(run.error), windowTitle="PairSeg segmentation failed")

    def onCompareButton(self):
        if self.installing:
            return
        p = self._parameterNode  # pairseg evaluate runs in the background, like Segment
        self.startRun(lambda: self.logic.compareToReferenceAsync(
            p.outputSegmentation, p.referenceSegmentation, onProgress=self.onRunProgress,
            onFinished=self.onCompareFinished))

    def onCompareFinished(self, run):
        self._runEnded(run)
        if run.state == RunState.DONE:
            self.ui.resultsTableView.setMRMLTableNode(run.result.tableNode)
            self.ui.resultsTableView.visible = True
        elif run.state == RunState.FAILED:
            slicer.util.errorDisplay(str(run.error), windowTitle="PairSeg comparison failed")

    # -- where to look first --------------------------------------------------------------------

    def setCheckSlices(self, slices, volumeNode):
        """Offer ``slices`` (K indices of ``volumeNode``, most uncertain first, from the engine's
        ``uncertainty`` event) to Previous / Next uncertain slice; [] clears the ranking."""
        self.checkSlices = [int(index) for index in slices] if volumeNode is not None else []
        self.checkVolume = volumeNode if self.checkSlices else None
        self.checkPosition = None
        self.updateUncertainSlices()

    def updateUncertainSlices(self):
        ui = self.ui
        usable = bool(self.checkSlices) and self.checkVolume is not None and self.checkVolume.GetScene() is not None
        ui.nextUncertainButton.enabled = ui.previousUncertainButton.enabled = usable
        count = len(self.checkSlices)
        if not usable:
            ui.uncertainSlicesLabel.text = "No uncertain slices yet."
        elif self.checkPosition is None:
            ui.uncertainSlicesLabel.text = f"{count} slices to check, most uncertain first"
        else:
            ui.uncertainSlicesLabel.text = (f"slice {self.checkPosition + 1} of {count} to check "
                                            f"(IJK slice index K = {self.checkSlices[self.checkPosition]})")

    def stepUncertainSlice(self, step):
        """Next (+1) or previous (-1) slice of the ranking, going round at both ends (Next after
        the last shows the first; before any, Next shows the first and Previous the last); every
        slice view is centred on that slice (``mrml.jumpToSlice``). Returns its K index, or None
        when there is no ranking (or its volume left the scene)."""
        self.updateUncertainSlices()
        if not self.ui.nextUncertainButton.enabled:
            return None
        count = len(self.checkSlices)
        if self.checkPosition is None:
            self.checkPosition = 0 if step > 0 else count - 1
        else:
            self.checkPosition = (self.checkPosition + step) % count
        sliceIndex = self.checkSlices[self.checkPosition]
        mrml.jumpToSlice(self.checkVolume, sliceIndex)
        self.updateUncertainSlices()
        return sliceIndex
