"""The test-only headless harness itself: real MRML, module logics, stand-ins, SH items."""

import textwrap

import numpy as np


def test_scene_and_module_logics(mrml_scene):
    import slicer

    assert slicer.mrmlScene is mrml_scene
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLColorTableNode") > 0
    for name in ("volumes", "segmentations", "subjecthierarchy", "colors", "tables"):
        assert getattr(slicer.modules, name).logic() is not None
    volume = slicer.util.addVolumeFromArray(np.zeros((3, 4, 5), np.int16), name="v")
    assert slicer.util.getNode("v") is volume
    assert slicer.util.arrayFromVolume(volume).shape == (3, 4, 5)


def test_subject_hierarchy_items_follow_nodes(mrml_scene):
    shNode = mrml_scene.GetSubjectHierarchyNode()
    node = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "a")
    itemId = shNode.GetItemByDataNode(node)
    assert itemId
    mrml_scene.RemoveNode(node)
    assert not shNode.GetItemByDataNode(node)


def test_scene_reset_and_snapshot(mrml_scene, harness):
    before = harness.sceneSnapshot()
    mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "s")
    assert harness.sceneSnapshot() != before
    harness.resetScene()
    assert harness.sceneSnapshot() == before


def test_load_module_file_on_real_slicer_python(mrml_scene, harness, load_module, tmp_path):
    """A module file loads on Slicer's real ScriptedLoadableModule/parameterNodeWrapper; the C++
    module object's logic() is NOT the Python logic (as in Slicer); getModuleLogic goes through the
    widget's ``logic`` attribute."""
    moduleDir = tmp_path / "HarnessDemo"
    moduleDir.mkdir()
    (moduleDir / "HarnessDemo.py").write_text(textwrap.dedent('''
        import qt, ctk, slicer, vtk
        from slicer.ScriptedLoadableModule import *
        from slicer.parameterNodeWrapper import parameterNodeWrapper

        @parameterNodeWrapper
        class HarnessDemoParameterNode:
            inputVolume: slicer.vtkMRMLScalarVolumeNode
            threshold: float = 1.5
            label: str = "x"
            enabled: bool = True

        class HarnessDemo(ScriptedLoadableModule):
            def __init__(self, parent):
                ScriptedLoadableModule.__init__(self, parent)
                self.parent.title = "Demo"

        class HarnessDemoWidget(ScriptedLoadableModuleWidget):
            def setup(self):
                ScriptedLoadableModuleWidget.setup(self)
                self.logic = HarnessDemoLogic()
                self.checkBox = qt.QCheckBox()
                self.checkBox.setProperty("SlicerParameterName", "enabled")
                self.layout.addWidget(self.checkBox)
                self.parameterNode = self.logic.getParameterNode()
                self.tag = self.parameterNode.connectGui(self.parent)

            def cleanup(self):
                self.parameterNode.disconnectGui(self.tag)

        class HarnessDemoLogic(ScriptedLoadableModuleLogic):
            def getParameterNode(self):
                return HarnessDemoParameterNode(super().getParameterNode())
    '''))
    import slicer

    module = harness.loadScriptedModule(moduleDir / "HarnessDemo.py")
    try:
        assert slicer.modules.harnessdemo.title == "Demo"
        cppLogic = slicer.modules.harnessdemo.logic()
        assert isinstance(cppLogic, slicer.vtkSlicerScriptedLoadableModuleLogic)
        assert not isinstance(cppLogic, module.HarnessDemoLogic)
        assert not hasattr(cppLogic, "getParameterNode")
        params = module.HarnessDemoLogic().getParameterNode()
        assert params.threshold == 1.5 and params.enabled is True and params.label == "x"
        volume = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
        params.inputVolume = volume
        params.threshold = 3.0
        again = module.HarnessDemoLogic().getParameterNode()
        assert again.inputVolume is volume and again.threshold == 3.0
        # The widget through Slicer's own util: getModuleLogic -> the widget's .logic.
        widget = harness.moduleWidget("HarnessDemo")
        assert slicer.util.getModuleLogic("HarnessDemo") is widget.logic
        widget.checkBox.checked = False  # real QCheckBox -> real GUI connector -> node
        assert again.enabled is False
        again.enabled = True
        assert widget.checkBox.checked is True
    finally:
        harness.unloadModules()
