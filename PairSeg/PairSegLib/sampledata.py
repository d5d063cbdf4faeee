"""PairSeg's sample data: the embedded CHAOS MR case (primary, offline) and more CHAOS patients
from the challenge's public archive (optional download), for the Sample Data module.

**Embedded case** (``Resources/SampleData``, beside the modules in the extension, at the top of a
source checkout): CHAOS MR T2-SPIR patient 2, image and expert label (CC BY-SA 4.0, attribution in
that folder's README). ``loadEmbeddedSample()`` loads it from the local files: instant, offline.

**Other patients**: CHAOS (Kavur et al., Medical Image Analysis 69, 2021; CC BY-SA 4.0) is published
on Zenodo (record 3431873) as one archive, ``CHAOS_Train_Sets.zip`` (890,771,694 bytes), that holds
per patient a DICOM series (``Train_Sets/MR/<patient>/T2SPIR/DICOM_anon/*.dcm``) and one
ground-truth PNG per slice (``.../T2SPIR/Ground/*.png``, same file names; grey 63 liver, 126 right
kidney, 189 left kidney, 252 spleen). ``CaseDownload`` downloads the archive once into Slicer's
cache ON A WORKER THREAD (progress in ``fraction``, cancellable), checks its size and MD5
against the values its publisher (Zenodo) gives before it is used, extracts only the chosen patient's T2-SPIR
series and masks and converts them to a volume and a label map in the series' geometry (cached, so
later loads are instant). ``downloadSampleWithProgress`` shows that in a progress dialog and
reports failures in a dialog; ``downloadSample`` is the blocking console variant. Both Sample Data
entries show the loaded volume in the slice views (``showSample``) and report load errors in a dialog.

Only stdlib, numpy, SimpleITK and slicer are used; the conversion (``convertChaosCase``) and the
download have no Slicer dependency at all.
"""

import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
import urllib.request
import zipfile

import numpy as np

from . import engine

CHAOS_ARCHIVE_URL = "https://zenodo.org/records/3431873/files/CHAOS_Train_Sets.zip?download=1"
CHAOS_ARCHIVE_NAME = "CHAOS_Train_Sets.zip"
CHAOS_RECORD_URL = "https://doi.org/10.5281/zenodo.3431873"
# The archive's size and checksum as its publisher gives them: Zenodo lists every file of record
# 3431873 (v1.03) with its MD5 ("md5:df2105..." in the record's file list and its files API). MD5
# is what Zenodo publishes (no SHA-256 there); it detects a truncated or damaged transfer, which is
# what this check is for (the download is over HTTPS from Zenodo). Not measured here: the archive is
# not downloaded in PairSeg's tests. A download that does not match both is deleted and reported,
# never used.
CHAOS_ARCHIVE_SIZE = 890771694
CHAOS_ARCHIVE_MD5 = "df21053002a1cc86df918a87da3b2c19"
# Ground-truth grey values of the CHAOS MR masks: (label, name, lowest grey, highest grey), the
# intervals the challenge's data description gives around 63 / 126 / 189 / 252.
CHAOS_MR_LABELS = ((1, "liver", 55, 70), (2, "right kidney", 110, 135), (3, "left kidney", 175, 200),
                   (4, "spleen", 240, 255))
CHAOS_MR_CLASSES = [name for _, name, _, _ in CHAOS_MR_LABELS]
# The engine's colours of these organs (pairseg.constants.NAMED_COLORS, the one colour table).
CHAOS_MR_COLORS = [engine.torchFreeEngineModule("constants").NAMED_COLORS[name] for name in CHAOS_MR_CLASSES]
SAMPLE_PATIENT = 2          # the embedded case
SAMPLE_NAME = "CHAOSMRT2Case002"
DOWNLOAD_PATIENT = 1        # the Sample Data entry that downloads the archive
DOWNLOAD_NAME = "CHAOSMRT2Patient1"
CHUNK_BYTES = 1 << 20


class SampleDataError(RuntimeError):
    """The sample could not be prepared: the message says why and what to do."""


class CorruptArchiveError(SampleDataError):
    """The archive is not a readable zip file (e.g. an interrupted download)."""


def _seriesMembers(archive, patient, sequence="T2SPIR"):
    """(DICOM member names, {file stem: PNG member name}) of one patient's series in the archive."""
    dicomPattern = re.compile(rf"(^|/)MR/{patient}/{sequence}/DICOM_anon/[^/]+\.dcm$", re.IGNORECASE)
    groundPattern = re.compile(rf"(^|/)MR/{patient}/{sequence}/Ground/[^/]+\.png$", re.IGNORECASE)
    dicoms, grounds = [], {}
    for name in archive.namelist():
        if dicomPattern.search(name):
            dicoms.append(name)
        elif groundPattern.search(name):
            grounds[os.path.splitext(os.path.basename(name))[0]] = name
    return dicoms, grounds


