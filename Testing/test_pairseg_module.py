"""PairSeg module on real MRML (slicer-core wheel), headless: segmentVolume, compareToReference,
cancel, bad inputs, oblique/flipped geometry, registry, terminology, import rules."""

import ast
import json
import math
import os
import re
import zipfile

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHAOS_CLASSES = ["liver", "right kidney", "left kidney", "spleen"]
ALLOWED_FILE_SCOPE_IMPORTS = {"slicer", "vtk", "qt", "ctk", "numpy", "SimpleITK", "scipy", "PairSegLib"}


@pytest.fixture
def pairseg(load_module, mrml_scene, tmp_path, monkeypatch):
    """The imported PairSeg module, a clean scene and a registry in a temporary user folder."""
    monkeypatch.setenv("PAIRSEG_USER_DIR", str(tmp_path / "user"))
    return load_module("PairSeg")


@pytest.fixture
def logic(pairseg):
    return pairseg.PairSegLogic()


def engineLabels(modelPath, volumeNode, keepLargest=True):
    """The engine's own prediction (in-process) for a volume node's voxels and geometry."""
    import slicer
    import vtk

    from pairseg.infer import Predictor
    from pairseg.io.volume import Volume

    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ slicer.util.arrayFromVTKMatrix(matrix)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    volume = Volume(array=slicer.util.arrayFromVolume(volumeNode).copy(), spacing=tuple(spacing),
                    origin=tuple(lps[:3, 3]), direction=tuple((lps[:3, :3] / spacing).ravel()))
    return Predictor(modelPath, device="cpu").segment(volume, keep_largest=keepLargest).labels.array


def segmentationLabels(segmentationNode, volumeNode, names):
    import slicer

    segmentation = segmentationNode.GetSegmentation()
    labels = np.zeros(slicer.util.arrayFromVolume(volumeNode).shape, np.uint8)
    for index, name in enumerate(names):
        segmentId = segmentation.GetSegmentIdBySegmentName(name)
        assert segmentId, name
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volumeNode)
        labels[mask > 0] = index + 1
    return labels


def matrixOf(node):
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(i, j) for j in range(4)] for i in range(4)])


# -- module file and packaging rules ------------------------------------------------------------


def _topLevelImports(path):
    tree = ast.parse(open(path, encoding="utf-8").read())
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_file_scope_imports_are_slicer_safe():
    import sys

    stdlib = set(sys.stdlib_module_names)
    files = [os.path.join(ROOT, "PairSeg", "PairSeg.py")]
    libDir = os.path.join(ROOT, "PairSeg", "PairSegLib")
    files += [os.path.join(libDir, name) for name in os.listdir(libDir) if name.endswith(".py")]
    for path in files:
        foreign = _topLevelImports(path) - stdlib - ALLOWED_FILE_SCOPE_IMPORTS
        assert not foreign, f"{path} imports {foreign} at file scope"


def test_module_class_and_parameter_node(pairseg, mrml_scene):
    import slicer

    module = slicer.modules.pairseg  # the module object Slicer made with PairSeg(parent)
    assert module.title == "PairSeg"
    assert module.categories == ["Segmentation"]
    assert "README" in module.helpText  # the repository URL is a placeholder: no link in the help
    assert "Pairwise learning for medical image segmentation" in module.acknowledgementText
    # In Slicer, slicer.modules.pairseg.logic() is the C++ scripted-module logic (fault 7).
    assert not isinstance(module.logic(), pairseg.PairSegLogic)
    parameters = pairseg.PairSegLogic().getParameterNode()
    assert parameters.device == "auto" and parameters.keepLargestComponent is True
    volume = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    parameters.inputVolume = volume
    parameters.device = "cpu"
    assert pairseg.PairSegLogic().getParameterNode().inputVolume is volume
    assert pairseg.PairSegLogic().getParameterNode().device == "cpu"


def _cmakeListedFiles():
    listed = set()
    for relative in ("PairSeg/CMakeLists.txt", "PairSeg/PairSegEngine.cmake", "PairSegTrainer/CMakeLists.txt"):
        path = os.path.join(ROOT, relative)
        if not os.path.isfile(path):
            continue
        base = os.path.join(ROOT, "src") if relative.endswith("Engine.cmake") else os.path.dirname(path)
        text = "\n".join(line.split("#", 1)[0] for line in open(path, encoding="utf-8"))
        moduleName = re.search(r"set\(MODULE_NAME\s+(\w+)\)", text)
        if moduleName:
            text = text.replace("${MODULE_NAME}", moduleName.group(1))
        for token in text.replace("(", " ").replace(")", " ").split():
            token = token.strip('"')
            if token.endswith((".py", ".ui", ".png", ".svg", ".json")):
                listed.add(os.path.normpath(os.path.join(base, token)))
    return listed


