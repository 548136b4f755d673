"""The repository stands on its own: its text points to `docs/methods.md`, never to specification files outside it.

The only outside path allowed is the default data folder (`../shared/data`), which the README documents together
with `$FAIRPRUNE_DATA_DIR` and the download path.
"""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXT = (".py", ".md", ".cfg", ".ipynb", ".txt", ".toml")
FOLDERS = ("fairprune_jax", "configs", "experiments", "benchmarks", "notebooks", "docs", "tests", ".ci")
OUTSIDE = re.compile(r"SCIENCE\.md|ARCHITECTURE\.md|\.\./shared(?!/data)")


def _text_files():
    yield from (ROOT / f for f in ("README.md", "setup.cfg", "setup.py"))
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*")):
            if path.is_file() and (path.suffix in TEXT or folder == ".ci") and path != Path(__file__).resolve():
                yield path


def test_no_reference_outside_the_repository():
    hits = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
            for p in _text_files() for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
            if OUTSIDE.search(line)]
    assert not hits, "references outside the repository:\n" + "\n".join(hits)


def test_methods_doc_exists_and_is_pointed_to():
    methods = ROOT / "docs" / "methods.md"
    assert methods.is_file() and len(methods.read_text()) > 10_000
    assert "docs/methods.md" in (ROOT / "README.md").read_text()
