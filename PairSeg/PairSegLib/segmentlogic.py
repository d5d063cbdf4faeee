"""PairSegCoreLogic: segmentation with the engine, comparison with a reference (no GUI code).

``PairSeg.PairSegLogic`` is this class plus Slicer's ScriptedLoadableModuleLogic; from the Python
console (``slicer.util.getModuleLogic("PairSeg")`` or ``PairSeg.PairSegLogic()``)::

    segmentationNode = logic.segmentVolume(volumeNode, "/path/model.pairseg")
    result = logic.compareToReference(segmentationNode, referenceSegmentationNode)

Both run the engine in a background process (``engine.EngineRun``): ``pairseg segment`` and
``pairseg evaluate``. The ``...Async`` variants return the running run for a GUI timer to poll.
"""

import csv
import io
import json
import logging
import os
import shutil
import tempfile

import numpy as np
import slicer

from . import engine as engineModule
from . import models, mrml, overlays
from .engine import EngineError, RunState
from .mrml import InputError

# The engine's devices (pairseg.constants); PairSeg.py's device menu reads them from here.
DEVICES = engineModule.torchFreeEngineModule("constants").DEVICES


class SegmentationError(EngineError):
    """The engine failed (not the user's input): message from the engine."""


class WorkFolderRun(engineModule.EngineRun):
    """An EngineRun with a temporary folder for its input and output files, made when the run
    starts and removed when it ends (any state). ``logic``: a PairSegCoreLogic (its launcher,
    python, temporaryFolder and keepTemporaryFiles). Subclasses write their inputs and set
    ``self.command`` in ``writeInputs()``."""

    def __init__(self, logic, **options):
        super().__init__(launcher=logic.launcher, python=logic.python, **options)
        self.logic = logic
        self.workDirectory = None

    def prepare(self):
        self.workDirectory = tempfile.mkdtemp(prefix=f"PairSeg-{self.name}-", dir=self.logic.temporaryFolder())
        self.writeInputs()

    def writeInputs(self):
        raise NotImplementedError

    def finished(self):
        if self.workDirectory and not self.logic.keepTemporaryFiles:
            shutil.rmtree(self.workDirectory, ignore_errors=True)

    def path(self, name):
        return os.path.join(self.workDirectory, name)


