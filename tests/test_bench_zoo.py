"""benchmarks/bench_zoo.py: the slice it sizes, the FLOPs it reads, the models it keeps, the table it prints, and one
real run of it on the shipped MNIST (no timing is asserted)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import bench_zoo

ROOT = Path(__file__).resolve().parents[1]
LENET_WEIGHTS = 784 * 300 + 300 * 100 + 100 * 10


def test_forward_flops_of_lenet_are_its_multiply_adds():
    flops = bench_zoo.forward_flops("lenet_300_100", (28, 28, 1), 10)
    # 2 FLOPs per weight, plus the bias additions and ReLUs XLA also counts (410 + 400)
    assert 2 * LENET_WEIGHTS <= flops <= 2 * LENET_WEIGHTS + 2 * (300 + 100 + 10)


def test_slice_steps_targets_the_tflop_and_stays_within_bounds():
    per_step = 3 * 1e9 * bench_zoo.B * 8  # a model of 1 GFLOP per image, S = 8
    assert bench_zoo.slice_steps(1e9, 10 * per_step / 1e12, 1, 64) == 10
    assert bench_zoo.slice_steps(1e9, 1000 * per_step / 1e12, 1, 64) == 64
    assert bench_zoo.slice_steps(1e9, 0.0, 2, 64) == 2


def test_epoch_seconds_times_warm_epochs_and_sums_the_chunks():
    # chunk 0: compile + epoch ends at 10, warm epochs of 2 and 3 s; chunk 1: warm epochs of 4 and 1.5 s
    stamps = [(0, 10.0), (0, 12.0), (0, 15.0), (1, 20.0), (1, 24.0), (1, 25.5)]
    assert bench_zoo.epoch_seconds(stamps) == pytest.approx(2.0 + 1.5)
    with pytest.raises(ValueError, match="at least two epochs"):
        bench_zoo.epoch_seconds([(0, 1.0), (0, 2.0), (1, 3.0)])


def test_fits_keeps_the_models_the_images_survive():
    assert bench_zoo.fits("lenet_300_100", (28, 28, 1), 10)
    assert bench_zoo.fits("lenet5", (28, 28, 1), 10)
    assert not bench_zoo.fits("lenet5", (8, 8, 1), 10)  # two 5x5 convolutions and pools need at least 12x12


def test_secs_formats_like_the_reports():
    assert [bench_zoo._secs(x) for x in (0.4234, 12.34, 185, 7500)] == ["0.42 s", "12.3 s", "3 min 05 s",
                                                                         "2 h 05 min"]


def _row(model, s1, s8, *, complete=True):
    cells = {}
    for name in bench_zoo.DATASETS:
        if s1 is not None:
            cells[f"{name}/1"] = {"first_s": 20.0, "slice_s": s1 / 10, "full_s": s1}
        if s8 is not None:
            cells[f"{name}/8"] = {"first_s": 25.0, "slice_s": s8 / 10, "full_s": s8}
    return {"model": model, "params": 1234, "steps": 4, "cells": cells, "complete": complete, "peak_rss_gib": 0.5}


def test_table_computes_the_ratios_and_marks_what_hit_the_limit():
    rows = [_row("lenet_300_100", 2.0, 8.0), _row("slow", 6.0, None, complete=False)]
    lines = bench_zoo.table(rows, list(bench_zoo.DATASETS), 45).splitlines()
    assert len(lines) == 4 and all(line.count("|") == lines[0].count("|") for line in lines)
    lenet, slow = (line.split(" | ") for line in lines[2:])
    assert lenet[1:3] == ["1,234", "512"] and lenet[3:7] == ["2.00 s", "8.00 s", "2.00 s", "8.00 s"]
    assert lenet[7] == "2.00×" and lenet[8] == "1.0×" and lenet[10] == "0.50 GiB |"
    assert slow[4] == "> 45 s limit" and slow[7] == "–" and slow[8] == "3.0×" and slow[10] == "– |"


@pytest.mark.slow
def test_a_real_run_prints_a_complete_row(tmp_path):
    out = tmp_path / "zoo.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_zoo", "--models", "mlp_100_30", "--datasets",
                           "mnist", "--tflop", "0", "--min-steps", "2", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = json.loads(out.read_text())
    assert row["complete"] and row["steps"] == 2 and row["params"] == 784 * 100 + 100 + 100 * 30 + 30 + 30 * 10 + 10
    assert set(row["cells"]) == {"mnist/1", "mnist/8"}
    for cell in row["cells"].values():
        assert cell["full_s"] == pytest.approx(cell["slice_s"] * bench_zoo.FULL_STEPS / 2)
    assert "| mlp_100_30 | 81,840 | 256 |" in proc.stdout
