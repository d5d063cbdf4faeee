"""Fill between slices with PairSeg: the *Fill* panel of the PairSeg module and its logic.

The user draws each structure on a few slices of a segmentation; **Preview** runs ``pairseg fill``
(``src/pairseg/fill.py``: ITK contour interpolation by default, or a pairwise network learnt from
those slices, alone or fused with the interpolation) in the engine's background process, with progress and Cancel, and shows the result
in a separate preview segmentation; **Apply** writes it into the user's segmentation as one undo
step (``vtkSegmentationHistory``; the Segment Editor's own undo when it edits that segmentation);
**Discard** removes the preview. The user's strokes are never changed: Apply only adds voxels to
each segment (the engine keeps drawn voxels exactly as drawn, and Apply takes the union with them),
and nothing in the user's segmentation changes before Apply.

Only the PairSeg panel (``segmentpanel.SegmentPanel``) creates and cleans up ``FillPanel``.
"""

import logging

import numpy as np
import qt
import slicer
import vtk

from . import engine as engineModule
from . import gui, mrml
from .engine import RunState
from .mrml import InputError
from .segmentlogic import WorkFolderRun

_constants = engineModule.torchFreeEngineModule("constants")
METHODS = _constants.FILL_METHODS  # the engine's methods; the first, mci, measured best on a CPU
DEFAULT_METHOD = _constants.DEFAULT_FILL_METHOD
METHOD_LABELS = {"mci": "contour interpolation (as Fill between slices; no training)",
                 "fusion": "a PairSeg network learnt from the drawn slices + contour interpolation",
                 "pairwise": "the PairSeg network only"}
PARAMETER_NODE_TAG = "PairSegFill"
POLL_MS = 100  # how often the running fill is polled


def segmentationLabels(segmentationNode, volumeNode):
    """The segments of ``segmentationNode`` as one label array on ``volumeNode``'s grid: ((k, j, i)
    uint8/uint16, segment IDs, names, colours); segment n is label n + 1 (later segments win where
    segments overlap). InputError when there is no segment or nothing is drawn."""
    segmentation = segmentationNode.GetSegmentation()
    count = segmentation.GetNumberOfSegments()
    if count == 0:
        raise InputError(f"Segmentation '{segmentationNode.GetName()}' has no segment: draw the structures on a "
                         "few slices first.")
    dimensions = volumeNode.GetImageData().GetDimensions()
    labels = np.zeros(tuple(reversed(dimensions)), dtype=np.uint8 if count < 255 else np.uint16)
    ids, names, colors = [], [], []
    for index in range(count):
        segmentId = segmentation.GetNthSegmentID(index)
        segment = segmentation.GetSegment(segmentId)
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volumeNode)
        labels[mask > 0] = index + 1
        ids.append(segmentId)
        names.append(segment.GetName())
        colors.append(tuple(float(c) for c in segment.GetColor()))
    if not labels.any():
        raise InputError(f"Segmentation '{segmentationNode.GetName()}' is empty: draw the structures on a few "
                         "slices first.")
    return labels, ids, names, colors


class FillRun(WorkFolderRun):
    """``pairseg fill`` on the volume and the segmentation's current strokes, in the background;
    on success ``filled`` holds the filled labels ((k, j, i), the volume's voxel order) and
    ``previewNode`` a new segmentation showing them. The user's segmentation is not touched."""

    name = "fill"
    inputErrorClass = InputError

    def __init__(self, logic, volumeNode, segmentationNode, labels, segmentIds, names, colors, method=DEFAULT_METHOD,
                 budgetSeconds=180, device="auto", base=None, modality=None, **options):
        super().__init__(logic, **options)
        self.volumeNode, self.segmentationNode = volumeNode, segmentationNode
        self.labels, self.segmentIds, self.names, self.colors = labels, segmentIds, names, colors
        self.method, self.budgetSeconds, self.device = method, budgetSeconds, device
        self.base, self.modality = base, modality
        self.filled = None
        self.previewNode = None
        self.message = "Preparing the input"

    def writeInputs(self):
        imagePath, labelPath, self.outputPath = self.path("image.nrrd"), self.path("sparse.nrrd"), self.path("filled.nrrd")
        mrml.exportVolume(self.volumeNode, imagePath)
        mrml.writeLabelArray(self.labels, self.volumeNode, labelPath)
        arguments = ["fill", "--image", imagePath, "--label", labelPath, "--out", self.outputPath,
                     "--method", self.method, "--budget-s", str(self.budgetSeconds), "--device", self.device,
                     "--events", "json"]
        arguments += ["--base", self.base or "auto"]  # auto: the catalog's default model when its modality fits
        if self.modality:
            arguments += ["--modality", self.modality]
        self.command = engineModule.engineCommand(*arguments, python=self.python)

    def completingText(self):
        return "Showing the preview"

    def completed(self):
        dimensions = self.volumeNode.GetImageData().GetDimensions()
        try:
            self.filled = mrml.readArrayOnGrid(self.outputPath, mrml.ijkToLps(self.volumeNode), dimensions)
            labelImage = mrml.readLabelImage(self.outputPath, self.volumeNode, len(self.names))
        except IOError as error:
            raise engineModule.EngineError(f"Reading the filled segmentation failed: {error}") from error
        name = slicer.mrmlScene.GenerateUniqueName(f"{self.segmentationNode.GetName()} fill preview")
        self.previewNode = mrml.importSegments(labelImage, self.names, self.colors, self.volumeNode, None, name)
        self.previewNode.SetAttribute("PairSeg.FillPreviewOf", self.segmentationNode.GetID())
        return f"Preview ready in {engineModule.formatDuration(self.elapsedSeconds)}: Apply or Discard"


