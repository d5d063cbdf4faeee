"""Shared helpers and fixtures of the PairSegTrainer tests (no tests in this file).

Scenes are built on the shared headless harness (Testing/slicer_harness.py, fixtures in
Testing/conftest.py): real MRML nodes, real segmentation export and storage nodes.
"""

import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAOS_CLASSES = ["liver", "right kidney", "left kidney", "spleen"]
# Segment names as users type them: other case, underscores, another order (mapping by NAME).
CHAOS_SEGMENT_NAMES = {4: "Spleen", 1: "Liver", 3: "left_kidney", 2: "Right Kidney"}


def trainerLib():
    """Import PairSegTrainerLib as Slicer would: both module folders on sys.path (PairSeg, the
    declared dependency, is loaded first), on Slicer's own Python files of a release (the current
    one, else the newest present: ``TrainingSettings`` is a parameter pack of that release's
    ``slicer.parameterNodeWrapper``)."""
    import slicer_harness as harness

    harness.setUpSlicer()
    if harness.currentRelease() is None:
        if not (harness.qtAvailable() and harness.availableReleases()):
            pytest.skip("PairSegTrainerLib needs Slicer's Python files and PySide6 (parameterNodeWrapper)")
        harness.useSlicerRelease(harness.availableReleases()[-1])
    for module in ("PairSeg", "PairSegTrainer"):
        folder = str(ROOT / module)
        if folder not in sys.path:
            sys.path.insert(0, folder)
    import PairSegTrainerLib

    return PairSegTrainerLib


def addVolume(scene, array, name="volume", spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), directions=None):
    import slicer

    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array))
    node.SetSpacing(*spacing)
    node.SetOrigin(*origin)
    if directions is not None:
        node.SetIJKToRASDirections([list(row) for row in directions])
    node.CreateDefaultDisplayNodes()
    return node


def obliqueDirections(angleX=0.3, angleZ=0.5):
    """Columns = IJK axes in RAS: a rotation about z then x (a truly oblique volume)."""
    cz, sz, cx, sx = math.cos(angleZ), math.sin(angleZ), math.cos(angleX), math.sin(angleX)
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    return rx @ rz


def addSegmentation(scene, volumeNode, labels, names, name=None):
    """Segmentation on the volume's grid: segment ``names[value]`` = (labels == value), added in
    the order of ``names`` (so label values are NOT segment indices)."""
    import slicer

    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name or volumeNode.GetName() + " segmentation")
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
    for value, segmentName in names.items():
        node.GetSegmentation().AddEmptySegment(segmentName, segmentName)
        slicer.util.updateSegmentBinaryLabelmapFromArray((labels == value).astype(np.uint8), node,
                                                         segmentName, volumeNode)
    return node


def loadChaosCase(harness, scene, chaosDir, caseId):
    """A CHAOS case loaded the way Slicer loads files, with its labels as named segments."""
    import slicer

    volume = harness.loadVolume(str(chaosDir / f"case_{caseId}_image.nii.gz"), name=f"case_{caseId}")
    labelNode = harness.loadVolume(str(chaosDir / f"case_{caseId}_label.nii.gz"),
                                   name=f"case_{caseId}_labelmap", labelmap=True)
    labels = slicer.util.arrayFromVolume(labelNode).copy()
    segmentation = addSegmentation(scene, volume, labels, CHAOS_SEGMENT_NAMES, f"case_{caseId} segmentation")
    scene.RemoveNode(labelNode)
    return volume, segmentation, labels


def ijkToRas(node):
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def sitkIjkToRas(image):
    """4x4 IJK-to-RAS of a SimpleITK image (LPS -> RAS flips x and y)."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = direction * np.array(image.GetSpacing())[None, :]
    matrix[:3, 3] = image.GetOrigin()
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    return flip @ matrix


@pytest.fixture
def trainerLogic(mrml_scene, tmp_path):
    """A PairSegTrainerCoreLogic on the harness scene with a private model registry."""
    lib = trainerLib()
    from PairSegLib.models import ModelRegistry

    registry = ModelRegistry(tmp_path / "registry" / "registered_models.json")
    return lib.PairSegTrainerCoreLogic(registry=registry)


def engineAvailable():
    try:
        import pairseg.train  # noqa: F401
        import pairseg.cli  # noqa: F401
    except ImportError as error:
        pytest.skip(f"PairSeg engine not importable: {error}")




def makeCatalog(folder, modelPath, name="phantom-organs", modality="MR"):
    """A model catalog in ``folder`` (models.json + the model file, with its real size and SHA-256,
    as ``pairseg.modelfiles.catalog`` checks them) holding ``modelPath`` as ``name``; set
    ``PAIRSEG_MODELS_DIR`` to ``folder`` to use it. Returns the catalog's copy of the model."""
    import hashlib
    import json
    import shutil

    from pairseg.modelfiles.weights import read_metadata

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shipped = folder / (name + ".pairseg")
    shutil.copy(modelPath, shipped)
    data = shipped.read_bytes()
    metadata = read_metadata(modelPath)
    entry = dict(name=name, title="Phantom organs", description="test", version="1", modality=modality,
                 arch=metadata["arch"], file=shipped.name, sha256=hashlib.sha256(data).hexdigest(),
                 file_size_bytes=len(data), classes=[{"name": n, "color": [1, 2, 3], "terminology": {}}
                                                     for n in metadata["class_names"]],
                 spacing_mm=1.0, size=metadata["size"], training_data={}, evaluation={}, cpu_segment_seconds=1.0)
    (folder / "models.json").write_text(json.dumps({"catalog_version": 1, "default": name, "models": [entry]}))
    return shipped
