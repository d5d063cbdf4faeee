"""Comparison of a segmentation with a reference: label arrays, boundary-distance overlay."""

import numpy as np
import slicer
import vtk
from scipy import ndimage

from .mrml import findSegmentByName

DISTANCE_COLOR_NODE_NAME = "PairSeg boundary distance"


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


def distanceColorNode():
    """A colour table for distances: 0 mm green, through yellow, to red; reused when present."""
    scene = slicer.mrmlScene
    existing = scene.GetFirstNodeByName(DISTANCE_COLOR_NODE_NAME)
    if existing is not None and existing.IsA("vtkMRMLColorTableNode"):
        return existing
    colorNode = scene.AddNewNodeByClass("vtkMRMLColorTableNode", DISTANCE_COLOR_NODE_NAME)
    colorNode.SetTypeToUser()
    count = 256
    colorNode.SetNumberOfColors(count)
    for index in range(count):
        t = index / (count - 1)
        red, green = (2 * t, 1.0) if t < 0.5 else (1.0, 2 * (1 - t))
        colorNode.SetColor(index, f"{t:.2f}", min(red, 1.0), min(green, 1.0), 0.0, 1.0)
    return colorNode


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
