"""fedjax_mi.program_cache: a program traced and written by one wrapper is
read back by a fresh one (as in a later process) without tracing, and gives
the same results to the bit as the plain jitted function; the key separates
settings and shapes; a damaged file is replaced; with the cache off nothing
is written; a run with the cache on writes what it writes with it off."""

import os
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_mi import config, program_cache, sweep
from helpers.shared import TINY


class State(NamedTuple):
    params: jax.Array
    key: jax.Array


def make(traces: list):
    """A jitted function over a NamedTuple with a typed key, an array and a
    Python int; appends to `traces` each time it is traced."""

    @jax.jit
    def f(state, x, n):
        traces.append(1)
        y = jnp.tanh(state.params @ x) + n
        return {"y": y, "key": jax.random.fold_in(state.key, n)}, (x.sum(), state)

    return f


def args(size=8):
    x = jax.random.normal(jax.random.key(0), (size, size))
    return State(x * 0.5, jax.random.key(3)), x, 2


def assert_bitwise_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        if jax.dtypes.issubdtype(u.dtype, jax.dtypes.prng_key):
            u, v = jax.random.key_data(u), jax.random.key_data(v)
        assert u.dtype == v.dtype
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


@pytest.fixture
def folder(tmp_path):
    path = tmp_path / "traced"
    program_cache.enable(str(path))
    yield path
    program_cache.enable(None)


def test_a_fresh_wrapper_reads_the_program_back_without_tracing(folder):
    expected = make([])(*args())
    first_traces, later_traces = [], []
    first = program_cache.cached(make(first_traces), "f", ("a", 1))
    assert_bitwise_equal(first(*args()), expected)
    assert len(first_traces) == 1 and len(os.listdir(folder)) == 1

    later = program_cache.cached(make(later_traces), "f", ("a", 1))
    for _ in range(2):
        assert_bitwise_equal(later(*args()), expected)
    assert later_traces == []  # read back, not traced


@pytest.mark.parametrize(
    "name, settings, size", [("g", ("a", 1), 8), ("f", ("a", 2), 8), ("f", ("a", 1), 4)]
)
def test_another_name_settings_or_shape_is_another_program(folder, name, settings, size):
    program_cache.cached(make([]), "f", ("a", 1))(*args())
    traces = []
    out = program_cache.cached(make(traces), name, settings)(*args(size))
    assert len(traces) == 1 and len(os.listdir(folder)) == 2
    assert_bitwise_equal(out, make([])(*args(size)))


def test_a_damaged_file_is_traced_again_and_replaced(folder):
    program_cache.cached(make([]), "f", ())(*args())
    (path,) = folder.iterdir()
    path.write_bytes(b"not a program")
    traces = []
    with pytest.warns(UserWarning, match="unreadable"):
        out = program_cache.cached(make(traces), "f", ())(*args())
    assert len(traces) == 1
    assert_bitwise_equal(out, make([])(*args()))
    later_traces = []
    program_cache.cached(make(later_traces), "f", ())(*args())
    assert later_traces == []  # the replacement is read back


def test_off_calls_the_function_and_writes_nothing(tmp_path):
    assert program_cache.folder() is None
    traces = []
    out = program_cache.cached(make(traces), "f", ())(*args())
    assert len(traces) == 1 and not list(tmp_path.iterdir())
    assert_bitwise_equal(out, make([])(*args()))


@pytest.mark.slow
def test_a_run_reads_its_programs_back_and_writes_the_same_metrics(
    tmp_path, folder, tiny_run, monkeypatch
):
    """The tiny run with the cache on, cold (programs exported) and warm
    (read back: exporting is made to fail), writes the records of the same
    run with the cache off, to the bit."""
    _, expected, _ = tiny_run
    cfg = lambda out: config.make(**TINY, protocol="sync", sync_period=4, out=str(tmp_path / out))
    cold = sweep.run(cfg("cold"), log=lambda line: None)
    assert sorted(p.name.split("-")[0] for p in folder.iterdir()) == [
        "init_runs",
        "measure",
        "round",
    ]

    def refuse(*a, **k):
        raise AssertionError("traced again")

    monkeypatch.setattr(jax.export, "export", refuse)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fallback to tracing would warn
        warm = sweep.run(cfg("warm"), log=lambda line: None)
    assert cold == expected and warm == expected


def test_a_program_that_cannot_be_exported_is_called_as_usual_and_tried_once(folder):
    """A host callback cannot be exported: the function runs as jitted,
    with one warning, not a new export attempt at every call."""

    @jax.jit
    def f(x):
        return jax.pure_callback(
            lambda a: np.asarray(a) * 2, jax.ShapeDtypeStruct((3,), x.dtype), x
        )

    wrapped = program_cache.cached(f, "callback", ())
    x = jnp.arange(3.0)
    with pytest.warns(UserWarning, match="not exported") as record:
        for _ in range(3):
            np.testing.assert_array_equal(np.asarray(wrapped(x)), [0.0, 2.0, 4.0])
    assert len([w for w in record if "not exported" in str(w.message)]) == 1
    assert not folder.exists() or not list(folder.iterdir())
