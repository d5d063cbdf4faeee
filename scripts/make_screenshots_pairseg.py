"""Make the PairSeg screenshots and icons offscreen (no display, no OpenGL).

Runs the PairSeg module logic on a real CHAOS MR case in a headless MRML scene (the test-only
harness in Testing/), renders axial slices with vtkMRMLSliceLogic + vtkPNGWriter and writes:

    Resources/Screenshots/PairSeg-segments.png            predicted segments over the MR slice
    Resources/Screenshots/PairSeg-boundary-distance.png   boundary-distance overlay vs the expert labels
    Resources/PairSeg.png                                 extension icon, 128 x 128
    PairSeg/Resources/Icons/PairSeg.png                   module icon, 128 x 128
    PairSeg/Resources/Icons/CHAOSMRT2Case002.png          Sample Data thumbnail

Usage:
    .venv/bin/python scripts/make_screenshots_pairseg.py --model MODEL.pairseg [--case case_002]
Without --model a small model is trained first with the engine (several minutes on a CPU).
"""

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "Testing"))
sys.path.insert(0, os.path.join(ROOT, "src"))

CLASSES = ["liver", "right kidney", "left kidney", "spleen"]
SIZE = 512


def trainModel(chaosDir, case, out):
    cases = [c for c in ("case_003", "case_008", "case_010", "case_013", "case_015", "case_019") if c != case]
    subprocess.run([sys.executable, "-m", "pairseg", "train", "--data", chaosDir, "--out", out,
                    "--cases", ",".join(cases), "--steps", "150", "--size", "96", "--batch-size", "6",
                    "--lr", "1e-3", "--device", "auto"], check=True, cwd=ROOT)
    return out


def sliceLogic(harness, name="Red"):
    import slicer

    sliceNode = harness.scene.AddNewNodeByClass("vtkMRMLSliceNode", name)
    sliceNode.SetLayoutName(name)
    sliceNode.SetOrientationToAxial()
    sliceNode.SetDimensions(SIZE, SIZE, 1)
    logic = slicer.vtkMRMLSliceLogic()
    logic.SetMRMLApplicationLogic(harness.appLogic)
    logic.SetMRMLScene(harness.scene)
    logic.SetSliceNode(sliceNode)
    return logic


def render(logic, path):
    import vtk

    connection = logic.GetImageDataConnection()
    connection.GetProducer().Update()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    writer = vtk.vtkPNGWriter()
    writer.SetInputConnection(connection)
    writer.SetFileName(path)
    writer.Write()
    print("wrote", os.path.relpath(path, ROOT))


