"""The CHAOS sample data path (PairSegLib.sampledata), headless on real MRML.

The Zenodo archive itself (0.9 GB) is not downloaded here: each test writes an archive with the
CHAOS layout (``Train_Sets/MR/<patient>/T2SPIR/DICOM_anon/*.dcm`` + ``Ground/*.png``, masks in the
CHAOS grey values) from a known volume and label map, then checks that conversion and loading give
back exactly that volume and label map, in physical space.
"""

import os
import sys
import types
import zipfile

import numpy as np
import pytest

sitk = pytest.importorskip("SimpleITK")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def sampledata(load_module, mrml_scene):
    load_module("PairSeg")  # puts PairSegLib on the path the way Slicer does
    from PairSegLib import sampledata

    return sampledata


def syntheticCase():
    """A small left-handed MR-like volume (direction diag(1, -1, 1), like the CHAOS NIfTI copy)
    and a label map holding all four organs."""
    rng = np.random.default_rng(0)
    array = rng.integers(0, 1200, size=(6, 20, 24)).astype(np.float32)
    labels = np.zeros(array.shape, np.uint8)
    labels[1:5, 2:9, 3:11] = 1
    labels[2:4, 12:16, 2:6] = 2
    labels[2:5, 12:17, 15:20] = 3
    labels[0:3, 3:7, 16:22] = 4
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.5, 1.25, 7.7))
    image.SetOrigin((-12.0, 40.0, -30.0))
    image.SetDirection((1, 0, 0, 0, -1, 0, 0, 0, 1))
    label = sitk.GetImageFromArray(labels)
    label.CopyInformation(image)
    return image, label


def writeChaosArchive(image, label, zipPath, patient=2, skipMask=None):
    """Write ``image`` (rounded to int16) as a DICOM series and ``label`` as CHAOS masks into a zip.

    File numbers are a fixed shuffle of the slice order (``sliceNumbers``), so only a reader that
    pairs masks with slices by file name gets the labels right.
    """
    folder = os.path.dirname(zipPath)
    work = os.path.join(folder, "dicom-work")
    os.makedirs(work, exist_ok=True)
    voxels = np.round(sitk.GetArrayFromImage(image)).astype(np.int16)
    labels = sitk.GetArrayFromImage(label)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    orientation = "\\".join(f"{v:g}" for v in list(direction[:, 0]) + list(direction[:, 1]))
    prefix = f"Train_Sets/MR/{patient}/T2SPIR"
    with zipfile.ZipFile(zipPath, "w") as archive:
        archive.writestr("Train_Sets/MR/1/T2SPIR/DICOM_anon/IMG-0001-00001.dcm", b"another patient")
        count = voxels.shape[0]
        for z, number in enumerate(sliceNumbers(count)):
            stem = f"IMG-{patient:04d}-{number:05d}"
            sliceImage = sitk.GetImageFromArray(voxels[z][None])
            sliceImage.SetSpacing(image.GetSpacing())
            tags = {"0008|0060": "MR", "0008|0008": "ORIGINAL\\PRIMARY\\M_SE\\M\\SE",
                    "0010|0020": f"CHAOS-{patient}", "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
                    "0020|000e": "1.2.826.0.1.3680043.2.1125.1.2", "0020|0037": orientation,
                    "0020|0032": "\\".join(f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint((0, 0, z))),
                    "0020|0013": str(number), "0018|0050": f"{image.GetSpacing()[2]:g}"}
            writer = sitk.ImageFileWriter()
            writer.KeepOriginalImageUIDOn()
            for key, value in tags.items():
                sliceImage.SetMetaData(key, value)
            path = os.path.join(work, stem + ".dcm")
            writer.SetFileName(path)
            writer.Execute(sliceImage)
            archive.write(path, f"{prefix}/DICOM_anon/{stem}.dcm")
            if z == skipMask:
                continue
            grey = sitk.GetImageFromArray((labels[z] * 63).astype(np.uint8))
            pngPath = os.path.join(work, stem + ".png")
            sitk.WriteImage(grey, pngPath)
            archive.write(pngPath, f"{prefix}/Ground/{stem}.png")
    return zipPath


