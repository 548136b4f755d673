"""The benchmark grid as a plain per-model loop in eager PyTorch: the baseline `bench_sweep.py` times our sweep against.

Same protocol as `benchmarks/bench_sweep.py`'s grid: LeNet-300-100 on MNIST, batch 128 (last partial batch dropped),
SGD lr 0.1, momentum 0.9, coupled weight decay 5e-4, S seeds x 10 dense epochs; then per seed the criteria
mp |w|, random U(0,1), gp |w*g| and up |-w*g + 5e-4 w^2| (g: the cross-entropy gradient on the first 128 training
examples) at each sparsity with one global threshold over the three kernels, each pruned model fine-tuned for 2
epochs with a fresh optimizer (gradient and weights masked every step), and every model evaluated on the test set
(per-class correct counts). One model at a time, as a PyTorch user would write it; MKL uses every core.

It needs only torch and numpy (not this package), so it runs from any interpreter that has torch:

    python benchmarks/torch_loop.py [--seeds 4] [--data-dir ../shared/data/mnist]

and prints one JSON line: seconds per phase ("dense", "finetune", "eval", "total"), the number of models, the mean
test accuracy of the dense and of the pruned models (a sanity check that it trained), the min / median / max seconds
of a dense and of a fine-tuning epoch (how steady the loop ran), and how many fine-tuned weights and gradients were
subnormal floats (0: no slow denormal path).
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

MEAN, STD = 0.1307, 0.3081
CRITERIA = ("mp", "random", "gp", "up")  # the defaults: the benchmark grid (bench_sweep passes its own)
SPARSITIES = (0.5, 0.8, 0.9, 0.95, 0.98)
LAMBDA_UP = 5e-4


def read_idx(path: Path) -> np.ndarray:
    """An idx(.gz) file as a numpy array (big-endian header: magic, then one uint32 per dimension)."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load(data_dir: Path, split: str):
    import torch

    prefix = "train" if split == "train" else "t10k"
    x = read_idx(data_dir / f"{prefix}-images-idx3-ubyte.gz").reshape(-1, 784).astype(np.float32)
    y = read_idx(data_dir / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
    return torch.from_numpy((x / 255.0 - MEAN) / STD), torch.from_numpy(y)


def lenet(seed: int):
    """LeNet-300-100 with He-normal kernels and U(+-1/sqrt(fan_in)) biases, seeded."""
    import torch

    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(784, 300), torch.nn.ReLU(), torch.nn.Linear(300, 100),
                              torch.nn.ReLU(), torch.nn.Linear(100, 10))
    for layer in net[::2]:
        torch.nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
    return net


def train(net, x, y, epochs: int, seed: int, masks=None) -> list[float]:
    """SGD epochs over seeded permutations; with masks, the gradient and the weights are masked every step.
    Returns the seconds of each epoch (the loop's own spread, next to the phase totals)."""
    import torch

    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(seed)
    kernels = [layer.weight for layer in net[::2]]
    steps = x.shape[0] // 128
    seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        perm = torch.randperm(x.shape[0], generator=gen)[: steps * 128].view(steps, 128)
        for idx in perm:
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
            if masks is not None:
                for w, m in zip(kernels, masks):
                    w.grad.mul_(m)
            opt.step()
            if masks is not None:
                with torch.no_grad():
                    for w, m in zip(kernels, masks):
                        w.mul_(m)
        seconds.append(time.perf_counter() - start)
    return seconds


def scores(net, criterion: str, x, y, seed: int):
    """Per-kernel scores (higher = keep)."""
    import torch

    kernels = [layer.weight for layer in net[::2]]
    if criterion == "mp":
        return [w.detach().abs() for w in kernels]
    if criterion == "random":
        gen = torch.Generator().manual_seed(seed)
        return [torch.rand(w.shape, generator=gen) for w in kernels]
    net.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(net(x[:128]), y[:128]).backward()
    out = []
    for w in kernels:
        wg = w.detach() * w.grad
        out.append(wg.abs() if criterion == "gp" else (-wg + LAMBDA_UP * w.detach() ** 2).abs())
    net.zero_grad(set_to_none=True)
    return out


def global_masks(score: list, sparsity: float) -> list:
    """Keep the highest (1 - sparsity) fraction of all kernel weights under one threshold."""
    import torch

    flat = torch.cat([s.reshape(-1) for s in score])
    n_prune = int(round(sparsity * flat.numel()))
    if n_prune == 0:
        return [torch.ones_like(s) for s in score]
    threshold = torch.kthvalue(flat, n_prune).values
    return [(s > threshold).float() for s in score]


