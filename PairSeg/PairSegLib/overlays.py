"""Overlays of the PairSeg module: comparison with a reference (label arrays, boundary-distance
overlay) and the uncertainty overlay of a segmentation run (where to look first)."""

import numpy as np
import slicer
import vtk
from scipy import ndimage

from .mrml import SOURCE_VOLUME_REFERENCE, findSegmentByName, placeBeside

DISTANCE_COLOR_NODE_NAME = "PairSeg boundary distance"
UNCERTAINTY_COLOR_NODE_NAME = "PairSeg uncertainty"
UNCERTAINTY_ATTRIBUTE = "PairSeg.Uncertainty"
#: entries of the overlay colour tables
COLOR_LEVELS = 256
#: the uncertainty (bits) shown fully opaque: one class undecided (p = 0.5) is 1 bit
UNCERTAINTY_OPAQUE_BITS = 1.0


def referenceGeometryVolume(segmentationNode):
    """(volume node, temporary) giving the segmentation's reference geometry.

    Uses the volume the segmentation references; else a temporary labelmap exported in the
    reference geometry, which the caller must remove (``temporary`` is True).
    """
    role = segmentationNode.GetReferenceImageGeometryReferenceRole() \
        if hasattr(segmentationNode, "GetReferenceImageGeometryReferenceRole") else "referenceImageGeometryRef"
    volumeNode = segmentationNode.GetNodeReference(role)
    if volumeNode is not None and volumeNode.GetImageData() is not None:
        return volumeNode, False
    labelNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__PairSegGeometry__")
    labelNode.SetHideFromEditors(True)
    ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportAllSegmentsToLabelmapNode(
        segmentationNode, labelNode, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
    if not ok or labelNode.GetImageData() is None:
        slicer.mrmlScene.RemoveNode(labelNode)
        raise ValueError(f"Segmentation '{segmentationNode.GetName()}' has no reference geometry.")
    return labelNode, True


def labelArray(segmentationNode, segmentIds, referenceVolumeNode):
    """A (z, y, x) label map: segmentIds[k] -> k + 1, in the reference volume's voxel grid."""
    shape = slicer.util.arrayFromVolume(referenceVolumeNode).shape
    labels = np.zeros(shape, np.uint8 if len(segmentIds) < 255 else np.uint16)
    for index, segmentId in enumerate(segmentIds):
        if segmentId is None:
            continue
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, referenceVolumeNode)
        labels[np.asarray(mask) > 0] = index + 1
    return labels


def matchSegments(segmentationNode, referenceSegmentationNode):
    """[(name, predicted segment ID, reference segment ID)] for segments named alike."""
    prediction = segmentationNode.GetSegmentation()
    reference = referenceSegmentationNode.GetSegmentation()
    matches = []
    for index in range(prediction.GetNumberOfSegments()):
        segment = prediction.GetNthSegment(index)
        referenceId = findSegmentByName(reference, segment.GetName())
        if referenceId is not None:
            matches.append((segment.GetName(), prediction.GetNthSegmentID(index), referenceId))
    return matches


def boundary(mask):
    """Voxels of ``mask`` that touch the background (6-connectivity)."""
    mask = np.asarray(mask, bool)
    if not mask.any():
        return mask
    return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(3, 1),
                                          border_value=0)


def boundaryDistanceMap(predictedLabels, referenceLabels, spacingZyx, numberOfClasses):
    """Float32 map: on each predicted boundary voxel, its distance (mm) to the reference surface
    of the same class; -1 elsewhere (and for classes missing from either label map)."""
    distances = np.full(predictedLabels.shape, -1.0, np.float32)
    for label in range(1, numberOfClasses + 1):
        predictedBoundary = boundary(predictedLabels == label)
        referenceBoundary = boundary(referenceLabels == label)
        if not predictedBoundary.any() or not referenceBoundary.any():
            continue
        toReference = ndimage.distance_transform_edt(~referenceBoundary, sampling=spacingZyx)
        distances[predictedBoundary] = toReference[predictedBoundary].astype(np.float32)
    return distances


def colorTableNode(name, colors, scene=None):
    """The colour table node ``name`` of ``scene`` (default: ``slicer.mrmlScene``), reused when
    present, else made from ``colors``: ``[(entry name, red, green, blue, alpha)]``, components
    0..1."""
    scene = scene or slicer.mrmlScene
    existing = scene.GetFirstNodeByName(name)
    if existing is not None and existing.IsA("vtkMRMLColorTableNode"):
        return existing
    colorNode = scene.AddNewNodeByClass("vtkMRMLColorTableNode", name)
    colorNode.SetTypeToUser()
    colorNode.SetNumberOfColors(len(colors))
    for index, (entryName, red, green, blue, alpha) in enumerate(colors):
        colorNode.SetColor(index, entryName, red, green, blue, alpha)
    return colorNode


def distanceColorNode():
    """A colour table for distances: 0 mm green, through yellow, to red; reused when present."""
    colors = []
    for t in np.linspace(0.0, 1.0, COLOR_LEVELS):
        red, green = (2 * t, 1.0) if t < 0.5 else (1.0, 2 * (1 - t))
        colors.append((f"{t:.2f}", min(red, 1.0), min(green, 1.0), 0.0, 1.0))
    return colorTableNode(DISTANCE_COLOR_NODE_NAME, colors)


