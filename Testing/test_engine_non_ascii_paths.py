"""Engine runs on files under a folder with non-ASCII and space characters (issue 19 item 9).

The bridge's own environment (``engineEnvironment``: UTF-8 mode forced, as Slicer's PythonSlicer
needs on Windows) and a real ``pairseg segment`` run of the phantom model on an image and an
output in "Données José/dossier d'essai". On this POSIX machine ITK opens such paths as they are;
the Windows short-name branch of ``pairseg.paths.itk_path`` is covered by tests/test_paths.py with
a recorded short-name function, not by a Windows run.
"""

import json
import shutil
import sys

import pytest


@pytest.fixture
def engine(load_module):
    load_module("PairSeg")
    from PairSegLib import engine

    return engine


def test_engine_process_runs_in_utf8_mode(engine):
    environment = engine.engineEnvironment()
    assert environment["PYTHONUTF8"] == "1"
    report = "import json, sys; print(json.dumps({'event': 'done', 'outputs': [sys.flags.utf8_mode]}))"
    run = engine.EngineRun(command=[sys.executable, "-c", report], ensureEngine=False).start().wait(timeout=60)
    assert run.outputs == ["1"], run.log


def test_segment_under_non_ascii_folder_with_spaces(engine, phantom_dir, phantom_model, tmp_path, monkeypatch):
    import SimpleITK as sitk

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    folder = tmp_path / "Données José" / "dossier d'essai"
    folder.mkdir(parents=True)
    image = folder / "cas 1 image.nii.gz"
    shutil.copy(phantom_dir / "case_000_image.nii.gz", image)
    model = folder / "modèle.pairseg"
    shutil.copy(phantom_model, model)
    output = folder / "segmentation résultat.nrrd"
    run = engine.EngineRun(["segment", "--model", model, "--input", image, "--output", output, "--device", "cpu",
                            "--events", "json"], ensureEngine=False, python=sys.executable).start()
    run.wait(timeout=300)
    assert run.state == "done", run.log[-10:]
    assert run.outputs == [str(output)]
    labels = sitk.ReadImage(str(output))
    assert labels.GetSize() == sitk.ReadImage(str(image)).GetSize()
    assert sitk.GetArrayViewFromImage(labels).max() > 0
    json.dumps(run.events)  # the events (paths included) crossed the pipe as UTF-8