def sliceNumbers(count):
    """File number of each slice (z order): a fixed shuffle of 1..count."""
    return [int(n) + 1 for n in np.random.default_rng(7).permutation(count)]


def inPhysicalSpace(moving, reference):
    """``moving`` resampled (nearest neighbour) onto ``reference``'s grid, as an array."""
    resampled = sitk.Resample(moving, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                              moving.GetPixelID())
    return sitk.GetArrayFromImage(resampled)


def checkConverted(imagePath, labelPath, image, label):
    converted, convertedLabel = sitk.ReadImage(imagePath), sitk.ReadImage(labelPath)
    assert converted.GetSize() == image.GetSize()
    assert np.allclose(converted.GetSpacing(), image.GetSpacing(), atol=1e-4)
    expected = np.round(inPhysicalSpace(image, converted))
    assert np.array_equal(sitk.GetArrayFromImage(converted), expected)
    assert np.array_equal(sitk.GetArrayFromImage(convertedLabel), inPhysicalSpace(label, converted))
    assert convertedLabel.GetOrigin() == converted.GetOrigin()
    assert convertedLabel.GetDirection() == converted.GetDirection()


def checkLoaded(sampledata, volumeNode, segmentationNode, labelPath):
    import slicer

    segmentation = segmentationNode.GetSegmentation()
    names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    assert names == ["liver", "right kidney", "left kidney", "spleen"]
    from pairseg.io import NAMED_COLORS  # the sample's colours are the engine's

    for index, name in enumerate(names):
        segment = segmentation.GetNthSegment(index)
        assert np.allclose(segment.GetColor(), NAMED_COLORS[name], atol=1e-6)
        assert "SCT^" in segment.GetTerminology()
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentation.GetNthSegmentID(index),
                                                          volumeNode)
        expected = sitk.GetArrayFromImage(sitk.ReadImage(labelPath)) == index + 1
        assert expected.any()
        assert np.array_equal(mask > 0, expected), name
    assert segmentationNode.GetNodeReference("referenceImageGeometryRef") is volumeNode
    assert volumeNode.GetAttribute("DICOM.Modality") == "MR"
    assert volumeNode.GetStorageNode().GetFileName() == os.path.abspath(volumeNode.GetStorageNode().GetFileName())


def test_convert_and_load_synthetic_archive(sampledata, harness, mrml_scene, tmp_path):
    image, label = syntheticCase()
    archive = writeChaosArchive(image, label, str(tmp_path / "CHAOS_Train_Sets.zip"))
    imagePath, labelPath = sampledata.convertChaosCase(archive, 2, str(tmp_path / "cache"))
    assert sorted(os.listdir(tmp_path / "cache")) == sorted(os.path.basename(p) for p in (imagePath, labelPath))
    checkConverted(imagePath, labelPath, image, label)
    volumeNode, segmentationNode = sampledata.loadChaosCase(imagePath, labelPath)
    assert volumeNode.GetName() == "CHAOSMRT2Case002"
    checkLoaded(sampledata, volumeNode, segmentationNode, labelPath)
    shNode = mrml_scene.GetSubjectHierarchyNode()
    assert shNode.GetItemParent(shNode.GetItemByDataNode(segmentationNode)) == \
        shNode.GetItemParent(shNode.GetItemByDataNode(volumeNode))