class FillLogic:
    """Preview, apply and discard a fill. ``coreLogic``: the PairSeg module's logic (its engine
    launcher, python and temporary folder are used)."""

    def __init__(self, coreLogic):
        self.coreLogic = coreLogic
        self.history = None  # vtkSegmentationHistory of the last Apply (one undo step)
        self.historyNode = None

    def previewAsync(self, volumeNode, segmentationNode, method=DEFAULT_METHOD, budgetSeconds=180, device="auto",
                     base=None, onProgress=None, onFinished=None):
        """Start ``pairseg fill`` on the segmentation's strokes; returns the running FillRun.
        InputError at once (nothing starts) for a missing volume or segmentation, no stroke, or an
        unknown method; the engine's own checks (one drawn slice, nothing to fill...) end the run
        as failed with its message."""
        mrml.checkInputVolume(volumeNode)
        if segmentationNode is None or not segmentationNode.IsA("vtkMRMLSegmentationNode"):
            raise InputError("Select the segmentation whose slices you have drawn.")
        if method not in METHODS:
            raise InputError(f"Unknown fill method '{method}': use one of {', '.join(METHODS)}.")
        labels, ids, names, colors = segmentationLabels(segmentationNode, volumeNode)
        modality = mrml.volumeModality(volumeNode)
        run = FillRun(self.coreLogic, volumeNode, segmentationNode, labels, ids, names, colors, method,
                      int(budgetSeconds), device, base, modality if modality in ("CT", "MR") else "MR")  # no HU air: MR
        run.onProgress, run.onFinished = onProgress, onFinished
        run.start()
        return run

    def apply(self, run):
        """Write a finished preview into the user's segmentation as one undo step and remove the
        preview node. Each segment becomes the union of its strokes and the filled voxels of its
        label, so no stroke is ever removed. Returns the segmentation node."""
        if run is None or run.state != RunState.DONE or run.filled is None:
            raise InputError("There is no preview to apply: click Preview first.")
        node = run.segmentationNode
        if node.GetScene() is None:
            raise InputError("The segmentation of the preview is no longer in the scene.")
        segmentation = node.GetSegmentation()
        self._saveStateForUndo(node)
        wasModifying = node.StartModify()
        try:
            for index, segmentId in enumerate(run.segmentIds):
                if segmentation.GetSegment(segmentId) is None:
                    continue  # deleted since the preview: not brought back
                strokes = slicer.util.arrayFromSegmentBinaryLabelmap(node, segmentId, run.volumeNode) > 0
                union = (strokes | (run.filled == index + 1)).astype(np.uint8)
                slicer.util.updateSegmentBinaryLabelmapFromArray(union, node, segmentId, run.volumeNode)
        finally:
            node.EndModify(wasModifying)
        self.discard(run)
        return node

    def _saveStateForUndo(self, node):
        """One undo step: the Segment Editor's when it edits ``node`` (Ctrl+Z there), and ours
        (``undo()``) in every case."""
        editor = _segmentEditorWidget()
        if editor is not None and editor.segmentationNode() is node:
            editor.saveStateForUndo()
        self.history = slicer.vtkSegmentationHistory()
        self.history.SetSegmentation(node.GetSegmentation())
        self.history.SaveState()
        self.historyNode = node

    def canUndo(self):
        return self.history is not None and self.historyNode is not None and self.historyNode.GetScene() is not None

    def undo(self):
        """Take back the last Apply: the segmentation as it was before it."""
        if not self.canUndo():
            raise InputError("Nothing to undo.")
        self.history.RestorePreviousState()
        self.history, self.historyNode = None, None

    @staticmethod
    def discard(run):
        """Remove the run's preview segmentation (if any) from the scene."""
        if run is not None and run.previewNode is not None:
            if run.previewNode.GetScene() is not None:
                slicer.mrmlScene.RemoveNode(run.previewNode)
            run.previewNode = None


