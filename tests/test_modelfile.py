"""pairseg.modelfiles (weights / fileformat): format-2 files (safetensors + JSON metadata, one checksum over
both), format-1 files written as the old engine wrote them and migrated, refusals, umask."""

from __future__ import annotations

import json
import os
import pickle
import stat
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from pairseg import __version__
from pairseg.cli import main
from pairseg.constants import MODEL_FORMAT as FORMAT
from pairseg.constants import default_colors
from pairseg.errors import PairSegInputError
from pairseg.modelfiles import fileformat
from pairseg.modelfiles.fileformat import FORMAT_VERSION
from pairseg.modelfiles.weights import (atomic_torch_save, load_model, read_metadata, safe_torch_load, save_model,
                                        write_model_file)
from pairseg.networks import build_model

MARKER = Path(os.environ.get("TMPDIR", "/tmp")) / "pairseg-modelfile-pwned"


def _metadata():
    return {"class_names": ["liver", "spleen"], "class_colors": [[1, 0, 0], [0, 1, 0]], "modality": "MR",
            "size": 32, "preprocessing": {"modality": "MR"},
            "training": {"cases": ["a"], "seen_cases": ["a"], "slices": 3, "settings": {}},
            "validation": {}}


def _model(**options):
    torch.manual_seed(0)
    return build_model("c2fcn", 2, 3, **{"base": "unet", "width": 4, **options})


@pytest.fixture
def model_file(tmp_path):
    model = _model()
    return save_model(tmp_path / "m.pairseg", model, _metadata()), model


def _header(path: Path) -> tuple[dict, int]:
    """The format-2 header as any program reads it: struct + json, nothing else."""
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + length]), 8 + length


def _resign(source: Path, target: Path, edit_meta=None, edit_state=None) -> Path:
    """Write an edited copy WITH a correct checksum (what a careless tool could produce): only
    validation at load can catch what is wrong with it."""
    data = source.read_bytes()
    header, _ = _header(source)
    meta = json.loads(header["__metadata__"]["metadata"])
    state = st_load(data)
    if edit_meta:
        edit_meta(meta)
    if edit_state:
        edit_state(state)
    meta["sha256"] = fileformat.content_sha256(st_save(state, fileformat.header_metadata(meta)))
    target.write_bytes(st_save(state, fileformat.header_metadata(meta)))
    return target


def _edit_header(source: Path, target: Path, edit) -> Path:
    """Edit the metadata in the header and keep the stored checksum (a hand edit)."""
    data = source.read_bytes()
    header, start = _header(source)
    meta = json.loads(header["__metadata__"]["metadata"])
    edit(meta)
    header["__metadata__"]["metadata"] = json.dumps(meta)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    target.write_bytes(struct.pack("<Q", len(text)) + text + data[start:])
    return target


# ------------------------------------------------------------------------------------------------
# format 2


def test_round_trip_and_metadata(model_file):
    path, model = model_file
    loaded, meta = load_model(path)
    assert not loaded.training
    assert meta["engine_version"] == __version__
    assert meta["arch"] == "c2fcn" and meta["num_classes"] == 2 and meta["in_channels"] == 3
    assert meta["options"] == {"base": "unet", "width": 4, "aggregate": "sum", "readout": "union"}
    assert meta["class_names"] == ["liver", "spleen"] and meta["modality"] == "MR"
    assert meta["spacing"] is None and meta["weights_dtype"] == "float32" and meta["created"]
    assert read_metadata(path) == meta == fileformat.read_metadata(path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor)
    # Nothing is left beside the file (atomic write through a temporary name).
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.pairseg"]


def test_metadata_is_plain_json_in_the_header(model_file):
    path, _ = model_file
    header, _ = _header(path)
    record = header["__metadata__"]
    assert record["format"] == FORMAT == "pairseg-model" and record["format_version"] == str(FORMAT_VERSION) == "2"
    meta = json.loads(record["metadata"])
    assert meta == read_metadata(path)
    assert meta["sha256"] == fileformat.content_sha256(path.read_bytes())
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    assert {v["dtype"] for v in tensors.values()} == {"F32", "I64"}  # weights; BN batch counters
    with pytest.raises(Exception):  # not a PyTorch archive at all: nothing for pickle to run
        torch.load(path, weights_only=True)


