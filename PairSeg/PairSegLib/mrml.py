"""MRML <-> engine files: volume export with exact geometry, label import as segments.

Everything here runs on the main thread (MRML is not thread-safe). Nothing is added to the
scene until the caller applies a finished result, so failures leave the scene as it was.
"""

import os

import numpy as np
import slicer
import vtk

from .terminology import setSegmentTerminology

GEOMETRY_TOLERANCE = 1e-3

# The node-attribute contract between PairSeg and PairSegTrainer (docs/architecture.md, "Which
# segmentations PairSeg may write into"):
#: attribute PairSeg writes on every segmentation it fills: the ``segmentationFingerprint`` right after
FINGERPRINT_ATTRIBUTE = "PairSeg.Fingerprint"
#: attribute "1" that PairSegTrainer's addToTrainingSet sets on a segmentation it put in a training set
TRAINING_SET_ATTRIBUTE = "PairSeg.TrainingSet"
#: node reference from a segmentation PairSeg filled to the volume it segmented
SOURCE_VOLUME_REFERENCE = "PairSeg.sourceVolume"


class InputError(ValueError):
    """Bad input from the user: the message says what is wrong and what to do."""


def checkInputVolume(volumeNode):
    """Raise InputError unless ``volumeNode`` is a 3D single-component scalar volume with data."""
    if volumeNode is None:
        raise InputError("No input volume selected.")
    if not volumeNode.IsA("vtkMRMLScalarVolumeNode") or volumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
        raise InputError(f"'{volumeNode.GetName()}' is not a grey-level (scalar) volume: "
                         "select an MR or CT image volume.")
    imageData = volumeNode.GetImageData()
    if imageData is None or imageData.GetNumberOfPoints() == 0:
        raise InputError(f"Volume '{volumeNode.GetName()}' has no image data.")
    if imageData.GetNumberOfScalarComponents() != 1:
        raise InputError(f"Volume '{volumeNode.GetName()}' has {imageData.GetNumberOfScalarComponents()} "
                         "components per voxel: PairSeg needs a single-component (grey-level) volume.")
    dimensions = imageData.GetDimensions()
    if min(dimensions) < 2:
        raise InputError(f"Volume '{volumeNode.GetName()}' is 2D ({dimensions[0]} x {dimensions[1]} x "
                         f"{dimensions[2]} voxels): PairSeg needs a 3D volume with several slices.")
    return dimensions