def convertChaosCase(archivePath, patient, outputFolder, sequence="T2SPIR"):
    """Convert one CHAOS MR patient from the archive into ``<outputFolder>/CHAOS-MR-<seq>-patient<N>
    {.nrrd, -label.nrrd}`` and return both paths; existing outputs are reused.

    The label map has exactly the image's voxel grid and geometry: each slice's mask is the PNG with
    the DICOM file's name, placed where the series reader put that file. Outputs are written under a
    temporary name and renamed, so an interrupted conversion never leaves a half-written case.
    """
    import SimpleITK as sitk

    imagePath, labelPath = casePaths(patient, outputFolder, sequence)
    if os.path.isfile(imagePath) and os.path.isfile(labelPath):
        return imagePath, labelPath
    try:
        archive = zipfile.ZipFile(archivePath)
    except (OSError, zipfile.BadZipFile) as error:
        raise CorruptArchiveError(f"{archivePath} is not a readable zip archive ({error}); delete it and "
                                  f"download {CHAOS_ARCHIVE_NAME} again from {CHAOS_RECORD_URL}.") from error
    os.makedirs(outputFolder, exist_ok=True)
    workFolder = tempfile.mkdtemp(prefix=os.path.basename(imagePath) + "-", dir=outputFolder)
    try:
        with archive:
            dicoms, grounds = _seriesMembers(archive, patient, sequence)
            if not dicoms:
                raise SampleDataError(f"{os.path.basename(archivePath)} holds no MR {sequence} series of CHAOS "
                                      f"patient {patient} (expected MR/{patient}/{sequence}/DICOM_anon/*.dcm).")
            for name in dicoms:
                target = os.path.join(workFolder, os.path.basename(name))
                with archive.open(name) as source, open(target, "wb") as destination:
                    shutil.copyfileobj(source, destination)
            reader = sitk.ImageSeriesReader()
            files = reader.GetGDCMSeriesFileNames(workFolder)
            if len(files) != len(dicoms):
                raise SampleDataError(f"CHAOS patient {patient}: {len(dicoms)} DICOM files but the series reader "
                                      f"found {len(files)} slices of one series.")
            reader.SetFileNames(files)
            image = reader.Execute()
            labels = np.zeros(sitk.GetArrayViewFromImage(image).shape, np.uint8)
            for index, path in enumerate(files):
                key = os.path.splitext(os.path.basename(path))[0]
                if key not in grounds:
                    raise SampleDataError(f"CHAOS patient {patient}: no ground-truth PNG for slice {key}.")
                with archive.open(grounds[key]) as source:
                    pngPath = os.path.join(workFolder, key + ".png")
                    with open(pngPath, "wb") as destination:
                        shutil.copyfileobj(source, destination)
                grey = sitk.GetArrayFromImage(sitk.ReadImage(pngPath))
                if grey.ndim == 3:  # an RGB(A) mask: every channel holds the same grey
                    grey = grey[..., 0]
                if grey.shape != labels.shape[1:]:
                    raise SampleDataError(f"CHAOS patient {patient}: mask {key}.png is {grey.shape}, the slice "
                                          f"{labels.shape[1:]}.")
                for value, _, low, high in CHAOS_MR_LABELS:
                    labels[index][(grey >= low) & (grey <= high)] = value
        labelImage = sitk.GetImageFromArray(labels)
        labelImage.CopyInformation(image)
        for result, path in ((image, imagePath), (labelImage, labelPath)):
            partial = os.path.join(workFolder, os.path.basename(path))
            sitk.WriteImage(result, partial, True)
            os.replace(partial, path)
    finally:
        shutil.rmtree(workFolder, ignore_errors=True)
    return imagePath, labelPath