def test_cmake_lists_every_shipped_python_file():
    listed = _cmakeListedFiles()
    expected = []
    for folder in (os.path.join("src", "pairseg"), "PairSeg", "PairSegTrainer"):
        for directory, subfolders, files in os.walk(os.path.join(ROOT, folder)):
            subfolders[:] = [s for s in subfolders if s not in ("Testing", "__pycache__")]
            expected += [os.path.join(directory, f) for f in files if f.endswith(".py")]
    if not os.path.isfile(os.path.join(ROOT, "PairSegTrainer", "CMakeLists.txt")):
        expected = [p for p in expected if "PairSegTrainer" not in p]
    missing = sorted(os.path.relpath(p, ROOT) for p in expected if os.path.normpath(p) not in listed)
    assert not missing, f"not listed in CMake: {missing}"
    for path in listed:  # and nothing listed that does not exist
        assert os.path.isfile(path), f"CMake lists a missing file: {os.path.relpath(path, ROOT)}"


def test_top_level_cmake_and_catalog_entry():
    text = open(os.path.join(ROOT, "CMakeLists.txt"), encoding="utf-8").read()
    for needle in ("project(PairSeg)", 'EXTENSION_CATEGORY "Segmentation"', 'EXTENSION_DEPENDS "PyTorch"',
                   "add_subdirectory(PairSeg)", "add_subdirectory(PairSegTrainer)", "EXTENSION_SCREENSHOTURLS",
                   "EXTENSION_ICONURL"):
        assert needle in text
    urls = re.findall(r"\$\{PAIRSEG_RAW_URL\}/([\w/.\-]+)", text)  # the one placeholder URL
    assert len(urls) >= 3
    for relative in urls:
        assert os.path.isfile(os.path.join(ROOT, relative)), relative
    catalog = json.load(open(os.path.join(ROOT, "PairSeg.json"), encoding="utf-8"))
    assert catalog["category"] == "Segmentation" and catalog["build_dependencies"] == ["PyTorch"]


# -- model files and registry --------------------------------------------------------------------


def test_metadata_without_torch_matches_engine(pairseg, phantom_model):
    from pairseg.modelfiles.weights import read_metadata

    assert pairseg.PairSegLib.readModelMetadata(phantom_model) == read_metadata(phantom_model)
    lines = pairseg.PairSegLib.describeModel(read_metadata(phantom_model))
    assert lines[0].startswith("Classes: liver")


def test_registry_registered_and_recent(pairseg, tmp_path, phantom_model):
    registry = pairseg.PairSegLib.ModelRegistry()
    assert registry.path.startswith(str(tmp_path / "user"))
    registry.registerModel(phantom_model, name="phantom organs")
    registry.addRecentModel(phantom_model)
    registry.addRecentModel(tmp_path / "gone.pairseg")
    assert [m["name"] for m in registry.registeredModels()] == ["phantom organs"]
    assert registry.recentModels() == [os.path.abspath(phantom_model)]
    assert registry.knownModels() == [("phantom organs (registered)", os.path.abspath(phantom_model))]
    registry.unregisterModel(phantom_model)
    assert registry.registeredModels() == [] and registry.recentModels() == []


def test_terminology_codes(slicer_harness):
    import slicer

    from PairSegLib.terminology import terminologyEntry

    terminologyLogic = slicer_harness.moduleLogics["Terminologies"]
    expected = {"liver": ("10200004", ""), "right kidney": ("64033007", "24028007"),
                "Kidney_L": ("64033007", "7771000"), "spleen": ("78961009", "")}
    for name, (typeCode, modifierCode) in expected.items():
        entry = slicer.vtkSlicerTerminologyEntry()
        assert terminologyLogic.DeserializeTerminologyEntry(terminologyEntry(name), entry)
        assert entry.GetTypeObject().GetCodingSchemeDesignator() == "SCT"
        assert entry.GetTypeObject().GetCodeValue() == typeCode
        assert (entry.GetTypeModifierObject().GetCodeValue() or "") == modifierCode
        assert entry.GetCategoryObject().GetCodeValue() == "123037004"
    assert terminologyEntry("tumour") is None


