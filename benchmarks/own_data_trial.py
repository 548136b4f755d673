"""The library guide's own-data walk-through, run as a researcher would: the code blocks of docs/library.md ("Your
own model and data"), unchanged, as the cells of a notebook executed in a fresh Jupyter kernel. Prints the wall
time of every step, the kernel's peak memory after it (its maximum resident set) and the walk-through's lines of
code: the figures docs/library.md quotes.

    python -m benchmarks.own_data_trial            # the full trial (4 seeds, 48 pruned CNNs; tens of minutes)
    python -m benchmarks.own_data_trial --quick    # the tests' sizes (2 seeds, 1000 images)
    python -m benchmarks.own_data_trial --save /tmp/trial.ipynb   # keep the executed notebook

The kernel runs with the environment of this process (set PYTHONPATH to a checkout to trial it uninstalled).
"""
from __future__ import annotations

import argparse
import re
import sys
from datetime import datetime
from pathlib import Path

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "library.md"
SECTION, END = "## Your own model and data", "### The trial's figures"
SIZES = "SEEDS, EPOCHS, FINETUNE_EPOCHS, SUBSET = 4, 3, 1, None"
QUICK = "SEEDS, EPOCHS, FINETUNE_EPOCHS, SUBSET = 2, 1, 1, 1000"
PEAK = ("import resource, sys\n"
        "print('peak_rss_bytes', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * "
        "(1 if sys.platform == 'darwin' else 1024))")


def guide_blocks(section: str = SECTION, end: str | None = END, path: Path = GUIDE) -> list[tuple[str, str]]:
    """(title, code) of every ```python block of `section` (up to `end`), in order. The title is the bold
    "**N. Step.**" lead of the paragraph before the block ("setup" before the first, "<step> (cont.)" after)."""
    text = path.read_text()
    body = text.split(section, 1)[1]
    if end:
        body = body.split(end, 1)[0]
    out, title = [], "setup"
    for prose, code in re.findall(r"(.*?)```python\n(.*?)```", body, flags=re.S):
        leads = re.findall(r"\*\*(\d+\. [^*]+?)\.?\*\*", prose)
        title = leads[-1] if leads else (title if title == "setup" else f"{title.split(' (')[0]} (cont.)")
        out.append((title, code))
    return out


def code_lines(blocks: list[tuple[str, str]]) -> int:
    """Lines that are neither blank nor comments."""
    return sum(1 for _, code in blocks for line in code.splitlines() if line.strip() and
               not line.strip().startswith("#"))


def run(quick: bool = False, save: Path | None = None, timeout: int = 7200) -> list[dict]:
    """Execute the walk-through in a fresh kernel; one row per block: title, seconds, peak RSS after it."""
    import nbclient
    import nbformat

    blocks = guide_blocks()
    cells = []
    for title, code in blocks:
        if quick:
            code = code.replace(SIZES, QUICK)
        cells += [nbformat.v4.new_code_cell(code), nbformat.v4.new_code_cell(PEAK)]
    nb = nbformat.v4.new_notebook(cells=cells)
    nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=True,
                            resources={"metadata": {"path": str(GUIDE.parent.parent)}}).execute()
    if save:
        nbformat.write(nb, save)
    rows = []
    for (title, _), cell, peak in zip(blocks, nb.cells[::2], nb.cells[1::2]):
        timing = cell.metadata["execution"]
        start = datetime.fromisoformat(timing["iopub.execute_input"].replace("Z", "+00:00"))
        stop = datetime.fromisoformat(timing["shell.execute_reply"].replace("Z", "+00:00"))
        rss = int(re.search(r"peak_rss_bytes (\d+)", peak.outputs[0]["text"]).group(1))
        rows.append({"step": title, "seconds": (stop - start).total_seconds(), "peak_rss_gb": rss / 1e9,
                     "output": "".join(o.get("text", "") for o in cell.outputs)})
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="the tests' sizes: 2 seeds, 1 epoch, 1000 images")
    p.add_argument("--save", type=Path, help="write the executed notebook here")
    p.add_argument("--outputs", action="store_true", help="also print what every step printed")
    args = p.parse_args(argv)
    rows = run(args.quick, args.save)
    blocks = guide_blocks()
    print(f"walk-through: {len(blocks)} code blocks, {code_lines(blocks)} lines of code "
          f"({'quick' if args.quick else 'full'} sizes)")
    print(f"{'step':<32} {'seconds':>9} {'peak RSS (GB)':>14}")
    for r in rows:
        print(f"{r['step']:<32} {r['seconds']:>9.1f} {r['peak_rss_gb']:>14.2f}")
    print(f"{'total':<32} {sum(r['seconds'] for r in rows):>9.1f} {max(r['peak_rss_gb'] for r in rows):>14.2f}")
    if args.outputs:
        for r in rows:
            print(f"\n--- {r['step']}\n{r['output']}", end="")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
