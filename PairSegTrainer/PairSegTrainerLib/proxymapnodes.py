"""Proxy maps of a slice pair as MRML nodes: what C2FCN/CFCN are trained to see.

For two labelled slices the ground truth of the proxy supervision is, per class k,
AND_k = (a == k) & (b == k) and XOR_k = (a == k) ^ (b == k) (Wang et al. 2021, Sec. 3.1.2). The
nodes hold them in slice A's geometry (one-slice volumes placed where slice A is), coloured as in
the paper's Fig. 3: AND blue, XOR red. With a pairwise model, its predicted AND/XOR probability
maps for the same pair are added: ``PredictedProxyMapsRun`` runs ``pairseg proxy-maps`` in the
background on the volumes' real geometry and brings its maps back on slice A's exact grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from PairSegLib import engine, mrml, overlays
from PairSegLib.segmentlogic import WorkFolderRun

AND_COLOR = (0.16, 0.35, 1.0)     # blue
XOR_COLOR = (1.0, 0.16, 0.16)     # red
AND_VALUE, XOR_VALUE = 1, 2       # values of the combined overlay label map
COLOR_TABLE_NAME = "PairSegProxyColors"
PREDICTED_COLOR_TABLE_NAME = "PairSegProxyProbabilityColors"
PREDICTED_LEVELS = 128               # colour-table entries per predicted map (AND, then XOR)


def proxyTargetStack(labelA: np.ndarray, labelB: np.ndarray, numClasses: int) -> np.ndarray:
    """g_proxy of two label slices (H, W), values 0..K: the engine's own ``pairseg.proxy.proxy_targets``
    (numpy, no torch in Slicer's process), (P, H, W) float32 in the engine's target layout:
    K == 1: [background in both, AND, XOR]; K > 1: [AND_1..AND_K, XOR_1..XOR_K]."""
    from PairSegLib.engine import torchFreeEngineModule

    return torchFreeEngineModule("proxy").proxy_targets(np.asarray(labelA), np.asarray(labelB), int(numClasses))


def andXorArrays(targets: np.ndarray, numClasses: int) -> tuple:
    """(AND, XOR) maps for display from a ``proxyTargetStack``: AND holds the class id k where
    AND_k is set (the AND_k maps are disjoint, so nothing is lost), XOR is 1 where any XOR_k is."""
    targets = np.asarray(targets) > 0.5
    ands, xors = (targets[1:2], targets[2:3]) if numClasses == 1 else (targets[:numClasses], targets[numClasses:])
    classIds = np.arange(1, ands.shape[0] + 1, dtype=np.uint8).reshape(-1, 1, 1)
    return (ands * classIds).max(axis=0).astype(np.uint8), xors.any(axis=0).astype(np.uint8)


def resizeNearest(plane: np.ndarray, shape) -> np.ndarray:
    """Nearest-neighbour resize of a 2-D array (used when slice B's size differs from A's)."""
    plane = np.asarray(plane)
    if plane.shape == tuple(shape):
        return plane
    rows = np.minimum((np.arange(shape[0]) + 0.5) * plane.shape[0] / shape[0], plane.shape[0] - 1).astype(int)
    cols = np.minimum((np.arange(shape[1]) + 0.5) * plane.shape[1] / shape[1], plane.shape[1] - 1).astype(int)
    return plane[rows][:, cols]


def labelledSlices(labels: np.ndarray) -> np.ndarray:
    """Indices of the slices (axis 0) that hold any foreground."""
    return np.flatnonzero(np.asarray(labels).reshape(labels.shape[0], -1).any(axis=1))


def choosePair(labelledA, mode: str = "intra", offsets=None, labelledB=None, seed: Optional[int] = 0,
               modality: str = "MR"):
    """Pick (slice A, slice B) as the training sampler does: one of the pairs of volume A that
    ``pairseg.pairs.sample_pairs`` makes over the labelled ranges (``--margin 0``) of A and B.

    ``labelledA``/``labelledB``: indices of the labelled slices of volume A and B; each volume's
    slices from its first to its last labelled one are used. ``mode`` (``pairseg.constants.
    PAIR_MODES``): ``intra``: B = A + one of ``offsets`` (default: the modality's, 3/5/7 MR,
    5/9/13 CT) in A's range; ``inter``: slice B drawn uniformly from volume B's range (without
    ``labelledB``, as for a single training volume: a shuffled other slice of A); ``intra+inter``:
    either kind; ``identical``: B = A. Deterministic for a seed.

    Raises:
        ValueError: no labelled slice in A (or an empty ``labelledB``), an unknown mode, bad
        offsets, or no pair of that mode (A's range is shorter than every offset).
    """
    pairs = engine.torchFreeEngineModule("pairs")
    ranges = []
    for name, labelled in (("A", labelledA), ("B", labelledB)):
        if labelled is None and name == "B":
            continue
        labelled = np.asarray(labelled, dtype=np.int64)
        if labelled.size == 0:
            raise ValueError(f"volume {name} has no labelled slice")
        ranges.append(np.arange(int(labelled.min()), int(labelled.max()) + 1))
    offsets = tuple(int(o) for o in offsets) if offsets else pairs.default_offsets(modality)
    rng = np.random.default_rng(seed)
    try:
        rows = pairs.sample_pairs(ranges, mode=mode, offsets=offsets, inter_repeats=1, seed=rng)
    except ValueError as error:
        raise ValueError(f"slices {ranges[0][0]}-{ranges[0][-1]} of volume A: {error}") from error
    rows = rows[rows[:, 0] == 0]
    if len(rows) == 0:
        raise ValueError(f"no {mode} pair starts in slices {ranges[0][0]}-{ranges[0][-1]} of volume A")
    _, sliceA, _, sliceB = (int(v) for v in rows[rng.integers(len(rows))])
    return sliceA, sliceB


@dataclass
class ProxyMapsResult:
    """Nodes made by ``PairSegTrainerLogic.proxyMaps`` and the arrays behind them."""

    andNode: object = None             # label map, 1 where both slices have the same class
    xorNode: object = None             # label map, 2 where exactly one slice has a class
    overlayNode: object = None         # label map for display: 1 AND (blue), 2 XOR (red)
    predictedAndNode: object = None    # scalar volume, model's AND probability (max over classes)
    predictedXorNode: object = None    # scalar volume, model's XOR probability
    predictedOverlayNode: object = None  # scalar volume coded for predictedColorTable: blue = AND,
    #                                      red = XOR, opacity = probability (transparent at 0)
    run: object = None                 # the PredictedProxyMapsRun computing the predicted maps
    sliceA: int = 0
    sliceB: int = 0
    classNames: list = field(default_factory=list)
    targets: Optional[np.ndarray] = None  # (P, H, W) engine target layout
    andClasses: Optional[np.ndarray] = None  # (H, W) class id where both slices have that class

    @property
    def nodes(self) -> list:
        return [n for n in (self.andNode, self.xorNode, self.overlayNode, self.predictedAndNode,
                            self.predictedXorNode, self.predictedOverlayNode) if n is not None]


def sliceGeometry(volumeNode, sliceIndex: int):
    """IJK-to-RAS matrix (vtkMatrix4x4) of a one-slice volume placed at ``sliceIndex``."""
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    for row in range(3):
        matrix.SetElement(row, 3, matrix.GetElement(row, 3) + sliceIndex * matrix.GetElement(row, 2))
    return matrix


def proxyColorTable(scene):
    """The fixed colour table (0 transparent, 1 AND blue, 2 XOR red), made once per scene."""
    entries = {0: ("background", 0.0, 0.0, 0.0, 0.0), AND_VALUE: ("AND", *AND_COLOR, 1.0),
               XOR_VALUE: ("XOR", *XOR_COLOR, 1.0)}
    return overlays.colorTableNode(COLOR_TABLE_NAME, [entries[value] for value in sorted(entries)], scene)


def predictedColorTable(scene):
    """The colour table of the predicted overlay, made once per scene: entries 0..PREDICTED_LEVELS-1
    are AND (blue), the next PREDICTED_LEVELS XOR (red), each with opacity rising from 0 (fully
    transparent: the image shows through where the model predicts nothing) to 1."""
    entries = [(f"{name} {alpha:.2f}", *color, alpha) for name, color in (("AND", AND_COLOR), ("XOR", XOR_COLOR))
               for alpha in (level / (PREDICTED_LEVELS - 1) for level in range(PREDICTED_LEVELS))]
    return overlays.colorTableNode(PREDICTED_COLOR_TABLE_NAME, entries, scene)


def predictedOverlayValues(pAnd: np.ndarray, pXor: np.ndarray) -> np.ndarray:
    """uint8 indices into ``predictedColorTable``: where the AND probability is at least the XOR
    one, ``round((PREDICTED_LEVELS - 1) * pAnd)``, else ``PREDICTED_LEVELS + round((PREDICTED_LEVELS -
    1) * pXor)``; probabilities (any shape, 0..1) 0 give a transparent entry."""
    pAnd = np.clip(np.asarray(pAnd, np.float32), 0.0, 1.0)
    pXor = np.clip(np.asarray(pXor, np.float32), 0.0, 1.0)
    top = PREDICTED_LEVELS - 1
    values = np.where(pAnd >= pXor, np.rint(top * pAnd), PREDICTED_LEVELS + np.rint(top * pXor))
    return values.astype(np.uint8)


def addPredictedOverlay(scene, name: str, volumeNode, sliceIndex: int, pAnd: np.ndarray, pXor: np.ndarray):
    """The predicted overlay of slice ``sliceIndex``: a scalar volume of ``predictedOverlayValues``
    shown through ``predictedColorTable`` (window 0..255 maps a value to its own entry, no
    interpolation) and thresholded at 1, so a probability of 0 is transparent, never black."""
    node = sliceNode(scene, "vtkMRMLScalarVolumeNode", name, volumeNode, sliceIndex,
                     predictedOverlayValues(pAnd, pXor), predictedColorTable(scene))
    display = node.GetDisplayNode()
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, 2.0 * PREDICTED_LEVELS - 1.0)
    display.SetInterpolate(False)
    display.AutoThresholdOff()
    display.SetLowerThreshold(1.0)
    display.SetUpperThreshold(2.0 * PREDICTED_LEVELS)
    display.SetApplyThreshold(True)
    return node


def sliceNode(scene, className: str, name: str, volumeNode, sliceIndex: int, plane: np.ndarray,
              colorTable=None):
    """A one-slice volume node holding ``plane`` (H, W[, 3]) at slice ``sliceIndex`` of the volume."""
    import slicer

    node = scene.AddNewNodeByClass(className, scene.GenerateUniqueName(name))
    node.SetIJKToRASMatrix(sliceGeometry(volumeNode, sliceIndex))
    node.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
    array = np.ascontiguousarray(plane[None])
    slicer.util.updateVolumeFromArray(node, array)
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    if colorTable is not None and display is not None:
        display.SetAndObserveColorNodeID(colorTable.GetID())
    return node


def setColorTable(node, colorTable) -> None:
    display = node.GetDisplayNode()
    if display is not None:
        display.SetAndObserveColorNodeID(colorTable.GetID())


def showInSliceViews(scene, backgroundNode, labelNode=None, foregroundNode=None,
                     foregroundOpacity: float = 0.6, rasPoint=None) -> None:
    """Put the nodes into every slice view (through the composite nodes, so it works with or
    without the application) and move the views to ``rasPoint``."""
    import slicer

    composites = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    for index in range(composites.GetNumberOfItems()):
        composite = composites.GetItemAsObject(index)
        composite.SetBackgroundVolumeID(backgroundNode.GetID() if backgroundNode else None)
        composite.SetLabelVolumeID(labelNode.GetID() if labelNode else None)
        composite.SetForegroundVolumeID(foregroundNode.GetID() if foregroundNode else None)
        composite.SetForegroundOpacity(foregroundOpacity if foregroundNode else 0.0)
        composite.SetLabelOpacity(0.6)
    if rasPoint is not None and composites.GetNumberOfItems() > 0:
        slicer.vtkMRMLSliceNode.JumpAllSlices(scene, *[float(v) for v in rasPoint])


def sliceCenterRas(volumeNode, sliceIndex: int):
    dims = volumeNode.GetImageData().GetDimensions()
    matrix = sliceGeometry(volumeNode, sliceIndex)
    point = matrix.MultiplyPoint(((dims[0] - 1) / 2.0, (dims[1] - 1) / 2.0, 0.0, 1.0))
    return point[:3]


def sliceIjkToLps(volumeNode, sliceIndex: int) -> np.ndarray:
    """The 4 x 4 IJK-to-LPS matrix of the one-slice volume at ``sliceIndex`` (the engine's files)."""
    import slicer

    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ slicer.util.arrayFromVTKMatrix(sliceGeometry(volumeNode, sliceIndex))


class PredictedProxyMapsRun(WorkFolderRun):
    """A pairwise model's predicted AND/XOR maps of a slice pair, by ``pairseg proxy-maps`` in
    the background. The volumes and their exported label maps are written with their geometry;
    when the engine is done, its ``and_predicted``/``xor_predicted`` maps (read on slice A's exact
    grid) become the result's predicted nodes (AND and XOR probabilities, and an RGB overlay)."""

    name = "proxy maps"

    def __init__(self, logic, result: ProxyMapsResult, modelPath: str, volumeA, labelsA, volumeB, labelsB,
                 pairName: str, device: str = "auto", show: bool = True):
        super().__init__(logic)
        self.result = result
        self.modelPath = modelPath
        self.volumeA, self.labelsA = volumeA, labelsA
        self.volumeB, self.labelsB = volumeB, labelsB
        self.pairName = pairName
        self.device = device
        self.show = show

    def writeInputs(self):
        import csv
        import io

        arguments = ["proxy-maps", "--model", self.modelPath, "--slice-a", self.result.sliceA,
                     "--slice-b", self.result.sliceB, "--out", self.path("maps"), "--device", self.device]
        for name, volume, labels in (("a", self.volumeA, self.labelsA), ("b", self.volumeB, self.labelsB)):
            imagePath, labelPath = self.path(f"image_{name}.nrrd"), self.path(f"label_{name}.nrrd")
            mrml.exportVolume(volume, imagePath)
            mrml.writeLabelArray(labels, volume, labelPath)
            arguments += [f"--image-{name}", imagePath, f"--label-{name}", labelPath]
        classes = io.StringIO()
        csv.writer(classes, lineterminator="").writerow(self.result.classNames)
        arguments += ["--classes", classes.getvalue(), "--events", "json"]
        from PairSegLib.engine import engineCommand

        self.command = engineCommand(*arguments, python=self.python)

    def completingText(self):
        return "Adding the predicted proxy maps"

    def completed(self):
        scene = self.volumeA.GetScene()
        dimensions = self.volumeA.GetImageData().GetDimensions()
        grid = sliceIjkToLps(self.volumeA, self.result.sliceA)
        maps = [mrml.readArrayOnGrid(self.path(f"maps/{kind}_predicted.nii.gz"), grid,
                                     (dimensions[0], dimensions[1], 1))[0].astype(np.float32)
                for kind in ("and", "xor")]
        pAnd, pXor = maps
        sliceA = self.result.sliceA
        self.result.predictedAndNode = sliceNode(scene, "vtkMRMLScalarVolumeNode", f"AND predicted {self.pairName}",
                                                 self.volumeA, sliceA, pAnd)
        self.result.predictedXorNode = sliceNode(scene, "vtkMRMLScalarVolumeNode", f"XOR predicted {self.pairName}",
                                                 self.volumeA, sliceA, pXor)
        self.result.predictedOverlayNode = addPredictedOverlay(scene, f"Proxy predicted {self.pairName}",
                                                               self.volumeA, sliceA, pAnd, pXor)
        if self.show:
            showInSliceViews(scene, self.volumeA, self.result.overlayNode, self.result.predictedOverlayNode,
                             rasPoint=sliceCenterRas(self.volumeA, sliceA))
        return "Predicted proxy maps added"
