"""The claims table: every claim of the two reference studies, tested on stored results (docs/methods.md §13).

Each row is one claim in one setting: the paper's statement, our setting, our estimate with its 95% interval, a
verdict and one generated sentence of why. Units are seeds, so intervals are honest with few of them:

- **Paper 1 (recall distortion).** From each recall run's α_t per network (flagged networks excluded):
  - within a run, the per-seed mean α_t over a regime's networks (high sparsity: requested ≥ 90%; low: ≤ 50%;
    MP/GP/UP), with a one-sample t-interval against 1;
  - criteria compared within a run by the paired per-seed difference, against 0;
  - datasets or models compared across runs by a Welch interval on the per-seed means (scipy).
  - For RQ2, two scale-controlled variants of the dataset comparison (`scale_table`): the log-ratio of α_t to
    α_null = (e_t/e_0)(a_0/a_t), the α_t every network would have if every class's error rate grew by the same
    factor (what a near-ceiling task's tiny δ0 inflates), and the rank correlation ρ(δ0, δt − δ0), which no
    rescaling of δ0 changes.
- **Paper 2 (bias).** From a bias run's per-seed metrics: the paired per-seed difference between the highest
  sparsity at which every bias amplification value is defined and the dense models (uncertainty, interdependence
  R², bias amplification), or between a calibrated threshold scheme and the default one; the identification
  AUROC of the dense-model uncertainty with a Hanley–McNeil interval.

Verdict: reproduced when the interval lies on the claimed side of the null, not reproduced when it lies on the other
side, inconclusive otherwise.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
import pandas as pd

HIGH, LOW = (0.9, 1.0), (0.0, 0.5)  # requested-sparsity regimes (inclusive)
STRUCTURED = ("mp", "gp", "up")  # random pruning is the control, never part of a claim
LEVEL = 0.95


@dataclasses.dataclass(frozen=True)
class Claim:
    """A claim: which paper, its statement, the sign it predicts for the estimate relative to `null`."""

    paper: str
    statement: str
    direction: str  # ">" or "<"
    null: float


CLAIMS = {
    "high": Claim("1", "Pruning intensifies recall distortion at high sparsity (E[α_t] > 1)", ">", 1.0),
    "low": Claim("1", "At low sparsity pruning de-intensifies it (E[α_t] < 1)", "<", 1.0),
    "up_mp": Claim("1", "UP intensifies less than MP (α_t of UP − MP < 0)", "<", 0.0),
    "up_gp": Claim("1", "UP intensifies less than GP (α_t of UP − GP < 0)", "<", 0.0),
    "harder": Claim("1", "Harder tasks intensify more (harder − easier > 0)", ">", 0.0),
    "smaller": Claim("1", "Smaller models intensify more (smaller − larger > 0)", ">", 0.0),
    "uncertainty": Claim("2", "Uncertainty rises with sparsity (pruned − dense > 0)", ">", 0.0),
    "interdependence": Claim("2", "Output interdependence (R²) rises with sparsity (pruned − dense > 0)", ">", 0.0),
    "bias": Claim("2", "Bias amplification rises with sparsity (BA pruned − dense > 0)", ">", 0.0),
    "identify": Claim("2", "Dense-model uncertainty identifies the samples that change (AUROC > 0.5)", ">", 0.5),
    "calibration": Claim("2", "Threshold calibration reduces the bias (BA calibrated − default < 0)", "<", 0.0),
}


@dataclasses.dataclass(frozen=True)
class RecallRun:
    """One recall run: a name, its stored config, and its α_t table (`intensification.alpha`) with `long`."""

    name: str
    config: Any
    alpha: pd.DataFrame
    long: pd.DataFrame
    agreement: dict[tuple[str, str], float] = dataclasses.field(default_factory=dict)  # (a, b) -> `mask_agreement`


def verdict(claim: Claim, low: float, high: float) -> str:
    """reproduced / not reproduced / inconclusive from a (low, high) interval and the claim's direction."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "inconclusive"
    above, below = low > claim.null, high < claim.null
    if claim.direction == ">":
        return "reproduced" if above else "not reproduced" if below else "inconclusive"
    return "reproduced" if below else "not reproduced" if above else "inconclusive"


