"""Bias analysis for your own populations: aggregates over any grid of leading axes, and a NaN bias amplification
that names its real cause when the protected group is a function of the label."""
from __future__ import annotations

import numpy as np
import pytest

from fairprune_jax.analysis import bias as B
from fairprune_jax.analysis import bias_softmax as BS


def test_aggregate_grid_is_aggregate_per_cell():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(3, 2, 4, 5))  # [S, M, P, A]
    v[0, 1, 2] = np.nan  # one seed undefined in one cell
    v[2, 0, 0, 1] = np.nan
    table = B.aggregate_grid({"ba": v, "acc": v + 1}, criterion=["mp", "up"], sparsity=[0.1, 0.5, 0.9, 0.97])
    assert list(table.columns[:3]) == ["metric", "criterion", "sparsity"] and len(table) == 2 * 2 * 4
    for _, row in table.iterrows():
        m, p = ["mp", "up"].index(row["criterion"]), [0.1, 0.5, 0.9, 0.97].index(row["sparsity"])
        want = B.aggregate(v[:, m, p] + (row["metric"] == "acc"))
        got = tuple(row[f] for f in B.Aggregate._fields)
        np.testing.assert_allclose(np.asarray(got, float), np.asarray(want, float), equal_nan=True)
    cell = table[(table.metric == "ba") & (table.criterion == "up") & (table.sparsity == 0.9)].iloc[0]
    assert cell.n_seeds_defined == 2 and cell.n_nan == 5
    # seeds on another axis, a plain array
    moved = B.aggregate_grid(np.moveaxis(v, 0, 2), seed_axis=2, criterion=["mp", "up"], sparsity=[1, 2, 3, 4])
    np.testing.assert_array_equal(moved["mean"].to_numpy(), table[table.metric == "ba"]["mean"].to_numpy())
    with pytest.raises(ValueError, match="sparsity: 3 labels for an axis of 4"):
        B.aggregate_grid(v, criterion=["mp", "up"], sparsity=[1, 2, 3])
    with pytest.raises(ValueError, match=r"metrics\['value'\]: shape \(3, 2, 4, 5\) has 2 leading axes"):
        B.aggregate_grid(v, criterion=["mp", "up"])


def _softmax_case(groups_of):
    """Four classes, 200 test examples; logits that predict the class right 80% of the time."""
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(4), 50)
    logits = rng.normal(size=(2, 200, 4))
    right = rng.random((2, 200)) < 0.8
    logits[right, labels[np.nonzero(right)[1]]] += 5.0
    g = groups_of(labels, rng)
    train_labels = np.repeat(np.arange(4), 100)
    pf, nf = B.train_prevalence(BS.one_hot(train_labels, 4), groups_of(train_labels, rng))
    return logits, labels, g, pf, nf


def test_a_group_defined_by_the_class_names_itself_as_the_cause():
    by_class = lambda lab, rng: np.isin(lab, [0, 2]).astype(int)  # noqa: E731
    logits, labels, g, pf, nf = _softmax_case(by_class)
    assert BS.group_determined_by_class(labels, g)
    m = BS.softmax_metrics(logits, labels, g, pf, nf)
    assert np.isnan(m["ba"]).all()
    reasons = BS.softmax_ba_reasons(logits, labels, g, pf, nf)
    assert reasons.shape == (2, 4) and (reasons == B.BA_GROUP_IS_LABEL).all()
    # the per-class metrics that stay meaningful are defined
    assert np.isfinite(m["uncertainty"]).all() and np.isfinite(m["recall"]).all()


def test_an_independent_group_gives_defined_ba_and_no_such_reason():
    independent = lambda lab, rng: (rng.random(len(lab)) < 0.5).astype(int)  # noqa: E731
    logits, labels, g, pf, nf = _softmax_case(independent)
    assert not BS.group_determined_by_class(labels, g)
    reasons = BS.softmax_ba_reasons(logits, labels, g, pf, nf)
    assert B.BA_GROUP_IS_LABEL not in set(reasons.ravel())
    assert not BS.group_determined_by_class(labels, np.ones(200, int))  # one group only: not "determined"


def test_multilabel_group_equal_to_an_attribute():
    rng = np.random.default_rng(2)
    y = (rng.random((300, 3)) < 0.4).astype(int)
    g = y[:, 1].copy()  # the group IS attribute 1
    np.testing.assert_array_equal(B.group_determined_by_label(y, g), [False, True, False])
    np.testing.assert_array_equal(B.group_determined_by_label(y, 1 - g), [False, True, False])
    yhat = y.copy()
    reasons = B.bias_amplification_reasons(yhat, y, g, np.array([0.4, 1.0, 0.4]), np.array([0.3, 0.0, 0.5]))
    assert reasons[1] == B.BA_GROUP_IS_LABEL and reasons[0] == "" and reasons[2] == ""