def volumeModality(volumeNode):
    """'CT', 'MR' or None: from DICOM attributes when present, else a conservative intensity guess."""
    shNode = slicer.mrmlScene.GetSubjectHierarchyNode() if slicer.mrmlScene else None
    modality = volumeNode.GetAttribute("DICOM.Modality")
    if not modality and shNode is not None:
        itemId = shNode.GetItemByDataNode(volumeNode)
        while itemId and not modality:
            modality = shNode.GetItemAttribute(itemId, "DICOM.Modality")
            itemId = shNode.GetItemParent(itemId)
    if modality:
        modality = modality.upper()
        return "MR" if modality in ("MR", "MRI") else modality
    array = slicer.util.arrayFromVolume(volumeNode)
    sample = array[:: max(1, array.shape[0] // 8)].ravel()[::7]
    if sample.size and np.mean(sample < -500) > 0.01:  # air in Hounsfield units
        return "CT"
    return None


def checkModality(volumeNode, modelModality):
    """Raise InputError when the volume is clearly of another modality than the model's."""
    modelModality = str(modelModality or "").upper()
    if not modelModality:
        return
    volumeKind = volumeModality(volumeNode)
    if volumeKind and volumeKind != modelModality and volumeKind in ("CT", "MR"):
        raise InputError(f"The model was trained on {modelModality} images, but '{volumeNode.GetName()}' "
                         f"is a {volumeKind} image: choose a {volumeKind} model.")
    if modelModality == "CT" and volumeKind is None:
        low = float(slicer.util.arrayFromVolume(volumeNode).min())
        if low > -100:
            raise InputError(f"The model was trained on CT images (Hounsfield units), but "
                             f"'{volumeNode.GetName()}' has no air-like values (minimum {low:g}): it does not "
                             "look like a CT image in Hounsfield units.")


def exportVolume(volumeNode, path, compress=False):
    """Write the volume's voxels and geometry (IJK-to-RAS, without parent transforms) to ``path``
    through a storage node that is never added to the scene, atomically (``pairseg.atomic``: a
    temporary beside ``path``, flushed, then renamed). IOError naming ``path`` when writing fails.

    The one volume export of both modules (engine inputs, training sets): the file holds the
    node's voxels in the node's IJK order, so results written on its grid come back exactly."""
    from PairSegLib.engine import torchFreeEngineModule

    atomic = torchFreeEngineModule("atomic")  # written whole, or not at all (the engine's one write path)

    def write(temporary):
        storageNode = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storageNode.SetFileName(temporary)
        storageNode.SetUseCompression(bool(compress))
        if not storageNode.WriteData(volumeNode):
            raise OSError(f"Could not write volume '{volumeNode.GetName()}' to {path}")

    try:
        atomic.atomic_write(path, write, what=f"volume '{volumeNode.GetName()}'")
    except ValueError as error:  # PairSegOutputError: names the path and the reason
        raise IOError(str(error)) from error
    return path


def ijkToLps(volumeNode):
    """The volume's IJK-to-LPS matrix (4 x 4 numpy), the convention of the engine's files."""
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ slicer.util.arrayFromVTKMatrix(matrix)


def sliceCentreRas(volumeNode, sliceIndex):
    """World RAS (mm, the volume's parent transforms applied) of the centre of slice
    ``sliceIndex`` (the K index, the first axis of the engine's arrays) of ``volumeNode``."""
    dimensions = volumeNode.GetImageData().GetDimensions()
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    point = matrix.MultiplyPoint(((dimensions[0] - 1) / 2.0, (dimensions[1] - 1) / 2.0, float(sliceIndex), 1.0))[:3]
    parent = volumeNode.GetParentTransformNode()
    if parent is not None:
        toWorld = vtk.vtkGeneralTransform()
        parent.GetTransformToWorld(toWorld)
        point = toWorld.TransformPoint(point)
    return tuple(float(value) for value in point)


def jumpToSlice(volumeNode, sliceIndex):
    """Centre every slice view on slice ``sliceIndex`` of ``volumeNode`` (``sliceCentreRas``;
    ``vtkMRMLSliceNode.JumpAllSlices``, centred); returns that RAS point."""
    point = sliceCentreRas(volumeNode, sliceIndex)
    slicer.vtkMRMLSliceNode.JumpAllSlices(volumeNode.GetScene() or slicer.mrmlScene, *point,
                                          slicer.vtkMRMLSliceNode.CenteredJumpSlice)
    return point


def _fileIjkToLps(image):
    matrix = np.eye(4)
    matrix[:3, :3] = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
    matrix[:3, 3] = image.GetOrigin()
    return matrix


def readArrayOnGrid(path, expectedIjkToLps, dimensions):
    """Voxels of an image file as a (k, j, i) numpy array on exactly the grid ``expectedIjkToLps``
    (4 x 4, IJK to LPS) with ``dimensions`` (i, j, k). IOError when the file is unreadable or its
    voxels do not sit exactly on that grid.

    The file may store the same voxel lattice in another axis order or direction (Slicer's reader
    reorders left-handed files; SimpleITK does not): such a file is mapped by transposing and
    flipping axes, never by resampling."""
    import SimpleITK as sitk

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise IOError(f"{path} does not exist.")
    try:
        image = sitk.ReadImage(path)
    except RuntimeError as error:
        raise IOError(f"{path} could not be read as an image.") from error
    dimensions = tuple(int(d) for d in dimensions)
    mismatch = IOError(f"{path} does not have the expected voxel grid ({dimensions[0]} x {dimensions[1]} x "
                       f"{dimensions[2]} voxels, same spacing, directions and origin).")
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise mismatch
    relative = np.linalg.inv(expectedIjkToLps) @ _fileIjkToLps(image)  # file index -> expected index
    axes = np.rint(relative[:3, :3])
    if np.abs(relative[:3, :3] - axes).max() > GEOMETRY_TOLERANCE or \
            sorted(np.abs(axes).sum(axis=0).tolist()) != [1.0, 1.0, 1.0] or \
            sorted(np.abs(axes).sum(axis=1).tolist()) != [1.0, 1.0, 1.0]:
        raise mismatch
    voxels = sitk.GetArrayFromImage(image).transpose(2, 1, 0)  # indexed (file i, j, k)
    order = [int(np.flatnonzero(axes[row])[0]) for row in range(3)]
    voxels = voxels.transpose(order)
    for row in range(3):
        sign = axes[row, order[row]]
        expectedOffset = 0.0 if sign > 0 else dimensions[row] - 1.0
        if abs(relative[row, 3] - expectedOffset) > GEOMETRY_TOLERANCE:
            raise mismatch
        if sign < 0:
            voxels = np.flip(voxels, axis=row)
    if voxels.shape != dimensions:
        raise mismatch
    return np.ascontiguousarray(voxels.transpose(2, 1, 0))


def readLabelImage(path, referenceVolumeNode, numberOfClasses):
    """Read a label map file as vtkOrientedImageData in exactly the reference volume's voxel grid.

    The one label import of both modules (engine results, the embedded sample's expert labels).
    IOError when the file is missing or unreadable, is not on the volume's grid, or holds labels
    outside 0..numberOfClasses."""
    from vtk.util import numpy_support

    dimensions = referenceVolumeNode.GetImageData().GetDimensions()
    try:
        labels = readArrayOnGrid(path, ijkToLps(referenceVolumeNode), dimensions)
    except IOError as error:
        if not os.path.isfile(os.fspath(path)):
            raise IOError(f"The engine wrote no result ({path}).") from error
        raise IOError(f"{error} The label map does not have the input volume's geometry.") from error
    if labels.size and (labels.min() < 0 or labels.max() > numberOfClasses):
        raise IOError(f"{path} holds label {labels.max()}, but there are {numberOfClasses} classes.")
    dtype = np.uint8 if numberOfClasses < 256 else np.uint16
    flat = np.ascontiguousarray(labels.astype(dtype)).ravel()
    orientedImage = slicer.vtkOrientedImageData()
    orientedImage.SetDimensions(*dimensions)
    orientedImage.GetPointData().SetScalars(numpy_support.numpy_to_vtk(flat, deep=True))
    ijkToRas = vtk.vtkMatrix4x4()
    referenceVolumeNode.GetIJKToRASMatrix(ijkToRas)
    orientedImage.SetImageToWorldMatrix(ijkToRas)  # exactly the input's geometry
    return orientedImage


def writeLabelArray(labels, referenceVolumeNode, path):
    """Write ``labels`` ((k, j, i) integers, the volume's voxel order) with the reference volume's
    geometry (IJK order kept, like ``exportVolume``), without touching the scene."""
    import SimpleITK as sitk

    labels = np.asarray(labels)
    dimensions = referenceVolumeNode.GetImageData().GetDimensions()
    if labels.shape != tuple(reversed(dimensions)):
        raise ValueError(f"label array {labels.shape} does not fit volume '{referenceVolumeNode.GetName()}' "
                         f"{tuple(reversed(dimensions))}")
    matrix = ijkToLps(referenceVolumeNode)
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(labels.astype(np.uint8 if labels.max(initial=0) < 256
                                                                      else np.uint16)))
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in matrix[:3, 3]])
    image.SetDirection([float(d) for d in (matrix[:3, :3] / spacing).ravel()])
    sitk.WriteImage(image, os.fspath(path), True)
    return path