class SegmentationRun(WorkFolderRun):
    """One segmentation: the volume is exported, ``pairseg segment`` runs in the background, and
    on success the label map is imported as segments (one per model class; ``segmentationNode``).
    With ``uncertainty``, the engine also writes its uncertainty map (``--uncertainty``, a file of
    the work folder) and ranks the slices to check: on success the map is shown over the volume
    (``overlays.setUncertaintyVolume``: ``uncertaintyNode``, replaced on a rerun) and
    ``checkSlices`` lists the slices (K indices of the volume) most uncertain first.
    Nothing in the scene changes unless the run succeeds; the work folder is always removed."""

    name = "segmentation"
    inputErrorClass = InputError

    def __init__(self, logic, volumeNode, modelPath, metadata, segmentationNode=None, device="auto",
                 keepLargestComponent=True, replace=False, structures=None, show3D=False, uncertainty=False,
                 **options):
        super().__init__(logic, **options)
        self.volumeNode = volumeNode
        self.modelPath = os.path.abspath(os.fspath(modelPath))
        self.metadata = metadata
        self.targetSegmentationNode = segmentationNode
        self.device = device
        self.keepLargestComponent = keepLargestComponent
        self.replace = bool(replace)
        self.structures = list(structures) if structures else None
        self.show3D = bool(show3D)
        self.uncertainty = bool(uncertainty)
        self.uncertaintyPath = None
        self.uncertaintyNode = None
        self.checkSlices = []       # from the engine's "uncertainty" event, most uncertain first
        self.segmentationNode = None
        self.newNodeReason = None   # why the chosen segmentation was not written into (a sentence)
        self.message = "Preparing the input"

    def writeInputs(self):
        inputPath, self.outputPath = self.path("input.nrrd"), self.path("labels.nrrd")
        mrml.exportVolume(self.volumeNode, inputPath)
        arguments = ["segment", "--model", self.modelPath, "--input", inputPath, "--output", self.outputPath,
                     "--device", self.device, "--events", "json"]
        if not self.keepLargestComponent:
            arguments.append("--no-largest-component")
        if self.uncertainty:
            self.uncertaintyPath = self.path("uncertainty.nrrd")
            arguments += ["--uncertainty", self.uncertaintyPath]
            if self.structures:  # rank only what is being segmented ("Only these structures")
                arguments += ["--uncertainty-classes", ",".join(self.structures)]
        self.command = engineModule.engineCommand(*arguments, python=self.python)

    def failure(self, code):
        error = super().failure(code)
        return error if isinstance(error, InputError) else SegmentationError(str(error))

    def handleEvent(self, event):
        if event.get("event") == "uncertainty":  # {"check_slices": [{"slice": k, "uncertainty": bits}, ...]}
            self.checkSlices = [int(entry["slice"]) for entry in event.get("check_slices") or []]

    def readUncertainty(self):
        """The engine's uncertainty map on the input volume's grid ((k, j, i) float32, bits)."""
        dimensions = self.volumeNode.GetImageData().GetDimensions()
        try:
            return mrml.readArrayOnGrid(self.uncertaintyPath, mrml.ijkToLps(self.volumeNode), dimensions)
        except IOError as error:
            raise SegmentationError(f"Importing the uncertainty map failed: {error}") from error

    def completingText(self):
        return "Importing the segmentation"

    def completed(self):
        """Import the result: into the chosen segmentation only when ``mrml.protectionReason`` allows
        it at this moment (the user may have edited it during the run), else into a new one."""
        if self.volumeNode.GetScene() is None:
            raise SegmentationError(f"The input volume '{self.volumeNode.GetName()}' was removed from the scene "
                                    "during the run: nothing was imported.")
        names = list(self.metadata["class_names"])
        try:
            labelImage = mrml.readLabelImage(self.outputPath, self.volumeNode, len(names))
        except IOError as error:
            raise SegmentationError(f"Importing the result failed: {error}") from error
        uncertainty = self.readUncertainty() if self.uncertainty else None  # read before the scene changes
        colors = self.metadata.get("class_colors")
        labelValues = None   # label k + 1 is class k of the model; a subset keeps those values
        if self.structures:
            chosen = [names.index(name) for name in self.structures]
            mrml.keepLabels(labelImage, [index + 1 for index in chosen])
            names = [names[index] for index in chosen]
            labelValues = [index + 1 for index in chosen]
            colors = [colors[index] for index in chosen] if colors else None
        target = self.targetSegmentationNode
        if target is not None and target.GetScene() is None:
            target = None
        if target is not None:
            self.newNodeReason = mrml.protectionReason(target, self.volumeNode, self.replace)
            if self.newNodeReason:
                target = None
        self.segmentationNode = mrml.importSegments(labelImage, names, colors, self.volumeNode, target,
                                                    labelValues=labelValues)
        self.segmentationNode.SetAttribute("PairSeg.Model", self.modelPath)
        mrml.recordOutput(self.segmentationNode, self.volumeNode)
        if self.show3D:
            self.segmentationNode.CreateClosedSurfaceRepresentation()
        if uncertainty is not None:
            self.uncertaintyNode = overlays.setUncertaintyVolume(uncertainty, self.volumeNode)
        message = f"Done: {len(names)} segments in '{self.segmentationNode.GetName()}' in {self.elapsedSeconds:.1f} s"
        if self.newNodeReason:
            message += f" (a new segmentation: {self.newNodeReason}, so it was left as it was)"
        warnings = [line.split("warning:", 1)[1].strip() for line in self.log if "pairseg: warning:" in line]
        return message + "".join(f". {warning}" for warning in warnings)


