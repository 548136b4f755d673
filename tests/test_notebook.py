"""The Colab notebook runs top to bottom (small configuration), so it cannot rot."""
from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


@pytest.mark.slow
def test_compose_masks_notebook_executes(monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("FAIRPRUNE_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOKS / "compose_masks.ipynb", as_version=4)
    nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    outputs = "\n".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
                        for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "nested: True" in outputs
    assert "MP ∩ UP" in outputs and "verdict" in outputs
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.get("output_type") == "error"]
    assert not errors


def test_notebook_matches_its_generator(tmp_path):
    """The committed .ipynb is what notebooks/make_compose_masks.py writes (edit the generator, not the JSON)."""
    nbformat = pytest.importorskip("nbformat")
    import runpy
    import shutil

    shutil.copy(NOTEBOOKS / "make_compose_masks.py", tmp_path / "make_compose_masks.py")
    runpy.run_path(str(tmp_path / "make_compose_masks.py"), run_name="__main__")
    fresh = nbformat.read(tmp_path / "compose_masks.ipynb", as_version=4)
    committed = nbformat.read(NOTEBOOKS / "compose_masks.ipynb", as_version=4)
    assert [c.source for c in fresh.cells] == [c.source for c in committed.cells]
