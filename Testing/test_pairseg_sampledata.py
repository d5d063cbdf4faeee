"""PairSeg's sample data (PairSegLib.sampledata), headless on real MRML.

The embedded case (Resources/SampleData) is loaded from the repository's files. The Zenodo archive
itself (0.9 GB) is not downloaded here: each test writes an archive with the CHAOS layout
(``Train_Sets/MR/<patient>/T2SPIR/DICOM_anon/*.dcm`` + ``Ground/*.png``, masks in the CHAOS grey
values) from a known volume and label map, "downloads" it from a ``file://`` URL through the real
downloader (worker thread, size and MD5 check), then checks that conversion and loading give
back exactly that volume and label map, in physical space.
"""

import hashlib
import os
import pathlib
import sys
import time
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


def checkLoaded(sampledata, volumeNode, segmentationNode, labelPath, physical=False):
    """Names, colours, terminology and voxels of the loaded reference; ``physical``: compare each
    segment with the label file in physical space (the file's voxel order may differ)."""
    import slicer

    segmentation = segmentationNode.GetSegmentation()
    names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    assert names == ["liver", "right kidney", "left kidney", "spleen"]
    from pairseg.constants import NAMED_COLORS  # the sample's colours are the engine's

    for index, name in enumerate(names):
        segment = segmentation.GetNthSegment(index)
        assert np.allclose(segment.GetColor(), NAMED_COLORS[name], atol=1e-6)
        assert "SCT^" in segment.GetTerminology()
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentation.GetNthSegmentID(index),
                                                          volumeNode)
        expected = sitk.GetArrayFromImage(sitk.ReadImage(labelPath)) == index + 1
        if physical:
            expected = physicalLabels(labelPath, volumeNode) == index + 1
        assert expected.any()
        assert np.array_equal(mask > 0, expected), name
    assert segmentationNode.GetNodeReference("referenceImageGeometryRef") is volumeNode
    assert volumeNode.GetAttribute("DICOM.Modality") == "MR"
    assert volumeNode.GetStorageNode().GetFileName() == os.path.abspath(volumeNode.GetStorageNode().GetFileName())


def physicalLabels(labelPath, volumeNode):
    """The label file resampled (nearest neighbour, identity transform) onto the volume node's grid."""
    import slicer
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ slicer.util.arrayFromVTKMatrix(matrix)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    grid = sitk.Image([int(d) for d in volumeNode.GetImageData().GetDimensions()], sitk.sitkUInt8)
    grid.SetSpacing([float(s) for s in spacing])
    grid.SetOrigin([float(o) for o in lps[:3, 3]])
    grid.SetDirection([float(d) for d in (lps[:3, :3] / spacing).ravel()])
    return inPhysicalSpace(sitk.ReadImage(labelPath), grid)


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


def published(path):
    """(size, MD5) of a file, as its publisher (Zenodo) gives them."""
    data = open(path, "rb").read()
    return len(data), hashlib.md5(data).hexdigest()


def test_download_runs_on_a_worker_with_progress_then_uses_cache(sampledata, harness, mrml_scene, tmp_path):
    """CaseDownload: the archive is fetched on a worker thread (poll() never blocks, progress
    grows), verified, converted; once converted no archive is needed."""
    image, label = syntheticCase()
    (tmp_path / "server").mkdir()
    source = writeChaosArchive(image, label, str(tmp_path / "server" / "CHAOS_Train_Sets.zip"))
    size, md5 = published(source)
    cache = tmp_path / "cache"
    sampledata.CHUNK_BYTES = 4096   # many chunks: progress is visible
    fractions, longestPoll = [], 0.0
    download = sampledata.CaseDownload(2, cache=str(cache), url=pathlib.Path(source).as_uri(), expectedSize=size,
                                       expectedMd5=md5).start()
    while True:
        started = time.perf_counter()
        running = download.poll()
        longestPoll = max(longestPoll, time.perf_counter() - started)
        fractions.append(download.fraction)
        if not running:
            break
        time.sleep(0.001)
    assert download.error is None and download.stage == "done"
    assert longestPoll < 0.01
    assert fractions[-1] == 1.0 and fractions == sorted(fractions)
    assert (cache / "CHAOS_Train_Sets.zip").read_bytes() == pathlib.Path(source).read_bytes()
    assert not list(cache.glob("*.part"))
    volumeNode, segmentationNode = sampledata.loadChaosCase(download.imagePath, download.labelPath, "first")
    checkLoaded(sampledata, volumeNode, segmentationNode, download.labelPath)
    os.remove(cache / "CHAOS_Train_Sets.zip")
    os.remove(source)   # neither the archive nor the server is needed any more
    again = sampledata.CaseDownload(2, cache=str(cache), url=pathlib.Path(source).as_uri()).start()
    assert again.wait() == (download.imagePath, download.labelPath)


