"""Field faults: a full file system (a real small tmpfs, when the tests run as root), names whose
hidden temporary does not fit, read-only folders, two runs onto one output, closed pipes. Every
case ends in exit 0 with a complete output, or exit 2 with one line naming the file, the earlier
file at that path intact and no temporary left (one write path: ``pairseg.atomic``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from pairseg import atomic, constants
from pairseg.cli import EXIT_BAD_INPUT, main
from pairseg.errors import PairSegOutputError
from pairseg.io.locations import check_output
from pairseg.io.read import read_label, read_volume
from pairseg.io.volume import GeometryWarning, Volume
from pairseg.io.write import _verify_written, _write_image, write_labels, write_probabilities, write_text, write_volume

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (16, 48, 56)


def _can_mount() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0 and sys.platform.startswith("linux")


@contextmanager
def _tmpfs(where: Path, size: str, options: str = ""):
    """A real tmpfs of ``size`` mounted at ``where`` (skips the test when mounting is not possible),
    unmounted afterwards."""
    if not _can_mount():
        pytest.skip("mounting a small tmpfs needs root on Linux")
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}" + (f",{options}" if options else ""),
                              "tmpfs", str(where)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def small_disk(tmp_path):
    with _tmpfs(tmp_path / "small", "2m") as folder:
        yield folder


def _fill(folder: Path, leave: int = 0) -> Path:
    """Fill ``folder``'s file system to the last byte, then give back ``leave`` bytes."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for block in (65536, 512, 1):
            try:
                while True:
                    os.write(fd, b"\xff" * block)
            except OSError:
                pass
    finally:
        os.close(fd)
    if leave:
        os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _image() -> Volume:
    rng = np.random.default_rng(0)
    return Volume(rng.normal(100, 20, SHAPE).astype(np.float32), (0.8, 0.8, 3.0))


def _labels() -> np.ndarray:  # compresses to far more than a few KB
    return np.random.default_rng(1).integers(0, 3, SHAPE).astype(np.uint8)


# ---- the one write path, per output kind, on a real full file system ------------------------

@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha", ".seg.nrrd"])
def test_labels_onto_a_full_disk_leave_the_earlier_file(small_disk, suffix):
    image = _image()
    out = small_disk / f"seg{suffix}"
    write_labels(out, np.zeros(SHAPE, np.uint8), image, ["a", "b"])
    before = out.read_bytes()
    _fill(small_disk, leave=4096)
    with pytest.raises(PairSegOutputError) as caught:
        write_labels(out, _labels(), image, ["a", "b"])
    message = str(caught.value)
    assert message.startswith(f"{out}: cannot write output (") and ".tmp-" not in message, message
    assert "\n" not in message
    assert out.read_bytes() == before
    assert _listing(small_disk) == ["filler", out.name]


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_probabilities_and_volumes_onto_a_full_disk(small_disk, suffix):
    image = _image()
    probabilities = np.random.default_rng(2).random((SHAPE[0], 2, *SHAPE[1:])).astype(np.float16)
    _fill(small_disk, leave=4096)
    for write, target in ((lambda p: write_probabilities(p, probabilities, image), small_disk / f"p{suffix}"),
                          (lambda p: write_volume(p, image), small_disk / f"v{suffix}")):
        with pytest.raises(PairSegOutputError, match=rf"^{target}: cannot write output \("):
            write(target)
    assert _listing(small_disk) == ["filler"]


def test_models_checkpoints_json_and_settings_onto_a_full_disk(small_disk, untrained_mr_model):
    from pairseg.config import TrainConfig
    from pairseg.modelfiles.weights import atomic_torch_save, load_model, save_model

    network, meta = load_model(untrained_mr_model)
    kept = {name: small_disk / name for name in ("m.pairseg", "m.pairseg.ckpt", "r.json", "settings.json")}
    for path in kept.values():
        path.write_bytes(b"an earlier file")
    _fill(small_disk, leave=0)
    writes = {
        "m.pairseg": lambda p: save_model(p, network, {k: meta[k] for k in ("class_names", "modality", "size")}),
        "m.pairseg.ckpt": lambda p: atomic_torch_save({"state": network.state_dict()}, p),
        "r.json": lambda p: write_text(p, json.dumps({"x": list(range(5000))})),
        "settings.json": lambda p: TrainConfig(data="d", out="o.pairseg").write(p),
    }
    for name, write in writes.items():
        with pytest.raises(PairSegOutputError, match=rf"^{kept[name]}: cannot write \w[\w ]* \("):
            write(kept[name])
        assert kept[name].read_bytes() == b"an earlier file"
    assert _listing(small_disk) == sorted(["filler", *kept])


