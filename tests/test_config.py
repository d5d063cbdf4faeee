"""pairseg.config: the one training schema (CLI <-> TrainConfig <-> JSON), torch-free for Slicer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pairseg.cli import EXIT_BAD_INPUT, build_parser, main
from pairseg.config import AugmentConfig, TrainConfig, from_arguments, setting, settings
from pairseg.train import check_output_location
from pairseg.constants import DEFAULT_EPOCHS
from pairseg.errors import PairSegInputError

SRC = Path(__file__).resolve().parents[1] / "src"

EVERY_OPTION = ["--data", "d", "--out", "m.pairseg", "--arch", "cfcn", "--steps", "7", "--size", "64", "--spacing", "1.5", "--cross-modality",
                "--batch-size", "3", "--lr", "2.5e-4", "--weight-decay", "0", "--seed", "4", "--device", "cuda:1",
                "--val-fraction", "0.25", "--resume", "--overwrite", "--init-from", "base.pairseg",
                "--classes", 'liver,"right kidney"', "--modality", "ct", "--cases", "a, b",
                "--pair-mode", "intra", "--offsets", "2,4", "--inter-repeats", "3", "--margin", "1",
                "--output-stride", "16", "--aggregate", "max", "--readout", "and", "--base", "unet",
                "--sync-batchnorm", "--channels-last", "--no-amp", "--precision", "fp32", "--no-augment",
                "--rotation", "5", "--scale", "0.2", "--flip", "--intensity", "0.3", "--validate-every", "2",
                "--stop-file", "STOP"]


def parse(*argv) -> TrainConfig:
    return from_arguments(build_parser().parse_args(["train", *map(str, argv)]))


def test_every_option_lands_in_its_field_and_round_trips_through_json():
    config = parse(*EVERY_OPTION)
    assert (config.arch, config.steps, config.epochs, config.size, config.batch_size) == ("cfcn", 7, None, 64, 3)
    assert (config.lr, config.weight_decay, config.device, config.val_fraction) == (2.5e-4, 0.0, "cuda:1", 0.25)
    assert config.spacing == 1.5 and config.cross_modality
    assert config.resume and config.overwrite and config.init_from == "base.pairseg"
    assert config.modality == "CT" and config.cases == ["a", "b"] and config.offsets == [2, 4]
    assert (config.pair_mode, config.inter_repeats, config.margin) == ("intra", 3, 1)
    assert (config.output_stride, config.aggregate, config.readout, config.base) == (16, "max", "and", "unet")
    assert config.sync_batchnorm and config.channels_last and not config.amp and config.precision == "fp32"
    assert config.augment == AugmentConfig(enabled=False, rotation_deg=5.0, scale=0.2, flip_lr=True,
                                           brightness=0.3, contrast=0.3)
    assert (config.validate_every, config.stop_file) == (2, "STOP")
    text = config.to_json()
    assert TrainConfig.from_json(text) == config
    assert TrainConfig.from_json(text).to_json() == text
    assert json.loads(text)["augment"]["contrast"] == 0.3


def test_defaults_are_the_dataclass_defaults():
    """An option left out means the field's default (no second copy of a default in the parser)."""
    assert parse("--data", "d", "--out", "o") == TrainConfig(data="d", out="o")
    for spec in settings():
        if spec.flag:
            assert spec.help, f"{spec.name}: no help text"
    assert setting("epochs").fallback == DEFAULT_EPOCHS and TrainConfig(data="d", out="o").budget() == (20, None)
    assert TrainConfig(data="d", out="o", steps=5).budget() == (None, 5)


