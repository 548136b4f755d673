"""Every sentence of the claims' results, generated from the claims table (templates keyed by verdict and claim
kind; docs/methods.md §14). Nothing here reads a number that is not in the table, so no sentence can contradict a
row: `why` explains one row, `summary_lines` are the short summary (a README's few lines), `findings_lines` the
longer findings section, `two_nulls_lines` say what the difference between the two nulls means in each run.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

KIND = {  # claim → the template family of its sentences
    "high": "regime", "low": "regime", "high_uniform": "uniform", "low_uniform": "uniform", "rises": "trend",
    "up_mp": "ratio", "up_gp": "ratio", "up_mp_uniform": "ratio", "up_gp_uniform": "ratio", "harder": "ratio",
    "harder_uniform": "ratio", "smaller": "ratio", "smaller_uniform": "ratio", "harder_rank": "difference",
    "uncertainty": "difference", "interdependence": "difference", "bias": "difference",
    "calibration": "difference", "identify": "auroc",
}
WHAT = {  # the estimate in words, per template family
    "regime": "typical α_t", "uniform": "α_t/α_null", "trend": "slope of α_t on log 1/(1 − s)",
    "ratio": "ratio", "difference": "difference", "auroc": "AUROC",
}
MARK = {"reproduced": "✅ reproduced", "not reproduced": "❌ not reproduced",
        "equivalent": "🟰 equivalent (no difference)", "undecided": "➖ undecided"}
TITLE = {  # claim → heading of its findings
    "high": "Intensification at high sparsity", "high_uniform": "Intensification at high sparsity, beyond uniform "
    "error growth", "low": "De-intensification at low sparsity", "low_uniform": "De-intensification at low "
    "sparsity, against uniform error growth", "rises": "α_t rises with sparsity", "up_mp": "UP against MP",
    "up_mp_uniform": "UP against MP, beyond uniform error growth", "up_gp": "UP against GP",
    "up_gp_uniform": "UP against GP, beyond uniform error growth", "harder": "Harder tasks",
    "harder_uniform": "Harder tasks, beyond uniform error growth", "harder_rank": "Harder tasks, by ranks",
    "smaller": "Smaller models", "smaller_uniform": "Smaller models, beyond uniform error growth",
    "uncertainty": "Uncertainty", "interdependence": "Output interdependence", "bias": "Bias amplification",
    "identify": "Identifying the samples that change", "calibration": "Threshold calibration",
}


def g(x: float) -> str:
    """A number as the table shows it (3 significant digits)."""
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "nan" if x is None or np.isnan(x) else ("inf" if x > 0 else "-inf")
    return f"{x:.3g}"


def _p(p: float, name: str = "p") -> str:
    """'p = 0.012', 'p < 0.0001' (or with another name, e.g. 'Holm p')."""
    return f"{name} = nan" if not np.isfinite(p) else (f"{name} < 0.0001" if p < 1e-4 else f"{name} = {p:.2g}")


def seeds_text(row) -> str:
    """'about N seeds per run would decide it' from the plan (or why no plan)."""
    need = row.seeds_needed
    if not np.isfinite(need):
        return ("no number of seeds would decide the observed effect (it is 0)" if need == np.inf
                else "no seed plan (no spread across seeds)")
    route = "to show equivalence" if row.route == "equivalence" else "to show a difference"
    return f"about {int(need)} seeds per run would decide it {route} at 80% power"


def verdict_clause(row) -> str:
    """The verdict of one row and why, in one clause."""
    null = row.null_value
    v, raw = row.verdict, row.verdict_raw
    if v == "reproduced":
        side = "above" if row.estimate > null else "below"
        text = f"the estimate lies {side} {g(null)} as claimed ({_p(row.p_holm, 'Holm p')}): reproduced"
    elif v == "not reproduced":
        side = "above" if row.estimate > null else "below"
        text = f"the estimate lies {side} {g(null)}, against the claim ({_p(row.p_holm, 'Holm p')}): not reproduced"
    elif v == "equivalent":
        text = (f"no difference from {g(null)}: the effect lies within the margin [{g(row.margin_low)}, "
                f"{g(row.margin_high)}] ({_p(row.p_tost_holm, 'TOST Holm p')})")
    elif raw in ("reproduced", "not reproduced"):
        text = (f"undecided: the difference from {g(null)} is significant before the Holm adjustment only "
                f"({_p(row.p)}, {_p(row.p_holm, 'Holm p')}); {seeds_text(row)}")
    elif raw == "equivalent":
        text = (f"undecided: equivalence within [{g(row.margin_low)}, {g(row.margin_high)}] holds before the Holm "
                f"adjustment only ({_p(row.p_tost, 'TOST p')}, {_p(row.p_tost_holm, 'Holm p')}); {seeds_text(row)}")
    else:
        if np.isfinite(row.margin_low):
            text = (f"undecided: neither a difference from {g(null)} ({_p(row.p)}) nor equivalence within "
                    f"[{g(row.margin_low)}, {g(row.margin_high)}] ({_p(row.p_tost, 'TOST p')}) is shown; "
                    f"{seeds_text(row)}")
        else:
            text = f"undecided: a difference from {g(null)} is not shown ({_p(row.p)}); {seeds_text(row)}"
    return text


def why(row) -> str:
    """One row's sentence: the estimate with its interval and seeds, the verdict and why, then the row's notes."""
    what = WHAT[KIND[row.claim]]
    cell = getattr(row, "cell", "")
    at = f" at {cell} (the most significant sparsity; interval Bonferroni-adjusted)" if isinstance(cell, str) \
        and cell else ""
    head = f"{what}{at} = {g(row.estimate)} [{g(row.ci_low)}, {g(row.ci_high)}] ({row.n})"
    tail = [row.note] if isinstance(row.note, str) and row.note else []
    if isinstance(row.partial, str) and row.partial:
        tail.append(f"Built on a partial workdir ({row.partial}).")
    return " ".join([f"{head}; {verdict_clause(row)}."] + tail)


def _short(row) -> str:
    """The row's setting without the criteria and sparsity span (for lists of settings)."""
    parts = [p for p in str(row.setting).split(" · ") if not (" at " in p and "%" in p)]
    return " · ".join(parts)


