"""Training sets from the scene: (volume, segmentation) pairs -> image/label files + dataset.json.

Classes are matched to segments BY NAME, by the engine's one class-name rule
(``pairseg.constants.class_key``: case, spaces, ``_`` and ``-`` ignored), never by label value: a
.seg.nrrd's label values say nothing about classes. A mapping ``{segment name: class name}``
overrides the match; mapping a name to ``IGNORE`` ("") leaves that
segment out on purpose. A segment whose name matches no class is an error that lists the names
(reported, never silently dropped).

Label maps are exported in the VOLUME's geometry (``ExportSegmentsToLabelmapNode`` with
``EXTENT_REFERENCE_GEOMETRY``), and both files are written by the PairSeg module's one volume and
label export (``PairSegLib.mrml``), so any orientation (oblique included) and spacing survive
exactly.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from PairSegLib import engine, mrml

constants = engine.torchFreeEngineModule("constants")

IGNORE = ""                 # mapping value: leave this segment out on purpose
MANIFEST = "dataset.json"
GEOMETRY_TOLERANCE = 1e-4   # relative (spacing, directions) and in voxels (lattice offset)


class TrainingSetError(ValueError):
    """The training set cannot be exported; the message names the case and the problem."""


def safeFileName(name: str) -> str:
    text = re.sub(r"[^A-Za-z0-9.+-]+", "_", str(name or "")).strip("._")
    return text or "case"


@dataclass
class TrainingItem:
    """One annotated case: a scalar volume and its segmentation (by node, not by file)."""

    volumeNode: object
    segmentationNode: object = None
    caseName: str = ""
    mapping: dict = field(default_factory=dict)   # per-case overrides {segment name: class}

    @property
    def name(self) -> str:
        if self.caseName:
            return self.caseName
        return self.volumeNode.GetName() if self.volumeNode is not None else "?"


#: attribute set to "1" on a segmentation the user added to a training set (and on its snapshot):
#: the PairSeg module never writes into such a node (the contract between the two modules, defined
#: on the PairSeg side)
TRAINING_SET_ATTRIBUTE = mrml.TRAINING_SET_ATTRIBUTE
#: attribute of a snapshot: the ID of the segmentation node it was copied from
SNAPSHOT_OF_ATTRIBUTE = "PairSeg.TrainingSnapshotOf"
SNAPSHOT_SUFFIX = " (training set copy)"


def isSnapshot(node) -> bool:
    """Whether ``node`` is a training-set snapshot made by ``snapshotSegmentation``."""
    return node is not None and node.GetAttribute(SNAPSHOT_OF_ATTRIBUTE) is not None


def snapshotSegmentation(segmentationNode):
    """A copy of ``segmentationNode`` as it is now, for a training set: a new
    vtkMRMLSegmentationNode in the same scene with a deep copy of the segments (names, colours,
    labels, terminology) and the same parent transform, hidden from node selectors and the data
    tree (``HideFromEditors``) and without display node, saved with the scene. Both nodes get
    ``PairSeg.TrainingSet`` = "1"; the copy names its source in ``PairSeg.TrainingSnapshotOf``.
    A node that already is a snapshot is returned as it is (a snapshot is never edited)."""
    if isSnapshot(segmentationNode):
        return segmentationNode
    import slicer

    scene = segmentationNode.GetScene()
    copy = slicer.vtkMRMLSegmentationNode()   # hidden and complete BEFORE it enters the scene, so
    copy.SetName(scene.GenerateUniqueName(segmentationNode.GetName() + SNAPSHOT_SUFFIX))  # no selector
    copy.SetHideFromEditors(True)                                                        # lists it
    copy.GetSegmentation().DeepCopy(segmentationNode.GetSegmentation())
    copy.SetAttribute(SNAPSHOT_OF_ATTRIBUTE, segmentationNode.GetID())
    copy.SetAttribute(TRAINING_SET_ATTRIBUTE, "1")
    scene.AddNode(copy)
    copy.SetAndObserveTransformNodeID(segmentationNode.GetTransformNodeID())
    segmentationNode.SetAttribute(TRAINING_SET_ATTRIBUTE, "1")
    return copy


def snapshotSource(snapshot):
    """The segmentation node a snapshot was copied from (None when gone or not a snapshot)."""
    if not isSnapshot(snapshot) or snapshot.GetScene() is None:
        return None
    return snapshot.GetScene().GetNodeByID(snapshot.GetAttribute(SNAPSHOT_OF_ATTRIBUTE))


def removeUnusedSnapshots(before, after) -> None:
    """Remove from the scene the snapshots of ``before`` (TrainingItems) that ``after`` no longer
    holds; a source left with no snapshot loses its ``PairSeg.TrainingSet`` mark."""
    kept = {id(item.segmentationNode) for item in after}
    for item in before:
        node = item.segmentationNode
        if not isSnapshot(node) or id(node) in kept or node.GetScene() is None:
            continue
        source = snapshotSource(node)
        scene = node.GetScene()
        scene.RemoveNode(node)
        if source is not None and not any(snapshotSource(i.segmentationNode) is source for i in after):
            source.RemoveAttribute(TRAINING_SET_ATTRIBUTE)


def segmentNames(segmentationNode) -> list:
    """Names of the segments, in the segmentation's order."""
    segmentation = segmentationNode.GetSegmentation()
    return [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]


