"""pairseg.modelfile: weights + JSON metadata, checksummed, loaded with weights_only."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from pairseg import __version__
from pairseg.errors import PairSegInputError
from pairseg.modelfile import FORMAT, load_model, read_metadata, save_model, weights_sha256
from pairseg.networks import build_model

MARKER = Path(os.environ.get("TMPDIR", "/tmp")) / "pairseg-modelfile-pwned"


def _metadata():
    return {"class_names": ["liver", "spleen"], "class_colors": [[1, 0, 0], [0, 1, 0]], "modality": "MR",
            "size": 32, "preprocessing": {"modality": "MR"},
            "training": {"cases": ["a"], "seen_cases": ["a"], "slices": 3, "settings": {}},
            "validation": {}}


@pytest.fixture
def model_file(tmp_path):
    model = build_model("c2fcn", 2, 3, base="unet", width=4)
    return save_model(tmp_path / "m.pairseg", model, _metadata()), model


def test_round_trip_and_metadata(model_file):
    path, model = model_file
    loaded, meta = load_model(path)
    assert not loaded.training
    assert meta["engine_version"] == __version__
    assert meta["arch"] == "c2fcn" and meta["num_classes"] == 2 and meta["in_channels"] == 3
    assert meta["options"]["base"] == "unet" and meta["options"]["width"] == 4
    assert meta["class_names"] == ["liver", "spleen"] and meta["modality"] == "MR"
    assert meta["sha256"] == weights_sha256(model.state_dict())
    assert meta["created"]
    assert read_metadata(path) == meta
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor)
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == FORMAT and isinstance(payload["metadata"], str)
    # Nothing is left beside the file (atomic write through a temporary name).
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.pairseg"]


def test_class_names_must_match_model(tmp_path):
    with pytest.raises(ValueError):
        save_model(tmp_path / "x.pairseg", build_model("unet", 3, 3, width=4), _metadata())
    assert not (tmp_path / "x.pairseg").exists()


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


def test_pickled_code_is_refused_without_running(tmp_path):
    MARKER.unlink(missing_ok=True)
    path = tmp_path / "evil.pairseg"
    torch.save({"format": FORMAT, "format_version": 1, "metadata": "{}", "state_dict": {}, "x": _Exploit()}, path)
    assert not MARKER.exists()
    with pytest.raises(PairSegInputError, match="evil.pairseg"):
        load_model(path)
    with pytest.raises(PairSegInputError):
        read_metadata(path)
    assert not MARKER.exists()


def test_truncated_file(model_file, tmp_path):
    path, _ = model_file
    data = path.read_bytes()
    cut = tmp_path / "cut.pairseg"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(PairSegInputError, match="cut.pairseg"):
        load_model(cut)


def test_random_bytes_and_missing(tmp_path):
    junk = tmp_path / "junk.pairseg"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(PairSegInputError, match="junk.pairseg"):
        load_model(junk)
    with pytest.raises(PairSegInputError, match="does not exist"):
        load_model(tmp_path / "absent.pairseg")
    with pytest.raises(PairSegInputError, match="does not exist"):
        read_metadata(tmp_path / "absent.pairseg")


def test_foreign_torch_file(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3), "epoch": 4}, path)
    with pytest.raises(PairSegInputError, match="not a PairSeg model"):
        load_model(path)
    torch.save([torch.zeros(2)], path)
    with pytest.raises(PairSegInputError, match="foreign.pt"):
        load_model(path)


def test_tampered_weights_fail_checksum(model_file, tmp_path):
    path, _ = model_file
    payload = torch.load(path, weights_only=True)
    name = next(k for k, v in payload["state_dict"].items() if v.is_floating_point())
    payload["state_dict"][name] = payload["state_dict"][name] + 0.01
    torch.save(payload, tmp_path / "tampered.pairseg")
    with pytest.raises(PairSegInputError, match="checksum"):
        load_model(tmp_path / "tampered.pairseg")


def test_weights_that_do_not_fit_the_architecture(model_file, tmp_path):
    path, _ = model_file
    payload = torch.load(path, weights_only=True)
    meta = json.loads(payload["metadata"])
    meta["options"]["width"] = 8  # weights are for width 4
    payload["metadata"] = json.dumps(meta)
    torch.save(payload, tmp_path / "misfit.pairseg")
    with pytest.raises(PairSegInputError, match="do not fit"):
        load_model(tmp_path / "misfit.pairseg")


def test_newer_format_and_broken_metadata(model_file, tmp_path):
    path, _ = model_file
    payload = torch.load(path, weights_only=True)
    torch.save({**payload, "format_version": 99}, tmp_path / "new.pairseg")
    with pytest.raises(PairSegInputError, match="newer"):
        load_model(tmp_path / "new.pairseg")
    torch.save({**payload, "metadata": "{broken"}, tmp_path / "meta.pairseg")
    with pytest.raises(PairSegInputError, match="metadata"):
        read_metadata(tmp_path / "meta.pairseg")
    with pytest.raises(PairSegInputError, match="metadata"):
        load_model(tmp_path / "meta.pairseg")
