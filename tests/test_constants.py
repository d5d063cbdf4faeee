"""pairseg.constants: one home for shared names and facts, and the one class-name rule."""

from __future__ import annotations

import pytest
import torch

from pairseg import constants, networks, pairs
from pairseg.config import TrainConfig, setting
from pairseg.constants import class_key, is_device_name, same_class_names
from pairseg.constants import MODALITIES
from pairseg.datasets import case_name, load_dataset, parse_classes
from pairseg.devices import resolve_device
from pairseg.errors import PairSegInputError
from pairseg.phantoms import make_phantom_dataset


def test_class_key_is_the_one_rule():
    for spelling in ("right kidney", "Right_Kidney", "right-kidney", "  RIGHT   kidney ", "Right _ Kidney"):
        assert class_key(spelling) == "right kidney"
    assert class_key("left kidney") != class_key("right kidney") and class_key("kidney") != class_key("kidneys")
    assert same_class_names(["Liver", "Right_Kidney"], ["liver", "right kidney"])
    assert not same_class_names(["liver", "right kidney"], ["right kidney", "liver"])
    with pytest.raises(TypeError):
        class_key(3)


def test_class_rule_in_dataset_checks(tmp_path):
    with pytest.raises(PairSegInputError, match="duplicate"):
        parse_classes("Right_Kidney,right kidney")
    data = make_phantom_dataset(tmp_path / "d", n_cases=1, shape=(4, 16, 16), seed=0)
    assert load_dataset(data, classes="Liver,Right_Kidney,left-kidney,SPLEEN").class_names[1] == "right kidney"
    with pytest.raises(PairSegInputError, match="differ"):
        load_dataset(data, classes="liver,left kidney,right kidney,spleen")


def test_shared_facts_agree_with_their_users():
    assert set(constants.ARCHITECTURES) == set(networks.ENCODER_DECODERS) | set(networks.PAIRWISE_WRAPPERS)
    assert set(constants.BASES) == set(networks.ENCODER_DECODERS)
    assert {m: pairs.default_offsets(m) for m in constants.MODALITIES} == constants.DEFAULT_OFFSETS
    assert MODALITIES == constants.MODALITIES
    assert setting("arch").choices == constants.ARCHITECTURES and setting("pair_mode").default == "intra+inter"
    assert setting("precision").choices == constants.TRAIN_PRECISIONS
    assert TrainConfig(data="d", out="o").budget() == (constants.DEFAULT_EPOCHS, None)


@pytest.mark.parametrize("path, name", [
    ("liver_03_label.nii.gz", "liver_03"), ("case_000.seg.nrrd", "case_000"), ("case_1_image.mha", "case_1"),
    ("a/b/scan_0000.nii", "scan"), ("plain.nrrd", "plain"), ("x_seg.seg.nrrd", "x"),
])
def test_case_name(path, name):
    assert case_name(path) == name


def test_device_names():
    for good in ("auto", "cpu", "cuda", "cuda:1", "mps", "CPU"):
        assert is_device_name(good)
    for bad in ("tpu", "cuda:", "cuda:x", "gpu", "", None):
        assert not is_device_name(bad)
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(PairSegInputError, match="cuda:N"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(PairSegInputError, match="no CUDA"):
            resolve_device("cuda:1")


def test_segments_match_classes_by_the_same_rule(tmp_path):
    """A ``Right_Kidney`` segment (as Slicer users name them) is the class ``right kidney`` when a
    .seg.nrrd label is read, and gets that organ's default colour."""
    import numpy as np

    from pairseg.constants import default_colors
    from pairseg.io.read import read_label
    from pairseg.io.volume import Volume
    from pairseg.io.write import write_labels

    image = Volume(np.zeros((3, 8, 8), np.float32), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0),
                   (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    labels = np.zeros((3, 8, 8), np.uint8)
    labels[1, 2:4, 2:4], labels[1, 5:7, 5:7] = 1, 2
    path = tmp_path / "case_label.seg.nrrd"
    write_labels(path, labels, image, ["Right_Kidney", "Left-Kidney"], [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0)])
    back, names = read_label(path, ["left kidney", "right kidney"], reference=image)
    assert names == ["left kidney", "right kidney"]
    np.testing.assert_array_equal(back, np.select([labels == 1, labels == 2], [2, 1], 0))
    assert default_colors(["Right_Kidney"]) == default_colors(["right kidney"])
