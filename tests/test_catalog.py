"""pairseg.modelfiles.catalog: the ready-model catalog, `pairseg models`, and catalog names as --model."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pairseg.modelfiles.catalog import CATALOG_FILE, file_sha256, load_catalog, resolve_model
from pairseg.cli import EXIT_BAD_INPUT, main
from pairseg.errors import PairSegInputError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "Resources" / "Models"


def _entry(model: Path, name: str = "phantom-mr") -> dict:
    return {
        "name": name, "title": "Phantom organs", "description": "test model", "version": "1.0.0",
        "modality": "MR", "arch": "c2fcn", "file": model.name, "url": None, "sha256": file_sha256(model),
        "file_size_bytes": model.stat().st_size,
        "classes": [{"name": n, "color": [200, 100, 50], "terminology": {}}
                    for n in ("liver", "right kidney", "left kidney", "spleen")],
        "spacing_mm": 2.0, "size": 64,
        "training_data": {"dataset": "phantoms", "cases": ["case_000"], "licence": "CC0", "citation": "none"},
        "evaluation": {"case": "case_003", "dice": {"liver": 0.5}, "assd_mm": {"liver": 3.0}, "mean_dice": 0.5},
        "cpu_segment_seconds": 1.0,
    }


@pytest.fixture()
def catalog_dir(tmp_path, phantom_model, monkeypatch) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(phantom_model, folder / "phantom.pairseg")
    (folder / CATALOG_FILE).write_text(json.dumps(
        {"catalog_version": 1, "default": "phantom-mr", "models": [_entry(folder / "phantom.pairseg")]}))
    monkeypatch.setenv("PAIRSEG_MODELS_DIR", str(folder))
    return folder


def test_catalog_entries_and_resolution(catalog_dir):
    catalog = load_catalog()
    assert catalog.default == "phantom-mr" and catalog.names == ["phantom-mr"]
    entry = catalog.entry("phantom-mr")
    assert entry.available and entry.class_names[0] == "liver" and "Dice 50.0" in entry.summary()
    assert resolve_model("phantom-mr") == catalog_dir / "phantom.pairseg"
    assert resolve_model(catalog_dir / "phantom.pairseg") == catalog_dir / "phantom.pairseg"  # a path stays a path
    with pytest.raises(PairSegInputError, match="no catalog model of that name.*phantom-mr"):
        resolve_model("no-such-model")


def test_damaged_catalog_model_is_refused(catalog_dir):
    with open(catalog_dir / "phantom.pairseg", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(PairSegInputError, match="does not match the catalog"):
        resolve_model("phantom-mr")
    (catalog_dir / "phantom.pairseg").unlink()
    with pytest.raises(PairSegInputError, match="missing"):
        resolve_model("phantom-mr")


@pytest.mark.parametrize("change, message", [
    (lambda spec: spec["models"][0].pop("sha256"), "lacks sha256"),
    (lambda spec: spec.update(default="other"), "default model 'other'"),
    (lambda spec: spec["models"].append(dict(spec["models"][0])), "repeat"),
    (lambda spec: spec.update(catalog_version=7), "catalog_version"),
])
def test_malformed_catalogs_name_the_file(catalog_dir, change, message):
    spec = json.loads((catalog_dir / CATALOG_FILE).read_text())
    change(spec)
    (catalog_dir / CATALOG_FILE).write_text(json.dumps(spec))
    with pytest.raises(PairSegInputError, match=message) as error:
        load_catalog()
    assert CATALOG_FILE in str(error.value)


def test_cli_models_and_catalog_names_as_model(catalog_dir, phantom_dir, tmp_path, capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "phantom-mr (default)" in out and "Dice on held-out case_003" in out
    assert main(["models", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["default"] == "phantom-mr" and listed["models"][0]["available"] is True
    image = phantom_dir / "case_000_image.nii.gz"
    assert main(["segment", "--model", "phantom-mr", "--input", str(image), "--output", str(tmp_path / "a.nii.gz"),
                 "--device", "cpu"]) == 0
    assert main(["segment", "--input", str(image), "--output", str(tmp_path / "b.nii.gz"), "--device", "cpu"]) == 0
    assert (tmp_path / "a.nii.gz").read_bytes() == (tmp_path / "b.nii.gz").read_bytes()  # default = the named one
    assert main(["info", "phantom-mr"]) == 0
    assert "liver" in capsys.readouterr().out
    assert main(["segment", "--model", "nope", "--input", str(image), "--output", str(tmp_path / "c.nii.gz"),
                 "--events", "json"]) == EXIT_BAD_INPUT
    assert not (tmp_path / "c.nii.gz").exists()


def test_catalog_module_needs_no_torch(catalog_dir):
    """The Slicer modules read the catalog in Slicer's process, where torch is never imported."""
    code = ("import sys; sys.modules['torch'] = None; sys.modules['numpy'] = None\n"
            "from pairseg.modelfiles.catalog import load_catalog, resolve_model\n"
            "print(load_catalog().default, resolve_model('phantom-mr').name)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["phantom-mr", "phantom.pairseg"]


@pytest.mark.skipif(not (SHIPPED / CATALOG_FILE).is_file(), reason="no shipped catalog in this checkout")
def test_shipped_catalog_matches_its_schema_and_files(monkeypatch):
    jsonschema = pytest.importorskip("jsonschema")
    monkeypatch.delenv("PAIRSEG_MODELS_DIR", raising=False)
    spec = json.loads((SHIPPED / CATALOG_FILE).read_text())
    jsonschema.validate(spec, json.loads((SHIPPED / "models.schema.json").read_text()))
    catalog = load_catalog()
    assert catalog.path == SHIPPED / CATALOG_FILE and catalog.default in catalog.names
    for entry in catalog.entries:
        assert entry.verify() == entry.file  # size and sha256 as listed
        assert entry.file.stat().st_size <= 35 * 2 ** 20
