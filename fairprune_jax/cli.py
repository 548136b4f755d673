"""Entry points: ``fairprune-sweep``, ``fairprune-bias``, ``fairprune-report`` (and ``python -m experiments.*``).

Every user error (bad config value, unknown config field, missing or corrupt file, busy workdir, diverged dense
training) prints one line ``error: ...`` on stderr and exits 2; ``--debug`` (or ``--verbosity=1``) shows the
traceback instead. Ctrl-C prints one line and exits 130 (the interrupted stage is marked ``interrupted`` in
``timings.json``; rerunning the same command resumes). Library logging (orbax, absl) stays at WARNING unless
``--verbosity`` is given.
"""
from __future__ import annotations

import ctypes
import importlib.util
import logging as py_logging
import os
import pathlib
import signal
import sys
from typing import Any, Callable, NoReturn

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
INTERRUPTED = "interrupted; rerun the same command to resume"
_QUIET = ("absl", "orbax", "jax", "tensorflow", "etils", "tensorflow_datasets")


def _die(message: str) -> NoReturn:
    text = " ".join(line.strip() for line in str(message).strip().splitlines() if line.strip())
    print(f"error: {text}", file=sys.stderr)
    sys.exit(2)


M_ARENA_MAX = -8  # glibc's mallopt parameter


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """glibc only, unless $MALLOC_ARENA_MAX is set: at most `arenas` malloc arenas. Each thread that allocates
    under contention gets its own arena, which keeps the memory it freed; with one device per core, XLA's threads
    grew the default sweep's peak RSS by ~0.2 GiB that way (measured: 1.78 -> 1.61 GiB). Returns True when set."""
    if "MALLOC_ARENA_MAX" in os.environ or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_ARENA_MAX, int(arenas)))
    except (OSError, AttributeError):  # not glibc
        return False


def _parse(argv: list[str]) -> list[str]:
    """absl's flag parsing, with one-line errors (missing config file, unknown config field, bad value)."""
    spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if spec is not None and not pathlib.Path(spec.split(":")[0]).is_file():
        _die(f"config file {spec.split(':')[0]} does not exist")
    try:
        return FLAGS(argv)
    except (AttributeError, KeyError):  # an override of a field the config does not have
        base = _config_by_path(spec)
        for arg in argv:
            missing = unknown_field(base, arg[len("--config."):].split("=", 1)[0]) if arg.startswith(
                "--config.") else None
            if missing:
                _die(f"no config field {missing!r} (from {arg.split('=', 1)[0]})")
        raise
    except flags.Error as e:
        text = str(e)
        if "Traceback" in text:  # a config file whose get_config raised: its own message is the last line
            text = text.split("Error whilst parsing config file:")[0] + text.strip().splitlines()[-1]
        _die(text or "bad command line")