def loadChaosCase(imagePath, labelPath, name=SAMPLE_NAME, classNames=None):
    """Load a case: (MR volume node, reference segmentation node beside it).

    The volume is read through MRML storage; the label map through the one exact-grid label import
    (``mrml.readLabelImage``), so the segmentation shares the volume's voxels; it has the four
    organs (``classNames``, default CHAOS_MR_CLASSES) with the names, colours and terminology
    PairSeg's CHAOS models use. If anything fails, the nodes added so far are removed again.
    """
    classNames = list(classNames or CHAOS_MR_CLASSES)
    import slicer

    from .mrml import buildSegments, newSegmentationNode, readLabelImage

    scene = slicer.mrmlScene
    added = []
    try:
        storageNode = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
        added.append(storageNode)
        storageNode.SetFileName(imagePath)
        volumeNode = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        added.append(volumeNode)
        volumeNode.SetAndObserveStorageNodeID(storageNode.GetID())
        if not storageNode.ReadData(volumeNode):
            raise SampleDataError(f"Could not read the sample volume {imagePath}.")
        volumeNode.CreateDefaultDisplayNodes()
        volumeNode.SetAttribute("DICOM.Modality", "MR")
        labelImage = readLabelImage(labelPath, volumeNode, len(classNames))
        segmentationNode = newSegmentationNode(volumeNode, f"{name} reference")
        added.append(segmentationNode)
        colors = [CHAOS_MR_COLORS[CHAOS_MR_CLASSES.index(c)] if c in CHAOS_MR_CLASSES else (0.5, 0.5, 0.5)
                  for c in classNames]
        for segment in buildSegments(labelImage, classNames, colors):
            segmentationNode.GetSegmentation().AddSegment(segment)
    except Exception:
        _removeNodes(scene, added)
        raise
    return volumeNode, segmentationNode