def test_class_names_must_match_model(tmp_path):
    with pytest.raises(ValueError, match="x.pairseg.*class_names lists 2 name"):
        save_model(tmp_path / "x.pairseg", build_model("unet", 3, 3, width=4), _metadata())
    assert not (tmp_path / "x.pairseg").exists()


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(class_colors=[[1, 0, 0]]), "class_colors lists 1 colour"),
    (lambda m: m.update(class_colors=[[1, 0, 0], [0, 2, 0]]), "class_colors must be one RGB triple"),
    (lambda m: m.update(class_names=["liver", "liver"]), "names a class twice"),
    (lambda m: m.update(class_names=["Right_Kidney", "right kidney"]), "names a class twice"),
    (lambda m: m.update(class_names=["liver", ""]), "non-empty names"),
    (lambda m: m.update(modality="PET"), "modality must be one of MR, CT"),
    (lambda m: m.pop("modality"), "modality must be one of"),
    (lambda m: m.update(size=0), "size must be an integer"),
    (lambda m: m.pop("size"), "size must be an integer"),
    (lambda m: m.update(spacing=-1.0), "spacing must be"),
    (lambda m: m.update(spacing=[1.0, 1.0, 3.0]), "spacing must be"),
    (lambda m: m.update(spacing=float("nan")), "spacing must be"),
    (lambda m: m.update(training=[1, 2]), "training must be a dict"),
])
def test_inconsistent_metadata_refused_at_save(tmp_path, edit, message):
    existing = save_model(tmp_path / "m.pairseg", _model(), _metadata())
    before = existing.read_bytes()
    meta = _metadata()
    edit(meta)
    with pytest.raises(PairSegInputError, match=message) as caught:
        save_model(existing, _model(), meta)
    assert str(existing) in str(caught.value)
    assert existing.read_bytes() == before  # the old model is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pairseg"]


def test_missing_colours_get_the_defaults_and_non_finite_numbers_become_null(tmp_path):
    meta = _metadata()
    del meta["class_colors"]
    meta["validation"] = {"mean_dice": float("nan"), "dice": {"liver": 0.9, "spleen": float("inf")}}
    path = save_model(tmp_path / "m.pairseg", _model(), meta)
    read = read_metadata(path)
    assert read["class_colors"] == [list(c) for c in default_colors(["liver", "spleen"])]
    assert read["validation"] == {"mean_dice": None, "dice": {"liver": 0.9, "spleen": None}}
    assert "NaN" not in _header(path)[0]["__metadata__"]["metadata"]  # strict JSON


@pytest.mark.parametrize("spacing, stored, rowcol", [(1.25, 1.25, (1.25, 1.25)), (2, 2.0, (2.0, 2.0)),
                                                     ([0.8, 1.5], [0.8, 1.5], (0.8, 1.5)),
                                                     ((0.7, 0.7), [0.7, 0.7], (0.7, 0.7)), (None, None, None)])
def test_spacing_round_trip(tmp_path, spacing, stored, rowcol):
    path = save_model(tmp_path / "m.pairseg", _model(), {**_metadata(), "spacing": spacing})
    meta = read_metadata(path)
    assert meta["spacing"] == stored and fileformat.inplane_spacing(meta) == rowcol
    assert load_model(path)[1]["spacing"] == stored