def test_every_flag_is_in_help_and_has_a_field(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    flags = [s.flag for s in settings() if s.flag]
    assert len(flags) == len(set(flags))
    for flag in flags + ["--config", "--events"]:
        assert flag in text
    assert "(default 20)" in text and "(default 256)" in text  # today's help texts


def test_config_file_with_command_line_overrides(tmp_path):
    path = TrainConfig(data="d", out="m.pairseg", epochs=3, lr=1e-3, offsets=[4]).write(tmp_path / "run.json")
    assert not (tmp_path / "run.json.tmp").exists()
    assert parse("--config", path) == TrainConfig.read(path)
    config = parse("--config", path, "--steps", "9", "--lr", "0.01", "--rotation", "3")
    assert (config.epochs, config.steps) == (None, 9)  # --steps clears the file's epochs
    assert config.lr == 0.01 and config.offsets == [4] and config.augment.rotation_deg == 3.0
    assert config.augment.scale == AugmentConfig().scale  # the rest of augment from the file's defaults
    # a partial file: missing keys take their defaults
    (tmp_path / "partial.json").write_text('{"data": "d", "out": "o", "augment": {"flip_lr": true}}')
    partial = TrainConfig.read(tmp_path / "partial.json")
    assert partial == TrainConfig(data="d", out="o", augment=AugmentConfig(flip_lr=True))


@pytest.mark.parametrize("change, message", [
    ({"epochs": 0}, "epochs (--epochs) must be at least 1"),
    ({"lr": 0}, "greater than 0"),
    ({"spacing": -1.0}, "spacing (--spacing) must be greater than 0"),
    ({"val_fraction": 1.0}, "less than 1"),
    ({"lr": 2.0}, "lr (--lr) must be at most 1.0"),
    ({"size": 8192}, "size (--size) must be at most 4096"),
    ({"steps": 10_000_001}, "steps (--steps) must be at most 10000000"),
    ({"size": "256"}, "must be an int"),
    ({"batch_size": 2.0}, "must be an int"),
    ({"resume": 1}, "must be a bool"),
    ({"arch": "resnet"}, "must be one of c2fcn"),
    ({"output_stride": 4}, "must be one of 8, 16"),
    ({"device": "gpu"}, "device (--device) is not valid"),
    ({"offsets": [3, 0]}, "must be at least 1"),
    ({"offsets": "3,5"}, "must be a list"),
    ({"epochs": 2, "steps": 3}, "either --epochs or --steps"),
    ({"val": "v", "val_fraction": 0.2}, "exclude each other"),
    ({"learning_rate": 1e-3}, "unknown setting(s) learning_rate"),
    ({"augment": {"rotation": 3}}, "unknown setting(s) augment.rotation"),
    ({"augment": {"scale": -0.1}}, "augment.scale (--scale) must be at least 0"),
    ({"data": ""}, "data (--data) is required"),
])
def test_bad_values_are_refused_with_the_setting_named(change, message):
    values = {**json.loads(TrainConfig(data="d", out="o").to_json()), **change}
    with pytest.raises(PairSegInputError) as caught:
        TrainConfig.from_dict(values, source="run.json")
    assert str(caught.value).startswith("run.json: ") and message in str(caught.value)


def test_missing_data_and_out(tmp_path):
    with pytest.raises(PairSegInputError, match="out is required"):
        TrainConfig.from_dict({"data": "d"})
    with pytest.raises(PairSegInputError, match="--out required"):
        parse("--data", "d")


def test_cli_refuses_a_bad_config_file_with_exit_2(tmp_path, capsys):
    cases = {"unknown.json": ('{"data": "d", "out": "o", "epoch": 3}', "unknown setting(s) epoch"),
             "range.json": ('{"data": "d", "out": "o", "batch_size": 0}', "batch_size (--batch-size) must be at least 1"),
             "broken.json": ('{"data": "d",', "not valid JSON"),
             "list.json": ("[1, 2]", "expected a JSON object")}
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        code = main(["train", "--config", str(tmp_path / name), "--events", "json"])
        events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert code == EXIT_BAD_INPUT, name
        assert events[-1]["kind"] == "input" and message in events[-1]["message"] and name in events[-1]["message"]
    code = main(["train", "--config", str(tmp_path / "absent.json"), "--events", "json"])
    assert code == EXIT_BAD_INPUT and "absent.json" in capsys.readouterr().out
    code = main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "m.pairseg"), "--lr", "-1",
                 "--events", "json"])
    assert code == EXIT_BAD_INPUT and "lr (--lr) must be greater than 0" in capsys.readouterr().out


def test_output_location(tmp_path):
    existing = tmp_path / "m.pairseg"
    existing.write_bytes(b"old model")
    with pytest.raises(PairSegInputError, match="--overwrite"):
        check_output_location(TrainConfig(data="d", out=str(existing)))
    assert check_output_location(TrainConfig(data="d", out=str(existing), overwrite=True)) == existing
    assert check_output_location(TrainConfig(data="d", out=str(existing), resume=True)) == existing
    folder = tmp_path / "folder.pairseg"
    folder.mkdir()
    with pytest.raises(PairSegInputError, match="existing folder"):
        check_output_location(TrainConfig(data="d", out=str(folder), overwrite=True))
    with pytest.raises(PairSegInputError, match="file type"):
        check_output_location(TrainConfig(data="d", out=str(tmp_path / "model.pth")))
    assert existing.read_bytes() == b"old model"


def test_replace_copies_and_leaves_the_original():
    config = TrainConfig(data="d", out="o")
    copy = config.replace(steps=3)
    copy.augment.enabled = False
    assert config.steps is None and config.augment.enabled and copy.steps == 3


def test_schema_imports_without_torch_or_numpy():
    """The Slicer Trainer reads defaults and ranges from pairseg.config without loading torch."""
    script = ("import sys\n"
              "sys.modules['torch'] = None\nsys.modules['numpy'] = None\n"
              "from pairseg.config import TrainConfig, settings, setting\n"
              "import pairseg.constants\n"
              "config = TrainConfig.from_json(TrainConfig(data='d', out='o', offsets=[3]).to_json())\n"
              "assert config.offsets == [3] and setting('batch_size').minimum == 1\n"
              "print(len(settings()), setting('val_fraction').default)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    count, val_fraction = done.stdout.split()
    assert int(count) == len(settings()) and float(val_fraction) == 0.0
