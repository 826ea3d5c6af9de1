"""The absl flags of one experiment, shared by `run` and `reproduce`.

Every flag is a field of `fedjax_mi.experiment.RunConfig` with the same
name; `config_from_flags` builds the config and `main_guard` turns bad input,
divergence, a failed write and preemption into one line on stderr and the
exit statuses below.
"""

import dataclasses
import os
import shlex
import sys
from typing import Callable

import jax
from absl import flags, logging

from fedjax_mi import data as data_lib
from fedjax_mi import checkpoint, experiment, folder_lock, metrics_io, preemption, sharding

# Exit statuses (README "Exit statuses"); 1 is left to unexpected errors.
EXIT_BAD_INPUT = 2   # a flag, data file, checkpoint or an --out in use by another run
EXIT_DIVERGED = 3    # non-finite training loss
EXIT_IO_ERROR = 74   # sysexits.h EX_IOERR: a result could not be written (disk full, read-only)
EXIT_PREEMPTED = 75  # sysexits.h EX_TEMPFAIL: stopped by SIGTERM/SIGINT, saved; run again to resume

D = experiment.RunConfig()

flags.DEFINE_string("dataset", D.dataset, f"one of {data_lib.DATASETS}; 'digits' is the "
                    "embedded offline default, 'cifar10' reads --cifar_dir or TFDS")
flags.DEFINE_string("cifar_dir", None, "folder in the official cifar-10-batches-py layout "
                    "(or its parent)")
flags.DEFINE_string("tfds_data_dir", None, "TFDS data_dir holding a prepared cifar10")
flags.DEFINE_integer("workers", D.workers, "number of workers K")
flags.DEFINE_string("split", D.split, f"partition of the training set: {data_lib.SPLITS}")
flags.DEFINE_float("alpha", None, "Dirichlet concentration (only with --split=dirichlet)")
flags.DEFINE_integer("per_worker", None, "truncate every local dataset to this many samples")
flags.DEFINE_string("protocol", D.protocol, "'nosync': the average is only measured; "
                    "'periodic' (or its old name 'sync'): sent back every --sync_period steps; "
                    "'dynamic': when a worker drifts from the last average by more than "
                    "--delta; 'triggered': when the measurement says so (docs/protocols.md)")
flags.DEFINE_integer("sync_period", None, "local steps between averagings (protocol periodic)")
flags.DEFINE_integer("check_every", None, "dynamic: local steps b between condition checks")
flags.DEFINE_float("delta", None, "dynamic: sync when some worker's ||w - r||^2 > delta "
                   "(squared L2 distance of all its parameters from the last average r)")
flags.DEFINE_string("trigger_metric", None, "triggered: 'acc' (default) or 'mi_zy' (the "
                    "primary I(Z;Y) estimator of --mi), on the local datasets")
flags.DEFINE_float("trigger_ratio", None, "triggered: sync when the average's quality < "
                   "rho x the local models' own (0: never, inf: at every eval point)")
flags.DEFINE_integer("eval_period", D.eval_period, "local steps between measurements")
flags.DEFINE_float("epochs", D.epochs, "epochs of each worker over its local data")
flags.DEFINE_integer("batch_size", D.batch_size, "local mini-batch size")
flags.DEFINE_float("lr", D.lr, "SGD learning rate")
flags.DEFINE_float("momentum", D.momentum, "SGD momentum (0: plain SGD)")
flags.DEFINE_enum("init", D.init, ["flax", "torch"], "initial weights: flax's defaults "
                  "(lecun_normal, zero biases) or PyTorch's (U(+-1/sqrt(fan_in)) for weights and biases)")
flags.DEFINE_enum("input_scale", D.input_scale, ["unit", "symmetric"],
                  "pixels scaled to [0, 1] (unit) or [-1, 1] (symmetric, PyTorch's CIFAR-10 tutorial)")
flags.DEFINE_string("opt_sync", D.opt_sync, "optimiser state at a sync: average, reset or keep")
flags.DEFINE_string("aggregate", D.aggregate, "what a sync sends back: 'mean', 'median' "
                    "(coordinate-wise, K >= 3) or 'weighted' (refused: shares are cut to one size)")
flags.DEFINE_boolean("independent_init", D.independent_init,
                     "draw each worker's initial weights independently (default: identical)")