@pytest.mark.chaos
def test_convert_and_load_real_chaos_case(sampledata, harness, mrml_scene, chaos_dir, tmp_path):
    """A real CHAOS T2-SPIR case (the local NIfTI copy) through the archive layout and back."""
    image = sitk.ReadImage(str(chaos_dir / "case_002_image.nii.gz"))
    label = sitk.ReadImage(str(chaos_dir / "case_002_label.nii.gz"))
    archive = writeChaosArchive(image, label, str(tmp_path / "CHAOS_Train_Sets.zip"))
    imagePath, labelPath = sampledata.convertChaosCase(archive, 2, str(tmp_path / "cache"))
    checkConverted(imagePath, labelPath, image, label)
    volumeNode, segmentationNode = sampledata.loadChaosCase(imagePath, labelPath)
    checkLoaded(sampledata, volumeNode, segmentationNode, labelPath)
    # the MRML volume holds the converted voxels with the converted geometry (IJK-to-RAS = LPS flipped)
    import slicer
    import vtk

    converted = sitk.ReadImage(imagePath)
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    expected = np.eye(4)
    expected[:3, :3] = np.array(converted.GetDirection()).reshape(3, 3) * np.array(converted.GetSpacing())
    expected[:3, 3] = converted.GetOrigin()
    assert np.allclose(np.diag([-1.0, -1.0, 1.0, 1.0]) @ slicer.util.arrayFromVTKMatrix(matrix), expected, atol=1e-4)
    assert np.array_equal(slicer.util.arrayFromVolume(volumeNode), sitk.GetArrayFromImage(converted))


def test_download_sample_uses_cache_then_converted_case(sampledata, harness, mrml_scene, tmp_path, monkeypatch):
    """downloadSample: the archive comes from Sample Data's cache; once converted, no archive is needed."""
    image, label = syntheticCase()
    cache = tmp_path / "cache"
    cache.mkdir()
    archive = writeChaosArchive(image, label, str(cache / "CHAOS_Train_Sets.zip"))
    requests = []

    class SampleDataLogic:
        def downloadFileIntoCache(self, uri, name, checksum=None):
            requests.append((uri, name))
            return archive

    monkeypatch.setattr(sampledata, "cacheFolder", lambda: str(cache))
    monkeypatch.setitem(sys.modules, "SampleData", types.SimpleNamespace(SampleDataLogic=SampleDataLogic))
    volumeNode, segmentationNode = sampledata.downloadSample()
    assert requests == [(sampledata.CHAOS_ARCHIVE_URL, "CHAOS_Train_Sets.zip")]
    os.remove(archive)
    again, _ = sampledata.downloadSample(name="again")
    assert len(requests) == 1
    import slicer

    assert np.array_equal(slicer.util.arrayFromVolume(again), slicer.util.arrayFromVolume(volumeNode))