class ComparisonRun(WorkFolderRun):
    """Dice and ASSD of a segmentation against a reference by ``pairseg evaluate`` (the engine's
    own metrics) in the background; on success the table and the boundary-distance overlay are
    added to the scene (``result``, a ComparisonResult)."""

    name = "comparison"
    expectsDoneEvent = False  # ``pairseg evaluate`` writes its JSON file instead of events
    inputErrorClass = InputError

    def __init__(self, logic, segmentationNode, geometryNode, temporaryGeometry, names, predicted, reference,
                 showOverlay=True, referenceSegmentationNode=None, **options):
        super().__init__(logic, **options)
        self.segmentationNode = segmentationNode
        self.referenceSegmentationNode = referenceSegmentationNode
        self.geometryNode = geometryNode
        self.temporaryGeometry = temporaryGeometry
        self.names = names
        self.predicted = predicted
        self.reference = reference
        self.showOverlay = showOverlay
        self.result = None

    def writeInputs(self):
        predictedPath, referencePath = self.path("predicted.nrrd"), self.path("reference.nrrd")
        self.resultsPath = self.path("metrics.json")
        mrml.writeLabelArray(self.predicted, self.geometryNode, predictedPath)
        mrml.writeLabelArray(self.reference, self.geometryNode, referencePath)
        classes = io.StringIO()
        csv.writer(classes, lineterminator="").writerow(self.names)
        self.command = engineModule.engineCommand("evaluate", "--pred", predictedPath, "--ref", referencePath,
                                                  "--classes", classes.getvalue(), "--json", self.resultsPath,
                                                  python=self.python)

    def completingText(self):
        return "Adding the comparison table and the distance overlay"

    def completed(self):
        try:
            with open(self.resultsPath, encoding="utf-8") as stream:
                (metrics,) = json.load(stream)["cases"]
        except (OSError, ValueError, KeyError) as error:
            raise EngineError(f"pairseg evaluate wrote no readable results: {error}") from error
        self.result = self.logic.addComparisonNodes(self.segmentationNode, self.geometryNode, self.temporaryGeometry,
                                                    self.names, self.predicted, self.reference, metrics,
                                                    self.showOverlay, self.referenceSegmentationNode)
        return "Comparison done"

    def finished(self):
        super().finished()
        if self.temporaryGeometry and self.geometryNode.GetScene() is not None:
            slicer.mrmlScene.RemoveNode(self.geometryNode)