@pytest.mark.parametrize("dtype, code", [(torch.float16, "F16"), (torch.bfloat16, "BF16"), ("float16", "F16")])
def test_half_precision_weights_load_as_float32(tmp_path, dtype, code):
    model = _model()
    full = save_model(tmp_path / "full.pairseg", model, _metadata())
    half = save_model(tmp_path / "half.pairseg", model, _metadata(), weights_dtype=dtype)
    header, _ = _header(half)
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {code, "I64"}
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded, meta = load_model(half)
    assert meta["weights_dtype"] == ("bfloat16" if code == "BF16" else "float16")
    for name, tensor in model.state_dict().items():
        got = loaded.state_dict()[name]
        assert got.dtype == tensor.dtype  # float32 parameters, int64 counters
        if tensor.is_floating_point():
            tensor = tensor.to(torch.bfloat16 if code == "BF16" else torch.float16).float()
        assert torch.equal(got, tensor)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded.predict_proba(x), model.eval().predict_proba(x), atol=0.02)


def test_half_precision_refuses_weights_out_of_range(tmp_path):
    model = _model()
    with torch.no_grad():
        next(p for p in model.parameters()).view(-1)[0] = 1e6
    with pytest.raises(ValueError, match="exceeds the range of float16"):
        save_model(tmp_path / "m.pairseg", model, _metadata(), weights_dtype=torch.float16)
    with pytest.raises(ValueError, match="weights_dtype"):
        save_model(tmp_path / "m.pairseg", model, _metadata(), weights_dtype=torch.int8)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("edit, what", [
    (lambda m: m["class_names"].__setitem__(0, "kidney"), "class name"),
    (lambda m: m.update(modality="CT"), "modality"),
    (lambda m: m.update(spacing=0.5), "spacing"),
    (lambda m: m["options"].update(readout="and"), "read-out"),
])
def test_edited_metadata_is_refused_everywhere(model_file, tmp_path, capsys, edit, what):
    path, _ = model_file
    edited = _edit_header(path, tmp_path / "edited.pairseg", edit)
    for read in (load_model, read_metadata, fileformat.read_metadata):
        with pytest.raises(PairSegInputError, match=r"edited\.pairseg: model file does not match its checksum"):
            read(edited)
    assert main(["info", str(edited)]) == 2
    text = capsys.readouterr()
    assert "edited.pairseg" in text.out + text.err and "checksum" in text.out + text.err, what


def test_metadata_that_is_not_strict_json_is_refused(model_file, tmp_path):
    path, _ = model_file
    edited = _edit_header(path, tmp_path / "nan.pairseg", lambda m: m.update(size=float("nan")))
    assert "NaN" in _header(edited)[0]["__metadata__"]["metadata"]
    for read in (load_model, read_metadata, fileformat.read_metadata):
        with pytest.raises(PairSegInputError, match=r"nan\.pairseg: model metadata is missing or corrupt"):
            read(edited)


def test_info_verifies_and_reports_the_format(model_file, tmp_path, capsys):
    path, _ = model_file
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "format 2, float32 weights, sha256 of weights and metadata verified" in out
    assert "spacing none (slices resized)" in out
    edited = _edit_header(path, tmp_path / "edited.pairseg", lambda m: m["class_names"].reverse())
    for args in (["info", str(edited)], ["info", str(edited), "--json"]):
        code = main(args)
        text = capsys.readouterr()
        assert code == 2 and "edited.pairseg" in text.out + text.err and "checksum" in text.out + text.err
        assert '"class_names"' not in text.out  # nothing of the refused file is printed as metadata


def test_tampered_weights_fail_checksum(model_file, tmp_path):
    path, _ = model_file
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x40  # one byte of the last tensor
    tampered = tmp_path / "tampered.pairseg"
    tampered.write_bytes(bytes(data))
    for read in (load_model, read_metadata, fileformat.read_metadata):
        with pytest.raises(PairSegInputError, match=r"tampered\.pairseg.*checksum"):
            read(tampered)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["class_names"].append("kidney"), "class_names lists 3 name"),
    (lambda m: m.update(class_colors=[[1, 0, 0]]), "class_colors lists 1 colour"),
    (lambda m: m.update(modality="X-ray"), "modality must be"),
    (lambda m: m.update(size="big"), "size must be"),
    (lambda m: m.update(spacing=[0, 1]), "spacing must be"),
    (lambda m: m.update(options=None), "options must be a dict"),
])
def test_inconsistent_metadata_refused_at_load(model_file, tmp_path, edit, message):
    path, _ = model_file
    bad = _resign(path, tmp_path / "bad.pairseg", edit_meta=edit)
    for read in (load_model, read_metadata, fileformat.read_metadata):
        with pytest.raises(PairSegInputError, match=rf"bad\.pairseg: invalid model metadata: .*{message}"):
            read(bad)


