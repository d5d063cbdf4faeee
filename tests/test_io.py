"""Tests of pairseg.io: geometry-exact round trips, DICOM series, .seg.nrrd by name, errors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from pairseg import constants
from pairseg.atomic import remove_stale_temporaries, write_together
from pairseg.errors import PairSegInputError, PairSegOutputError
from pairseg.io.locations import check_distinct, check_output
from pairseg.io.read import read_label, read_label_volume, read_volume
from pairseg.io.segmentation import OverlapWarning
from pairseg.io.volume import GeometryWarning, same_geometry, Volume
from pairseg.io.write import write_labels, write_probabilities, write_volume


def _rotation(ax: float, az: float) -> np.ndarray:
    cx, sx, cz, sz = np.cos(ax), np.sin(ax), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ rx


# Oblique (rotated), flipped (det -1) and CHAOS-like diag(1, -1, 1) directions.
DIRECTIONS = {
    "oblique": _rotation(0.3, 0.5),
    "flipped": _rotation(0.2, -0.4) @ np.diag([-1.0, 1.0, 1.0]),
    "chaos": np.diag([1.0, -1.0, 1.0]),
}


def _volume(direction: np.ndarray, shape=(5, 7, 9), seed=0) -> Volume:
    rng = np.random.default_rng(seed)
    array = rng.normal(100, 30, shape).astype(np.float32)
    return Volume(array, (0.7, 1.3, 4.5), (-12.25, 33.5, 107.125), direction.ravel())


def _labels(shape=(5, 7, 9)) -> np.ndarray:
    labels = np.zeros(shape, np.uint8)
    labels[1:3, 2:5, 1:4] = 1
    labels[3:5, 0:2, 5:9] = 2
    labels[0, 6, 8] = 3  # a corner voxel: catches flips of any axis
    return labels


def _world(volume_or_image, index) -> np.ndarray:
    image = volume_or_image.to_sitk() if isinstance(volume_or_image, Volume) else volume_or_image
    return np.array(image.TransformIndexToPhysicalPoint(tuple(int(i) for i in index)))


@pytest.mark.parametrize("kind", sorted(DIRECTIONS))
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha", ".seg.nrrd"])
def test_label_round_trip_keeps_geometry(tmp_path, kind, suffix):
    image = _volume(DIRECTIONS[kind])
    labels = _labels()
    out = tmp_path / f"labels{suffix}"
    assert write_labels(out, labels, image, ["a", "b", "c"]) == str(out)
    back, names = read_label(out, ["a", "b", "c"])
    np.testing.assert_array_equal(back, labels)
    assert names == ["a", "b", "c"]
    # Geometry: the labelled corner voxel lands on the same world point as in the image.
    if suffix == ".seg.nrrd":
        back2, _ = read_label(out, ["a", "b", "c"], reference=image)  # same grid: accepted as is
        np.testing.assert_array_equal(back2, labels)
    else:
        written = sitk.ReadImage(str(out))
        z, y, x = np.argwhere(labels == 3)[0]
        np.testing.assert_allclose(_world(written, (x, y, z)), _world(image, (x, y, z)), atol=1e-4)
        assert same_geometry(Volume.from_sitk(written), image)
        read_label(out, ["a", "b", "c"], reference=image)  # no geometry error


@pytest.mark.parametrize("kind", sorted(DIRECTIONS))
@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_volume_round_trip(tmp_path, kind, suffix):
    image = _volume(DIRECTIONS[kind])
    out = tmp_path / f"image{suffix}"
    write_volume(out, image)
    back = read_volume(out)
    assert back.array.dtype == np.float32
    assert back.shape == image.shape
    np.testing.assert_allclose(back.array, image.array, rtol=1e-6)
    assert same_geometry(back, image, tol=1e-5)
    for index in [(0, 0, 0), (8, 6, 4), (3, 1, 2)]:
        np.testing.assert_allclose(_world(back, index), _world(image, index), atol=1e-4)
    assert back.path == str(out)


def test_volume_record_helpers():
    vol = _volume(DIRECTIONS["oblique"])
    assert vol.shape == (5, 7, 9)
    assert vol.spacing_zyx == (4.5, 1.3, 0.7)
    other = vol.like(np.zeros(vol.shape, np.uint8))
    assert same_geometry(vol, other) and other.path is None and other.array.dtype == np.uint8
    with pytest.raises(ValueError):
        vol.like(np.zeros((2, 2, 2)))
    shifted = Volume(vol.array, vol.spacing, (vol.origin[0] + 0.01,) + vol.origin[1:], vol.direction)
    assert not same_geometry(vol, shifted)
    assert same_geometry(vol, shifted, tol=0.1)
    # ijk_to_lps agrees with SimpleITK.
    image = vol.to_sitk()
    index = (4, 2, 3)
    np.testing.assert_allclose((vol.ijk_to_lps() @ np.array(index + (1,)))[:3], _world(image, index), atol=1e-9)
    again = Volume.from_sitk(image)
    assert same_geometry(again, vol, tol=1e-12)
    np.testing.assert_array_equal(again.array, vol.array)


def _write_dicom_series(volume: Volume, folder: Path, series_uid: str = "1.2.826.0.1.3680043.2.1125.1.42",
                        description: str = "") -> None:
    """Write ``volume`` as an MR DICOM series, one file per slice, with position/orientation tags."""
    folder.mkdir(exist_ok=True)
    image = sitk.Cast(volume.to_sitk(), sitk.sitkInt16)
    d = volume.direction
    orientation = "\\".join(f"{v:.10f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        slice_ = image[:, :, k]
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {
            "0008|0060": "MR",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.4",
            "0008|0018": f"{series_uid}.{k + 1}",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1.41",
            "0020|000e": series_uid,
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{p:.6f}" for p in position),
            "0020|0037": orientation,
            "0018|0050": str(volume.spacing[2]),
            "0028|0030": f"{volume.spacing[1]}\\{volume.spacing[0]}",
            "0008|103e": description,
        }
        for key, value in tags.items():
            slice_.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"{series_uid[-2:]}_slice_{k:03d}.dcm"))
        writer.Execute(slice_)


def test_dicom_series(tmp_path):
    vol = _volume(_rotation(0.25, 0.4), shape=(6, 8, 10))  # oblique, proper rotation (DICOM needs det +1)
    vol.array = np.round(vol.array).astype(np.float32)
    _write_dicom_series(vol, tmp_path / "series")
    back = read_volume(tmp_path / "series")
    assert back.array.dtype == np.float32
    np.testing.assert_array_equal(back.array, vol.array)
    assert same_geometry(back, vol, tol=1e-4)
    np.testing.assert_allclose(_world(back, (9, 7, 5)), _world(vol, (9, 7, 5)), atol=1e-3)


def test_dicom_folder_with_two_series(tmp_path):
    first = _volume(np.eye(3), shape=(4, 5, 6), seed=1)
    second = _volume(np.eye(3), shape=(3, 5, 6), seed=2)
    first.array, second.array = np.round(first.array), np.round(second.array)
    _write_dicom_series(first, tmp_path / "dicom", "1.2.826.0.1.3680043.2.1125.1.51", "T2 SPIR")
    _write_dicom_series(second, tmp_path / "dicom", "1.2.826.0.1.3680043.2.1125.1.52", "T1 DUAL")
    with pytest.raises(PairSegInputError, match=r"2 DICOM series; choose one with --series") as caught:
        read_volume(tmp_path / "dicom")
    # Each series with its description and slice count, so a user can pick one.
    assert "1.2.826.0.1.3680043.2.1125.1.51 'T2 SPIR' (4 slices)" in str(caught.value)
    assert "1.2.826.0.1.3680043.2.1125.1.52 'T1 DUAL' (3 slices)" in str(caught.value)
    back = read_volume(tmp_path / "dicom", series_id="1.2.826.0.1.3680043.2.1125.1.52")
    np.testing.assert_array_equal(back.array, second.array)
    with pytest.raises(PairSegInputError, match="no DICOM series 9.9"):
        read_volume(tmp_path / "dicom", series_id="9.9")


def test_seg_nrrd_names_colours_and_mapping(tmp_path):
    image = _volume(DIRECTIONS["oblique"])
    labels = _labels()
    out = tmp_path / "seg.seg.nrrd"
    colors = [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)]
    write_labels(out, labels, image, ["Liver", "spleen", "right kidney"], colors)
    import slicerio

    seg = slicerio.read_segmentation(str(out))
    assert [s["name"] for s in seg["segments"]] == ["Liver", "spleen", "right kidney"]
    np.testing.assert_allclose([s["color"] for s in seg["segments"]], colors)
    # Class list in another order and case: mapping is by name, not label value.
    classes = ["right kidney", "LIVER", "Spleen"]
    back, names = read_label(out, classes, reference=image)
    assert names == classes
    expected = np.select([labels == 3, labels == 1, labels == 2], [1, 2, 3], 0)
    np.testing.assert_array_equal(back, expected)
    # Without a class list, segment names in file order.
    back, names = read_label(out)
    assert names == ["Liver", "spleen", "right kidney"]
    np.testing.assert_array_equal(back, labels)
    # A class without a segment is fine (stays empty); a segment without a class is an error.
    back, _ = read_label(out, ["spleen", "liver", "right kidney", "left kidney"])
    assert not np.any(back == 4)
    with pytest.raises(PairSegInputError, match="right kidney"):
        read_label(out, ["liver", "spleen"])


def test_seg_nrrd_overlapping_layers_and_unordered_segments(tmp_path):
    import slicerio

    image = _volume(DIRECTIONS["flipped"])
    shape_ijk = image.shape[::-1]
    seg = slicerio.create_segmentation(shape_ijk, image.ijk_to_lps())
    big = np.zeros(shape_ijk, bool)
    big[1:8, 1:6, 1:4] = True
    small = np.zeros(shape_ijk, bool)
    small[3:5, 2:4, 2:3] = True  # inside "big": forces a second layer
    other = np.zeros(shape_ijk, bool)
    other[0, 6, 4] = True
    slicerio.add_segment(seg, small, {"id": "s1", "name": "Spleen "})
    slicerio.add_segment(seg, big, {"id": "s2", "name": "liver"})
    slicerio.add_segment(seg, other, {"id": "s3", "name": "Left Kidney"})
    assert seg["voxels"].ndim == 4
    out = tmp_path / "layers.seg.nrrd"
    slicerio.write_segmentation(str(out), seg)
    with pytest.warns(OverlapWarning, match=r"layers\.seg\.nrrd: segments overlap \('liver' and 'spleen' "
                      r"in 4 voxel\(s\)\)"):
        back, names = read_label(out, ["liver", "left kidney", "spleen"], reference=image)
    zyx = lambda m: m.transpose(2, 1, 0)  # noqa: E731
    assert np.all(back[zyx(small)] == 3)  # later class wins where segments overlap
    assert np.all(back[zyx(big & ~small)] == 1)
    assert np.all(back[zyx(other)] == 2)
    assert int(np.count_nonzero(back)) == int((big | small | other).sum())


def test_seg_nrrd_smaller_extent_placed_into_reference(tmp_path):
    image = _volume(DIRECTIONS["oblique"], shape=(6, 10, 12))
    labels = np.zeros(image.shape, np.uint8)
    labels[2:4, 3:7, 4:9] = 1
    labels[4, 5, 8] = 2
    crop = (slice(1, 5), slice(2, 8), slice(3, 10))
    offset_xyz = (3, 2, 1)
    origin = tuple(image.ijk_to_lps() @ np.array(offset_xyz + (1,)))[:3]
    cropped = Volume(labels[crop], image.spacing, origin, image.direction)
    out = tmp_path / "crop.seg.nrrd"
    write_labels(out, labels[crop], cropped, ["liver", "spleen"])
    back, _ = read_label(out, ["liver", "spleen"], reference=image)
    assert back.shape == image.shape
    np.testing.assert_array_equal(back, labels)
    # Larger than the reference: fine while every labelled voxel falls inside...
    big = np.zeros((8, 12, 14), np.uint8)
    big[1:7, 1:11, 1:13] = labels
    origin = tuple(image.ijk_to_lps() @ np.array((-1, -1, -1, 1)))[:3]
    write_labels(out, big, Volume(big, image.spacing, origin, image.direction), ["liver", "spleen"])
    np.testing.assert_array_equal(read_label(out, ["liver", "spleen"], reference=image)[0], labels)
    # ...and an error otherwise.
    big[0, 0, 0] = 1
    write_labels(out, big, Volume(big, image.spacing, origin, image.direction), ["liver", "spleen"])
    with pytest.raises(PairSegInputError, match="outside"):
        read_label(out, ["liver", "spleen"], reference=image)
    # A fractional-voxel shift is an error too.
    origin = tuple(image.ijk_to_lps() @ np.array((0.5, 0, 0, 1)))[:3]
    write_labels(out, labels, Volume(labels, image.spacing, origin, image.direction), ["liver", "spleen"])
    with pytest.raises(PairSegInputError, match="fraction"):
        read_label(out, ["liver", "spleen"], reference=image)


def test_label_geometry_mismatch_is_an_error(tmp_path):
    image = _volume(DIRECTIONS["chaos"])
    other = Volume(image.array, (0.7, 1.3, 5.0), image.origin, image.direction)
    out = tmp_path / "lab.nii.gz"
    write_labels(out, _labels(), other)
    with pytest.raises(PairSegInputError, match=r"lab\.nii\.gz.*geometry differs"):
        read_label(out, reference=image)
    flipped = Volume(image.array, image.spacing, image.origin, np.diag([1.0, 1.0, 1.0]).ravel())
    write_labels(out, _labels(), flipped)
    with pytest.raises(PairSegInputError, match="geometry"):
        read_label(out, reference=image)
    seg = tmp_path / "lab.seg.nrrd"
    write_labels(seg, _labels(), other, ["a", "b", "c"])
    with pytest.raises(PairSegInputError, match="geometry"):
        read_label(seg, reference=image)


def test_plain_label_class_checks(tmp_path):
    image = _volume(DIRECTIONS["chaos"])
    out = tmp_path / "lab.nrrd"
    write_labels(out, _labels(), image)
    labels, names = read_label(out)
    assert names == ["label_1", "label_2", "label_3"]
    with pytest.raises(PairSegInputError, match="exceeds"):
        read_label(out, ["liver", "spleen"])
    # A float image is not a label map.
    write_volume(tmp_path / "img.nrrd", image)
    with pytest.raises(PairSegInputError, match="non-integer"):
        read_label(tmp_path / "img.nrrd")


def test_read_errors_name_the_file(tmp_path):
    with pytest.raises(PairSegInputError, match="missing.nii.gz.*not found"):
        read_volume(tmp_path / "missing.nii.gz")
    with pytest.raises(PairSegInputError, match="not found"):
        read_label(tmp_path / "missing.seg.nrrd")
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"this is not an image" * 10)
    with pytest.raises(PairSegInputError, match="garbage.nii.gz"):
        read_volume(garbage)
    bad_seg = tmp_path / "bad.seg.nrrd"
    bad_seg.write_bytes(b"NRRD0004\nnonsense\n")
    with pytest.raises(PairSegInputError, match="bad.seg.nrrd"):
        read_label(bad_seg)
    flat = tmp_path / "flat.nii.gz"
    sitk.WriteImage(sitk.Image(8, 8, sitk.sitkFloat32), str(flat))
    with pytest.raises(PairSegInputError, match="flat.nii.gz.*2D"):
        read_volume(flat)
    four = tmp_path / "four.nii.gz"
    sitk.WriteImage(sitk.JoinSeries([sitk.Image(4, 4, 3, sitk.sitkFloat32)] * 2), str(four))
    with pytest.raises(PairSegInputError, match="four.nii.gz.*4D"):
        read_volume(four)
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(PairSegInputError, match="no DICOM"):
        read_volume(empty_dir)
    assert issubclass(PairSegInputError, ValueError)


def test_writes_are_atomic(tmp_path, monkeypatch):
    image = _volume(DIRECTIONS["oblique"])
    out = tmp_path / "result.nii.gz"
    write_labels(out, _labels(), image)
    before = out.read_bytes()

    def failing_write(img, path, *args):
        Path(path).write_bytes(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", failing_write)
    # The writer's error names the user's path, never the hidden temporary.
    with pytest.raises(PairSegOutputError, match=r"result\.nii\.gz: cannot write output \(disk full\)") as caught:
        write_labels(out, np.zeros(image.shape, np.uint8), image)
    assert ".tmp-" not in str(caught.value)
    with pytest.raises(PairSegOutputError, match=r"new\.nrrd: cannot write output"):
        write_volume(tmp_path / "new.nrrd", image)
    assert out.read_bytes() == before  # old result intact
    assert sorted(os.listdir(tmp_path)) == ["result.nii.gz"]  # no partial or temporary file


def test_write_labels_rejects_bad_input(tmp_path):
    image = _volume(DIRECTIONS["oblique"])
    with pytest.raises(ValueError, match="shape"):
        write_labels(tmp_path / "x.nii.gz", np.zeros((2, 2, 2), np.uint8), image)
    with pytest.raises(ValueError, match="unsupported"):
        write_labels(tmp_path / "x.png", _labels(), image)
    with pytest.raises(ValueError, match="exceeds"):
        write_labels(tmp_path / "x.seg.nrrd", _labels(), image, ["a"])
    assert not any(tmp_path.iterdir())


def test_probability_volume_as_vector_image(tmp_path):
    image = _volume(DIRECTIONS["oblique"])
    probs = np.random.default_rng(1).random(image.shape + (2,)).astype(np.float32)  # z, y, x, K
    out = tmp_path / "probs.nrrd"
    write_volume(out, image.like(probs))
    back = sitk.ReadImage(str(out))
    assert back.GetNumberOfComponentsPerPixel() == 2
    np.testing.assert_allclose(sitk.GetArrayFromImage(back), probs)
    assert same_geometry(Volume.from_sitk(sitk.VectorIndexSelectionCast(back, 1)), image)
    with pytest.raises(ValueError):
        image.like(np.zeros((2,) + image.shape))  # components first is not accepted


@pytest.mark.parametrize("suffix", [".seg.nrrd", ".nrrd"])
def test_read_label_volume_carries_geometry(tmp_path, suffix):
    image = _volume(DIRECTIONS["flipped"])
    out = tmp_path / f"lab{suffix}"
    write_labels(out, _labels(), image, ["a", "b", "c"])
    volume, names = read_label_volume(out, ["a", "b", "c"])
    assert same_geometry(volume, image) and volume.path == str(out)
    np.testing.assert_array_equal(volume.array, _labels())
    with_ref, _ = read_label_volume(out, ["a", "b", "c"], reference=image)
    assert with_ref.spacing == image.spacing and with_ref.origin == image.origin


# ---------------------------------------------------------------------------------------------
# Corrupt inputs: truncated files, NaN/Inf hidden by a reader, uneven DICOM slices, NIfTI forms
# ---------------------------------------------------------------------------------------------


def _cut(path: Path, fraction: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def _write_uncompressed(path: Path, volume: Volume) -> Path:
    sitk.WriteImage(volume.to_sitk(), str(path), False)
    return path


# (suffix, compressed) for every file format PairSeg reads; MHD keeps its voxels in a .raw file.
FORMATS = [(".nii", False), (".nii.gz", True), (".nrrd", False), (".nrrd", True), (".mha", False),
           (".mha", True), (".mhd", False)]


@pytest.mark.parametrize("fraction", [0.5, 0.98])
@pytest.mark.parametrize("suffix,compressed", FORMATS)
def test_truncated_image_is_refused_by_name(tmp_path, suffix, compressed, fraction):
    volume = _volume(np.eye(3), shape=(12, 30, 40))
    path = tmp_path / f"scan{suffix}"
    sitk.WriteImage(volume.to_sitk(), str(path), compressed)
    assert read_volume(path).shape == (12, 30, 40)
    _cut(tmp_path / "scan.raw" if suffix == ".mhd" else path, fraction)
    with pytest.raises(PairSegInputError, match=r"scan\.(nii|nrrd|mha|mhd).*truncated"):
        read_volume(path)
    labels = tmp_path / f"labels{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(1).integers(0, 3, (12, 30, 40), np.uint8)), str(labels), compressed)
    _cut(tmp_path / "labels.raw" if suffix == ".mhd" else labels, fraction)
    with pytest.raises(PairSegInputError, match=r"labels\.(nii|nrrd|mha|mhd).*truncated"):
        read_label(labels)


def test_metaimage_with_missing_data_file(tmp_path):
    path = _write_uncompressed(tmp_path / "scan.mhd", _volume(np.eye(3)))
    (tmp_path / "scan.raw").unlink()
    with pytest.raises(PairSegInputError, match=r"scan\.mhd.*scan\.raw does not exist"):
        read_volume(path)


@pytest.mark.parametrize("fraction", [0.3, 0.95])
def test_truncated_segmentation_is_refused(tmp_path, fraction):
    image = _volume(np.eye(3), shape=(12, 30, 40))
    labels = np.zeros(image.shape, np.uint8)
    labels[2:10, 5:25, 5:35] = 1
    path = Path(write_labels(tmp_path / "labels.seg.nrrd", labels, image, ["liver"]))
    _cut(path, fraction)
    with pytest.raises(PairSegInputError, match=r"labels\.seg\.nrrd.*truncated"):
        read_label(path)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".mha"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_and_inf_reach_the_engine_as_they_are_stored(tmp_path, suffix, dtype):
    """ITK's NIfTI library replaces non-finite floats by 0; PairSeg puts the stored values back."""
    volume = _volume(np.eye(3))
    volume.array = volume.array.astype(dtype)
    volume.array[1, 2, 3], volume.array[2, 0, 0], volume.array[4, 6, 8] = np.nan, np.inf, -np.inf
    path = tmp_path / f"scan{suffix}"
    write_volume(path, volume)
    back = read_volume(path)
    assert np.isnan(back.array[1, 2, 3]) and back.array[2, 0, 0] == np.inf and back.array[4, 6, 8] == -np.inf
    finite = np.isfinite(volume.array)
    assert np.count_nonzero(~np.isfinite(back.array)) == 3
    np.testing.assert_allclose(back.array[finite], volume.array[finite], rtol=1e-6)
    # A label map with NaN is refused, not read as background.
    with pytest.raises(PairSegInputError, match=r"scan.*NaN or infinite"):
        read_label(path)