class PairSegCoreLogic:
    """Segment volumes with PairSeg models; compare segmentations with a reference.

    ``launcher``: the EngineLauncher of every engine run (None: ``engine.launchProcess``);
    ``python``: the interpreter for the engine (None: ``engine.pythonExecutable()``)."""

    def __init__(self):
        self.launcher = None
        self.python = None
        self.keepTemporaryFiles = False
        self.registry = models.ModelRegistry()

    @staticmethod
    def temporaryFolder():
        """Where engine runs keep their work files: Slicer's temporary folder (else the system's),
        in a form ITK opens on Windows (``pairseg.paths.ascii_work_folder``: the short form of a
        folder under a non-ASCII user profile; ``$PAIRSEG_WORK_DIR`` overrides)."""
        app = getattr(slicer, "app", None)
        folder = getattr(app, "temporaryPath", None) if app is not None else None
        folder = folder if folder and os.path.isdir(folder) else tempfile.gettempdir()
        return engineModule.torchFreeEngineModule("paths").ascii_work_folder(folder)

    # -- models -----------------------------------------------------------------------------

    @staticmethod
    def modelMetadata(modelPath):
        """Metadata of a model file (no torch needed); InputError when missing or corrupt."""
        try:
            return models.readModelMetadata(modelPath)
        except models.ModelFileError as error:
            raise InputError(str(error)) from error

    @staticmethod
    def modelFile(spec):
        """A model file path from a path or a catalog model's name (a bare name, no folder or
        suffix, that is not a file here). InputError for an unknown name."""
        text = os.fspath(spec)
        suffix = engineModule.torchFreeEngineModule("constants").MODEL_SUFFIX
        if os.path.exists(text) or os.sep in text or "/" in text or text.endswith(suffix):
            return text
        try:
            return engineModule.resolveModel(text)
        except ValueError as error:
            raise InputError(str(error)) from error

    def validateInputs(self, volumeNode, modelPath, segmentationNode=None, device="auto"):
        """All checks made before the engine starts; returns the model metadata. ``modelPath``:
        a model file or a catalog model's name (``modelFile``)."""
        mrml.checkInputVolume(volumeNode)
        if modelPath is None or not str(modelPath).strip():
            raise InputError("No model file selected.")
        metadata = self.modelMetadata(self.modelFile(modelPath))
        if not engineModule.torchFreeEngineModule("constants").is_device_name(device):
            raise InputError(f"Unknown device '{device}': use one of {', '.join(DEVICES)} or cuda:N.")
        if segmentationNode is not None and not segmentationNode.IsA("vtkMRMLSegmentationNode"):
            raise InputError(f"'{segmentationNode.GetName()}' is not a segmentation node.")
        mrml.checkModality(volumeNode, metadata.get("modality"))
        return metadata

    # -- segmentation -----------------------------------------------------------------------

    @staticmethod
    def chosenStructures(metadata, structures):
        """The model's class names picked by ``structures`` (names, or one comma-separated string;
        case and spaces ignored), in the model's order; None for all. InputError naming the model's
        classes for a name it does not have."""
        classKey = engineModule.torchFreeEngineModule("constants").class_key  # the one "same class" rule
        if isinstance(structures, str):
            structures = structures.split(",")
        wanted = [str(name).strip() for name in (structures or []) if str(name).strip()]
        if not wanted:
            return None
        names = list(metadata["class_names"])
        keys = [classKey(name) for name in names]
        unknown = [name for name in wanted if classKey(name) not in keys]
        if unknown:
            raise InputError(f"The model has no structure named {', '.join(repr(u) for u in unknown)}: "
                             f"its structures are {', '.join(names)}.")
        wantedKeys = {classKey(name) for name in wanted}
        return [name for name, key in zip(names, keys) if key in wantedKeys]

    def segmentVolumeAsync(self, volumeNode, modelPath, segmentationNode=None, device="auto",
                           keepLargestComponent=True, onProgress=None, onFinished=None, replace=False,
                           structures=None, show3D=False, uncertainty=False):
        """Start segmenting; returns the running SegmentationRun (a Qt timer calls its ``poll()``;
        ``cancel()`` stops it). InputError at once for bad input, DependencyError when the engine
        cannot run and its installation was declined: nothing starts in both cases. Options: see
        ``segmentVolume``."""
        metadata = self.validateInputs(volumeNode, modelPath, segmentationNode, device)
        chosen = self.chosenStructures(metadata, structures)
        modelPath = self.modelFile(modelPath)
        run = SegmentationRun(self, volumeNode, modelPath, metadata, segmentationNode, device, keepLargestComponent,
                              replace=replace, structures=chosen, show3D=show3D, uncertainty=uncertainty)
        run.onProgress, run.onFinished = onProgress, onFinished
        run.start()
        if run.state != RunState.FAILED:
            try:
                self.registry.addRecentModel(modelPath)
            except OSError:
                logging.warning("PairSeg: could not update the recent-model list")
        return run

    def segmentVolume(self, volumeNode, modelPath, segmentationNode=None, device="auto",
                      keepLargestComponent=True, replace=False, structures=None, show3D=False, uncertainty=False):
        """Segment ``volumeNode`` with the model file; block until done; return the segmentation node.

        One segment per model class (name, colour, terminology from the model; ``structures``: only
        these classes, names or a comma-separated string) in a new segmentation beside the volume
        ("<volume> PairSeg", then "<volume> PairSeg 2", ...), or in ``segmentationNode`` (segments
        of the same names are replaced, others kept) when ``mrml.protectionReason`` allows it when
        the result arrives: never into a segmentation in a training set or made for another
        volume, and, unless ``replace``, never into one the user edited or that PairSeg did not
        fill (then a new segmentation is made; ``run.newNodeReason`` says why). ``show3D``: add the
        closed-surface representation. ``uncertainty``: also show the engine's uncertainty map
        over the volume ("<volume> uncertainty", ``overlays.setUncertaintyVolume``; found again by
        ``overlays.uncertaintyVolume(volumeNode)``; ``segmentVolumeAsync``'s run also has the
        ranked slices, ``checkSlices``). Raises InputError (bad input), SegmentationError (engine
        failure); the scene is unchanged in both cases.
        """
        run = self.segmentVolumeAsync(volumeNode, modelPath, segmentationNode, device, keepLargestComponent,
                                      replace=replace, structures=structures, show3D=show3D,
                                      uncertainty=uncertainty)
        run.wait()
        if run.state != RunState.DONE:
            raise run.error
        return run.segmentationNode

    # -- comparison -------------------------------------------------------------------------

    def compareToReferenceAsync(self, segmentationNode, referenceSegmentationNode, showOverlay=True,
                                onProgress=None, onFinished=None):
        """Start comparing (``pairseg evaluate`` in the background); returns the ComparisonRun,
        whose ``result`` is a ComparisonResult once it is done. InputError at once for bad input."""
        for node, what in ((segmentationNode, "segmentation"), (referenceSegmentationNode, "reference segmentation")):
            if node is None or not node.IsA("vtkMRMLSegmentationNode"):
                raise InputError(f"No {what} selected.")
        matches = overlays.matchSegments(segmentationNode, referenceSegmentationNode)
        if not matches:
            raise InputError(f"No segment of '{segmentationNode.GetName()}' has a namesake in "
                             f"'{referenceSegmentationNode.GetName()}'.")
        geometryNode, temporary = overlays.referenceGeometryVolume(segmentationNode)
        try:
            names = [name for name, _, _ in matches]
            predicted = overlays.labelArray(segmentationNode, [m[1] for m in matches], geometryNode)
            reference = overlays.labelArray(referenceSegmentationNode, [m[2] for m in matches], geometryNode)
        except Exception:
            if temporary:
                slicer.mrmlScene.RemoveNode(geometryNode)
            raise
        run = ComparisonRun(self, segmentationNode, geometryNode, temporary, names, predicted, reference, showOverlay,
                            referenceSegmentationNode=referenceSegmentationNode)
        run.onProgress, run.onFinished = onProgress, onFinished
        try:
            run.start()
        except Exception:
            run.finished()
            raise
        return run

    def compareToReference(self, segmentationNode, referenceSegmentationNode, showOverlay=True):
        """Dice and ASSD (mm) per segment (matched by name) and a boundary-distance overlay; blocks.

        Returns a ComparisonResult with ``tableNode`` (columns Segment, Dice, ASSD (mm),
        Predicted (mL), Reference (mL)), ``distanceVolumeNode`` (distance in mm of each predicted
        boundary voxel to the reference surface; -1 elsewhere, shown transparent) and
        ``metrics`` (one case of ``pairseg evaluate --json``: the engine's evaluate_case dict).
        With ``showOverlay`` the distance map is the slice views' foreground and both segmentations
        are shown as outlines (their fill would hide it: ``overlays.showAboveSegmentations``).
        """
        run = self.compareToReferenceAsync(segmentationNode, referenceSegmentationNode, showOverlay)
        run.wait()
        return run.result

    def addComparisonNodes(self, segmentationNode, geometryNode, temporaryGeometry, names, predicted, reference,
                           metrics, showOverlay=True, referenceSegmentationNode=None):
        """The table and the boundary-distance overlay (scipy, this process) of a comparison."""
        spacingZyx = tuple(reversed(geometryNode.GetSpacing()))
        distances = overlays.boundaryDistanceMap(predicted, reference, spacingZyx, len(names))
        scene = slicer.mrmlScene
        tableNode = scene.AddNewNodeByClass(
            "vtkMRMLTableNode", scene.GenerateUniqueName(f"{segmentationNode.GetName()} vs reference"))
        voxelMl = float(np.prod(spacingZyx)) / 1000.0
        self._fillTable(tableNode, names, metrics, voxelMl)
        distanceNode = overlays.addDistanceVolume(
            distances, geometryNode, scene.GenerateUniqueName(f"{segmentationNode.GetName()} boundary distance (mm)"))
        if temporaryGeometry:
            parent = segmentationNode.GetParentTransformNode()
            distanceNode.SetAndObserveTransformNodeID(parent.GetID() if parent else None)
        for node in (tableNode, distanceNode):
            mrml.placeBeside(node, segmentationNode)
        tableNode.SetNodeReferenceID("PairSeg.boundaryDistance", distanceNode.GetID())
        if showOverlay:
            overlays.showAboveSegmentations(distanceNode, [segmentationNode, referenceSegmentationNode])
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
