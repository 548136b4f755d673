"""The FLOP count of benchmarks/bench_sweep.py against a hand computation and the grid's stated 14.0 TFLOP."""
from __future__ import annotations

from benchmarks import bench_sweep


def test_kernel_shapes_chain_from_the_input_and_the_grid_flops_are_exact():
    layers = bench_sweep.kernel_shapes("lenet_300_100")
    assert layers == [(784, 300), (300, 100), (100, 10)]
    names = [g[0] for g in bench_sweep.step_gemms(layers)]
    assert names == ["fwd1", "wgrad1", "fwd2", "wgrad2", "igrad2", "fwd3", "wgrad3", "igrad3"]
    # per step: forward + weight gradient of every layer, input gradient of layers 2 and 3 (not of the data)
    step = 2 * 128 * (2 * 784 * 300 + 3 * 300 * 100 + 3 * 100 * 10)
    f = bench_sweep.grid_flops(layers)
    assert f["step"] == step
    steps = 60000 // 128  # 468, the last partial batch dropped
    assert f["dense"] == 4 * 10 * steps * step and f["finetune"] == 4 * 20 * 2 * steps * step
    assert f["eval"] == 4 * 21 * 10000 * 2 * (784 * 300 + 300 * 100 + 100 * 10)
    assert abs(f["total"] / 14.0e12 - 1) < 0.005  # the grid's stated "14.0 TFLOP" (13.95 T here)


def test_passes_lever_times_the_same_step_three_ways():
    """The hand-fused masked update is the library's step up to float rounding, so the lever compares like with
    like; every timing is positive."""
    lev = bench_sweep.passes_lever(1, models=2, steps=5)
    assert lev["maxdiff"][0] < 1e-5
    assert all(t > 0 for k in ("library", "unmasked", "fused") for t in lev[k])


def test_compare_recall_counts_differing_predictions_and_accuracy_gaps(tmp_path):
    import pandas as pd
    import pytest

    rows = pd.DataFrame({"model": "m", "criterion": ["dense", "dense", "mp", "mp"], "seed": 0, "level": 0,
                         "sparsity_index": [0, 0, 1, 1], "requested_sparsity": [0.0, 0.0, 0.99, 0.99],
                         "class": [0, 1, 0, 1], "n": 10, "correct": [9, 8, 5, 6], "accuracy": [0.85, 0.85, 0.55, 0.55]})
    other = rows.assign(correct=[9, 7, 5, 8], accuracy=[0.8, 0.8, 0.65, 0.65])
    for name, t in (("a", rows), ("b", other)):
        (tmp_path / name / "results" / "recall").mkdir(parents=True)
        t.to_parquet(tmp_path / name / "results" / "recall" / "part.parquet")
    line = bench_sweep.compare_recall(tmp_path / "a", tmp_path / "b")
    assert line == ("predictions differing: 3 of 40 (7.50%; dense models 1); largest mean-accuracy gap per cell "
                    "0.1000 (0.0500 up to 98% sparsity)")
    assert bench_sweep.compare_recall(tmp_path / "a", tmp_path / "a").startswith("predictions differing: 0 of 40")
    (tmp_path / "c").mkdir()
    with pytest.raises(ValueError, match="holds no recall table"):
        bench_sweep.compare_recall(tmp_path / "a", tmp_path / "c")


def test_compare_flag_prints_one_error_line_and_exits_2(tmp_path, monkeypatch, capsys):
    import pytest

    (tmp_path / "empty").mkdir()
    monkeypatch.setattr("sys.argv", ["bench_sweep", "--compare", str(tmp_path / "empty"), str(tmp_path / "empty")])
    with pytest.raises(SystemExit) as exc:
        bench_sweep.main()
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "holds no recall table" in err and "\n" not in err


def test_run_torch_loop_reads_the_loops_json_line(tmp_path):
    """The torch variant runs the given interpreter on benchmarks/torch_loop.py with the grid's sizes and reads
    the phases from its last stdout line (a stand-in interpreter here, so the test needs no torch)."""
    import json

    import pytest

    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho \"$@\" > " + str(tmp_path / "args") + "\n"
                    "echo warming up\necho '" + json.dumps({"dense": 1.5, "finetune": 2.5, "eval": 0.5}) + "'\n")
    fake.chmod(0o755)
    res = bench_sweep.run_torch_loop(str(fake))
    assert res["dense"] == 1.5 and res["finetune"] == 2.5 and res["eval"] == 0.5
    assert res["wall"] > 0 and res["rss_gib"] > 0 and "ft_epoch_min" not in res  # an older loop's line
    args = (tmp_path / "args").read_text().split()
    assert args[0].endswith("benchmarks/torch_loop.py") and args[1:] == [
        "--seeds", "4", "--epochs", "10", "--ft-epochs", "2", "--criteria", "mp", "random", "gp", "up",
        "--sparsities", "0.5", "0.8", "0.9", "0.95", "0.98"]
    line = {"dense": 1, "finetune": 2, "eval": 0, "epoch_seconds": {"dense": None,
                                                                    "finetune": {"min": 0.8, "median": 1.0, "max": 1.7}}}
    fake.write_text("#!/bin/sh\necho '" + json.dumps(line) + "'\n")
    res = bench_sweep.run_torch_loop(str(fake))
    assert res["ft_epoch_min"] == 0.8 and res["ft_epoch_max"] == 1.7
    fake.write_text("#!/bin/sh\necho boom >&2\nexit 3\n")
    with pytest.raises(RuntimeError, match="boom"):
        bench_sweep.run_torch_loop(str(fake))


def test_bad_torch_python_or_baseline_is_one_error_line_and_exit_2(tmp_path, monkeypatch, capsys):
    import pytest

    for flag, value, words in (("--torch-python", str(tmp_path / "nope"), "not an executable interpreter"),
                               ("--baseline", str(tmp_path), "not a checkout of this repository")):
        monkeypatch.setattr("sys.argv", ["bench_sweep", flag, value])
        with pytest.raises(SystemExit) as exc:
            bench_sweep.main()
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err == f"error: {flag}: {value} is {words}"
