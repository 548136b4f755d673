"""The README's "Your own model and data" example runs as written (shorter training) and learns its task."""
from __future__ import annotations

from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parent.parent / "README.md"


def _own_data_block() -> str:
    text = README.read_text()
    return text.split("## Your own model and data", 1)[1].split("```python", 1)[1].split("```", 1)[0]


def test_readme_own_model_and_data_example_runs():
    code = _own_data_block().replace("epochs=10", "epochs=4").replace("epochs=3", "epochs=1")
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)  # noqa: S102 - our own documentation
    counts, t = np.asarray(scope["counts"]), np.asarray(scope["t"])
    assert counts.shape == (4, 2, 4, 4) and (counts.sum(axis=(-2, -1)) == 500).all()
    np.testing.assert_allclose(t, np.broadcast_to([0.5, 0.9], (4, 2)), atol=0.5 / 4096)  # 64*64 prunable
    assert scope["hist"]["loss"].shape == (4, 2, 1)
    acc = np.trace(counts[:, 0], axis1=-2, axis2=-1) / 500  # 50% sparsity, fine-tuned: well above chance (0.25)
    assert (acc > 0.5).all()