def _why(claim: Claim, est: float, low: float, high: float, n: str, what: str) -> str:
    side = ("lies above" if low > claim.null else "lies below" if high < claim.null else "includes")
    return f"{what} = {est:.3g} [{low:.3g}, {high:.3g}] ({n}); the interval {side} {claim.null:g}."


def row(key: str, setting: str, est: float, low: float, high: float, n: str, what: str, note: str = "") -> dict:
    """One claims-table row."""
    c = CLAIMS[key]
    why = _why(c, est, low, high, n, what) + (f" {note}" if note else "")
    return dict(claim=key, paper=c.paper, statement=c.statement, setting=setting, estimate=est, ci_low=low,
                ci_high=high, n=n, verdict=verdict(c, low, high), why=why)


# ---------------------------------------------------------------------------------------------- intervals

def one_sample(x: Sequence[float], null: float, level: float = LEVEL) -> tuple[float, float, float, int]:
    """(mean, low, high, n): the t-interval of the mean (`stats.tier_a`)."""
    from fairprune_jax.analysis import stats

    r = stats.tier_a(np.asarray(x, float), level=level, null=null)
    return r["mean"], r["ci_low"], r["ci_high"], r["n"]


def welch(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> tuple[float, float, float]:
    """(mean(a) − mean(b), low, high): Welch's interval (scipy.stats.ttest_ind, unequal variances)."""
    from scipy import stats as sps

    a, b = np.asarray(a, float), np.asarray(b, float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if len(a) < 2 or len(b) < 2:
        return float(np.mean(a) - np.mean(b)) if len(a) and len(b) else np.nan, np.nan, np.nan
    ci = sps.ttest_ind(a, b, equal_var=False).confidence_interval(confidence_level=level)
    return float(a.mean() - b.mean()), float(ci.low), float(ci.high)


def hanley_mcneil(auc: float, n_pos: int, n_neg: int, level: float = LEVEL) -> tuple[float, float]:
    """Normal interval of an AUROC from its numbers of positives and negatives (Hanley & McNeil, 1982)."""
    from scipy import stats as sps

    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc)) / (n_pos * n_neg)
    z = sps.norm.ppf(0.5 + level / 2)
    half = z * np.sqrt(max(var, 0.0))
    return auc - half, auc + half


# ---------------------------------------------------------------------------------------------- paper 1

def seed_means(alpha: pd.DataFrame, *, regime: tuple[float, float], criteria: Sequence[str] = STRUCTURED,
               value: str = "alpha") -> pd.Series:
    """Per-seed mean of `value` over the unflagged networks of `criteria` whose requested sparsity is in `regime`."""
    lo, hi = regime
    sel = alpha[alpha["criterion"].isin(criteria) & alpha["requested_sparsity"].between(lo, hi)
                & ~alpha["flagged"].astype(bool)]
    sel = sel[np.isfinite(sel[value].to_numpy(float))]
    return sel.groupby("seed")[value].mean()


def describe(run: RecallRun, regime: tuple[float, float] | None = None, criteria: Sequence[str] = STRUCTURED,
             omit: str = "") -> str:
    """Our setting in words: dataset · model · protocol · seeds · weight decay · criteria · regime (`omit`
    "dataset" or "model" leaves that field out, for comparisons that name it already)."""
    c = run.config
    wd = float(c.train.optimizer.weight_decay)
    models = "/".join(sorted(run.alpha["model"].unique()))
    proto = c.prune.protocol + (f" ({int(c.train.epochs)} epochs/level)" if c.prune.protocol == "iterative" else "")
    grid = sorted(run.alpha["requested_sparsity"].unique())
    if regime is not None:
        grid = [s for s in grid if regime[0] <= s <= regime[1]]
    span = f"{100 * min(grid):.0f}–{100 * max(grid):.0f}%" if grid else "no sparsity in range"
    crit = "/".join(x.upper() for x in criteria)
    fields = {"dataset": c.dataset, "model": models}
    head = " · ".join(v for k, v in fields.items() if k != omit)
    return f"{head} · {proto} · {int(c.num_seeds)} seeds · wd {wd:g} · {crit} at {span}"


def regime_rows(run: RecallRun) -> list[dict]:
    """The high- and low-sparsity claims in one run."""
    out = []
    for key, regime in (("high", HIGH), ("low", LOW)):
        crits = [c for c in STRUCTURED if c in set(run.alpha["criterion"])]
        m = seed_means(run.alpha, regime=regime, criteria=crits)
        if m.empty:
            continue
        est, lo, hi, n = one_sample(m.to_numpy(), CLAIMS[key].null)
        out.append(row(key, describe(run, regime, crits), est, lo, hi, f"{n} seeds",
                       "mean over seeds of the mean α_t"))
    return out


