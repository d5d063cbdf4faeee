"""pairseg.augment: one spatial transform per pair, intensity jitter per image, seeded."""

from __future__ import annotations

import torch

from pairseg.augment import AugmentConfig, augment_batch
from pairseg.proxy import proxy_targets


def _pair(n=4, size=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    la = torch.zeros(n, size, size, dtype=torch.long)
    lb = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        y, x = torch.randint(4, size - 24, (2,), generator=g).tolist()
        la[i, y:y + 18, x:x + 14] = 1
        la[i, y + 2:y + 8, x + 2:x + 6] = 2
        lb[i, y + 5:y + 21, x - 3:x + 12] = 1
        lb[i, y + 12:y + 16, x:x + 4] = 2
    xa = torch.rand(n, 3, size, size, generator=g)
    xb = torch.rand(n, 3, size, size, generator=g)
    return xa, xb, la, lb


def _spatial_only(**kw):
    return AugmentConfig(rotation_deg=25.0, scale=0.2, flip_lr=True, flip_ud=True, brightness=0.0,
                         contrast=0.0, gamma=0.0, **kw)


def test_disabled_is_identity():
    xa, xb, la, lb = _pair()
    images, labels = augment_batch([xa, xb], [la, lb], AugmentConfig(enabled=False), torch.Generator())
    assert images[0] is xa and images[1] is xb and labels[0] is la and labels[1] is lb


def test_same_spatial_transform_for_both_members():
    xa, _, la, _ = _pair()
    # Identical members and no intensity jitter: outputs must stay identical.
    images, labels = augment_batch([xa, xa.clone()], [la, la.clone()], _spatial_only(),
                                   torch.Generator().manual_seed(3))
    torch.testing.assert_close(images[0], images[1], rtol=0, atol=0)
    assert torch.equal(labels[0], labels[1])
    assert not torch.equal(labels[0], la)  # something did move


def test_and_xor_of_augmented_pair_is_augmented_and_xor():
    xa, xb, la, lb = _pair(n=6, seed=5)
    config = AugmentConfig(rotation_deg=30.0, scale=0.2, flip_lr=True, flip_ud=True)
    _, (wa, wb) = augment_batch([xa, xb], [la, lb], config, torch.Generator().manual_seed(11))
    # Warp the proxy maps with the same draw: the transform is pointwise sampling, so the proxy of
    # the warped labels must equal the warped proxy of the labels.
    proxy = proxy_targets(la, lb, 2)  # (N, 4, H, W)
    channels = [proxy[:, c].long() for c in range(proxy.shape[1])]
    _, warped = augment_batch([xa] * len(channels), channels, config, torch.Generator().manual_seed(11))
    expected = torch.stack([w.float() for w in warped], dim=1)
    torch.testing.assert_close(proxy_targets(wa, wb, 2), expected, rtol=0, atol=0)
    # Labels stay integer class ids.
    assert wa.dtype == la.dtype and set(torch.unique(wa).tolist()) <= {0, 1, 2}


def test_intensity_jitter_is_per_image():
    xa, _, la, _ = _pair()
    config = AugmentConfig(rotation_deg=0.0, scale=0.0, brightness=0.2, contrast=0.2, gamma=0.3)
    images, labels = augment_batch([xa, xa.clone()], [la, la.clone()], config, torch.Generator().manual_seed(1))
    assert not torch.allclose(images[0], images[1])
    assert torch.equal(labels[0], la) and torch.equal(labels[1], la)  # no spatial change


def test_deterministic_for_a_generator_seed():
    xa, xb, la, lb = _pair()
    config = AugmentConfig(flip_lr=True)
    first = augment_batch([xa, xb], [la, lb], config, torch.Generator().manual_seed(42))
    again = augment_batch([xa, xb], [la, lb], config, torch.Generator().manual_seed(42))
    other = augment_batch([xa, xb], [la, lb], config, torch.Generator().manual_seed(43))
    for a, b in zip(first[0] + first[1], again[0] + again[1]):
        assert torch.equal(a, b)
    assert not torch.equal(first[0][0], other[0][0])


def test_single_image_batches_and_config_dict():
    xa, _, la, _ = _pair(n=2)
    images, labels = augment_batch([xa], [la], AugmentConfig(), torch.Generator().manual_seed(0))
    assert len(images) == 1 and images[0].shape == xa.shape and labels[0].shape == la.shape
    assert AugmentConfig().to_dict()["flip_lr"] is False  # lateral organs keep their sides


def test_shift_moves_content_and_uncovers_background():
    """--shift translates image and label together (same transform for both pair members); what
    it uncovers is zeros (background), and without --shift nothing moves."""
    from pairseg.augment import AugmentConfig, augment_batch

    image = torch.zeros(64, 1, 32, 32)
    image[:, :, 12:20, 12:20] = 1.0
    label = (image[:, 0] > 0).long()
    config = AugmentConfig(rotation_deg=0.0, scale=0.0, brightness=0.0, contrast=0.0, gamma=0.0, shift=0.25)
    images, labels = augment_batch([image, image.clone()], [label, label.clone()], config,
                                   torch.Generator().manual_seed(0))
    assert torch.equal(images[0], images[1]) and torch.equal(labels[0], labels[1])
    rows = [torch.nonzero(l.any(dim=1)).flatten() for l in labels[0]]
    first_rows = {int(r[0]) for r in rows if len(r)}
    assert len(first_rows) > 5 and min(first_rows) < 12 < max(first_rows)  # moved up and down
    assert images[0][:, :, 0, :].abs().max() < 1e-6  # uncovered edge is background
    still = AugmentConfig(rotation_deg=0.0, scale=0.0, brightness=0.0, contrast=0.0, gamma=0.0)
    same, same_labels = augment_batch([image], [label], still, torch.Generator().manual_seed(0))
    assert torch.allclose(same[0], image, atol=1e-5) and torch.equal(same_labels[0], label)


def test_remap_and_invert_keep_edges_and_labels():
    from pairseg.augment import _remap

    ramp = torch.linspace(0, 1, 101).view(1, 1, 1, 101).repeat(3, 1, 1, 1)
    curved = _remap(ramp, torch.tensor([True, True, False]), torch.Generator().manual_seed(3))
    assert (curved[:2].diff(dim=-1) >= 0).all()  # monotone: intensity order kept
    assert torch.allclose(curved[:2, ..., 0], torch.zeros(2, 1, 1)) and torch.allclose(curved[:2, ..., -1], torch.ones(2, 1, 1))
    assert not torch.allclose(curved[0], ramp[0]) and torch.equal(curved[2], ramp[2])  # only where chosen
    xa, xb, la, lb = _pair()
    plain = AugmentConfig(rotation_deg=0.0, scale=0.0, brightness=0.0, contrast=0.0, gamma=0.0)
    inverted = AugmentConfig(rotation_deg=0.0, scale=0.0, brightness=0.0, contrast=0.0, gamma=0.0, invert=1.0)
    images, labels = augment_batch([xa, xb], [la, lb], inverted, torch.Generator().manual_seed(0))
    base, _ = augment_batch([xa, xb], [la, lb], plain, torch.Generator().manual_seed(0))
    torch.testing.assert_close(images[0], 1.0 - base[0])
    assert torch.equal(labels[0], la) and torch.equal(labels[1], lb)


def test_unused_remap_and_invert_leave_the_random_sequence_alone():
    xa, xb, la, lb = _pair()
    first, _ = augment_batch([xa, xb], [la, lb], AugmentConfig(), torch.Generator().manual_seed(5))
    again, _ = augment_batch([xa, xb], [la, lb], AugmentConfig(invert=0.0, remap=0.0), torch.Generator().manual_seed(5))
    other, _ = augment_batch([xa, xb], [la, lb], AugmentConfig(remap=0.5), torch.Generator().manual_seed(5))
    torch.testing.assert_close(first[0], again[0])
    assert not torch.allclose(first[0], other[0])