# -- segmentation on a real CHAOS case -----------------------------------------------------------


@pytest.mark.chaos
def test_segment_chaos_case(logic, harness, mrml_scene, chaos_dir, chaos_model):
    import slicer

    imagePath = str(chaos_dir / "case_002_image.nii.gz")
    volume = harness.loadVolume(imagePath, name="case_002")
    shNode = mrml_scene.GetSubjectHierarchyNode()
    study = shNode.CreateStudyItem(shNode.GetSceneItemID(), "CHAOS study")
    shNode.SetItemParent(shNode.GetItemByDataNode(volume), study)

    segmentationNode = logic.segmentVolume(volume, chaos_model, device="cpu")

    metadata = logic.modelMetadata(chaos_model)
    segmentation = segmentationNode.GetSegmentation()
    names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    assert names == metadata["class_names"] == CHAOS_CLASSES
    for index, name in enumerate(names):
        segment = segmentation.GetNthSegment(index)
        assert np.allclose(segment.GetColor(), metadata["class_colors"][index][:3], atol=1e-6)
        assert "SCT^" in segment.GetTerminology()
    assert "SCT^10200004^Liver" in segmentation.GetNthSegment(0).GetTerminology()
    assert "SCT^24028007^Right" in segmentation.GetNthSegment(1).GetTerminology()
    assert "SCT^78961009^Spleen" in segmentation.GetNthSegment(3).GetTerminology()
    # reference geometry is the input's (DICOM-SEG export ready) and the segmentation sits beside it
    assert segmentationNode.GetNodeReference("referenceImageGeometryRef") is volume
    assert shNode.GetItemParent(shNode.GetItemByDataNode(segmentationNode)) == study
    # voxel-exact agreement with the engine run directly on the original file
    expected = engineLabels(chaos_model, volume)
    assert np.array_equal(segmentationLabels(segmentationNode, volume, names), expected)
    assert segmentationNode.GetAttribute("PairSeg.Model") == os.path.abspath(chaos_model)
    assert logic.registry.recentModels() == [os.path.abspath(chaos_model)]


@pytest.mark.chaos
def test_compare_to_reference_matches_engine_metrics(logic, harness, mrml_scene, chaos_dir, chaos_model):
    import slicer

    from pairseg.metrics import evaluate_case

    imagePath = str(chaos_dir / "case_002_image.nii.gz")
    volume = harness.loadVolume(imagePath, name="case_002")
    segmentationNode = logic.segmentVolume(volume, chaos_model, device="cpu")
    # reference: the expert labels, through MRML storage, as a segmentation named by class
    labelNode = harness.loadVolume(str(chaos_dir / "case_002_label.nii.gz"), name="labels", labelmap=True)
    colorNode = mrml_scene.AddNewNodeByClass("vtkMRMLColorTableNode", "chaos labels")
    colorNode.SetTypeToUser()
    colorNode.SetNumberOfColors(5)
    for value, name in enumerate(["background"] + CHAOS_CLASSES):
        colorNode.SetColor(value, name, 0.2 * value, 0.5, 0.5, 1.0)
    labelNode.GetDisplayNode().SetAndObserveColorNodeID(colorNode.GetID())
    referenceNode = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "expert")
    assert slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labelNode, referenceNode)
    # a composite node, so the overlay has a slice view to be shown in
    compositeNode = mrml_scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")

    result = logic.compareToReference(segmentationNode, referenceNode)

    reference = slicer.util.arrayFromVolume(labelNode)  # the expert labels in the volume's voxel grid
    spacingZyx = tuple(reversed(volume.GetSpacing()))
    expected = evaluate_case(engineLabels(chaos_model, volume), reference, spacingZyx, CHAOS_CLASSES)
    table = result.tableNode.GetTable()
    assert table.GetNumberOfRows() == 4
    for row, name in enumerate(CHAOS_CLASSES):
        assert table.GetValueByName(row, "Segment").ToString() == name
        assert table.GetValueByName(row, "Dice").ToDouble() == pytest.approx(expected["dice"][name], abs=1e-6)
        assd = table.GetValueByName(row, "ASSD (mm)").ToDouble()
        if expected["assd"][name] is None:
            assert math.isnan(assd)
        else:
            assert assd == pytest.approx(expected["assd"][name], rel=1e-4, abs=1e-4)
    # boundary-distance overlay: distances (mm) on predicted boundary voxels, -1 elsewhere, shown
    distances = slicer.util.arrayFromVolume(result.distanceVolumeNode)
    assert distances.shape == slicer.util.arrayFromVolume(volume).shape
    assert np.allclose(matrixOf(result.distanceVolumeNode), matrixOf(volume))
    onBoundary = distances >= 0
    assert onBoundary.any() and np.all(distances[~onBoundary] == -1)
    assert compositeNode.GetForegroundVolumeID() == result.distanceVolumeNode.GetID()
    assert result.distanceVolumeNode.GetDisplayNode().GetApplyThreshold()
    assert result.distanceVolumeNode.GetDisplayNode().GetColorNode().GetName() == "PairSeg boundary distance"
    predicted = segmentationLabels(segmentationNode, volume, CHAOS_CLASSES)
    assert not np.any(onBoundary & (predicted == 0))