@pytest.mark.parametrize("problem", ["checksum", "size"])
def test_download_not_matching_the_published_file_is_deleted(sampledata, harness, mrml_scene, tmp_path, problem):
    image, label = syntheticCase()
    source = writeChaosArchive(image, label, str(tmp_path / "CHAOS_Train_Sets.zip"))
    size, md5 = published(source)
    expected = dict(expectedSize=size, expectedMd5="0" * 32) if problem == "checksum" else \
        dict(expectedSize=size + 1, expectedMd5=md5)
    cache = tmp_path / "cache"
    before = harness.sceneSnapshot()
    download = sampledata.CaseDownload(2, cache=str(cache), url=pathlib.Path(source).as_uri(), **expected).start()
    with pytest.raises(sampledata.SampleDataError, match="published MD5" if problem == "checksum" else "bytes instead of"):
        download.wait()
    assert download.stage == "failed"
    assert not os.listdir(cache)   # nothing unverified is kept (no archive, no .part, no case)
    assert harness.sceneSnapshot() == before


def test_download_can_be_cancelled_and_leaves_nothing(sampledata, tmp_path):
    image, label = syntheticCase()
    source = writeChaosArchive(image, label, str(tmp_path / "CHAOS_Train_Sets.zip"))
    size, md5 = published(source)
    gate = []

    class SlowResponse:
        headers = {"Content-Length": str(size)}

        def __init__(self):
            self.stream = open(source, "rb")

        def read(self, count):
            gate.append(1)
            time.sleep(0.01)
            return self.stream.read(64)

        def __enter__(self):
            return self

        def __exit__(self, *args):
            self.stream.close()

    cache = tmp_path / "cache"
    download = sampledata.CaseDownload(2, cache=str(cache), url="https://example.invalid/CHAOS_Train_Sets.zip",
                                       expectedSize=size, expectedMd5=md5,
                                       opener=lambda url: SlowResponse()).start()
    while not gate:
        time.sleep(0.005)
    download.cancel()
    with pytest.raises(sampledata.DownloadCancelled):
        download.wait()
    assert not os.listdir(cache)


def test_corrupt_cached_archive_is_removed_and_scene_unchanged(sampledata, harness, mrml_scene, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    partial = cache / "CHAOS_Train_Sets.zip"
    partial.write_bytes(b"PK\x03\x04 damaged on disk")
    before = harness.sceneSnapshot()
    with pytest.raises(sampledata.CorruptArchiveError, match="not a readable zip archive"):
        sampledata.downloadSample(2, cache=str(cache))
    assert not partial.exists()
    assert harness.sceneSnapshot() == before
    assert not (cache / "PairSeg").exists() or not os.listdir(cache / "PairSeg")


def test_failed_download_names_the_source(sampledata, harness, mrml_scene, tmp_path):
    before = harness.sceneSnapshot()
    with pytest.raises(sampledata.SampleDataError, match="zenodo.3431873.*internet connection"):
        sampledata.downloadSample(2, cache=str(tmp_path), url=(tmp_path / "nowhere.zip").as_uri())
    assert harness.sceneSnapshot() == before and not os.listdir(tmp_path)


def test_progress_dialog_and_error_dialog(sampledata, harness, mrml_scene, tmp_path, monkeypatch):
    """The Sample Data entry's downloader keeps the event loop running while the worker works,
    and reports a failure in a dialog (no traceback, no nodes)."""
    import slicer

    calls = {"processEvents": 0, "errors": []}

    class Dialog:
        wasCanceled = False
        labelText = ""
        value = 0

        def close(self):
            pass

    monkeypatch.setattr(slicer.util, "createProgressDialog", lambda **kwargs: Dialog(), raising=False)
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **kwargs: calls["errors"].append(text))
    monkeypatch.setattr(slicer.app, "processEvents", lambda *a: calls.__setitem__("processEvents",
                                                                                   calls["processEvents"] + 1))
    def unreachable(url):
        time.sleep(0.3)   # the worker is busy for a while: the GUI loop must keep running
        raise OSError("connection refused")

    before = harness.sceneSnapshot()
    assert sampledata.downloadSampleWithProgress(cache=str(tmp_path), opener=unreachable) == []
    assert calls["processEvents"] >= 1
    assert len(calls["errors"]) == 1 and "Could not download CHAOS_Train_Sets.zip" in calls["errors"][0]
    assert "connection refused" in calls["errors"][0]
    assert harness.sceneSnapshot() == before


