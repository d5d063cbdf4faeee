"""PairSeg: segment a volume with a pairwise-learning model (C2FCN / CFCN, Wang et al., MedIA 2021).

The module file stays thin (module, widget shell, logic, self-test); the panel is
``PairSegLib.segmentpanel.SegmentPanel`` and the work is in PairSegLib (``segmentlogic``: segment
and compare; background engine process, MRML conversion, overlays, model registry, dependency
installation). From the Python console::

    import PairSeg
    logic = PairSeg.PairSegLogic()   # or slicer.util.getModuleLogic("PairSeg"), the module panel's logic
    segmentationNode = logic.segmentVolume(volumeNode, "/path/to/model.pairseg", device="auto")
    result = logic.compareToReference(segmentationNode, referenceSegmentationNode)

(``slicer.modules.pairseg.logic()`` is the C++ scripted-module logic that Slicer makes for every
scripted module; it has none of these methods.)
"""

import logging
import os
from typing import Annotated

import slicer
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
            "runs in a background process that can be cancelled. <i>Show uncertainty</i> overlays where the "
            "model is unsure, and Next / Previous uncertain slice go to the slices to check first. The "
            "README of the extension's source documents the module.")
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
    structures: str = ""
    outputSegmentation: vtkMRMLSegmentationNode
    replaceOutput: bool = False
    show3D: bool = False
    showUncertainty: bool = True
    referenceSegmentation: vtkMRMLSegmentationNode


class PairSegWidget(PairSegLib.gui.PanelModuleWidget, ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Loads the .ui file and hands it to PairSegLib.segmentpanel.SegmentPanel (``self.panel``)."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        from PairSegLib import segmentpanel

        self.loadUi("PairSeg.ui")
        self.logic = PairSegLogic()  # what slicer.util.getModuleLogic("PairSeg") returns
        self.panel = segmentpanel.SegmentPanel(self.ui, self.logic, self)


class PairSegLogic(ScriptedLoadableModuleLogic, PairSegLib.PairSegCoreLogic):
    """segmentVolume / segmentVolumeAsync / compareToReference: see PairSegLib.segmentlogic."""

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
