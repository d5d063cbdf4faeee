"""Output locations through the command line: checked before any work, never an input or another
output, written together or not at all, errors naming the user's path (exit 2), no temporaries
left; folder runs that go on past a bad case; numeric options checked by argparse; SIGTERM."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch


from pairseg.cli import EXIT_BAD_INPUT, EXIT_TERMINATED, main
from pairseg.io.volume import Volume
from pairseg.io.write import write_labels, write_volume

SHAPE = (6, 24, 28)


def run(capsys, *argv) -> tuple[int, list[dict]]:
    """Run the CLI in-process with JSON events; return (exit code, events)."""
    threads = torch.get_num_threads()
    try:
        code = main([str(a) for a in argv] + ["--events", "json"])
    finally:
        torch.set_num_threads(threads)
    return code, [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]


def refused(capsys, *argv) -> str:
    """Run the CLI; require exit code 2 with an error event; return its message."""
    code, events = run(capsys, *argv)
    assert code == EXIT_BAD_INPUT, events[-3:]
    assert events[-1]["event"] == "error"
    return events[-1]["message"]


def evaluate_refused(capsys, *argv) -> str:
    """``evaluate`` (people's output only): require exit code 2; return the error line's message."""
    code = main(["evaluate", *(str(a) for a in argv)])
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error: ")]
    assert code == EXIT_BAD_INPUT and len(lines) == 1
    return lines[0][len("error: "):]


def _image(seed=0) -> Volume:
    return Volume(np.random.default_rng(seed).normal(100, 20, SHAPE).astype(np.float32), (1.0, 1.0, 3.0))


@pytest.fixture(scope="module")
def model(untrained_mr_model) -> Path:
    return untrained_mr_model


@pytest.fixture
def scan(tmp_path) -> Path:
    return Path(write_volume(tmp_path / "scan.nii.gz", _image()))


def _segment(model, scan, *extra):
    return ("segment", "--model", model, "--input", scan, "--device", "cpu", *extra)


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------------------------------------
# segment
# ---------------------------------------------------------------------------------------------


def test_output_onto_the_input_is_refused(model, scan, tmp_path, capsys):
    before = scan.read_bytes()
    (tmp_path / "sub").mkdir()
    for output in (scan, tmp_path / "sub" / ".." / "scan.nii.gz"):
        message = refused(capsys, *_segment(model, scan, "--output", output))
        assert "--output is the input" in message
    (tmp_path / "alias.nii.gz").symlink_to(scan)
    assert "--output is the input" in refused(capsys, *_segment(model, scan, "--output", tmp_path / "alias.nii.gz"))
    assert "--probabilities is the input" in refused(
        capsys, *_segment(model, scan, "--output", tmp_path / "l.nii.gz", "--probabilities", scan))
    assert "is the model" not in refused(capsys, *_segment(model, scan, "--output", model.with_suffix(".nii.gz"),
                                                           "--probabilities", model))
    assert scan.read_bytes() == before


def test_probabilities_onto_the_labels_is_refused(model, scan, tmp_path, capsys):
    out = tmp_path / "labels.nii.gz"
    message = refused(capsys, *_segment(model, scan, "--output", out, "--probabilities", out))
    assert message == f"{out}: --probabilities is the same file as --output"
    assert not out.exists()


@pytest.mark.parametrize("case", ["folder", "png", "under_a_file", "proc", "probs_png"])
def test_bad_output_locations_refused_before_the_model_loads(scan, tmp_path, capsys, case):
    """The model path is bogus: an error about the output proves it came first."""
    (tmp_path / "existing.nii.gz").mkdir()
    (tmp_path / "afile").write_text("x")
    output, extra, expected = {
        "folder": (tmp_path / "existing.nii.gz", [], "is an existing folder"),
        "png": (tmp_path / "labels.png", [], "unsupported --output file type '.png'"),
        "under_a_file": (tmp_path / "afile" / "labels.nii.gz", [], "is a file, not a folder"),
        "proc": (Path("/proc/labels.nii.gz"), [], "cannot write --output in /proc"),
        "probs_png": (tmp_path / "l.nii.gz", ["--probabilities", tmp_path / "p.png"],
                      "unsupported --probabilities file type '.png'"),
    }[case]
    message = refused(capsys, *_segment(tmp_path / "no-model.pairseg", scan, "--output", output, *extra))
    assert expected in message and "no-model" not in message
    assert _listing(tmp_path) == ["afile", "existing.nii.gz", "scan.nii.gz"]


def test_a_failing_later_output_leaves_the_earlier_one_untouched(model, scan, tmp_path, capsys, monkeypatch):
    out, probs = tmp_path / "labels.nii.gz", tmp_path / "probs.nrrd"
    out.write_bytes(b"an earlier result")
    real = sitk.WriteImage

    def probabilities_fail(image, path, *args):
        if "probs" in str(path):
            raise RuntimeError(f"ITK ERROR: could not write {path}: No space left on device")
        real(image, path, *args)

    monkeypatch.setattr(sitk, "WriteImage", probabilities_fail)
    message = refused(capsys, *_segment(model, scan, "--output", out, "--probabilities", probs))
    assert message.startswith(f"{probs}: cannot write output") and ".tmp-" not in message
    assert out.read_bytes() == b"an earlier result"
    assert _listing(tmp_path) == ["labels.nii.gz", "scan.nii.gz"]  # no temporary left


def test_stale_temporaries_of_the_outputs_are_removed(model, scan, tmp_path, capsys):
    stale = [tmp_path / ".labels.tmp-deadbeef.nii.gz", tmp_path / ".probs.tmp-0badcafe.nrrd"]
    for path in stale:
        path.write_bytes(b"left by a killed run")
    code, events = run(capsys, *_segment(model, scan, "--output", tmp_path / "labels.nii.gz",
                                         "--probabilities", tmp_path / "probs.nrrd"))
    assert code == 0 and events[-1]["outputs"] == [str(tmp_path / "labels.nii.gz"), str(tmp_path / "probs.nrrd")]
    assert _listing(tmp_path) == ["labels.nii.gz", "probs.nrrd", "scan.nii.gz"]


def _cut(path: Path, fraction: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def test_folder_run_goes_on_past_a_bad_case(model, tmp_path, capsys):
    inputs = tmp_path / "inputs"
    for name in ("a", "b", "c"):
        write_volume(inputs / f"{name}.nii.gz", _image(seed=ord(name)))
    _cut(inputs / "b.nii.gz")
    out = tmp_path / "out"
    code, events = run(capsys, *_segment(model, inputs, "--output", out))
    assert code == EXIT_BAD_INPUT
    written = [str(out / "a.nii.gz"), str(out / "c.nii.gz")]
    assert _listing(out) == ["a.nii.gz", "c.nii.gz"]
    done, error = events[-2], events[-1]
    assert done["event"] == "done" and done["outputs"] == written and done["failed"] == [str(inputs / "b.nii.gz")]
    assert error["event"] == "error" and error["message"].startswith("1 of 3 case(s) failed: b.nii.gz: ")
    assert "truncated" in error["message"] and ", ".join(written) in error["message"]
    assert any(e["event"] == "message" and "b.nii.gz failed" in e["text"] for e in events)


def test_folder_run_refuses_two_inputs_with_one_output(model, tmp_path, capsys):
    inputs = tmp_path / "inputs"
    write_volume(inputs / "case.nii.gz", _image())
    write_volume(inputs / "case.nrrd", _image())
    message = refused(capsys, *_segment(model, inputs, "--output", tmp_path / "out"))
    assert "case.nii.gz: --output is the same file as --output" in message
    assert not (tmp_path / "out").exists()
    assert "--output folder is an existing file" in refused(capsys, *_segment(model, inputs, "--output",
                                                                              inputs / "case.nrrd"))
    assert "unsupported --output file type '.png'" in refused(
        capsys, *_segment(model, inputs, "--output", tmp_path / "out", "--format", ".png"))


# ---------------------------------------------------------------------------------------------
# evaluate, proxy-maps, train
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def labels(tmp_path) -> tuple[Path, Path]:
    array = np.zeros(SHAPE, np.uint8)
    array[1:5, 5:15, 5:15] = 1
    image = _image()
    return (Path(write_labels(tmp_path / "pred.nii.gz", array, image)),
            Path(write_labels(tmp_path / "ref.nii.gz", array, image)))


def test_evaluate_names_a_missing_file(labels, tmp_path, capsys):
    pred, ref = labels
    assert evaluate_refused(capsys, "--pred", tmp_path / "gone.nii.gz", "--ref", ref) == \
        f"{tmp_path / 'gone.nii.gz'}: --pred does not exist"
    assert evaluate_refused(capsys, "--pred", pred, "--ref", tmp_path / "nope") == \
        f"{tmp_path / 'nope'}: --ref does not exist"


def test_evaluate_json_checked_first_and_written_atomically(labels, tmp_path, capsys, monkeypatch):
    pred, ref = labels
    before = ref.read_bytes()
    assert "unsupported --json file type '.nii.gz'" in evaluate_refused(capsys, "--pred", pred, "--ref", ref,
                                                                        "--json", ref)
    manifest = tmp_path / "dataset.json"  # read for the class names
    manifest.write_text(json.dumps({"labels": {"0": "background", "1": "liver"}}))
    assert "--json is the input" in evaluate_refused(capsys, "--pred", pred, "--ref", ref, "--json", manifest)
    manifest.unlink()
    assert "unsupported --json file type '.txt'" in evaluate_refused(capsys, "--pred", pred, "--ref", ref,
                                                                     "--json", tmp_path / "r.txt")
    (tmp_path / "dir.json").mkdir()
    assert "existing folder" in evaluate_refused(capsys, "--pred", pred, "--ref", ref, "--json", tmp_path / "dir.json")
    report = tmp_path / "reports" / "r.json"
    assert main(["evaluate", "--pred", str(pred), "--ref", str(ref), "--json", str(report)]) == 0
    assert json.loads(report.read_text())["cases"][0]["dice"]["label_1"] == 1.0
    old = report.read_text()

    def failing(*args, **kwargs):  # a full disk that shows only when the data is flushed
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing)
    capsys.readouterr()
    message = evaluate_refused(capsys, "--pred", pred, "--ref", ref, "--json", report)
    assert message == f"{report}: cannot write output (No space left on device)"
    assert report.read_text() == old and _listing(report.parent) == ["r.json"]
    assert ref.read_bytes() == before


def test_proxy_maps_output_checks(labels, tmp_path, capsys):
    pred, _ = labels
    (tmp_path / "afile").write_text("x")
    common = ("proxy-maps", "--label-a", pred, "--slice-a", "2", "--slice-b", "3")
    assert "--out folder is an existing file" in refused(capsys, *common, "--out", tmp_path / "afile")
    # A label named like one of the maps, inside --out, would be overwritten.
    inside = tmp_path / "maps"
    inside.mkdir()
    label = inside / "and.nii.gz"
    label.write_bytes(pred.read_bytes())
    message = refused(capsys, "proxy-maps", "--label-a", label, "--slice-a", "2", "--slice-b", "3", "--out", inside)
    assert "--out file and.nii.gz is the input" in message
    assert label.read_bytes() == pred.read_bytes()


def test_train_out_checked_before_the_data_loads(tmp_path, capsys):
    """--data is missing: an error about --out proves it was checked first."""
    base = ("train", "--data", tmp_path / "no-data", "--steps", "1")
    model = tmp_path / "m.pairseg"
    model.write_bytes(b"an earlier model")
    message = refused(capsys, *base, "--out", model)
    assert message == f"{model}: model file exists; pass --overwrite to replace it (or choose another --out)"
    ckpt = tmp_path / "n.pairseg.ckpt"
    ckpt.write_bytes(b"an earlier run")
    assert "an earlier run's checkpoint exists; --resume continues it" in refused(
        capsys, *base, "--out", tmp_path / "n.pairseg")
    (tmp_path / "folder.pairseg").mkdir()
    assert "model is an existing folder" in refused(capsys, *base, "--out", tmp_path / "folder.pairseg")
    assert "unsupported model file type '.pt'" in refused(capsys, *base, "--out", tmp_path / "m.pt")
    assert "cannot write model in /proc" in refused(capsys, *base, "--out", "/proc/m.pairseg")
    # With --overwrite (or --resume) the checks pass and the data is what fails; a killed earlier
    # write's temporaries of the model and the checkpoint are gone.
    stale = [tmp_path / ".m.pairseg.ab12cd34.tmp", tmp_path / ".m.pairseg.ckpt.x_y1z2w3.tmp"]
    for path in stale:
        path.write_bytes(b"half a checkpoint")
    assert "no-data" in refused(capsys, *base, "--out", model, "--overwrite")
    assert "no-data" in refused(capsys, *base, "--out", tmp_path / "n.pairseg", "--resume")
    assert model.read_bytes() == b"an earlier model" and ckpt.read_bytes() == b"an earlier run"
    assert _listing(tmp_path) == ["folder.pairseg", "m.pairseg", "n.pairseg.ckpt"]


# ---------------------------------------------------------------------------------------------
# Numeric options, SIGTERM
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv,expected", [
    (["segment", "--model", "m", "--input", "i", "--output", "o.nii.gz", "--batch-size", "0"], "must be >= 1, got 0"),
    (["segment", "--model", "m", "--input", "i", "--output", "o.nii.gz", "--batch-size", "x"], "expected an integer"),
    (["proxy-maps", "--label-a", "l", "--slice-a", "-1", "--slice-b", "0", "--out", "o"], "must be >= 0, got -1"),
    (["demo", "--steps", "0"], "must be >= 1"),
    (["demo", "--steps", "1.5"], "expected an integer"),
])
def test_numeric_options_checked_at_parse_time(argv, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and expected in capsys.readouterr().err


@pytest.mark.parametrize("option, value, expected", [
    ("--offsets", "3,-5", "offsets (--offsets) must be at least 1, got -5"),
    ("--batch-size", "0", "batch_size (--batch-size) must be at least 1, got 0"),
    ("--lr", "0", "lr (--lr) must be greater than 0"),
])
def test_train_numbers_checked_by_the_schema_before_any_work(option, value, expected, tmp_path, capsys):
    """`train` options are checked against the training schema (pairseg.config) as the command
    starts: exit 2 with the option named, before the (missing) data is looked at."""
    code = main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o.pairseg"), option, value])
    assert code == 2 and expected in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_number_types():
    from pairseg.cli import fraction, nonnegative_float, positive_float, positive_int

    assert positive_int("3") == 3 and fraction("0.25") == 0.25 and nonnegative_float("0") == 0.0
    for parse, text in ((positive_int, "0"), (fraction, "1"), (fraction, "-0.1"), (positive_float, "0"),
                        (positive_float, "nan"), (positive_float, "inf"), (nonnegative_float, "-1e-9")):
        with pytest.raises(Exception, match="must be|expected"):
            parse(text)


def test_sigterm_outside_training_exits_143_with_a_message(scan, tmp_path, capsys, monkeypatch):
    import pairseg.infer

    def terminated_while_listing(path):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM was not delivered")

    monkeypatch.setattr(pairseg.infer, "list_inputs", terminated_while_listing)
    previous = signal.getsignal(signal.SIGTERM)
    code, events = run(capsys, "segment", "--model", "m.pairseg", "--input", scan, "--output", tmp_path / "o.nii.gz")
    assert code == EXIT_TERMINATED == 143
    assert (events[-1]["event"], events[-1]["message"], events[-1]["kind"]) == ("error", "terminated (SIGTERM)",
                                                                               "terminated")
    assert signal.getsignal(signal.SIGTERM) is previous  # main puts the previous handler back
    assert not (tmp_path / "o.nii.gz").exists()