def _segmentEditorWidget():
    """The Segment Editor module's editor widget when Slicer has one, else None."""
    module = getattr(getattr(slicer, "modules", None), "segmenteditor", None)
    try:
        representation = module.widgetRepresentation() if module is not None else None
        return representation.self().editor if representation is not None else None
    except AttributeError:
        return None


_parameterClasses = {}


def parameterNodeClass():
    """The Fill panel's parameterNodeWrapper class, made with the running Slicer's wrapper."""
    from slicer import parameterNodeWrapper as wrapperModule

    key = id(wrapperModule)
    if key not in _parameterClasses:
        from typing import Annotated

        from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode

        Choice, Minimum, Maximum = wrapperModule.Choice, wrapperModule.Minimum, wrapperModule.Maximum

        class PairSegFillParameterNode:
            volume: vtkMRMLScalarVolumeNode
            segmentation: vtkMRMLSegmentationNode
            method: Annotated[str, Choice(list(METHODS))] = DEFAULT_METHOD
            budgetSeconds: Annotated[int, Minimum(5), Maximum(3600)] = 180

        _parameterClasses[key] = wrapperModule.parameterNodeWrapper(PairSegFillParameterNode)
    return _parameterClasses[key]


def fillParameterNode():
    """The scene's Fill parameter node (a singleton scripted-module node), wrapped."""
    scene = slicer.mrmlScene
    node = scene.GetSingletonNode(PARAMETER_NODE_TAG, "vtkMRMLScriptedModuleNode")
    if node is None:
        node = slicer.vtkMRMLScriptedModuleNode()
        node.SetSingletonTag(PARAMETER_NODE_TAG)
        node.SetName(scene.GenerateUniqueName(PARAMETER_NODE_TAG))
        node.SetModuleName(PARAMETER_NODE_TAG)
        node = scene.AddNode(node)
    return parameterNodeClass()(node)


