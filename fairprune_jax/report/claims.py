"""The claims report: `analysis.claims.build` over several stored runs → `claims.md`, `tables/claims.csv` and
`tables/claims_seeds.csv` (`python -m experiments.report --claims --workdir=... --workdir=... --out=...`).

The report builds each run's typed `RunDescription` from its config.json and stored tables (`model_sizes` and
`mask_agreement` when the run wrote them), and every sentence from the table (`report.claims_prose`):
`claims_markdown(table)` is the document, `summary_lines(table)` its short summary.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from fairprune_jax import deprecation, results
from fairprune_jax.analysis import claims as C
from fairprune_jax.report import claims_prose as P
from fairprune_jax.report import runs
from fairprune_jax.report import writer as W
from fairprune_jax.studies import recall_layout

RECALL_TABLE = recall_layout.RECALL
summary_lines = P.summary_lines
findings_lines = P.findings_lines


# ---------------------------------------------------------------------------------------------- runs

def _get(cfg: Any, dotted: str, default: Any = None) -> Any:
    node = cfg
    for part in dotted.split("."):
        if not hasattr(node, "keys") or part not in node.keys():
            return default
        node = node[part]
    return node


def _plural(cfg: Any, field: str) -> tuple[str, ...]:
    """A list field (the bias study's older singular names are upgraded by `runs.config_of`)."""
    v = _get(cfg, field)
    if v is None:
        return ()
    return (str(v),) if isinstance(v, str) else tuple(str(x) for x in v)


def describe_run(name: str, wd: Any) -> C.RunDescription:
    """The `RunDescription` of a stored workdir: design fields from config.json, parameter counts from its
    `model_sizes` table (a run without that table says so in `sizes_note`), missing units from its tables."""
    cfg = runs.config_of(wd)  # today's names, also for workdirs of earlier versions
    study = str(_get(cfg, "study", "recall"))
    models = _plural(cfg, "models")
    criteria = _plural(cfg, "prune.criteria")
    desc = dict(name=name, study=study, dataset=str(cfg.dataset), models=models,
                protocol=str(_get(cfg, "prune.protocol", "")), criteria=criteria,
                sparsities=tuple(float(s) for s in _get(cfg, "prune.sparsities", ())),
                num_seeds=int(cfg.num_seeds), weight_decay=float(_get(cfg, "train.optimizer.weight_decay", 0.0)),
                epochs=int(_get(cfg, "train.epochs", 0)), finetune_epochs=int(_get(cfg, "finetune.epochs", 0)),
                finetune_lr=float(_get(cfg, "finetune.optimizer.lr", 0.0)),
                chance=float(_get(cfg, "analysis.chance_factor", 1.5)))
    if study == "recall":
        sizes, note = _model_sizes(wd, models, str(cfg.dataset))
        desc.update(n_params=sizes, sizes_note=note)
    return C.RunDescription(**desc)


def _model_sizes(wd: Any, models: Sequence[str], dataset: str) -> tuple[dict[str, int], str]:
    """Parameter counts from the run's `model_sizes` table. A run written before that table existed has none: the
    claims that need sizes say so (resuming the run with its sweep command adds the table without retraining)."""
    table = wd.read_table("model_sizes") if "model_sizes" in wd.tables() else pd.DataFrame()
    if not table.empty:
        return {str(m): int(n) for m, n in zip(table["model"], table["n_params"])}, ""
    return {}, ("No parameter counts: the workdir has no model_sizes table (resume it with its sweep command to add "
                "the table).")


def _agreement(wd: Any, model: str | None = None) -> dict[tuple[str, str], float]:
    """Mean mask agreement over seeds and high-sparsity grid points per pair of criteria, from the run's
    `mask_agreement` table (of `model` alone when given; empty when the run has none)."""
    if "mask_agreement" not in wd.tables():
        return {}
    t = wd.read_table("mask_agreement")
    if model is not None and "model" in t:
        t = t[t["model"] == model]
    if t.empty:
        return {}
    t = t[t["requested_sparsity"].between(*C.HIGH)]
    out = {}
    for (a, b), g in t.groupby(["criterion_a", "criterion_b"]):
        out[(str(a), str(b))] = out[(str(b), str(a))] = float(np.nanmean(g["agreement"].to_numpy(float)))
    return out


def _missing_recall(desc: C.RunDescription, recall: pd.DataFrame) -> tuple[str, ...]:
    """Units of the design (model × criterion × seed) with no stored row."""
    have = set(zip(recall["model"], recall["criterion"], recall["seed"]))
    out = []
    for m in desc.models:
        for c in ("dense", *desc.criteria):
            miss = [s for s in range(desc.num_seeds) if (m, c, s) not in have]
            if miss:
                out.append(f"{m}.{c} seed{'s' if len(miss) > 1 else ''} {_ranges(miss)}")
    return tuple(out)


def _missing_bias(desc: C.RunDescription, metrics: pd.DataFrame) -> tuple[str, ...]:
    have = {round(float(s), 6) for s in metrics.loc[metrics["population"] == "sparse", "sparsity"]}
    return tuple(f"sparsity {s:g}" for s in desc.sparsities if round(s, 6) not in have)


def _ranges(xs: Sequence[int]) -> str:
    xs = sorted(xs)
    parts, start = [], xs[0]
    for a, b in zip(xs, xs[1:] + [None]):
        if b != a + 1:
            parts.append(f"{start}" if start == a else f"{start}–{a}")
            start = b
    return ", ".join(parts)


def load(workdirs: Sequence[Path]):
    """(recall runs, bias runs) of the workdirs; budget-protocol runs are left out (they test no paper claim)."""
    runs.check_distinct(workdirs)
    recall_runs, bias_runs = [], []
    for path in workdirs:
        wd = results.Workdir.existing(path)
        desc = describe_run(str(path), wd)
        if desc.study == "bias":
            metrics, ident = wd.read_table("metrics"), wd.read_table("identification")
            if metrics.empty:
                raise ValueError(f"{path}: the bias run has no stored metrics yet")
            desc = C.dataclasses.replace(desc, missing_units=_missing_bias(desc, metrics))
            bias_runs.append((desc, metrics, ident))
            continue
        if desc.protocol == "budget":
            continue
        recall = wd.read_table(RECALL_TABLE)
        if recall.empty:
            raise ValueError(f"{path}: no results yet (table {RECALL_TABLE!r} is empty)")
        desc = C.dataclasses.replace(desc, missing_units=_missing_recall(desc, recall))
        if len(desc.models) == 1:
            recall_runs.append(C.recall_run(desc, recall, agreement=_agreement(wd)))
            continue
        for model, part in per_model(desc):  # claims are about one model: a sweep of several is one run per model
            recall_runs.append(C.recall_run(part, recall[recall["model"] == model], agreement=_agreement(wd, model)))
    return recall_runs, bias_runs


def per_model(desc: C.RunDescription) -> list[tuple[str, C.RunDescription]]:
    """A run of several models as one description per model, named ``<workdir> [<model>]``: each keeps the run's
    design, its own parameter count and its own missing units. The model-size claims (RQ3) then compare a sweep's
    models with each other like separate runs."""
    return [(m, C.dataclasses.replace(
        desc, name=f"{desc.name} [{m}]", models=(m,), n_params={k: v for k, v in desc.n_params.items() if k == m},
        missing_units=tuple(u for u in desc.missing_units if u.startswith(f"{m}.")))) for m in desc.models]


# ---------------------------------------------------------------------------------------------- document

def table_view(table: pd.DataFrame) -> pd.DataFrame:
    """The claims as the markdown table shows them."""
    def est(r) -> str:
        return f"{P.g(r.estimate)} [{P.g(r.ci_low)}, {P.g(r.ci_high)}]"

    def need(r) -> str:
        return "—" if r.verdict != "undecided" else (f"{int(r.seeds_needed)}" if np.isfinite(r.seeds_needed)
                                                      else "∞" if r.seeds_needed == np.inf else "?")
    rows = list(table.itertuples())
    return pd.DataFrame({
        "paper": table["paper"], "claim": table["statement"], "null": table["null"], "our setting": table["setting"],
        "estimate [95% CI]": [est(r) for r in rows], "raw": table["verdict_raw"],
        "verdict (Holm)": table["verdict"].map(P.MARK), "seeds to decide": [need(r) for r in rows],
        "why": [P.why(r) for r in rows]})


def markdown(claims: pd.DataFrame) -> str:
    """Deprecated (warns once): the claims as one markdown table; use `claims_markdown` (the document) or
    `table_view`."""
    deprecation.warn_once("report.claims.markdown", "report.claims.markdown is deprecated; use "
                          "report.claims.claims_markdown or report.claims.table_view")
    return W.markdown_table(table_view(claims))


def protocol_lines() -> list[str]:
    """What the verdicts mean (the constants of the protocol, docs/methods.md §14)."""
    return [
        f"Seeds are the unit: each row reduces every run to one value per seed and tests those values (t, paired t "
        f"or Welch; the AUROC by Hanley–McNeil). Verdicts at α = {C.ALPHA:g} after Holm within each paper: "
        "reproduced (the claimed side), not reproduced (the other side), equivalent (no difference: TOST within "
        "the claim's margin), undecided (with the seeds per run that would decide the observed effect at 80% "
        "power). Ratios (α_t, α_t/α_null, UP/MP, harder/easier) are tested on the log scale and equivalent within a "
        f"factor {np.exp(C.RATIO_MARGIN):g}. High sparsity is a requested sparsity of at least 90%, low at most "
        "50%; MP, GP and UP networks, flagged (near-chance) networks excluded; random pruning is a control."]


def claims_markdown(table: pd.DataFrame, workdirs: Sequence[str | Path] = ()) -> str:
    """The claims document: banner (partial inputs), sources, protocol, short summary, table, findings."""
    lines = ["# Claims of the two reference studies, tested on stored results", ""]
    partial = sorted(set(x for x in table["partial"] if isinstance(x, str) and x))
    if partial:
        lines += [f"**Incomplete inputs:** rows marked partial were built on workdirs with missing units "
                  f"({'; '.join(partial)}).", ""]
    if workdirs:
        lines += ["Generated by `experiments.report --claims` from these workdirs:", "",
                  *[f"- `{p}`" for p in workdirs], ""]
    lines += protocol_lines() + ["", "## In short", ""] + [f"- {s}" for s in summary_lines(table)] + [""]
    lines += ["## Table", "", W.markdown_table(table_view(table)), "", "## Findings", ""] + findings_lines(table)
    return "\n".join(lines).rstrip("\n") + "\n"


def write(workdirs: Sequence[Path], out: Path) -> str:
    """Build the claims table from the workdirs and write `claims.md`, `tables/claims.csv` and
    `tables/claims_seeds.csv` (the per-seed values behind each row) into `out`."""
    recall_runs, bias_runs = load(workdirs)
    table, values = C.build(recall_runs, bias_runs, with_values=True)
    W.atomic_write(out / "claims.md", claims_markdown(table, workdirs).encode())
    W.atomic_write(out / W.TABLES_DIR / "claims.csv", table.to_csv(index=False).encode())
    W.atomic_write(out / W.TABLES_DIR / "claims_seeds.csv", values.to_csv(index=False).encode())
    counts = {v: int(n) for v, n in table["verdict"].value_counts().items()}
    return f"claims: {out / 'claims.md'} ({len(table)} rows: {counts})"
