"""The README's library examples run as written (with shorter training runs)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parent.parent / "README.md"


def _python_block(section: str = "## Using the library") -> str:
    """The first ```python block after the heading `section`."""
    text = README.read_text()
    return text.split(section, 1)[1].split("```python", 1)[1].split("```", 1)[0]


def test_readme_library_example_runs():
    code = _python_block().replace("epochs=8", "epochs=1").replace("range(8)", "range(2)")
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)  # noqa: S102 - our own documentation
    assert scope["counts"].shape == (2, 3, 10, 10)
    assert scope["recall"].shape == (2, 3, 10)
    assert (scope["counts"].sum(axis=(-2, -1)) == 10000).all()


def test_readme_names_the_two_commands():
    text = README.read_text()
    assert 'pip install -e . && python -m experiments.sweep --config=configs/mnist.py' in text
    assert 'pip install -e ".[test]" && python -m pytest' in text


def test_readme_own_model_and_data_example_runs():
    code = _python_block("## Your own model and data").replace("epochs=10", "epochs=4").replace("epochs=3", "epochs=1")
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)  # noqa: S102 - our own documentation
    counts, t = np.asarray(scope["counts"]), np.asarray(scope["t"])
    assert counts.shape == (4, 2, 4, 4) and (counts.sum(axis=(-2, -1)) == 500).all()
    np.testing.assert_allclose(t, np.broadcast_to([0.5, 0.9], (4, 2)), atol=0.5 / 4096)  # 64*64 prunable
    assert scope["hist"]["loss"].shape == (4, 2, 1)
    acc = np.trace(counts[:, 0], axis1=-2, axis2=-1) / 500  # 50% sparsity, fine-tuned: well above chance (0.25)
    assert (acc > 0.5).all()