def buildSegments(labelImage, classNames, classColors, labelValues=None):
    """One vtkSegment per class, sharing one labelmap; named, coloured, coded. Class k has label
    value ``labelValues[k]`` (default k + 1)."""
    binaryName = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    segments = []
    for index, name in enumerate(classNames):
        segment = slicer.vtkSegment()
        segment.SetName(str(name))
        color = classColors[index] if classColors and index < len(classColors) else (0.5, 0.5, 0.5)
        segment.SetColor(*[float(c) for c in color[:3]])
        segment.AddRepresentation(binaryName, labelImage)
        segment.SetLabelValue(int(labelValues[index]) if labelValues else index + 1)
        setSegmentTerminology(segment, name)
        segments.append(segment)
    return segments


def findSegmentByName(segmentation, name):
    """ID of the first segment whose name matches ``name`` (case and spaces ignored), or None."""
    wanted = " ".join(str(name).lower().replace("_", " ").split())
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        if " ".join(segment.GetName().lower().replace("_", " ").split()) == wanted:
            return segmentation.GetNthSegmentID(index)
    return None


def applySegments(segmentationNode, segments):
    """Add the segments; a segment with the same name is replaced in place (same ID and position).

    Other segments of the segmentation are not modified.
    """
    segmentation = segmentationNode.GetSegmentation()
    wasModifying = segmentationNode.StartModify()
    try:
        for segment in segments:
            existingId = findSegmentByName(segmentation, segment.GetName())
            if existingId is None:
                segmentation.AddSegment(segment)
                continue
            index = segmentation.GetSegmentIndex(existingId)
            segmentation.RemoveSegment(existingId)
            insertBefore = segmentation.GetNthSegmentID(index) if index < segmentation.GetNumberOfSegments() else ""
            segmentation.AddSegment(segment, existingId, insertBefore or "")
    finally:
        segmentationNode.EndModify(wasModifying)