def criterion_rows(run: RecallRun) -> list[dict]:
    """UP − MP and UP − GP at high sparsity, paired by seed."""
    out = []
    have = set(run.alpha["criterion"])
    for key, other in (("up_mp", "mp"), ("up_gp", "gp")):
        if not {"up", other} <= have:
            continue
        up = seed_means(run.alpha, regime=HIGH, criteria=("up",))
        ref = seed_means(run.alpha, regime=HIGH, criteria=(other,))
        diff = (up - ref).dropna()
        if diff.empty:
            continue
        est, lo, hi, n = one_sample(diff.to_numpy(), 0.0)
        note = f"UP {up.mean():.3g} vs {other.upper()} {ref.mean():.3g}."
        if ("up", other) in run.agreement:
            note += (f" {100 * run.agreement[('up', other)]:.1f}% of the weights UP keeps are kept by "
                     f"{other.upper()} too (mean over seeds and sparsities).")
        out.append(row(key, describe(run, HIGH, ("up", other)), est, lo, hi, f"{n} seeds, paired",
                       f"E[α_t] UP − {other.upper()}", note))
    return out


def compare_rows(key: str, harder: RecallRun, easier: RecallRun, label: str, *, value: str = "alpha",
                 table: tuple[pd.DataFrame, pd.DataFrame] | None = None, what: str = "E[α_t]",
                 omit: str = "dataset") -> dict | None:
    """A Welch comparison of per-seed high-sparsity means between two runs (harder/smaller minus the other)."""
    a_h, a_e = table if table is not None else (harder.alpha, easier.alpha)
    crits = [c for c in STRUCTURED if c in set(a_h["criterion"]) & set(a_e["criterion"])]
    mh, me = (seed_means(t, regime=HIGH, criteria=crits, value=value) for t in (a_h, a_e))
    if mh.empty or me.empty:
        return None
    est, lo, hi = welch(mh.to_numpy(), me.to_numpy())
    setting = f"{label} · {describe(harder, HIGH, crits, omit=omit)}"
    return row(key, setting, est, lo, hi, f"{len(mh)} vs {len(me)} seeds, Welch",
               f"{what} difference", f"{mh.mean():.3g} vs {me.mean():.3g}.")