def matchClass(segmentName: str, classNames, mapping: Optional[dict] = None):
    """Class for one segment: the mapping's entry (exact name, then normalized), else the class
    with the same normalized name, else None (unknown). ``IGNORE`` means left out on purpose."""
    mapping = mapping or {}
    if segmentName in mapping:
        return mapping[segmentName]
    wanted = constants.class_key(segmentName)
    for key, value in mapping.items():
        if constants.class_key(key) == wanted:
            return value
    for className in classNames:
        if constants.class_key(className) == wanted:
            return className
    return None


def classesFromSegments(items, mapping: Optional[dict] = None) -> list:
    """Class list for a new model: mapped or segment names in order of first appearance."""
    classes, seen = [], set()
    for item in items:
        if item.segmentationNode is None:
            continue
        merged = dict(mapping or {})
        merged.update(item.mapping or {})
        for name in segmentNames(item.segmentationNode):
            target = matchClass(name, [], merged)
            target = name if target is None else target
            if target == IGNORE or constants.class_key(target) in seen:
                continue
            seen.add(constants.class_key(target))
            classes.append(target)
    return classes


@dataclass
class ClassReport:
    """How the segments of every case map to classes (the Widget shows it; export enforces it)."""

    classNames: list
    assignments: dict = field(default_factory=dict)   # case -> {segment name: class or IGNORE}
    unknown: dict = field(default_factory=dict)       # case -> [segment names matching no class]
    missing: dict = field(default_factory=dict)       # case -> [classes without any segment]

    @property
    def ok(self) -> bool:
        return not any(self.unknown.values())

    def describeUnknown(self) -> str:
        return "; ".join(f"{case}: {', '.join(repr(n) for n in names)}"
                         for case, names in self.unknown.items() if names)


def classReport(items, classNames, mapping: Optional[dict] = None) -> ClassReport:
    report = ClassReport(list(classNames))
    for item in items:
        if item.segmentationNode is None:
            continue
        merged = dict(mapping or {})
        merged.update(item.mapping or {})
        assigned, unknown = {}, []
        for name in segmentNames(item.segmentationNode):
            target = matchClass(name, classNames, merged)
            if target is not None and target != IGNORE:
                hit = [c for c in classNames if constants.class_key(c) == constants.class_key(target)]
                target = hit[0] if hit else None
            if target is None:
                unknown.append(name)
            else:
                assigned[name] = target
        report.assignments[item.name] = assigned
        report.unknown[item.name] = unknown
        covered = {constants.class_key(c) for c in assigned.values() if c != IGNORE}
        report.missing[item.name] = [c for c in classNames if constants.class_key(c) not in covered]
    return report


# ---------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------


def _matrixToNumpy(matrix) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def volumeIjkToRas(volumeNode) -> np.ndarray:
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return _matrixToNumpy(matrix)


