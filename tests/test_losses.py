"""Tests for pairseg.losses: soft Dice, proxy Dice, CFCN / SiamFCN losses, criterion_for."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pairseg.losses import (
    PROXY_WEIGHT,
    conjugate_loss,
    criterion_for,
    multiclass_dice_loss,
    one_hot,
    proxy_dice_loss,
    siamese_loss,
    soft_dice_loss,
)
from pairseg.proxy import proxy_channels, proxy_targets


def ref_dice(probs: np.ndarray, target: np.ndarray, smooth: float = 1.0) -> float:
    """Hand formula: per channel over batch + pixels, 1 - (2 sum(pg) + s) / (sum p + sum g + s)."""
    axes = (0,) + tuple(range(2, probs.ndim))
    inter = (probs * target).sum(axes)
    denom = probs.sum(axes) + target.sum(axes)
    return float(np.mean(1.0 - (2 * inter + smooth) / (denom + smooth)))


def test_soft_dice_hand_computed():
    p = torch.tensor([[[[0.5, 1.0], [0.0, 0.0]]], [[[0.0, 0.0], [0.0, 0.5]]]])  # (2, 1, 2, 2)
    g = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])
    # sum(pg) = 1.5, sum p = 2.0, sum g = 2 -> 1 - (3 + 1) / (4 + 1) = 0.2
    torch.testing.assert_close(soft_dice_loss(p, g), torch.tensor(0.2))
    # per-sample: sample 0: 1 - 4/4.5; sample 1: 1 - 1/1.5
    expected = ((1 - 4 / 4.5) + (1 - 1 / 1.5)) / 2
    torch.testing.assert_close(soft_dice_loss(p, g, batch=False), torch.tensor(expected))
    assert soft_dice_loss(g, g).item() == pytest.approx(0.0)
    with pytest.raises(ValueError, match="differ in shape"):
        soft_dice_loss(p, g[:, :, :1])


def test_soft_dice_empty_masks_are_finite():
    p = torch.zeros(2, 3, 4, 4, requires_grad=True)
    loss = soft_dice_loss(p, torch.zeros(2, 3, 4, 4))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(p.grad).all()
    logits = torch.full((2, 2, 4, 4), -30.0, requires_grad=True)
    loss = multiclass_dice_loss(logits, torch.zeros(2, 4, 4, dtype=torch.int64), 1)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_one_hot():
    labels = torch.tensor([[[0, 2], [1, 0]]])
    oh = one_hot(labels, 3)
    assert oh.shape == (1, 3, 2, 2) and oh.dtype == torch.float32
    np.testing.assert_array_equal(oh.argmax(1).numpy(), labels.numpy())


def test_multiclass_dice_matches_hand_formula():
    torch.manual_seed(0)
    logits = torch.randn(3, 3, 5, 6)
    labels = torch.randint(0, 3, (3, 5, 6))
    probs = torch.softmax(logits, 1).numpy()
    target = np.stack([(labels.numpy() == c) for c in range(3)], 1).astype(np.float32)
    assert multiclass_dice_loss(logits, labels, 2).item() == pytest.approx(ref_dice(probs, target), rel=1e-5)


@pytest.mark.parametrize("k", [1, 3])
def test_proxy_dice_matches_hand_formula(k):
    torch.manual_seed(k)
    logits = torch.randn(2, proxy_channels(k), 5, 6)
    la = torch.randint(0, k + 1, (2, 5, 6))
    lb = torch.randint(0, k + 1, (2, 5, 6))
    probs = (torch.softmax(logits, 1) if k == 1 else torch.sigmoid(logits)).numpy()
    target = proxy_targets(la.numpy(), lb.numpy(), k)
    assert proxy_dice_loss(logits, la, lb, k).item() == pytest.approx(ref_dice(probs, target), rel=1e-5)


def test_proxy_dice_perfect_prediction_near_zero():
    la = torch.tensor([[[0, 1, 1], [0, 0, 1]]])
    lb = torch.tensor([[[1, 1, 0], [0, 0, 1]]])
    target = proxy_targets(la, lb, 1)
    logits = (target * 2 - 1) * 40  # near one-hot softmax
    assert proxy_dice_loss(logits, la, lb, 1).item() == pytest.approx(0.0, abs=1e-6)


def _pair_outputs(k: int, n: int = 2, h: int = 4, w: int = 5, grad: bool = False):
    torch.manual_seed(1)
    return {
        "seg_a": torch.randn(n, k + 1, h, w, requires_grad=grad),
        "seg_b": torch.randn(n, k + 1, h, w, requires_grad=grad),
        "proxy": torch.randn(n, proxy_channels(k), h, w, requires_grad=grad),
    }


@pytest.mark.parametrize("k", [1, 2])
def test_conjugate_and_siamese_are_sums(k):
    out = _pair_outputs(k)
    la = torch.randint(0, k + 1, (2, 4, 5))
    lb = torch.randint(0, k + 1, (2, 4, 5))
    da = multiclass_dice_loss(out["seg_a"], la, k)
    db = multiclass_dice_loss(out["seg_b"], lb, k)
    dp = proxy_dice_loss(out["proxy"], la, lb, k)
    assert PROXY_WEIGHT == 2.0
    torch.testing.assert_close(conjugate_loss(out, la, lb, k), da + db + 2 * dp)
    torch.testing.assert_close(siamese_loss(out, la, lb, k), da + db)


def stand_in(form: str, k: int):
    return SimpleNamespace(training_form=form, num_classes=k)


@pytest.mark.parametrize("k", [1, 3])
def test_criterion_for_dispatch(k):
    torch.manual_seed(2)
    la = torch.randint(0, k + 1, (2, 4, 5))
    lb = torch.randint(0, k + 1, (2, 4, 5))
    out = _pair_outputs(k, grad=True)

    single = criterion_for(stand_in("single", k))
    torch.testing.assert_close(single(out["seg_a"], la), multiclass_dice_loss(out["seg_a"], la, k))

    proxy = criterion_for(stand_in("proxy", k))
    torch.testing.assert_close(proxy(out["proxy"], la, lb), proxy_dice_loss(out["proxy"], la, lb, k))

    siam = criterion_for(stand_in("siamese", k))
    torch.testing.assert_close(siam(out, la, lb), siamese_loss(out, la, lb, k))

    conj = criterion_for(stand_in("conjugate", k))
    loss = conj(out, la, lb)
    torch.testing.assert_close(loss, conjugate_loss(out, la, lb, k))
    assert loss.ndim == 0
    loss.backward()
    for t in out.values():
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def test_criterion_all_empty_labels_finite():
    out = _pair_outputs(2, grad=True)
    zeros = torch.zeros(2, 4, 5, dtype=torch.int64)
    loss = criterion_for(stand_in("conjugate", 2))(out, zeros, zeros)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(t.grad).all() for t in out.values())


def test_criterion_errors():
    with pytest.raises(ValueError, match="unknown training_form"):
        criterion_for(stand_in("triple", 1))
    with pytest.raises(ValueError, match="num_classes"):
        criterion_for(stand_in("single", 0))
    with pytest.raises(ValueError, match="training_form"):
        criterion_for(SimpleNamespace(num_classes=1))
    la = torch.zeros(2, 4, 5, dtype=torch.int64)
    out = _pair_outputs(1)
    with pytest.raises(ValueError, match="label_b is required"):
        criterion_for(stand_in("proxy", 1))(out["proxy"], la)
    with pytest.raises(ValueError, match="key 'proxy'"):
        criterion_for(stand_in("conjugate", 1))({"seg_a": out["seg_a"], "seg_b": out["seg_b"]}, la, la)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        criterion_for(stand_in("proxy", 1))(out["seg_a"], la, la)
    with pytest.raises(ValueError, match="integer labels"):
        criterion_for(stand_in("single", 1))(out["seg_a"], la.float())
    with pytest.raises(ValueError, match="outside 0..1"):
        criterion_for(stand_in("single", 1))(out["seg_a"], la + 2)
    with pytest.raises(ValueError, match="does not match"):
        criterion_for(stand_in("single", 1))(out["seg_a"], la[:, :3])
    with pytest.raises(ValueError, match="got a dict"):
        criterion_for(stand_in("single", 1))(out, la)
