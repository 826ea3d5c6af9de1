"""A pytest plugin that prints the CPU time of each test, its subprocesses
included (wall time means little on a machine shared with other jobs).

    python -m pytest tests/test_preemption.py -p benchmarks.pytest_cpu

Each test's figure is the change of getrusage(RUSAGE_SELF) plus
getrusage(RUSAGE_CHILDREN) (user + system) over its setup, call and
teardown; a module- or session-scoped fixture counts in the first test that uses it.
"""

import resource

import pytest

_ROWS: list[tuple[str, float]] = []


def _cpu_seconds() -> float:
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    start = _cpu_seconds()
    yield
    _ROWS.append((item.nodeid, _cpu_seconds() - start))


def pytest_terminal_summary(terminalreporter):
    for nodeid, seconds in _ROWS:
        terminalreporter.write_line(f"CPU {seconds:7.1f} s  {nodeid}")
    terminalreporter.write_line(f"CPU {sum(s for _, s in _ROWS):7.1f} s  in all")
