"""The FLOP count of benchmarks/bench_sweep.py against a hand computation and the issue's 14.0 TFLOP."""
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
    assert abs(f["total"] / 14.0e12 - 1) < 0.005  # the "14.0 TFLOP" (13.95 T here)


def test_passes_lever_times_the_same_step_three_ways():
    """The hand-fused masked update is the library's step up to float rounding, so the lever compares like with
    like; every timing is positive."""
    lev = bench_sweep.passes_lever(1, models=2, steps=5)
    assert lev["maxdiff"][0] < 1e-5
    assert all(t > 0 for k in ("library", "unmasked", "fused") for t in lev[k])