@pytest.mark.chaos
def test_exported_volume_is_the_source_image_in_physical_space(pairseg, harness, mrml_scene, chaos_dir, tmp_path):
    """Slicer may reorder the slices of a left-handed file (CHAOS is); the exported file must still
    put every intensity at the same physical point as the source file."""
    import SimpleITK as sitk

    source = str(chaos_dir / "case_002_image.nii.gz")
    volume = harness.loadVolume(source, name="case_002")
    exported = str(tmp_path / "exported.nrrd")
    pairseg.PairSegLib.mrml.exportVolume(volume, exported)
    a, b = sitk.ReadImage(exported), sitk.ReadImage(source)
    rng = np.random.default_rng(0)
    size = a.GetSize()
    for _ in range(200):
        index = [int(rng.integers(0, n)) for n in size]
        other = b.TransformPhysicalPointToIndex(a.TransformIndexToPhysicalPoint(index))
        assert a.GetPixel(index) == b.GetPixel(other)


# -- existing segmentations, cancel, errors ------------------------------------------------------


def _phantomVolume(harness, phantom_dir):
    images = sorted(p for p in os.listdir(phantom_dir) if "_image" in p)
    return harness.loadVolume(str(phantom_dir / images[0]), name="phantom"), str(phantom_dir / images[0])


def test_existing_segmentation_other_segments_untouched(logic, harness, mrml_scene, phantom_dir, phantom_model):
    import slicer

    volume, _ = _phantomVolume(harness, phantom_dir)
    shape = slicer.util.arrayFromVolume(volume).shape
    segmentationNode = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "mine")
    segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    tumorId = segmentationNode.GetSegmentation().AddEmptySegment("tumor", "tumor", [0.1, 0.9, 0.1])
    liverId = segmentationNode.GetSegmentation().AddEmptySegment("liver", "Liver", [0.0, 0.0, 1.0])
    tumor = np.zeros(shape, np.uint8)
    tumor[1:3, 5:9, 5:9] = 1
    everything = np.ones(shape, np.uint8)
    slicer.util.updateSegmentBinaryLabelmapFromArray(tumor, segmentationNode, tumorId, volume)
    slicer.util.updateSegmentBinaryLabelmapFromArray(everything, segmentationNode, liverId, volume)
    liverBefore = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, liverId, volume).copy()

    # the user's own segments: never written into unless Replace is asked for (issue 19 item 1)
    result = logic.segmentVolume(volume, phantom_model, segmentationNode=segmentationNode, device="cpu")
    assert result is not segmentationNode and result.GetName() == "phantom PairSeg"
    assert segmentationNode.GetSegmentation().GetNumberOfSegments() == 2
    assert np.array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, liverId, volume), liverBefore)

    result = logic.segmentVolume(volume, phantom_model, segmentationNode=segmentationNode, device="cpu",
                                 replace=True)
    assert result is segmentationNode
    segmentation = segmentationNode.GetSegmentation()
    assert segmentation.GetNthSegmentID(0) == "tumor" and segmentation.GetNthSegmentID(1) == "liver"
    assert segmentation.GetNumberOfSegments() == 5  # tumor, liver (replaced), 3 new
    assert np.array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, "tumor", volume), tumor)
    assert segmentation.GetSegment("tumor").GetColor() == pytest.approx((0.1, 0.9, 0.1))
    liverAfter = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, "liver", volume)
    assert not np.array_equal(liverAfter, liverBefore)
    assert segmentation.GetSegment("liver").GetName() == "liver"