def test_dicom_series_with_a_missing_slice_is_refused(tmp_path):
    vol = _volume(_rotation(0.25, 0.4), shape=(7, 8, 10))
    vol.array = np.round(vol.array).astype(np.float32)
    _write_dicom_series(vol, tmp_path / "series")
    gap = sorted((tmp_path / "series").iterdir())[3]
    gap.unlink()
    with pytest.raises(PairSegInputError, match=r"series.*non-uniform slice spacing: slices 2 and 3.*"
                                                r"9 mm apart where the others are 4.5 mm"):
        read_volume(tmp_path / "series")


def test_dicom_series_with_a_truncated_slice_is_refused(tmp_path):
    vol = _volume(np.eye(3), shape=(5, 8, 10))
    vol.array = np.round(vol.array).astype(np.float32)
    _write_dicom_series(vol, tmp_path / "series")
    cut = _cut(sorted((tmp_path / "series").iterdir())[2], 0.6)
    with pytest.raises(PairSegInputError, match=rf"series: 1 DICOM file.*truncated or corrupt: {cut.name}"):
        read_volume(tmp_path / "series")


REAL_DICOM = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "totalseg_examples" / "ct_dicom"


@pytest.mark.skipif(not REAL_DICOM.is_dir(), reason="real CT DICOM example not present beside the project")
def test_real_ct_dicom_missing_or_truncated_slice(tmp_path):
    import shutil

    whole = tmp_path / "whole"
    shutil.copytree(REAL_DICOM, whole)
    assert read_volume(whole).shape[0] == len(list(whole.iterdir()))
    for name, spoil in (("missing", lambda p: p.unlink()), ("cut", lambda p: _cut(p, 0.5))):
        folder = tmp_path / name
        shutil.copytree(REAL_DICOM, folder)
        for path in folder.iterdir():
            path.chmod(0o644)
        spoil(sorted(folder.iterdir())[7])
        with pytest.raises(PairSegInputError, match="non-uniform slice spacing" if name == "missing" else "truncated"):
            read_volume(folder)