flags.DEFINE_integer("seed", D.seed, "seed of the initial weights, data order and EDGE keys")
flags.DEFINE_integer("data_seed", None, "seed of the data partition (default: --seed)")
flags.DEFINE_integer("mi_samples", None, "local samples measured per dataset (default: all)")
flags.DEFINE_integer("test_samples", None, "test samples measured (default: all)")
flags.DEFINE_string("mi", D.mi, "estimators to record, comma-separated, from "
                    "edge_reference, quantile, knn, probe, kde (docs/estimators.md), or 'none' "
                    "(accuracy and the head's bounds only); the first defining a quantity also "
                    "fills mi_xz / mi_zy")
flags.DEFINE_string("edge_version", D.edge_version, "EDGE reference version (4.2.0, 4.3.1, 4.4.1)")
flags.DEFINE_string("edge_xz", D.edge_xz, "edge_reference options for I(X;Z), 'NAME=VALUE; ...': "
                    "the reference's keywords (U, gamma, epsilon, L_ensemble, ...) replacing the "
                    "study's settings")
flags.DEFINE_string("edge_zy", D.edge_zy, "edge_reference options for I(Z;Y), as --edge_xz")
flags.DEFINE_float("kde_noise_var", D.kde_noise_var, "KDE noise variance s^2: a multiple of Z's "
                   "mean per-dimension variance (--kde_relative, the default) or absolute")
flags.DEFINE_boolean("kde_relative", D.kde_relative, "KDE noise relative to Z's own scale "
                     "(--nokde_relative: absolute s^2)")
flags.DEFINE_integer("kde_queries", D.kde_queries, "KDE query rows per estimate (all N rows "
                     "enter each sum); default as docs/estimators.md measured")
flags.DEFINE_integer("eval_chunk", D.eval_chunk, "images per forward chunk when measuring "
                     "(at most 50 on the CPU, faster there: docs/performance.md)")
flags.DEFINE_string("out", D.out, "output folder")
flags.DEFINE_integer("checkpoint_every", D.checkpoint_every,
                     "save the whole training state every N eval points (0: never)")
flags.DEFINE_boolean("resume", D.resume, "continue the run in --out from its last checkpoint")
flags.DEFINE_boolean("overwrite", D.overwrite, "delete the results already in --out first")
flags.DEFINE_boolean("continue_on_divergence", D.continue_on_divergence,
                     "warn instead of stopping when a training loss is NaN or inf")

# Not a RunConfig field: how a sweep is placed, not what it computes.
flags.DEFINE_integer("devices", 1, "split the runs of a sweep (experiments.sweep, reproduce) "
                     "over this many devices; the number of runs must be a multiple of it")


# Several processes (hosts) running one program; absent: one process, or a
# SLURM job's tasks (sharding.init_distributed).
flags.DEFINE_string("coordinator", None, "address:port of process 0 when several processes run "
                    "one program (with --num_processes, --process_id; default: SLURM's, if any)")
flags.DEFINE_integer("num_processes", None, "number of processes (with --coordinator)")
flags.DEFINE_integer("process_id", None, "this process's index, 0 writes the files "
                     "(with --coordinator)")


def default_compilation_cache_dir() -> str:
    """$XDG_CACHE_HOME/fedjax_mi/jax, or ~/.cache/fedjax_mi/jax."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fedjax_mi", "jax")


flags.DEFINE_string("compilation_cache_dir", default_compilation_cache_dir(),
                    "JAX's persistent compilation cache: later invocations of the same "
                    "experiment reuse its compiled programs (docs/performance.md); '' disables it")

FLAGS = flags.FLAGS


def use_compilation_cache(path: str) -> None:
    """Turn on JAX's persistent compilation cache in `path` ('' leaves it
    off). Every program is cached, however fast it compiled: the many small
    ones (initialisation, eager ops) add up to seconds at start-up."""
    if not path:
        return
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def config_from_flags(**overrides) -> experiment.RunConfig:
    values = {f.name: getattr(FLAGS, f.name) for f in dataclasses.fields(experiment.RunConfig)}
    values.update(overrides)
    return experiment.RunConfig(**values)


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
    except (experiment.ConfigError, data_lib.DataError, checkpoint.CheckpointError,
            folder_lock.LockError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except FloatingPointError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_DIVERGED)
    except metrics_io.OutputError as e:
        print(f"error: {e}; free space or fix permissions, then rerun with --resume",
              file=sys.stderr)
        sys.exit(EXIT_IO_ERROR)
    except preemption.Preempted as e:
        print(f"{e}; resume with: {resume_command(sys.argv)}", file=sys.stderr)
        sys.exit(EXIT_PREEMPTED)
