"""PairSegTrainer: training-set export from a real MRML scene, class mapping, bad inputs, and
the module file importing headless."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from test_pairsegtrainer_helpers import (CHAOS_CLASSES, addSegmentation, addVolume, ijkToRas,  # noqa: F401
                                         loadChaosCase, obliqueDirections, sitkIjkToRas, trainerLib,
                                         trainerLogic)


def _syntheticCase(scene, name="synthetic", directions=None, spacing=(0.8, 1.3, 2.5), origin=(12.5, -40.0, 7.0)):
    rng = np.random.default_rng(3)
    image = rng.normal(100, 20, (9, 24, 20)).astype(np.float32)
    labels = np.zeros(image.shape, np.uint8)
    labels[2:7, 4:14, 3:9] = 1
    labels[3:8, 12:20, 11:18] = 2
    volume = addVolume(scene, image, name, spacing, origin, directions)
    segmentation = addSegmentation(scene, volume, labels, {2: "Spleen", 1: "LIVER"})
    return volume, segmentation, image, labels


def test_export_oblique_volume_exact_geometry_and_labels(trainerLogic, mrml_scene, tmp_path):
    volume, segmentation, image, labels = _syntheticCase(mrml_scene, "oblique", obliqueDirections())
    before = mrml_scene.GetNumberOfNodes()
    manifest = trainerLogic.exportTrainingSet([(volume, segmentation)], tmp_path / "set",
                                              classNames=["liver", "spleen"], modality="ct")
    assert mrml_scene.GetNumberOfNodes() == before  # temporary nodes cleaned up
    assert manifest["labels"] == {"0": "background", "1": "liver", "2": "spleen"}
    assert manifest["modality"] == {"0": "CT"}
    entry = manifest["training"][0]
    assert entry["segments"] == {"Spleen": "spleen", "LIVER": "liver"}
    assert entry["voxels"] == {"liver": int((labels == 1).sum()), "spleen": int((labels == 2).sum())}
    written = json.loads((tmp_path / "set" / "dataset.json").read_text())
    assert written["training"][0]["image"] == "./oblique_image.nrrd"
    imageFile = sitk.ReadImage(str(tmp_path / "set" / "oblique_image.nrrd"))
    labelFile = sitk.ReadImage(str(tmp_path / "set" / "oblique_label.nrrd"))
    for written_image in (imageFile, labelFile):
        np.testing.assert_allclose(sitkIjkToRas(written_image), ijkToRas(volume), atol=1e-9)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(imageFile), image)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(labelFile), labels)


def test_export_real_chaos_case_maps_classes_by_name(trainerLogic, mrml_scene, tmp_path, chaos_dir, harness):
    volume, segmentation, labels = loadChaosCase(harness, mrml_scene, chaos_dir, "002")
    manifest = trainerLogic.exportTrainingSet([(volume, segmentation)], tmp_path / "chaos", classNames=CHAOS_CLASSES)
    assert [manifest["labels"][str(i + 1)] for i in range(4)] == CHAOS_CLASSES
    # Slicer may store the voxels in another axis order than the file it read: compare both
    # files in one physical orientation (same voxels at the same physical places).
    original = sitk.DICOMOrient(sitk.ReadImage(str(chaos_dir / "case_002_label.nii.gz")), "LPS")
    exported = sitk.DICOMOrient(sitk.ReadImage(str(tmp_path / "chaos" / "case_002_label.nrrd")), "LPS")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(exported), sitk.GetArrayFromImage(original))
    np.testing.assert_allclose(exported.GetSpacing(), original.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(exported.GetOrigin(), original.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(exported.GetDirection(), original.GetDirection(), atol=1e-6)
    # The engine reads the exported set as a dataset with the same classes.
    pytest.importorskip("pairseg.data")
    from pairseg.datasets import load_dataset

    dataset = load_dataset(tmp_path / "chaos")
    assert dataset.class_names == CHAOS_CLASSES and dataset.modality == "MR"
    assert [c.name for c in dataset.cases] == ["case_002"]


def test_default_classes_and_explicit_mapping(trainerLogic, mrml_scene, tmp_path):
    volume, segmentation, _, labels = _syntheticCase(mrml_scene)
    segmentation.GetSegmentation().AddEmptySegment("tumour", "tumour")
    report = trainerLogic.classReport([(volume, segmentation)], ["liver", "spleen"])
    assert report.unknown == {"synthetic": ["tumour"]} and not report.ok
    assert report.assignments["synthetic"] == {"Spleen": "spleen", "LIVER": "liver"}
    # mapping a name to "" leaves it out on purpose; mapping renames
    manifest = trainerLogic.exportTrainingSet([(volume, segmentation)], tmp_path / "a", classNames=["organ A", "liver"],
                                              mapping={"spleen": "organ A", "tumour": ""})
    assert manifest["training"][0]["segments"] == {"Spleen": "organ A", "LIVER": "liver", "tumour": ""}
    exported = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "a" / "synthetic_label.nrrd")))
    np.testing.assert_array_equal(exported, np.choose(labels, [0, 2, 1]))
    # without a class list: segment names in order of appearance
    manifest = trainerLogic.exportTrainingSet([(volume, segmentation)], tmp_path / "b", mapping={"tumour": ""})
    assert manifest["labels"] == {"0": "background", "1": "Spleen", "2": "LIVER"}


def test_trainer_and_engine_share_one_class_name_rule(trainerLogic, mrml_scene, tmp_path):
    """Segments meet classes by the engine's rule (pairseg.constants.class_key): ``Right_Kidney``
    is class ``right kidney`` in the Trainer and in the engine's dataset loading (``pairseg
    train``). The Trainer's own rule casefolded, so it matched ``STRASSE`` to ``Straße`` and
    refused the two as one class twice, where the engine reads two different classes."""
    from pairseg.constants import class_key
    from pairseg.datasets import load_dataset

    lib = trainerLib()
    volume, _, _, labels = _syntheticCase(mrml_scene)
    segmentation = addSegmentation(mrml_scene, volume, labels, {1: "Right_Kidney", 2: "STRASSE"}, "named")
    for segment, className in [("Right_Kidney", "right kidney"), ("STRASSE", "Straße"), (" left-Kidney", "Left kidney")]:
        assert (lib.trainingset.matchClass(segment, [className]) == className) == (class_key(segment) == class_key(className))
    report = trainerLogic.classReport([(volume, segmentation)], ["right kidney", "Straße"])
    assert report.assignments["synthetic"] == {"Right_Kidney": "right kidney"}
    assert report.unknown == {"synthetic": ["STRASSE"]}
    classes = ["right kidney", "STRASSE", "Straße"]   # three classes for the engine
    trainerLogic.exportTrainingSet([(volume, segmentation)], tmp_path / "set", classNames=classes)
    dataset = load_dataset(tmp_path / "set", classes=["Right_Kidney", "strasse", "Straße"])
    assert dataset.class_names == classes
    exported = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "set" / "synthetic_label.nrrd")))
    np.testing.assert_array_equal(exported, labels)
    with pytest.raises(TypeError, match="string"):
        lib.trainingset.matchClass(None, classes)


def test_bad_inputs_give_clear_errors(trainerLogic, mrml_scene, tmp_path):
    lib = trainerLib()
    error = lib.TrainingSetError
    volume, segmentation, image, labels = _syntheticCase(mrml_scene)
    with pytest.raises(error, match="empty"):
        trainerLogic.exportTrainingSet([], tmp_path / "x")
    with pytest.raises(error, match="has no segmentation"):
        trainerLogic.exportTrainingSet([(volume, None)], tmp_path / "x")
    segmentation.GetSegmentation().AddEmptySegment("kidney", "kidney")
    with pytest.raises(error, match=r"match no class.*'kidney'"):
        trainerLogic.exportTrainingSet([(volume, segmentation)], tmp_path / "x", classNames=["liver", "spleen"])
    # segmentation drawn on another grid (other spacing) than the volume it is paired with
    other = addVolume(mrml_scene, image[:, ::2, ::2].copy(), "coarse", spacing=(1.6, 2.6, 2.5), origin=(12.5, -40.0, 7.0))
    coarse = addSegmentation(mrml_scene, other, labels[:, ::2, ::2], {1: "liver", 2: "spleen"})
    with pytest.raises(error, match="geometry mismatch"):
        trainerLogic.exportTrainingSet([(volume, coarse)], tmp_path / "x", classNames=["liver", "spleen"])
    # half-voxel shift is a mismatch too
    shifted = addVolume(mrml_scene, image, "shifted", spacing=(0.8, 1.3, 2.5), origin=(12.9, -40.0, 7.0))
    with pytest.raises(error, match="geometry mismatch"):
        trainerLogic.exportTrainingSet([(shifted, segmentation)], tmp_path / "x", classNames=["liver", "spleen", "kidney"])
    # a label map is not an image
    labelNode = mrml_scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    import slicer

    slicer.util.updateVolumeFromArray(labelNode, labels)
    with pytest.raises(error, match="not a scalar image"):
        trainerLogic.exportTrainingSet([(labelNode, segmentation)], tmp_path / "x")
    # segments that exist but hold no voxel
    empty = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty")
    empty.GetSegmentation().AddEmptySegment("liver", "liver")
    with pytest.raises(error, match="no labelled voxel"):
        trainerLogic.exportTrainingSet([(volume, empty)], tmp_path / "x", classNames=["liver"])
    # two cases with the same name
    with pytest.raises(error, match="two cases"):
        trainerLogic.exportTrainingSet([(volume, segmentation), (volume, segmentation)], tmp_path / "x",
                                       mapping={"kidney": ""})
    assert not (tmp_path / "x" / "dataset.json").exists()


def test_config_command_lines_and_validation(tmp_path):
    lib = trainerLib()
    from PairSegTrainerLib import runsettings as config

    (tmp_path / "dataset.json").write_text("{}")
    cfg = lib.TrainingSettings(data=str(tmp_path), out=str(tmp_path / "m.pairseg"), use_steps=True, steps=20,
                               size=64, batch_size=2, device="cpu", offsets="3, 5,7")
    cfg.validate()
    command = cfg.commandLine(python="py")
    runFile = str(tmp_path / "m.pairseg.train.json")
    assert command == ["py", "-m", "pairseg", "train", "--config", runFile, "--events", "json"]
    written = json.loads(open(runFile).read())
    assert (written["steps"], written["epochs"], written["size"], written["batch_size"], written["offsets"]) == \
        (20, None, 64, 2, [3, 5, 7])
    multi = cfg.copy(gpus=4, resume=True, init_from="").commandLine(python="py")
    assert multi[:7] == ["py", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "4", "-m"]
    assert multi[7:] == ["pairseg", "train", "--config", runFile, "--events", "json"]
    assert json.loads(open(runFile).read())["resume"] is True
    with pytest.raises(config.ConfigError, match="nothing to resume"):
        cfg.copy(resume=True).validate()
    with pytest.raises(config.ConfigError, match="arch"):
        cfg.copy(arch="resnet").validate()
    with pytest.raises(config.ConfigError, match="batch_size"):
        cfg.copy(batch_size=0).validate()
    with pytest.raises(config.ConfigError, match="dataset.json"):
        cfg.copy(data=str(tmp_path / "nothing")).validate()
    with pytest.raises(config.ConfigError, match="offsets"):
        config.parseOffsets("3,x")
    # fine-tune from: a model file or a catalog name (as the engine's --init-from); else refused
    assert cfg.copy(init_from="chaos-mr-t2-c2fcn").validate().init_from == "chaos-mr-t2-c2fcn"
    with pytest.raises(config.ConfigError, match="fine-tune model no-such-model does not exist"):
        cfg.copy(init_from="no-such-model").validate()
    assert config.versionedModelPath(str(tmp_path / "liver.pairseg")).endswith("liver_v2.pairseg")
    assert config.versionedModelPath(str(tmp_path / "liver_v7.pairseg")).endswith("liver_v8.pairseg")


def test_training_settings_round_trip_trainer_json_cli(tmp_path):
    """Trainer -> run file -> the engine's TrainConfig (as ``pairseg train --config`` reads it) ->
    Trainer again; and the same settings given as ``pairseg train`` options give the same config."""
    lib = trainerLib()
    from pairseg.cli import build_parser
    from pairseg.config import TrainConfig, from_arguments

    from PairSegTrainerLib import runsettings as config

    (tmp_path / "dataset.json").write_text("{}")
    cfg = lib.TrainingSettings(data=str(tmp_path), out=str(tmp_path / "liver.pairseg"), arch="cfcn",
                               use_steps=True, steps=123, size=96, batch_size=3, lr=2.5e-4, device="cuda:1", seed=7,
                               val_fraction=0.25, pair_mode="intra", offsets="2,4", inter_repeats=3,
                               init_from=str(tmp_path / "base.pairseg"), stop_file=str(tmp_path / "stop"))
    command = cfg.commandLine(python="py")
    runFile = command[command.index("--config") + 1]
    fromFile = TrainConfig.read(runFile)
    assert lib.TrainingSettings.fromEngineConfig(fromFile) == cfg
    fromCommand = from_arguments(build_parser().parse_args(command[3:]))
    assert fromCommand == fromFile
    options = ["train", "--data", str(tmp_path), "--out", str(tmp_path / "liver.pairseg"), "--arch", "cfcn",
               "--steps", "123", "--size", "96", "--batch-size", "3", "--lr", "2.5e-4", "--device", "cuda:1",
               "--seed", "7", "--val-fraction", "0.25", "--pair-mode", "intra", "--offsets", "2,4",
               "--inter-repeats", "3", "--init-from", str(tmp_path / "base.pairseg"), "--stop-file",
               str(tmp_path / "stop")]
    assert from_arguments(build_parser().parse_args(options)).to_dict() == fromFile.to_dict()
    # defaults are the engine's, not the Trainer's own
    default = lib.TrainingSettings()
    engineDefaults = TrainConfig(data="d", out="o")
    for name in config.PACK_SETTINGS:
        if name not in ("data", "out", "arch", "offsets", "init_from", "stop_file", "epochs", "steps"):
            assert getattr(default, name) == getattr(engineDefaults, name), name
    # the budget: the engine's fallback epochs, no steps
    assert (default.engineSettings()["epochs"], default.engineSettings()["steps"]) == engineDefaults.budget()


def test_settings_pack_is_the_engine_schema():
    """Issue 21 item 1: the Trainer's settings are declared once: the pack's fields are the
    engine's settings under the engine's names (plus the Trainer-only ones), with the engine's
    defaults, and each refuses just outside the engine's range what the engine refuses."""
    lib = trainerLib()
    from pairseg.config import setting

    from PairSegTrainerLib import runsettings

    pack = lib.TrainingSettings
    assert list(pack.allParameters) == list(runsettings.PACK_SETTINGS) + list(runsettings.TRAINER_ONLY)
    default = pack()
    for name in runsettings.PACK_SETTINGS:
        spec = setting(name)   # KeyError: not an engine setting
        if spec.default is not None:
            assert getattr(default, name) == spec.default, name
        if spec.kind not in ("int", "float"):
            continue
        step = 1 if spec.kind == "int" else runsettings.SPIN_BOX_STEPS.get(name, 1e-9)
        for inclusive, exclusive, outward in ((spec.minimum, spec.exclusive_minimum, -1),
                                              (spec.maximum, spec.exclusive_maximum, 1)):
            if inclusive is not None:
                setattr(default, name, inclusive)                 # the engine's bound itself: accepted
                assert spec.problem(inclusive) is None
                outside = inclusive + outward * step
            elif exclusive is not None:
                outside = exclusive
            else:
                continue
            assert spec.problem(outside) is not None, (name, outside)   # the engine refuses it ...
            with pytest.raises(ValueError):
                setattr(default, name, outside)                   # ... and so does the pack
    with pytest.raises(runsettings.ConfigError, match="learningRate"):
        default.copy(learningRate=1e-3)                           # no second spelling


