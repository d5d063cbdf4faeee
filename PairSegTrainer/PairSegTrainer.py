"""PairSegTrainer: train PairSeg models (C2FCN, CFCN, DeepLabv3+, U-Net) on segmentations in the
scene, watch the curves, fine-tune on corrected cases, and look at the AND/XOR proxy maps.

The module file stays thin: the logic is ``PairSegTrainerLib.trainerlogic.PairSegTrainerCoreLogic``
(usable from the Python console and scripts; ``PairSegTrainerLogic`` below adds Slicer's
ScriptedLoadableModuleLogic to it) and the GUI wiring is ``PairSegTrainerLib.widget``. Torch
and the ``pairseg`` engine are imported only at the point of use, or run in a background process.
From the Python console::

    import PairSegTrainer
    logic = PairSegTrainer.PairSegTrainerLogic()   # or slicer.util.getModuleLogic("PairSegTrainer")

(``slicer.modules.pairsegtrainer.logic()`` is Slicer's C++ scripted-module logic, not this one.)
The module depends on the PairSeg module (model registry, engine runner in ``PairSegLib``).
"""

import importlib
import logging
from typing import Annotated

import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.util import VTKObservationMixin

#: PairSegTrainerLib modules in dependency order (reloaded together by a developer Reload)
LIB_MODULES = ("runsettings", "trainingrun", "trainingset", "plots", "proxymapnodes", "trainerlogic", "widget")


def _reloadLibInDeveloperMode():
    """Slicer's Reload re-runs this file; reload the Lib first so that the classes below derive
    from the reloaded ones (else ``isinstance`` against the reloaded Logic fails)."""
    import sys

    if not slicer.util.settingsValue("Developer/DeveloperMode", False, converter=slicer.util.toBool):
        return
    for name in LIB_MODULES:
        fullName = "PairSegTrainerLib." + name
        if fullName in sys.modules:
            importlib.reload(sys.modules[fullName])
    if "PairSegTrainerLib" in sys.modules:  # its names (TrainingSetError, ...) are the reloaded classes too
        importlib.reload(sys.modules["PairSegTrainerLib"])


_reloadLibInDeveloperMode()

import PairSegTrainerLib.runsettings as _runSettings  # noqa: E402
import PairSegTrainerLib.trainerlogic as _trainerLogic  # noqa: E402
from PairSegLib.gui import PanelModuleWidget  # noqa: E402

#: The training settings: a parameter pack generated from the engine's schema, built by this
#: Slicer's own ``@parameterPack`` (``PairSegTrainerLib.runsettings.settingsPack``).
TrainingSettings = _runSettings.settingsPack()