class FillPanel:
    """The *Fill between slices* section of the PairSeg module panel. ``layout``: the module
    panel's layout; ``coreLogic``: the module logic; ``device()``: the device chosen in the panel."""

    def __init__(self, layout, coreLogic, device=lambda: "auto"):
        import ctk

        self.logic = FillLogic(coreLogic)
        self.device = device
        self.run = None
        self._parameterNode, self._tag, self._observation = None, None, None
        self.timer = gui.pollTimer(POLL_MS, self.onTimer)

        self.section = ctk.ctkCollapsibleButton()
        self.section.text = "Fill between slices"
        layout.addWidget(self.section)
        form = qt.QFormLayout(self.section)
        self.volumeSelector = self._nodeSelector(["vtkMRMLScalarVolumeNode"], "volume")
        self.segmentationSelector = self._nodeSelector(["vtkMRMLSegmentationNode"], "segmentation")
        self.methodComboBox = qt.QComboBox()
        self.methodComboBox.setProperty("SlicerParameterName", "method")
        self.methodComboBox.toolTip = "; ".join(f"{m}: {label}" for m, label in METHOD_LABELS.items())
        self.budgetSpinBox = qt.QSpinBox()
        self.budgetSpinBox.setRange(5, 3600)
        self.budgetSpinBox.suffix = " s"
        self.budgetSpinBox.setProperty("SlicerParameterName", "budgetSeconds")
        self.previewButton = qt.QPushButton("Preview")
        self.applyButton = qt.QPushButton("Apply")
        self.discardButton = qt.QPushButton("Discard")
        self.undoButton = qt.QPushButton("Undo fill")
        self.progressBar = qt.QProgressBar()
        self.statusLabel = qt.QLabel("Draw each structure on a few slices, then Preview.")
        self.statusLabel.wordWrap = True
        form.addRow("Volume:", self.volumeSelector)
        form.addRow("Segmentation:", self.segmentationSelector)
        form.addRow("Method:", self.methodComboBox)
        form.addRow("Training time:", self.budgetSpinBox)
        buttons = qt.QHBoxLayout()
        for button in (self.previewButton, self.applyButton, self.discardButton, self.undoButton):
            buttons.addWidget(button)
        form.addRow(buttons)
        form.addRow(self.progressBar)
        form.addRow(self.statusLabel)
        self.previewButton.connect("clicked(bool)", self.onPreview)
        self.applyButton.connect("clicked(bool)", self.onApply)
        self.discardButton.connect("clicked(bool)", self.onDiscard)
        self.undoButton.connect("clicked(bool)", self.onUndo)
        self.sceneObservers = [slicer.mrmlScene.AddObserver(slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose),
                               slicer.mrmlScene.AddObserver(slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)]
        self.setParameterNode(fillParameterNode())
        self.updateGui()

    def _nodeSelector(self, classes, parameter):
        selector = slicer.qMRMLNodeComboBox()
        selector.nodeTypes = classes
        selector.showChildNodeTypes = False  # no label map volumes among the volumes
        selector.noneEnabled = True
        selector.addEnabled = False
        selector.removeEnabled = False
        selector.setMRMLScene(slicer.mrmlScene)
        selector.setProperty("SlicerParameterName", parameter)
        return selector

    # -- parameter node ---------------------------------------------------------------------------

    def setParameterNode(self, node):
        if self._parameterNode is not None:
            self._parameterNode.disconnectGui(self._tag)
            self._parameterNode.parameterNode.RemoveObserver(self._observation)
            self._parameterNode, self._tag = None, None
        if node is not None:
            widgets = {"volume": self.volumeSelector, "segmentation": self.segmentationSelector,
                       "method": self.methodComboBox, "budgetSeconds": self.budgetSpinBox}
            self._tag = node.connectParametersToGui(widgets)
            self._parameterNode = node
            self._observation = node.parameterNode.AddObserver(vtk.vtkCommand.ModifiedEvent,
                                                               lambda caller, event: self.updateGui())

    @property
    def parameterNode(self):
        return self._parameterNode

    def onSceneStartClose(self, caller=None, event=None):
        if self.run is not None and not self.run.done:
            self.run.shutdown()
        self.timer.stop()
        self.run = None
        self.setParameterNode(None)

    def onSceneEndClose(self, caller=None, event=None):
        self.setParameterNode(fillParameterNode())
        self.updateGui()

    def cleanup(self):
        self.timer.stop()
        if self.run is not None and not self.run.done:
            self.run.shutdown()
        self.setParameterNode(None)
        for tag in self.sceneObservers:
            slicer.mrmlScene.RemoveObserver(tag)
        self.sceneObservers = []

    # -- GUI state --------------------------------------------------------------------------------

    @property
    def running(self):
        return self.run is not None and not self.run.done

    @property
    def previewReady(self):
        return (self.run is not None and self.run.state == RunState.DONE and self.run.previewNode is not None
                and self.run.previewNode.GetScene() is not None)

    def updateGui(self):
        node = self._parameterNode
        ready = node is not None and bool(node.volume and node.segmentation)
        self.previewButton.text = "Cancel" if self.running else "Preview"
        self.previewButton.enabled = self.running or ready
        self.applyButton.enabled = self.previewReady
        self.discardButton.enabled = self.previewReady
        self.undoButton.enabled = not self.running and self.logic.canUndo()
        self.progressBar.visible = self.running
        for widget in (self.volumeSelector, self.segmentationSelector, self.methodComboBox, self.budgetSpinBox):
            widget.enabled = not self.running

    # -- actions ----------------------------------------------------------------------------------

    def onPreview(self):
        if self.running:
            self.statusLabel.text = "Cancelling..."
            self.run.cancel()
            return
        self.logic.discard(self.run)  # a new preview replaces an earlier one
        node = self._parameterNode
        try:
            self.run = self.logic.previewAsync(node.volume, node.segmentation, node.method, node.budgetSeconds,
                                               self.device(), onProgress=self.onProgress, onFinished=self.onFinished)
        except (InputError, engineModule.EngineError) as error:
            slicer.util.errorDisplay(str(error), windowTitle="PairSeg fill")
            return
        except Exception as error:  # a declined installation (install.DependencyError) and the like
            if type(error).__name__ != "DependencyError":
                raise
            slicer.util.errorDisplay(str(error), windowTitle="PairSeg fill")
            return
        if not self.run.done:
            self.timer.start()
        self.updateGui()

    def onTimer(self):
        if self.run is not None:
            self.run.poll()

    def onProgress(self, run):
        self.progressBar.value = int(round(100 * run.fraction))
        self.statusLabel.text = run.message

    def onFinished(self, run):
        self.timer.stop()
        self.statusLabel.text = run.message
        self.updateGui()
        if run.state == RunState.FAILED:
            slicer.util.errorDisplay(str(run.error), windowTitle="PairSeg fill failed")

    def onApply(self):
        try:
            node = self.logic.apply(self.run)
        except InputError as error:
            slicer.util.errorDisplay(str(error), windowTitle="PairSeg fill")
            return
        self.run = None
        self.statusLabel.text = f"Applied to '{node.GetName()}' (Undo fill takes it back)."
        self.updateGui()

    def onDiscard(self):
        self.logic.discard(self.run)
        self.run = None
        self.statusLabel.text = "Preview discarded; the segmentation is unchanged."
        self.updateGui()

    def onUndo(self):
        try:
            self.logic.undo()
        except InputError as error:
            logging.warning(f"PairSeg fill: {error}")
        self.statusLabel.text = "Fill undone."
        self.updateGui()