def test_edit_during_a_run_is_kept(logic, harness, mrml_scene, phantom_dir, phantom_model):
    """Issue 19 item 1: whether the chosen segmentation may be written into is decided when the
    result arrives: an edit made while the engine runs is kept, the result goes to a new node."""
    import slicer

    from PairSegLib import mrml

    volume, _ = _phantomVolume(harness, phantom_dir)
    output = logic.segmentVolume(volume, phantom_model, device="cpu")
    assert mrml.protectionReason(output, volume) is None
    run = logic.segmentVolumeAsync(volume, phantom_model, segmentationNode=output, device="cpu")
    segmentId = output.GetSegmentation().GetNthSegmentID(0)
    mask = np.array(slicer.util.arrayFromSegmentBinaryLabelmap(output, segmentId, volume), np.uint8)
    mask[0, :4, :4] = 1 - mask[0, :4, :4]
    slicer.util.updateSegmentBinaryLabelmapFromArray(mask, output, segmentId, volume)  # the user paints
    run.wait()
    assert run.segmentationNode is not output and run.segmentationNode.GetName() == "phantom PairSeg 2"
    assert run.newNodeReason == "'phantom PairSeg' was edited after PairSeg wrote it"
    assert np.array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(output, segmentId, volume), mask)


def test_fingerprint_ignores_extent_and_display_but_not_labels(logic, harness, mrml_scene, phantom_dir):
    """The fingerprint follows the labels, not how they are stored or shown."""
    import slicer

    from PairSegLib import mrml

    volume, _ = _phantomVolume(harness, phantom_dir)
    shape = slicer.util.arrayFromVolume(volume).shape
    node = mrml.newSegmentationNode(volume)
    segmentId = node.GetSegmentation().AddEmptySegment("liver", "liver")
    labels = np.zeros(shape, np.uint8)
    labels[1:3, 4:9, 5:8] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(labels, node, segmentId, volume)
    mrml.recordOutput(node, volume)
    assert mrml.protectionReason(node, volume) is None
    node.GetSegmentation().GetSegment(segmentId).SetColor(0.1, 0.2, 0.3)
    node.GetDisplayNode().SetOpacity2DFill(0.2)
    node.CreateClosedSurfaceRepresentation()
    assert mrml.segmentationFingerprint(node) == node.GetAttribute(mrml.FINGERPRINT_ATTRIBUTE)
    # the same labels in a labelmap of a larger extent (the Segment Editor grows it while painting)
    import vtk
    from vtk.util import numpy_support

    binaryName = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    segment = node.GetSegmentation().GetSegment(segmentId)
    image = segment.GetRepresentation(binaryName)
    extent = image.GetExtent()
    voxels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(
        extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1)
    padded = np.zeros(tuple(n + 4 for n in voxels.shape), voxels.dtype)
    padded[2:-2, 2:-2, 2:-2] = voxels
    larger = slicer.vtkOrientedImageData()
    larger.SetExtent(extent[0] - 2, extent[1] + 2, extent[2] - 2, extent[3] + 2, extent[4] - 2, extent[5] + 2)
    larger.GetPointData().SetScalars(numpy_support.numpy_to_vtk(padded.ravel(), deep=True))
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    larger.SetImageToWorldMatrix(matrix)
    segment.AddRepresentation(binaryName, larger)
    assert segment.GetRepresentation(binaryName).GetExtent() != extent
    assert mrml.segmentationFingerprint(node) == node.GetAttribute(mrml.FINGERPRINT_ATTRIBUTE)
    labels[2, 6, 6] = 0  # one voxel
    slicer.util.updateSegmentBinaryLabelmapFromArray(labels, node, segmentId, volume)
    assert mrml.protectionReason(node, volume) == f"'{node.GetName()}' was edited after PairSeg wrote it"
    assert mrml.protectionReason(node, volume, replace=True) is None
    node.SetAttribute(mrml.TRAINING_SET_ATTRIBUTE, "1")
    assert mrml.protectionReason(node, volume, replace=True) == f"'{node.GetName()}' is in a training set"


def test_cancel_leaves_scene_unchanged(logic, harness, mrml_scene, phantom_dir, phantom_model):
    volume, _ = _phantomVolume(harness, phantom_dir)
    existing = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "existing")
    existing.GetSegmentation().AddEmptySegment("liver", "liver")
    before = harness.sceneSnapshot()
    finished = []
    task = logic.segmentVolumeAsync(volume, phantom_model, segmentationNode=existing, device="cpu",
                                    onFinished=finished.append)
    assert task.state == "running"
    task.poll()
    task.cancel()
    task.wait()
    assert task.state == "cancelled" and finished == [task]
    assert task.process.returncode is not None or task.process.process.poll() is not None
    assert harness.sceneSnapshot() == before
    assert existing.GetSegmentation().GetNumberOfSegments() == 1
    assert not os.path.exists(task.workDirectory)