def _nifti_forms(path: Path) -> tuple:
    import gzip
    import struct

    with (gzip.open(path) if path.name.endswith(".gz") else open(path, "rb")) as handle:
        header = handle.read(348)
    return struct.unpack_from("<2h6f12f", header, 252)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_qform_sform_disagreement_warns_and_outputs_keep_both(tmp_path, suffix):
    import struct

    image = _volume(_rotation(0.2, 0.3), shape=(6, 8, 10))
    path = _write_uncompressed(tmp_path / "scan.nii", image)
    header = bytearray(path.read_bytes())
    srow = list(struct.unpack_from("<12f", header, 280))
    srow[3] += 50.0  # the sform's origin 50 mm to the side of the qform's
    struct.pack_into("<12f", header, 280, *srow)
    path.write_bytes(bytes(header))
    with pytest.warns(GeometryWarning, match=r"scan\.nii: the NIfTI qform and sform disagree by up to 50 mm"):
        volume = read_volume(path)
    out = Path(write_labels(tmp_path / f"labels{suffix}", _labels((6, 8, 10)), volume, ["a", "b", "c"]))
    assert _nifti_forms(out) == _nifti_forms(path)  # the input's own qform and sform, codes included
    with pytest.warns(GeometryWarning):
        labels = read_label_volume(out, reference=volume)[0]
    np.testing.assert_array_equal(labels.array, _labels((6, 8, 10)))
    # Agreeing forms: no warning, and outputs as ITK writes them.
    plain = _write_uncompressed(tmp_path / "plain.nii", image)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_volume(plain).nifti_forms is None