class PairSegTrainer(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "PairSeg Trainer"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["PairSeg"]  # PairSegLib: model registry and engine runner
        self.parent.contributors = ["PairSeg developers"]
        self.parent.helpText = (
            "Train pairwise segmentation models (C2FCN, CFCN) or single-slice baselines on the "
            "segmentations of the scene, watch loss and validation Dice live, fine-tune a model on "
            "corrected cases, and inspect the AND/XOR proxy maps of slice pairs. The README of the "
            "extension's source documents the module (section '3D Slicer: the PairSegTrainer module').")
        self.parent.acknowledgementText = (
            "Method: R. Wang, S. Cao, K. Ma, Y. Zheng, D. Meng, \"Pairwise learning for medical image "
            "segmentation\", Medical Image Analysis 67 (2021) 101876.")


@parameterNodeWrapper
class PairSegTrainerParameterNode:
    """Settings shown in the GUI (the training-set list is stored as node references).

    ``training`` is the run's settings (``TrainingSettings``: the engine's training settings
    under the engine's names, with the engine's defaults and ranges, plus ``use_steps`` and
    ``gpus``); the panel's widgets are bound to its fields (``training.lr``, ...), and a run is
    a copy of it. The other fields are the panel's own (training-set export, models, proxy maps).
    Numeric fields declare their ranges (the GUI connectors set the spin boxes from them, so the
    GUI and the node agree and an out-of-range value is refused at once).
    """

    training: TrainingSettings
    classNames: str = ""
    modality: str = "MR"
    outputName: str = "pairseg-model"
    outputFolder: str = ""
    mapping: str = "{}"
    currentModel: str = ""
    proxyModel: str = ""
    proxySliceA: Annotated[int, WithinRange(0, 10000)] = 0
    proxySliceB: Annotated[int, WithinRange(0, 10000)] = 3


class PairSegTrainerWidget(PanelModuleWidget, ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Loads the .ui file and hands it to PairSegTrainerLib.widget.TrainerPanel (``self.panel``)."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        from PairSegTrainerLib import widget as panelModule

        self.loadUi("PairSegTrainer.ui")
        self.logic = PairSegTrainerLogic()  # what slicer.util.getModuleLogic("PairSegTrainer") returns
        self.panel = panelModule.TrainerPanel(self.ui, self.logic, PairSegTrainerParameterNode, self)


class PairSegTrainerLogic(ScriptedLoadableModuleLogic, _trainerLogic.PairSegTrainerCoreLogic):
    """See PairSegTrainerLib.trainerlogic.PairSegTrainerCoreLogic for the API (exportTrainingSet,
    startTraining, resumeTraining, fineTune, segmentVolume, proxyMaps, pickProxyPair)."""

    def __init__(self, scene=None, launcher=None, registry=None):
        ScriptedLoadableModuleLogic.__init__(self)
        _trainerLogic.PairSegTrainerCoreLogic.__init__(self, scene=scene, launcher=launcher, registry=registry)


class PairSegTrainerTest(ScriptedLoadableModuleTest):
    """Offline, in under a minute: the embedded sample case (PairSeg module) -> exported training
    set -> a tiny training run (4 steps, 64 px, CPU) -> registered model -> predicted proxy maps ->
    segment with it. No download and no installation: skipped when the engine's packages are not
    installed. The registry used is a temporary one (the user's model list is not touched)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_PairSegTrainer_embeddedSample()

    def test_PairSegTrainer_embeddedSample(self):
        import os
        import shutil
        import tempfile

        from PairSegLib import install, sampledata
        from PairSegLib.models import ModelRegistry

        missing = install.missingPackages()
        if missing:
            self.skipTest("the engine's packages are not installed (" + ", ".join(missing) + "): press Train once "
                          "to install them, then run the self-test again")
        folder = tempfile.mkdtemp(prefix="PairSegTrainerTest-")
        try:
            self.delayDisplay("Exporting the embedded sample case as a training set")
            volumeNode, segmentationNode = sampledata.loadEmbeddedSample()
            logic = PairSegTrainerLogic(registry=ModelRegistry(os.path.join(folder, "registry.json")))
            manifest = logic.exportTrainingSet([(volumeNode, segmentationNode)], os.path.join(folder, "set"),
                                               modality="MR")
            self.assertEqual(list(manifest["labels"].values())[1:], sampledata.CHAOS_MR_CLASSES)

            self.delayDisplay("Training a tiny model (engine process)")
            modelPath = os.path.join(folder, "selftest.pairseg")
            trainingRun = logic.startTraining(TrainingSettings(data=os.path.join(folder, "set"), out=modelPath,
                                                               use_steps=True, steps=4, size=64, batch_size=2,
                                                               device="cpu", val_fraction=0.0), plots=False)
            trainingRun.wait(timeout=300)
            self.assertEqual(trainingRun.state, "done", trainingRun.errorMessage)
            self.assertEqual([m["path"] for m in logic.registry.registeredModels()], [modelPath])

            self.delayDisplay("Predicted proxy maps of an intra-patient pair (engine process)")
            sliceA, sliceB = logic.pickProxyPair(volumeNode, segmentationNode, mode="intra")
            result = logic.proxyMaps(volumeNode, sliceA, segmentationNode, volumeNode, sliceB, segmentationNode,
                                     model=modelPath, device="cpu")
            result.run.wait(timeout=120)
            self.assertIsNotNone(result.predictedAndNode)

            self.delayDisplay("Segmenting with the new model (engine process)")
            run = logic.segmentVolume(volumeNode, modelPath, device="cpu").wait(timeout=120)
            self.assertEqual(run.segmentationNode.GetSegmentation().GetNumberOfSegments(), 4)
            logging.info(f"PairSegTrainer self-test passed in {trainingRun.elapsedSeconds:.0f} s of training")
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        self.delayDisplay("Test passed")
