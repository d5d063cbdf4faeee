"""Partially annotated volumes (pairseg.annotation): the annotation map, masked losses, pairs
among annotated slices, dataset.json / CLI / automatic detection, and full labels unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pairseg.annotation import (annotated_mask, annotated_offsets, empty_slices_inside, parse_annotated_slices,
                                summarize_annotation)
from pairseg.data import SliceStore
from pairseg.errors import PairSegInputError
from pairseg.losses import Criterion, seg_weights
from pairseg.pairs import sample_pairs
from pairseg.phantoms import make_phantom_dataset
from pairseg.train import EpochPlan, TrainConfig, batch_annotation, load_training_data, prepare_batch, train


def _label(depth=10, size=8):
    label = np.zeros((depth, size, size), np.uint8)
    label[2:8, 1:4, 1:4] = 1
    label[4:6, 5:7, 5:7] = 2
    return label


def test_annotated_mask_rule_and_listed_slices():
    label = _label()
    sparse = label.copy()
    sparse[[3, 4, 6]] = 0  # class 1 drawn on 2, 5, 7; class 2 on 5 only
    mask = annotated_mask(sparse, 2)
    assert mask[:, 0].tolist() == [z in (2, 5, 7) for z in range(10)]
    assert mask[:, 1].tolist() == [z == 5 for z in range(10)]
    listed = annotated_mask(sparse, 2, [0, 9])  # listed slices: every class annotated (absent = background)
    assert listed[0].all() and listed[9].all() and listed[:, 1].sum() == 3
    assert empty_slices_inside(mask) == 3 and empty_slices_inside(annotated_mask(label, 2)) == 0
    summary = summarize_annotation("case_007", ["liver", "kidney"], mask)
    assert summary.sparse and summary.message() == (
        "case_007: liver drawn on 3 of 6 slices in its extent; training on those slices only")
    with pytest.raises(PairSegInputError, match="annotated slice 12 outside"):
        annotated_mask(sparse, 2, [12], name="x.nii.gz")
    assert annotated_offsets([np.array([2, 5, 7]), np.array([0, 4])]) == (2, 3, 4)
    assert parse_annotated_slices("case_002:3,7; case_005:4") == {"case_002": [3, 7], "case_005": [4]}
    with pytest.raises(PairSegInputError, match="CASE:SLICE"):
        parse_annotated_slices("3,7")


@pytest.mark.parametrize("form,k", [("proxy", 1), ("proxy", 3), ("conjugate", 2), ("siamese", 2), ("single", 2)])
def test_full_annotation_gives_exactly_todays_loss(form, k):
    gen = torch.Generator().manual_seed(0)
    n, size = 4, 16
    la, lb = (torch.randint(0, k + 1, (n, size, size), generator=gen) for _ in range(2))
    p = 3 if k == 1 else 2 * k
    shape = {"proxy": (n, p, size, size)}
    if form == "proxy":
        outputs = torch.randn(shape["proxy"], generator=gen)
    elif form == "single":
        outputs = torch.randn((n, k + 1, size, size), generator=gen)
    else:
        outputs = {"seg_a": torch.randn((n, k + 1, size, size), generator=gen),
                   "seg_b": torch.randn((n, k + 1, size, size), generator=gen),
                   "proxy": torch.randn((n, p, size, size), generator=gen)}
    criterion = Criterion(form, k)
    full = torch.ones(n, k, dtype=torch.bool)
    if form == "single":
        today, masked = criterion(outputs, la), criterion(outputs, la, annotated=[full])
    else:
        today, masked = criterion(outputs, la, lb), criterion(outputs, la, lb, annotated=[full, full])
    assert torch.equal(today, masked)
    partial = full.clone()
    partial[0, 0] = False
    other = criterion(outputs, la, annotated=[partial]) if form == "single" else \
        criterion(outputs, la, lb, annotated=[partial, full])
    assert not torch.equal(today, other)  # the flags do reach the loss


@pytest.mark.parametrize("form,k", [("proxy", 1), ("proxy", 2), ("conjugate", 2)])
def test_unannotated_positions_are_never_background(form, k):
    """Whatever the network predicts for a class on a slice not annotated for it, the loss and
    its gradient there are unchanged: the slice is unknown for that class, not background."""
    gen = torch.Generator().manual_seed(1)
    n, size = 3, 12
    la = torch.zeros(n, size, size, dtype=torch.long)  # nothing drawn: as an unannotated slice looks
    lb = torch.randint(0, k + 1, (n, size, size), generator=gen)
    p = 3 if k == 1 else 2 * k
    ann_a = torch.ones(n, k, dtype=torch.bool)
    ann_a[1, k - 1] = False  # sample 1's first slice is not annotated for the last class
    ann_b = torch.ones(n, k, dtype=torch.bool)
    criterion = Criterion(form, k)

    def outputs_of(proxy, seg_a):
        return proxy if form == "proxy" else {"seg_a": seg_a, "seg_b": torch.zeros(n, k + 1, size, size),
                                              "proxy": proxy}

    proxy = torch.randn(n, p, size, size, generator=gen, requires_grad=True)
    seg_a = torch.randn(n, k + 1, size, size, generator=gen, requires_grad=True)
    loss = criterion(outputs_of(proxy, seg_a), la, lb, annotated=[ann_a, ann_b])
    loss.backward()
    # channels of the unannotated class on sample 1: AND_k, XOR_k (all three for one class)
    channels = [0, 1, 2] if k == 1 else [k - 1, 2 * k - 1]
    if k > 1:  # the other classes' channels there still learn
        assert proxy.grad[1, 0].abs().sum() > 0
    assert torch.count_nonzero(proxy.grad[1, channels]) == 0
    if form == "conjugate":  # segmentation Dice: class k and background (not every class annotated) left out
        assert seg_weights(ann_a)[1].tolist() == [False] + [True] * (k - 1) + [False]
    # predicting the class everywhere there costs nothing either
    bright = proxy.detach().clone()
    bright[1, channels] = 50.0
    again = criterion(outputs_of(bright, seg_a.detach()), la, lb, annotated=[ann_a, ann_b])
    if k == 1 or form == "conjugate":
        return  # softmax couples the channels: the gradient check above is the statement
    assert torch.allclose(again, loss.detach())


def _store(labels, annotated):
    images = [torch.zeros(len(l), 3, 8, 8) for l in labels]
    return SliceStore(images, [torch.as_tensor(l) for l in labels], [f"c{i}" for i in range(len(labels))],
                      annotated)


def test_full_data_pairs_are_todays_and_sparse_pairs_use_annotated_slices_only():
    config = TrainConfig(data="d", out="m.pairseg", seed=4)
    full = _store([_label(12), _label(10)], None)
    plan = EpochPlan(full, "proxy", config, "MR")
    seed = config.seed * 100_003 + 0
    expected = sample_pairs([12, 10], offsets=(3, 5, 7), seed=seed)
    assert np.array_equal(plan.rows(0), expected[np.random.default_rng(seed).permutation(len(expected))])
    assert batch_annotation(plan, full, plan.rows(0)[:4], 2) is None

    sparse_label = _label(12)
    keep = [2, 5, 7]
    sparse_label[[z for z in range(12) if z not in keep]] = 0
    mask = annotated_mask(sparse_label, 2)
    store = _store([sparse_label, _label(10)], [mask, None])
    plan = EpochPlan(store, "proxy", config, "MR")
    assert set(plan.offsets) == {2, 3, 5, 7}  # the offsets between annotated slices join the default ones
    rows = plan.rows(0)
    for vol, sl in ((rows[:, 0], rows[:, 1]), (rows[:, 2], rows[:, 3])):
        assert set(sl[vol == 0].tolist()) <= set(keep)
    intra0 = rows[(rows[:, 0] == 0) & (rows[:, 2] == 0)]
    assert {(a, b) for a, b in intra0[:, [1, 3]].tolist()} >= {(2, 5), (5, 7)}
    flags = batch_annotation(plan, store, rows[:6], 2)
    for member, (v, s) in zip(flags, ((0, 1), (2, 3))):
        for row, flag in zip(rows[:6], member):
            expect = mask[row[s]] if row[v] == 0 else [True, True]
            assert flag.tolist() == list(expect)
    single = EpochPlan(store, "single", config, "MR").rows(0)
    assert set(single[single[:, 0] == 0, 1].tolist()) == set(keep)
    images, labels = prepare_batch(plan, store, rows[:2], config, torch.Generator().manual_seed(0))
    assert images[0].shape == (2, 3, 8, 8)  # 2.5D stacks of every slice stay in the store


@pytest.fixture(scope="module")
def sparse_data(tmp_path_factory) -> Path:
    """Two phantoms; case_000's label kept on every third slice of the labelled range only."""
    import SimpleITK as sitk

    folder = make_phantom_dataset(tmp_path_factory.mktemp("sparse"), n_cases=2, shape=(12, 32, 32), seed=5)
    path = folder / "case_000_label.nii.gz"
    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image)
    rows = np.flatnonzero(array.reshape(len(array), -1).max(axis=1) > 0)
    drawn = list(range(int(rows[0]), int(rows[-1]) + 1, 3))
    sparse = np.zeros_like(array)
    sparse[drawn] = array[drawn]
    out = sitk.GetImageFromArray(sparse)
    out.CopyInformation(image)
    sitk.WriteImage(out, str(path))
    (folder / "drawn.json").write_text(json.dumps(drawn))
    return folder