def test_architecture_and_options_checked_at_load(model_file, tmp_path):
    path, _ = model_file
    misfit = _resign(path, tmp_path / "misfit.pairseg", edit_meta=lambda m: m["options"].update(width=8))
    with pytest.raises(PairSegInputError, match=r"misfit\.pairseg: weights do not fit"):
        load_model(misfit)
    unknown = _resign(path, tmp_path / "unknown.pairseg", edit_meta=lambda m: m.update(arch="vit"))
    for read in (load_model, read_metadata, fileformat.read_metadata):
        with pytest.raises(PairSegInputError, match=r"unknown\.pairseg: invalid model metadata: unknown architecture 'vit'"):
            read(unknown)
    option = _resign(path, tmp_path / "option.pairseg", edit_meta=lambda m: m["options"].update(readout="xor"))
    with pytest.raises(PairSegInputError, match=r"option\.pairseg: invalid model metadata: readout must be"):
        load_model(option)
    missing = _resign(path, tmp_path / "missing.pairseg", edit_state=lambda s: s.pop(sorted(s)[0]))
    with pytest.raises(PairSegInputError, match=r"missing\.pairseg: weights do not fit"):
        load_model(missing)


def test_truncated_files(model_file, tmp_path, save_format1):
    path, model = model_file
    data = path.read_bytes()
    _, start = _header(path)
    for cut in (12, start - 5, start + 10, len(data) - 1):
        short = tmp_path / f"cut{cut}.pairseg"
        short.write_bytes(data[:cut])
        for read in (load_model, read_metadata, fileformat.read_metadata):
            with pytest.raises(PairSegInputError, match=rf"cut{cut}\.pairseg: model file is truncated"):
                read(short)
    old = save_format1(tmp_path / "old.pairseg", model, _metadata())
    short = tmp_path / "oldcut.pairseg"
    short.write_bytes(old.read_bytes()[: old.stat().st_size // 2])
    for read in (load_model, read_metadata):
        with pytest.raises(PairSegInputError, match=r"oldcut\.pairseg: model file is damaged or truncated"):
            read(short)
    with pytest.raises(PairSegInputError, match=r"oldcut\.pairseg: model file is damaged or truncated"):
        fileformat.read_metadata(short)


def test_random_bytes_foreign_files_and_missing(tmp_path):
    junk = tmp_path / "junk.pairseg"
    junk.write_bytes(os.urandom(4096))
    foreign_torch = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3), "epoch": 4}, foreign_torch)
    foreign_list = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], foreign_list)
    foreign_st = tmp_path / "foreign.safetensors"
    foreign_st.write_bytes(st_save({"w": torch.zeros(3)}, {"format": "pt"}))
    empty = tmp_path / "empty.pairseg"
    empty.write_bytes(b"")
    for path in (junk, foreign_torch, foreign_list, foreign_st, empty):
        for read in (load_model, read_metadata, fileformat.read_metadata):
            with pytest.raises(PairSegInputError, match=rf"{path.name}: not a PairSeg model file \(.*\); refused"):
                read(path)
    for read in (load_model, read_metadata, fileformat.read_metadata):
        with pytest.raises(PairSegInputError, match=r"absent\.pairseg: model file does not exist"):
            read(tmp_path / "absent.pairseg")


class _Exploit:
    """Would create MARKER if it were ever unpickled."""

    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


class _OpenExploit:
    def __reduce__(self):
        return (open, (str(MARKER), "w"))


