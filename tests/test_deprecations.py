"""Deprecation, not breakage: every moved name still works and warns once; configs and workdirs of earlier versions
are read in today's names."""
from __future__ import annotations

import json
import warnings

import jax.numpy as jnp
import ml_collections
import numpy as np
import pandas as pd
import pytest

from fairprune_jax import deprecation, mask_io, masks, multihost, sharding
from fairprune_jax.report import runs, writer
from fairprune_jax.results import Workdir
from fairprune_jax.studies import checks, schema, spine
from fairprune_jax.studies import recall as recall_study


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    monkeypatch.setattr(deprecation, "_WARNED", set())


def _warns_once(fn, *args, match: str):
    with pytest.warns(deprecation.FairpruneDeprecationWarning, match=match):
        out = fn(*args)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fn(*args)  # the second call is silent
    return out


def test_masks_save_and_load_still_work_through_mask_io(tmp_path):
    mask = {"dense": {"kernel": jnp.array([[True, False], [True, True]])}}
    _warns_once(lambda: masks.save(tmp_path / "m.npz", mask), match="masks.save moved to fairprune_jax.mask_io.save")
    back = _warns_once(lambda: masks.load(tmp_path / "m.npz"), match="masks.load moved to")
    np.testing.assert_array_equal(back["dense"]["kernel"], mask["dense"]["kernel"])
    assert masks.to_jaxpruner.__wrapped__ is mask_io.to_jaxpruner


def test_moved_helpers_keep_warning_aliases():
    cfg = schema.recall_config("mnist")
    assert _warns_once(lambda: schema.weight_decay(schema.recall_config("mnist")),
                       match="schema.weight_decay moved").num_seeds == 10
    _warns_once(lambda: spine.check_training(cfg, "train", min_epochs=1), match="spine.check_training moved")
    with pytest.warns(deprecation.FairpruneDeprecationWarning, match="incomplete_warning"):
        assert spine.incomplete_warning(["a", "b"], ["a"]) == writer.incomplete_warning(["a", "b"], ["a"])
    assert sharding.initialize_distributed.__wrapped__ is multihost.initialize
    with pytest.warns(deprecation.FairpruneDeprecationWarning, match="with_variant"):
        assert schema.with_variant(schema.recall_config("mnist"), "budget").prune.protocol == "budget"
    assert spine.check_sparsities.__wrapped__ is checks.check_sparsities


def test_earlier_singular_names_are_read_as_lists():
    old = ml_collections.ConfigDict(schema.bias_config("planted_mnist").to_dict())
    del old["models"]
    old.prune.criteria = ()
    with old.unlocked():
        old.model = "mlp_100_30"
        old.prune.criterion = "up"
    with pytest.warns(deprecation.FairpruneDeprecationWarning, match="config.model is now config.models"):
        new = schema.upgrade(old)
    assert tuple(new.models) == ("mlp_100_30",) and tuple(new.prune.criteria) == ("up",)
    assert "model" not in new and "criterion" not in new.prune
    assert schema.upgrade(new) is new  # today's names: nothing to do


def _old_config(study: str) -> dict:
    """A config.json of an earlier version: no schema_version, no divergence section, singular bias names."""
    c = (schema.bias_config("planted_mnist") if study == "bias" else schema.recall_config("mnist")).to_dict()
    for k in ("schema_version", "divergence"):
        c.pop(k)
    if study == "bias":
        c["model"] = c.pop("models")[0]
        c["prune"]["criterion"] = c["prune"].pop("criteria")[0]
        c["prune"].pop("grad_batch")
        for s in ("train", "finetune"):
            c[s].pop("augment")
    return c


def test_stored_configs_of_earlier_versions_read_in_todays_names():
    bias = schema.upgrade(_old_config("bias"), warn=False)
    assert bias["models"] == ["lenet_300_100"] and bias["prune"]["criteria"] == ["mp"]
    assert bias["prune"]["grad_batch"] == 128 and bias["train"]["augment"] == "none"
    assert bias["divergence"] == {"max_loss_ratio": schema.MAX_LOSS_RATIO}
    recall = _old_config("recall")
    recall["prune"]["protocol"], recall["prune"]["gmp"]["post_training"] = "gmp", False
    up = schema.upgrade(recall, warn=False)
    assert up["prune"]["gmp"]["end"] == 6  # 8 training epochs: the earlier rule's 3/4, kept for this workdir
    assert schema.gmp_end(0, 0, 8) == 7  # today's rule
    recall["train"]["epochs"] = 4
    assert schema.upgrade(recall, warn=False)["prune"]["gmp"]["end"] == 0  # both rules give 3: nothing to keep


def test_a_workdir_of_an_earlier_version_is_described_and_resumable(tmp_path):
    path = tmp_path / "old"
    path.mkdir()
    old = _old_config("recall")
    old["num_seeds"] = 2
    (path / "config.json").write_text(json.dumps({"format": 1, "fingerprint": "x", "ignore": [], "config": old}))
    wd = Workdir.existing(path)
    rows = pd.DataFrame({"dataset": "mnist", "model": "lenet_300_100", "criterion": "dense", "seed": [0, 1],
                         "level": 0})
    wd.append_table("recall", "lenet_300_100.dense", rows)
    run = runs.describe(wd)
    assert run.seeds == (0, 1) and run.labels["mp"] == "MP" and run.controls == ("random",)
    assert run.missing_units[:2] == ("lenet_300_100.mp", "lenet_300_100.gp") and not run.complete
    # resuming rewrites config.json in today's names, so the fingerprint guard accepts today's config
    assert spine.upgrade_stored_config(path, recall_study.IGNORED_FIELDS, lambda s: None)
    now = schema.recall_config("mnist")
    now.num_seeds = 2
    Workdir.open(path, now, ignore=recall_study.IGNORED_FIELDS)
