"""Entry points: ``fairprune-sweep``, ``fairprune-bias``, ``fairprune-report``, ``fairprune-launch`` (also
``python -m fairprune_jax <sweep|bias|report|launch>`` and, in the repository, ``python -m experiments.*``).

``--config`` takes a packaged config by name (``--config=mnist``, ``--config=planted_mnist:smoke``; ``--help``
lists them) or a config file by path (``--config=configs/mnist.py:smoke``). Every user error (bad config value,
unknown config field, a config file that does not load, missing or corrupt file, busy workdir, diverged dense
training) prints one line ``error: ...`` on stderr and exits 2; ``--debug`` (or ``--verbosity=1``) shows the
traceback instead. Ctrl-C prints one line and exits 130 (the interrupted stage is marked ``interrupted`` in
``timings.json``; rerunning the same command resumes). A deprecated name prints one line ``deprecated: ...``.
Library logging (orbax, absl, TFDS) stays at WARNING unless ``--verbosity`` is given.
"""
from __future__ import annotations

import ctypes
import importlib.util
import logging as py_logging
import os
import pathlib
import re
import signal
import sys
import traceback
import warnings
from typing import Any, Callable, NoReturn

import jax
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from fairprune_jax import configs, deprecation, multihost, pipeline, sharding
from fairprune_jax import launch as launch_lib
from fairprune_jax.report import claims as claims_report
from fairprune_jax.report import plan as plan_report
from fairprune_jax.report import recall as recall_report
from fairprune_jax.report import results_doc, runs
from fairprune_jax.studies import schema, spine

FLAGS = flags.FLAGS
INTERRUPTED = "interrupted; rerun the same command to resume"
_QUIET = ("absl", "orbax", "jax", "tensorflow", "etils", "tensorflow_datasets")
COMMAND = {"recall": "fairprune-sweep", "bias": "fairprune-bias"}


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


def _show_deprecation(message, category, filename, lineno, file=None, line=None) -> None:
    """Deprecations as one line on stderr; other warnings as Python prints them."""
    if issubclass(category, deprecation.FairpruneDeprecationWarning):
        print(deprecation.one_line(message), file=sys.stderr)
        return
    _SHOW_WARNING(message, category, filename, lineno, file, line)


_SHOW_WARNING = warnings.showwarning


# ------------------------------------------------------------------------------------------------ --config

def resolve_config(spec: str) -> str:
    """``--config``'s value with a packaged config name replaced by its file: ``mnist:smoke`` ->
    ``<package>/configs/mnist.py:smoke``; an existing path is kept. ValueError naming the known configs."""
    path, sep, variant = spec.partition(":")
    if pathlib.Path(path).is_file():
        return spec
    name = path[:-3] if path.endswith(".py") else path
    if "/" not in name and os.sep not in name and name in configs.names():
        return f"{configs.path(name)}{sep}{variant}"
    raise ValueError(f"config file {path} does not exist (packaged configs: {', '.join(configs.names())})")


