"""The CHAOS MR T2-SPIR sample case, from the challenge's public archive, for the Sample Data module.

CHAOS (Kavur et al., Medical Image Analysis 69, 2021; CC BY-SA 4.0) is published on Zenodo (record
3431873) as one archive, ``CHAOS_Train_Sets.zip`` (about 0.9 GB), that holds per patient a DICOM
series (``Train_Sets/MR/<patient>/T2SPIR/DICOM_anon/*.dcm``) and one ground-truth PNG per slice
(``.../T2SPIR/Ground/*.png``, same file names; grey 63 liver, 126 right kidney, 189 left kidney, 252
spleen). The sample entry downloads the archive once into Slicer's cache, extracts only the chosen
patient's T2-SPIR series and masks, converts them to a volume and a label map in the series'
geometry (cached too, so later loads are instant), and loads an MR volume plus a reference
segmentation with the four organs named, coloured and coded like PairSeg's own output.

Only stdlib, numpy, SimpleITK and slicer are used; the conversion (``convertChaosCase``) has no
Slicer dependency at all.
"""

import os
import re
import shutil
import tempfile
import zipfile

import numpy as np

CHAOS_ARCHIVE_URL = "https://zenodo.org/records/3431873/files/CHAOS_Train_Sets.zip?download=1"
CHAOS_ARCHIVE_NAME = "CHAOS_Train_Sets.zip"
CHAOS_RECORD_URL = "https://doi.org/10.5281/zenodo.3431873"
# Ground-truth grey values of the CHAOS MR masks: (label, name, lowest grey, highest grey), the
# intervals the challenge's data description gives around 63 / 126 / 189 / 252.
CHAOS_MR_LABELS = ((1, "liver", 55, 70), (2, "right kidney", 110, 135), (3, "left kidney", 175, 200),
                   (4, "spleen", 240, 255))
CHAOS_MR_CLASSES = [name for _, name, _, _ in CHAOS_MR_LABELS]
# The engine's colours of these organs (pairseg.io.NAMED_COLORS; the engine is not imported here).
CHAOS_MR_COLORS = [(0.867, 0.510, 0.396), (0.725, 0.400, 0.325), (0.580, 0.290, 0.220), (0.616, 0.424, 0.635)]
SAMPLE_PATIENT = 2
SAMPLE_NAME = "CHAOSMRT2Case002"


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


def loadChaosCase(imagePath, labelPath, name=SAMPLE_NAME):
    """Load a converted case: (MR volume node, reference segmentation node beside it).

    The volume is read through MRML storage; the segmentation shares its geometry and has the four
    organs with the names, colours and terminology PairSeg's CHAOS models use. If anything fails,
    the nodes added so far are removed again.
    """
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
        labelImage = readLabelImage(labelPath, volumeNode, len(CHAOS_MR_CLASSES))
        segmentationNode = newSegmentationNode(volumeNode, f"{name} reference")
        added.append(segmentationNode)
        for segment in buildSegments(labelImage, CHAOS_MR_CLASSES, CHAOS_MR_COLORS):
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


def cacheFolder():
    """Slicer's download cache (where Sample Data keeps its files)."""
    import slicer

    return slicer.mrmlScene.GetCacheManager().GetRemoteCacheDirectory()


def casePaths(patient=SAMPLE_PATIENT, folder=None, sequence="T2SPIR"):
    """(image, label map) file paths of a converted case in ``folder`` (default: PairSeg's cache)."""
    folder = folder or os.path.join(cacheFolder(), "PairSeg")
    stem = os.path.join(folder, f"CHAOS-MR-{sequence}-patient{int(patient)}")
    return stem + ".nrrd", stem + "-label.nrrd"


def downloadSample(patient=SAMPLE_PATIENT, name=SAMPLE_NAME, archivePath=None):
    """Download (once) the CHAOS archive, convert (once) and load one patient's T2-SPIR case.

    Returns (volume node, reference segmentation node). ``archivePath`` uses an archive already on
    disk instead of downloading it.
    """
    imagePath, labelPath = casePaths(patient)
    if not (os.path.isfile(imagePath) and os.path.isfile(labelPath)):
        downloaded = archivePath is None
        if downloaded:
            archivePath = _downloadArchive()
        try:
            convertChaosCase(archivePath, patient, os.path.dirname(imagePath))
        except CorruptArchiveError:
            if downloaded:  # an interrupted download of ours: the next try downloads it again
                os.remove(archivePath)
            raise
    return loadChaosCase(imagePath, labelPath, name)


def _downloadArchive():
    """The CHAOS archive in Slicer's cache, downloaded through Sample Data when not there yet."""
    import SampleData

    try:
        return SampleData.SampleDataLogic().downloadFileIntoCache(CHAOS_ARCHIVE_URL, CHAOS_ARCHIVE_NAME)
    except ValueError as error:
        raise SampleDataError(f"Could not download {CHAOS_ARCHIVE_NAME} from {CHAOS_RECORD_URL} ({error}). "
                              "Check the internet connection, or save the file by hand as "
                              f"{os.path.join(cacheFolder(), CHAOS_ARCHIVE_NAME)}.") from error


def registerSampleData(iconsPath):
    """Register the CHAOS sample in the Sample Data module (its button runs ``downloadSample``)."""
    import SampleData

    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="PairSeg", sampleName=SAMPLE_NAME, uris=CHAOS_ARCHIVE_URL, fileNames=CHAOS_ARCHIVE_NAME,
        nodeNames=SAMPLE_NAME, thumbnailFileName=os.path.join(iconsPath, SAMPLE_NAME + ".png"),
        customDownloader=lambda source: downloadSample())