def _removeNodes(scene, nodes):
    """Remove nodes with their display nodes (a failed load leaves the scene as it was)."""
    for node in reversed(nodes):
        if node.GetScene() is not scene:
            continue
        displayNodes = []
        if hasattr(node, "GetNumberOfDisplayNodes"):
            displayNodes = [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
        scene.RemoveNode(node)
        for displayNode in displayNodes:
            if displayNode is not None and displayNode.GetScene() is scene:
                scene.RemoveNode(displayNode)


def embeddedCaseFolder():
    """The folder of the embedded sample case (``pairseg.modelfiles.catalog.sample_folder``:
    ``$PAIRSEG_SAMPLE_DATA_DIR``, else ``Resources/SampleData`` of the extension or the source
    checkout); SampleDataError when it holds no dataset.json."""
    folder = str(engine.torchFreeEngineModule("modelfiles.catalog").sample_folder())
    if not os.path.isfile(os.path.join(folder, "dataset.json")):
        raise SampleDataError(f"PairSeg's embedded sample case was not found ({folder} has no dataset.json).")
    return folder


def embeddedCase():
    """(image path, label path, class names) of the embedded case, from its dataset.json."""
    folder = embeddedCaseFolder()
    manifestPath = os.path.join(folder, "dataset.json")
    try:
        with open(manifestPath, encoding="utf-8") as stream:
            manifest = json.load(stream)
        (case,) = manifest["training"][:1]
        labels = manifest["labels"]
        classNames = [labels[str(value)] for value in range(1, len(labels))]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SampleDataError(f"{manifestPath} is not a readable sample description ({error}).") from error
    paths = [os.path.normpath(os.path.join(folder, case[key])) for key in ("image", "label")]
    for path in paths:
        if not os.path.isfile(path):
            raise SampleDataError(f"The embedded sample file {path} is missing.")
    return paths[0], paths[1], classNames


def loadEmbeddedSample(name=SAMPLE_NAME):
    """Load the embedded CHAOS case (no download): (MR volume node, reference segmentation node)."""
    imagePath, labelPath, classNames = embeddedCase()
    return loadChaosCase(imagePath, labelPath, name, classNames)


def cacheFolder():
    """Slicer's download cache (where Sample Data keeps its files)."""
    import slicer

    return slicer.mrmlScene.GetCacheManager().GetRemoteCacheDirectory()


def casePaths(patient=SAMPLE_PATIENT, folder=None, sequence="T2SPIR"):
    """(image, label map) file paths of a converted case in ``folder`` (default: PairSeg's cache)."""
    folder = folder or os.path.join(cacheFolder(), "PairSeg")
    stem = os.path.join(folder, f"CHAOS-MR-{sequence}-patient{int(patient)}")
    return stem + ".nrrd", stem + "-label.nrrd"


class DownloadCancelled(SampleDataError):
    pass


def fetchVerified(url, target, expectedSize=CHAOS_ARCHIVE_SIZE, expectedMd5=CHAOS_ARCHIVE_MD5,
                  onProgress=None, cancelled=None, opener=None):
    """Download ``url`` to ``target`` through ``<target>.part`` and check its size and MD5 (the
    checksum the publisher, Zenodo, gives; None: not checked).

    ``onProgress(receivedBytes, totalBytes)`` after each chunk; ``cancelled()`` True stops the
    download (DownloadCancelled). SampleDataError when the transfer fails or the file does not
    match (the partial file is removed: nothing unverified is ever left under ``target``)."""
    opener = opener or urllib.request.urlopen
    partial = target + ".part"
    digest = hashlib.md5(usedforsecurity=False)
    received = 0
    try:
        os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
        with opener(url) as response, open(partial, "wb") as stream:
            total = int(response.headers.get("Content-Length") or expectedSize or 0)
            while True:
                if cancelled is not None and cancelled():
                    raise DownloadCancelled(f"The download of {os.path.basename(target)} was cancelled.")
                chunk = response.read(CHUNK_BYTES)
                if not chunk:
                    break
                stream.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                if onProgress is not None:
                    onProgress(received, total)
        if expectedSize is not None and received != expectedSize:
            raise SampleDataError(f"The download of {url} is incomplete or not the published file: "
                                  f"{received} bytes instead of {expectedSize}.")
        if expectedMd5 is not None and digest.hexdigest() != expectedMd5.lower():
            raise SampleDataError(f"The download of {url} does not have the published MD5 checksum "
                                  f"({digest.hexdigest()} instead of {expectedMd5}): it was deleted.")
        os.replace(partial, target)
    except SampleDataError:
        _removeQuietly(partial)
        raise
    except (OSError, ValueError) as error:
        _removeQuietly(partial)
        raise SampleDataError(f"Could not download {os.path.basename(target)} from {CHAOS_RECORD_URL} ({error}). "
                              "Check the internet connection, or save the file by hand as "
                              f"{target}.") from error
    return target


def _removeQuietly(path):
    try:
        os.remove(path)
    except OSError:
        pass


class CaseDownload:
    """Prepare one CHAOS patient on a worker thread: download the archive into the cache when it is
    not there (verified), then convert the patient's series (``convertChaosCase``).

    The GUI thread calls ``poll()`` (True while working) and reads ``stage``, ``fraction`` (0..1),
    ``message``; ``cancel()`` stops at the next chunk. When done: ``imagePath``/``labelPath``, or
    ``error`` (a SampleDataError). ``archivePath``: use this archive instead of the cache's."""

    def __init__(self, patient=DOWNLOAD_PATIENT, cache=None, archivePath=None, url=CHAOS_ARCHIVE_URL,
                 expectedSize=CHAOS_ARCHIVE_SIZE, expectedMd5=CHAOS_ARCHIVE_MD5, opener=None):
        self.patient = int(patient)
        self.cache = cache or cacheFolder()
        self.archivePath = archivePath
        self.url, self.expectedSize, self.expectedMd5, self.opener = url, expectedSize, expectedMd5, opener
        self.imagePath, self.labelPath = casePaths(self.patient, os.path.join(self.cache, "PairSeg"))
        self.stage = "waiting"
        self.fraction = 0.0
        self.message = ""
        self.error = None
        self._cancel = False
        self._thread = None

    def start(self):
        self._thread = threading.Thread(target=self._work, name="pairseg-sample-download", daemon=True)
        self._thread.start()
        return self

    def cancel(self):
        self._cancel = True

    @property
    def done(self):
        return self._thread is not None and not self._thread.is_alive()

    def poll(self):
        """True while the worker is busy (never blocks)."""
        return not self.done

    def wait(self, interval=0.1):
        """Block until done (console); raises ``error`` when it failed."""
        while self.poll():
            time.sleep(interval)
        if self.error is not None:
            raise self.error
        return self.imagePath, self.labelPath

    def _progress(self, received, total):
        self.fraction = received / total if total else 0.0
        self.message = f"Downloading {CHAOS_ARCHIVE_NAME}: {received / 1e6:.0f} of {total / 1e6:.0f} MB"

    def _work(self):
        try:
            if os.path.isfile(self.imagePath) and os.path.isfile(self.labelPath):
                return
            downloaded = False
            if self.archivePath is None:
                self.archivePath = os.path.join(self.cache, CHAOS_ARCHIVE_NAME)
                if not os.path.isfile(self.archivePath):
                    self.stage = "downloading"
                    fetchVerified(self.url, self.archivePath, self.expectedSize, self.expectedMd5,
                                  onProgress=self._progress, cancelled=lambda: self._cancel, opener=self.opener)
                    downloaded = True
            self.stage, self.fraction = "converting", 1.0
            self.message = f"Extracting CHAOS patient {self.patient} from {os.path.basename(self.archivePath)}"
            try:
                convertChaosCase(self.archivePath, self.patient, os.path.dirname(self.imagePath))
            except CorruptArchiveError:
                if downloaded or os.path.dirname(os.path.abspath(self.archivePath)) == os.path.abspath(self.cache):
                    _removeQuietly(self.archivePath)  # ours: the next try downloads it again
                raise
        except SampleDataError as error:
            self.error = error
        except Exception as error:  # anything else is reported the same way, never lost on the thread
            self.error = SampleDataError(f"Preparing CHAOS patient {self.patient} failed: {error}")
        finally:
            self.stage = "failed" if self.error is not None else "done"


def downloadSample(patient=DOWNLOAD_PATIENT, name=None, archivePath=None, **options):
    """Download (once, verified) the CHAOS archive, convert (once) and load one patient's T2-SPIR
    case; blocks (console use). Returns (volume node, reference segmentation node).
    ``archivePath`` uses an archive already on disk instead of downloading it."""
    imagePath, labelPath = CaseDownload(patient, archivePath=archivePath, **options).start().wait()
    return loadChaosCase(imagePath, labelPath, name or f"CHAOSMRT2Patient{int(patient)}")


def downloadSampleWithProgress(patient=DOWNLOAD_PATIENT, name=None, **options):
    """The Sample Data entry's downloader: the worker thread downloads and converts while a
    progress dialog (with Cancel) keeps Slicer responsive; failures are shown in a dialog.
    Returns the loaded nodes, or [] when cancelled or failed. ``options`` go to CaseDownload."""
    import slicer

    download = CaseDownload(patient, **options).start()
    dialog = slicer.util.createProgressDialog(windowTitle="PairSeg sample data", labelText="Preparing...",
                                              maximum=100)
    try:
        while download.poll():
            dialog.labelText = download.message or "Preparing..."
            dialog.value = int(100 * download.fraction)
            slicer.app.processEvents()
            if dialog.wasCanceled:
                download.cancel()
            time.sleep(0.05)
    finally:
        dialog.close()
    if isinstance(download.error, DownloadCancelled):
        return []
    if download.error is not None:
        slicer.util.errorDisplay(str(download.error), windowTitle="PairSeg sample data")
        return []
    return loadForSampleData(lambda: loadChaosCase(download.imagePath, download.labelPath, name or DOWNLOAD_NAME),
                             f"CHAOS patient {patient}")


def showSample(volumeNode):
    """Show a loaded sample as Slicer's Sample Data does for its own: the volume as the background of
    every slice view, the views fitted to it, the 3D views reset (when there is a layout)."""
    import slicer

    slicer.util.setSliceViewerLayers(background=volumeNode, fit=True)
    if slicer.app.layoutManager() is not None:
        slicer.util.resetThreeDViews()


def loadForSampleData(load, what):
    """A Sample Data entry's load: ``load()`` -> (volume, segmentation), shown (``showSample``);
    a failure is reported in a dialog naming ``what`` (nothing is left in the scene: ``load`` removes
    what it added). Returns the nodes, or [] when it failed."""
    import slicer

    try:
        nodes = list(load())
    except Exception as error:
        slicer.util.errorDisplay(f"Loading {what} failed: {error}", windowTitle="PairSeg sample data")
        return []
    showSample(nodes[0])
    return nodes


def registerSampleData(iconsPath):
    """Register PairSeg's samples in the Sample Data module: the embedded CHAOS case (first; from
    the local files) and CHAOS patient 1 from the public archive (a 0.9 GB download)."""
    import logging

    import SampleData

    thumbnail = os.path.join(iconsPath, SAMPLE_NAME + ".png")
    try:
        imagePath, _, _ = embeddedCase()
    except SampleDataError as error:   # an installation without Resources/SampleData: download only
        logging.warning(f"PairSeg: {error}")
    else:
        SampleData.SampleDataLogic.registerCustomSampleDataSource(
            category="PairSeg", sampleName=SAMPLE_NAME, uris=imagePath, fileNames=os.path.basename(imagePath),
            nodeNames=SAMPLE_NAME, thumbnailFileName=thumbnail,
            customDownloader=lambda source: loadForSampleData(loadEmbeddedSample, "the embedded CHAOS sample"))
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="PairSeg", sampleName=DOWNLOAD_NAME, uris=CHAOS_ARCHIVE_URL, fileNames=CHAOS_ARCHIVE_NAME,
        nodeNames=DOWNLOAD_NAME, thumbnailFileName=thumbnail,
        customDownloader=lambda source: downloadSampleWithProgress())