# ---------------------------------------------------------------------------------------------
# Outputs: checked before work, never destroying inputs, committed together, no temporaries left
# ---------------------------------------------------------------------------------------------


def test_failed_cleanup_does_not_mask_the_write_error(tmp_path, monkeypatch):
    image = _volume(np.eye(3))

    def failing_write(img, path, *args):
        raise RuntimeError("No space left on device")

    def failing_unlink(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(sitk, "WriteImage", failing_write)
    monkeypatch.setattr(Path, "unlink", failing_unlink)
    with pytest.raises(PairSegOutputError, match=r"out\.nrrd: cannot write output \(No space left on device\)"):
        write_volume(tmp_path / "out.nrrd", image)


def test_check_output_refuses_before_any_work(tmp_path):
    suffixes = constants.LABEL_SUFFIXES
    assert check_output(tmp_path / "new" / "deeper" / "labels.nii.gz", suffixes) == \
        tmp_path / "new" / "deeper" / "labels.nii.gz"
    assert not (tmp_path / "new").exists()  # checking creates nothing
    with pytest.raises(PairSegOutputError, match=r"labels\.png: unsupported output file type '\.png'"):
        check_output(tmp_path / "labels.png", suffixes)
    (tmp_path / "folder.nii.gz").mkdir()
    with pytest.raises(PairSegOutputError, match=r"folder\.nii\.gz: output is an existing folder"):
        check_output(tmp_path / "folder.nii.gz", suffixes)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(PairSegOutputError, match=r"afile.*is a file, not a folder"):
        check_output(tmp_path / "afile" / "labels.nii.gz", suffixes)
    with pytest.raises(PairSegOutputError, match=r"afile: output folder is an existing file"):
        check_output(tmp_path / "afile", folder=True)
    # A place no process can create files in (even root): /proc.
    with pytest.raises(PairSegOutputError, match=r"labels\.nii\.gz: cannot write output in /proc"):
        check_output("/proc/labels.nii.gz", suffixes)
    assert sorted(os.listdir(tmp_path)) == ["afile", "folder.nii.gz"]  # the write test left nothing


def test_check_distinct_sees_through_links_and_dots(tmp_path):
    scan = tmp_path / "scan.nii.gz"
    scan.write_bytes(b"")
    (tmp_path / "link.nii.gz").symlink_to(scan)
    with pytest.raises(PairSegOutputError, match=r"--output is the input .*scan\.nii\.gz"):
        check_distinct([scan], [("--output", tmp_path / "sub" / ".." / "scan.nii.gz")])
    with pytest.raises(PairSegOutputError, match="--output is the input"):
        check_distinct([scan], [("--output", tmp_path / "link.nii.gz")])
    with pytest.raises(PairSegOutputError, match=r"--probabilities is the same file as --output"):
        check_distinct([scan], [("--output", tmp_path / "a.nii.gz"), ("--probabilities", tmp_path / "a.nii.gz")])
    check_distinct([scan], [("--output", tmp_path / "a.nii.gz"), ("--probabilities", None)])


def test_write_together_commits_all_or_none(tmp_path, monkeypatch):
    image = _volume(np.eye(3))
    first, second = tmp_path / "labels.nii.gz", tmp_path / "probs.nii.gz"
    write_labels(first, _labels(), image)
    write_volume(second, image)
    before = first.read_bytes(), second.read_bytes()
    real_write = sitk.WriteImage

    def second_fails(img, path, *args):
        if "probs" in str(path):
            raise RuntimeError("disk full")
        real_write(img, path, *args)

    monkeypatch.setattr(sitk, "WriteImage", second_fails)
    with pytest.raises(PairSegOutputError, match=r"probs\.nii\.gz: cannot write output"):
        with write_together():
            write_labels(first, np.zeros(image.shape, np.uint8), image)
            write_volume(second, image)
    assert (first.read_bytes(), second.read_bytes()) == before  # the earlier output is not replaced
    assert sorted(os.listdir(tmp_path)) == ["labels.nii.gz", "probs.nii.gz"]
    monkeypatch.setattr(sitk, "WriteImage", real_write)
    # A rename that fails half way puts the replaced outputs back.
    real_replace = os.replace
    failures = []

    def replace_fails_for_probs(src, dst):  # the new probabilities cannot be moved into place, once
        if str(dst) == str(second) and not failures:
            failures.append(src)
            raise OSError(28, "No space left on device", str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_fails_for_probs)
    with pytest.raises(PairSegOutputError, match=r"probs\.nii\.gz: cannot write output .*no output of this case"):
        with write_together():
            write_labels(first, np.zeros(image.shape, np.uint8), image)
            write_volume(second, image)
    monkeypatch.setattr(os, "replace", real_replace)
    assert (first.read_bytes(), second.read_bytes()) == before
    assert sorted(os.listdir(tmp_path)) == ["labels.nii.gz", "probs.nii.gz"]
    with write_together():
        write_labels(first, np.zeros(image.shape, np.uint8), image)
        write_volume(second, image)
        assert first.read_bytes() == before[0]  # nothing replaced before the block ends
    assert read_label(first)[0].max() == 0


def test_stale_temporaries_of_the_same_output_are_removed(tmp_path):
    from pairseg.modelfiles.weights import atomic_torch_save

    out = tmp_path / "labels.nii.gz"
    mine = [tmp_path / ".labels.tmp-0123abcd.nii.gz", tmp_path / ".labels.tmp-0123abcd.nii.gz.forms"]
    others = [tmp_path / ".other.tmp-0123abcd.nii.gz", tmp_path / "labels.tmp-0123abcd.nii.gz",
              tmp_path / ".labels.tmp-notours.nii.gz", tmp_path / "keep.txt"]
    for path in mine + others:
        path.write_bytes(b"x")
    assert sorted(remove_stale_temporaries(out)) == sorted(mine)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in others)
    # The temporary a real checkpoint write uses, caught while it is being written: while its
    # process runs, another run's clean-up leaves it alone; once that process is gone it is stale.
    import subprocess
    import sys

    import torch

    model = tmp_path / "m.pairseg.ckpt"
    seen = []
    real_save = torch.save

    def save_and_look(obj, stream, *args, **kwargs):
        seen.extend(p for p in tmp_path.iterdir() if p.name.startswith(".m.pairseg.tmp-"))
        assert remove_stale_temporaries(model) == []  # our own, live temporary is kept
        return real_save(obj, stream, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "save", save_and_look)
        atomic_torch_save({"a": 1}, model)
    assert len(seen) == 1 and model.is_file() and not seen[0].exists()
    assert seen[0].name.startswith(f".m.pairseg.tmp-{os.getpid()}-") and seen[0].name.endswith(".ckpt")
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    dead = tmp_path / seen[0].name.replace(f"-{os.getpid()}-", f"-{int(finished.stdout)}-")
    alive = tmp_path / seen[0].name
    from pairseg import atomic

    other_host = f"{(int(atomic._HOST, 16) + 1) % 65536:04x}"
    elsewhere = tmp_path / dead.name.replace(f"-{atomic._HOST}", f"-{other_host}")  # same pid, other machine
    for path in (dead, alive, elsewhere):
        path.write_bytes(b"half a checkpoint")
    assert remove_stale_temporaries(model) == [dead]
    assert alive.exists() and elsewhere.exists()  # another machine's writer may still be at work
    old = elsewhere.stat().st_mtime - atomic.STALE_AFTER_S - 1
    os.utime(elsewhere, (old, old))
    assert remove_stale_temporaries(model) == [elsewhere]