def placeBeside(node, referenceNode):
    """Put ``node``'s subject-hierarchy item under the same parent (study) as ``referenceNode``'s."""
    shNode = slicer.mrmlScene.GetSubjectHierarchyNode()
    if shNode is None:
        return
    referenceItem = shNode.GetItemByDataNode(referenceNode)
    if not referenceItem:
        return
    parent = shNode.GetItemParent(referenceItem)
    item = shNode.GetItemByDataNode(node)
    if not item:
        item = shNode.CreateItem(parent, node)
    elif shNode.GetItemParent(item) != parent:
        shNode.SetItemParent(item, parent)


def versionedName(base, scene=None):
    """``base`` when no node of the scene has that name, else "``base`` 2", "``base`` 3", ... (the
    first free one)."""
    scene = scene or slicer.mrmlScene
    taken = {scene.GetNthNode(i).GetName() for i in range(scene.GetNumberOfNodes())}
    if base not in taken:
        return base
    version = 2
    while f"{base} {version}" in taken:
        version += 1
    return f"{base} {version}"


def newSegmentationNode(volumeNode, name=None):
    """A segmentation node for ``volumeNode``: reference geometry, parent transform, SH placement
    (beside the volume). Default name "<volume> PairSeg", versioned ("... 2") when taken."""
    scene = slicer.mrmlScene
    name = name or versionedName(f"{volumeNode.GetName()} PairSeg", scene)
    segmentationNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    segmentationNode.CreateDefaultDisplayNodes()
    prepareSegmentationNode(segmentationNode, volumeNode)
    return segmentationNode


def prepareSegmentationNode(segmentationNode, volumeNode):
    segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
    if volumeNode.GetParentTransformNode() is not None and segmentationNode.GetParentTransformNode() is None:
        segmentationNode.SetAndObserveTransformNodeID(volumeNode.GetParentTransformNode().GetID())
    placeBeside(segmentationNode, volumeNode)


def keepLabels(labelImage, labelValues):
    """Set to 0, in place, every voxel of ``labelImage`` (vtkOrientedImageData) whose label is not in
    ``labelValues``; returns ``labelImage``."""
    from vtk.util import numpy_support

    scalars = labelImage.GetPointData().GetScalars()
    voxels = numpy_support.vtk_to_numpy(scalars)
    voxels[~np.isin(voxels, np.asarray(list(labelValues), voxels.dtype))] = 0
    scalars.Modified()
    labelImage.Modified()
    return labelImage


def _hashMatrix(digest, matrix):
    digest.update(",".join(f"{matrix.GetElement(r, c):.6g}" for r in range(4) for c in range(4)).encode())


