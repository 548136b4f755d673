"""Feedback on long library calls: a bar per call (chunks and epochs counted from 1, units named), quiet by a flag,
or the caller's callback."""
from __future__ import annotations

import functools
import threading
import time

import jax.numpy as jnp
import numpy as np
import pytest

from fairprune_jax import data, evaluate, progress, protocols, train
from fairprune_jax.models import get_model


@pytest.fixture(scope="module")
def small():
    split = data.load_split("mnist", "train")
    info = data.info("mnist")
    return data.normalize(split.images[:400], info.mean, info.std), jnp.asarray(split.labels[:400], jnp.int32)


def test_library_bars_name_models_and_epochs_from_one(small, monkeypatch, capsys):
    monkeypatch.setattr(progress, "DELAY", 0.0)  # show every bar at once (quick calls stay quiet by default)
    # print every update (tqdm skips redraws within 0.1 s, so a fast chunk's postfix might never be drawn)
    monkeypatch.setattr(progress, "tqdm", functools.partial(progress.tqdm, mininterval=0, miniters=1))
    x, y = small
    spec = get_model("mlp_100_30")
    cfg = dict(epochs=2, batch_size=100, optimizer=dict(name="sgd", lr=0.05))
    dense, _ = train.fit(spec, cfg, [0, 1, 2], x, y, chunk=2)
    err = capsys.readouterr().err
    assert "fit 3 models" in err and "4/4" in err and "epoch" in err
    assert "models=1-2/3" in err and "models=3/3" in err and "epoch=2/2" in err and "epoch=0/" not in err
    evaluate.evaluate_population(spec, dense, x, y, chunk=2)
    err = capsys.readouterr().err
    assert "evaluate 3 models" in err and "3/3" in err and "model" in err
    masks = protocols.prune_population(spec, "mp", dense, np.array([0.5]), train.as_keys([0, 1, 2]),
                                       (x[:128], y[:128]), grid=True)
    assert "score mp" in capsys.readouterr().err
    protocols.finetune(spec, cfg, dense, masks, [0, 1, 2], x, y, progress=False)
    evaluate.population_logits(spec, dense, x, progress=False)
    assert capsys.readouterr().err == ""


def test_quick_calls_print_nothing_and_bad_values_are_refused(small, capsys):
    x, y = small
    spec = get_model("mlp_100_30")
    dense = train.init_population(spec, train.as_keys([0]))
    evaluate.evaluate_population(spec, dense, x[:50], y[:50])  # under DELAY seconds: no bar
    assert capsys.readouterr().err == ""
    with pytest.raises(ValueError, match="progress: expected True .* got str"):
        evaluate.evaluate_population(spec, dense, x, y, progress="yes")


def test_callbacks_get_one_based_chunks_and_models(small):
    x, y = small
    spec = get_model("mlp_100_30")
    dense = train.init_population(spec, train.as_keys([0, 1, 2]))
    seen: list[dict] = []
    evaluate.evaluate_population(spec, dense, x, y, chunk=2, progress=seen.append)
    assert [(d["chunk"], d["chunks"], d["models"]) for d in seen] == [(1, 2, (1, 2)), (2, 2, (3, 3))]
    seen.clear()
    evaluate.population_logits(spec, dense, x, chunk=2, progress=seen.append)
    assert [d["models"] for d in seen] == [(1, 2), (3, 3)]


def test_the_bar_keeps_its_clock_moving_while_a_chunk_runs(monkeypatch):
    """Between two updates (one long compiled chunk) a background thread redraws the bar; it stops on close."""
    monkeypatch.setattr(progress, "DELAY", 0.0)
    monkeypatch.setattr(progress, "HEARTBEAT", 0.05)
    monkeypatch.setattr(progress, "HEARTBEAT_LOG", 0.05)
    with progress.Reporter(True, total=2, desc="work", unit="model") as rep:
        draws = []
        real = rep.bar.refresh
        monkeypatch.setattr(rep.bar, "refresh", lambda *a, **k: (draws.append(1), real(*a, **k))[1])
        time.sleep(0.5)
        rep.step(2)
    assert len(draws) >= 3
    assert not any(t.name == "fairprune-progress" for t in threading.enumerate())
