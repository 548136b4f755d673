"""report.recall.pooled_report: several workdirs in one report (recall sweeps, or budget sweeps), and what it
refuses (a workdir twice, budget sweeps mixed with others, two workdirs holding the same networks)."""
from __future__ import annotations

import types
from pathlib import Path

import pandas as pd
import pytest

from configs import mnist
from fairprune_jax.analysis import budget as budget_analysis
from fairprune_jax.analysis import intensification
from fairprune_jax.report import recall as recall_report

from test_budget import _synthetic_budget_table


def _workdir(path: Path, table: pd.DataFrame, variant: str = "budget") -> types.SimpleNamespace:
    """What pooled_report reads of a workdir: its path, its config and its recall table."""
    cfg = mnist.get_config(variant)
    cfg.analysis.bootstrap = 0
    return types.SimpleNamespace(path=path, config=cfg, read_table=lambda name: table.copy())


def _budget(dataset: str) -> pd.DataFrame:
    return _synthetic_budget_table().assign(dataset=dataset)


def _recall(dataset: str) -> pd.DataFrame:
    """A plain recall table: the dense rows and the un-tuned pruned rows, without budget columns."""
    t = _synthetic_budget_table()
    t = t[t["setting"].isna() | (t["setting"] == "none")]
    return t.drop(columns=list(budget_analysis.BUDGET_COLUMNS)).assign(dataset=dataset)


def test_budget_sweeps_pool_with_dataset_as_a_moderator(tmp_path):
    wds = [_workdir(tmp_path / "a", _budget("d1")), _workdir(tmp_path / "b", _budget("d2"))]
    summary = recall_report.pooled_report(wds, tmp_path / "out")
    text = (tmp_path / "out" / "report.md").read_text()
    assert "Recovery budget and recall distortion (pooled)" in text and "report:" in summary
    assert "## d1 / m / MP: E[α_t] by budget" in text and "## d2 / m / MP: E[α_t] by budget" in text
    assert (tmp_path / "out" / "plots" / "budget_alpha.png").is_file()
    fit = pd.read_csv(tmp_path / "out" / "tables" / "pooled_ols_by_setting.csv")
    assert {"dataset", "setting"} <= set(fit["moderator"])
    # pooling does not change a network's α_t: each dataset's α equals its own analysis
    pooled = pd.read_csv(tmp_path / "out" / "tables" / "alpha_networks.csv")
    alone = budget_analysis.analyze(_budget("d1")).alpha
    got = pooled[pooled["dataset"] == "d1"].sort_values(["setting", "seed", "level"])["alpha"].to_numpy()
    assert got == pytest.approx(alone.sort_values(["setting", "seed", "level"])["alpha"].to_numpy(), rel=1e-12)


def test_recall_sweeps_pool_and_keep_each_networks_alpha(tmp_path):
    wds = [_workdir(tmp_path / "a", _recall("d1"), ""), _workdir(tmp_path / "b", _recall("d2"), "")]
    recall_report.pooled_report(wds, tmp_path / "out")
    text = (tmp_path / "out" / "report.md").read_text()
    assert "Recall distortion under pruning (pooled)" in text and f"- `{tmp_path / 'b'}`" in text
    pooled = pd.read_csv(tmp_path / "out" / "tables" / "alpha_networks.csv")
    assert set(pooled["dataset"]) == {"d1", "d2"}
    alone = intensification.alpha(intensification.long_table(_recall("d2"), chance=1.5))
    got = pooled[pooled["dataset"] == "d2"].sort_values(["seed", "level"])["alpha"].to_numpy()
    assert got == pytest.approx(alone.sort_values(["seed", "level"])["alpha"].to_numpy(), rel=1e-12)


@pytest.mark.parametrize("case, match", [
    ("twice", "is given twice"),
    ("mixed", "holds a recovery-budget sweep and .* does not"),
    ("same networks", "both hold networks of dataset=d1, model=m, seed 0"),
])
def test_what_cannot_be_pooled_is_refused_naming_the_workdirs(tmp_path, case, match):
    first = _workdir(tmp_path / "a", _budget("d1"))
    second = {"twice": _workdir(tmp_path / "a", _budget("d2")),
              "mixed": _workdir(tmp_path / "b", _recall("d2"), ""),
              "same networks": _workdir(tmp_path / "b", _budget("d1"))}[case]
    with pytest.raises(ValueError, match=match):
        recall_report.pooled_report([first, second], tmp_path / "out")
    assert not (tmp_path / "out").exists()
