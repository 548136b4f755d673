"""The README is a reference that holds: its commands, sections, links and citations are checked, and its library
block runs as written (with a shorter training run on a slice of the shipped MNIST)."""
from __future__ import annotations

import configparser
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

import fairprune_jax
from fairprune_jax import data, evaluate

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MAX_LINES = 250
SECTIONS = ("## What and why", "## Install", "## Quick start", "## Data", "## Results", "## Commands",
            "## The library in ten lines", "## Datasets × models", "## Extending", "## Citing")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _text() -> str:
    return README.read_text()


def _python_block(section: str) -> str:
    """The first ```python block after the heading `section`."""
    return _text().split(section, 1)[1].split("```python", 1)[1].split("```", 1)[0]


def _slug(heading: str) -> str:
    """GitHub's anchor of a markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_readme_names_the_two_commands():
    text = _text()
    assert 'pip install -e . && python -m experiments.sweep --config=configs/mnist.py' in text
    assert 'pip install -e ".[test]" && python -m pytest' in text


def test_readme_is_a_short_reference_with_its_sections_in_order():
    text = _text()
    assert len(text.splitlines()) <= MAX_LINES, f"README.md has {len(text.splitlines())} lines (at most {MAX_LINES})"
    positions = [text.find(f"\n{s}\n") for s in SECTIONS]
    missing = [s for s, p in zip(SECTIONS, positions) if p < 0]
    assert not missing, f"README.md lacks the sections {missing}"
    assert positions == sorted(positions), "README.md sections out of order"


def test_readme_results_summary_sits_between_its_markers_and_links_the_results():
    text = _text()
    start, end = text.find("<!-- results-summary:start -->"), text.find("<!-- results-summary:end -->")
    assert 0 <= start < end, "the results-summary markers are missing or out of order"
    summary = [line for line in text[start:end].splitlines() if line.startswith("- ")]
    short = (ROOT / "docs" / "results.md").read_text().split("### In short", 1)[1].split("\n#", 1)[0]
    assert summary and summary == [line for line in short.splitlines() if line.startswith("- ")]  # generated
    results = text.split("## Results", 1)[1].split("\n## ", 1)[0]
    assert "](docs/results.md)" in results


def _links(path: Path) -> list[tuple[str, str]]:
    return [(path.name, m) for m in LINK.findall(path.read_text()) if not re.match(r"[a-z]+://|mailto:", m)]


def test_relative_links_and_anchors_of_readme_and_docs_resolve():
    bad = []
    for doc in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        for name, link in _links(doc):
            target, _, anchor = link.partition("#")
            path = (doc.parent / target).resolve() if target else doc
            rel = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)
            if not path.exists():
                bad.append(f"{name}: {link} (no such file)")
                continue
            if anchor and path.suffix == ".md":
                headings = {_slug(h) for h in re.findall(r"^#+ (.+)$", path.read_text(), flags=re.MULTILINE)}
                if anchor not in headings:
                    bad.append(f"{name}: {link} (no heading with that anchor in {rel})")
    assert not bad, "broken links:\n" + "\n".join(bad)


def test_readme_names_only_modules_and_benchmarks_that_exist():
    text = _text()
    modules = set(re.findall(r"python -m ((?:experiments|benchmarks)\.\w+)", text))
    modules |= {f"benchmarks.{m}" for m in re.findall(r"`(bench_\w+)`", text)}
    assert modules, "no command found"
    missing = sorted(m for m in modules if not (ROOT / (m.replace(".", "/") + ".py")).is_file())
    assert not missing, f"README.md names modules that do not exist: {missing}"


def test_readme_names_only_config_files_that_exist():
    names = set(re.findall(r"configs/(\w+)\.py", _text())) | set(re.findall(r"`(\w+)\.py`", _text()))
    names = {n for n in names if not n.startswith(("bench_", "torch_"))}
    missing = sorted(n for n in names if not (ROOT / "configs" / f"{n}.py").is_file())
    assert not missing, f"README.md names config files that do not exist: {missing}"


def _bibtex_entries(text: str) -> dict[str, dict[str, str]]:
    block = text.split("```bibtex", 1)[1].split("```", 1)[0]
    entries = {}
    for key, body in re.findall(r"@\w+\{(\w+),(.*?)\n\}", block, flags=re.DOTALL):
        fields = dict(re.findall(r"(\w+)\s*=\s*\{(.*?)\}(?:,|\s*$)", body, flags=re.DOTALL))
        entries[key] = {k: " ".join(v.split()) for k, v in fields.items()}
    return entries


def test_citation_file_and_readme_bibtex_agree():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software"
    assert cff["version"] == fairprune_jax.__version__
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    assert cff["license"] == setup["metadata"]["license"] == "Apache-2.0"
    license_text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert "END OF TERMS AND CONDITIONS" in license_text

    bib = _bibtex_entries(_text())
    assert len(bib) == 2, f"expected BibTeX for both papers, found {sorted(bib)}"
    by_title = {e["title"]: e for e in bib.values()}
    assert len(cff["references"]) == 2
    for ref in cff["references"]:
        entry = by_title.get(ref["title"])
        assert entry is not None, f"CITATION.cff reference {ref['title']!r} has no BibTeX entry in README.md"
        bib_authors = [a.strip() for a in entry["author"].split(" and ")]
        cff_authors = [f"{a['family-names']}, {a['given-names']}" for a in ref["authors"]]
        assert bib_authors == cff_authors, ref["title"]
        assert entry["year"] == str(ref["year"])
        if "doi" in ref:
            assert entry.get("doi") == ref["doi"]


def _first_rows(split: data.Split, n: int) -> data.Split:
    return data.Split(split.images[:n], split.labels[:n])


@pytest.mark.slow
def test_readme_library_block_runs_and_prints_e_alpha_t(capsys):
    code = _python_block("## The library in ten lines")
    shortened = (code.replace("epochs=8", "epochs=1").replace("epochs=2", "epochs=1").replace("range(4)", "range(2)")
                 .replace('data.load_split("mnist", s)', '_first(data.load_split("mnist", s), 6000)'))
    assert shortened.count("epochs=1") == 2 and "range(2)" in shortened and "_first(" in shortened
    scope: dict = {"_first": _first_rows}
    exec(compile(shortened, str(README), "exec"), scope)  # noqa: S102 - our own documentation
    c0, ct = np.asarray(scope["c0"]), np.asarray(scope["ct"])
    assert c0.shape == (2, 10, 10) and ct.shape == (2, 2, 3, 10, 10)
    assert (ct.sum(axis=(-2, -1)) == 6000).all()  # the first 6000 test images too

    # α_t computed independently (docs/methods.md §7): through-origin slope of δ_t on δ_0 over the classes
    def deviation(c):
        recall = np.diagonal(c, axis1=-2, axis2=-1) / c.sum(-1)
        return recall / (np.trace(c, axis1=-2, axis2=-1) / c.sum((-2, -1)))[..., None] - 1

    d0, dt = deviation(c0)[:, None, None, :], deviation(ct)
    expected = ((d0 * dt).sum(-1) / (d0 ** 2).sum(-1)).mean(0)
    printed = np.array([[float(v) for v in row.split()]
                        for row in re.findall(r"\[([^\[\]]+)\]", capsys.readouterr().out)])
    assert printed.shape == (2, 3)
    np.testing.assert_allclose(printed, expected.round(2), atol=0.0051)
    acc = evaluate.accuracy(ct)
    assert (acc[:, :, 0] > 0.7).all(), "50% sparsity, fine-tuned: far above chance (0.1)"
