"""The recovery-budget protocol: readings after e epochs equal e-epoch runs, its config checks, an end-to-end run
on a small real MNIST slice with its report, and the budget analysis against an independent computation."""
from __future__ import annotations

import re

import jax
import numpy as np
import pandas as pd
import pytest

from configs import mnist
from fairprune_jax import models, protocols, train
from fairprune_jax.analysis import budget as budget_analysis
from fairprune_jax.studies import budget
from fairprune_jax.studies import recall as recall_study


@pytest.fixture(scope="module")
def slice_():
    """1024 real MNIST training images and their labels (normalised)."""
    from fairprune_jax import data

    split = data.load_split("mnist", "train")
    ds = data.info("mnist")
    dev = data.to_device(data.Split(split.images[:1024], split.labels[:1024]), ds)
    return dev.images, dev.labels


def test_readings_after_e_epochs_equal_e_epoch_runs(slice_):
    x, y = slice_
    spec = models.get_model("mlp_100_30")
    keys = train.seed_keys([0, 1])
    tcfg = dict(epochs=3, batch_size=128, optimizer=dict(name="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4))
    _, hist = train.fit(spec, tcfg, keys, x, y, keep_epochs=(1, 2))
    assert sorted(hist["at_epochs"]) == [1, 2]
    for e in (1, 2):
        alone, _ = train.fit(spec, dict(tcfg, epochs=e), keys, x, y)
        for a, b in zip(jax.tree.leaves(alone), jax.tree.leaves(hist["at_epochs"][e])):
            np.testing.assert_array_equal(np.asarray(a), b)


def test_keep_epochs_is_checked():
    with pytest.raises(ValueError, match="keep_epochs: 4 is not an epoch count in"):
        train.check_keep_epochs((1, 4), 3)
    with pytest.raises(ValueError, match="keep_epochs: True"):
        train.check_keep_epochs((True,), 3)
    assert train.check_keep_epochs((2, 1, 2), 3) == (1, 2)


def test_finetune_keeps_readings_with_the_mask_population_shape(slice_):
    x, y = slice_
    spec = models.get_model("mlp_100_30")
    keys = train.seed_keys([0, 1])
    dense = train.init_population(spec, keys)
    cfg = dict(epochs=2, batch_size=128, optimizer=dict(name="sgd", lr=0.05))
    _, masks, _ = protocols.one_shot(spec, dict(cfg, epochs=0), dense, ["mp"], [0.5, 0.9], keys, x, y)
    out, hist = protocols.finetune(spec, cfg, dense, masks, keys, x, y, keep_epochs=(1,))
    k = jax.tree.leaves(hist["at_epochs"][1])[0]
    assert k.shape == jax.tree.leaves(out)[0].shape and k.shape[:3] == (2, 1, 2)
    pruned = np.asarray(jax.tree.leaves(masks["params"] if "params" in masks else masks)[0]) == 0
    assert np.all(k[pruned] == 0)  # masked weights stay zero in the readings too


def test_settings_and_labels():
    cfg = mnist.get_config("budget")
    s = budget.settings(cfg)
    assert s[0] == dict(setting="none", ft_epochs=0, ft_lr=0.0, ft_momentum=0.0)
    assert len(s) == 1 + 3 * 2 * 2
    assert budget.setting_label(5, 0.1, 0.9) == "e5_lr0.1_m0.9"
    assert budget.unit_names(cfg)[:2] == ["mp.none", "mp.e1_lr0.01_m0"]


@pytest.mark.parametrize("field,value,fragment", [
    ("prune.budget.epochs", (0,), "at least one above 0"),
    ("prune.budget.epochs", (1, 1), "distinct"),
    ("prune.budget.epochs", (-1, 2), "non-negative"),
    ("prune.budget.lrs", (0.0,), "outside (0, inf)"),
    ("prune.budget.momenta", (1.0,), "outside [0, 1)"),
    ("prune.budget.momenta", (), "empty"),
    ("finetune.schedule.name", "cosine", "constant learning rate"),
])
def test_bad_budget_fields_are_named(field, value, fragment):
    cfg = mnist.get_config("budget")
    node = cfg
    *path, last = field.split(".")
    for p in path:
        node = node[p]
    node[last] = value
    with pytest.raises(ValueError, match=rf"{field}.*{re.escape(fragment)}"):
        recall_study.validate_config(cfg)


def test_budget_run_end_to_end_and_its_report(tmp_path):
    cfg = mnist.get_config("budget")
    cfg.num_seeds = 2
    cfg.data.max_train_examples = 2000
    cfg.train.epochs = 1
    cfg.prune.budget.epochs = (0, 1, 2)
    cfg.prune.budget.lrs = (0.01,)
    cfg.prune.sparsities = (0.5, 0.9)
    cfg.analysis.bootstrap = 20
    cfg.progress = False
    wd = recall_study.run(cfg, workdir=tmp_path / "wd", log=lambda s: None)
    rec = wd.read_table("recall")
    assert set(rec["setting"].dropna()) == {"none", "e1_lr0.01_m0", "e1_lr0.01_m0.9", "e2_lr0.01_m0",
                                            "e2_lr0.01_m0.9"}
    # the 2-epoch plain-SGD setting is the one-shot protocol with 2 fine-tuning epochs, bit for bit
    one = mnist.get_config("smoke")
    for f in ("num_seeds", "data.max_train_examples", "train.epochs"):
        a, b = f.split(".") if "." in f else (f, None)
        if b:
            one[a][b] = cfg[a][b]
        else:
            one[a] = cfg[a]
    one.prune.criteria, one.prune.sparsities = ("mp",), (0.5, 0.9)
    one.finetune.epochs, one.progress, one.save_pruned = 2, False, False
    ref = recall_study.run(one, workdir=tmp_path / "ref", log=lambda s: None).read_table("recall")
    got = rec[(rec["setting"] == "e2_lr0.01_m0") & (rec["criterion"] == "mp")]
    want = ref[ref["criterion"] == "mp"]
    cols = ["seed", "level", "class", "recall", "accuracy"]
    pd.testing.assert_frame_equal(got[cols].sort_values(cols[:3]).reset_index(drop=True),
                                  want[cols].sort_values(cols[:3]).reset_index(drop=True))
    text = (tmp_path / "wd" / "report.md").read_text()
    assert "Recovery budget" in text and "## MP: E[α_t] by budget" in text
    assert (tmp_path / "wd" / "plots" / "budget_alpha.png").is_file()
    # rerun: every unit is already committed, nothing is retrained
    again = recall_study.run(cfg, workdir=tmp_path / "wd", log=lambda s: None)
    assert len(again.read_table("recall")) == len(rec)


def _synthetic_budget_table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    k = 4
    for seed in range(3):
        r0 = np.clip(0.8 + 0.1 * rng.standard_normal(k), 0.3, 0.99)
        for c in range(k):
            rows.append(dict(dataset="d", model="m", criterion="dense", seed=seed, level=0, requested_sparsity=0.0,
                             actual_sparsity=0.0, **{"class": c}, n=100, recall=r0[c], accuracy=r0.mean(),
                             setting=np.nan, ft_epochs=np.nan, ft_lr=np.nan, ft_momentum=np.nan))
        for setting, e, scale in (("none", 0, 3.0), ("e1_lr0.1_m0", 1, 1.5), ("e1_lr0.1_m0.9", 1, 0.5)):
            for lvl, s in enumerate((0.5, 0.9)):
                a0 = r0.mean()
                rt = np.clip(a0 + scale * (lvl + 1) * (r0 - a0) + 0.01 * rng.standard_normal(k), 0, 1)
                for c in range(k):
                    rows.append(dict(dataset="d", model="m", criterion="mp", seed=seed, level=lvl,
                                     requested_sparsity=s, actual_sparsity=s, **{"class": c}, n=100, recall=rt[c],
                                     accuracy=rt.mean(), setting=setting, ft_epochs=e,
                                     ft_lr=0.0 if e == 0 else 0.1, ft_momentum=0.9 if setting.endswith("0.9") else 0.0))
    return pd.DataFrame(rows)


def test_budget_analysis_matches_an_independent_slope():
    rec = _synthetic_budget_table()
    an = budget_analysis.analyze(rec, bootstrap=0)
    a = an.alpha
    for (setting, seed, lvl), g in rec[rec["setting"].notna()].groupby(["setting", "seed", "level"]):
        d = rec[(rec["criterion"] == "dense") & (rec["seed"] == seed)].sort_values("class")
        g = g.sort_values("class")
        d0 = d["recall"].to_numpy() / d["accuracy"].to_numpy() - 1
        dt = g["recall"].to_numpy() / g["accuracy"].to_numpy() - 1
        want = float(d0 @ dt / (d0 @ d0))
        got = a[(a["setting"] == setting) & (a["seed"] == seed) & (a["level"] == lvl)]["alpha"].item()
        assert got == pytest.approx(want, rel=1e-10)
    assert set(an.by_setting.table["moderator"]) >= {"setting"}
    assert an.factors is not None and "ft_momentum" in set(an.factors.table["moderator"])
    tier = an.tier_a[an.tier_a["subset"] == "all"]
    assert len(tier) == 3 * 2
    assert budget_analysis.is_budget_table(rec) and not budget_analysis.is_budget_table(rec.drop(columns="setting"))


def test_stacked_long_refuses_a_table_without_budget_columns():
    rec = _synthetic_budget_table().drop(columns=["ft_lr"])
    with pytest.raises(ValueError, match="missing budget column"):
        budget_analysis.stacked_long(rec, chance=1.5)
