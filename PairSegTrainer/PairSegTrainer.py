"""PairSegTrainer: train PairSeg models (C2FCN, CFCN, DeepLabv3+, U-Net) on segmentations in the
scene, watch the curves, fine-tune on corrected cases, and look at the AND/XOR proxy maps.

The module file stays thin: the logic is ``PairSegTrainerLib.logic.PairSegTrainerLogic`` (usable
from the Python console and scripts) and the GUI wiring is ``PairSegTrainerLib.widget``. Torch
and the ``pairseg`` engine are imported only at the point of use, or run in a background process.
"""

import importlib
import logging

import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.util import VTKObservationMixin

import PairSegTrainerLib.logic as _trainerLogic


class PairSegTrainer(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "PairSeg Trainer"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["PairSeg developers"]
        self.parent.helpText = (
            "Train pairwise segmentation models (C2FCN, CFCN) or single-slice baselines on the "
            "segmentations of the scene, watch loss and validation Dice live, fine-tune a model on "
            "corrected cases, and inspect the AND/XOR proxy maps of slice pairs. "
            "<a href='https://github.com/pairseg/SlicerPairSeg/blob/main/README.md#3d-slicer-the-pairsegtrainer-module'>Documentation</a>.")
        self.parent.acknowledgementText = (
            "Method: R. Wang, S. Cao, K. Ma, Y. Zheng, D. Meng, \"Pairwise learning for medical image "
            "segmentation\", Medical Image Analysis 67 (2021) 101876.")


@parameterNodeWrapper
class PairSegTrainerParameterNode:
    """Settings shown in the GUI (the training-set list is stored as node references)."""

    classNames: str = ""
    modality: str = "MR"
    arch: str = "c2fcn"
    outputName: str = "pairseg-model"
    outputFolder: str = ""
    initFrom: str = ""
    useSteps: bool = False
    epochs: int = 50
    steps: int = 2000
    batchSize: int = 8
    size: int = 256
    learningRate: float = 1e-4
    valFraction: float = 0.2
    device: str = "auto"
    gpus: int = 1
    pairMode: str = "intra+inter"
    offsets: str = ""
    interRepeats: int = 2
    mapping: str = "{}"
    currentModel: str = ""
    proxyModel: str = ""
    proxySliceA: int = 0
    proxySliceB: int = 3


class PairSegTrainerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Loads the .ui file and hands it to PairSegTrainerLib.widget.TrainerPanel."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.panel = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        from PairSegTrainerLib import widget as panelModule

        if self.developerMode:
            for name in ("config", "job", "trainingset", "plots", "proxymaps", "logic", "widget"):
                importlib.reload(importlib.import_module("PairSegTrainerLib." + name))
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/PairSegTrainer.ui"))
        self.layout.addWidget(uiWidget)
        ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.panel = panelModule.TrainerPanel(ui, PairSegTrainerLogic(), PairSegTrainerParameterNode, self)

    def enter(self):
        if self.panel:
            self.panel.enter()

    def exit(self):
        if self.panel:
            self.panel.exit()

    def cleanup(self):
        if self.panel:
            self.panel.cleanup()
        self.removeObservers()


class PairSegTrainerLogic(ScriptedLoadableModuleLogic, _trainerLogic.PairSegTrainerLogic):
    """See PairSegTrainerLib.logic.PairSegTrainerLogic for the API (exportTrainingSet,
    startTraining, resumeTraining, fineTune, segmentVolume, proxyMaps, pickProxyPair)."""

    def __init__(self, scene=None, launcher=None, registry=None):
        ScriptedLoadableModuleLogic.__init__(self)
        _trainerLogic.PairSegTrainerLogic.__init__(self, scene=scene, launcher=launcher, registry=registry)


class PairSegTrainerTest(ScriptedLoadableModuleTest):
    """In-application smoke test: export a tiny synthetic case and check its geometry and labels.
    The full tests (training runs, stop/resume, proxy maps) are the pytest files in Testing/."""

    def runTest(self):
        slicer.mrmlScene.Clear()
        self.test_exportTrainingSet()

    def test_exportTrainingSet(self):
        import tempfile

        import numpy as np

        self.delayDisplay("Exporting a synthetic case")
        volume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "case")
        slicer.util.updateVolumeFromArray(volume, np.random.default_rng(0).random((8, 16, 16)).astype(np.float32))
        volume.SetSpacing(0.8, 0.8, 2.5)
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "case seg")
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        segmentation.GetSegmentation().AddEmptySegment("liver", "liver")
        mask = np.zeros((8, 16, 16), np.uint8)
        mask[2:6, 4:10, 4:10] = 1
        slicer.util.updateSegmentBinaryLabelmapFromArray(mask, segmentation, "liver", volume)
        folder = tempfile.mkdtemp(prefix="pairsegtrainer-test-")
        manifest = PairSegTrainerLogic().exportTrainingSet([(volume, segmentation)], folder, ["liver"])
        self.assertEqual(manifest["labels"], {"0": "background", "1": "liver"})
        self.assertEqual(manifest["training"][0]["voxels"]["liver"], int(mask.sum()))
        logging.info("PairSegTrainer export test passed")
        self.delayDisplay("Test passed")
