"""End to end on real CHAOS MR data: train briefly on two cases, segment a third, check liver Dice.

Skipped when the data is absent. Runs through the command line, as a user would, on the CPU.
Measured on a shared 2-core machine (400 steps, 96 px, about 180-200 CPU-seconds): these settings
(augmentation, --margin 2) gave liver Dice 0.74 with seed 0 but 0.53 with seed 1 (600 steps, seed 1:
0.39); without augmentation on every slice: seed 1 0.69, seed 0 0.29. Training from scratch for a
few hundred steps is noisy: the 0.6 bar is NOT reliably met across seeds; see the report.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from pairseg.cli import main
from pairseg.io.read import read_label, read_volume
from pairseg.metrics import evaluate_case

TRAIN_CASES = "case_002,case_003"
TEST_CASE = "case_008"
STEPS = 300
SIZE = 96


@pytest.mark.slow
@pytest.mark.chaos
def test_chaos_train_segment_liver_dice(chaos_dir, tmp_path, capsys):
    threads = torch.get_num_threads()
    start, cpu_start = time.monotonic(), time.process_time()
    model = tmp_path / "chaos.pairseg"
    try:
        code = main(["train", "--data", str(chaos_dir), "--out", str(model), "--cases", TRAIN_CASES,
                     "--steps", str(STEPS), "--size", str(SIZE), "--batch-size", "8", "--lr", "3e-4",
                     "--output-stride", "16", "--no-augment", "--readout", "union", "--device", "cpu",
                     "--events", "json"])
        trained = time.monotonic() - start
        assert code == 0, capsys.readouterr().out[-2000:]
        output = tmp_path / f"{TEST_CASE}.seg.nrrd"
        code = main(["segment", "--model", str(model), "--input", str(chaos_dir / f"{TEST_CASE}_image.nii.gz"),
                     "--output", str(output), "--device", "cpu", "--events", "json"])
        assert code == 0, capsys.readouterr().out[-2000:]
    finally:
        torch.set_num_threads(threads)
    elapsed = time.monotonic() - start
    cpu = time.process_time() - cpu_start  # all threads: robust to other processes sharing the cores
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert events[-1]["event"] == "done"

    image = read_volume(chaos_dir / f"{TEST_CASE}_image.nii.gz")
    classes = ["liver", "right kidney", "left kidney", "spleen"]
    reference, _ = read_label(chaos_dir / f"{TEST_CASE}_label.nii.gz", class_names=classes, reference=image)
    predicted, _ = read_label(output, class_names=classes, reference=image)
    result = evaluate_case(np.asarray(predicted), np.asarray(reference), image.spacing_zyx, classes)
    liver = result["dice"]["liver"]
    print(f"\nCHAOS e2e: liver Dice {liver:.3f}, train {trained:.0f} s, total {elapsed:.0f} s wall, "
          f"{cpu:.0f} s CPU, {torch.get_num_threads()} threads")
    assert liver > 0.6
    # Five minutes on two cores = 600 CPU-seconds; measured as CPU time so that other processes on a
    # shared machine do not make the test fail.
    assert cpu < 600