def test_pickled_code_is_refused_without_running(tmp_path):
    MARKER.unlink(missing_ok=True)
    evil_zip = tmp_path / "evil.pairseg"
    torch.save({"format": FORMAT, "format_version": 1, "metadata": json.dumps({"class_names": ["x"]}),
                "state_dict": {}, "x": _Exploit()}, evil_zip)
    evil_open = tmp_path / "evil_open.pairseg"
    torch.save({"format": FORMAT, "format_version": 1, "metadata": "{}", "state_dict": {"w": _OpenExploit()}},
               evil_open)
    evil_pickle = tmp_path / "evil_pickle.pairseg"
    evil_pickle.write_bytes(pickle.dumps({"format": FORMAT, "x": _Exploit()}))
    assert not MARKER.exists()
    for path in (evil_zip, evil_open, evil_pickle):
        for read in (load_model, read_metadata, fileformat.read_metadata):
            with pytest.raises(PairSegInputError) as caught:
                read(path)
            message = str(caught.value)
            assert f"{path}: not a PairSeg model file" in message and "refused" in message
            assert "weights_only" not in message and "torch.load" not in message
        # checkpoints are read through the same safe loader, and say so the same way
        with pytest.raises(PairSegInputError) as caught:
            safe_torch_load(path, "checkpoint")
        message = str(caught.value)
        assert f"{path}: not a PairSeg checkpoint" in message and "refused" in message
        assert "weights_only" not in message
    assert not MARKER.exists()


def test_newer_format(model_file, tmp_path):
    path, model = model_file
    header, start = _header(path)
    header["__metadata__"]["format_version"] = "3"
    text = json.dumps(header).encode()
    newer = tmp_path / "new.pairseg"
    newer.write_bytes(struct.pack("<Q", len(text)) + text + path.read_bytes()[start:])
    old_newer = tmp_path / "newzip.pairseg"
    torch.save({"format": FORMAT, "format_version": 99, "metadata": "{}", "state_dict": {}}, old_newer)
    for target in (newer, old_newer):
        for read in (load_model, read_metadata, fileformat.read_metadata):
            with pytest.raises(PairSegInputError, match=rf"{target.name}: model file format .* is newer.*update PairSeg"):
                read(target)


# ------------------------------------------------------------------------------------------------
# format 1 and its migration


def test_format1_before_the_readout_option_reads_out_and(tmp_path, save_format1):
    model = _model()
    path = save_format1(tmp_path / "old.pairseg", model, _metadata(), with_readout=False)
    assert "readout" not in json.loads(torch.load(path, weights_only=True)["metadata"])["options"]
    loaded, meta = load_model(path)
    assert meta["options"]["readout"] == "and" and loaded.readout == "and"
    assert read_metadata(path) == meta == fileformat.read_metadata(path)
    # and it segments as the engine that wrote it did: the AND channels, not today's default union
    reference = build_model("c2fcn", 2, 3, base="unet", width=4, readout="and")
    reference.load_state_dict(model.state_dict())
    union = build_model("c2fcn", 2, 3, base="unet", width=4, readout="union")
    union.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.predict_proba(x), reference.eval().predict_proba(x))
        assert not torch.allclose(loaded.predict_proba(x), union.eval().predict_proba(x))


@pytest.mark.parametrize("readout", ["and", "union"])
def test_format1_with_the_readout_option_keeps_it(tmp_path, save_format1, readout):
    model = _model(readout=readout)
    path = save_format1(tmp_path / "old.pairseg", model, _metadata())
    loaded, meta = load_model(path)
    assert loaded.readout == readout == meta["options"]["readout"]
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor)


def test_format1_migration_fills_what_old_files_lacked(tmp_path, save_format1):
    meta = _metadata()
    del meta["class_colors"]
    path = save_format1(tmp_path / "old.pairseg", build_model("unet", 2, 3, width=4), meta)
    read = read_metadata(path)
    assert read["class_colors"] == [list(c) for c in default_colors(["liver", "spleen"])]
    assert read["spacing"] is None and read["weights_dtype"] == "float32" and read["options"] == {"width": 4}
    assert fileformat.read_metadata(path) == read == load_model(path)[1]
    assert fileformat.stored_format_version(path.read_bytes(), path) == 1
    # re-saving writes the current format, with the migrated metadata
    model, _ = load_model(path)
    new = save_model(tmp_path / "new.pairseg", model, read)
    assert fileformat.stored_format_version(new.read_bytes(), new) == FORMAT_VERSION
    assert {k: v for k, v in read_metadata(new).items() if k != "sha256"} == {
        k: v for k, v in read.items() if k != "sha256"}