def _segmentGeometries(segmentationNode):
    """(segment name, 4x4 image-to-world matrix, voxel count) of every non-empty segment."""
    import slicer

    found = []
    segmentation = segmentationNode.GetSegmentation()
    for index in range(segmentation.GetNumberOfSegments()):
        segmentId = segmentation.GetNthSegmentID(index)
        segment = segmentation.GetSegment(segmentId)
        image = slicer.vtkOrientedImageData()
        segmentationNode.GetBinaryLabelmapRepresentation(segmentId, image)
        extent = image.GetExtent()
        if extent[1] < extent[0] or extent[3] < extent[2] or extent[5] < extent[4]:
            found.append((segment.GetName(), None, 0))
            continue
        import vtk

        matrix = vtk.vtkMatrix4x4()
        image.GetImageToWorldMatrix(matrix)
        from vtk.util.numpy_support import vtk_to_numpy

        scalars = image.GetPointData().GetScalars()
        count = int(np.count_nonzero(vtk_to_numpy(scalars))) if scalars is not None else 0
        found.append((segment.GetName(), _matrixToNumpy(matrix), count))
    return found


def _describe(matrix: np.ndarray) -> str:
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    return "spacing (" + ", ".join(f"{s:.4g}" for s in spacing) + ") mm, origin (" + \
        ", ".join(f"{o:.4g}" for o in matrix[:3, 3]) + ")"


def checkGeometry(volumeNode, segmentationNode, caseName: str = "") -> None:
    """Raise TrainingSetError unless every painted segment lies on the volume's voxel lattice
    (same spacing and axes, origin shifted by whole voxels). Cropped extents are fine; a
    segmentation drawn on another grid (other spacing, orientation or half-voxel shift) is not:
    exporting it would silently resample the annotation."""
    if volumeNode.GetParentTransformNode() is not segmentationNode.GetParentTransformNode():
        raise TrainingSetError(
            f"{caseName}: volume '{volumeNode.GetName()}' and segmentation '{segmentationNode.GetName()}' "
            "are under different transforms; harden the transforms first")
    volumeMatrix = volumeIjkToRas(volumeNode)
    inverse = np.linalg.inv(volumeMatrix)
    for name, matrix, count in _segmentGeometries(segmentationNode):
        if matrix is None or count == 0:
            continue
        # Segment voxel axes expressed in volume voxel units: identity when on the same lattice.
        relative = inverse @ matrix
        if not np.allclose(relative[:3, :3], np.eye(3), atol=GEOMETRY_TOLERANCE) or \
                not np.allclose(relative[:3, 3], np.round(relative[:3, 3]), atol=1e-3):
            raise TrainingSetError(
                f"{caseName}: geometry mismatch: segment '{name}' of '{segmentationNode.GetName()}' "
                f"was drawn on another voxel grid ({_describe(matrix)}) than volume "
                f"'{volumeNode.GetName()}' ({_describe(volumeMatrix)}); pick the volume it was "
                "segmented on, or resample the segmentation onto this volume first")


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------