def scale_table(long: pd.DataFrame, alpha: pd.DataFrame) -> pd.DataFrame:
    """α_t with its two scale-controlled companions per network: `log_excess` = log(α_t / α_null) with
    α_null = (e_t/e_0)(a_0/a_t) (uniform error growth; NaN unless both are positive) and `rank_rho` =
    Spearman ρ(δ0, δt − δ0) over the network's classes."""
    from scipy import stats as sps

    keys = ["dataset", "model", "criterion", "seed", "level"]
    out = alpha.copy()
    e0, et = 1.0 - out["a0"].to_numpy(float), 1.0 - out["at"].to_numpy(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        null = (et / e0) * (out["a0"].to_numpy(float) / out["at"].to_numpy(float))
        a = out["alpha"].to_numpy(float)
        out["alpha_null"] = null
        out["log_excess"] = np.where((a > 0) & (null > 0), np.log(a / null), np.nan)
    ok = long[np.isfinite(long["d0"].to_numpy(float)) & np.isfinite(long["dt"].to_numpy(float))]

    def rho(g: pd.DataFrame) -> float:
        if len(g) < 3 or g["d0"].nunique() < 2:
            return np.nan
        return float(sps.spearmanr(g["d0"], g["dt"] - g["d0"]).statistic)

    r = ok.groupby(keys)[["d0", "dt"]].apply(rho).rename("rank_rho").reset_index()
    return out.merge(r, on=keys, how="left")


def dataset_rows(runs: Sequence[RecallRun]) -> list[dict]:
    """RQ2: runs alike but for the dataset, the harder one (lower dense accuracy) minus the easier; raw α_t and
    the two scale-controlled measures of `scale_table`."""
    out = []
    for a, b in _pairs(runs, differ="dataset"):
        hard, easy = (a, b) if _dense_accuracy(a) < _dense_accuracy(b) else (b, a)
        label = f"{hard.config.dataset} (dense acc {_dense_accuracy(hard):.3f}) vs {easy.config.dataset} " \
                f"({_dense_accuracy(easy):.3f})"
        out.append(compare_rows("harder", hard, easy, label))
        scaled = (scale_table(hard.long, hard.alpha), scale_table(easy.long, easy.alpha))
        out.append(compare_rows("harder", hard, easy, label + " · δ0-scale controlled: log(α_t / α_null)",
                                value="log_excess", table=scaled, what="mean log(α_t/α_null)"))
        out.append(compare_rows("harder", hard, easy, label + " · rank-based: Spearman ρ(δ0, δt − δ0)",
                                value="rank_rho", table=scaled, what="mean ρ"))
    return [r for r in out if r is not None]


def model_rows(runs: Sequence[RecallRun]) -> list[dict]:
    """RQ3: runs alike but for the model, the smaller one (fewer parameters) minus the larger."""
    out = []
    for a, b in _pairs(runs, differ="models"):
        small, large = (a, b) if _n_params(a) < _n_params(b) else (b, a)
        label = f"{small.alpha['model'].iloc[0]} ({_n_params(small):,} parameters) vs {large.alpha['model'].iloc[0]} " \
                f"({_n_params(large):,})"
        out.append(compare_rows("smaller", small, large, label, omit="model"))
    return [r for r in out if r is not None]


def _signature(run: RecallRun, without: str) -> tuple:
    c = run.config
    sig = dict(dataset=c.dataset, models=tuple(c.models), protocol=c.prune.protocol, seeds=int(c.num_seeds),
               wd=float(c.train.optimizer.weight_decay), epochs=int(c.train.epochs),
               ft=(int(c.finetune.epochs), float(c.finetune.optimizer.lr)), grid=tuple(c.prune.sparsities))
    sig.pop(without)
    return tuple(sorted(sig.items()))


def _pairs(runs: Sequence[RecallRun], *, differ: str) -> list[tuple[RecallRun, RecallRun]]:
    """Pairs of runs equal in every design field but `differ` (dataset or models)."""
    out = []
    for i, a in enumerate(runs):
        for b in runs[i + 1:]:
            if _signature(a, differ) == _signature(b, differ) and (
                    a.config.dataset != b.config.dataset if differ == "dataset"
                    else tuple(a.config.models) != tuple(b.config.models)):
                out.append((a, b))
    return out


def _dense_accuracy(run: RecallRun) -> float:
    return float(run.alpha.groupby("seed")["a0"].first().mean())


def model_spec(config: Any) -> Any:
    """The ModelSpec of a recall run's (first) model on its dataset."""
    from fairprune_jax import data as data_lib
    from fairprune_jax import models as models_lib

    info = data_lib.info(config.dataset)
    return models_lib.get_model(config.models[0], num_outputs=info.num_classes, input_shape=info.image_shape)


def _n_params(run: RecallRun) -> int:
    """Parameters of the run's (first) model, from its shapes."""
    import jax

    params = jax.eval_shape(model_spec(run.config).init, jax.random.key(0))["params"]
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


# ---------------------------------------------------------------------------------------------- paper 2

def bias_rows(config: Any, metrics: pd.DataFrame, identification: pd.DataFrame) -> list[dict]:
    """Paper 2's claims in one bias run: the highest sparsity with every BA value defined vs the dense models."""
    m = metrics
    ba = m[(m["metric"] == "ba") & (m["scheme"] == "default") & (m["population"] == "sparse")]
    full = [s for s, g in ba.groupby("sparsity") if g["value"].notna().all()]
    if not full:
        return []
    s_high = float(max(full))
    model = (config.get("models", None) or [config.get("model")])[0]  # plural names; earlier configs: singular
    crit = (config.prune.get("criteria", None) or [config.prune.get("criterion")])[0]
    setting = (f"{config.dataset} · {model} · {config.prune.protocol} {crit.upper()} · "
               f"{int(config.num_seeds)} seeds · {100 * s_high:.0f}% (highest sparsity with every BA defined)")

    def per_seed(metric: str, population: str, scheme: str = "default") -> pd.Series:
        sel = m[(m["metric"] == metric) & (m["scheme"] == scheme) & (m["population"] == population)]
        if population == "sparse":
            sel = sel[np.isclose(sel["sparsity"].astype(float), s_high)]
        return sel.groupby("seed")["value"].mean()

    out = []
    for key, metric, what in (("uncertainty", "uncertainty", "mean uncertainty"),
                              ("interdependence", "r2", "mean interdependence R²"),
                              ("bias", "ba", "mean BA")):
        sp, de = per_seed(metric, "sparse"), per_seed(metric, "dense")
        d = (sp - de).dropna()
        est, lo, hi, n = one_sample(d.to_numpy(), 0.0)
        out.append(row(key, setting + " vs dense", est, lo, hi, f"{n} seeds, paired", f"{what}, pruned − dense",
                       f"{sp.mean():.3g} vs {de.mean():.3g}."))
    ident = identification[np.isclose(identification["sparsity"].astype(float), s_high)
                           & (identification["subset"] == "all")]
    unc, rnd = ident[ident["criterion"] == "uncertainty"], ident[ident["criterion"] == "random"]
    if not unc.empty:
        r = unc.iloc[0]
        lo, hi = hanley_mcneil(float(r["auroc"]), int(r["n_cie"]), int(r["n"] - r["n_cie"]))
        note = (f"Random score: {float(rnd.iloc[0]['auroc']):.3f}. " if not rnd.empty else "") + \
               "Units are sample × attribute pairs pooled over seeds, so the interval is optimistic."
        out.append(row("identify", setting, float(r["auroc"]), lo, hi, f"{int(r['n_cie'])} changed of {int(r['n'])}",
                       "AUROC of the dense uncertainty for the CIEs", note))
    base = per_seed("ba", "sparse")
    for scheme in ("global", "group"):
        d = (per_seed("ba", "sparse", scheme) - base).dropna()
        if d.empty:
            continue
        est, lo, hi, n = one_sample(d.to_numpy(), 0.0)
        out.append(row("calibration", f"{setting}, {scheme} thresholds", est, lo, hi, f"{n} seeds, paired",
                       f"mean BA, {scheme} − default thresholds"))
    return out


# ---------------------------------------------------------------------------------------------- table

def recall_run(name: str, config: Any, recall: pd.DataFrame, *, chance: float = 1.5,
               agreement: dict[tuple[str, str], float] | None = None) -> RecallRun:
    """α_t and the long table of a stored recall table (diverged networks left out)."""
    from fairprune_jax.analysis import intensification

    if "diverged" in recall:
        recall = recall[~recall["diverged"].astype(bool)]
    long = intensification.long_table(recall.reset_index(drop=True), chance=chance)
    return RecallRun(name, config, intensification.alpha(long), long, dict(agreement or {}))


def mask_agreement(masks: dict[str, Any], sparsities: Sequence[float], prunable: Any,
                   pairs: Sequence[tuple[str, str]] = (("up", "mp"), ("up", "gp"))) -> dict[tuple[str, str], float]:
    """Mean `masks.agreement` over seeds and the high-sparsity grid points, for each pair of criteria whose masks
    [S, 1, P, ...] are given."""
    from fairprune_jax import masks as masks_lib

    high = [i for i, s in enumerate(sparsities) if HIGH[0] <= s <= HIGH[1]]
    out = {}
    for a, b in pairs:
        if a in masks and b in masks and high:
            agree = np.asarray(masks_lib.agreement(masks[a], masks[b], prunable, lead=3))
            out[(a, b)] = float(np.nanmean(agree[:, :, high]))
    return out


def build(recall_runs: Sequence[RecallRun], bias_runs: Sequence[tuple[Any, pd.DataFrame, pd.DataFrame]]
          ) -> pd.DataFrame:
    """The claims table, ordered by claim: every applicable run for within-run claims, every comparable pair of runs
    for RQ2/RQ3, every bias run (config, metrics table, identification table) for paper 2."""
    rows: list[dict] = []
    for run in recall_runs:
        rows += regime_rows(run) + criterion_rows(run)
    rows += dataset_rows(recall_runs) + model_rows(recall_runs)
    for config, metrics, ident in bias_runs:
        rows += bias_rows(config, metrics, ident)
    if not rows:
        raise ValueError("claims: no claim could be tested on these workdirs (give recall and/or bias runs)")
    order = {k: i for i, k in enumerate(CLAIMS)}
    df = pd.DataFrame(rows)
    return df.sort_values("claim", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)
