"""PairSegLib.models.readModelMetadata in a Python where torch and safetensors cannot be imported
(as in Slicer before the PyTorch extension is installed): model files of every format version are
read, verified and migrated exactly as the engine reads them; edited and malicious files are refused."""

import json
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MARKER = Path(os.environ.get("TMPDIR", "/tmp")) / "pairseg-models-pwned"

READER = r"""
import importlib, json, sys
sys.modules["torch"] = None  # any "import torch" now fails
sys.modules["safetensors"] = None
sys.path.insert(0, sys.argv[1])  # the PairSeg module folder: PairSegLib as Slicer imports it
models = importlib.import_module("PairSegLib.models")
results = {}
for path in sys.argv[2:]:
    try:
        results[path] = {"metadata": models.readModelMetadata(path)}
    except models.ModelFileError as error:
        results[path] = {"error": str(error)}
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "safetensors") and sys.modules[m] is not None)
print(json.dumps({"results": results, "loaded": loaded}))
"""


def _readWithoutTorch(*paths):
    done = subprocess.run([sys.executable, "-c", READER, str(ROOT / "PairSeg")]
                          + [str(p) for p in paths], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["loaded"] == []  # neither torch nor safetensors was imported
    return [report["results"][str(p)] for p in paths]


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


def test_every_format_read_without_torch_as_the_engine_reads_it(tmp_path, save_format1):
    torch = pytest.importorskip("torch")
    from pairseg.modelfiles.weights import read_metadata, save_model
    from pairseg.networks import build_model

    torch.manual_seed(0)
    model = build_model("c2fcn", 2, 3, base="unet", width=4)
    meta = {"class_names": ["liver", "spleen"], "class_colors": [[1, 0, 0], [0, 1, 0]], "modality": "MR",
            "size": 32, "spacing": [0.8, 1.2], "training": {"cases": ["a", "b"], "slices": 40}}
    noColours = {k: v for k, v in meta.items() if k not in ("class_colors", "spacing")}
    files = [
        save_model(tmp_path / "current.pairseg", model, meta),
        save_model(tmp_path / "half.pairseg", model, meta, weights_dtype=torch.float16),
        save_format1(tmp_path / "format1.pairseg", model, noColours),
        save_format1(tmp_path / "before_readout.pairseg", model, noColours, with_readout=False),
    ]
    results = _readWithoutTorch(*files)
    for path, result in zip(files, results):
        assert result == {"metadata": read_metadata(path)}, path.name
    assert results[0]["metadata"]["spacing"] == [0.8, 1.2]
    assert results[1]["metadata"]["weights_dtype"] == "float16"
    assert results[2]["metadata"]["options"]["readout"] == "union"
    assert results[3]["metadata"]["options"]["readout"] == "and"
    assert len(results[3]["metadata"]["class_colors"]) == 2 and results[3]["metadata"]["spacing"] is None


def test_edited_truncated_and_malicious_files_refused_without_torch(tmp_path):
    torch = pytest.importorskip("torch")
    from pairseg.modelfiles.weights import save_model
    from pairseg.networks import build_model

    good = save_model(tmp_path / "good.pairseg", build_model("unet", 2, 3, width=4),
                      {"class_names": ["liver", "spleen"], "modality": "MR", "size": 32})
    data = good.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    meta = json.loads(header["__metadata__"]["metadata"])
    meta["modality"] = "CT"  # an edit that keeps the stored checksum
    header["__metadata__"]["metadata"] = json.dumps(meta)
    text = json.dumps(header).encode()
    edited = tmp_path / "edited.pairseg"
    edited.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + length:])
    cut = tmp_path / "cut.pairseg"
    cut.write_bytes(data[: len(data) - 100])
    MARKER.unlink(missing_ok=True)
    evil = tmp_path / "evil.pairseg"
    torch.save({"format": "pairseg-model", "format_version": 1, "metadata": "{}", "x": _Exploit()}, evil)
    evilPickle = tmp_path / "evil.pkl"
    evilPickle.write_bytes(pickle.dumps(_Exploit()))
    junk = tmp_path / "junk.pairseg"
    junk.write_bytes(os.urandom(3000))
    expected = {
        edited: "edited.pairseg: model file does not match its checksum",
        cut: "cut.pairseg: model file is truncated",
        evil: f"evil.pairseg: not a PairSeg model file (it refers to {os.system.__module__}.system",
        evilPickle: "evil.pkl: not a PairSeg model file (unrecognised content); refused",
        junk: "junk.pairseg: not a PairSeg model file (unrecognised content); refused",
        tmp_path / "none.pairseg": "Model file not found",
    }
    for (path, message), result in zip(expected.items(), _readWithoutTorch(*expected)):
        assert message in result["error"], result
        assert "weights_only" not in result["error"]
    assert not MARKER.exists()


def test_describe_model_shows_the_pixel_spacing():
    import importlib.util

    spec = importlib.util.spec_from_file_location("pairsegModels", ROOT / "PairSeg" / "PairSegLib" / "models.py")
    models = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(models)
    meta = {"class_names": ["liver"], "modality": "MR", "arch": "c2fcn", "size": 256}
    assert models.describeModel({**meta, "spacing": 1.25})[1].endswith("Input size: 256 px at 1.25 mm")
    assert models.describeModel({**meta, "spacing": [0.8, 1.2]})[1].endswith("Input size: 256 px at 0.8x1.2 mm")
    assert models.describeModel({**meta, "spacing": None})[1].endswith("Input size: 256")