def test_training_set_in_parameter_node(load_module, mrml_scene):
    module = load_module("PairSegTrainer")
    logic = module.PairSegTrainerLogic()
    parameterNode = logic.getParameterNode()
    first = _syntheticCase(mrml_scene, "first")
    second = _syntheticCase(mrml_scene, "second")
    logic.addToTrainingSet(parameterNode, first[0], first[1])
    items = logic.addToTrainingSet(parameterNode, second[0], second[1])
    assert [i.name for i in items] == ["first", "second"]
    firstSnapshot = items[0].segmentationNode
    logic.addToTrainingSet(parameterNode, first[0], second[1])  # replaces the segmentation of "first"
    items = logic.trainingItems(parameterNode)
    from PairSegTrainerLib import trainingset

    # each case holds a snapshot of the segmentation it was given (issue 19 item 1), never the node
    assert len(items) == 2 and [trainingset.snapshotSource(i.segmentationNode) for i in items] == [second[1]] * 2
    assert items[0].segmentationNode is not items[1].segmentationNode
    assert firstSnapshot.GetScene() is None   # the replaced snapshot left the scene
    assert first[1].GetAttribute("PairSeg.TrainingSet") is None and second[1].GetAttribute("PairSeg.TrainingSet") == "1"
    # the module file imports headless, with its parameter class and widget class
    assert hasattr(module, "PairSegTrainerParameterNode") and hasattr(module, "PairSegTrainerWidget")
    import ast
    import pathlib

    tree = ast.parse(pathlib.Path(module.__file__).read_text())
    topImports = {alias.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
    topImports |= {node.module.split(".")[0] for node in tree.body if isinstance(node, ast.ImportFrom)}
    import sys

    assert topImports - set(sys.stdlib_module_names) <= {"slicer", "PairSegTrainerLib", "PairSegLib"}


def test_new_version_skips_checkpoints_and_unfinished_runs(tmp_path):
    """Issue 19 item 5: a new version never lands on a name the engine would refuse (model or
    checkpoint there); a checkpoint counts as an unfinished run only with its run file and no
    newer model (the engine keeps a finished run's checkpoint and writes the model after it)."""
    import os

    trainerLib()
    from PairSegTrainerLib import runsettings as config

    (tmp_path / "liver.pairseg").write_bytes(b"model")
    checkpoint = tmp_path / "liver_v2.pairseg.ckpt"
    checkpoint.write_bytes(b"checkpoint")
    assert config.versionedModelPath(str(tmp_path / "liver.pairseg")) == str(tmp_path / "liver_v3.pairseg")
    run = config.TrainingSettings(out=str(tmp_path / "liver_v2.pairseg"))
    assert not run.unfinishedRun()                                   # no run file: nothing to resume from
    (tmp_path / "liver_v2.pairseg.train.json").write_text("{}")
    assert run.unfinishedRun()
    assert run.outputConflict() == {"model": False, "checkpoint": True, "resumable": True}
    model = tmp_path / "liver_v2.pairseg"
    model.write_bytes(b"model")
    os.utime(checkpoint, ns=(1_000_000_000, 1_000_000_000))
    os.utime(model, ns=(2_000_000_000, 2_000_000_000))
    assert not run.unfinishedRun()                                   # finished: the model is newer
    os.utime(model, ns=(500_000_000, 500_000_000))
    assert run.unfinishedRun()                                       # a later run stopped after that model