def test_segment_series_option_picks_one_of_several(tmp_path, capsys):
    """`pairseg segment --series UID`: the CLI way to choose; the error lists what there is."""
    import json

    import torch

    from pairseg.cli import main
    from pairseg.modelfiles.weights import save_model
    from pairseg.networks import build_model

    torch.manual_seed(0)
    model = save_model(tmp_path / "m.pairseg", build_model("c2fcn", 1, 3, base="unet", width=4),
                       {"class_names": ["liver"], "class_colors": [[1, 0, 0]], "modality": "MR", "size": 32})
    first, second = _volume(np.eye(3), shape=(4, 20, 24), seed=1), _volume(np.eye(3), shape=(5, 20, 24), seed=2)
    first.array, second.array = np.round(first.array), np.round(second.array)
    _write_dicom_series(first, tmp_path / "dicom", "1.2.826.0.1.3680043.2.1125.1.61", "T2 SPIR")
    _write_dicom_series(second, tmp_path / "dicom", "1.2.826.0.1.3680043.2.1125.1.62", "T1 DUAL")
    out = tmp_path / "labels.nii.gz"
    argv = ["segment", "--model", str(model), "--input", str(tmp_path / "dicom"), "--output", str(out),
            "--device", "cpu", "--events", "json"]
    assert main(argv) == 2
    error = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert "choose one with --series UID" in error["message"] and "'T1 DUAL' (5 slices)" in error["message"]
    assert not out.exists()
    assert main(argv + ["--series", "1.2.826.0.1.3680043.2.1125.1.62"]) == 0
    assert read_label(out)[0].shape == (5, 20, 24)
    assert main(argv + ["--series", "9.9"]) == 2
    assert "no DICOM series 9.9" in capsys.readouterr().out
    argv[argv.index("--input") + 1] = str(out)  # an image file has no series to pick
    assert main(argv + ["--series", "1.2.826.0.1.3680043.2.1125.1.62", "--output", str(tmp_path / "x.nii.gz")]) == 2
    assert "--series picks a series of a DICOM folder; this input is an image file" in capsys.readouterr().out


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".mha"])
def test_write_probabilities_streams_the_file_write_volume_writes(tmp_path, suffix, monkeypatch):
    import gzip
    import tracemalloc

    rng = np.random.default_rng(0)
    canonical = rng.random((60, 3, 64, 96)).astype(np.float16)
    probabilities = canonical[::-1]  # a strided view, as predict_native returns for a flipped volume
    like = _volume(DIRECTIONS["oblique"], shape=(60, 64, 96))
    expected = write_volume(tmp_path / f"expected{suffix}",
                            like.like(np.moveaxis(probabilities, 1, -1).astype(np.float32)))
    for module in ("nifti", "nrrd_mha", "write"):  # slabs of a few slices, written and read back
        monkeypatch.setattr(f"pairseg.io.{module}._CHUNK", 1 << 16)
    tracemalloc.start()
    try:
        written = write_probabilities(tmp_path / f"probs{suffix}", probabilities, like)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    full_float32 = probabilities.size * 4
    assert peak < full_float32 / 4, (peak, full_float32)  # never a whole float32 (or float16) copy
    a, b = sitk.ReadImage(written), sitk.ReadImage(expected)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
    assert a.GetNumberOfComponentsPerPixel() == 3 and a.GetPixelID() == sitk.sitkVectorFloat32
    for getter in ("GetSpacing", "GetOrigin", "GetDirection", "GetSize"):
        assert getattr(a, getter)() == getattr(b, getter)()
    if suffix.startswith(".nii"):
        opener = gzip.open if suffix.endswith(".gz") else open
        with opener(written, "rb") as x, opener(expected, "rb") as y:
            assert x.read() == y.read()  # byte for byte what ITK writes
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"expected{suffix}", f"probs{suffix}"])
