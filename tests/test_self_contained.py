"""The repository stands on its own and speaks of the project only.

Its text points to `docs/methods.md`, never to specification files outside it; the only outside path allowed is the
default data folder (`../shared/data`), which the README documents together with `$FAIRPRUNE_DATA_DIR` and the
download path. The documents (README, docs/, CITATION.cff) describe the project as it is: no paths of the machine it
was built on, no issue or pull-request numbers, no commit hashes as history, no working sessions.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEXT = (".py", ".md", ".cfg", ".ipynb", ".txt", ".toml")
FOLDERS = ("fairprune_jax", "configs", "experiments", "benchmarks", "notebooks", "docs", "tests", ".ci")
OUTSIDE = re.compile(r"SCIENCE\.md|ARCHITECTURE\.md|\.\./shared(?!/data)")

# What a document must not say, each with why.
HISTORY = {
    "a path of one machine": re.compile(r"(?<![\w.~])/(?:work|tmp|home|root|Users|mnt|scratch)/"),
    "an issue or pull-request number": re.compile(r"(?<![\w&/])#\d+\b|\b(?:issue|pull request|PR)[ -]?#?\d+\b",
                                                  re.IGNORECASE),
    "a commit hash": re.compile(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{7,40}\b"),
    "a working session or diary": re.compile(r"\bsessions?\b|\bon a (?:slower|faster|quiet|busy) day\b|"
                                             r"\b(?:yesterday|today's run|this morning)\b", re.IGNORECASE),
}


def _text_files():
    yield from (ROOT / f for f in ("README.md", "setup.cfg", "setup.py"))
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*")):
            if path.is_file() and (path.suffix in TEXT or folder == ".ci") and path != Path(__file__).resolve():
                yield path


def _documents() -> list[Path]:
    return [ROOT / "README.md", ROOT / "CITATION.cff", *sorted((ROOT / "docs").rglob("*.md"))]


def test_no_reference_outside_the_repository():
    hits = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
            for p in _text_files() for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
            if OUTSIDE.search(line)]
    assert not hits, "references outside the repository:\n" + "\n".join(hits)


def test_methods_doc_exists_and_is_pointed_to():
    methods = ROOT / "docs" / "methods.md"
    assert methods.is_file() and len(methods.read_text()) > 10_000
    assert "docs/methods.md" in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("what", sorted(HISTORY))
def test_documents_speak_of_the_project_only(what):
    pattern = HISTORY[what]
    hits = [f"{p.relative_to(ROOT)}:{i}: {line.strip()[:160]}"
            for p in _documents() for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not hits, f"{what} in the documents:\n" + "\n".join(hits)


@pytest.mark.parametrize("what, line", [
    ("a path of one machine", "see /work/runs/base/mnist for the tables"),
    ("a path of one machine", "python -m benchmarks.bench_sweep --baseline /tmp/base"),
    ("an issue or pull-request number", "the grid of issue 14"),
    ("an issue or pull-request number", "fixed in #123"),
    ("a commit hash", "against the previous main, cc510d2"),
    ("a working session or diary", "No GPU was available in the session that built this"),
    ("a working session or diary", "rerun later on a slower day"),
])
def test_the_history_patterns_catch_what_they_are_for(what, line):
    assert HISTORY[what].search(line)


@pytest.mark.parametrize("line", [
    "| 30.0% | 0.74 [0.63, 0.86] ▼ |", "doi = {10.1109/CVPR52729.2023.02334}", "eprint = {2206.02976}",
    "`$FAIRPRUNE_DATA_MIRROR` names a base URL, e.g. `file:///path/to/data/`", "## 13. The claims table",
    "the cache under `~/.cache/fairprune_jax/tfds`", "E[α_t] 1.05 [0.885, 1.22]", "[the workdir](#the-workdir)",
])
def test_the_history_patterns_spare_ordinary_text(line):
    assert not [w for w, p in HISTORY.items() if p.search(line)]