def writeIcon(sourcePng, path, crop=None, size=128):
    """Square crop (x0, y0, side) of a PNG, resampled to size x size."""
    import vtk

    reader = vtk.vtkPNGReader()
    reader.SetFileName(sourcePng)
    reader.Update()
    image = reader.GetOutput()
    if crop:
        x0, y0, side = crop
        clip = vtk.vtkExtractVOI()
        clip.SetInputData(image)
        clip.SetVOI(x0, x0 + side - 1, y0, y0 + side - 1, 0, 0)
        clip.Update()
        image = clip.GetOutput()
    resize = vtk.vtkImageResize()
    resize.SetInputData(image)
    resize.SetOutputDimensions(size, size, 1)
    resize.InterpolateOn()
    resize.Update()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    writer = vtk.vtkPNGWriter()
    writer.SetInputData(resize.GetOutput())
    writer.SetFileName(path)
    writer.Write()
    print("wrote", os.path.relpath(path, ROOT))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="PairSeg model file (default: train a small one first)")
    parser.add_argument("--chaos-dir", default=os.path.join(os.path.dirname(ROOT), "shared", "data", "chaos_t2"))
    parser.add_argument("--case", default="case_002")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

    import slicer_harness

    harness = slicer_harness.setUpSlicer()
    pairseg = slicer_harness.loadScriptedModule(os.path.join(ROOT, "PairSeg", "PairSeg.py"))
    import slicer

    model = args.model or trainModel(args.chaos_dir, args.case, os.path.join(tempfile.mkdtemp(), "shot.pairseg"))
    volume = slicer_harness.loadVolume(os.path.join(args.chaos_dir, f"{args.case}_image.nii.gz"), name=args.case)
    labels = slicer_harness.loadVolume(os.path.join(args.chaos_dir, f"{args.case}_label.nii.gz"),
                                       name="expert labels", labelmap=True)
    colorNode = harness.scene.AddNewNodeByClass("vtkMRMLColorTableNode", "CHAOS classes")
    colorNode.SetTypeToUser()
    colorNode.SetNumberOfColors(len(CLASSES) + 1)
    colorNode.SetColor(0, "background", 0, 0, 0, 0)
    for value, name in enumerate(CLASSES, start=1):
        colorNode.SetColor(value, name, 0.5, 0.5, 0.5, 1)
    labels.GetDisplayNode().SetAndObserveColorNodeID(colorNode.GetID())
    reference = harness.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "expert")
    slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labels, reference)

    logic = pairseg.PairSegLogic()
    logic.registry = pairseg.PairSegLib.ModelRegistry(os.path.join(tempfile.mkdtemp(), "registry.json"))
    segmentation = logic.segmentVolume(volume, model, device=args.device)

    # the slice where the four organs together cover most voxels
    referenceArray = slicer.util.arrayFromVolume(labels)
    counts = [(np.unique(s[s > 0]).size, int((s > 1).sum())) for s in referenceArray]
    k = max(range(len(counts)), key=lambda i: counts[i])

    predictedLabels = harness.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "predicted labels")
    slicer.vtkSlicerSegmentationsModuleLogic.ExportAllSegmentsToLabelmapNode(
        segmentation, predictedLabels, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)

    view = sliceLogic(harness)
    composite = view.GetSliceCompositeNode()
    composite.SetBackgroundVolumeID(volume.GetID())
    composite.SetLabelVolumeID(predictedLabels.GetID())
    composite.SetLabelOpacity(0.55)
    view.FitSliceToBackground(SIZE, SIZE)
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    ijkToRas = slicer.util.arrayFromVTKMatrix(matrix)
    centre = ijkToRas @ np.array([referenceArray.shape[2] / 2, referenceArray.shape[1] / 2, k, 1.0])
    view.SetSliceOffset(float(centre[2]))

    screenshots = os.path.join(ROOT, "Resources", "Screenshots")
    icons = os.path.join(ROOT, "PairSeg", "Resources", "Icons")
    composite.SetLabelVolumeID(None)
    render(view, os.path.join(tempfile.gettempdir(), "pairseg-background.png"))
    writeIcon(os.path.join(tempfile.gettempdir(), "pairseg-background.png"),
              os.path.join(icons, "CHAOSMRT2Case002.png"))
    composite.SetLabelVolumeID(predictedLabels.GetID())
    segmentsPng = os.path.join(screenshots, "PairSeg-segments.png")
    render(view, segmentsPng)
    crop = (SIZE // 16, SIZE // 5, SIZE * 5 // 8)
    writeIcon(segmentsPng, os.path.join(ROOT, "Resources", "PairSeg.png"), crop)
    writeIcon(segmentsPng, os.path.join(icons, "PairSeg.png"), crop)

    result = logic.compareToReference(segmentation, reference)
    composite.SetLabelVolumeID(None)
    composite.SetForegroundVolumeID(result.distanceVolumeNode.GetID())
    composite.SetForegroundOpacity(1.0)
    render(view, os.path.join(screenshots, "PairSeg-boundary-distance.png"))
    table = result.tableNode.GetTable()
    for row in range(table.GetNumberOfRows()):
        print(f"  {table.GetValue(row, 0).ToString():13s} Dice {table.GetValue(row, 1).ToDouble():.3f}"
              f"  ASSD {table.GetValue(row, 2).ToDouble():.2f} mm")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
