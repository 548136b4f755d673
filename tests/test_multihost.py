"""Several cooperating JAX processes: start-up checks, the follower's view of the workdir, the launcher, and (slow)
the 2-process sweep equal to the single-process one, with a killed process and a resume."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from fairprune_jax import launch, multihost, results
from fairprune_jax.studies import recall as recall_study

REPO = Path(__file__).resolve().parent.parent
# A small sweep (one criterion, 2000 examples): the equality and fault checks need all of it, quickly.
SMALL = ("--config=configs/mnist.py:smoke", "--config.prune.criteria=('mp',)", "--config.data.max_train_examples=2000",
         "--config.progress=False")


# ------------------------------------------------------------------------------------------------ start-up checks

@pytest.mark.parametrize("fields, match", [
    (dict(num_processes=2, process_id=2), r"process_id: 2 is out of range for 2 processes \(0..1\)"),
    (dict(num_processes=-1), "num_processes: -1 is not an integer >= 0"),
    (dict(process_id=-3), "process_id: -3 is not an integer >= -1"),
    (dict(coordinator_address="localhost"), "coordinator_address: 'localhost' is not 'host:port'"),
    (dict(coordinator_address="127.0.0.1:99999"), "is not 'host:port'"),
])
def test_check_names_the_bad_field(fields, match):
    with pytest.raises(ValueError, match=match):
        multihost.check(dict(enabled=True, **fields))
    multihost.check(dict(enabled=True, coordinator_address="10.0.0.1:1234", num_processes=4, process_id=3))


def test_coordinator_port_in_use_is_refused_before_jax_starts():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert not multihost.port_free("127.0.0.1", port)
        with pytest.raises(ValueError, match=f"port {port} on 127.0.0.1 is in use"):
            multihost.initialize(dict(enabled=True, coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                                      process_id=0))
    assert multihost.port_free("127.0.0.1", port)
    multihost.initialize(dict(enabled=False))  # disabled: nothing happens
    assert not multihost.active() and multihost.is_primary() and multihost.agree(True)


def test_follower_writes_nothing_and_takes_process_0s_decisions(tmp_path, monkeypatch):
    wd = results.Workdir.open(tmp_path / "wd", {"a": 1})
    wd.append_table("t", "k1", pd.DataFrame({"x": [1]}))
    assert multihost.shared(wd) is wd  # one process: the workdir itself
    follower = multihost.HostWorkdir(wd.path, wd.fingerprint)
    monkeypatch.setattr(multihost, "is_primary", lambda: False)
    before = sorted(p.relative_to(wd.path) for p in wd.path.rglob("*"))
    follower.append_table("t", "k2", pd.DataFrame({"x": [2]}))
    follower.write_json("meta.json", {"b": 2})
    follower.mark_done("prune")
    with follower.stage_timer("dense"):
        pass
    assert sorted(p.relative_to(wd.path) for p in wd.path.rglob("*")) == before
    # has() is process 0's answer, broadcast; in one process `agree` returns what the follower passes (False)
    assert not follower.has("t", "k1")
    monkeypatch.setattr(multihost, "is_primary", lambda: True)
    assert follower.has("t", "k1") and not follower.has("t", "k2")


def test_bad_process_id_is_one_line_before_anything_starts(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "experiments.sweep", *SMALL, f"--workdir={tmp_path / 'wd'}",
                           "--config.distributed.enabled=True", "--config.distributed.num_processes=2",
                           "--config.distributed.process_id=2"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: config.distributed.process_id: 2 is out of range for 2 processes (0..1)"]
    assert not (tmp_path / "wd").exists()


# ------------------------------------------------------------------------------------------------ launcher

def test_plan_sets_the_distributed_fields_of_every_process():
    p = launch.plan(3, ["--config=configs/mnist.py:smoke"], port=4321, python="py")
    assert p.address == "127.0.0.1:4321" and len(p.commands) == 3
    assert p.commands[2] == ("py", "-m", "fairprune_jax", "sweep", "--config=configs/mnist.py:smoke",
                             "--config.mesh.enabled=True", "--config.distributed.enabled=True",
                             "--config.distributed.coordinator_address=127.0.0.1:4321",
                             "--config.distributed.num_processes=3", "--config.distributed.process_id=2")
    assert launch.plan(1, ["--config=c.py"], study="bias").commands[0][2:4] == ("fairprune_jax", "bias")
    port = int(launch.plan(2, ["--config=c.py"]).address.rsplit(":", 1)[1])
    assert multihost.port_free("127.0.0.1", port)


@pytest.mark.parametrize("args, match", [
    ((0, ["--config=c.py"]), "--num_processes: 0 is not an integer >= 1"),
    ((2, []), "no --config="),
    ((2, ["--config=c.py", "--config.distributed.process_id=1"]), "--config.distributed.process_id: set by the launcher"),
])
def test_plan_refuses_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        launch.plan(*args)
    with pytest.raises(ValueError, match="--study: 'x'"):
        launch.plan(2, ["--config=c.py"], study="x")


def _fake(*bodies: str) -> launch.Plan:
    return launch.Plan(tuple((sys.executable, "-c", b) for b in bodies), "127.0.0.1:0")


def test_run_prefixes_output_and_returns_zero(capsys):
    assert launch.run(_fake("print('hello')", "import sys; print('oops', file=sys.stderr)")) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == ["[p0] hello"] and err.splitlines() == ["[p1] oops"]


def test_run_gives_each_process_one_cpu_device_unless_the_user_set_the_count(capsys):
    show = "import os; print(os.environ.get('XLA_FLAGS'))"
    assert launch.run(_fake(show), env={"PATH": os.environ.get("PATH", "")}) == 0
    assert capsys.readouterr().out.split() == ["[p0]", "--xla_force_host_platform_device_count=1"]
    assert launch.run(_fake(show), env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}) == 0
    assert capsys.readouterr().out.split() == ["[p0]", "--xla_force_host_platform_device_count=4"]


def test_first_failure_stops_the_others_and_sets_the_exit_code(capsys):
    t0 = time.monotonic()
    code = launch.run(_fake("import time; time.sleep(60)", "import sys; sys.exit(3)",
                            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"),
                      grace=1.0)
    assert code == 3 and time.monotonic() - t0 < 20
    assert capsys.readouterr().err.splitlines()[-1] == (
        "error: process 1 exited with code 3; stopped the other processes (rerun the same command to resume)")
    assert launch.worst([0, 0]) == 0 and launch.worst([0, -9, 2]) == 137 and launch.worst([2, 1]) == 2


def test_launcher_command_line_errors_are_one_line():
    proc = subprocess.run([sys.executable, "-m", "experiments.launch", "--num_processes=zero", "--",
                           "--config=configs/mnist.py:smoke"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr == "error: --num_processes: 'zero' is not an integer >= 1\n"


# ------------------------------------------------------------------------------------------------ real processes

def _launch_cmd(workdir: Path) -> list[str]:
    return [sys.executable, "-m", "experiments.launch", "--num_processes=2", "--", *SMALL, f"--workdir={workdir}"]


def _table(workdir: Path) -> pd.DataFrame:
    df = results.Workdir.existing(workdir).read_table(recall_study.RECALL_TABLE)
    return df.sort_values(["model", "criterion", "seed", "level", "sparsity_index", "class"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> pd.DataFrame:
    """The recall table of the small sweep run as one process."""
    wd = tmp_path_factory.mktemp("single") / "wd"
    proc = subprocess.run([sys.executable, "-m", "experiments.sweep", *SMALL, f"--workdir={wd}"], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _table(wd)


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Counts identical; float columns within the single-process mesh test's tolerance (tests/test_sharding.py)."""
    pd.testing.assert_frame_equal(a, b, rtol=1e-5, atol=1e-6)
    assert (a["correct"] == b["correct"]).all()


