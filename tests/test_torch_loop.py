"""benchmarks/torch_loop.py, the per-model PyTorch baseline: its idx reader against the library's loader, its
error paths (no torch needed), and, where torch is installed, its masks and scores against numpy."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from benchmarks import torch_loop
from fairprune_jax import data


def test_read_idx_matches_the_librarys_loader():
    split = data.load_split("mnist", "test")
    root = data.source_folder("mnist")
    images = torch_loop.read_idx(root / "t10k-images-idx3-ubyte.gz")
    labels = torch_loop.read_idx(root / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    np.testing.assert_array_equal(images, split.images.reshape(10000, 28, 28))
    np.testing.assert_array_equal(labels, split.labels)


@pytest.mark.parametrize("args, field", [(["--seeds", "0"], "--seeds"), (["--threads", "0"], "--threads"),
                                         (["--ft-epochs", "-1"], "--ft-epochs"), (["--criteria", "snip"], "--criteria"),
                                         (["--sparsities", "0.5", "1.0"], "--sparsities")])
def test_bad_flags_are_one_error_line_and_exit_2(args, field, capsys):
    assert torch_loop.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {field}:") and "\n" not in err


def test_a_folder_without_mnist_and_a_missing_torch_are_refused(tmp_path, capsys, monkeypatch):
    assert torch_loop.main(["--data-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"error: --data-dir: {tmp_path} holds no train-images")
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    assert torch_loop.main([]) == 2
    assert "torch is not installed" in capsys.readouterr().err


def test_global_masks_and_scores_against_numpy():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    score = [torch.from_numpy(rng.random((30, 20), dtype=np.float32)), torch.from_numpy(rng.random(5, dtype=np.float32))]
    masks = torch_loop.global_masks(score, 0.8)
    flat = np.concatenate([s.numpy().ravel() for s in score])
    keep = flat > np.sort(flat)[round(0.8 * flat.size) - 1]
    np.testing.assert_array_equal(np.concatenate([m.numpy().ravel() for m in masks]), keep.astype(np.float32))
    net = torch_loop.lenet(0)
    x, y = torch.randn(200, 784), torch.randint(0, 10, (200,))
    mp = torch_loop.scores(net, "mp", x, y, 0)
    np.testing.assert_array_equal(mp[0].numpy(), np.abs(net[0].weight.detach().numpy()))
    gp, up = (torch_loop.scores(net, c, x, y, 0) for c in ("gp", "up"))
    net.zero_grad()
    torch.nn.functional.cross_entropy(net(x[:128]), y[:128]).backward()  # the gradient on the first batch
    for layer, g_score, u_score in zip(net[::2], gp, up):
        w, g = layer.weight.detach().numpy(), layer.weight.grad.numpy()
        np.testing.assert_allclose(g_score.numpy(), np.abs(w * g), rtol=1e-6)
        np.testing.assert_allclose(u_score.numpy(), np.abs(-w * g + torch_loop.LAMBDA_UP * w ** 2), rtol=1e-6)
    rnd = torch_loop.scores(net, "random", x, y, 3)
    assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(rnd, torch_loop.scores(net, "random", x, y, 3)))


def test_spread_of_epoch_seconds():
    assert torch_loop.spread([1.0, 3.0, 2.0, 10.0]) == {"min": 1.0, "median": 2.5, "max": 10.0}


def test_denormals_counts_subnormal_weights():
    torch = pytest.importorskip("torch")
    net = torch_loop.lenet(0)
    assert torch_loop.denormals(net) == 0
    with torch.no_grad():
        net[0].weight[0, :3] = torch.tensor([1e-40, -1e-41, 0.0])  # two subnormals and an exact zero
    assert torch_loop.denormals(net) == 2
