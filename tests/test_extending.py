"""A criterion added from outside the package, as a new user would (one function, one decorator), runs through the
smoke sweep, its report and the claims table; the run's model_sizes and mask_agreement tables match independent
computations; the results document equals what its command generates."""
from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fairprune_jax import checkpoints, configs, pipeline, results, scores
from fairprune_jax.report import claims as claims_report
from fairprune_jax.report import results_doc, runs

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """A smoke sweep with MP and a toy criterion registered here (w², which ranks like MP: a known agreement)."""

    @scores.register("toy_sq", description="w squared, a criterion defined outside the package", label="Toy²")
    def toy(params, **unused):
        return jax.tree.map(jnp.square, params)

    try:
        cfg = configs.get("mnist", "smoke")
        cfg.num_seeds, cfg.prune.criteria, cfg.analysis.bootstrap, cfg.progress = 2, ("mp", "toy_sq", "random"), 0, False
        cfg.data.max_train_examples = 3000
        wd = tmp_path_factory.mktemp("extending") / "toy"
        summary = pipeline.run(cfg, workdir=wd, log=lambda s: None, command="fairprune-sweep --config=mnist:smoke")
        yield cfg, wd, summary
    finally:
        scores.CRITERIA.pop("toy_sq", None)


@pytest.mark.slow
def test_a_criterion_registered_outside_runs_through_sweep_report_and_claims(toy_run, tmp_path):
    cfg, wd, summary = toy_run
    w = results.Workdir.existing(wd)
    rec = w.read_table("recall")
    assert set(rec["criterion"]) == {"dense", "mp", "toy_sq", "random"}
    pruned = rec[rec["criterion"] == "toy_sq"]
    assert (pruned["actual_sparsity"] - pruned["requested_sparsity"]).abs().max() < 1e-3
    summary_section = (wd / "report.md").read_text().split("## Summary", 1)[1].split("## Reading", 1)[0]
    assert "| sparsity | MP | Toy² | RANDOM |" in summary_section  # config order, the registry's label
    described = runs.describe(w)
    assert described.labels["toy_sq"] == "Toy²" and described.controls == ("random",) and described.complete
    assert "claims:" in claims_report.write([wd], tmp_path / "claims")


@pytest.mark.slow
def test_model_sizes_and_mask_agreement_match_independent_computations(toy_run):
    cfg, wd, _ = toy_run
    w = results.Workdir.existing(wd)
    sizes = w.read_table("model_sizes")
    # LeNet-300-100 on 28×28×1 with 10 classes: kernels 784·300 + 300·100 + 100·10, biases 300 + 100 + 10
    assert sizes.to_dict("records") == [dict(model="lenet_300_100", n_params=266610, n_prunable=266200)]
    agree = w.read_table("mask_agreement")
    pairs = list(itertools.combinations(cfg.prune.criteria, 2))
    assert list(dict.fromkeys(zip(agree["criterion_a"], agree["criterion_b"]))) == pairs
    assert len(agree) == len(pairs) * 2 * len(cfg.prune.sparsities)
    masks = {c: checkpoints.restore(wd / "checkpoints", f"pruned-lenet_300_100-{c}")["masks"]
             for c in cfg.prune.criteria}
    for r in agree.itertuples():
        a = masks[r.criterion_a]["params"] if "params" in masks[r.criterion_a] else masks[r.criterion_a]
        b = masks[r.criterion_b]["params"] if "params" in masks[r.criterion_b] else masks[r.criterion_b]
        i, j = r.seed - cfg.seed, r.sparsity_index
        ka = [np.asarray(x)[i, 0, j] for p, x in jax.tree_util.tree_leaves_with_path(a) if "kernel" in str(p)]
        kb = [np.asarray(x)[i, 0, j] for p, x in jax.tree_util.tree_leaves_with_path(b) if "kernel" in str(p)]
        want = sum((x & y).sum() for x, y in zip(ka, kb)) / sum(x.sum() for x in ka)
        assert r.agreement == pytest.approx(want, rel=1e-6)  # masks.agreement divides in float32
    mp_toy = agree[(agree["criterion_a"] == "mp") & (agree["criterion_b"] == "toy_sq")]["agreement"]
    assert (mp_toy > 0.999).all()  # w² keeps what |w| keeps


@pytest.mark.slow
def test_results_document_equals_what_its_command_generates(toy_run, tmp_path):
    _, wd, _ = toy_run
    out = tmp_path / "docs" / "results.md"
    readme = tmp_path / "README.md"
    start, end = results_doc.README_MARKERS
    readme.write_text(f"# Title\n\n{start}\nwritten by hand\n{end}\n\nafter\n")
    proc = subprocess.run([sys.executable, "-m", "experiments.report", "--results", f"--workdir={wd}",
                           f"--out={out}", f"--readme={readme}"], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    again, figures, table = results_doc.build_document([wd], out)
    assert again == text  # the committed document is what the command generates
    summary = "\n".join(results_doc.readme_summary(table, "docs/results.md"))
    assert readme.read_text() == f"# Title\n\n{start}\n{summary}\n{end}\n\nafter\n"  # only the block changes
    assert f"{len(table)} rows" in summary
    assert "fairprune-sweep --config=mnist:smoke" in text and str(tmp_path) not in text  # no machine paths
    report = (wd / "report.md").read_text()
    assert "\n".join(results_doc._demote(results_doc.section(report, "## Summary"))) in text
    assert all(p.is_file() and p.read_bytes() == data for p, data in figures.items())
    assert "## Claims of the two reference studies" in text
    # the budget beside the numbers: the runs' whole wall time, from timings.json read here by hand
    timings = json.loads((wd / "timings.json").read_text())
    total = sum(a["seconds"] for a in timings["total_this_run"]) / 60
    dense = sum(a["seconds"] for k, v in timings.items() if k.split(".")[0] == "dense" for a in v) / 60
    assert f"Compute: {total:.1f} min of wall time recorded in its `timings.json` (" in text
    assert f"dense {dense:.1f}" in text or dense < 0.05