def test_training_data_detects_sparse_cases_and_reads_annotated_slices(sparse_data, tmp_path):
    messages = []

    def events(name, **fields):
        if name == "message":
            messages.append(fields["text"])

    config = TrainConfig(data=str(sparse_data), out=str(tmp_path / "m.pairseg"), size=32, device="cpu")
    data = load_training_data(config, events)
    drawn = json.loads((sparse_data / "drawn.json").read_text())
    assert data.store.sparse and data.store.annotated[1] is None  # case_001 is fully annotated
    assert set(np.flatnonzero(data.store.annotated[0].any(dim=1).numpy()).tolist()) <= set(drawn)
    assert any(m.startswith("case_000: ") and "training on those slices only" in m for m in messages)
    assert not any(m.startswith("case_001") for m in messages)

    # dataset.json's annotated_slices: an empty slice listed there is annotated (background) for every class
    spec = json.loads((sparse_data / "dataset.json").read_text())
    spec["training"][0]["annotated_slices"] = [0]
    listed = tmp_path / "listed"
    listed.mkdir()
    for entry in spec["training"]:
        for key in ("image", "label"):
            (listed / Path(entry[key]).name).symlink_to((sparse_data / entry[key]).resolve())
    (listed / "dataset.json").write_text(json.dumps(spec))
    data = load_training_data(config.replace(data=str(listed)))
    assert bool(data.store.annotated[0][0].all())
    # --annotated-slices on the command line, and --sparse on a full case
    data = load_training_data(config.replace(annotated_slices="case_001:0", sparse=True))
    assert data.store.annotated[1] is not None and bool(data.store.annotated[1][0].all())
    with pytest.raises(PairSegInputError, match="no training case named case_9"):
        load_training_data(config.replace(annotated_slices="case_9:1"))
    spec["training"][0]["annotated_slices"] = ["x"]
    (listed / "dataset.json").write_text(json.dumps(spec))
    with pytest.raises(PairSegInputError, match="annotated_slices"):
        load_training_data(config.replace(data=str(listed)))


def test_training_on_a_sparse_case_runs_through_the_loop(sparse_data, tmp_path):
    config = TrainConfig(data=str(sparse_data), out=str(tmp_path / "m.pairseg"), arch="c2fcn", size=32,
                         batch_size=2, steps=2, device="cpu", output_stride=16, cases=["case_000"])
    result = train(config)
    assert result.model_path.is_file() and result.steps == 2