def addDistanceVolume(distances, referenceVolumeNode, name, maximumDistance=None):
    """Scalar volume of ``distances`` in the reference geometry, coloured, negatives transparent."""
    ijkToRas = vtk.vtkMatrix4x4()
    referenceVolumeNode.GetIJKToRASMatrix(ijkToRas)
    volumeNode = slicer.util.addVolumeFromArray(distances, ijkToRAS=ijkToRas, name=name)
    if referenceVolumeNode.GetParentTransformNode() is not None:
        volumeNode.SetAndObserveTransformNodeID(referenceVolumeNode.GetParentTransformNode().GetID())
    volumeNode.CreateDefaultDisplayNodes()
    displayNode = volumeNode.GetDisplayNode()
    valid = distances[distances >= 0]
    if maximumDistance is None:
        maximumDistance = float(max(5.0, np.percentile(valid, 98))) if valid.size else 10.0
    displayNode.SetAndObserveColorNodeID(distanceColorNode().GetID())
    displayNode.AutoWindowLevelOff()
    displayNode.SetWindowLevelMinMax(0.0, maximumDistance)
    displayNode.SetApplyThreshold(True)
    displayNode.SetLowerThreshold(0.0)
    displayNode.SetUpperThreshold(float(distances.max()) + 1.0)
    displayNode.SetInterpolate(False)
    volumeNode.SetAttribute("PairSeg.BoundaryDistance", "1")
    return volumeNode


def showAsForeground(volumeNode, opacity=1.0):
    """Show ``volumeNode`` as the foreground layer of every slice view."""
    scene = slicer.mrmlScene
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        compositeNode = scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode")
        compositeNode.SetForegroundVolumeID(volumeNode.GetID())
        compositeNode.SetForegroundOpacity(opacity)


def showAboveSegmentations(volumeNode, segmentationNodes):
    """Show ``volumeNode`` (the boundary-distance map) as the foreground of every slice view and make
    it visible there: Slicer draws segmentations above all volume layers, so the 2D fill of each
    segmentation in ``segmentationNodes`` is turned off (outlines stay)."""
    showAsForeground(volumeNode)
    for segmentationNode in segmentationNodes:
        displayNode = segmentationNode.GetDisplayNode() if segmentationNode is not None else None
        if displayNode is not None:
            displayNode.SetVisibility2DFill(False)
            displayNode.SetVisibility2DOutline(True)


def uncertaintyColorNode():
    """The uncertainty colour table: orange whose opacity grows from 0 (certain: the image shows
    through) to 1 (``UNCERTAINTY_OPAQUE_BITS`` and above); reused when present."""
    return colorTableNode(UNCERTAINTY_COLOR_NODE_NAME, [(f"{t:.2f} bit", 1.0, 0.45, 0.0, float(t))
                                                        for t in np.linspace(0.0, 1.0, COLOR_LEVELS)])


def uncertaintyVolume(volumeNode):
    """The uncertainty node PairSeg made for ``volumeNode`` (attribute ``PairSeg.Uncertainty``,
    node reference ``PairSeg.sourceVolume``), or None."""
    scene = slicer.mrmlScene
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLScalarVolumeNode")
        if node.GetAttribute(UNCERTAINTY_ATTRIBUTE) == "1" and \
                node.GetNodeReference(SOURCE_VOLUME_REFERENCE) is volumeNode:
            return node
    return None


def setUncertaintyVolume(uncertainty, volumeNode):
    """Show ``uncertainty`` ((k, j, i) float32 bits on ``volumeNode``'s grid, ``pairseg segment
    --uncertainty``) as the scalar volume "<volume> uncertainty": the one PairSeg made for this
    volume is updated in place (a rerun replaces it, same node), else a new one is added beside
    the volume (same geometry and parent transform). Coloured by ``uncertaintyColorNode`` (window
    0..``UNCERTAINTY_OPAQUE_BITS``), shown as every slice view's foreground. Returns the node."""
    node = uncertaintyVolume(volumeNode)
    ijkToRas = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(ijkToRas)
    name = f"{volumeNode.GetName()} uncertainty"
    if node is None:
        node = slicer.util.addVolumeFromArray(np.ascontiguousarray(uncertainty, np.float32), ijkToRAS=ijkToRas,
                                              name=name)
        node.SetAttribute(UNCERTAINTY_ATTRIBUTE, "1")
        node.SetNodeReferenceID(SOURCE_VOLUME_REFERENCE, volumeNode.GetID())
    else:
        node.SetName(name)
        node.SetIJKToRASMatrix(ijkToRas)
        slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(uncertainty, np.float32))
    node.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
    placeBeside(node, volumeNode)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    displayNode = node.GetDisplayNode()
    displayNode.SetAndObserveColorNodeID(uncertaintyColorNode().GetID())
    displayNode.AutoWindowLevelOff()
    displayNode.SetWindowLevelMinMax(0.0, UNCERTAINTY_OPAQUE_BITS)
    displayNode.SetInterpolate(False)
    showAsForeground(node)
    return node
