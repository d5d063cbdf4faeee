"""The `pairseg` command line: train / segment / evaluate / info / demo, JSON events, exit codes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio
import torch

from pairseg import __version__
from pairseg.cli import EXIT_BAD_INPUT, EXIT_STOPPED, main
from pairseg.io.read import read_label
from pairseg.io.volume import Volume
from pairseg.io.write import write_labels, write_volume
from pairseg.modelfiles.weights import read_metadata, save_model
from pairseg.networks import build_model
from pairseg.phantoms import make_phantom_dataset
from pairseg.uncertainty import rank_slices, uncertainty_map

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["liver", "right kidney", "left kidney", "spleen"]


def run(capsys, *argv) -> tuple[int, list[dict], str]:
    """Run the CLI in-process; return (exit code, JSON events, stderr)."""
    threads = torch.get_num_threads()
    try:
        code = main([str(a) for a in argv])
    finally:
        torch.set_num_threads(threads)
    captured = capsys.readouterr()
    events = [json.loads(line) for line in captured.out.splitlines() if line.startswith('{"event"')]
    return code, events, captured.out + captured.err


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    return make_phantom_dataset(tmp_path_factory.mktemp("cli-data"), n_cases=3, shape=(12, 40, 56), seed=7)


@pytest.fixture(scope="module")
def bare_folders(small_data, tmp_path_factory):
    """The same cases as a bare folder (no dataset.json) for training and one for validation."""
    root = tmp_path_factory.mktemp("bare")
    train_dir, val_dir = root / "train", root / "val"
    for folder, names in ((train_dir, ["case_000", "case_001"]), (val_dir, ["case_002"])):
        folder.mkdir()
        for name in names:
            for kind in ("image", "label"):
                shutil.copy(small_data / f"{name}_{kind}.nii.gz", folder / f"{name}_{kind}.nii.gz")
    return train_dir, val_dir


@pytest.fixture(scope="module")
def untrained_model(tmp_path_factory):
    torch.manual_seed(1)
    model = build_model("c2fcn", 4, 3, base="unet", width=4)
    meta = {"class_names": CLASSES, "class_colors": [[0.1 * k, 0.5, 0.5] for k in range(1, 5)],
            "modality": "MR", "size": 32}
    return save_model(tmp_path_factory.mktemp("cli-model") / "tiny.pairseg", model, meta)


TRAIN_ARGS = ["--size", "32", "--batch-size", "4", "--output-stride", "16", "--pair-mode", "intra",
              "--offsets", "5", "--device", "cpu", "--lr", "1e-3", "--events", "json"]


def test_python_dash_m_pairseg():
    done = subprocess.run([sys.executable, "-m", "pairseg", "--version"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and __version__ in done.stdout
    done = subprocess.run([sys.executable, "-m", "pairseg", "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    for command in ("train", "segment", "evaluate", "proxy-maps", "info", "demo"):
        assert command in done.stdout


def test_train_bare_folder_with_validation_json_events(bare_folders, tmp_path, capsys):
    train_dir, val_dir = bare_folders
    out = tmp_path / "model.pairseg"
    code, events, _ = run(capsys, "train", "--data", train_dir, "--out", out, "--classes",
                          'liver,"right kidney",left kidney,spleen', "--modality", "mr", "--val", val_dir,
                          "--epochs", "1", *TRAIN_ARGS)
    assert code == 0
    kinds = [e["event"] for e in events]
    assert kinds[0] == "message" and "start" in kinds and kinds[-1] == "done"
    assert kinds.index("start") < kinds.index("progress") < kinds.index("validation") < kinds.index("checkpoint")
    progress = [e for e in events if e["event"] == "progress"]
    assert [p["step"] for p in progress] == [1, 2, 3]
    assert all({"step", "total", "epoch", "loss", "eta_s", "fraction", "stage"} <= set(p) for p in progress)
    validation = next(e for e in events if e["event"] == "validation")
    assert validation["epoch"] == 1 and set(validation["dice"]) == set(CLASSES)
    assert all("time" in e for e in events)
    meta = read_metadata(out)
    assert meta["class_names"] == CLASSES and meta["modality"] == "MR"
    assert meta["training"]["cases"] == ["case_000", "case_001"]
    assert set(meta["validation"]["dice"]) == set(CLASSES)

    code, _, text = run(capsys, "info", out)
    assert code == 0 and "right kidney" in text and "c2fcn" in text and "validation" in text
    code, _, text = run(capsys, "info", out, "--json")
    assert code == 0 and json.loads(text)["sha256"] == meta["sha256"]


def test_stop_file_exit_130_then_resume(small_data, tmp_path, capsys):
    out = tmp_path / "m.pairseg"
    stop = tmp_path / "STOP"
    stop.touch()
    args = ["train", "--data", small_data, "--out", out, "--cases", "case_000,case_001", "--steps", "3", *TRAIN_ARGS]
    code, events, _ = run(capsys, *args, "--stop-file", stop)
    assert code == EXIT_STOPPED
    assert [e["event"] for e in events][-2:] == ["checkpoint", "stopped"]
    assert not out.exists() and Path(str(out) + ".ckpt").is_file()
    stop.unlink()
    assert args[-2:] == ["--events", "json"]
    code, events, text = run(capsys, *args[:-2], "--resume")  # people's progress output this time
    assert code == 0 and out.is_file() and not Path(str(out) + ".ckpt").exists()
    assert events == [] and "resumed from" in text and "3/3" in text and "done: " + str(out) in text
    assert read_metadata(out)["training"]["steps"] == 3


def test_train_bad_input_exit_2(small_data, tmp_path, capsys):
    code, events, _ = run(capsys, "train", "--data", tmp_path / "nowhere", "--out", tmp_path / "m.pairseg",
                          "--steps", "1", "--events", "json")
    assert code == EXIT_BAD_INPUT
    assert events[-1]["event"] == "error" and events[-1]["kind"] == "input" and "nowhere" in events[-1]["message"]
    code, events, _ = run(capsys, "train", "--data", small_data, "--out", tmp_path / "m.pairseg", "--steps", "1",
                          "--resume", *TRAIN_ARGS)
    assert code == EXIT_BAD_INPUT and "no checkpoint" in events[-1]["message"]
    code, _, text = run(capsys, "train", "--data", tmp_path / "nowhere", "--out", tmp_path / "m.pairseg")
    assert code == EXIT_BAD_INPUT and "error:" in text  # human mode: a readable line on stderr
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(SystemExit):  # argparse: --epochs and --steps exclude each other
        main(["train", "--data", "x", "--out", "y", "--epochs", "1", "--steps", "1"])


def test_segment_one_file_with_probabilities(small_data, untrained_model, tmp_path, capsys):
    image = small_data / "case_002_image.nii.gz"
    out, probs = tmp_path / "seg" / "case.seg.nrrd", tmp_path / "probs.nrrd"
    code, events, _ = run(capsys, "segment", "--model", untrained_model, "--input", image, "--output", out,
                          "--probabilities", probs, "--events", "json", "--device", "cpu")
    assert code == 0
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and "progress" in kinds
    assert events[-1]["outputs"] == [str(out), str(probs)] and events[-1]["classes"] == CLASSES
    seg = slicerio.read_segmentation(str(out))
    assert [s["name"] for s in seg["segments"]] == CLASSES
    np.testing.assert_allclose(seg["segments"][2]["color"], [0.3, 0.5, 0.5], atol=1e-3)
    assert sitk.ReadImage(str(probs)).GetNumberOfComponentsPerPixel() == 4


def test_segment_precision_option(small_data, untrained_model, tmp_path, capsys, monkeypatch):
    """--precision reaches the predictor: bf16 runs where supported and is refused with a clear
    error (exit 2, nothing written) where not."""
    import torch

    from pairseg.devices import bf16_supported

    image = small_data / "case_002_image.nii.gz"
    out = tmp_path / "bf16" / "case.nii.gz"
    if bf16_supported(torch.device("cpu")):
        code, events, _ = run(capsys, "segment", "--model", untrained_model, "--input", image, "--output", out,
                              "--precision", "bf16", "--events", "json", "--device", "cpu")
        assert code == 0 and out.is_file()
    default = tmp_path / "default" / "case.nii.gz"
    code, events, _ = run(capsys, "segment", "--model", untrained_model, "--input", image, "--output", default,
                          "--events", "json", "--device", "cpu")
    start = next(e for e in events if e["event"] == "start")
    assert code == 0 and start["precision"] == ("bf16" if bf16_supported(torch.device("cpu")) else "fp32")
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    refused = tmp_path / "refused" / "case.nii.gz"
    code, events, _ = run(capsys, "segment", "--model", untrained_model, "--input", image, "--output", refused,
                          "--precision", "bf16", "--events", "json", "--device", "cpu")
    assert code == 2 and "bf16 is not supported" in events[-1]["message"] and not refused.exists()


def test_segment_folder_batch_size_and_largest_component(small_data, untrained_model, tmp_path, capsys):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name in ("case_000", "case_002"):
        shutil.copy(small_data / f"{name}_image.nii.gz", inputs / f"{name}_image.nii.gz")
    results = {}
    for tag, extra in (("a", ["--batch-size", "1"]), ("b", ["--batch-size", "16"]),
                       ("raw", ["--no-largest-component"])):
        out = tmp_path / tag
        code, events, _ = run(capsys, "segment", "--model", untrained_model, "--input", inputs, "--output", out,
                              "--device", "cpu", "--events", "json", "--probabilities", tmp_path / f"p{tag}", *extra)
        assert code == 0
        assert sorted(p.name for p in out.iterdir()) == ["case_000.nii.gz", "case_002.nii.gz"]
        assert sorted(p.name for p in (tmp_path / f"p{tag}").iterdir()) == [
            "case_000.probabilities.nii.gz", "case_002.probabilities.nii.gz"]
        fractions = [e["fraction"] for e in events if e["event"] == "progress"]
        assert fractions == sorted(fractions) and fractions[-1] == 1.0
        results[tag] = {p.name: sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in out.iterdir()}
    from pairseg.postprocess import keep_largest_component

    for name in results["a"]:
        np.testing.assert_array_equal(results["a"][name], results["b"][name])
        np.testing.assert_array_equal(results["a"][name], keep_largest_component(results["raw"][name], 4))


def test_segment_refuses_other_modality(small_data, untrained_model, tmp_path, capsys):
    out = tmp_path / "out.nii.gz"
    code, events, _ = run(capsys, "segment", "--model", untrained_model, "--input",
                          small_data / "case_000_image.nii.gz", "--output", out, "--modality", "CT",
                          "--events", "json", "--device", "cpu")
    assert code == EXIT_BAD_INPUT and "MR" in events[-1]["message"] and "CT" in events[-1]["message"]
    assert not out.exists()


def _perturbed(small_data, folder: Path, names):
    folder.mkdir()
    for name in names:
        labels, _ = read_label(small_data / f"{name}_label.nii.gz")
        image = sitk.ReadImage(str(small_data / f"{name}_label.nii.gz"))
        shifted = np.roll(labels, 1, axis=2)
        write_labels(folder / f"{name}.nii.gz", shifted, Volume(labels, image.GetSpacing(), image.GetOrigin(),
                                                                image.GetDirection()))


def test_evaluate_folders_matched_by_case_name(small_data, tmp_path, capsys):
    preds = tmp_path / "preds"
    _perturbed(small_data, preds, ["case_001", "case_002"])
    report = tmp_path / "report" / "metrics.json"
    code, _, text = run(capsys, "evaluate", "--pred", preds, "--ref", small_data, "--json", report)
    assert code == 0
    for word in ("case_001", "case_002", "liver", "spleen"):
        assert word in text
    assert "case_000" not in text  # no prediction for it
    data = json.loads(report.read_text())
    assert [c["case"] for c in data["cases"]] == ["case_001", "case_002"]
    for case in data["cases"]:
        assert set(case["dice"]) == set(CLASSES)
        assert 0.3 < case["dice"]["liver"] < 1.0 and case["assd"]["liver"] > 0
    assert "summary" in data


def test_evaluate_single_files_and_identity(small_data, tmp_path, capsys):
    ref = small_data / "case_000_label.nii.gz"
    code, _, _ = run(capsys, "evaluate", "--pred", ref, "--ref", ref, "--json", tmp_path / "m.json")
    assert code == 0
    case = json.loads((tmp_path / "m.json").read_text())["cases"][0]
    assert all(v == 1.0 for v in case["dice"].values()) and all(v == 0.0 for v in case["assd"].values())
    code, _, text = run(capsys, "evaluate", "--pred", tmp_path, "--ref", small_data)
    assert code == EXIT_BAD_INPUT and "no case names in common" in text


def test_demo_segments_the_embedded_case_with_the_shipped_model(tmp_path, capsys):
    """README command 1: the shipped model on the embedded sample case (which it never saw)."""
    out = tmp_path / "demo"
    code, events, _ = run(capsys, "demo", "--out", out, "--device", "cpu", "--events", "json")
    assert code == 0
    done = events[-1]
    assert done["event"] == "done" and [Path(p).name for p in done["outputs"]] == [
        "case_002_segmentation.seg.nrrd", "case_002_overlay.png", "metrics.json"]
    assert all(Path(p).is_file() for p in done["outputs"])
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert set(metrics["dice"]) == set(CLASSES)
    assert metrics["mean_dice"] > 0.85 and min(metrics["dice"].values()) > 0.75  # the catalog's claim
    segments = slicerio.read_segmentation(str(out / "case_002_segmentation.seg.nrrd"))["segments"]
    assert [s["name"] for s in segments] == CLASSES


def test_demo_train_fine_tunes_then_segments(tmp_path, phantom_dir, phantom_model, capsys):
    out = tmp_path / "demo"
    code, events, _ = run(capsys, "demo", "--out", out, "--model", phantom_model, "--data", phantom_dir, "--train",
                          "--steps", "2", "--device", "cpu", "--events", "json")
    assert code == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["fine_tune_steps"] == 2 and report["case"] not in report["fine_tuned_on"]
    tuned = read_metadata(out / "fine-tuned.pairseg")
    assert tuned["training"]["init_from"] == str(phantom_model) and tuned["training"]["steps"] == 2


def test_event_sinks_serialise_numpy_and_missing_values():
    import io

    from pairseg.events import HumanEvents, JsonEvents

    stream = io.StringIO()
    JsonEvents(stream)("validation", epoch=np.int64(2), dice={"liver": np.float32(0.5), "spleen": float("nan")},
                       counts=np.array([1, 2]), shape=torch.tensor([3, 4]), path=Path("/x/y"))
    record = json.loads(stream.getvalue())
    assert record == {**record, "event": "validation", "epoch": 2, "dice": {"liver": 0.5, "spleen": None},
                      "counts": [1, 2], "shape": [3, 4], "path": "/x/y"}
    text = io.StringIO()
    human = HumanEvents(text)
    human("validation", epoch=1, dice={"liver": None}, mean_dice=None)
    human("progress", stage="train", fraction=1.0, step=3, total=3, loss=0.25, eta_s=0.0)
    human("error", message="bad thing")
    assert "validation Dice ?" in text.getvalue() and "3/3" in text.getvalue() and "error: bad thing" in text.getvalue()


def test_segment_writes_the_map_and_names_the_slices(small_data, untrained_model, tmp_path, capsys):
    image = small_data / "case_002_image.nii.gz"
    out, unc, probs = tmp_path / "seg.nii.gz", tmp_path / "unc.nrrd", tmp_path / "p.nii.gz"
    code = main(["segment", "--model", str(untrained_model), "--input", str(image), "--output", str(out),
                 "--uncertainty", str(unc), "--probabilities", str(probs), "--events", "json", "--device", "cpu"])
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert code == 0
    assert events[-1]["outputs"] == [str(out), str(probs), str(unc)]
    reported = [e for e in events if e["event"] == "uncertainty"]
    assert len(reported) == 1 and 0 < len(reported[0]["check_slices"]) <= 5
    source, written = sitk.ReadImage(str(image)), sitk.ReadImage(str(unc))
    assert written.GetSize() == source.GetSize() and written.GetOrigin() == source.GetOrigin()
    expected = uncertainty_map(np.moveaxis(sitk.GetArrayFromImage(sitk.ReadImage(str(probs))), -1, 1).astype(np.float16))
    np.testing.assert_allclose(sitk.GetArrayFromImage(written), expected, atol=2e-3)
    assert [r["slice"] for r in reported[0]["check_slices"]] == [r["slice"] for r in rank_slices(expected)]


def test_uncertainty_output_checked_before_the_model_loads(small_data, tmp_path, capsys):
    image = small_data / "case_002_image.nii.gz"
    code = main(["segment", "--model", str(tmp_path / "missing.pairseg"), "--input", str(image), "--output",
                 str(tmp_path / "seg.nii.gz"), "--uncertainty", str(tmp_path / "u.png"), "--events", "json"])
    message = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")][-1]["message"]
    assert code == 2 and "unsupported --uncertainty file type '.png'" in message
    code = main(["segment", "--model", str(tmp_path / "missing.pairseg"), "--input", str(image), "--output",
                 str(tmp_path / "seg.nii.gz"), "--uncertainty", str(tmp_path / "seg.nii.gz"), "--events", "json"])
    message = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")][-1]["message"]
    assert code == 2 and "--uncertainty is the same file as --output" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_segment_empty_folder_is_an_input_error_before_the_model_loads(untrained_model, tmp_path, capsys):
    """A folder with neither image files nor DICOM files is named as the input's problem (exit 2),
    before any model is read, whatever the --output."""
    empty = tmp_path / "empty"
    empty.mkdir()
    for output in (tmp_path / "out", tmp_path / "out.seg.nrrd"):
        code, events, text = run(capsys, "segment", "--model", untrained_model, "--input", empty, "--output", output,
                                 "--events", "json", "--device", "cpu")
        assert code == 2 and "holds no image files" in events[-1]["message"] and str(empty) in events[-1]["message"]
        assert not any(e["event"] == "start" for e in events) and not output.exists()


def test_info_and_models_help_describe_their_own_command(capsys):
    for command, words in (("info", "Verify a model file"), ("models", "The models that ship with PairSeg")):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert words in " ".join(capsys.readouterr().out.split())


def test_segment_uncertainty_over_chosen_classes(small_data, untrained_model, tmp_path, capsys):
    """--uncertainty-classes: the map sums only those classes' entropies (the probabilities file
    says what they are), the event names them; an unknown class, or the option without
    --uncertainty, is refused (exit 2) before any output is written."""
    image = small_data / "case_002_image.nii.gz"
    out, unc, probs = tmp_path / "seg.nii.gz", tmp_path / "unc.nrrd", tmp_path / "p.nii.gz"
    code, events, _ = run(capsys, "segment", "--model", untrained_model, "--input", image, "--output", out,
                          "--uncertainty", unc, "--probabilities", probs, "--uncertainty-classes", "Spleen",
                          "--events", "json", "--device", "cpu")
    assert code == 0
    classes = next(e for e in events if e["event"] == "start")["classes"]
    reported = next(e for e in events if e["event"] == "uncertainty")
    assert reported["classes"] == ["spleen"] and reported["max_bits"] == 1.0
    probabilities = np.moveaxis(sitk.GetArrayFromImage(sitk.ReadImage(str(probs))), -1, 1).astype(np.float16)
    expected = uncertainty_map(probabilities, [classes.index("spleen")])
    np.testing.assert_allclose(sitk.GetArrayFromImage(sitk.ReadImage(str(unc))), expected, atol=2e-3)
    for extra, words in ((["--uncertainty", tmp_path / "u2.nrrd", "--uncertainty-classes", "pancreas"],
                          "no class 'pancreas'"),
                         (["--uncertainty-classes", "liver"], "--uncertainty-classes needs --uncertainty")):
        target = tmp_path / "refused" / "seg.nii.gz"
        code, events, _ = run(capsys, "segment", "--model", untrained_model, "--input", image, "--output", target,
                              *extra, "--events", "json", "--device", "cpu")
        assert code == 2 and words in events[-1]["message"] and not target.exists()