def segmentationFingerprint(segmentationNode):
    """SHA-256 (hex) of what an edit of a segmentation changes: each segment's ID, name, label value
    and binary-labelmap voxels.

    The voxels enter as each segment's mask cropped to its non-empty box, with that box's place in
    world coordinates, so the value does not depend on the labelmap's extent (the Segment Editor
    grows and shrinks it) and is the same for the same labels on the same grid; colour, opacity and
    other representations (a closed surface for 3D) do not enter. Slicer's own modified times are not
    used: a scene reload resets them, and undoing an edit does not."""
    from vtk.util import numpy_support
    import hashlib

    digest = hashlib.sha256()
    segmentation = segmentationNode.GetSegmentation()
    binaryName = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        digest.update(f"|{segmentation.GetNthSegmentID(index)}|{segment.GetName()}|{segment.GetLabelValue()}|".encode())
        image = segment.GetRepresentation(binaryName)
        if image is None or image.GetPointData().GetScalars() is None:
            digest.update(b"no labelmap")
            continue
        extent = image.GetExtent()
        shape = (extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1)
        if min(shape) <= 0:
            digest.update(b"empty")
            continue
        voxels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(shape)
        mask = voxels == segment.GetLabelValue()
        if not mask.any():
            digest.update(b"empty")
            continue
        corners = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
        low = [int(c[0]) for c in corners]
        high = [int(c[-1]) + 1 for c in corners]
        cropped = mask[low[0]:high[0], low[1]:high[1], low[2]:high[2]]
        matrix = vtk.vtkMatrix4x4()
        image.GetImageToWorldMatrix(matrix)
        _hashMatrix(digest, matrix)
        digest.update(f"{extent[0] + low[2]},{extent[2] + low[1]},{extent[4] + low[0]}:{cropped.shape}".encode())
        digest.update(np.packbits(cropped).tobytes())
    return digest.hexdigest()


def sourceVolume(segmentationNode):
    """The volume a segmentation was made for: the one PairSeg segmented into it, else its
    reference-geometry volume, else None."""
    node = segmentationNode.GetNodeReference(SOURCE_VOLUME_REFERENCE)
    return node if node is not None else segmentationNode.GetNodeReference("referenceImageGeometryRef")


def protectionReason(segmentationNode, volumeNode, replace=False):
    """Why PairSeg must not write the segments of ``volumeNode`` into ``segmentationNode`` (a
    sentence), or None when it may.

    Always protected: a segmentation in a training set (TRAINING_SET_ATTRIBUTE "1") and one made for
    another volume (``sourceVolume``). Unless ``replace``: one whose segments PairSeg did not write
    (no FINGERPRINT_ATTRIBUTE) or that changed since (fingerprint differs: an edit). An empty
    segmentation is never protected by the last two rules."""
    name = segmentationNode.GetName()
    if segmentationNode.GetAttribute(TRAINING_SET_ATTRIBUTE) == "1":
        return f"'{name}' is in a training set"
    source = sourceVolume(segmentationNode)
    if source is not None and source is not volumeNode:
        return f"'{name}' belongs to volume '{source.GetName()}'"
    if replace or segmentationNode.GetSegmentation().GetNumberOfSegments() == 0:
        return None
    recorded = segmentationNode.GetAttribute(FINGERPRINT_ATTRIBUTE)
    if not recorded:
        return f"'{name}' holds segments that PairSeg did not make"
    if recorded != segmentationFingerprint(segmentationNode):
        return f"'{name}' was edited after PairSeg wrote it"
    return None


def recordOutput(segmentationNode, volumeNode):
    """Mark ``segmentationNode`` as PairSeg's output for ``volumeNode``: its fingerprint as it is now
    (FINGERPRINT_ATTRIBUTE) and the source-volume reference."""
    segmentationNode.SetNodeReferenceID(SOURCE_VOLUME_REFERENCE, volumeNode.GetID())
    segmentationNode.SetAttribute(FINGERPRINT_ATTRIBUTE, segmentationFingerprint(segmentationNode))


def importSegments(labelImage, classNames, classColors, volumeNode, segmentationNode=None, name=None,
                   labelValues=None):
    """Put the classes of ``labelImage`` (from ``readLabelImage``) into the scene as segments
    (``labelValues``: as in ``buildSegments``).

    Into ``segmentationNode`` when given and still in the scene (segments of the same names are
    replaced in place, others kept), else into a new segmentation beside ``volumeNode`` named
    ``name`` (default "<volume> PairSeg", versioned when taken). Returns the segmentation node.
    Whether the given node may be written into is the caller's decision (``protectionReason``)."""
    segments = buildSegments(labelImage, classNames, classColors, labelValues)
    if segmentationNode is None or segmentationNode.GetScene() is None:
        segmentationNode = newSegmentationNode(volumeNode, name)
    else:
        if not segmentationNode.GetDisplayNode():
            segmentationNode.CreateDefaultDisplayNodes()
        if not segmentationNode.GetNodeReference("referenceImageGeometryRef") and \
                segmentationNode.GetSegmentation().GetNumberOfSegments() == 0:
            prepareSegmentationNode(segmentationNode, volumeNode)
    applySegments(segmentationNode, segments)
    return segmentationNode