def test_corrupt_download_is_removed_and_scene_unchanged(sampledata, harness, mrml_scene, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    partial = cache / "CHAOS_Train_Sets.zip"
    partial.write_bytes(b"PK\x03\x04 interrupted")

    class SampleDataLogic:
        def downloadFileIntoCache(self, uri, name, checksum=None):
            return str(partial)

    monkeypatch.setattr(sampledata, "cacheFolder", lambda: str(cache))
    monkeypatch.setitem(sys.modules, "SampleData", types.SimpleNamespace(SampleDataLogic=SampleDataLogic))
    before = harness.sceneSnapshot()
    with pytest.raises(sampledata.CorruptArchiveError, match="not a readable zip archive"):
        sampledata.downloadSample()
    assert not partial.exists()
    assert harness.sceneSnapshot() == before
    assert not (cache / "PairSeg").exists() or not os.listdir(cache / "PairSeg")


def test_failed_download_names_the_source(sampledata, harness, mrml_scene, tmp_path, monkeypatch):
    class SampleDataLogic:
        def downloadFileIntoCache(self, uri, name, checksum=None):
            raise ValueError(f"Failed to download {uri}")

    monkeypatch.setattr(sampledata, "cacheFolder", lambda: str(tmp_path))
    monkeypatch.setitem(sys.modules, "SampleData", types.SimpleNamespace(SampleDataLogic=SampleDataLogic))
    with pytest.raises(sampledata.SampleDataError, match="zenodo.3431873.*internet connection"):
        sampledata.downloadSample()


def test_archive_without_patient_or_masks_gives_clear_errors(sampledata, mrml_scene, tmp_path):
    image, label = syntheticCase()
    archive = writeChaosArchive(image, label, str(tmp_path / "a.zip"))
    with pytest.raises(sampledata.SampleDataError, match="no MR T2SPIR series of CHAOS patient 5"):
        sampledata.convertChaosCase(archive, 5, str(tmp_path / "out"))
    assert os.listdir(tmp_path / "out") == []
    missing = writeChaosArchive(image, label, str(tmp_path / "b.zip"), skipMask=3)
    stem = f"IMG-0002-{sliceNumbers(image.GetSize()[2])[3]:05d}"
    with pytest.raises(sampledata.SampleDataError, match=f"no ground-truth PNG for slice {stem}"):
        sampledata.convertChaosCase(missing, 2, str(tmp_path / "out"))
    assert os.listdir(tmp_path / "out") == []  # nothing half-written


def test_bad_label_file_leaves_scene_unchanged(sampledata, harness, mrml_scene, tmp_path):
    image, label = syntheticCase()
    archive = writeChaosArchive(image, label, str(tmp_path / "a.zip"))
    imagePath, labelPath = sampledata.convertChaosCase(archive, 2, str(tmp_path / "out"))
    other = sitk.GetImageFromArray(np.zeros((3, 4, 5), np.uint8))  # another grid
    sitk.WriteImage(other, labelPath)
    before = harness.sceneSnapshot()
    with pytest.raises(IOError, match="geometry"):
        sampledata.loadChaosCase(imagePath, labelPath)
    assert harness.sceneSnapshot() == before


def test_sample_registered_with_public_source_and_thumbnail(sampledata, monkeypatch):
    registered = []

    class SampleDataLogic:
        @staticmethod
        def registerCustomSampleDataSource(**kwargs):
            registered.append(kwargs)

    monkeypatch.setitem(sys.modules, "SampleData", types.SimpleNamespace(SampleDataLogic=SampleDataLogic))
    sampledata.registerSampleData(os.path.join(ROOT, "PairSeg", "Resources", "Icons"))
    (source,) = registered
    assert source["uris"].startswith("https://zenodo.org/records/3431873/files/CHAOS_Train_Sets.zip")
    assert source["category"] == "PairSeg" and source["sampleName"] == "CHAOSMRT2Case002"
    assert os.path.isfile(source["thumbnailFileName"])
    assert callable(source["customDownloader"])


@pytest.mark.chaos
def test_slicer_self_test_runs_on_the_sample(load_module, harness, mrml_scene, chaos_dir, tmp_path, monkeypatch):
    """PairSegTest (the self-test Slicer runs) end to end, headless: the sample (from a CHAOS-layout
    archive of a real case, in place of the download), a 10-step engine-trained model, Segment, Compare."""
    monkeypatch.setenv("PAIRSEG_USER_DIR", str(tmp_path / "user"))
    pairseg = load_module("PairSeg")
    from PairSegLib import sampledata

    cache = tmp_path / "cache"
    cache.mkdir()
    image = sitk.ReadImage(str(chaos_dir / "case_002_image.nii.gz"))
    label = sitk.ReadImage(str(chaos_dir / "case_002_label.nii.gz"))
    archive = writeChaosArchive(image, label, str(cache / "CHAOS_Train_Sets.zip"))

    class SampleDataLogic:
        @staticmethod
        def registerCustomSampleDataSource(**kwargs):
            pass

        def downloadFileIntoCache(self, uri, name, checksum=None):
            return archive

    monkeypatch.setattr(sampledata, "cacheFolder", lambda: str(cache))
    monkeypatch.setitem(sys.modules, "SampleData", types.SimpleNamespace(SampleDataLogic=SampleDataLogic))
    result = pairseg.PairSegTest("test_PairSeg_sampleCase").run()
    assert result.wasSuccessful(), result.errors + result.failures
    segmentations = [n for n in mrml_scene.GetNodesByClass("vtkMRMLSegmentationNode")]
    assert len(segmentations) == 2  # the sample's reference and PairSeg's result