def test_bad_inputs_give_clear_errors_and_leave_scene(pairseg, logic, harness, mrml_scene, phantom_dir,
                                                      phantom_model, tmp_path):
    import slicer

    InputError = pairseg.PairSegLib.InputError
    volume, _ = _phantomVolume(harness, phantom_dir)
    flat = slicer.util.addVolumeFromArray(np.zeros((1, 32, 32), np.float32), name="flat")
    labelmap = mrml_scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    labelmap.SetAndObserveImageData(volume.GetImageData())
    ct = slicer.util.addVolumeFromArray(np.full((8, 32, 32), -1000, np.int16), name="ct-like")
    corrupt = tmp_path / "corrupt.pairseg"
    corrupt.write_bytes(os.urandom(2048))
    foreignZip = tmp_path / "foreign.pairseg"
    with zipfile.ZipFile(foreignZip, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x04N.")
    cases = [
        (None, phantom_model, "No input volume"),
        (flat, phantom_model, "is 2D"),
        (labelmap, phantom_model, "grey-level"),
        (ct, phantom_model, "trained on MR"),
        (volume, None, "No model file"),
        (volume, tmp_path / "missing.pairseg", "not found"),
        (volume, corrupt, r"corrupt\.pairseg: not a PairSeg model file .*refused"),
        (volume, foreignZip, "not a PairSeg model"),
    ]
    before = harness.sceneSnapshot()
    for inputVolume, model, message in cases:
        with pytest.raises(InputError, match=message):
            logic.segmentVolume(inputVolume, model, device="cpu")
        assert harness.sceneSnapshot() == before, message
    with pytest.raises(InputError, match="Unknown device"):
        logic.segmentVolume(volume, phantom_model, device="tpu")
    assert harness.sceneSnapshot() == before


def test_engine_failure_is_reported_and_scene_unchanged(pairseg, logic, harness, mrml_scene, phantom_dir,
                                                        phantom_model, tmp_path):
    from safetensors.torch import load

    from pairseg.modelfiles.weights import read_metadata, write_model_file

    volume, _ = _phantomVolume(harness, phantom_dir)
    # valid metadata and checksum, one weight missing: only the engine notices, after it started
    state = load(open(phantom_model, "rb").read())
    state.pop(sorted(state)[0])
    misfit = write_model_file(tmp_path / "misfit.pairseg", state, read_metadata(phantom_model))
    existing = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "existing")
    before = harness.sceneSnapshot()
    with pytest.raises(pairseg.PairSegLib.InputError, match="weights do not fit"):
        logic.segmentVolume(volume, misfit, segmentationNode=existing, device="cpu")
    assert harness.sceneSnapshot() == before
    assert existing.GetSegmentation().GetNumberOfSegments() == 0


def test_oblique_flipped_volume_overlays_exactly(logic, harness, mrml_scene, phantom_dir, phantom_model):
    import slicer
    import vtk

    volume, imagePath = _phantomVolume(harness, phantom_dir)
    transform = vtk.vtkTransform()
    transform.RotateWXYZ(25, 0.3, 0.8, 0.5)
    transform.Scale(-1.0, 1.0, 1.0)  # a flipped axis: left-handed voxel grid
    original = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(original)
    oblique = vtk.vtkMatrix4x4()
    vtk.vtkMatrix4x4.Multiply4x4(transform.GetMatrix(), original, oblique)
    volume.SetIJKToRASMatrix(oblique)

    segmentationNode = logic.segmentVolume(volume, phantom_model, device="cpu")

    names = logic.modelMetadata(phantom_model)["class_names"]
    segmentation = segmentationNode.GetSegmentation()
    image = segmentation.GetNthSegment(0).GetRepresentation(
        slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName())
    imageToWorld = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(imageToWorld)
    assert np.allclose([[imageToWorld.GetElement(i, j) for j in range(4)] for i in range(4)], matrixOf(volume),
                       atol=1e-6)
    # the engine works in voxel space: same voxels as for the original, unrotated file
    assert np.array_equal(segmentationLabels(segmentationNode, volume, names), engineLabels(phantom_model, volume))
    assert segmentationNode.GetNodeReference("referenceImageGeometryRef") is volume