def _listing(rows: pd.DataFrame) -> str:
    def at(r) -> str:
        cell = getattr(r, "cell", "")
        return f" at {cell}" if isinstance(cell, str) and cell else ""
    return "; ".join(f"{_short(r)} ({g(r.estimate)} [{g(r.ci_low)}, {g(r.ci_high)}]{at(r)})"
                     for r in rows.itertuples())


def summary_lines(table: pd.DataFrame) -> list[str]:
    """The short summary (a README's few lines): the verdict counts, then per claim how many of its settings each
    verdict holds (the findings name them)."""
    counts = table["verdict"].value_counts()
    papers = ", ".join(f"paper {p}: {n}" for p, n in table.groupby("paper", sort=False).size().items())
    lines = [f"{len(table)} rows ({papers}); after Holm within each paper: "
             + ", ".join(f"{int(counts.get(v, 0))} {v}" for v in MARK) + "."]
    for claim, rows in table.groupby("claim", sort=False):
        n = len(rows)
        parts = [f"{v} in {len(r)} of {n} setting{'s' if n > 1 else ''}" if n > 1 else v
                 for v, r in rows.groupby("verdict", sort=False)]
        lines.append(f"{TITLE.get(claim, claim)}: {', '.join(parts)}.")
    return lines


def two_nulls_lines(table: pd.DataFrame) -> list[str]:
    """Per run and regime with both nulls, what the difference between them means."""
    out = []
    for regime, word in (("high", "high"), ("low", "low")):
        one, uni = table[table["claim"] == regime], table[table["claim"] == f"{regime}_uniform"]
        for r in one.itertuples():
            match = uni[uni["workdirs"] == r.workdirs]
            if match.empty:
                continue
            u = next(match.itertuples())
            out.append(f"{_short(r)}, {word} sparsity: {_two_nulls(r, u)}")
    return out


def _two_nulls(one, uni) -> str:
    """What the pair of verdicts (against α_t = 1, against uniform error growth) means."""
    a = {"reproduced": "more", "not reproduced": "less"}
    side_one = ("above" if one.estimate > 1 else "below") if one.verdict in a else None
    if one.verdict in a and uni.verdict in ("reproduced", "not reproduced"):
        rel = "more" if uni.estimate > 1 else "less"
        return (f"α_t lies {side_one} 1 ({g(one.estimate)}) and distorts recall {rel} than if every class's error "
                f"rate had grown by the same factor (α_t/α_null = {g(uni.estimate)}), so the change in distortion "
                + ("goes beyond what the accuracy loss alone implies." if rel == "more" else
                   "is smaller than what the accuracy loss alone implies."))
    if one.verdict in a and uni.verdict == "equivalent":
        return (f"α_t lies {side_one} 1 ({g(one.estimate)}) and within the margin of uniform error growth "
                f"(α_t/α_null = {g(uni.estimate)}): the change in distortion is what the accuracy loss implies.")
    if one.verdict in a:
        return (f"α_t lies {side_one} 1 ({g(one.estimate)}); against uniform error growth the row is "
                f"{uni.verdict} (α_t/α_null = {g(uni.estimate)}).")
    return (f"against α_t = 1 the row is {one.verdict} ({g(one.estimate)}); against uniform error growth it is "
            f"{uni.verdict} (α_t/α_null = {g(uni.estimate)}).")


def findings_lines(table: pd.DataFrame) -> list[str]:
    """The findings section: per claim a heading, the settings grouped by verdict, one bullet per setting (its
    `why`)."""
    lines: list[str] = []
    for claim, rows in table.groupby("claim", sort=False):
        lines += [f"### {TITLE.get(claim, claim)}", "", f"*{rows['statement'].iloc[0]}*; estimand: "
                  f"{rows['estimand'].iloc[0]}; null: {rows['null'].iloc[0]}.", ""]
        lines += [" ".join(f"{v.capitalize()} in {_listing(r)}." for v, r in rows.groupby("verdict", sort=False)), ""]
        lines += [f"- {_short(r)}: {why(r)}" for r in rows.itertuples()]
        lines.append("")
    both = two_nulls_lines(table)
    if both:
        lines += ["### The two nulls", ""] + [f"- {s}" for s in both] + [""]
    return lines


def sentences(lines: Iterable[str]) -> list[str]:
    """Every sentence of some generated lines (for tests that compare published text with the generator)."""
    out = []
    for line in lines:
        out += [s.strip() for s in line.replace("\n", " ").split(". ") if s.strip()]
    return out
