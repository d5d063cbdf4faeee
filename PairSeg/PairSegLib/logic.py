"""PairSegCoreLogic: segmentation with the engine, comparison with a reference (no GUI code).

``PairSeg.PairSegLogic`` is this class plus Slicer's ScriptedLoadableModuleLogic; use that one
from the Python console::

    logic = slicer.modules.pairseg.logic()
    segmentationNode = logic.segmentVolume(volumeNode, "/path/model.pairseg")
    result = logic.compareToReference(segmentationNode, referenceSegmentationNode)
"""

import logging
import os
import shutil
import tempfile
import time

import numpy as np
import slicer

from . import engine as engineModule
from . import models, mrml, overlays
from .mrml import InputError

DEVICES = ("auto", "cpu", "cuda", "mps")


class SegmentationError(RuntimeError):
    """The engine failed (not the user's input): message from the engine."""


class SegmentationCancelled(RuntimeError):
    pass


class State:
    INITIALIZING = "initializing"
    RUNNING = "running"
    IMPORTING = "importing"
    FINISHED = "finished"
    CANCELLED = "cancelled"
    FAILED = "failed"
    DONE_STATES = ("finished", "cancelled", "failed")


class SegmentationTask:
    """One asynchronous segmentation. Call ``poll()`` from the main thread until it returns True.

    Attributes: ``state`` (see State), ``fraction`` (0..1), ``message``, ``error`` (exception
    when failed), ``segmentationNode`` (when finished), ``events`` (all engine events).
    Callbacks (main thread): ``onProgress(task)``, ``onFinished(task)``.
    """

    def __init__(self, logic, volumeNode, modelPath, metadata, segmentationNode, device,
                 keepLargestComponent, onProgress=None, onFinished=None):
        self.logic = logic
        self.volumeNode = volumeNode
        self.modelPath = os.path.abspath(modelPath)
        self.metadata = metadata
        self.targetSegmentationNode = segmentationNode
        self.device = device
        self.keepLargestComponent = keepLargestComponent
        self.onProgress = onProgress
        self.onFinished = onFinished
        self.state = State.INITIALIZING
        self.fraction = 0.0
        self.message = "Preparing the input"
        self.error = None
        self.segmentationNode = None
        self.events = []
        self.process = None
        self.startTime = time.monotonic()
        self.workDirectory = None
        self._cancelRequested = False

    # -- life cycle -------------------------------------------------------------------------

    def start(self):
        try:
            self.workDirectory = tempfile.mkdtemp(prefix="PairSeg-", dir=self.logic.temporaryFolder())
            self.inputPath = os.path.join(self.workDirectory, "input.nrrd")
            self.outputPath = os.path.join(self.workDirectory, "labels.nrrd")
            mrml.exportVolume(self.volumeNode, self.inputPath)
            arguments = ["segment", "--model", self.modelPath, "--input", self.inputPath,
                         "--output", self.outputPath, "--device", self.device, "--events", "json"]
            if not self.keepLargestComponent:
                arguments.append("--no-largest-component")
            self.process = self.logic.processFactory(arguments)
            self.process.start()
        except Exception as error:
            self._finish(State.FAILED, error)
            return self
        self._setState(State.RUNNING, 0.0, "Starting the engine")
        return self

    def cancel(self):
        """Stop the engine; the scene is left as it was. The task ends at the next ``poll()``."""
        self._cancelRequested = True
        if self.process is not None:
            self.process.cancel()

    @property
    def done(self):
        return self.state in State.DONE_STATES

    def poll(self):
        """Handle new engine events; import the result when the engine is done. True when over."""
        if self.done:
            return True
        if self._cancelRequested:
            self._finish(State.CANCELLED, SegmentationCancelled("Segmentation cancelled."))
            return True
        for event in self.process.poll():
            self._handleEvent(event)
        if not self.process.finished:
            return False
        if self._cancelRequested:
            self._finish(State.CANCELLED, SegmentationCancelled("Segmentation cancelled."))
        elif self.process.returncode != 0:
            message = self.process.errorMessage
            errorClass = InputError if self.process.returncode == 2 else SegmentationError
            self._finish(State.FAILED, errorClass(_friendlyEngineError(message)))
        else:
            self._import()
        return True

    def _handleEvent(self, event):
        self.events.append(event)
        kind = event.get("event")
        if kind == "progress":
            fraction = event.get("fraction")
            stage = event.get("stage") or "segmenting"
            if isinstance(fraction, (int, float)):
                self.fraction = min(max(float(fraction), 0.0), 1.0) * 0.95
            text = f"{stage.capitalize()}"
            if event.get("step") is not None and event.get("total"):
                text += f" {event['step']}/{event['total']}"
            if isinstance(event.get("eta_s"), (int, float)):
                text += f", about {int(event['eta_s'])} s left"
            self._setState(State.RUNNING, self.fraction, text)
        elif kind == "start":
            device = event.get("device")
            self._setState(State.RUNNING, self.fraction,
                           f"Engine started{' on ' + str(device) if device else ''}")
        elif kind == "message" and event.get("text"):
            self._setState(State.RUNNING, self.fraction, str(event["text"]))

    def _import(self):
        self._setState(State.IMPORTING, 0.97, "Importing the segmentation")
        try:
            names = list(self.metadata["class_names"])
            labelImage = mrml.readLabelImage(self.outputPath, self.volumeNode, len(names))
            segments = mrml.buildSegments(labelImage, names, self.metadata.get("class_colors"))
            # Nothing in the scene changes before this point.
            segmentationNode = self.targetSegmentationNode
            if segmentationNode is None or segmentationNode.GetScene() is None:
                segmentationNode = mrml.newSegmentationNode(self.volumeNode)
            else:
                if not segmentationNode.GetDisplayNode():
                    segmentationNode.CreateDefaultDisplayNodes()
                if not segmentationNode.GetNodeReference("referenceImageGeometryRef") and \
                        segmentationNode.GetSegmentation().GetNumberOfSegments() == 0:
                    mrml.prepareSegmentationNode(segmentationNode, self.volumeNode)
            mrml.applySegments(segmentationNode, segments)
            segmentationNode.SetAttribute("PairSeg.Model", self.modelPath)
            self.segmentationNode = segmentationNode
        except Exception as error:
            self._finish(State.FAILED, SegmentationError(f"Importing the result failed: {error}"))
            return
        seconds = time.monotonic() - self.startTime
        self._finish(State.FINISHED, None, f"Done: {len(names)} segments in {seconds:.1f} s")

    def _setState(self, state, fraction, message):
        self.state, self.fraction, self.message = state, fraction, message
        if self.onProgress:
            try:
                self.onProgress(self)
            except Exception:
                logging.exception("PairSeg progress callback failed")

    def _finish(self, state, error, message=None):
        self.error = error
        self._cleanup()
        if message is None:
            message = {State.CANCELLED: "Cancelled", State.FAILED: f"Failed: {error}"}.get(state, "Done")
        self._setState(state, 1.0 if state == State.FINISHED else self.fraction, message)
        if self.onFinished:
            self.onFinished(self)

    def _cleanup(self):
        if self.process is not None and not getattr(self.process, "finished", True):
            self.process.cancel()
        if self.workDirectory and not self.logic.keepTemporaryFiles:
            shutil.rmtree(self.workDirectory, ignore_errors=True)

    def wait(self, pollInterval=0.05):
        while not self.poll():
            time.sleep(pollInterval)
        return self