@pytest.mark.slow
def test_two_process_sweep_equals_the_single_process_one(single, tmp_path):
    proc = subprocess.run(_launch_cmd(tmp_path / "wd"), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[p0] report:" in proc.stdout and "[p1] report:" not in proc.stdout
    _same(single, _table(tmp_path / "wd"))
    timings = results.Workdir.existing(tmp_path / "wd").stage_timings()
    assert len({e["pid"] for runs in timings.values() for e in runs}) == 1  # process 0 alone wrote them


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(c) for c in f.read().split()]


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the launcher's children in /proc")
def test_killed_process_stops_the_run_and_a_rerun_resumes(single, tmp_path):
    wd = tmp_path / "wd"
    proc = subprocess.Popen(_launch_cmd(wd), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    dense = wd / "results" / recall_study.RECALL_TABLE / "lenet_300_100.dense.parquet"
    deadline = time.monotonic() + 400
    while not dense.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert dense.exists(), proc.communicate()[1][-3000:]
    os.kill(_children(proc.pid)[1], signal.SIGKILL)  # process 1, mid-run (pruning / fine-tuning)
    t0 = time.monotonic()
    out, err = proc.communicate(timeout=120)
    assert time.monotonic() - t0 < 60  # bounded: no hang on the dead peer
    assert proc.returncode != 0
    assert err.strip().splitlines()[-1] == ("error: process 1 was killed by signal 9; stopped the other processes "
                                            "(rerun the same command to resume)")
    assert "Traceback" not in err
    again = subprocess.run(_launch_cmd(wd), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    _same(single, _table(wd))


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the launcher's children in /proc")
def test_killed_process_0_ends_the_run_with_the_launchers_line_only(tmp_path):
    """Process 0 hosts JAX's coordination service: when it dies, the survivors' C++ coordination errors, crash
    dumps and interrupted lines are dropped; what is left is the launcher's one line (and survivors' error: lines)."""
    wd = tmp_path / "wd"
    proc = subprocess.Popen(_launch_cmd(wd), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    dense = wd / "results" / recall_study.RECALL_TABLE / "lenet_300_100.dense.parquet"
    deadline = time.monotonic() + 400
    while not dense.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert dense.exists(), proc.communicate()[1][-3000:]
    os.kill(_children(proc.pid)[0], signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    lines = err.strip().splitlines()
    assert proc.returncode == 137 and "Traceback" not in err
    assert lines[-1] == ("error: process 0 was killed by signal 9; stopped the other processes (rerun the same "
                         "command to resume)")
    # before it: process 0's own step lines from before it died, and at most a survivor's error line; no C++
    # coordination errors, crash dumps or interrupted lines
    noise = [line for line in lines[:-1] if not line.startswith(("[p0] ", "[p1] error:"))]
    assert noise == [] and sum(line.startswith("[p1]") for line in lines) <= 1, err


def test_relay_drops_what_survivors_print_after_a_failure(capsys):
    """Process 0 dies; process 1 then prints JAX-style C++ errors and an interrupted line: all dropped."""
    survivor = ("import os, signal, sys, time\n"
                "def stop(*args):\n    print('interrupted; rerun', file=sys.stderr)\n    sys.exit(130)\n"
                "signal.signal(signal.SIGTERM, stop)\n"
                "print('E1206 12:00:00.000000 1 coordination_service_agent.cc:289] Polled an error', file=sys.stderr)\n"
                "while os.path.exists(sys.argv[1]):\n    time.sleep(0.01)\n"
                "for i in range(60):\n    print(f'F1206 client.h:80] Terminating process {i}', file=sys.stderr)\n"
                "time.sleep(60)\n")
    import tempfile

    with tempfile.NamedTemporaryFile(delete=False) as flag:
        pass
    dying = f"import os, time; time.sleep(4); os.unlink({flag.name!r}); os.kill(os.getpid(), 9)"
    plan = launch.Plan(((sys.executable, "-c", dying), (sys.executable, "-c", survivor, flag.name)), "127.0.0.1:0")
    assert launch.run(plan, grace=2.0) == 137
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("error: process 0 was killed by signal 9")
    assert not [line for line in err if "Terminating" in line or "interrupted" in line], err
    assert err[0].startswith("[p1] E1206")  # printed well before the failure: kept


def test_interrupt_inside_an_unraisable_callback_ends_the_run_with_one_line(monkeypatch, capsys):
    """A SIGTERM from the launcher can land inside JAX's gc callback, where Python would print the interrupt as an
    ignored exception (a traceback) and drop it; the CLI's hook ends the run as an interrupt instead."""
    import types

    from fairprune_jax import cli

    passed = []
    hook = cli._unraisable(passed.append)
    other = types.SimpleNamespace(exc_value=ValueError("not ours"))
    hook(other)
    assert passed == [other]
    monkeypatch.setattr(cli.os, "_exit", lambda code: (_ for _ in ()).throw(SystemExit(code)))
    with pytest.raises(SystemExit) as e:
        hook(types.SimpleNamespace(exc_value=KeyboardInterrupt()))
    assert e.value.code == 130 and capsys.readouterr().err.strip() == cli.INTERRUPTED
