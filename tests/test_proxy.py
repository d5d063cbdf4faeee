"""Tests for pairseg.proxy: g_proxy targets, Eq. 12 read-out, label decoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pairseg.proxy import (
    decode_labels,
    proxy_channels,
    proxy_probabilities,
    proxy_targets,
    segmentation_from_proxy,
)

A = np.array([[0, 1, 1], [0, 0, 1]])
B = np.array([[1, 1, 0], [0, 0, 1]])


def test_proxy_channels():
    assert proxy_channels(1) == 3
    assert proxy_channels(2) == 4
    assert proxy_channels(4) == 8
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="num_classes"):
            proxy_channels(bad)


def test_binary_exact_values():
    t = proxy_targets(A, B, 1)
    assert t.dtype == np.float32 and t.shape == (3, 2, 3)
    np.testing.assert_array_equal(t[0], [[0, 0, 0], [1, 1, 0]])  # background in both
    np.testing.assert_array_equal(t[1], [[0, 1, 0], [0, 0, 1]])  # AND
    np.testing.assert_array_equal(t[2], [[1, 0, 1], [0, 0, 0]])  # XOR
    np.testing.assert_array_equal(t.sum(0), np.ones((2, 3)))  # one-hot


def test_multiclass_exact_values():
    a = np.array([[0, 1, 2, 2]])
    b = np.array([[1, 1, 2, 0]])
    t = proxy_targets(a, b, 2)
    assert t.shape == (4, 1, 4)
    np.testing.assert_array_equal(t[0], [[0, 1, 0, 0]])  # AND class 1
    np.testing.assert_array_equal(t[1], [[0, 0, 1, 0]])  # AND class 2
    np.testing.assert_array_equal(t[2], [[1, 0, 0, 0]])  # XOR class 1
    np.testing.assert_array_equal(t[3], [[0, 0, 0, 1]])  # XOR class 2


def test_multilabel_pixel_on_in_two_maps():
    # class 1 in a, class 2 in b: XOR_1 and XOR_2 are both on at that pixel (multi-label)
    t = proxy_targets(np.array([[1, 3]]), np.array([[2, 3]]), 3)
    assert t.shape == (6, 1, 2)
    np.testing.assert_array_equal(t[:, 0, 0], [0, 0, 0, 1, 1, 0])
    np.testing.assert_array_equal(t[:, 0, 1], [0, 0, 1, 0, 0, 0])


@pytest.mark.parametrize("k", [1, 2, 4])
def test_reflexivity_and_symmetry(k):
    rng = np.random.default_rng(k)
    y = rng.integers(0, k + 1, size=(3, 8, 9))
    z = rng.integers(0, k + 1, size=(3, 8, 9))
    t = proxy_targets(y, y, k)
    onehot = np.stack([(y == c) for c in range(1, k + 1)], axis=-3).astype(np.float32)
    read = segmentation_from_proxy(t, k)  # Eq. 12: AND channel(s) of g(y, y) give y
    np.testing.assert_array_equal(read, onehot)
    xor = t[:, 2:3] if k == 1 else t[:, k:]
    assert not xor.any()
    np.testing.assert_array_equal(decode_labels(read), y)
    np.testing.assert_array_equal(proxy_targets(y, z, k), proxy_targets(z, y, k))


@pytest.mark.parametrize("k", [1, 3])
def test_torch_matches_numpy_with_batch(k):
    rng = np.random.default_rng(0)
    a = rng.integers(0, k + 1, size=(2, 5, 6, 7))
    b = rng.integers(0, k + 1, size=(2, 5, 6, 7))
    tn = proxy_targets(a, b, k)
    tt = proxy_targets(torch.from_numpy(a), torch.from_numpy(b), k)
    assert isinstance(tt, torch.Tensor) and tt.dtype == torch.float32
    assert tt.shape == (2, 5, proxy_channels(k), 6, 7)
    np.testing.assert_array_equal(tt.numpy(), tn)


def test_bool_and_small_int_labels_accepted():
    t = proxy_targets(A.astype(bool), B.astype(np.uint8), 1)
    np.testing.assert_array_equal(t, proxy_targets(A, B, 1))


def test_bad_inputs():
    with pytest.raises(ValueError, match="same shape"):
        proxy_targets(A, B[:, :2], 1)
    with pytest.raises(ValueError, match="integer labels"):
        proxy_targets(A.astype(np.float32), B, 1)
    with pytest.raises(ValueError, match="integer labels"):
        proxy_targets(torch.from_numpy(A), torch.from_numpy(B).float(), 1)
    with pytest.raises(ValueError, match="outside 0..1"):
        proxy_targets(A * 2, B, 1)
    with pytest.raises(ValueError, match="outside 0..2"):
        proxy_targets(torch.from_numpy(A), torch.from_numpy(B) - 1, 2)
    with pytest.raises(ValueError, match="num_classes"):
        proxy_targets(A, B, 0)
    with pytest.raises(ValueError, match="both be numpy arrays or both torch"):
        proxy_targets(A, torch.from_numpy(B), 1)
    with pytest.raises(ValueError, match=r"\(\.\.\., H, W\)"):
        proxy_targets(np.array([0, 1]), np.array([1, 1]), 1)
    with pytest.raises(ValueError, match="numpy array or torch tensor"):
        proxy_targets([[0, 1]], [[1, 1]], 1)


def test_proxy_probabilities_softmax_and_sigmoid():
    logits = torch.randn(2, 3, 4, 5)
    p = proxy_probabilities(logits, 1)
    torch.testing.assert_close(p.sum(1), torch.ones(2, 4, 5))
    torch.testing.assert_close(p, torch.softmax(logits, 1))
    pn = proxy_probabilities(logits.numpy(), 1)
    np.testing.assert_allclose(pn, p.numpy(), rtol=1e-5, atol=1e-6)

    logits = torch.randn(2, 6, 4, 5) * 50  # large values: numpy sigmoid must not overflow
    p = proxy_probabilities(logits, 3)
    torch.testing.assert_close(p, torch.sigmoid(logits))
    np.testing.assert_allclose(proxy_probabilities(logits.numpy(), 3), p.numpy(), atol=1e-6)
    with pytest.raises(ValueError, match=r"\(\.\.\., 6, H, W\)"):
        proxy_probabilities(torch.randn(2, 4, 4, 5), 3)


def test_segmentation_from_proxy_reads_and_channels():
    probs = torch.arange(3 * 2 * 2, dtype=torch.float32).view(3, 2, 2)
    torch.testing.assert_close(segmentation_from_proxy(probs, 1), probs[1:2])
    probs = torch.rand(2, 8, 3, 3)
    out = segmentation_from_proxy(probs, 4)
    assert out.shape == (2, 4, 3, 3)
    torch.testing.assert_close(out, probs[:, :4])
    with pytest.raises(ValueError, match="num_classes=2"):
        segmentation_from_proxy(torch.rand(2, 3, 3, 3), 2)


def test_decode_labels_threshold_numpy_and_torch():
    probs = np.array(
        [
            [[0.9, 0.2, 0.4, 0.5]],  # class 1
            [[0.1, 0.7, 0.3, 0.5]],  # class 2
        ],
        dtype=np.float32,
    )
    expected = np.array([[1, 2, 0, 1]])  # tie -> first class; 0.4 < 0.5 -> background
    out = decode_labels(probs)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, expected)
    out_t = decode_labels(torch.from_numpy(probs))
    assert out_t.dtype == torch.int64
    np.testing.assert_array_equal(out_t.numpy(), expected)
    np.testing.assert_array_equal(decode_labels(probs, threshold=0.35), [[1, 2, 1, 1]])
    batch = np.stack([probs, probs[::-1]])
    np.testing.assert_array_equal(decode_labels(batch), [[[1, 2, 0, 1]], [[2, 1, 0, 1]]])
    with pytest.raises(ValueError, match="K, H, W"):
        decode_labels(np.zeros((4, 4)))


def test_union_readout_keeps_foreground_a_non_reflexive_network_put_into_xor():
    one = np.array([[0.2], [0.5], [0.3]], dtype=np.float32)[..., None]  # (3, 1, 1): bg, AND, XOR
    assert np.allclose(segmentation_from_proxy(one, 1), [[[0.5]]])
    assert np.allclose(segmentation_from_proxy(one, 1, readout="union"), [[[0.8]]])  # 1 - background
    two = np.array([0.6, 0.1, 0.5, 0.0], dtype=np.float32).reshape(4, 1, 1)  # AND1, AND2, XOR1, XOR2
    union = segmentation_from_proxy(two, 2, readout="union")
    assert np.allclose(union[:, 0, 0], [1 - 0.4 * 0.5, 0.1])
    reflexive = proxy_targets(np.array([[0, 1, 2]]), np.array([[0, 1, 2]]), 2)  # XOR = 0
    assert np.array_equal(segmentation_from_proxy(reflexive, 2, readout="union"),
                          segmentation_from_proxy(reflexive, 2))
    with pytest.raises(ValueError, match="readout"):
        segmentation_from_proxy(two, 2, readout="xor")


def test_c2fcn_readout_option_selects_the_read_out():
    from pairseg.networks import build_model
    from pairseg.proxy import proxy_probabilities

    torch.manual_seed(0)
    model = build_model("c2fcn", 2, readout="union").eval()
    assert model.options["readout"] == "union"
    x = torch.rand(1, 3, 33, 35)
    with torch.no_grad():
        probs = proxy_probabilities(model.forward_identical(x), 2)
        assert torch.allclose(model.predict_proba(x), 1 - (1 - probs[:, :2]) * (1 - probs[:, 2:]))
        model.readout = "and"
        assert torch.allclose(model.predict_proba(x), probs[:, :2])


def test_one_g_proxy_for_numpy_and_torch_and_without_torch():
    """g_proxy has one implementation for both array libraries, importable where torch is not
    (the Slicer modules draw the ground-truth AND/XOR maps with it)."""
    import subprocess
    import sys

    import numpy as np
    import torch

    from pairseg.proxy import proxy_targets, proxy_targets_unchecked

    rng = np.random.default_rng(5)
    a, b = rng.integers(0, 4, (2, 9, 11)), rng.integers(0, 4, (2, 9, 11))
    for k in (1, 3):
        ak, bk = np.minimum(a, k), np.minimum(b, k)
        from_numpy = proxy_targets(ak, bk, k)
        from_torch = proxy_targets_unchecked(torch.from_numpy(ak), torch.from_numpy(bk), k)
        assert isinstance(from_numpy, np.ndarray) and isinstance(from_torch, torch.Tensor)
        np.testing.assert_array_equal(from_numpy, from_torch.numpy())
    code = ("import sys; sys.modules['torch'] = None\n"
            "import numpy as np\n"
            "from pairseg.proxy import proxy_targets, decode_labels, proxy_probabilities\n"
            "t = proxy_targets(np.array([[0, 1], [2, 2]]), np.array([[1, 1], [0, 2]]), 2)\n"
            "print(t.shape, t[:, 0, 1].tolist(), decode_labels(t[:2]).tolist())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split("\n")[0] == "(4, 2, 2) [1.0, 0.0, 0.0, 0.0] [[0, 1], [0, 2]]"
