"""PairSegTrainerLogic: everything the PairSegTrainer module does, usable from the Python console,
scripts and tests without the GUI.

    logic = PairSegTrainerLogic()
    items = [TrainingItem(volumeNode, segmentationNode), ...]
    logic.exportTrainingSet(items, "/data/train", classNames=["liver", "spleen"], modality="MR")
    job = logic.startTraining(TrainingConfig(dataFolder="/data/train", outputModel="/m/liver.pairseg",
                                             steps=2000, size=256))
    job.wait()          # or poll() from a timer; job.stop() leaves a resumable checkpoint
    job = logic.resumeTraining(job)

    result = logic.proxyMaps(volA, 12, segA, volB, 15, segB, model="/m/liver.pairseg")

Engine work (training, segmentation) runs in a background process started from the engine's CLI
(``python -m pairseg ... --events json``); the scene is only touched on the calling thread.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np

from . import config as configModule
from . import job as jobModule
from . import proxymaps
from . import trainingset
from .config import TrainingConfig
from .job import EngineJob, JobError
from .plots import TrainingPlots
from .trainingset import TrainingItem, TrainingSetError

TRAINING_VOLUME_ROLE = "trainingVolume"
TRAINING_SEGMENTATION_ROLE = "trainingSegmentation"


class TrainingJob(EngineJob):
    """A training run: an EngineJob plus its config, live plots and model registration."""

    def __init__(self, config: TrainingConfig, logic: "PairSegTrainerLogic", launcher=None,
                 plots: Optional[TrainingPlots] = None, register: bool = True, modelName: str = ""):
        super().__init__(config.commandLine(), env=configModule.engineEnvironment(),
                         launcher=launcher, name="training",
                         stopFile=config.stopFile or None)
        self.config = config
        self.logic = logic
        self.plots = plots
        self.register = register
        self.modelName = modelName
        self.modelPath = None        # set when the model file is written and registered
        self.metadata = None
        self._plotted = (-1, -1)
        self._lastPlot = 0.0
        self.plotInterval = 0.5

    def poll(self) -> bool:
        running = super().poll()
        self.updatePlots(force=not running)
        return running

    def updatePlots(self, force: bool = False) -> None:
        if self.plots is None:
            return
        size = (len(self.curves.lossValues), len(self.curves.valEpochs))
        now = time.monotonic()
        if size != self._plotted and (force or now - self._lastPlot >= self.plotInterval):
            self.plots.update(self.curves)
            self._plotted = size
            self._lastPlot = now

    def _notifyFinished(self) -> None:
        if self.state == jobModule.FINISHED:
            output = self.outputs[0] if self.outputs else self.config.outputModel
            if not Path(output).is_file():
                self.state = jobModule.FAILED
                self.errorMessage = f"training reported success but {output} does not exist"
            else:
                self.modelPath = str(output)
                if self.register:
                    try:
                        self.metadata = self.logic.registerModel(self.modelPath, self.modelName or None)
                        self._appendLog(f"Model registered: {self.modelPath}")
                    except Exception as error:  # registration must not turn a trained model into a failure
                        self._appendLog(f"Model written but not registered: {error}")
        if self.stopFile and os.path.exists(self.stopFile):
            try:
                os.remove(self.stopFile)
            except OSError:
                pass
        super()._notifyFinished()

    @property
    def resumable(self) -> bool:
        return self.state in (jobModule.STOPPED, jobModule.FAILED) and Path(self.config.checkpointPath).is_file()

    def resume(self) -> "TrainingJob":
        """Continue this run from its checkpoint, in a new process (same plots)."""
        return self.logic.resumeTraining(self)


class PairSegTrainerLogic:
    """Training-set export, background training, proxy maps, annotate-then-retrain."""

    def __init__(self, scene=None, launcher=None, registry=None):
        self._scene = scene
        self.launcher = launcher          # injectable process launcher (tests, other front ends)
        self._registry = registry
        self.jobs = []

    # -- scene / registry -------------------------------------------------------------------

    @property
    def scene(self):
        if self._scene is not None:
            return self._scene
        import slicer

        return slicer.mrmlScene

    @property
    def registry(self):
        """The model registry shared with the PairSeg module (PairSegLib.models.ModelRegistry)."""
        if self._registry is None:
            self._registry = modelRegistryClass()()
        return self._registry

    def registerModel(self, modelPath: str, name: Optional[str] = None) -> dict:
        """Register a model file so PairSeg lists it; returns its metadata."""
        models = pairSegModels()
        metadata = models.readModelMetadata(modelPath)
        if name is None:
            name = Path(modelPath).name[: -len(configModule.MODEL_SUFFIX)] \
                if str(modelPath).endswith(configModule.MODEL_SUFFIX) else Path(modelPath).stem
        self.registry.registerModel(modelPath, name=name, source="trainer")
        return metadata

    def readModelMetadata(self, modelPath: str) -> dict:
        return pairSegModels().readModelMetadata(modelPath)

    # -- training set -----------------------------------------------------------------------

    def classReport(self, items, classNames=None, mapping=None):
        """How each case's segments map to classes (unknown names listed, never dropped)."""
        items = toItems(items)
        if classNames is None:
            classNames = trainingset.classesFromSegments(items, mapping)
        return trainingset.classReport(items, classNames, mapping)

    def exportTrainingSet(self, items, folder, classNames=None, mapping=None, modality: str = "MR",
                          extension: str = ".nrrd") -> dict:
        """Write image/label files (volume geometry, exact) and dataset.json into ``folder``.

        ``items``: TrainingItem or (volume node, segmentation node) pairs. ``classNames``: the
        class list (label value k+1 = classNames[k]); default: segment names in order of first
        appearance. ``mapping``: {segment name: class name, or "" to leave it out}.
        Raises TrainingSetError with a readable message on bad input."""
        return trainingset.exportTrainingSet(toItems(items), folder, classNames=classNames,
                                             mapping=mapping, modality=modality, extension=extension)

    # parameter node: the training set list as node references (saved with the scene)

    @staticmethod
    def trainingItems(parameterNode) -> list:
        items = []
        count = max(parameterNode.GetNumberOfNodeReferences(TRAINING_VOLUME_ROLE),
                    parameterNode.GetNumberOfNodeReferences(TRAINING_SEGMENTATION_ROLE))
        for index in range(count):
            items.append(TrainingItem(parameterNode.GetNthNodeReference(TRAINING_VOLUME_ROLE, index),
                                      parameterNode.GetNthNodeReference(TRAINING_SEGMENTATION_ROLE, index)))
        return [item for item in items if item.volumeNode is not None or item.segmentationNode is not None]

    @staticmethod
    def setTrainingItems(parameterNode, items) -> None:
        items = toItems(items)
        wasModified = parameterNode.StartModify()
        parameterNode.RemoveNodeReferenceIDs(TRAINING_VOLUME_ROLE)
        parameterNode.RemoveNodeReferenceIDs(TRAINING_SEGMENTATION_ROLE)
        for index, item in enumerate(items):
            parameterNode.SetNthNodeReferenceID(TRAINING_VOLUME_ROLE, index,
                                                item.volumeNode.GetID() if item.volumeNode else None)
            parameterNode.SetNthNodeReferenceID(TRAINING_SEGMENTATION_ROLE, index,
                                                item.segmentationNode.GetID() if item.segmentationNode else None)
        parameterNode.EndModify(wasModified)

    def addToTrainingSet(self, parameterNode, volumeNode, segmentationNode) -> list:
        """Append (or update) a case of the module's training set; returns the items."""
        items = self.trainingItems(parameterNode)
        for item in items:
            if item.volumeNode is volumeNode:
                item.segmentationNode = segmentationNode
                break
        else:
            items.append(TrainingItem(volumeNode, segmentationNode))
        self.setTrainingItems(parameterNode, items)
        return items

    # -- training ----------------------------------------------------------------------------

    def startTraining(self, config: TrainingConfig, plots: bool = True, register: bool = True,
                      modelName: str = "") -> TrainingJob:
        """Start ``python -m pairseg train ... --events json`` (torchrun for several GPUs) in a
        background process; returns the running TrainingJob (call ``poll()`` from a timer, or
        ``wait()``). On success the model is registered for the PairSeg module."""
        config = config.copy()
        config.validate()
        Path(config.outputModel).parent.mkdir(parents=True, exist_ok=True)
        if not config.stopFile:
            config.stopFile = config.outputModel + ".stop"
        if os.path.exists(config.stopFile):
            os.remove(config.stopFile)
        plotNodes = plots if isinstance(plots, TrainingPlots) else (
            TrainingPlots(self.scene, prefix=Path(config.outputModel).stem) if plots else None)
        job = TrainingJob(config, self, launcher=self.launcher, plots=plotNodes, register=register,
                          modelName=modelName)
        self.jobs.append(job)
        job.start()
        return job

    def resumeTraining(self, jobOrConfig, plots: bool = True) -> TrainingJob:
        """Continue a stopped run from ``<MODEL>.ckpt`` (a TrainingJob or its TrainingConfig)."""
        if isinstance(jobOrConfig, TrainingJob):
            previous = jobOrConfig
            if previous.running:
                raise JobError("the training run is still running; stop it first")
            config = previous.config.copy(resume=True)
            job = self.startTraining(config, plots=previous.plots or plots, register=previous.register,
                                     modelName=previous.modelName)
            # keep the curves continuous across the stop
            job.curves = previous.curves
            return job
        return self.startTraining(jobOrConfig.copy(resume=True), plots=plots)

    def fineTuneConfig(self, baseModel: str, dataFolder: str, outputModel: str = "",
                       **changes) -> TrainingConfig:
        """A short schedule starting from ``baseModel`` (``--init-from``), same architecture and
        size; the output is the next version of the base model's name (``name_v2.pairseg``)."""
        metadata = self.readModelMetadata(baseModel)
        values = dict(dataFolder=str(dataFolder), initFrom=str(baseModel),
                      outputModel=outputModel or configModule.versionedModelPath(baseModel),
                      arch=metadata.get("arch", configModule.ARCHITECTURE_NAMES[0]),
                      size=int(metadata.get("size") or configModule.DEFAULT_SIZE),
                      epochs=configModule.FINE_TUNE_EPOCHS, steps=None,
                      learningRate=configModule.FINE_TUNE_LEARNING_RATE, valFraction=0.0)
        values.update(changes)
        return TrainingConfig(**values)

    def fineTune(self, items, baseModel: str, folder: str, outputModel: str = "", mapping=None,
                 **changes) -> TrainingJob:
        """Annotate-then-retrain in one call: export ``items`` with the base model's classes and
        modality, then start a fine-tuning run (a new model version; the engine records every
        case the model has seen, the base model's included, in ``training.seen_cases``)."""
        metadata = self.readModelMetadata(baseModel)
        self.exportTrainingSet(items, folder, classNames=list(metadata["class_names"]), mapping=mapping,
                               modality=metadata.get("modality", "MR"))
        config = self.fineTuneConfig(baseModel, folder, outputModel, **changes)
        return self.startTraining(config)

    # -- segment a new case with the current model (for correction) --------------------------

    def segmentVolume(self, volumeNode, modelPath: str, device: str = "auto", workFolder: str = "",
                      onFinished=None) -> EngineJob:
        """Run ``pairseg segment`` on ``volumeNode`` in the background; when it finishes, a new
        segmentation node (one segment per class, named by class) is set as ``job.segmentationNode``.
        Correct it in the Segment Editor, then ``addToTrainingSet`` and ``fineTune``."""
        folder = Path(workFolder or tempfile.mkdtemp(prefix="pairseg-segment-"))
        folder.mkdir(parents=True, exist_ok=True)
        inputPath = folder / "input.nrrd"
        outputPath = folder / "output_label.nrrd"
        trainingset.writeVolume(volumeNode, inputPath)
        command = jobModule.pairSegLib("engine").engineCommand(
            "segment", "--model", modelPath, "--input", inputPath, "--output", outputPath,
            "--device", device, "--events", "json", python=configModule.pythonExecutable())
        job = EngineJob(command, env=configModule.engineEnvironment(), launcher=self.launcher, name="segmentation")
        job.segmentationNode = None
        job.outputPath = str(outputPath)

        def finished(finishedJob):
            if finishedJob.state == jobModule.FINISHED:
                try:
                    metadata = self.readModelMetadata(modelPath)
                    finishedJob.segmentationNode = self.importLabelFile(
                        outputPath, volumeNode, metadata["class_names"], metadata.get("class_colors"),
                        name=f"{volumeNode.GetName()} PairSeg")
                except Exception as error:
                    finishedJob.state = jobModule.FAILED
                    finishedJob.errorMessage = f"could not load the segmentation: {error}"
            if onFinished:
                onFinished(finishedJob)

        job.onFinished = finished
        self.jobs.append(job)
        job.start()
        return job

    def importLabelFile(self, path, referenceVolume, classNames, classColors=None, name="PairSeg"):
        """Label map file -> new segmentation node, one segment per class named after it."""
        import slicer

        scene = self.scene
        labelNode = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__pairseg_import__")
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetFileName(str(path))
        storage.SetCenterImage(False)
        scene.AddNode(storage)
        colorNode = scene.AddNewNodeByClass("vtkMRMLColorTableNode", "__pairseg_classes__")
        try:
            if not storage.ReadData(labelNode):
                raise JobError(f"could not read {path}")
            colorNode.SetTypeToUser()
            colorNode.SetNumberOfColors(len(classNames) + 1)
            colorNode.SetColor(0, "background", 0, 0, 0, 0)
            for index, className in enumerate(classNames):
                color = (classColors or [])[index] if classColors and index < len(classColors) else (0.5, 0.5, 0.5)
                colorNode.SetColor(index + 1, className, *[float(c) for c in color[:3]], 1.0)
            labelNode.CreateDefaultDisplayNodes()
            labelNode.GetDisplayNode().SetAndObserveColorNodeID(colorNode.GetID())
            segmentationNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(name))
            segmentationNode.CreateDefaultDisplayNodes()
            segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolume)
            if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelNode, segmentationNode):
                raise JobError(f"could not import {path} as segments")
            return segmentationNode
        finally:
            for node in (labelNode, storage, colorNode):
                trainingset.removeNode(scene, node)

    # -- proxy maps --------------------------------------------------------------------------

    def proxyMaps(self, volumeA, sliceA: int, segmentationA, volumeB=None, sliceB: Optional[int] = None,
                  segmentationB=None, model: Optional[str] = None, classNames=None, mapping=None,
                  show: bool = True, device: str = "cpu"):
        """Nodes holding the ground-truth AND and XOR maps of slice ``sliceA`` of volume A and
        slice ``sliceB`` of volume B (default: the same volume) in slice A's geometry, coloured
        AND blue / XOR red; with ``model`` also its predicted AND/XOR probability maps.
        Returns a proxymaps.ProxyMapsResult."""
        volumeB = volumeB or volumeA
        segmentationB = segmentationB or segmentationA
        if sliceB is None:
            raise ValueError("give slice B (see pickProxyPair for the sampler's choice)")
        items = [TrainingItem(volumeA, segmentationA, "A")]
        if volumeB is not volumeA or segmentationB is not segmentationA:
            items.append(TrainingItem(volumeB, segmentationB, "B"))
        if classNames is None and model:
            classNames = list(self.readModelMetadata(model)["class_names"])
        report = trainingset.checkItems(items, classNames, mapping)
        classNames = report.classNames
        labels = {}
        for item in items:
            labels[item.caseName] = trainingset.exportLabelArray(item, classNames, report.assignments[item.caseName])
        labelsA = labels["A"]
        labelsB = labels.get("B", labelsA)
        for name, volumeLabels, index in (("A", labelsA, sliceA), ("B", labelsB, sliceB)):
            if not 0 <= int(index) < volumeLabels.shape[0]:
                raise ValueError(f"slice {index} of volume {name} is outside 0..{volumeLabels.shape[0] - 1}")
        planeA = labelsA[int(sliceA)]
        planeB = proxymaps.resizeNearest(labelsB[int(sliceB)], planeA.shape)
        andMap, xorMap = proxymaps.andXorArrays(planeA, planeB)
        scene = self.scene
        colors = proxymaps.proxyColorTable(scene)
        result = proxymaps.ProxyMapsResult(sliceA=int(sliceA), sliceB=int(sliceB), classNames=list(classNames),
                                           targets=proxymaps.proxyTargetStack(planeA, planeB, len(classNames)))
        pairName = f"{volumeA.GetName()}[{sliceA}]-{volumeB.GetName()}[{sliceB}]"
        result.andNode = proxymaps.sliceNode(scene, "vtkMRMLLabelMapVolumeNode", f"AND {pairName}",
                                             volumeA, sliceA, (andMap > 0).astype(np.uint8) * proxymaps.AND_VALUE, colors)
        result.xorNode = proxymaps.sliceNode(scene, "vtkMRMLLabelMapVolumeNode", f"XOR {pairName}",
                                             volumeA, sliceA, xorMap * proxymaps.XOR_VALUE, colors)
        overlay = np.where(andMap > 0, proxymaps.AND_VALUE, np.where(xorMap > 0, proxymaps.XOR_VALUE, 0))
        result.overlayNode = proxymaps.sliceNode(scene, "vtkMRMLLabelMapVolumeNode", f"Proxy {pairName}",
                                                 volumeA, sliceA, overlay.astype(np.uint8), colors)
        result.andClasses = andMap
        if model:
            pAnd, pXor = self.predictedProxyMaps(model, volumeA, sliceA, volumeB, sliceB, device=device)
            result.predictedAndNode = proxymaps.sliceNode(scene, "vtkMRMLScalarVolumeNode",
                                                          f"AND predicted {pairName}", volumeA, sliceA,
                                                          pAnd.astype(np.float32))
            result.predictedXorNode = proxymaps.sliceNode(scene, "vtkMRMLScalarVolumeNode",
                                                          f"XOR predicted {pairName}", volumeA, sliceA,
                                                          pXor.astype(np.float32))
            rgb = np.zeros(pAnd.shape + (3,), np.float32)
            for channel in range(3):
                rgb[..., channel] = 255.0 * (pAnd * proxymaps.AND_COLOR[channel] + pXor * proxymaps.XOR_COLOR[channel])
            result.predictedOverlayNode = proxymaps.sliceNode(scene, "vtkMRMLVectorVolumeNode",
                                                              f"Proxy predicted {pairName}", volumeA, sliceA,
                                                              np.clip(rgb, 0, 255).astype(np.uint8))
        if show:
            proxymaps.showInSliceViews(scene, volumeA, result.overlayNode, result.predictedOverlayNode,
                                       rasPoint=proxymaps.sliceCenterRas(volumeA, sliceA))
        return result

    def predictedProxyMaps(self, modelPath: str, volumeA, sliceA: int, volumeB, sliceB: int, device: str = "cpu"):
        """A pairwise model's (AND, XOR) probability maps on slice A's grid (torch at point of use)."""
        import slicer

        from pairseg.io import Volume
        from pairseg.proxymaps import predicted_and_xor

        def record(node):
            return Volume(slicer.util.arrayFromVolume(node).astype(np.float32), (1.0, 1.0, 1.0),
                          (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), None)

        pAnd, pXor = predicted_and_xor(str(modelPath), record(volumeA), int(sliceA), record(volumeB), int(sliceB),
                                       device=device)
        return np.asarray(pAnd, np.float32), np.asarray(pXor, np.float32)

    def pickProxyPair(self, volumeA, segmentationA, volumeB=None, segmentationB=None, mode: str = "intra",
                      offsets=None, seed: Optional[int] = 0, modality: str = "MR", classNames=None, mapping=None):
        """(slice A, slice B) as the training sampler would pair them: ``intra`` at one of the
        offsets (default: the modality's, 3/5/7 MR, 5/9/13 CT) inside A's labelled range, or
        ``inter`` (slice B at the same relative height in volume B)."""
        offsets = configModule.parseOffsets(offsets) or configModule.DEFAULT_OFFSETS[str(modality).upper()]
        itemA = TrainingItem(volumeA, segmentationA, "A")
        items = [itemA]
        if mode == "inter":
            if volumeB is None or segmentationB is None:
                raise ValueError("an inter-patient pair needs volume B and its segmentation")
            items.append(TrainingItem(volumeB, segmentationB, "B"))
        report = trainingset.checkItems(items, classNames, mapping)
        labelled = [proxymaps.labelledSlices(trainingset.exportLabelArray(item, report.classNames,
                                                                          report.assignments[item.caseName]))
                    for item in items]
        return proxymaps.choosePair(labelled[0], mode=mode, offsets=offsets,
                                    labelledB=labelled[1] if len(labelled) > 1 else None, seed=seed)

    # -- devices -----------------------------------------------------------------------------

    @staticmethod
    def listDevices(probe: bool = False) -> list:
        """[(value, label)] for the device menu. Without ``probe`` torch is only asked when it is
        already imported (no import cost); ``probe=True`` imports it (point of use)."""
        devices = [("auto", "Automatic"), ("cpu", "CPU")]
        if not probe and "torch" not in sys.modules:
            return devices
        try:
            import torch
        except ImportError:
            return devices
        try:
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            for index in range(count):
                devices.append((f"cuda:{index}" if count > 1 else "cuda",
                                f"GPU {index}: {torch.cuda.get_device_name(index)}"))
            if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
                devices.append(("mps", "Apple GPU (MPS)"))
        except Exception as error:  # a broken driver must not break the module
            logging.warning(f"PairSegTrainer: GPU query failed: {error}")
        return devices


def toItems(items) -> list:
    """TrainingItem list from TrainingItems or (volume, segmentation) tuples."""
    result = []
    for item in items or []:
        if isinstance(item, TrainingItem):
            result.append(item)
        else:
            result.append(TrainingItem(*item))
    return result


def pairSegModels():
    """The PairSeg module's ``PairSegLib.models`` (model metadata without torch, registry).
    In the extension both modules' folders are on sys.path; in a source checkout the sibling
    ``PairSeg`` folder is added."""
    return jobModule.pairSegLib("models")


def modelRegistryClass():
    return pairSegModels().ModelRegistry


__all__ = ["PairSegTrainerLogic", "TrainingJob", "TrainingConfig", "TrainingItem", "TrainingSetError",
           "JobError", "toItems"]
