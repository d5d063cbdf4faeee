"""PairSegTrainerCoreLogic: everything the PairSegTrainer module does, usable from the Python
console, scripts and tests without the GUI (the module file's ``PairSegTrainerLogic`` is this plus
Slicer's ScriptedLoadableModuleLogic: its parameter node).

    logic = PairSegTrainerCoreLogic()
    items = [TrainingItem(volumeNode, segmentationNode), ...]
    logic.exportTrainingSet(items, "/data/train", classNames=["liver", "spleen"], modality="MR")
    run = logic.startTraining(TrainingSettings(data="/data/train", out="/m/liver.pairseg",
                                               use_steps=True, steps=2000, size=256))
    run.wait()          # or poll() from a timer; run.stop() leaves a resumable checkpoint
    run = logic.resumeTraining(run)

    result = logic.proxyMaps(volA, 12, segA, volB, 15, segB, model="/m/liver.pairseg")
    result.run.wait()   # the predicted maps come from a background ``pairseg proxy-maps``

All engine work (training, segmentation, predicted proxy maps) runs in a background process
through the PairSeg module's engine bridge (``PairSegLib.engine.EngineRun``: ``python -m pairseg
... --events json``); torch never runs in Slicer's process except to list GPUs, and the scene is
only touched on the calling thread.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Optional

import numpy as np
from PairSegLib import install, models
from PairSegLib.segmentlogic import PairSegCoreLogic

from . import proxymapnodes, runsettings
from . import trainingset
from .trainingrun import EngineError, TrainingRun
from .plots import TrainingPlots
from .trainingset import TrainingItem, TrainingSetError

TRAINING_VOLUME_ROLE = "trainingVolume"
TRAINING_SEGMENTATION_ROLE = "trainingSegmentation"


class PairSegTrainerCoreLogic:
    """Training-set export, background training, proxy maps, annotate-then-retrain."""

    def __init__(self, scene=None, launcher=None, registry=None):
        self._scene = scene
        self.launcher = launcher          # the EngineLauncher of every run (tests, other front ends)
        self._registry = registry
        self._segmentationLogic = None
        self.runs = []                    # every engine run this logic started

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
            self._registry = models.ModelRegistry()
        return self._registry

    @property
    def segmentationLogic(self) -> PairSegCoreLogic:
        """The PairSeg module's logic (segmentation runs), with this logic's launcher and registry."""
        if self._segmentationLogic is None:
            self._segmentationLogic = PairSegCoreLogic()
        self._segmentationLogic.launcher = self.launcher
        self._segmentationLogic.registry = self.registry
        return self._segmentationLogic

    def registerModel(self, modelPath: str, name: Optional[str] = None) -> dict:
        """Register a model file so PairSeg lists it; returns its metadata."""
        metadata = models.readModelMetadata(modelPath)
        if name is None:
            name = Path(modelPath).name[: -len(runsettings.MODEL_SUFFIX)] \
                if str(modelPath).endswith(runsettings.MODEL_SUFFIX) else Path(modelPath).stem
        self.registry.registerModel(modelPath, name=name, source="trainer")
        return metadata

    def readModelMetadata(self, modelPath: str) -> dict:
        return models.readModelMetadata(modelPath)

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
        """Append (or update) a case of the module's training set; returns the items.

        The set keeps the labels as they are NOW: the item holds a snapshot of
        ``segmentationNode`` (``trainingset.snapshotSegmentation``: a hidden copy, saved with the
        scene), never the node itself, so a later Segment run, an edit or a model output written
        into the user's node cannot change a case already added. The user's node is marked
        ``PairSeg.TrainingSet`` = "1" (the PairSeg module never writes into such a node). Adding
        the same volume again replaces its snapshot with one of the labels as they are then."""
        if volumeNode is None or segmentationNode is None:
            raise TrainingSetError("select a volume and the segmentation that annotates it")
        before = self.trainingItems(parameterNode)
        snapshot = trainingset.snapshotSegmentation(segmentationNode)
        items = list(before)
        for index, item in enumerate(items):
            if item.volumeNode is volumeNode:
                items[index] = TrainingItem(volumeNode, snapshot)
                break
        else:
            items.append(TrainingItem(volumeNode, snapshot))
        self.setTrainingItems(parameterNode, items)
        trainingset.removeUnusedSnapshots(before, items)
        return items

    def removeFromTrainingSet(self, parameterNode, rows) -> list:
        """Remove the cases at ``rows`` (indices into ``trainingItems``) and their snapshots;
        returns the items left."""
        before = self.trainingItems(parameterNode)
        drop = {int(row) for row in rows}
        items = [item for index, item in enumerate(before) if index not in drop]
        self.setTrainingItems(parameterNode, items)
        trainingset.removeUnusedSnapshots(before, items)
        return items

    # -- training ----------------------------------------------------------------------------

    def startTraining(self, settings, plots: bool = True, register: bool = True,
                      modelName: str = "") -> TrainingRun:
        """Start ``python -m pairseg train ... --events json`` (torchrun for several GPUs) in a
        background process; returns the running TrainingRun (call ``poll()`` from a timer, or
        ``wait()``). ``settings``: a TrainingSettings pack (``runsettings.settingsPack()``; copied, the
        given one is left as it is); the run file is written from the engine config that
        ``validate()`` checked. On success the model is registered for the PairSeg module."""
        install.ensureEngineReady(askConfirmation=True)   # before anything is written or added
        settings = settings.copy()
        if not settings.stop_file:
            settings.stop_file = settings.out + ".stop"
        engineConfig = settings.validate()
        Path(settings.out).parent.mkdir(parents=True, exist_ok=True)
        if os.path.exists(settings.stop_file):
            os.remove(settings.stop_file)
        plotNodes = plots if isinstance(plots, TrainingPlots) else (
            TrainingPlots(self.scene, prefix=Path(settings.out).stem) if plots else None)
        run = TrainingRun(settings, self, launcher=self.launcher, plots=plotNodes, register=register,
                          modelName=modelName, command=settings.commandLine(engineConfig))
        self.runs.append(run)
        run.start()
        return run

    def resumeTraining(self, runOrSettings, plots: bool = True, modelName: str = "") -> TrainingRun:
        """Continue a stopped run from ``<MODEL>.ckpt``: a TrainingRun of this session (same
        curves; its plots while they are still in the scene, else new ones), or a TrainingSettings
        pack, e.g. ``TrainingSettings.fromRunFile("<MODEL>.train.json")`` of an earlier session."""
        if isinstance(runOrSettings, TrainingRun):
            previous = runOrSettings
            if previous.running:
                raise EngineError("the training run is still running; stop it first")
            settings = previous.settings.copy(resume=True, overwrite=False)
            keptPlots = previous.plots if previous.plots is not None and previous.plots.inScene() else None
            run = self.startTraining(settings, plots=keptPlots or plots, register=previous.register,
                                     modelName=previous.modelName)
            # keep the curves continuous across the stop
            run.curves = previous.curves
            return run
        return self.startTraining(runOrSettings.copy(resume=True, overwrite=False), plots=plots, modelName=modelName)

    def fineTuneSettings(self, baseModel: str, dataFolder: str, outputModel: str = "", outputFolder: str = "",
                         **changes):
        """The TrainingSettings of a short schedule starting from ``baseModel`` (a model file or a
        catalog model's name; ``init_from``), same architecture and size, then ``changes`` (pack
        field names). The output is the next version of the base model's name
        (``name_v2.pairseg``) in ``outputFolder`` (default: beside a base file; for a catalog
        model, which lives in the extension's folder, ``~/PairSeg``)."""
        basePath = self.segmentationLogic.modelFile(baseModel)
        metadata = self.readModelMetadata(basePath)
        if not outputModel:
            isCatalog = os.path.abspath(basePath) != os.path.abspath(os.fspath(baseModel))
            folder = outputFolder or (os.path.join(os.path.expanduser("~"), "PairSeg") if isCatalog
                                      else os.path.dirname(os.path.abspath(basePath)))
            name = os.fspath(baseModel) if isCatalog else Path(basePath).name
            outputModel = runsettings.versionedModelPath(os.path.join(folder, Path(name).name))
        settings = runsettings.settingsPack()()
        schedule = dict(data=str(dataFolder), init_from=str(basePath), out=outputModel,
                        arch=metadata.get("arch", settings.arch), size=int(metadata.get("size") or settings.size),
                        use_steps=False, epochs=runsettings.FINE_TUNE_EPOCHS,
                        lr=runsettings.FINE_TUNE_LEARNING_RATE, val_fraction=0.0)
        return settings.copy(**{**schedule, **changes})

    def fineTune(self, items, baseModel: str, folder: str, outputModel: str = "", mapping=None,
                 outputFolder: str = "", **changes) -> TrainingRun:
        """Annotate-then-retrain in one call: export ``items`` with the base model's classes and
        modality, then start a fine-tuning run (a new model version; the engine records every
        case the model has seen, the base model's included, in ``training.seen_cases``).
        ``baseModel``: a model file or a catalog model's name (e.g. the shipped CHAOS model)."""
        install.ensureEngineReady(askConfirmation=True)   # before the training set is written
        metadata = self.readModelMetadata(self.segmentationLogic.modelFile(baseModel))
        self.exportTrainingSet(items, folder, classNames=list(metadata["class_names"]), mapping=mapping,
                               modality=metadata.get("modality", "MR"))
        return self.startTraining(self.fineTuneSettings(baseModel, folder, outputModel, outputFolder, **changes))

    # -- segment a new case with the current model (for correction) --------------------------

    def segmentVolume(self, volumeNode, modelPath: str, device: str = "auto", onFinished=None):
        """Run ``pairseg segment`` on ``volumeNode`` in the background (the PairSeg module's
        SegmentationRun); when it is done, a new segmentation node (one segment per class, named by
        class) is ``run.segmentationNode``. Correct it in the Segment Editor, then
        ``addToTrainingSet`` and ``fineTune``. ``modelPath``: a model file or a catalog model's name
        (resolved to its shipped, checked file by the PairSeg module's one rule, ``modelFile``)."""
        run = self.segmentationLogic.segmentVolumeAsync(volumeNode, modelPath, None, device, onFinished=onFinished)
        self.runs.append(run)
        return run

    # -- proxy maps --------------------------------------------------------------------------

    def proxyMaps(self, volumeA, sliceA: int, segmentationA, volumeB=None, sliceB: Optional[int] = None,
                  segmentationB=None, model: Optional[str] = None, classNames=None, mapping=None,
                  show: bool = True, device: str = "auto"):
        """Nodes holding the ground-truth AND and XOR maps of slice ``sliceA`` of volume A and
        slice ``sliceB`` of volume B (default: the same volume) in slice A's geometry, coloured
        AND blue / XOR red. With ``model``, ``pairseg proxy-maps`` computes its predicted AND/XOR
        probability maps in the background: ``result.run`` (poll it, or ``result.run.wait()``)
        adds them to ``result`` when it is done. Returns a proxymapnodes.ProxyMapsResult."""
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
        nodes = proxymapnodes
        planeB = nodes.resizeNearest(labelsB[int(sliceB)], planeA.shape)
        targets = nodes.proxyTargetStack(planeA, planeB, len(classNames))
        andMap, xorMap = nodes.andXorArrays(targets, len(classNames))
        scene = self.scene
        colors = nodes.proxyColorTable(scene)
        result = nodes.ProxyMapsResult(sliceA=int(sliceA), sliceB=int(sliceB), classNames=list(classNames),
                                       targets=targets)
        pairName = f"{volumeA.GetName()}[{sliceA}]-{volumeB.GetName()}[{sliceB}]"
        labelMap = "vtkMRMLLabelMapVolumeNode"
        result.andNode = nodes.sliceNode(scene, labelMap, f"AND {pairName}", volumeA, sliceA,
                                         (andMap > 0).astype(np.uint8) * nodes.AND_VALUE, colors)
        result.xorNode = nodes.sliceNode(scene, labelMap, f"XOR {pairName}", volumeA, sliceA,
                                         xorMap * nodes.XOR_VALUE, colors)
        overlay = np.where(andMap > 0, nodes.AND_VALUE, np.where(xorMap > 0, nodes.XOR_VALUE, 0))
        result.overlayNode = nodes.sliceNode(scene, labelMap, f"Proxy {pairName}", volumeA, sliceA,
                                             overlay.astype(np.uint8), colors)
        result.andClasses = andMap
        if show:
            nodes.showInSliceViews(scene, volumeA, result.overlayNode, rasPoint=nodes.sliceCenterRas(volumeA, sliceA))
        if model:
            result.run = nodes.PredictedProxyMapsRun(self.segmentationLogic, result, str(model), volumeA, labelsA,
                                                     volumeB, labelsB, pairName, device=device, show=show)
            self.runs.append(result.run)
            result.run.start()
        return result

    def pickProxyPair(self, volumeA, segmentationA, volumeB=None, segmentationB=None, mode: str = "intra",
                      offsets=None, seed: Optional[int] = 0, modality: str = "MR", classNames=None, mapping=None):
        """(slice A, slice B) as the training sampler would pair them (``proxymapnodes.choosePair``
        over the labelled ranges): ``intra`` at one of the offsets (default: the modality's, 3/5/7
        MR, 5/9/13 CT), ``inter`` with a slice of volume B (needed), ``intra+inter`` either kind
        (inter with B when given), ``identical`` (B = A). ValueError when no such pair exists."""
        offsets = runsettings.parseOffsets(offsets)
        itemA = TrainingItem(volumeA, segmentationA, "A")
        items = [itemA]
        if mode == "inter" and (volumeB is None or segmentationB is None):
            raise ValueError("an inter-patient pair needs volume B and its segmentation")
        if mode in ("inter", "intra+inter") and volumeB is not None and segmentationB is not None:
            items.append(TrainingItem(volumeB, segmentationB, "B"))
        report = trainingset.checkItems(items, classNames, mapping)
        labelled = [proxymapnodes.labelledSlices(trainingset.exportLabelArray(item, report.classNames,
                                                                          report.assignments[item.caseName]))
                    for item in items]
        return proxymapnodes.choosePair(labelled[0], mode=mode, offsets=offsets, modality=modality,
                                    labelledB=labelled[1] if len(labelled) > 1 else None, seed=seed)

    # -- devices -----------------------------------------------------------------------------

    @staticmethod
    def listDevices(probe: bool = False) -> list:
        """[(value, label)] for the device menu. Without ``probe`` torch is only asked when it is
        already imported (no import cost); ``probe=True`` goes through the engine's install step
        (``install.ensureEngineReady``) and imports it (point of use)."""
        devices = [("auto", "Automatic"), ("cpu", "CPU")]
        if not probe and "torch" not in sys.modules:
            return devices
        if probe:
            install.ensureEngineReady(askConfirmation=True)
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


__all__ = ["PairSegTrainerCoreLogic", "TrainingRun", "TrainingItem", "TrainingSetError", "EngineError", "toItems"]
