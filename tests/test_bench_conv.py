"""The pure parts of benchmarks/bench_conv.py (FLOP counts against hand counts) and benchmarks/accelerator.py (the
markdown it writes, its error lines, and a quick smoke run of the whole script on CPU)."""
from __future__ import annotations

import pytest

from benchmarks import accelerator, bench_conv


def test_lenet5_step_flops_equal_the_hand_count():
    ops = bench_conv.model_ops("lenet5", batch=1)
    assert [(o.kind, o.lhs[1:], o.rhs, o.input_grad) for o in ops] == [
        ("conv", (28, 28, 1), (5, 5, 1, 6), False), ("conv", (14, 14, 6), (5, 5, 6, 16), True),
        ("dot", (400,), (400, 120), True), ("dot", (120,), (120, 84), True), ("dot", (84,), (84, 10), True)]
    # forward: 2 * outputs * fan-in per layer; conv_0 28*28*6 outputs of 5*5*1, conv_1 10*10*16 of 5*5*6
    fwd = 2 * (28 * 28 * 6 * 25 + 10 * 10 * 16 * 150 + 400 * 120 + 120 * 84 + 84 * 10)
    f = bench_conv.step_flops(bench_conv.model_ops("lenet5"))
    assert f["forward"] == 128 * fwd == 128 * 833_040
    # a step: forward + weight gradients (as much again) + input gradients of every layer but the first
    assert f["step"] == 128 * (2 * fwd + fwd - 2 * 28 * 28 * 6 * 25) == 128 * 2_263_920


def test_mlp_and_resnet_flops_follow_the_same_rules():
    f = bench_conv.step_flops(bench_conv.model_ops("lenet_300_100"))
    assert f["step"] == 2 * 128 * (2 * 784 * 300 + 3 * (300 * 100 + 100 * 10))  # benchmarks/bench_sweep.py's count
    ops = bench_conv.model_ops("resnet20", batch=1)
    convs = [o for o in ops if o.kind == "conv"]
    assert len(convs) == 1 + 18 + 2  # stem, 9 blocks of 2 convs, 2 projection shortcuts
    assert [o.input_grad for o in convs] == [False] + [True] * 20
    shortcut = [o for o in convs if o.rhs[:2] == (1, 1)]
    assert [(o.lhs[1:], o.rhs, o.strides) for o in shortcut] == [((28, 28, 16), (1, 1, 16, 32), (2, 2)),
                                                                   ((14, 14, 32), (1, 1, 32, 64), (2, 2))]
    assert shortcut[0].flops == 2 * 14 * 14 * 32 * 16


def test_accelerator_doc_markers_render_and_write(tmp_path):
    doc = tmp_path / "perf.md"
    doc.write_text(f"# P\n\n## Accelerators\n{accelerator.BEGIN}\nnot measured\n{accelerator.END}\nafter\n")
    rows = [{"model": "lenet5", "S": 8, "epoch_per_model": 0.5, "first_epoch": 9.0, "grid": 20.0, "eval": 1.0,
             "total": 31.0, "peak_gib": 1.25}, {"model": "lenet5", "S": 64, "skipped": "past the 280 s budget"}]
    body = accelerator.render(rows, device="GPU X", date="2025-01-01", command="python -m benchmarks.accelerator",
                              smoke=False)
    accelerator.write_doc(doc, body)
    text = doc.read_text()
    assert "not measured" not in text and text.endswith("after\n") and "| lenet5 | 8 | 0.500 | 9.0 |" in text
    assert "Measured on **GPU X**" in text and "| lenet5 | 64 | skipped: past the 280 s budget |" in text
    smoke = accelerator.render(rows[:1], device="cpu", date="d", command="c", smoke=True)
    assert "not a measurement" in smoke
    (tmp_path / "bad.md").write_text("no markers\n")
    with pytest.raises(ValueError, match="must hold the lines"):
        accelerator.check_doc(tmp_path / "bad.md")


def test_accelerator_refuses_a_cpu_measurement_and_bad_docs_with_one_line(tmp_path, capsys):
    import jax

    if jax.devices()[0].platform == "cpu":
        with pytest.raises(SystemExit) as exc:
            accelerator.main([])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: platform: no accelerator") and "\n" not in err
    (tmp_path / "bad.md").write_text("x\n")
    with pytest.raises(SystemExit) as exc:
        accelerator.main(["--quick", "--doc", str(tmp_path / "bad.md")])
    assert exc.value.code == 2 and capsys.readouterr().err.startswith("error: --doc:")


@pytest.mark.slow
def test_accelerator_quick_run_writes_its_section(tmp_path, capsys):
    doc = tmp_path / "perf.md"
    doc.write_text(f"## Accelerators\n{accelerator.BEGIN}\n{accelerator.END}\n")
    accelerator.main(["--quick", "--doc", str(doc), "--seeds", "1", "2", "--models", "mlp_100_30"])
    text = doc.read_text()
    assert "not a measurement" in text
    for s in (1, 2):
        assert f"| mlp_100_30 | {s} | " in text
    assert "dense accuracy" in capsys.readouterr().out
    # the conv model's population (one S: each S is a compilation of the conv grid, the run's costliest part)
    accelerator.main(["--quick", "--doc", str(doc), "--seeds", "2", "--models", "lenet5"])
    text = doc.read_text()
    assert "| lenet5 | 2 | " in text and "| mlp_100_30 |" not in text  # the section is replaced, not appended