def _friendlyEngineError(message):
    text = str(message)
    lowered = text.lower()
    if "out of memory" in lowered:
        return text + "\nTry --device cpu, close other GPU programs, or crop the volume."
    if "no module named 'torch'" in lowered or 'no module named "torch"' in lowered:
        return "PyTorch is not installed: install it with the PyTorch extension (PyTorch Utils module)."
    return text


class PairSegCoreLogic:
    """Segment volumes with PairSeg models; compare segmentations with a reference."""

    def __init__(self):
        self.processFactory = lambda arguments: engineModule.EngineProcess(arguments)
        self.keepTemporaryFiles = False
        self.registry = models.ModelRegistry()

    @staticmethod
    def temporaryFolder():
        app = getattr(slicer, "app", None)
        folder = getattr(app, "temporaryPath", None) if app is not None else None
        return folder if folder and os.path.isdir(folder) else tempfile.gettempdir()

    # -- models -----------------------------------------------------------------------------

    @staticmethod
    def modelMetadata(modelPath):
        """Metadata of a model file (no torch needed); InputError when missing or corrupt."""
        try:
            return models.readModelMetadata(modelPath)
        except models.ModelFileError as error:
            raise InputError(str(error)) from error

    def validateInputs(self, volumeNode, modelPath, segmentationNode=None, device="auto"):
        """All checks made before the engine starts; returns the model metadata."""
        mrml.checkInputVolume(volumeNode)
        if modelPath is None or not str(modelPath).strip():
            raise InputError("No model file selected.")
        metadata = self.modelMetadata(os.fspath(modelPath))
        if device not in DEVICES:
            raise InputError(f"Unknown device '{device}': use one of {', '.join(DEVICES)}.")
        if segmentationNode is not None and not segmentationNode.IsA("vtkMRMLSegmentationNode"):
            raise InputError(f"'{segmentationNode.GetName()}' is not a segmentation node.")
        mrml.checkModality(volumeNode, metadata.get("modality"))
        return metadata

    # -- segmentation -----------------------------------------------------------------------

    def segmentVolumeAsync(self, volumeNode, modelPath, segmentationNode=None, device="auto",
                           keepLargestComponent=True, onProgress=None, onFinished=None):
        """Start segmenting; returns a running SegmentationTask (call its ``poll()``; ``cancel()``).

        Input errors raise InputError at once, before anything starts.
        """
        metadata = self.validateInputs(volumeNode, modelPath, segmentationNode, device)
        task = SegmentationTask(self, volumeNode, os.fspath(modelPath), metadata, segmentationNode,
                                device, keepLargestComponent, onProgress, onFinished)
        task.start()
        if task.state != State.FAILED:
            try:
                self.registry.addRecentModel(modelPath)
            except OSError:
                logging.warning("PairSeg: could not update the recent-model list")
        return task

    def segmentVolume(self, volumeNode, modelPath, segmentationNode=None, device="auto",
                      keepLargestComponent=True):
        """Segment ``volumeNode`` with the model file; block until done; return the segmentation node.

        One segment per model class (name, colour, terminology from the model) in a new
        segmentation beside the volume, or in ``segmentationNode`` (segments of the same names are
        replaced, others kept). Raises InputError (bad input), SegmentationError (engine failure);
        the scene is unchanged in both cases.
        """
        task = self.segmentVolumeAsync(volumeNode, modelPath, segmentationNode, device, keepLargestComponent)
        task.wait()
        if task.state != State.FINISHED:
            raise task.error
        return task.segmentationNode

    # -- comparison -------------------------------------------------------------------------

    def compareToReference(self, segmentationNode, referenceSegmentationNode, showOverlay=True):
        """Dice and ASSD (mm) per segment (matched by name) and a boundary-distance overlay.

        Returns a ComparisonResult with ``tableNode`` (columns Segment, Dice, ASSD (mm),
        Predicted (mL), Reference (mL)), ``distanceVolumeNode`` (distance in mm of each predicted
        boundary voxel to the reference surface; -1 elsewhere, shown transparent) and
        ``metrics`` (the engine's pairseg.metrics.evaluate_case dict).
        """
        for node, what in ((segmentationNode, "segmentation"), (referenceSegmentationNode, "reference segmentation")):
            if node is None or not node.IsA("vtkMRMLSegmentationNode"):
                raise InputError(f"No {what} selected.")
        matches = overlays.matchSegments(segmentationNode, referenceSegmentationNode)
        if not matches:
            raise InputError(f"No segment of '{segmentationNode.GetName()}' has a namesake in "
                             f"'{referenceSegmentationNode.GetName()}'.")
        from pairseg.metrics import evaluate_case  # engine, imported at the point of use

        geometryNode, temporary = overlays.referenceGeometryVolume(segmentationNode)
        try:
            names = [name for name, _, _ in matches]
            predicted = overlays.labelArray(segmentationNode, [m[1] for m in matches], geometryNode)
            reference = overlays.labelArray(referenceSegmentationNode, [m[2] for m in matches], geometryNode)
            spacingZyx = tuple(reversed(geometryNode.GetSpacing()))
            metrics = evaluate_case(predicted, reference, spacingZyx, names)
            distances = overlays.boundaryDistanceMap(predicted, reference, spacingZyx, len(names))
            scene = slicer.mrmlScene
            tableNode = scene.AddNewNodeByClass(
                "vtkMRMLTableNode", scene.GenerateUniqueName(f"{segmentationNode.GetName()} vs reference"))
            voxelMl = float(np.prod(spacingZyx)) / 1000.0
            self._fillTable(tableNode, names, metrics, voxelMl)
            distanceNode = overlays.addDistanceVolume(
                distances, geometryNode, scene.GenerateUniqueName(f"{segmentationNode.GetName()} boundary distance (mm)"))
            if temporary:
                distanceNode.SetAndObserveTransformNodeID(
                    segmentationNode.GetParentTransformNode().GetID() if segmentationNode.GetParentTransformNode() else None)
            for node in (tableNode, distanceNode):
                mrml.placeBeside(node, segmentationNode)
            tableNode.SetNodeReferenceID("PairSeg.boundaryDistance", distanceNode.GetID())
            if showOverlay:
                overlays.showAsForeground(distanceNode)
        finally:
            if temporary:
                slicer.mrmlScene.RemoveNode(geometryNode)
        return ComparisonResult(tableNode, distanceNode, metrics)

    @staticmethod
    def _fillTable(tableNode, names, metrics, voxelMl):
        import vtk

        table = tableNode.GetTable()
        nameColumn = vtk.vtkStringArray()
        nameColumn.SetName("Segment")
        table.AddColumn(nameColumn)
        numberColumns = []
        for title in ("Dice", "ASSD (mm)", "Predicted (mL)", "Reference (mL)"):
            column = vtk.vtkDoubleArray()
            column.SetName(title)
            table.AddColumn(column)
            numberColumns.append(column)
        table.SetNumberOfRows(len(names))
        for row, name in enumerate(names):
            assd = metrics["assd"].get(name)
            nameColumn.SetValue(row, name)
            values = (metrics["dice"][name], float("nan") if assd is None else assd,
                      metrics["pred_voxels"][name] * voxelMl, metrics["ref_voxels"][name] * voxelMl)
            for column, value in zip(numberColumns, values):
                column.SetValue(row, float(value))
        tableNode.SetColumnDescription("ASSD (mm)", "Average symmetric surface distance (empty: a side is empty)")
        tableNode.SetColumnUnitLabel("ASSD (mm)", "mm")
        tableNode.Modified()


class ComparisonResult:
    """What compareToReference returns."""

    def __init__(self, tableNode, distanceVolumeNode, metrics):
        self.tableNode = tableNode
        self.distanceVolumeNode = distanceVolumeNode
        self.metrics = metrics

    def __iter__(self):
        return iter((self.tableNode, self.distanceVolumeNode))
