"""The README's library example runs as written (with a shorter training run)."""
from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def _library_block() -> str:
    text = README.read_text()
    return text.split("## Using the library", 1)[1].split("```python", 1)[1].split("```", 1)[0]


def test_readme_library_example_runs():
    code = _library_block().replace("epochs=8", "epochs=1").replace("range(8)", "range(2)")
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)  # noqa: S102 - our own documentation
    assert scope["counts"].shape == (2, 3, 10, 10)
    assert scope["recall"].shape == (2, 3, 10)
    assert (scope["counts"].sum(axis=(-2, -1)) == 10000).all()


def test_readme_names_the_two_commands():
    text = README.read_text()
    assert 'pip install -e . && python -m experiments.sweep --config=configs/mnist.py' in text
    assert 'pip install -e ".[test]" && python -m pytest' in text