def removeNode(scene, node) -> None:
    """Remove a temporary node with its display and storage nodes."""
    if node is None or node.GetScene() is None:
        return
    extra = []
    if hasattr(node, "GetNumberOfDisplayNodes"):
        extra += [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
    if hasattr(node, "GetNumberOfStorageNodes"):
        extra += [node.GetNthStorageNode(i) for i in range(node.GetNumberOfStorageNodes())]
    scene.RemoveNode(node)
    for other in extra:
        if other is not None and other.GetScene() is not None:
            scene.RemoveNode(other)


def _nodeIds(scene, className) -> set:
    nodes = scene.GetNodesByClass(className)
    return {nodes.GetItemAsObject(i).GetID() for i in range(nodes.GetNumberOfItems())}


def _scene(node):
    scene = node.GetScene()
    if scene is None:
        raise TrainingSetError(f"node '{node.GetName()}' is not in a scene")
    return scene


def checkItems(items, classNames=None, mapping=None) -> ClassReport:
    """All checks of ``exportTrainingSet`` that need no writing; returns the class report."""
    items = list(items or [])
    if not items:
        raise TrainingSetError("the training set is empty: add at least one (volume, segmentation) pair")
    names = set()
    for index, item in enumerate(items):
        label = f"case {index + 1}"
        if item.volumeNode is None:
            raise TrainingSetError(f"{label}: no volume selected")
        label = f"case {index + 1} ('{item.name}')"
        if not item.volumeNode.IsA("vtkMRMLScalarVolumeNode") or item.volumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
            raise TrainingSetError(f"{label}: '{item.volumeNode.GetName()}' is not a scalar image volume")
        if item.volumeNode.GetImageData() is None:
            raise TrainingSetError(f"{label}: volume '{item.volumeNode.GetName()}' holds no image data")
        if item.volumeNode.GetImageData().GetNumberOfScalarComponents() != 1:
            raise TrainingSetError(f"{label}: volume '{item.volumeNode.GetName()}' has several components; "
                                   "use a single-channel (grey-level) volume")
        dims = item.volumeNode.GetImageData().GetDimensions()
        if min(dims) < 1 or dims[2] < 3:
            raise TrainingSetError(f"{label}: volume '{item.volumeNode.GetName()}' has {dims[2]} slices; "
                                   "2.5D training needs at least 3")
        if item.segmentationNode is None:
            raise TrainingSetError(f"{label}: volume '{item.volumeNode.GetName()}' has no segmentation; "
                                   "pick the segmentation that annotates it")
        if not item.segmentationNode.IsA("vtkMRMLSegmentationNode"):
            raise TrainingSetError(f"{label}: '{item.segmentationNode.GetName()}' is not a segmentation")
        if item.segmentationNode.GetSegmentation().GetNumberOfSegments() == 0:
            raise TrainingSetError(f"{label}: segmentation '{item.segmentationNode.GetName()}' has no segments")
        key = constants.class_key(safeFileName(item.name))
        if key in names:
            raise TrainingSetError(f"{label}: two cases are named '{item.name}'; rename one volume")
        names.add(key)
    if classNames is None:
        classNames = classesFromSegments(items, mapping)
    classNames = [str(c) for c in classNames]
    if not classNames:
        raise TrainingSetError("no class: every segment is ignored")
    if len({constants.class_key(c) for c in classNames}) != len(classNames):
        raise TrainingSetError(f"duplicate class names in {classNames}")
    report = classReport(items, classNames, mapping)
    if not report.ok:
        raise TrainingSetError(
            "segment names that match no class (rename the segments, map them to a class, or "
            f"map them to ignore): {report.describeUnknown()}; classes are {classNames}")
    for item in items:
        checkGeometry(item.volumeNode, item.segmentationNode, f"case '{item.name}'")
    return report


def exportLabelArray(item, classNames, assignments: dict) -> np.ndarray:
    """Label map (z, y, x uint8, class k -> value k) of one case, in the volume's geometry."""
    import slicer
    import vtk

    segmentation = item.segmentationNode.GetSegmentation()
    byName = {segmentation.GetNthSegment(i).GetName(): segmentation.GetNthSegmentID(i)
              for i in range(segmentation.GetNumberOfSegments())}
    ids = vtk.vtkStringArray()
    lookup = [0]   # exported value (1..n, in ids order) -> class value
    for segmentName, className in assignments.items():
        if className == IGNORE:
            continue
        ids.InsertNextValue(byName[segmentName])
        lookup.append(1 + [constants.class_key(c) for c in classNames].index(constants.class_key(className)))
    dims = item.volumeNode.GetImageData().GetDimensions()
    if ids.GetNumberOfValues() == 0:
        return np.zeros(dims[::-1], np.uint8)
    scene = _scene(item.volumeNode)
    colorTablesBefore = _nodeIds(scene, "vtkMRMLColorTableNode")
    labelNode = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__pairseg_export__")
    try:
        ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            item.segmentationNode, ids, labelNode, item.volumeNode,
            slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
        if not ok:
            raise TrainingSetError(f"case '{item.name}': exporting the segmentation to a label map failed")
        exported = slicer.util.arrayFromVolume(labelNode).copy()
        if not np.allclose(volumeIjkToRas(labelNode), volumeIjkToRas(item.volumeNode), atol=1e-6):
            raise TrainingSetError(f"case '{item.name}': label map geometry differs from the volume's")
    finally:
        removeNode(scene, labelNode)
        # the export makes a colour table for the label map: not ours to keep
        for nodeId in _nodeIds(scene, "vtkMRMLColorTableNode") - colorTablesBefore:
            removeNode(scene, scene.GetNodeByID(nodeId))
    if exported.shape != tuple(dims[::-1]):
        raise TrainingSetError(f"case '{item.name}': label map shape {exported.shape} differs from "
                               f"the volume's {tuple(dims[::-1])}")
    table = np.asarray(lookup, np.uint8)
    if exported.max() >= len(table) or exported.min() < 0:
        raise TrainingSetError(f"case '{item.name}': unexpected label value {exported.max()} in the export")
    return table[exported.astype(np.int64)]


def writeVolume(volumeNode, path: Path) -> None:
    """Write a volume node to ``path`` (the PairSeg module's ``mrml.exportVolume``: geometry exact,
    compressed); TrainingSetError when writing fails."""
    from PairSegLib import mrml

    try:
        mrml.exportVolume(volumeNode, path, compress=True)
    except IOError as error:
        raise TrainingSetError(str(error)) from error


def exportTrainingSet(items, folder, classNames=None, mapping=None, modality: str = "MR",
                      extension: str = ".nrrd", name: str = "PairSeg training set") -> dict:
    """Write ``<case>_image<ext>``, ``<case>_label<ext>`` per item and ``dataset.json`` into
    ``folder``; returns the manifest (with ``"path"`` added). Raises TrainingSetError."""
    modality = str(modality).upper()
    if modality not in ("MR", "CT"):
        raise TrainingSetError(f"modality must be MR or CT, got {modality!r}")
    if not extension.startswith("."):
        extension = "." + extension
    from PairSegLib import mrml

    items = list(items or [])
    report = checkItems(items, classNames, mapping)
    classNames = report.classNames
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for item in items:
        case = safeFileName(item.name)
        labels = exportLabelArray(item, classNames, report.assignments[item.name])
        if not labels.any():
            raise TrainingSetError(
                f"case '{item.name}': no labelled voxel inside volume '{item.volumeNode.GetName()}' "
                "(empty segments, or a segmentation that does not overlap the volume)")
        imagePath = folder / f"{case}_image{extension}"
        labelPath = folder / f"{case}_label{extension}"
        writeVolume(item.volumeNode, imagePath)
        mrml.writeLabelArray(labels, item.volumeNode, labelPath)
        counts = np.bincount(labels.ravel(), minlength=len(classNames) + 1)
        entries.append({
            "image": f"./{imagePath.name}", "label": f"./{labelPath.name}", "case": case,
            "volume": item.volumeNode.GetName(), "segmentation": item.segmentationNode.GetName(),
            "segments": report.assignments[item.name],
            "voxels": {c: int(counts[i + 1]) for i, c in enumerate(classNames)},
        })
    manifest = {
        "name": name,
        "description": "Exported from a 3D Slicer scene by PairSegTrainer",
        "tensorImageSize": "3D",
        "modality": {"0": modality},
        "labels": {"0": "background", **{str(i + 1): c for i, c in enumerate(classNames)}},
        "numTraining": len(entries),
        "training": entries,
        "test": [],
        "pairseg": {"exported": datetime.datetime.now().isoformat(timespec="seconds"),
                    "classMapping": dict(mapping or {}),
                    "missingClasses": {k: v for k, v in report.missing.items() if v}},
    }
    path = folder / MANIFEST
    try:
        engine.torchFreeEngineModule("atomic").write_json(path, manifest, "training set manifest")
    except ValueError as error:  # PairSegOutputError naming the file and the reason
        raise TrainingSetError(str(error)) from error
    manifest["path"] = str(path)
    return manifest