def test_cli_segment_evaluate_onto_a_full_disk(small_disk, tmp_path, untrained_mr_model, capsys):
    """The commands: exit 2, one error event naming the file, the earlier result intact."""
    scan = Path(write_volume(tmp_path / "scan.nii.gz", _image()))
    labels, probabilities = small_disk / "seg.nii.gz", small_disk / "probs.nii.gz"
    labels.write_bytes(b"an earlier result")
    report = small_disk / "r.json"
    _fill(small_disk, leave=0)
    code = main(["segment", "--model", str(untrained_mr_model), "--input", str(scan), "--output", str(labels),
                 "--probabilities", str(probabilities), "--device", "cpu", "--events", "json"])
    events = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert code == EXIT_BAD_INPUT and events[-1]["event"] == "error"
    assert [e["event"] for e in events].count("error") == 1 and "done" not in [e["event"] for e in events]
    assert events[-1]["message"].split(": cannot write output")[0] in (str(labels), str(probabilities))
    assert labels.read_bytes() == b"an earlier result"
    write_labels(tmp_path / "ref.nii.gz", _labels(), _image())
    code = main(["evaluate", "--pred", str(tmp_path / "ref.nii.gz"), "--ref", str(tmp_path / "ref.nii.gz"),
                 "--json", str(report)])
    errors = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error: ")]
    assert code == EXIT_BAD_INPUT and errors == [f"error: {report}: cannot write output (No space left on device)"]
    assert _listing(small_disk) == ["filler", "seg.nii.gz"]


