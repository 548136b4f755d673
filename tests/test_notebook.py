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
    assert "nested: True" in outputs and "prune_population == by hand: True" in outputs
    assert "MP ∩ UP" in outputs and "verdict_holm" in outputs and "p_holm" in outputs
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


def test_install_cell_names_its_source_and_refuses_a_wrong_one(tmp_path):
    """The install cell installs from PACKAGE_SOURCE only when the package is not importable, and refuses a source
    that is no checkout, wheel or URL (run without site-packages, so nothing is importable or installed)."""
    nbformat = pytest.importorskip("nbformat")
    import os
    import subprocess
    import sys

    nb = nbformat.read(NOTEBOOKS / "compose_masks.ipynb", as_version=4)
    cell = next(c.source for c in nb.cells if c.cell_type == "code" and "PACKAGE_SOURCE =" in c.source)
    sources = "\n".join(c.source for c in nb.cells)
    assert "wget" not in sources and "github.com" not in sources
    env = {**os.environ, "FAIRPRUNE_PACKAGE_SOURCE": str(tmp_path / "nothing")}
    run = subprocess.run([sys.executable, "-I", "-S", "-c", cell], env=env, capture_output=True, text=True,
                         cwd=tmp_path)
    assert run.returncode != 0
    assert f"PACKAGE_SOURCE: '{tmp_path / 'nothing'}' is no fairprune_jax checkout, wheel or URL" in run.stderr
