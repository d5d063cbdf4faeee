"""No torch inside Slicer's process: both modules' code imports and runs its engine work (Segment,
Compare, predicted AND/XOR maps) with ``torch`` and ``monai`` blocked in ``sys.modules``; the
engine runs in background processes. The predicted proxy maps now come from the engine on the
volume's real geometry (spacing, flipped axes), not unit spacing and identity direction.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from test_pairsegtrainer_helpers import ROOT, addSegmentation, trainerLib

BLOCKED = ("torch", "monai")


def test_module_code_imports_without_torch():
    """A fresh interpreter with torch and MONAI made unimportable imports every Lib module of
    both modules (widget code aside, which needs Qt)."""
    script = textwrap.dedent(f"""
        import sys
        for name in {BLOCKED!r}:
            sys.modules[name] = None
        sys.path[:0] = [{str(ROOT / "PairSeg")!r}, {str(ROOT / "PairSegTrainer")!r}]
        import importlib
        for name in ("PairSegLib", "PairSegLib.engine", "PairSegLib.install", "PairSegLib.segmentlogic", "PairSegLib.mrml",
                     "PairSegLib.overlays", "PairSegLib.sampledata", "PairSegLib.terminology", "PairSegTrainerLib",
                     "PairSegTrainerLib.runsettings", "PairSegTrainerLib.trainingrun", "PairSegTrainerLib.trainerlogic",
                     "PairSegTrainerLib.proxymapnodes", "PairSegTrainerLib.trainingset", "PairSegTrainerLib.plots"):
            importlib.import_module(name)
        assert sys.modules["torch"] is None
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def flippedPhantom(harness, phantom_dir):
    """A phantom case whose volume node has a flipped i axis and non-unit spacing, with its labels
    as a segmentation on the same grid."""
    import slicer
    import vtk

    volume = harness.loadVolume(str(phantom_dir / "case_000_image.nii.gz"), name="phantom")
    labelNode = harness.loadVolume(str(phantom_dir / "case_000_label.nii.gz"), name="labels", labelmap=True)
    labels = slicer.util.arrayFromVolume(labelNode).copy()
    slicer.mrmlScene.RemoveNode(labelNode)
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    for row in range(3):   # flip the i axis: a left-handed grid, anatomy mirrored in voxel space
        matrix.SetElement(row, 0, -1.7 * matrix.GetElement(row, 0) / np.linalg.norm(
            [matrix.GetElement(r, 0) for r in range(3)]))
    volume.SetIJKToRASMatrix(matrix)
    names = {1: "liver", 2: "right kidney", 3: "left kidney", 4: "spleen"}
    segmentation = addSegmentation(slicer.mrmlScene, volume, labels, names)
    reference = addSegmentation(slicer.mrmlScene, volume, np.roll(labels, 2, axis=1), names, "reference")
    return volume, segmentation, reference, labels


def engineVolume(volumeNode):
    """The engine's Volume record of a node: voxels and the node's real geometry (LPS)."""
    import slicer
    import vtk

    from pairseg.io.volume import Volume

    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ slicer.util.arrayFromVTKMatrix(matrix)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    return Volume(array=slicer.util.arrayFromVolume(volumeNode).astype(np.float32).copy(), spacing=tuple(spacing),
                  origin=tuple(lps[:3, 3]), direction=tuple((lps[:3, :3] / spacing).ravel()))


def test_compare_and_predicted_maps_run_with_torch_blocked(load_module, harness, mrml_scene, phantom_dir,
                                                           phantom_model, monkeypatch, tmp_path):
    import slicer

    monkeypatch.setenv("PAIRSEG_USER_DIR", str(tmp_path / "user"))
    pairseg = load_module("PairSeg")
    lib = trainerLib()
    volume, segmentation, reference, labels = flippedPhantom(harness, phantom_dir)
    sliceA, sliceB = 5, 8
    # what the engine itself says (computed here, before torch is blocked)
    from pairseg.metrics import evaluate_case
    from pairseg.proxymaps import predicted_and_xor

    names = ["liver", "right kidney", "left kidney", "spleen"]
    expectedMetrics = evaluate_case(labels, np.roll(labels, 2, axis=1), tuple(reversed(volume.GetSpacing())), names)
    record = engineVolume(volume)
    expectedAnd, expectedXor = predicted_and_xor(str(phantom_model), record, sliceA, record, sliceB, device="cpu")
    unitRecord = type(record)(record.array, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    oldAnd, _ = predicted_and_xor(str(phantom_model), unitRecord, sliceA, unitRecord, sliceB, device="cpu")
    assert not np.allclose(oldAnd, expectedAnd, atol=1e-3), "the geometry makes a difference for this case"

    for name in BLOCKED:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError):
        import torch  # noqa: F401

    result = pairseg.PairSegLogic().compareToReference(segmentation, reference)
    table = result.tableNode.GetTable()
    for row, name in enumerate(names):
        assert table.GetValueByName(row, "Dice").ToDouble() == pytest.approx(expectedMetrics["dice"][name], abs=1e-6)
        assert table.GetValueByName(row, "ASSD (mm)").ToDouble() == pytest.approx(expectedMetrics["assd"][name],
                                                                                  rel=1e-4)

    trainer = lib.PairSegTrainerCoreLogic()
    maps = trainer.proxyMaps(volume, sliceA, segmentation, sliceB=sliceB, model=str(phantom_model), device="cpu",
                             show=False)
    assert maps.run is not None and maps.run.command[1:4] == ["-m", "pairseg", "proxy-maps"]
    maps.run.wait(timeout=120)
    pAnd = slicer.util.arrayFromVolume(maps.predictedAndNode)[0]
    pXor = slicer.util.arrayFromVolume(maps.predictedXorNode)[0]
    np.testing.assert_allclose(pAnd, expectedAnd, atol=1e-4)
    np.testing.assert_allclose(pXor, expectedXor, atol=1e-4)
    for node in (maps.predictedAndNode, maps.overlayNode):   # on slice A of the flipped grid
        np.testing.assert_allclose(harness_matrix(node), harness_matrix(maps.andNode), atol=1e-9)
    assert sys.modules["torch"] is None and sys.modules["monai"] is None
    assert not os.listdir(maps.run.logic.temporaryFolder()) or not os.path.exists(maps.run.workDirectory)


def harness_matrix(node):
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(i, j) for j in range(4)] for i in range(4)])
