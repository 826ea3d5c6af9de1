"""The absl flags of one experiment, shared by `run`, `sweep` and `reproduce`.

Every setting declared in `fedjax_mi.config` is a flag of the same name,
type, default and help (defined in one loop below); `config_from_flags`
builds the RunConfig and `main_guard` turns bad input, divergence, a failed
write and preemption into one line on stderr and the exit statuses below.
"""

import contextlib
import os
import shlex
import sys
from typing import Callable

import jax
from absl import flags, logging

from fedjax_mi import data as data_lib
from experiments import configs
from fedjax_mi import (
    checkpoint,
    config,
    folder_lock,
    metrics_io,
    outputs,
    preemption,
    program_cache,
    sharding,
)

# Exit statuses (README "Exit statuses"); 1 is left to unexpected errors.
EXIT_BAD_INPUT = 2  # a flag, data file, checkpoint or an --out in use by another run
EXIT_DIVERGED = 3  # non-finite training loss
EXIT_IO_ERROR = 74  # sysexits.h EX_IOERR: a result could not be written (disk full, read-only)
EXIT_PREEMPTED = 75  # sysexits.h EX_TEMPFAIL: stopped by SIGTERM/SIGINT, saved; run again to resume


def _define(name: str) -> None:
    """The flag of one setting, from its declaration in `fedjax_mi.config`."""
    _, field = config.FIELDS[name]
    meta, kind = field.metadata, config.setting_type(name)
    if meta["enum"]:
        flags.DEFINE_enum(name, field.default, list(meta["enum"]), meta["help"])
    else:
        define = {
            str: flags.DEFINE_string,
            int: flags.DEFINE_integer,
            float: flags.DEFINE_float,
            bool: flags.DEFINE_boolean,
        }[kind]
        define(name, field.default, meta["help"])


for _name in config.FIELDS:
    _define(_name)

flags.DEFINE_string(
    "config",
    None,
    "start from a Python config of experiments/configs "
    f"({', '.join(configs.NAMES)}; 'fig1:quick' for a preset); the flags given "
    "override its settings",
)

# Not a RunConfig field: how a sweep is placed, not what it computes.
flags.DEFINE_integer(
    "devices",
    1,
    "split the runs of a sweep (experiments.sweep, reproduce) "
    "over this many devices; the number of runs must be a multiple of it",
)


# Several processes (hosts) running one program; absent: one process, or a
# SLURM job's tasks (sharding.init_distributed).
flags.DEFINE_string(
    "coordinator",
    None,
    "address:port of process 0 when several processes run "
    "one program (with --num_processes, --process_id; default: SLURM's, if any)",
)
flags.DEFINE_integer("num_processes", None, "number of processes (with --coordinator)")
flags.DEFINE_integer(
    "process_id", None, "this process's index, 0 writes the files (with --coordinator)"
)


def default_compilation_cache_dir() -> str:
    """$XDG_CACHE_HOME/fedjax_mi/jax, or ~/.cache/fedjax_mi/jax."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fedjax_mi", "jax")


flags.DEFINE_string(
    "compilation_cache_dir",
    default_compilation_cache_dir(),
    "JAX's persistent compilation cache: later invocations of the same "
    "experiment reuse its compiled programs (docs/performance.md); '' disables it",
)

FLAGS = flags.FLAGS


def use_compilation_cache(path: str) -> None:
    """Turn on JAX's persistent compilation cache in `path` ('' leaves it
    off). Every program is cached, however fast it compiled: the many small
    ones (initialisation, eager ops) add up to seconds at start-up."""
    if not path:
        return
    jax.config.update("jax_compilation_cache_dir", path)
    program_cache.enable(os.path.join(path, "traced"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@contextlib.contextmanager
def command_folder(out: str, name: str):
    """For a whole command: OUT locked (by process 0 of several, which
    writes the files) and prepared (refused, resumed or emptied as
    --resume/--overwrite say) before any work, every process waiting for
    that. Yields whether this process writes."""
    writer = jax.process_index() == 0
    with folder_lock.hold(out) if writer else contextlib.nullcontext():
        if writer:
            outputs.prepare_out(out, FLAGS.resume, FLAGS.overwrite)
        sharding.barrier(f"fedjax_mi {name} out")
        yield writer


def explicit_settings() -> dict:
    """The settings given on the command line (or in a --flagfile)."""
    return {name: getattr(FLAGS, name) for name in config.FIELDS if FLAGS[name].present}


def config_from_flags(**overrides) -> config.RunConfig:
    """Every setting from its flag; with --config, the Python config's
    settings where no flag is given. `overrides` come last."""
    if FLAGS.config:
        cfg = configs.load(FLAGS.config).replace(**explicit_settings())
    else:
        cfg = config.make(**{name: getattr(FLAGS, name) for name in config.FIELDS})
    return cfg.replace(**overrides)


def resume_command(argv: list[str]) -> str:
    """The command line that continues this one: the same module and flags
    with --resume (and without --overwrite)."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    program = f"python -m {spec.name}" if spec is not None and spec.name else f"python {argv[0]}"
    dropped = ("--resume", "--noresume", "--overwrite", "--nooverwrite")
    kept = [a for a in argv[1:] if a.split("=", 1)[0] not in dropped]
    return f"{program} {shlex.join(kept + ['--resume'])}"


def main_guard(fn: Callable[[], None]) -> None:
    """Run fn; bad input, divergence, a failed write or a stop signal exit
    with one line on stderr naming the cause (statuses above)."""
    # orbax and jax log routine INFO lines through absl; the progress lines suffice.
    logging.set_verbosity(logging.WARNING)
    try:
        sharding.init_distributed(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    use_compilation_cache(FLAGS.compilation_cache_dir)
    try:
        fn()
    except config.ConfigError as e:
        print(f"error: {e.as_flag()}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except (data_lib.DataError, checkpoint.CheckpointError, folder_lock.LockError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except FloatingPointError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_DIVERGED)
    except metrics_io.OutputError as e:
        print(
            f"error: {e}; free space or fix permissions, then rerun with --resume", file=sys.stderr
        )
        sys.exit(EXIT_IO_ERROR)
    except preemption.Preempted as e:
        print(f"{e}; resume with: {resume_command(sys.argv)}", file=sys.stderr)
        sys.exit(EXIT_PREEMPTED)