def check_config_file(spec: str) -> None:
    """A config file that does not compile, or raises while it loads or builds its config: ValueError naming the
    file and the line (the innermost line of the file in the traceback)."""
    path, _, variant = spec.partition(":")
    try:
        source = pathlib.Path(path).read_text(encoding="utf-8")
        compile(source, path, "exec")
    except SyntaxError as e:
        raise ValueError(f"config file {path}, line {e.lineno}: {e.msg}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"config file {path}: {e}") from None
    try:
        _config_by_path(spec)
    except Exception as e:  # noqa: BLE001 - whatever a user's config file raises becomes one line
        lines = [f.lineno for f in traceback.extract_tb(e.__traceback__)
                 if os.path.abspath(f.filename) == os.path.abspath(path)]
        where = f", line {lines[-1]}" if lines else ""
        raise ValueError(f"config file {path}{where}: {type(e).__name__}: {e}".splitlines()[0]) from None


def _where_in(text: str, path: str) -> str:
    """'<file>, line <n>: ' of the innermost traceback frame in ``path`` (the config file), else ''."""
    hits = re.findall(r'File "([^"]+)", line (\d+)', text)
    mine = [(f, n) for f, n in hits if os.path.abspath(f) == os.path.abspath(path)]
    return f"{path}, line {mine[-1][1]}: " if mine else ""


_RENAMED_FLAGS = {f"--config.{old}=": f"--config.{new}=" for old, new in schema.RENAMED}


def _upgrade_argv(argv: list[str]) -> list[str]:
    """Overrides of fields renamed to plural lists (``--config.model=x``) as today's (``--config.models=('x',)``),
    with a one-line deprecation message."""
    out = []
    for a in argv:
        old = next((o for o in _RENAMED_FLAGS if a.startswith(o)), None)
        if old is None:
            out.append(a)
            continue
        value = a[len(old):]
        new = _RENAMED_FLAGS[old]
        deprecation.warn_once(old, f"{old}{value} is now {new}('{value}',) (a list); the old name will be removed "
                                   "in a later version")
        out.append(f"{new}('{value}',)")
    return out


def _parse(argv: list[str]) -> list[str]:
    """absl's flag parsing, with packaged config names, ``--help`` listing the real flags, and one-line errors
    (missing or broken config file, unknown config field, bad value)."""
    warnings.showwarning = _show_deprecation
    if any(a in ("--help", "-h", "--helpshort", "-?") for a in argv[1:]):
        print(_usage(argv[0]))
        sys.exit(0)
    argv = _upgrade_argv(argv)
    spec = None
    for i, a in enumerate(argv):
        if a.startswith("--config="):
            try:
                spec = resolve_config(a.split("=", 1)[1])
                check_config_file(spec)
            except ValueError as e:
                _die(str(e))
            argv[i] = f"--config={spec}"
    sys.argv[:] = argv  # ml_collections finds the --config.<field> overrides in sys.argv
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
        if "Traceback" in text and spec:  # a config file whose module or get_config raised
            last = text.strip().splitlines()[-1]
            _die(f"config file {_where_in(text, spec.partition(':')[0]) or spec.partition(':')[0] + ': '}{last}")
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


def _usage(program: str) -> str:
    """``--help``: what the command does, its flags (from their definitions) and the packaged configs."""
    name = pathlib.Path(program).name
    own = "\n".join(FLAGS.module_help(__name__).strip().splitlines()[1:])  # without its "<module>:" line
    return "\n".join(part for part in (
        f"usage: {name} [flags]", _COMMAND_HELP.get(name, ""), "flags:", own,
        "  --verbosity: library logging (-1..1); default: warnings only\n  --helpfull: every flag, absl's too",
        f"packaged configs: {', '.join(configs.names())}") if part)


_COMMAND_HELP = {
    "fairprune-sweep": "Run (or resume) the recall-distortion study of a config into a workdir, then write its "
                       "report (report.md, tables/, plots/).\n  e.g. fairprune-sweep --config=mnist:smoke "
                       "--workdir=workdirs/smoke",
    "fairprune-bias": "Run (or resume) the bias study of a config into a workdir, then write its report.\n"
                      "  e.g. fairprune-bias --config=planted_mnist:smoke",
    "fairprune-report": "Rebuild a workdir's report from its stored tables; pool several recall workdirs into "
                        "one report (--out); the claims table (--claims); the results document (--results).",
}


# ------------------------------------------------------------------------------------------------ running

def _quiet() -> None:
    """Library INFO logging off, unless --verbosity was given; deprecations as one line."""
    warnings.showwarning = _show_deprecation
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
    config = config_flags.DEFINE_config_file(
        "config", None, f"{what} config: a packaged config by name (e.g. mnist, mnist_wd, planted_mnist:smoke) or "
        "a config file by path (configs/mnist.py[:variant]); fields can be overridden, e.g. --config.num_seeds=7.",
        lock_config=True)
    workdir = flags.DEFINE_string("workdir", None, "Work directory (default: config.workdir or "
                                  "workdirs/<dataset>[-<variant>]); rerunning into it resumes.")
    fresh = flags.DEFINE_bool("fresh", False, "If the workdir holds another config, move it aside and start "
                              "afresh (refused while another run holds it; same config: resume).")
    flags.DEFINE_bool("debug", False, "Show tracebacks instead of one-line errors.")
    flags.mark_flags_as_required(["config"])
    return config, workdir, fresh


def _study_main(study: str) -> None:
    """Define the run flags and run the recall (``sweep``) or the bias (``bias``) study, then its report."""
    config_flag, workdir_flag, fresh_flag = _run_flags("Recall-study" if study == "recall" else "Bias-study")

    def main(argv: list[str]) -> None:
        if len(argv) > 1:
            _die(f"unexpected arguments: {argv[1:]}")
        _quiet()
        sharding.use_all_cores()  # before JAX starts its backends: every CPU core a device of the `seed` mesh
        limit_malloc_arenas()
        try:
            config = config_flag.value
        except Exception as e:  # noqa: BLE001 - a config file that fails in get_config
            _die(f"config file: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
        command = " ".join([COMMAND[study], *(results_doc.quote(a) for a in _ARGV[1:])])

        def body() -> None:
            summary = pipeline.run(config, workdir=workdir_flag.value, fresh=fresh_flag.value, study=study,
                                   command=command)
            if summary.text:
                print(summary.text)

        _guard(body)

    app.run(main, flags_parser=_parse)


_ARGV: list[str] = []


def _remember_argv(argv: list[str]) -> list[str]:
    _ARGV[:] = argv
    return argv


def sweep() -> None:
    """``fairprune-sweep``: run (or resume) the recall-distortion study."""
    sys.argv[0] = "fairprune-sweep"
    _remember_argv([a for a in sys.argv])
    _study_main("recall")


def bias() -> None:
    """``fairprune-bias``: run (or resume) the bias study."""
    sys.argv[0] = "fairprune-bias"
    _remember_argv([a for a in sys.argv])
    _study_main("bias")


def report() -> None:
    """``fairprune-report``: rebuild a workdir's report from its stored tables (several recall workdirs are
    pooled into one report with --out)."""
    sys.argv[0] = "fairprune-report"
    workdirs = flags.DEFINE_multi_string("workdir", None, "Workdir(s) of finished or partial runs.")
    out = flags.DEFINE_string("out", None, "Output folder (default: the workdir; required for several workdirs), "
                              "or the document's file with --results.")
    claims = flags.DEFINE_bool("claims", False, "Write the claims table (claims.md) of the two reference studies "
                               "over every given workdir, recall and bias runs alike, into --out.")
    results = flags.DEFINE_bool("results", False, "Write the results document (e.g. --out=docs/results.md) from "
                                "the given workdirs' reports (each rebuilt first) and their claims table.")
    readme = flags.DEFINE_string("readme", None, "With --results: also rewrite this README's generated results "
                                 "summary (between its results-summary markers) from the claims table.")
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
            paths = [pathlib.Path(p).expanduser() for p in workdirs.value]
            for p in paths:
                if not p.exists():
                    raise ValueError(f"workdir {p} does not exist")
            runs.check_distinct(paths)
            if results.value:
                if not out.value:
                    raise ValueError("--out is required with --results (the document's file, e.g. docs/results.md)")
                print(results_doc.write(paths, pathlib.Path(out.value),
                                        pathlib.Path(readme.value) if readme.value else None))
                return
            if plan.value or sequential.value:
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
                if not out.value:
                    raise ValueError("--out is required with --claims")
                print(claims_report.write(paths, pathlib.Path(out.value)))
                return
            if len(paths) == 1:
                print(pipeline.build_report(paths[0], out=out.value)[1])
                return
            if not out.value:
                raise ValueError("--out is required when pooling several workdirs")
            print(recall_report.pooled_report([runs.open_workdir(p) for p in paths], pathlib.Path(out.value)))

        _guard(body)

    app.run(main, flags_parser=_parse)


LAUNCH_USAGE = """usage: fairprune-launch [--num_processes=N] [--study=recall|bias] -- <study flags>

Run a study as N cooperating JAX processes on this machine (multi-host on one host): process 0 writes the workdir,
the output of process i is prefixed with [pi], and when one process fails the others are stopped; rerunning the
same command resumes.

flags:
  --num_processes: how many processes (default 2)
  --study: recall (fairprune-sweep's flags after --) or bias (fairprune-bias's); default recall
  -- <study flags>: the study's own flags, e.g. -- --config=mnist:smoke --workdir=workdirs/smoke

e.g. fairprune-launch --num_processes=2 -- --config=mnist:smoke"""


def launch() -> None:
    """``fairprune-launch``: run a study as N cooperating JAX processes on this machine."""
    own = sys.argv[1:sys.argv.index("--")] if "--" in sys.argv else sys.argv[1:]
    if any(a in ("--help", "-h", "--helpshort", "-?") for a in own):
        print(LAUNCH_USAGE)
        sys.exit(0)
    sys.exit(launch_lib.main(sys.argv[1:], die=_die))

