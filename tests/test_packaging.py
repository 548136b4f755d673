"""The wheel holds `fairprune_jax` only (its experiment configs inside it) and runs a packaged config by name through
`fairprune-sweep` from a fresh venv outside the checkout; every console script's --help lists its real flags (no
network: no build isolation, no dependencies fetched)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import fairprune_jax
from fairprune_jax import data as data_lib

REPO = Path(__file__).resolve().parent.parent


def test_version_is_exposed():
    assert isinstance(fairprune_jax.__version__, str) and fairprune_jax.__version__.count(".") >= 1


@pytest.mark.slow
def test_wheel_installs_outside_the_checkout_and_runs_the_smoke_sweep(tmp_path):
    src = tmp_path / "src"  # build from a copy, so the checkout gets no build/ or egg-info
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", ".venv", "workdirs", "build", "*.egg-info",
                                                             "__pycache__", ".pytest_cache"))
    run = lambda *cmd, **kw: subprocess.run(cmd, capture_output=True, text=True, timeout=900, **kw)  # noqa: E731
    built = run(sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "--no-index",
                "-w", str(tmp_path / "dist"), cwd=src)
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next((tmp_path / "dist").glob("fairprune_jax-*.whl"))
    tops = {n.split("/")[0] for n in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"fairprune_jax"}

    venv = tmp_path / "venv"
    assert run(sys.executable, "-m", "venv", "--without-pip", str(venv)).returncode == 0
    py = venv / "bin" / "python"
    site = Path(run(str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    # The running venv's packages by a plain path line: it does not run the editable finder that lives there.
    (site / "running_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    inst = run(sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", str(wheel))
    assert inst.returncode == 0, inst.stderr[-3000:]

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {**os.environ, "FAIRPRUNE_DATA_DIR": str(data_lib.default_source_root())}
    env.pop("PYTHONPATH", None)
    where = run(str(py), "-c", "import fairprune_jax; print(fairprune_jax.__file__)", cwd=outside, env=env)
    assert where.stdout.strip().startswith(str(site)), where.stdout + where.stderr
    assert run(str(py), "-c", "import configs", cwd=outside, env=env).returncode != 0
    names = {n.split("/")[-1] for n in zipfile.ZipFile(wheel).namelist() if n.startswith("fairprune_jax/configs/")}
    assert {"mnist.py", "mnist_wd.py", "planted_mnist.py", "celeba.py"} <= names
    bin_ = venv / "bin"
    for script, flag in (("fairprune-sweep", "--workdir:"), ("fairprune-bias", "--config:"),
                         ("fairprune-report", "--claims"), ("fairprune-launch", "--num_processes")):
        helped = run(str(bin_ / script), "--help", cwd=outside, env=env)
        assert helped.returncode == 0 and flag in helped.stdout, (script, helped.stdout + helped.stderr)
    assert "mnist_wd" in run(str(bin_ / "fairprune-sweep"), "--help", cwd=outside, env=env).stdout
    refused = run(str(bin_ / "fairprune-bias"), "--config=planted_mnist:smoke", "--config.seed=-1",
                  f"--workdir={outside / 'bias'}", cwd=outside, env=env)
    assert refused.returncode == 2 and refused.stderr.strip() == "error: config.seed: -1 is not an integer >= 0"
    assert not (outside / "bias").exists()
    sweep = run(str(bin_ / "fairprune-sweep"), "--config=mnist:smoke", f"--workdir={outside / 'wd'}",
                "--config.progress=False", "--config.num_seeds=1", "--config.prune.criteria=('mp',)",
                "--config.analysis.bootstrap=0", cwd=outside, env=env)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    assert (outside / "wd" / "report.md").is_file() and "report:" in sweep.stdout
    rebuilt = run(str(bin_ / "fairprune-report"), f"--workdir={outside / 'wd'}", cwd=outside, env=env)
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
