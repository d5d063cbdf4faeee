"""Make the PairSegTrainer screenshots offscreen (no display, no OpenGL).

Builds a headless MRML scene with the test-only harness (Testing/slicer_harness.py), loads CHAOS
MR cases with their labels as named segments, and uses PairSegTrainerLogic exactly as the module
does:

    Resources/Screenshots/trainer_proxy_maps.png       AND (blue) / XOR (red) maps of an intra-patient
                                                       CHAOS pair over slice A, rendered by a slice view
    Resources/Screenshots/trainer_proxy_predicted.png  the trained model's predicted AND/XOR maps
    Resources/Screenshots/trainer_training_curve.png   loss and validation Dice of a short training run
                                                       started with startTraining (matplotlib)

Usage:
    .venv/bin/python scripts/make_screenshots_trainer.py [--steps 120] [--size 96] [--case 002]
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for folder in (ROOT / "Testing", ROOT / "PairSegTrainer", ROOT / "src"):
    sys.path.insert(0, str(folder))

OUT = ROOT / "Resources" / "Screenshots"
CLASSES = ["liver", "right kidney", "left kidney", "spleen"]
VIEW = 512


def loadCase(harness, chaosDir, case):
    import slicer

    volume = harness.loadVolume(str(chaosDir / f"case_{case}_image.nii.gz"), name=f"case_{case}")
    labelNode = harness.loadVolume(str(chaosDir / f"case_{case}_label.nii.gz"), name="labels", labelmap=True)
    labels = slicer.util.arrayFromVolume(labelNode).copy()
    harness.setUpSlicer().scene.RemoveNode(labelNode)
    scene = harness.setUpSlicer().scene
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"case_{case} segmentation")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    for value, name in enumerate(CLASSES, start=1):
        segmentation.GetSegmentation().AddEmptySegment(name, name)
        slicer.util.updateSegmentBinaryLabelmapFromArray((labels == value).astype(np.uint8), segmentation,
                                                         name, volume)
    return volume, segmentation


def renderSliceView(harness, volume, sliceIndex, path, label=None, foreground=None):
    """Render an axial slice view (background + label/foreground layers) to a PNG."""
    import slicer
    import vtk

    from PairSegTrainerLib import proxymapnodes as proxymaps

    scene = harness.setUpSlicer().scene
    sliceNode = scene.AddNewNodeByClass("vtkMRMLSliceNode", "Red")
    sliceNode.SetLayoutName("Red")
    sliceNode.SetOrientationToAxial()
    sliceNode.SetDimensions(VIEW, VIEW, 1)
    logic = slicer.vtkMRMLSliceLogic()
    logic.SetMRMLApplicationLogic(harness.setUpSlicer().appLogic)
    logic.SetMRMLScene(scene)
    logic.SetSliceNode(sliceNode)
    proxymaps.showInSliceViews(scene, volume, label, foreground, foregroundOpacity=0.7,
                               rasPoint=proxymaps.sliceCenterRas(volume, sliceIndex))
    logic.GetSliceCompositeNode().SetLabelOpacity(0.55)
    logic.FitSliceToAll()
    sliceNode.JumpSliceByOffsetting(*proxymaps.sliceCenterRas(volume, sliceIndex))
    connection = logic.GetImageDataConnection()
    connection.GetProducer().Update()
    writer = vtk.vtkPNGWriter()
    writer.SetInputConnection(connection)
    writer.SetFileName(str(path))
    writer.Write()
    scene.RemoveNode(sliceNode)
    print("wrote", path)


def plotCurves(curves, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (lossAxis, diceAxis) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110)
    lossAxis.plot(curves.lossSteps, curves.lossValues, color="0.3", linewidth=1)
    lossAxis.set_xlabel("step")
    lossAxis.set_ylabel("training loss (proxy Dice loss)")
    lossAxis.set_title("Training loss")
    lossAxis.grid(alpha=0.3)
    diceAxis.plot(curves.valEpochs, curves.meanDice, "o-", color="black", label="mean")
    for name, values in curves.classDice.items():
        diceAxis.plot(curves.valEpochs, values, ".--", label=name)
    diceAxis.set_ylim(0, 1)
    diceAxis.xaxis.get_major_locator().set_params(integer=True)
    diceAxis.set_xlabel("epoch")
    diceAxis.set_ylabel("validation Dice")
    diceAxis.set_title("Validation Dice")
    diceAxis.legend(fontsize=8, loc="lower right")
    diceAxis.grid(alpha=0.3)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path)
    print("wrote", path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chaos", default=str(ROOT.parent / "shared" / "data" / "chaos_t2"))
    parser.add_argument("--case", default="002", help="case shown in the proxy-map pictures")
    parser.add_argument("--train-cases", default="003,008,010", help="cases trained on (the last one validates)")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

    import slicer_harness as harness

    harness.setUpSlicer()
    harness.useSlicerRelease(harness.availableReleases()[-1])   # TrainingSettings: its parameterNodeWrapper
    from PairSegLib.models import ModelRegistry
    from PairSegTrainerLib import PairSegTrainerCoreLogic, settingsPack

    chaosDir = Path(args.chaos)
    work = Path(tempfile.mkdtemp(prefix="pairseg-trainer-shots-"))
    registry = ModelRegistry(work / "registry.json")  # keep the user's registry untouched
    logic = PairSegTrainerCoreLogic(registry=registry)
    OUT.mkdir(parents=True, exist_ok=True)

    volume, segmentation = loadCase(harness, chaosDir, args.case)
    sliceA, sliceB = logic.pickProxyPair(volume, segmentation, mode="intra", classNames=CLASSES, seed=4)

    trainItems = [loadCase(harness, chaosDir, case) for case in args.train_cases.split(",")]
    logic.exportTrainingSet(trainItems, work / "set", classNames=CLASSES, modality="MR")
    run = logic.startTraining(settingsPack()(data=str(work / "set"), out=str(work / "screenshot.pairseg"),
                                             use_steps=True, steps=args.steps, size=args.size, batch_size=6,
                                             lr=1e-3, device=args.device, val_fraction=1.0 / len(trainItems)),
                              plots=True)
    print("training:", " ".join(run.command))
    run.wait()
    print(f"trained in {run.elapsedSeconds:.0f} s; {len(run.curves.valEpochs)} validation(s)")
    plotCurves(run.curves, OUT / "trainer_training_curve.png",
               f"PairSegTrainer: C2FCN on {len(trainItems) - 1} CHAOS MR case(s), {args.steps} steps at "
               f"{args.size} px (startTraining, live events)")

    result = logic.proxyMaps(volume, sliceA, segmentation, volume, sliceB, segmentation, model=run.modelPath,
                             classNames=CLASSES, show=False)
    print(f"intra-patient pair: slices {sliceA} and {sliceB}")
    renderSliceView(harness, volume, sliceA, OUT / "trainer_proxy_maps.png", label=result.overlayNode)
    renderSliceView(harness, volume, sliceA, OUT / "trainer_proxy_predicted.png",
                    foreground=result.predictedOverlayNode)


if __name__ == "__main__":
    main()