def test_format1_info(tmp_path, save_format1, capsys):
    path = save_format1(tmp_path / "old.pairseg", _model(), _metadata(), with_readout=False)
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "'readout': 'and'" in out and "format 1, float32 weights" in out and "weights only" in out


def test_format1_tampered_weights_and_invalid_metadata(tmp_path, save_format1):
    model = _model()
    path = save_format1(tmp_path / "old.pairseg", model, _metadata())
    payload = torch.load(path, weights_only=True)
    name = next(k for k, v in payload["state_dict"].items() if v.is_floating_point())
    payload["state_dict"][name] = payload["state_dict"][name] + 0.01
    torch.save(payload, tmp_path / "tampered.pairseg")
    for read in (load_model, read_metadata):
        with pytest.raises(PairSegInputError, match=r"tampered\.pairseg: weights do not match their checksum"):
            read(tmp_path / "tampered.pairseg")
    payload = torch.load(path, weights_only=True)  # a hand edit: the format-1 checksum skips metadata
    stored = json.loads(payload["metadata"])
    stored["class_names"] = ["liver"]
    torch.save({**payload, "metadata": json.dumps(stored)}, tmp_path / "names.pairseg")
    for read in (load_model, read_metadata, fileformat.read_metadata):
        with pytest.raises(PairSegInputError, match=r"names\.pairseg: invalid model metadata: class_names lists 1"):
            read(tmp_path / "names.pairseg")
    torch.save({**payload, "metadata": "{broken"}, tmp_path / "meta.pairseg")
    for read in (load_model, read_metadata, fileformat.read_metadata):
        with pytest.raises(PairSegInputError, match=r"meta\.pairseg: model metadata is missing or corrupt"):
            read(tmp_path / "meta.pairseg")


def test_every_earlier_version_has_a_migration():
    assert sorted(fileformat.MIGRATIONS) == list(range(1, FORMAT_VERSION))


# ------------------------------------------------------------------------------------------------
# writing: umask, atomicity, checkpoints


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_model_and_checkpoint_files_follow_the_umask(tmp_path, umask, mask):
    umask(mask)
    model = save_model(tmp_path / "m.pairseg", _model(), _metadata())
    ckpt = atomic_torch_save({"step": 3, "weights": torch.zeros(2)}, tmp_path / "m.pairseg.ckpt")
    label = tmp_path / "plain.txt"
    label.write_text("x")  # what any other output gets
    for path in (model, ckpt):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask == stat.S_IMODE(label.stat().st_mode)
    assert safe_torch_load(ckpt, "checkpoint")["step"] == 3


def test_failed_checkpoint_write_leaves_the_old_one_and_no_temporary(tmp_path):
    ckpt = atomic_torch_save({"step": 1}, tmp_path / "m.pairseg.ckpt")
    with pytest.raises(Exception):
        atomic_torch_save({"step": 2, "bad": lambda: None}, ckpt)  # lambdas cannot be pickled
    assert safe_torch_load(ckpt, "checkpoint") == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pairseg.ckpt"]


def test_write_model_file_checks_metadata_not_weights(tmp_path):
    model = _model()
    meta = {**_metadata(), "arch": "c2fcn", "num_classes": 2, "in_channels": 3, "options": dict(model.options)}
    path = write_model_file(tmp_path / "m.pairseg", model.state_dict(), meta)
    assert load_model(path)[1]["options"] == model.options
    with pytest.raises(PairSegInputError, match="num_classes must be"):
        write_model_file(tmp_path / "x.pairseg", model.state_dict(), {**meta, "num_classes": 0})
