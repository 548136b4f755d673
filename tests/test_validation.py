"""Boundary checks shared by every entry taking data (validation.py) and the DatasetInfo-aware image check."""
from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fairprune_jax import data, validation
from fairprune_jax.data import load_split


@pytest.fixture(scope="module")
def mnist_pixels():
    split = load_split("mnist", "test")
    return split.images[:512], split.labels[:512]


def test_check_labels_cases():
    validation.check_labels(np.array([0, 9, 3]), 10, n=3)
    validation.check_labels(np.array([[0, 1], [1, 1]], bool), 2, n=2, multilabel=True)
    cases = [
        (np.array([0, 10]), {}, r"labels: values must be in \[0, 10\), got range \[0, 10\]"),
        (np.array([-1, 3]), {}, r"got range \[-1, 3\]"),
        (np.array([0.0, 1.0]), {}, "labels: dtype float64, expected int class indices"),
        (np.array([[0, 1]]), {}, r"labels: shape \(1, 2\), expected \[N\]"),
        (np.array([0, 1]), {"n": 3}, r"labels: shape \(2,\), expected \[3\]"),
        (np.array([[0, 2]]), {"multilabel": True}, r"values must be binary \{0, 1\}, got range \[0, 2\]"),
        (np.array([[0, 1, 1]]), {"multilabel": True}, r"shape \(1, 3\), expected \[N, 10\]"),
    ]
    for labels, kw, match in cases:
        kw = {"multilabel": False, **kw}
        k = 2 if kw["multilabel"] and labels.shape[-1] == 2 else 10
        with pytest.raises(ValueError, match=match):
            validation.check_labels(labels, k, name="labels", **kw)
    validation.check_labels(jax.ShapeDtypeStruct((4,), jnp.int32), 10)  # abstract: static checks only


def test_check_images_errors_and_warning(mnist_pixels):
    images, _ = mnist_pixels
    info = data.info("mnist")
    x = data.normalize(images, info.mean, info.std)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # normalised MNIST raises no warning
        validation.check_images(x, (28, 28, 1), name="x")
    with pytest.raises(ValueError, match=r"x: shape \(512, 784\) is not \[N, \*\(28, 28, 1\)\]"):
        validation.check_images(x.reshape(512, -1), (28, 28, 1), name="x")
    with pytest.raises(ValueError, match="x: dtype uint8 is not floating"):
        validation.check_images(images, (28, 28, 1), name="x")
    with pytest.raises(ValueError, match="x: contains NaN"):
        validation.check_images(x.at[3, 1, 1, 0].set(jnp.inf), (28, 28, 1), name="x")
    for raw in (images / 255.0, images / 255.0 * 16):  # [0, 1] never standardised; a 0-16 scale
        with pytest.warns(UserWarning, match="x: values look unnormalised"):
            validation.check_images(raw, (28, 28, 1), name="x")


def test_normalize_needs_uint8_and_check_normalized_uses_the_dataset_range(mnist_pixels):
    images, _ = mnist_pixels
    info = data.info("mnist")
    with pytest.raises(ValueError, match="images: dtype float64; normalize expects uint8"):
        data.normalize(images / 255.0 * 16, info.mean, info.std)
    x = data.normalize(images, info.mean, info.std)
    data.check_normalized(x, info)
    # the range normalised MNIST pixels can take: [(0 - 0.1307)/0.3081, (1 - 0.1307)/0.3081] = [-0.4242, 2.821]
    with pytest.raises(ValueError, match=r"x_train: channel 0 has values in \[0, 16\], outside the "
                                         r"\[-0.4243, 2.822\]"):
        data.check_normalized(images / 255.0 * 16 * (255 / images.max()), info, name="x_train")
    tiny = data.DatasetInfo("tiny", (8, 8, 1), 10, (0.3,), (0.2,))
    with pytest.raises(ValueError, match=r"shape \(512, 28, 28, 1\) is not \[N, \*\(8, 8, 1\)\] of dataset 'tiny'"):
        data.check_normalized(x, tiny)


def test_leading_shape_names_the_leaf():
    base = {"a": jax.ShapeDtypeStruct((3, 2), jnp.float32), "b": jax.ShapeDtypeStruct((2,), jnp.float32)}
    tree = {"a": np.zeros((4, 5, 3, 2)), "b": np.zeros((4, 5, 2))}
    assert validation.leading_shape(tree, base, "masks") == (4, 5)
    with pytest.raises(ValueError, match=r"masks/b: leading axes \(4,\) differ from \(4, 5\)"):
        validation.leading_shape({**tree, "b": np.zeros((4, 2))}, base, "masks")
    with pytest.raises(ValueError, match=r"masks/b: shape \(4, 5, 3\) does not end with the model's \(2,\)"):
        validation.leading_shape({**tree, "b": np.zeros((4, 5, 3))}, base, "masks")
    with pytest.raises(ValueError, match=r"masks/a: dtype float64 is not bool"):
        validation.check_bool_leaves(tree, "masks")