def test_embedded_sample_loads_offline_on_the_exact_grid(sampledata, harness, mrml_scene, monkeypatch):
    """The primary sample: the repository's CHAOS case from local files; the expert labels land on
    the volume's voxels although Slicer's reader reorders this left-handed file."""
    import slicer
    import urllib.request

    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("the embedded sample downloads"))
    started = time.perf_counter()
    volumeNode, segmentationNode = sampledata.loadEmbeddedSample()
    assert time.perf_counter() - started < 10
    imagePath, labelPath, classNames = sampledata.embeddedCase()
    assert classNames == sampledata.CHAOS_MR_CLASSES
    assert os.path.dirname(imagePath) == os.path.join(ROOT, "Resources", "SampleData")
    checkLoaded(sampledata, volumeNode, segmentationNode, labelPath, physical=True)


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


def test_samples_registered_embedded_first_then_download(sampledata, monkeypatch, harness, mrml_scene):
    registered = []

    class SampleDataLogic:
        @staticmethod
        def registerCustomSampleDataSource(**kwargs):
            registered.append(kwargs)

    monkeypatch.setitem(sys.modules, "SampleData", types.SimpleNamespace(SampleDataLogic=SampleDataLogic))
    sampledata.registerSampleData(os.path.join(ROOT, "PairSeg", "Resources", "Icons"))
    embedded, download = registered
    assert embedded["sampleName"] == "CHAOSMRT2Case002" and embedded["category"] == "PairSeg"
    assert os.path.isfile(embedded["uris"]) and os.path.isfile(embedded["thumbnailFileName"])
    composite = mrml_scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")  # a slice view
    volumeNode, segmentationNode = embedded["customDownloader"](None)   # local files: loads at once
    assert volumeNode.GetName() == "CHAOSMRT2Case002"
    assert composite.GetBackgroundVolumeID() == volumeNode.GetID()  # issue 19 item 7: shown in the views
    assert segmentationNode.GetSegmentation().GetNumberOfSegments() == 4
    assert download["uris"].startswith("https://zenodo.org/records/3431873/files/CHAOS_Train_Sets.zip")
    assert download["sampleName"] == "CHAOSMRT2Patient1" and callable(download["customDownloader"])


def test_missing_embedded_case_registers_the_download_only(sampledata, monkeypatch, tmp_path):
    registered = []

    class SampleDataLogic:
        @staticmethod
        def registerCustomSampleDataSource(**kwargs):
            registered.append(kwargs["sampleName"])

    monkeypatch.setitem(sys.modules, "SampleData", types.SimpleNamespace(SampleDataLogic=SampleDataLogic))
    monkeypatch.setenv("PAIRSEG_SAMPLE_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(sampledata.SampleDataError, match="nowhere has no dataset.json"):
        sampledata.loadEmbeddedSample()
    sampledata.registerSampleData(os.path.join(ROOT, "PairSeg", "Resources", "Icons"))
    assert registered == ["CHAOSMRT2Patient1"]


def test_sample_data_entry_reports_a_load_error_in_a_dialog(sampledata, monkeypatch, harness, mrml_scene, tmp_path):
    """Issue 19 item 7: a broken embedded sample ends in a dialog naming the file, no traceback, no node."""
    import slicer

    registered, errors = [], []

    class SampleDataLogic:
        @staticmethod
        def registerCustomSampleDataSource(**kwargs):
            registered.append(kwargs)

    monkeypatch.setitem(sys.modules, "SampleData", types.SimpleNamespace(SampleDataLogic=SampleDataLogic))
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **kwargs: errors.append(text))
    folder = tmp_path / "sample"
    folder.mkdir()
    imagePath, labelPath, _ = sampledata.embeddedCase()
    for path in (imagePath, labelPath):
        (folder / os.path.basename(path)).write_bytes(b"not an image")
    (folder / "dataset.json").write_text(open(os.path.join(os.path.dirname(imagePath), "dataset.json")).read())
    monkeypatch.setenv("PAIRSEG_SAMPLE_DATA_DIR", str(folder))
    sampledata.registerSampleData(os.path.join(ROOT, "PairSeg", "Resources", "Icons"))
    before = harness.sceneSnapshot()
    assert registered[0]["customDownloader"](None) == []
    assert len(errors) == 1 and errors[0].startswith("Loading the embedded CHAOS sample failed")
    assert os.path.basename(imagePath) in errors[0]
    assert harness.sceneSnapshot() == before
