"""Traced programs kept across processes, so that a second invocation of an
experiment skips JAX's tracing as well as XLA's compilation.

JAX's persistent compilation cache stores compiled programs, but it looks
them up by the program's lowered text: every process traces every jitted
function again first. For the eval-point measurement (every estimator,
vmapped over models and datasets, mapped over runs) that tracing is the
largest part of a warm start (docs/performance.md, "Compilation cache").
`cached(fn, name, settings)` wraps a jitted function so that, for each new
signature of its arguments, the traced and lowered program is exported
(`jax.export`) and written to a file whose name hashes everything the
trace depends on: `name`, `settings` (the static settings that built
`fn`), the arguments' tree, shapes and dtypes, this package's source, the
versions of jax, jaxlib, flax and optax, the backend and the JAX options
that change a trace. A later process with the same key loads the file and
calls the program without tracing `fn`; its compilation is then found in
JAX's cache. The exported program is the one jit would have run: results
are the same to the bit (tests/test_program_cache.py).

Off unless `enable(folder)` was called (the `experiments` programs do it
with their `--compilation_cache_dir`). Only single-process, unsharded
programs are cached. A program that cannot be exported, or a file that
cannot be read, falls back to tracing as usual; a damaged file is
replaced. The key sees the package's files, not the running process: a
library function replaced at run time (a monkeypatch, a debugging print)
is not traced while the cache holds the program, so turn the cache off for
that (`--compilation_cache_dir=`). For the same reason the test session
leaves it off in-process (tests patch library functions).
"""

import functools
import hashlib
import importlib.metadata
import os
import pickle
import tempfile
import warnings
from typing import Any, Callable, Hashable, Optional

import jax

_folder: Optional[str] = None

# The options of jax.config that change what a function traces or lowers to.
_TRACE_OPTIONS = (
    "jax_enable_x64",
    "jax_default_matmul_precision",
    "jax_numpy_rank_promotion",
    "jax_default_prng_impl",
    "jax_threefry_partitionable",
)


def enable(folder: Optional[str]) -> None:
    """Keep traced programs in `folder` (created when needed); None or ''
    turns the cache off."""
    global _folder
    _folder = folder or None


def folder() -> Optional[str]:
    """The folder `enable` set, or None when the cache is off."""
    return _folder


@functools.lru_cache(maxsize=1)
def _environment() -> str:
    """What every trace depends on besides its function's own settings."""
    package = os.path.dirname(os.path.abspath(__file__))
    source = hashlib.sha256()
    for root, dirs, files in os.walk(package):
        dirs.sort()
        for name in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(root, name)
            source.update(os.path.relpath(path, package).encode())
            with open(path, "rb") as f:
                source.update(f.read())
    versions = [importlib.metadata.version(p) for p in ("jax", "jaxlib", "flax", "optax")]
    device = jax.devices()[0]
    options = [str(getattr(jax.config, o, None)) for o in _TRACE_OPTIONS]
    return repr((source.hexdigest(), versions, device.platform, device.device_kind, options))


def _signature(leaves: list) -> tuple:
    """Shape, dtype and weak type of each argument leaf."""
    out = []
    for leaf in leaves:
        aval = jax.typeof(leaf)
        out.append((tuple(aval.shape), str(aval.dtype), bool(getattr(aval, "weak_type", False))))
    return tuple(out)


def _spec(leaf) -> jax.ShapeDtypeStruct:
    aval = jax.typeof(leaf)
    return jax.ShapeDtypeStruct(aval.shape, aval.dtype, weak_type=aval.weak_type)


class _Program:
    """A cached function's program for one argument signature."""

    def __init__(self, call: Callable, out_tree: Any):
        self.call = call
        self.out_tree = out_tree


def cached(fn: Callable, name: str, settings: Hashable) -> Callable:
    """`fn` (jitted, positional arguments, pytrees of arrays and Python
    scalars) with its traced programs kept in the `enable`d folder.

    `settings` must determine everything `fn` closes over that its
    arguments do not (a tuple of the static settings it was built from);
    its repr goes into the key. With the cache off (or several processes)
    the call goes straight to `fn`.
    """
    programs: dict[tuple, _Program] = {}

    @functools.wraps(fn)
    def call(*args):
        if _folder is None or jax.process_count() > 1:
            return fn(*args)
        leaves, in_tree = jax.tree.flatten(args)
        signature = (repr(in_tree), _signature(leaves))
        if signature not in programs:  # None: fn cannot be exported, not tried again
            programs[signature] = _load_or_export(
                fn, name, repr(settings), in_tree, leaves, signature
            )
        program = programs[signature]
        if program is None:  # fn cannot be exported: trace as usual
            return fn(*args)
        return jax.tree.unflatten(program.out_tree, program.call(*leaves))

    return call


def _path(name: str, settings: str, signature: tuple) -> str:
    key = hashlib.sha256(repr((name, settings, signature, _environment())).encode())
    return os.path.join(_folder, f"{name}-{key.hexdigest()[:32]}.jaxexport")


def _load_or_export(
    fn: Callable, name: str, settings: str, in_tree, leaves: list, signature: tuple
) -> Optional[_Program]:
    path = _path(name, settings, signature)
    try:
        with open(path, "rb") as f:
            out_tree, blob = pickle.load(f)
        exported = jax.export.deserialize(blob)
    except FileNotFoundError:
        exported = None
    except Exception as e:  # a damaged or foreign file: export again over it
        warnings.warn(f"program cache: {path} unreadable ({e}); tracing again")
        exported = None
    if exported is None:
        traced = {}

        def flat(*flat_args):
            out, traced["out_tree"] = jax.tree.flatten(fn(*jax.tree.unflatten(in_tree, flat_args)))
            return out

        try:
            exported = jax.export.export(jax.jit(flat))(*map(_spec, leaves))
            out_tree = traced["out_tree"]
            blob = exported.serialize()
        except Exception as e:
            warnings.warn(f"program cache: {name} not exported ({type(e).__name__}: {e})")
            return None
        _write(path, pickle.dumps((out_tree, blob)))
    return _Program(jax.jit(exported.call), out_tree)


def _write(path: str, data: bytes) -> None:
    """Write atomically; a cache that cannot be written is only slower."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        warnings.warn(f"program cache: could not write {path} ({e})")