def denormals(net) -> int:
    """How many weights (and gradients, where present) are subnormal floats: a check that no slow path is hit."""
    import torch

    tiny = torch.finfo(torch.float32).tiny
    tensors = [t for p in net.parameters() for t in (p.detach(), p.grad) if t is not None]
    return int(sum(((t != 0) & (t.abs() < tiny)).sum() for t in tensors))


def spread(seconds: list[float]) -> dict[str, float]:
    """min / median / max of the per-epoch seconds."""
    a = np.asarray(seconds, float)
    return {"min": round(float(a.min()), 3), "median": round(float(np.median(a)), 3), "max": round(float(a.max()), 3)}


def evaluate(net, x, y) -> np.ndarray:
    """Per-class correct counts on (x, y)."""
    import torch

    with torch.no_grad():
        pred = net(x).argmax(1)
    return np.bincount(y[pred == y].numpy(), minlength=10)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    repo = Path(__file__).resolve().parents[1]
    default_data = Path(os.environ.get("FAIRPRUNE_DATA_DIR", repo.parent / "shared" / "data")) / "mnist"
    ap.add_argument("--data-dir", type=Path, default=default_data, help="folder with the MNIST idx .gz files")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--ft-epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--criteria", nargs="+", default=list(CRITERIA))
    ap.add_argument("--sparsities", nargs="+", type=float, default=list(SPARSITIES))
    args = ap.parse_args(argv)
    if not (args.data_dir / "train-images-idx3-ubyte.gz").is_file():
        print(f"error: --data-dir: {args.data_dir} holds no train-images-idx3-ubyte.gz", file=sys.stderr)
        return 2
    for flag, value, least in (("--seeds", args.seeds, 1), ("--epochs", args.epochs, 0),
                               ("--ft-epochs", args.ft_epochs, 0), ("--threads", args.threads, 1)):
        if value < least:
            print(f"error: {flag}: need an integer >= {least}, got {value}", file=sys.stderr)
            return 2
    unknown = [c for c in args.criteria if c not in CRITERIA]
    if unknown:
        print(f"error: --criteria: unknown {unknown[0]!r}; known: {', '.join(CRITERIA)}", file=sys.stderr)
        return 2
    outside = [x for x in args.sparsities if not 0 <= x < 1]
    if outside:
        print(f"error: --sparsities: {outside[0]} is not in [0, 1)", file=sys.stderr)
        return 2
    try:
        import torch
    except ImportError:
        print("error: torch is not installed in this interpreter (pass one that has it)", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as XLA's CPU runtime does while it executes
    x, y = load(args.data_dir, "train")
    xt, yt = load(args.data_dir, "test")
    times = {"dense": 0.0, "finetune": 0.0, "eval": 0.0}
    acc_dense, acc_pruned, epochs_dense, epochs_ft, subnormal = [], [], [], [], 0
    start = time.perf_counter()
    for seed in range(args.seeds):
        t = time.perf_counter()
        dense = lenet(seed)
        epochs_dense += train(dense, x, y, args.epochs, seed)
        times["dense"] += time.perf_counter() - t
        t = time.perf_counter()
        acc_dense.append(evaluate(dense, xt, yt).sum() / len(yt))
        times["eval"] += time.perf_counter() - t
        for c, criterion in enumerate(args.criteria):
            score = scores(dense, criterion, x, y, 1000 * seed + c)
            for sparsity in args.sparsities:
                t = time.perf_counter()
                net = lenet(seed)
                net.load_state_dict(dense.state_dict())
                masks = global_masks(score, sparsity)
                with torch.no_grad():
                    for layer, m in zip(net[::2], masks):
                        layer.weight.mul_(m)
                epochs_ft += train(net, x, y, args.ft_epochs, 10_000 + seed, masks)
                times["finetune"] += time.perf_counter() - t
                subnormal += denormals(net)
                t = time.perf_counter()
                acc_pruned.append(evaluate(net, xt, yt).sum() / len(yt))
                times["eval"] += time.perf_counter() - t
    times["total"] = time.perf_counter() - start
    print(json.dumps({**{k: round(v, 2) for k, v in times.items()}, "models": len(acc_dense) + len(acc_pruned),
                      "dense_accuracy": round(float(np.mean(acc_dense)), 4),
                      "pruned_accuracy": round(float(np.mean(acc_pruned)), 4), "threads": args.threads,
                      "epoch_seconds": {"dense": spread(epochs_dense) if epochs_dense else None,
                                        "finetune": spread(epochs_ft) if epochs_ft else None},
                      "subnormal_weights": subnormal}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
