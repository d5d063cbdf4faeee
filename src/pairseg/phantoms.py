"""Synthetic abdominal MR phantoms: the engine's test dataset (the demo uses the embedded real
CHAOS case instead).

The tests need many small labelled volumes fast and without any data beside the project, so
they are generated: axial volumes with a body outline, spine, aorta, a few bright fluid-filled bowel loops and four labelled
organs placed as in a patient (LPS): the liver large on the patient's right (low x, the left of
the screen in radiological display) and superior, both kidneys posterior beside the spine (the
right one a little lower), the spleen posterolateral on the left. Each case gets its own smooth
random deformation, organ sizes and positions, intensities (T2-weighted fat-suppressed look:
kidneys and spleen bright, liver darker, muscle dark), a multiplicative bias field and Rician
noise. Spacing is anisotropic (1.5, 1.5, 6 mm by default), like abdominal MR.

Cases are deterministic under ``seed``: case ``i`` uses ``numpy.random.default_rng([seed, i])``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

import numpy as np
from scipy import ndimage

from .atomic import write_json
from pairseg.io.volume import IDENTITY_DIRECTION, Volume
from pairseg.io.write import write_labels, write_volume

__all__ = ["PHANTOM_CLASSES", "make_phantom_case", "make_phantom_dataset"]

#: Foreground classes, label values 1..4 (same order as the CHAOS data).
PHANTOM_CLASSES = ["liver", "right kidney", "left kidney", "spleen"]

# Mean intensity per tissue (fraction of the scanner range), T2 fat-suppressed MR and CT (HU).
_MR = {"air": 0.0, "body": 0.20, "wall": 0.30, "spine": 0.12, "csf": 0.9, "aorta": 0.05, "bowel": 0.85,
       "liver": 0.38, "rk": 0.72, "lk": 0.72, "medulla": 0.55, "spleen": 0.58}
_CT = {"air": -1000.0, "body": -80.0, "wall": 40.0, "spine": 400.0, "csf": 10.0, "aorta": 180.0, "bowel": 5.0,
       "liver": 60.0, "rk": 160.0, "lk": 160.0, "medulla": 110.0, "spleen": 50.0}


def _smooth_field(
    rng: np.random.Generator, coords: Sequence[np.ndarray], amplitude: float, waves: int = 4
) -> np.ndarray:
    """Sum of random low-frequency plane waves over normalised coordinates."""
    field = np.zeros(np.broadcast_shapes(*(c.shape for c in coords)), dtype=np.float32)
    for _ in range(waves):
        freq = rng.normal(0.0, 1.6, size=3)
        phase = rng.uniform(0, 2 * np.pi)
        field += np.sin(freq[0] * coords[0] + freq[1] * coords[1] + freq[2] * coords[2] + phase).astype(np.float32)
    return field * np.float32(amplitude / np.sqrt(waves))


def _ellipsoid(u, v, w, center, radii, angle: float = 0.0) -> np.ndarray:
    """Signed-ish implicit function (<1 inside) of an ellipsoid rotated by ``angle`` in plane."""
    du, dv, dw = u - center[0], v - center[1], w - center[2]
    c, s = np.cos(angle), np.sin(angle)
    ru, rv = c * du + s * dv, -s * du + c * dv
    return (ru / radii[0]) ** 2 + (rv / radii[1]) ** 2 + (dw / radii[2]) ** 2


def _render_image(rng: np.random.Generator, modality: str, masks: dict, coords: tuple) -> np.ndarray:
    """The phantom's intensities (z, y, x) float32: each tissue's value of the modality's table
    (``masks``: tissue name -> boolean mask, painted in order), smooth texture, in-plane blur, then
    MR: a bias field and Rician noise (scaled to about 800); CT: Gaussian noise (HU)."""
    u, v, w = coords
    table = _MR if modality == "MR" else _CT
    scale = {k: val * (rng.uniform(0.9, 1.1) if modality == "MR" else 1.0) for k, val in table.items()}
    image = np.full(masks["body"].shape, scale["air"], dtype=np.float32)
    for key, mask in masks.items():  # in this order: later tissues paint over earlier ones
        image[mask] = scale[key]
    texture = _smooth_field(rng, (u * 6, v * 6, w * 3), 1.0)
    if modality == "MR":
        image *= 1.0 + 0.06 * texture
        image = ndimage.gaussian_filter(image, sigma=(0.0, 0.7, 0.7))
        bias = np.exp(_smooth_field(rng, (u, v, w), 0.35, waves=3) + 0.25 * rng.uniform(-1, 1) * v)
        image *= bias.astype(np.float32)
        sigma = 0.03
        n1 = rng.normal(0.0, sigma, image.shape).astype(np.float32)
        n2 = rng.normal(0.0, sigma, image.shape).astype(np.float32)
        image = np.sqrt((image + n1) ** 2 + n2**2) * np.float32(800.0)
    else:
        image += 8.0 * texture
        image = ndimage.gaussian_filter(image, sigma=(0.0, 0.7, 0.7))
        image += rng.normal(0.0, 12.0, image.shape).astype(np.float32)
    return image


def make_phantom_case(
    seed: int = 0,
    index: int = 0,
    shape: Sequence[int] = (24, 96, 96),
    spacing: Sequence[float] = (1.5, 1.5, 6.0),
    modality: str = "MR",
) -> tuple[Volume, np.ndarray]:
    """One phantom: (image Volume float32, labels uint8 (z, y, x) with classes 1..4)."""
    modality = modality.upper()
    if modality not in ("MR", "CT"):
        raise ValueError(f"modality must be 'MR' or 'CT', got {modality!r}")
    if len(shape) != 3 or min(shape) < 4:
        raise ValueError(f"phantom shape must be 3 sizes of at least 4, got {tuple(shape)}")
    rng = np.random.default_rng([int(seed), int(index)])
    nz, ny, nx = (int(s) for s in shape)
    sx, sy, sz = (float(s) for s in spacing)
    origin = (-(nx - 1) * sx / 2, -(ny - 1) * sy / 2, -(nz - 1) * sz / 2)

    # Normalised patient coordinates: u to the patient's left, v posterior, w superior, in [-1, 1].
    w = np.linspace(-1, 1, nz, dtype=np.float32)[:, None, None]
    v = np.linspace(-1, 1, ny, dtype=np.float32)[None, :, None]
    u = np.linspace(-1, 1, nx, dtype=np.float32)[None, None, :]
    u, v, w = np.broadcast_arrays(u, v, w)
    # Smooth random deformation of the whole anatomy.
    u = u + _smooth_field(rng, (u, v, w), 0.05)
    v = v + _smooth_field(rng, (u, v, w), 0.05)
    w = w + _smooth_field(rng, (u, v, w), 0.04) + rng.uniform(-0.08, 0.08)

    def jitter(center, radii, pos=0.04, size=0.12):
        c = np.asarray(center) + rng.uniform(-pos, pos, 3)
        r = np.asarray(radii) * rng.uniform(1 - size, 1 + size, 3)
        return c, r

    body_scale = rng.uniform(0.95, 1.05)
    body = (u / (0.88 * body_scale)) ** 2 + ((v - 0.05) / (0.68 * body_scale)) ** 2 < 1.0
    wall = body & ((u / (0.80 * body_scale)) ** 2 + ((v - 0.05) / (0.60 * body_scale)) ** 2 >= 1.0)
    spine = (u / 0.13) ** 2 + ((v - 0.48) / 0.12) ** 2 < 1.0
    csf = (u / 0.04) ** 2 + ((v - 0.50) / 0.04) ** 2 < 1.0
    aorta = ((u - 0.06) / 0.055) ** 2 + ((v - 0.28) / 0.055) ** 2 < 1.0
    inner = body & ~wall & ~spine & ~aorta

    labels = np.zeros((nz, ny, nx), dtype=np.uint8)
    c, r = jitter((-0.36, -0.02, 0.30), (0.36, 0.42, 0.55))
    liver = _ellipsoid(u, v, w, c, r, rng.uniform(-0.2, 0.2)) < 1.0
    c2, r2 = jitter((0.02, -0.26, 0.42), (0.30, 0.16, 0.30))
    liver |= _ellipsoid(u, v, w, c2, r2, rng.uniform(-0.2, 0.2)) < 1.0
    labels[liver & inner] = 1
    c, r = jitter((0.52, 0.22, 0.32), (0.17, 0.26, 0.36))
    labels[(_ellipsoid(u, v, w, c, r, rng.uniform(0.3, 0.7)) < 1.0) & inner] = 4
    medulla = np.zeros_like(labels, dtype=bool)
    for value, (cu, cw) in ((2, (-0.33, -0.38)), (3, (0.33, -0.24))):
        c, r = jitter((cu, 0.36, cw), (0.15, 0.19, 0.32), size=0.1)
        side = np.sign(cu)
        kidney = _ellipsoid(u, v, w, c, r, side * rng.uniform(0.3, 0.6)) < 1.0
        hilum = _ellipsoid(u, v, w, (c[0] - side * 0.15, c[1], c[2]), (0.08, 0.08, 0.15)) < 1.0
        kidney &= inner & ~hilum
        labels[kidney] = value
        medulla |= kidney & (_ellipsoid(u, v, w, c, r * 0.55, side * 0.4) < 1.0)

    # Bright bowel loops anterior in the free abdomen: distractors for the network.
    bowel = np.zeros_like(medulla)
    for _ in range(int(rng.integers(3, 6))):
        c = (rng.uniform(-0.3, 0.5), rng.uniform(-0.5, 0.0), rng.uniform(-0.9, 0.3))
        bowel |= _ellipsoid(u, v, w, c, rng.uniform(0.06, 0.12, 3) * (1, 1, 2.5)) < 1.0
    bowel &= inner & (labels == 0)

    masks = {"body": body, "wall": wall, "spine": spine, "csf": csf & body, "aorta": aorta, "bowel": bowel,
             "liver": labels == 1, "spleen": labels == 4, "rk": labels == 2, "lk": labels == 3, "medulla": medulla}
    image = _render_image(rng, modality, masks, (u, v, w))
    volume = Volume(image.astype(np.float32), (sx, sy, sz), origin, IDENTITY_DIRECTION)
    return volume, labels


def make_phantom_dataset(
    folder: Union[str, Path],
    n_cases: int = 6,
    shape: Sequence[int] = (24, 96, 96),
    seed: int = 0,
    modality: str = "MR",
    spacing: Sequence[float] = (1.5, 1.5, 6.0),
) -> Path:
    """Write ``case_XXX_image.nii.gz`` / ``case_XXX_label.nii.gz`` pairs and a Medical
    Segmentation Decathlon style ``dataset.json`` into ``folder``; return the folder."""
    if n_cases < 1:
        raise ValueError("n_cases must be at least 1")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    training = []
    for i in range(n_cases):
        image, labels = make_phantom_case(seed, i, shape, spacing, modality)
        name = f"case_{i:03d}"
        write_volume(out / f"{name}_image.nii.gz", image)
        write_labels(out / f"{name}_label.nii.gz", labels, image, PHANTOM_CLASSES)
        training.append({"image": f"./{name}_image.nii.gz", "label": f"./{name}_label.nii.gz"})
    description = {
        "name": f"PairSeg-phantoms-{modality.upper()}",
        "description": "Synthetic abdominal phantoms (liver, kidneys, spleen) generated by pairseg.phantoms",
        "reference": "pairseg.phantoms.make_phantom_dataset"
        f"(n_cases={n_cases}, shape={tuple(int(s) for s in shape)}, seed={seed}, modality={modality.upper()!r})",
        "licence": "CC0 (synthetic)",
        "tensorImageSize": "3D",
        "modality": {"0": modality.upper()},
        "labels": {"0": "background", **{str(k): n for k, n in enumerate(PHANTOM_CLASSES, start=1)}},
        "numTraining": n_cases,
        "training": training,
        "numTest": 0,
        "test": [],
    }
    write_json(out / "dataset.json", description)
    return out