def _config_by_path(spec_arg: str) -> Any:
    """The config file's ``get_config(variant)`` without overrides (to name an override that does not exist)."""
    path, _, variant = spec_arg.partition(":")
    spec = importlib.util.spec_from_file_location("_fairprune_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant) if variant else module.get_config()


def unknown_field(config: Any, dotted: str) -> str | None:
    """The first prefix of ``dotted`` that is not a field of ``config`` (None when the whole path exists)."""
    node, parts = config, dotted.split(".")
    for i, part in enumerate(parts):
        if not hasattr(node, "keys") or part not in node.keys():
            return ".".join(parts[: i + 1])
        node = node[part]
    return None


def _quiet() -> None:
    """Library INFO logging off, unless --verbosity was given."""
    if FLAGS["verbosity"].present and FLAGS.verbosity > 0:
        return
    absl_logging.set_verbosity(absl_logging.WARNING)
    for name in _QUIET:
        py_logging.getLogger(name).setLevel(py_logging.WARNING)


def _terminate(signum: int, frame: Any) -> None:
    """SIGTERM handler: unwind like Ctrl-C."""
    raise KeyboardInterrupt


def _interrupted() -> NoReturn:
    print(INTERRUPTED, file=sys.stderr)
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(130)  # skip interpreter teardown: XLA's threads can crash it after an interrupt


def _unraisable(hook: Callable[[Any], None]) -> Callable[[Any], None]:
    """An interrupt that lands inside a callback Python cannot raise from (e.g. JAX's gc callback) would be
    printed as an ignored exception and lost; end the run as an interrupt instead."""
    def handle(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            _interrupted()
        hook(unraisable)
    return handle


def _guard(body: Callable[[], None]) -> None:
    """Run ``body`` with the one-line error and Ctrl-C conventions (tracebacks with --debug / --verbosity>0)."""
    import jax

    from fairprune_jax import multihost
    from fairprune_jax.studies import spine

    debug = FLAGS.debug or (FLAGS["verbosity"].present and FLAGS.verbosity > 0)
    signal.signal(signal.SIGTERM, _terminate)  # `kill` ends a run like Ctrl-C: stage marked, one line
    if not debug:
        sys.unraisablehook = _unraisable(sys.unraisablehook)
    try:
        body()
    except KeyboardInterrupt:
        if debug:
            raise
        _interrupted()
    except (ValueError, OSError, spine.DivergenceError) as e:
        if debug:
            raise
        _die(str(e) or type(e).__name__)
    except jax.errors.JaxRuntimeError as e:
        if debug or not multihost.active():
            raise
        _lost_peer(e)


def _lost_peer(e: Exception) -> NoReturn:
    """A collective of a multi-process run failed (another process died or hung): one line, then exit at once
    (``os._exit``: JAX's shutdown barrier would wait for the dead process, then abort)."""
    first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
    print(f"error: lost another process of this run ({first[:200]}); rerun the same command to resume",
          file=sys.stderr)
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(2)


def _run_flags(what: str) -> tuple[Any, Any, Any]:
    config = config_flags.DEFINE_config_file("config", None, f"{what} config file (a path, e.g. "
                                             "configs/mnist.py[:variant]); fields can be overridden, "
                                             "e.g. --config.num_seeds=7.", lock_config=True)
    workdir = flags.DEFINE_string("workdir", None, "Work directory (default: config.workdir or "
                                  "workdirs/<dataset>[-<variant>]).")
    fresh = flags.DEFINE_bool("fresh", False, "If the workdir holds another config, move it aside and start "
                              "afresh (refused while another run holds it; same config: resume).")
    flags.DEFINE_bool("debug", False, "Show tracebacks instead of one-line errors.")
    flags.mark_flags_as_required(["config"])
    return config, workdir, fresh


def _study_main(study: str) -> None:
    """Define the run flags and run the recall (``sweep``) or the bias (``bias``) study."""
    config_flag, workdir_flag, fresh_flag = _run_flags("Recall-study" if study == "recall" else "Bias-study")

    def main(argv: list[str]) -> None:
        if len(argv) > 1:
            _die(f"unexpected arguments: {argv[1:]}")
        _quiet()
        from fairprune_jax import sharding

        sharding.use_all_cores()  # before JAX starts its backends: every CPU core a device of the `seed` mesh
        limit_malloc_arenas()
        try:
            config = config_flag.value
        except Exception as e:  # noqa: BLE001 - a config file that fails in get_config
            _die(f"config file: {str(e).splitlines()[0] if str(e) else type(e).__name__}")

        def body() -> None:
            from fairprune_jax.studies import spine

            if study == "recall":
                from fairprune_jax.studies import recall as recall_study

                path = workdir_flag.value or spine.default_workdir(config)
                recall_study.run(config, workdir=path, fresh=fresh_flag.value)
            else:
                from fairprune_jax.studies import bias as bias_study

                bias_study.run(config, workdir=workdir_flag.value, fresh=fresh_flag.value)

        _guard(body)

    app.run(main, flags_parser=_parse)


def sweep() -> None:
    """``fairprune-sweep``: run (or resume) the recall-distortion study."""
    _study_main("recall")


def bias() -> None:
    """``fairprune-bias``: run (or resume) the bias study."""
    _study_main("bias")


def _report_one(path: pathlib.Path, out: str | None) -> str:
    from fairprune_jax import results

    wd = results.Workdir.existing(path)
    if wd.config.get("study", "recall") == "bias":
        from fairprune_jax.report import bias as bias_study_report

        if out:
            raise ValueError("--out: a bias-study report is written into its workdir; drop --out")
        report = bias_study_report.write_report(wd)
        return bias_study_report.terminal_summary(wd) + f"\nreport: {report}"
    from fairprune_jax.report import recall as recall_report

    return recall_report.build_report(wd, out=pathlib.Path(out) if out else None)


def report() -> None:
    """``fairprune-report``: rebuild a workdir's report from its stored tables (several recall workdirs are
    pooled into one report with --out)."""
    workdirs = flags.DEFINE_multi_string("workdir", None, "Workdir(s) of finished or partial runs.")
    out = flags.DEFINE_string("out", None, "Output folder (default: the workdir; required for several workdirs).")
    claims = flags.DEFINE_bool("claims", False, "Write the claims table (claims.md) of the two reference studies "
                               "over every given workdir, recall and bias runs alike, into --out.")
    plan = flags.DEFINE_bool("plan", False, "Print the seed plan of the claims over the given workdirs: the seeds "
                             "each undecided claim needs and the command that extends each workdir (also written "
                             "into --out when given).")
    sequential = flags.DEFINE_bool("sequential", False, "Add seeds to the workdirs in looks of --seed_chunk until "
                                   "every claim decides or --max_seeds is reached (group-sequential boundaries); "
                                   "writes sequential.md into --out.")
    seed_chunk = flags.DEFINE_integer("seed_chunk", 5, "Seeds added per look of --sequential.")
    max_seeds = flags.DEFINE_integer("max_seeds", 30, "Cap on the seeds per workdir of --sequential (and the "
                                     "largest seed count --plan proposes a command for is 100 or this, the larger).")
    flags.DEFINE_bool("debug", False, "Show tracebacks instead of one-line errors.")
    flags.mark_flags_as_required(["workdir"])

    def main(argv: list[str]) -> None:
        if len(argv) > 1:
            _die(f"unexpected arguments: {argv[1:]}")
        _quiet()

        def body() -> None:
            from fairprune_jax import results
            from fairprune_jax.report import recall as recall_report

            paths = [pathlib.Path(p).expanduser() for p in workdirs.value]
            for p in paths:
                if not p.exists():
                    raise ValueError(f"workdir {p} does not exist")
            if plan.value or sequential.value:
                from fairprune_jax.report import plan as plan_report

                if sequential.value:
                    if not out.value:
                        raise ValueError("--out is required with --sequential")
                    print(plan_report.run_sequential(paths, pathlib.Path(out.value), chunk=seed_chunk.value,
                                                     cap=max_seeds.value))
                    return
                print(plan_report.write_plan(paths, pathlib.Path(out.value) if out.value else None,
                                             max_seeds=max(100, max_seeds.value)), end="")
                return
            if claims.value:
                from fairprune_jax.report import claims as claims_report

                if not out.value:
                    raise ValueError("--out is required with --claims")
                print(claims_report.write(paths, pathlib.Path(out.value)))
                return
            if len(paths) == 1:
                print(_report_one(paths[0], out.value))
                return
            if not out.value:
                raise ValueError("--out is required when pooling several workdirs")
            print(recall_report.pooled_report([results.Workdir.existing(p) for p in paths], pathlib.Path(out.value)))

        _guard(body)

    app.run(main, flags_parser=_parse)


def launch() -> None:
    """``python -m experiments.launch``: run a study as N cooperating JAX processes on this machine."""
    from fairprune_jax import launch as launch_lib

    sys.exit(launch_lib.main(sys.argv[1:], die=_die))