def test_a_silently_truncated_gzip_is_caught_before_it_replaces_anything(tmp_path, monkeypatch):
    """A writer that reports success but leaves a short file (ITK's NIfTI writer on a full disk):
    the read-back refuses it. The same for a model file and a checkpoint."""
    image = _image()
    out = tmp_path / "seg.nii.gz"
    write_labels(out, np.zeros(SHAPE, np.uint8), image)
    before = out.read_bytes()
    real = sitk.WriteImage

    def truncating(img, path, *args):
        real(img, path, *args)
        os.truncate(path, os.path.getsize(path) // 2)

    monkeypatch.setattr(sitk, "WriteImage", truncating)
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha", ".seg.nrrd"):
        target = out if suffix == ".nii.gz" else tmp_path / f"other{suffix}"
        if suffix == ".seg.nrrd":
            import slicerio

            real_seg = slicerio.write_segmentation

            def cut_seg(path, *args, **kwargs):
                real_seg(path, *args, **kwargs)
                os.truncate(path, os.path.getsize(path) - 40)
            monkeypatch.setattr(slicerio, "write_segmentation", cut_seg)
        with pytest.raises(PairSegOutputError, match=rf"^{target}: cannot write output \(.*(truncated|ends)"):
            write_labels(target, _labels(), image)
    assert out.read_bytes() == before and _listing(tmp_path) == ["seg.nii.gz"]
    monkeypatch.setattr(torch, "save", lambda obj, stream: stream.write(b"PK\x03\x04 not a whole archive"))
    from pairseg.modelfiles.weights import atomic_torch_save

    with pytest.raises(PairSegOutputError, match=r"m\.ckpt: cannot write checkpoint \(the written archive"):
        atomic_torch_save({"a": 1}, tmp_path / "m.ckpt")
    assert _listing(tmp_path) == ["seg.nii.gz"]


def test_a_failed_cleanup_never_hides_the_first_error(tmp_path, monkeypatch):
    from pairseg.modelfiles.weights import atomic_torch_save

    def full(obj, stream):
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    def unlink_fails(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(torch, "save", full)
    monkeypatch.setattr(atomic.os, "unlink", unlink_fails)
    with pytest.raises(PairSegOutputError, match=r"m\.ckpt: cannot write checkpoint \(.*file write failed\)"):
        atomic_torch_save({"a": 1}, tmp_path / "m.ckpt")


# ---- up front: names too long for the file system, read-only folders -------------------------

def test_a_name_whose_temporary_is_too_long_is_refused_before_any_work(tmp_path, capsys):
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    name = "s" * (limit - len(".nii.gz")) + ".nii.gz"  # fits, its hidden temporary does not
    (tmp_path / name).write_bytes(b"x")
    (tmp_path / name).unlink()
    with pytest.raises(PairSegOutputError, match="too long for the file system"):
        check_output(tmp_path / name, constants.LABEL_SUFFIXES)
    scan = Path(write_volume(tmp_path / "scan.nii.gz", _image()))
    for argv in (["segment", "--model", str(tmp_path / "no-model.pairseg"), "--input", str(scan),
                  "--output", str(tmp_path / name), "--events", "json"],
                 ["train", "--data", str(tmp_path / "no-data"), "--out", str(tmp_path / ("m" * (limit - 8) + ".pairseg")),
                  "--events", "json"]):
        code = main(argv)
        event = json.loads(capsys.readouterr().out.splitlines()[-1])
        assert code == EXIT_BAD_INPUT and "too long for the file system" in event["message"], event
        assert "no-model" not in event["message"] and "no-data" not in event["message"]
    assert _listing(tmp_path) == ["scan.nii.gz"]


def test_a_read_only_file_system_is_refused_up_front(tmp_path, capsys):
    scan = Path(write_volume(tmp_path / "scan.nii.gz", _image()))
    with _tmpfs(tmp_path / "ro", "1m", "ro") as folder:
        code = main(["segment", "--model", str(tmp_path / "no-model.pairseg"), "--input", str(scan),
                     "--output", str(folder / "seg.nii.gz"), "--events", "json"])
        event = json.loads(capsys.readouterr().out.splitlines()[-1])
        assert code == EXIT_BAD_INPUT
        assert event["message"] == f"{folder / 'seg.nii.gz'}: cannot write --output in {folder} (Read-only file system)"
        for argv in (["demo", "--out", str(folder / "demo"), "--model", str(tmp_path / "no-model.pairseg")],
                     ["evaluate", "--pred", str(scan), "--ref", str(scan), "--json", str(folder / "r.json")],
                     ["proxy-maps", "--label-a", str(scan), "--slice-a", "0", "--slice-b", "1", "--out",
                      str(folder / "maps")]):
            code = main(argv + (["--events", "json"] if argv[0] != "evaluate" else []))
            captured = capsys.readouterr()
            text = captured.out + captured.err
            assert code == EXIT_BAD_INPUT and "(Read-only file system)" in text and "no-model" not in text, text


# ---- two runs onto the same output -----------------------------------------------------------

def test_another_run_onto_the_same_output_keeps_this_runs_temporary(tmp_path):
    """Run B starts (and clears stale temporaries of the output) while run A is writing it; A's
    temporary belongs to a live process, so B leaves it, and both runs finish."""
    out = tmp_path / "seg.nii.gz"
    image = _image()
    other = [sys.executable, "-c", "import sys; from pairseg.atomic import remove_stale_temporaries as r; "
             "print(len(r(sys.argv[1])))", str(out)]
    seen = []

    def write(tmp):
        _write_image(tmp, image.like(_labels()))
        done = subprocess.run(other, capture_output=True, text=True, check=True, env={**os.environ})
        seen.append((done.stdout.strip(), Path(tmp).exists()))

    atomic.atomic_write(out, write, _verify_written)
    assert seen == [("0", True)]
    np.testing.assert_array_equal(read_label(out)[0], _labels())
    assert _listing(tmp_path) == ["seg.nii.gz"]
    names = {atomic.temporary_name(out).name for _ in range(5000)}
    assert len(names) == 5000 and all(n.startswith(f".seg.tmp-{os.getpid()}-") for n in names)


# ---- closed pipes ----------------------------------------------------------------------------

def _piped(command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", f"set -o pipefail; {command}"], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})


def test_closed_pipes_end_quietly_and_the_work_is_done(tmp_path, untrained_mr_model):
    python = sys.executable
    info = _piped(f"{python} -m pairseg info {untrained_mr_model} | head -1")
    assert info.returncode == 0 and info.stdout.startswith("model") and "Traceback" not in info.stderr, info.stderr
    info = _piped(f"{python} -m pairseg info --json {untrained_mr_model} | head -c 10")
    assert info.returncode == 0 and "Traceback" not in info.stderr and "Broken" not in info.stderr, info.stderr
    scan = Path(write_volume(tmp_path / "scan.nii.gz", _image()))
    out = tmp_path / "seg.nrrd"
    segment = _piped(f"{python} -m pairseg segment --model {untrained_mr_model} --input {scan} --output {out} "
                     "--device cpu --events json | head -1")
    assert segment.returncode == 0 and "Traceback" not in segment.stderr, segment.stderr
    assert json.loads(segment.stdout)["event"] in ("start", "progress", "message")
    assert read_label(out)[0].shape == SHAPE  # the run went on and wrote its output
    write_labels(tmp_path / "ref.nii.gz", _labels(), _image())
    evaluate = _piped(f"{python} -m pairseg evaluate --pred {tmp_path / 'ref.nii.gz'} --ref {tmp_path / 'ref.nii.gz'} "
                      f"--json {tmp_path / 'r.json'} | head -1")
    assert evaluate.returncode == 0 and "Traceback" not in evaluate.stderr, evaluate.stderr
    assert json.loads((tmp_path / "r.json").read_text())["cases"][0]["case"]


# ---- dangling symbolic links in input folders ------------------------------------------------

def test_dangling_links_in_input_folders_are_named(tmp_path, capsys, untrained_mr_model):
    """segment (image folder, and a folder of only dangling links), evaluate, train (bare folder),
    a DICOM folder: exit 2 naming the link, never a silent skip or an unrelated message."""
    images = tmp_path / "images"
    images.mkdir()
    write_volume(images / "a.nii.gz", _image())
    (images / "b.nii.gz").symlink_to(tmp_path / "gone" / "b.nii.gz")
    only_links = tmp_path / "links"
    only_links.mkdir()
    (only_links / "c.nii.gz").symlink_to(tmp_path / "gone" / "c.nii.gz")
    dicom = tmp_path / "dicom"
    dicom.mkdir()
    (dicom / "IM0001").symlink_to(tmp_path / "gone" / "IM0001")
    for folder, link in ((images, "b.nii.gz"), (only_links, "c.nii.gz"), (dicom, "IM0001")):
        code = main(["segment", "--model", str(untrained_mr_model), "--input", str(folder), "--output",
                     str(tmp_path / "out" / ("x.nii.gz" if folder == dicom else "")), "--events", "json"])
        event = json.loads(capsys.readouterr().out.splitlines()[-1])
        assert code == EXIT_BAD_INPUT and event["message"].startswith(f"{folder}: 1 broken symbolic link"), event
        assert f"{link} -> {tmp_path / 'gone' / link}" in event["message"]
    code = main(["evaluate", "--pred", str(images), "--ref", str(images)])
    assert code == EXIT_BAD_INPUT and "b.nii.gz -> " in capsys.readouterr().err
    data = tmp_path / "data"
    data.mkdir()
    write_volume(data / "case_000_image.nii.gz", _image())
    (data / "case_000_label.nii.gz").symlink_to(tmp_path / "gone" / "label.nii.gz")
    code = main(["train", "--data", str(data), "--classes", "liver", "--modality", "MR", "--out",
                 str(tmp_path / "m.pairseg"), "--events", "json"])
    event = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert code == EXIT_BAD_INPUT and "case_000_label.nii.gz -> " in event["message"], event
    assert not (tmp_path / "out").exists() and not (tmp_path / "m.pairseg").exists()


# ---- DICOM slice positions wherever they are stored ------------------------------------------

def _enhanced_mr_series(folder: Path, skip: int | None) -> Path:
    """Single-frame enhanced MR files as SimpleITK (GDCM) writes them: the slice positions live
    in the per-frame functional groups, not at (0020,0032) of the top level."""
    folder.mkdir()
    image = sitk.GetImageFromArray(np.random.default_rng(3).integers(0, 900, (9, 24, 24)).astype(np.int16))
    image.SetSpacing((0.9, 0.9, 2.5))
    image.SetOrigin((3.0, -4.0, 5.0))
    for z in range(9):
        if z == skip:
            continue
        frame = image[:, :, z:z + 1]
        for key, value in (("0020|000e", "1.2.826.0.1.3680043.2.1125.77"), ("0020|0013", str(z + 1)),
                           ("0008|0016", "1.2.840.10008.5.1.4.1.1.4.1"), ("0008|0060", "MR")):
            frame.SetMetaData(key, value)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(folder / f"IM{z:04d}.dcm"))
        writer.Execute(frame)
    return folder


def test_a_missing_slice_is_found_wherever_the_positions_are_stored(tmp_path):
    from pairseg.errors import PairSegInputError
    from pairseg.io.read import read_volume

    whole = read_volume(_enhanced_mr_series(tmp_path / "whole", None))
    assert whole.shape == (9, 24, 24) and whole.spacing[2] == pytest.approx(2.5)
    with pytest.raises(PairSegInputError, match=r"non-uniform slice spacing: .* 5 mm apart where the others are 2.5"):
        read_volume(_enhanced_mr_series(tmp_path / "gap", 4))


# ---- overlapping .seg.nrrd layers --------------------------------------------------------------

def test_overlapping_segments_are_warned_about_by_the_commands(tmp_path, capsys):
    import slicerio

    image = _image()
    seg = slicerio.create_segmentation(image.shape[::-1], image.ijk_to_lps())
    liver = np.zeros(image.shape[::-1], bool)
    liver[5:30, 5:30, 2:10] = True
    tumour = np.zeros_like(liver)
    tumour[10:15, 10:15, 4:6] = True  # inside the liver: a second layer
    slicerio.add_segment(seg, liver, {"id": "a", "name": "liver"})
    slicerio.add_segment(seg, tumour, {"id": "b", "name": "tumour"})
    ref = tmp_path / "ref.seg.nrrd"
    slicerio.write_segmentation(str(ref), seg)
    code = main(["evaluate", "--pred", str(ref), "--ref", str(ref)])
    err = capsys.readouterr().err
    assert code == 0
    assert f"warning: {ref}: segments overlap ('liver' and 'tumour' in 50 voxel(s))" in err, err


# ---- header geometry that tools read differently ----------------------------------------------

def _raw_nifti_affines(path: Path) -> dict:
    """{"qform", "sform"} voxel-to-RAS matrices of a NIfTI-1 header parsed here from the bytes, as
    nibabel reads them (signed pixdim, qfac from pixdim[0]); quaternion through scipy."""
    import gzip
    import struct

    from scipy.spatial.transform import Rotation

    with (gzip.open(path) if path.name.endswith(".gz") else open(path, "rb")) as handle:
        raw = handle.read(348)
    pixdim = struct.unpack_from("<8f", raw, 76)
    qcode, scode = struct.unpack_from("<2h", raw, 252)
    b, c, d, *offset = struct.unpack_from("<6f", raw, 256)
    a = np.sqrt(max(0.0, 1 - b * b - c * c - d * d))
    qform = np.eye(4)
    qform[:3, :3] = Rotation.from_quat([b, c, d, a]).as_matrix() @ np.diag(
        [pixdim[1], pixdim[2], pixdim[3] * (-1 if pixdim[0] < 0 else 1)])
    qform[:3, 3] = offset
    sform = np.vstack([np.array(struct.unpack_from("<12f", raw, 280)).reshape(3, 4), [0, 0, 0, 1]])
    return {"qform": qform if qcode > 0 else None, "sform": sform if scode > 0 else None}


def _sitk_affine(path: Path) -> np.ndarray:
    image = sitk.ReadImage(str(path))
    matrix = np.eye(4)
    matrix[:3, :3] = np.array(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    matrix[:3, 3] = image.GetOrigin()
    return np.diag([-1, -1, 1, 1]) @ matrix  # LPS -> RAS


def _nifti_with(tmp_path: Path, name: str, negative_x: bool, sform_shift: float, qfac: float = 1.0) -> Path:
    import struct

    image = Volume(np.random.default_rng(4).normal(size=(5, 12, 14)).astype(np.float32), (1.5, 0.9, 3.0),
                   (10.0, -20.0, 30.0), tuple(np.eye(3).reshape(-1)))
    path = tmp_path / name
    sitk.WriteImage(image.to_sitk(), str(path))
    header = bytearray(path.read_bytes())
    pixdim = list(struct.unpack_from("<8f", header, 76))
    pixdim[0] = qfac
    if negative_x:
        pixdim[1] = -pixdim[1]
    struct.pack_into("<8f", header, 76, *pixdim)
    srow = list(struct.unpack_from("<12f", header, 280))
    if negative_x:  # the sform flips the same axis: both forms agree
        srow[0], srow[4], srow[8] = -srow[0], -srow[4], -srow[8]
    srow[3] += sform_shift
    struct.pack_into("<12f", header, 280, *srow)
    path.write_bytes(bytes(header))
    return path


@pytest.mark.parametrize("case", ["negative_pixdim_forms_agree", "negative_pixdim_forms_disagree",
                                  "flipped_qfac_forms_disagree"])
def test_outputs_carry_the_inputs_geometry_in_every_readers_view(tmp_path, case):
    """NIfTI-1 inputs whose qform and sform (with a negative voxel size, a flipped third axis) tools
    read differently: a NIfTI output written like them holds the same qform and sform as read from
    the bytes (nibabel's view) and reads the same in SimpleITK; a NRRD output (one geometry)
    holds SimpleITK's view, which pynrrd reads back; every disagreement is warned about. A plain
    header (all agree) gives no warning and the outputs ITK writes."""
    import warnings

    import nrrd

    negative, shift, qfac = {"negative_pixdim_forms_agree": (True, 0.0, 1.0),
                             "negative_pixdim_forms_disagree": (True, 7.0, 1.0),
                             "flipped_qfac_forms_disagree": (False, 0.0, -1.0)}[case]
    path = _nifti_with(tmp_path, "scan.nii", negative, shift, qfac)
    source = _raw_nifti_affines(path)
    disagree = not np.allclose(source["qform"], source["sform"], atol=1e-3)
    assert disagree == (case != "negative_pixdim_forms_agree")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        volume = read_volume(path)
    geometry = [w for w in caught if issubclass(w.category, GeometryWarning)]
    itk_differs = not all(np.allclose(_sitk_affine(path), m, atol=1e-3) for m in source.values())
    assert itk_differs  # each of these headers is one that SimpleITK and nibabel read differently
    assert len(geometry) == 1, [str(w.message) for w in caught]
    labels = np.random.default_rng(5).integers(0, 2, volume.shape).astype(np.uint8)
    for suffix in (".nii", ".nii.gz"):
        out = Path(write_labels(tmp_path / f"labels{suffix}", labels, volume))
        written = _raw_nifti_affines(out)
        for form in ("qform", "sform"):
            np.testing.assert_allclose(written[form], source[form], atol=1e-4)
        np.testing.assert_allclose(_sitk_affine(out), _sitk_affine(path), atol=1e-4)
    out = Path(write_labels(tmp_path / "labels.nrrd", labels, volume))
    data, header = nrrd.read(str(out))
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(header["space directions"], float).T
    lps[:3, 3] = header["space origin"]
    np.testing.assert_allclose(np.diag([-1, -1, 1, 1]) @ lps, _sitk_affine(path), atol=1e-4)
    np.testing.assert_array_equal(data.transpose(2, 1, 0), labels)
    plain = tmp_path / "plain.nii"
    sitk.WriteImage(volume.to_sitk(), str(plain))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_volume(plain).nifti_forms is None


def test_train_onto_a_full_disk_ends_in_one_error_line(small_disk, phantom_dir, capsys):
    """The checkpoint written after the first epoch does not fit: exit 2 with one error event
    naming it (no torch traceback), no temporary, no model."""
    out = small_disk / "m.pairseg"
    _fill(small_disk, leave=4096)
    threads = torch.get_num_threads()
    try:
        code = main(["train", "--data", str(phantom_dir), "--out", str(out), "--steps", "1", "--size", "32",
                     "--batch-size", "4", "--output-stride", "16", "--pair-mode", "intra", "--offsets", "5",
                     "--device", "cpu", "--events", "json"])
    finally:
        torch.set_num_threads(threads)
    captured = capsys.readouterr()
    events = [json.loads(x) for x in captured.out.splitlines()]
    assert code == EXIT_BAD_INPUT and [e["event"] for e in events].count("error") == 1
    message = events[-1]["message"]
    assert message.startswith(f"{out}.ckpt: cannot write checkpoint (") and "No space left on device" in message, message
    assert "Traceback" not in captured.err
    assert _listing(small_disk) == ["filler"]


def test_an_uncertainty_map_onto_a_full_disk_keeps_the_earlier_labels(small_disk, tmp_path, untrained_mr_model,
                                                                      capsys):
    """The labels fit (another disk) but the uncertainty map does not: written together, so the
    earlier labels stay and the error names the map."""
    scan = Path(write_volume(tmp_path / "scan.nii.gz", _image()))
    labels, uncertainty = tmp_path / "seg.nii.gz", small_disk / "uncertainty.nrrd"
    labels.write_bytes(b"an earlier result")
    _fill(small_disk, leave=0)
    code = main(["segment", "--model", str(untrained_mr_model), "--input", str(scan), "--output", str(labels),
                 "--uncertainty", str(uncertainty), "--device", "cpu", "--events", "json"])
    events = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert code == EXIT_BAD_INPUT and events[-1]["event"] == "error" and "done" not in [e["event"] for e in events]
    assert events[-1]["message"].startswith(f"{uncertainty}: cannot write")
    assert labels.read_bytes() == b"an earlier result"
    assert _listing(small_disk) == ["filler"]
