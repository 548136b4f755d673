"""The claims documents: the published text equals what the generator writes from the stored table (a small
golden table), the plan and its commands, and the sequential mode's decisions replayed from stored tables without
training (a fake runner adds stored seeds)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import ml_collections
import numpy as np
import pandas as pd
import pytest

from fairprune_jax import results
from fairprune_jax.analysis import sequential as S
from fairprune_jax.report import claims as R
from fairprune_jax.report import claims_prose as P
from fairprune_jax.report import plan as PL

GOLDEN = Path(__file__).resolve().parent / "golden"


def _golden_table() -> pd.DataFrame:
    text = {c: str for c in ("partial", "note", "route", "cell")}
    return pd.read_csv(GOLDEN / "claims_small.csv", dtype=text).fillna({c: "" for c in text})


def test_published_text_equals_the_generated_text():
    """claims_small.md was published from claims_small.csv (15 rows of the claims table of the default MNIST and
    Fashion-MNIST sweeps, the planted bias study and a synthetic run with UP equal to GP, covering every verdict and
    template): regenerating it must give the same bytes (FAIRPRUNE_REGEN_GOLDEN=1 rewrites it after a deliberate
    change of the templates)."""
    table = _golden_table()
    text = R.claims_markdown(table, ["workdirs/a", "workdirs/b"])
    path = GOLDEN / "claims_small.md"
    if os.environ.get("FAIRPRUNE_REGEN_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()


def test_every_sentence_follows_its_row():
    table = _golden_table()
    for row in table.itertuples():
        sentence = P.why(row)
        assert f"{P.g(row.estimate)} [{P.g(row.ci_low)}, {P.g(row.ci_high)}]" in sentence
        assert {"reproduced": ": reproduced", "not reproduced": ": not reproduced", "equivalent": "no difference",
                "undecided": "undecided"}[row.verdict] in sentence
        assert ("no difference" in sentence) == (row.verdict == "equivalent")  # only TOST says "no difference"
    summary = R.summary_lines(table)
    counts = table["verdict"].value_counts()
    assert all(f"{int(counts.get(v, 0))} {v}" in summary[0] for v in P.MARK)
    for claim, rows in table.groupby("claim", sort=False):
        line = next(s for s in summary if s.startswith(P.TITLE[claim] + ":"))
        for v, r in rows.groupby("verdict"):
            assert (f"{v} in {len(r)} of {len(rows)} setting" if len(rows) > 1 else v) in line


def test_plan_lists_rows_seeds_and_commands():
    table = _golden_table()
    wd = table["workdirs"].iloc[0].split(" | ")[0]
    text = PL.plan_markdown(table, [wd], command=lambda p, n: f"extend {p} to {n}")
    rows = table[table["workdirs"].str.contains(wd, regex=False)]
    need = rows.loc[rows["verdict"] == "undecided", "seeds_needed"]
    for n in sorted({int(x) for x in need if np.isfinite(x) and x <= 100}):
        assert f"extend {wd} to {max(n, int(rows['seeds'].max()))}" in text
        assert f"- {n} seeds would decide {int((need <= n).sum())} of the {len(need)} undecided rows" in text


def test_cli_values_of_overrides():
    assert PL._cli_value('["mlp_100_30"]') == "('mlp_100_30',)"
    assert PL._cli_value("0.0005") == "0.0005" and PL._cli_value("true") == "True" and PL._cli_value('"x"') == "x"


# ---------------------------------------------------------------------------------------------- sequential

def _pool(seeds: int, effect: float) -> pd.DataFrame:
    """Recall rows of `seeds` seeds: MP/GP/UP networks whose class error rates grow `effect`-fold at 90–99%, with
    seed noise."""
    rng = np.random.default_rng(0)
    r0 = np.array([0.99, 0.97, 0.95, 0.98, 0.96])
    rows = []
    for s in range(seeds):
        r0s = np.clip(r0 + 0.004 * rng.standard_normal(5), 0.5, 0.999)
        for c in range(5):
            rows.append(dict(dataset="mnist", model="lenet_300_100", criterion="dense", seed=s, level=0,
                             requested_sparsity=0.0, actual_sparsity=0.0, **{"class": c}, n=1000, recall=r0s[c],
                             accuracy=r0s.mean()))
        for crit in ("mp", "gp", "up"):
            for lvl, sp in enumerate((0.3, 0.9, 0.99)):
                m = (1.0 if sp < 0.5 else effect * (lvl + 1)) * np.exp(0.15 * rng.standard_normal(5))
                rt = 1 - (1 - r0s) ** (0.8 if sp > 0.5 else 1.0) * m * 0.3
                for c in range(5):
                    rows.append(dict(dataset="mnist", model="lenet_300_100", criterion=crit, seed=s, level=lvl + 1,
                                     requested_sparsity=sp, actual_sparsity=sp, **{"class": c}, n=1000,
                                     recall=rt[c], accuracy=rt.mean()))
    return pd.DataFrame(rows)


def _workdir(path: Path, pool: pd.DataFrame, seeds: int) -> Path:
    cfg = ml_collections.ConfigDict(dict(study="recall", dataset="mnist", models=["lenet_300_100"], num_seeds=seeds,
                                         prune=dict(protocol="one_shot", criteria=["mp", "gp", "up"],
                                                    sparsities=[0.3, 0.9, 0.99]),
                                         train=dict(epochs=1, optimizer=dict(weight_decay=0.0)),
                                         finetune=dict(epochs=1, optimizer=dict(lr=0.01)),
                                         analysis=dict(chance_factor=1.5)))
    wd = results.Workdir.open(path, cfg, ignore=("num_seeds",))
    for s in range(seeds):
        if not wd.has("recall", f"seed{s:03d}"):
            wd.append_table("recall", f"seed{s:03d}", pool[pool["seed"] == s].reset_index(drop=True))
    return path


def test_sequential_mode_extends_until_the_claims_decide_and_replays_from_tables(tmp_path):
    pool = _pool(20, effect=3.0)
    wd = _workdir(tmp_path / "wd", pool, 5)
    calls = []

    def runner(cmd: str) -> None:  # stands in for the sweep: "extends" the workdir with stored seeds
        _, path, n = cmd.split()
        calls.append(int(n))
        _workdir(Path(path), pool, int(n))

    out = tmp_path / "seq"
    msg = PL.run_sequential([wd], out, chunk=5, cap=20, runner=runner, command=lambda p, n: f"extend {p} {n}")
    assert "sequential:" in msg
    decisions = pd.read_csv(out / "tables" / "sequential.csv")
    looks = pd.read_csv(out / "tables" / "sequential_looks.csv")
    assert calls == sorted(calls) and all(n in (10, 15, 20) for n in calls)
    # an independent replay of the stored looks gives the same decisions
    design = S.Design(5, 5, 20)
    for paper, g in looks.groupby("paper"):
        hyps = [S.Hypothesis(k, h.sort_values("look")["t"].tolist(), h.sort_values("look")["t_low"].tolist(),
                             h.sort_values("look")["t_high"].tolist()) for k, h in g.groupby("key", sort=False)]
        got = S.decide(design, hyps)
        for row in decisions[decisions["paper"] == paper].itertuples():
            assert got[row.key] == (row.decision, row.look)
    high = decisions[decisions["key"].str.startswith("high |")]
    assert (high["decision"] == "reject").all()
    # the mode stopped at the first look where every row had decided, or at the cap
    last = int(looks["look"].max())
    assert last == len(design.looks) - 1 or (decisions["decision"] != "open").all()
    # rerunning resumes: nothing to add, same report
    before = (out / "sequential.md").read_bytes()
    calls.clear()
    PL.run_sequential([wd], out, chunk=5, cap=20, runner=runner, command=lambda p, n: f"extend {p} {n}")
    assert (out / "sequential.md").read_bytes() == before
    assert calls == [] or (decisions["decision"] == "open").any()
    with pytest.raises(ValueError, match="another sequential design"):
        PL.run_sequential([wd], out, chunk=3, cap=20, runner=runner, command=lambda p, n: f"extend {p} {n}")
    assert json.loads((out / "sequential.json").read_text())["chunk"] == 5


def test_deprecated_names_warn_once_and_still_work():
    import warnings

    from fairprune_jax import deprecation
    from fairprune_jax.analysis import claims as C
    from fairprune_jax.deprecation import FairpruneDeprecationWarning

    deprecation._WARNED.difference_update({"analysis.claims.hanley_mcneil", "report.claims.markdown"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lo, hi = C.hanley_mcneil(0.8, 50, 50)
        C.hanley_mcneil(0.8, 50, 50)
        text = R.markdown(_golden_table())
        R.markdown(_golden_table())
    assert (lo, hi) == pytest.approx((0.8 - 1.959964 * 0.04450, 0.8 + 1.959964 * 0.04450), abs=1e-4)
    assert text.startswith("| paper | claim | null |")
    assert sum(issubclass(w.category, FairpruneDeprecationWarning) for w in caught) == 2  # once each
