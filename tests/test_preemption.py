"""fedjax_mi.preemption: SIGKILL, then SIGTERM, then --resume gives the
uninterrupted metrics (a run and a sweep); SIGINT in-process stops after
the next eval point. The runs in between hold their folders against other
runs (fedjax_mi.folder_lock). docs/reliability.md lists which test shows
which guarantee."""

import json
import os
import select
import shlex
import signal
import subprocess
import sys

import pytest

from experiments import progress
from fedjax_mi import config, folder_lock, metrics_io, preemption, sweep
from helpers.shared import CONFIG, FLAGS, ROOT, checkpoint_steps


# Runs module argv[4] with arguments argv[5:], pausing at the second call of
# `checkpoint.save` (argv[3] == "save": one checkpoint complete, the next eval
# point's records written but not yet checkpointed) or of the sweep's round
# (argv[3] == "round": that round dispatched, so a signal now arrives while it
# computes): it writes one byte to the pipe fd argv[1], then waits for a byte
# on the pipe fd argv[2] (forever, if none comes: until it is killed).
_PAUSED = """
import os, runpy, sys
from fedjax_mi import checkpoint, config, outputs, sweep
ready_fd, go_fd, where, module = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
calls = []
def pause():
    calls.append(None)
    if len(calls) == 2:
        os.write(ready_fd, b"!")
        os.read(go_fd, 1)
def paused_save(*args, save=checkpoint.save):
    pause()
    return save(*args)
def paused_prepare(*args, prepare=sweep.prepare_sweep):
    # Wraps the sweep's round as the loop calls it (after the program cache,
    # which would otherwise trace the pause into the program).
    prepared = prepare(*args)
    def paused_round(*args):
        result = prepared.round_fn(*args)
        pause()
        return result
    return prepared._replace(round_fn=paused_round)
if where == "save":
    checkpoint.save = paused_save
else:
    sweep.prepare_sweep = paused_prepare
sys.argv = [module] + sys.argv[5:]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def start_paused(module, args, where, log_dir, name):
    """Start `python -m module args` and wait until it pauses at its second
    `where` ("save" or "round"); returns (process, fd that lets it go on).
    Its stdout and stderr go to log_dir/name.out and .err. The child
    announces the pause on a pipe, so whatever the test does next lands
    mid-run, at a known point, however fast the machine is."""
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    with open(log_dir / f"{name}.out", "w") as out, open(log_dir / f"{name}.err", "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", _PAUSED, str(ready_w), str(go_r), where, module, *args],
            cwd=ROOT,
            stdout=out,
            stderr=err,
            pass_fds=(ready_w, go_r),
        )
    os.close(ready_w)
    os.close(go_r)
    try:
        ready, _, _ = select.select([ready_r], [], [], 300)
        signalled = os.read(ready_r, 1) if ready else b""
    finally:
        os.close(ready_r)
    if signalled != b"!":  # it ended (EOF) or hung before the pause
        proc.kill()
        proc.wait()
        os.close(go_w)
        pytest.fail(
            f"never reached its second {where}:\n" + (log_dir / f"{name}.err").read_text()[-3000:]
        )
    return proc, go_w


def kill_at_second_checkpoint(module, args, log_dir):
    """Run `python -m module args` until it starts its second checkpoint, then
    SIGKILL it: after a checkpoint and after records that the resumed run
    must drop."""
    proc, go = start_paused(module, args, "save", log_dir, "killed")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    os.close(go)
    assert proc.returncode == -signal.SIGKILL


def sigterm_in_second_round(module, args, log_dir, while_paused=lambda pid: None):
    """Run `python -m module args`, send SIGTERM while its second round
    computes, call `while_paused(pid)` (the process holds its folders), let
    it go on, and return its stderr lines and the resume command it prints.
    It must finish that eval point, save and exit with status 75."""
    proc, go = start_paused(module, args, "round", log_dir, "preempted")
    try:
        proc.send_signal(signal.SIGTERM)
        while_paused(proc.pid)
    finally:
        os.write(go, b"!")
        os.close(go)
        proc.wait(timeout=600)
    stderr = (log_dir / "preempted.err").read_text()
    assert proc.returncode == 75, stderr[-3000:]
    lines = stderr.splitlines()
    # Two lines and no traceback: the signal's receipt, then how to resume.
    assert len(lines) == 2 and lines[0].startswith("SIGTERM received: finishing"), stderr[-3000:]
    assert lines[1].startswith("stopped by SIGTERM after step") and "resume with: " in lines[1]
    command = shlex.split(lines[1].split("resume with: ", 1)[1])
    assert command[:3] == ["python", "-m", module] and command[-1] == "--resume"
    return command


def run_command(command):
    """Run a printed `python -m ...` command with this interpreter."""
    return subprocess.run(
        [sys.executable, *command[1:]], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
@pytest.mark.portability
def test_sigkill_then_sigterm_then_resume_gives_the_uninterrupted_metrics(tmp_path, uninterrupted):
    out = tmp_path / "killed"
    kill_at_second_checkpoint("experiments.run", [*FLAGS, f"--out={out}"], tmp_path)
    assert checkpoint_steps(out / "checkpoints") == [4]
    with open(out / "metrics.jsonl") as fh:  # whatever was there is complete lines
        partial = [json.loads(line) for line in fh]
    # The eval point at step 8 is written but not checkpointed: --resume must
    # drop and recompute it.
    assert {r["step"] for r in partial} == {0, 4, 8}
    assert 0 < len(partial) < len(uninterrupted.splitlines())
    # The killed process left its lock file; the OS released the lock.
    assert (out / folder_lock.LOCK_NAME).read_text().strip().isdigit()
    refused = subprocess.run(
        [sys.executable, "-m", "experiments.run", *FLAGS, f"--out={out}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert refused.returncode == 2 and "--resume" in refused.stderr

    # Resumed (from step 4), then preempted while the round to step 12
    # computes; it checkpoints only when stopped (--checkpoint_every=100). A
    # second run into the folder meanwhile, even with --overwrite, exits at
    # once naming the holder and deletes nothing.
    busy = []
    command = sigterm_in_second_round(
        "experiments.run",
        [*FLAGS, f"--out={out}", "--resume", "--checkpoint_every=100"],
        tmp_path,
        lambda pid: busy.append(
            (
                pid,
                subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "experiments.run",
                        *FLAGS,
                        f"--out={out}",
                        "--overwrite",
                    ],
                    cwd=ROOT,
                    capture_output=True,
                    text=True,
                    timeout=600,
                ),
            )
        ),
    )
    ((pid, second),) = busy
    assert second.returncode == 2, second.stderr[-3000:]
    assert second.stderr.splitlines() == [second.stderr.strip()]  # one line
    assert f"{str(out)!r} is in use by another run (process {pid}" in second.stderr
    assert "resumed from the checkpoint at step 4" in (tmp_path / "preempted.out").read_text()
    assert checkpoint_steps(out / "checkpoints") == [4, 12]
    records = metrics_io.read_records(str(out / "metrics.jsonl"))
    assert max(r["step"] for r in records) == 12
    assert uninterrupted.startswith((out / "metrics.jsonl").read_bytes())

    resumed = run_command(command)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from the checkpoint at step 12" in resumed.stdout
    with open(out / "metrics.jsonl", "rb") as fh:
        assert fh.read() == uninterrupted


@pytest.mark.slow
def test_sigint_stops_after_the_next_eval_point_and_restores_the_handlers(tmp_path, uninterrupted):
    # In-process (Ctrl-C in a notebook): SIGINT arrives while step 8's
    # progress line is logged, after that eval point's checkpoint decision,
    # so the run finishes the next eval point, 12, and saves there.
    cfg = config.make(**{**CONFIG.flat(), "checkpoint_every": 0, "out": str(tmp_path)})
    before = signal.getsignal(signal.SIGINT)

    def log(line):
        if " step 8/" in line:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(preemption.Preempted, match=r"^stopped by SIGINT after step 12/18: "):
        sweep.run(cfg, log=log, progress=progress.Printer(log))
    assert signal.getsignal(signal.SIGINT) is before
    assert checkpoint_steps(tmp_path / "checkpoints") == [12]
    assert {r["step"] for r in metrics_io.read_records(str(tmp_path / "metrics.jsonl"))} == set(
        range(0, 13, 4)
    )
    sweep.run(config.make(**{**cfg.flat(), "resume": True}), log=lambda line: None)
    assert (tmp_path / "metrics.jsonl").read_bytes() == uninterrupted


@pytest.mark.slow
def test_sigkill_then_sigterm_then_resume_a_sweep_gives_each_runs_uninterrupted_metrics(tmp_path):
    # Two seeds x two protocols in one program, one checkpoint for all four
    # runs under OUT/checkpoints; 5 eval points (0, 4, ..., 16).
    flags = FLAGS[:3] + [
        "--epochs=4",
        "--eval_period=4",
        "--lr=0.05",
        "--checkpoint_every=1",
        "--mi=kde",
        "--seeds=0,1",
        "--protocols=sync,nosync",
        "--sync_periods=8",
    ]
    out = tmp_path / "sweep"
    # The same four runs uninterrupted, in-process, as one sweep, in the
    # sweep CLI's order (seeds, then protocols; checked below). First: the
    # processes below then load its compiled programs (tests/conftest.py).
    order = [(0, "sync", 8), (0, "nosync", None), (1, "sync", 8), (1, "nosync", None)]
    whole = [
        config.make(
            **{
                **CONFIG.flat(),
                "epochs": 4.0,
                "checkpoint_every": 0,
                "seed": seed,
                "protocol": protocol,
                "sync_period": period,
                "out": str(tmp_path / "whole" / str(i)),
            }
        )
        for i, (seed, protocol, period) in enumerate(order)
    ]
    sweep.run_sweep(whole, log=lambda line: None)

    kill_at_second_checkpoint("experiments.sweep", [*flags, f"--out={out}"], tmp_path)
    assert checkpoint_steps(out / "checkpoints") == [4]
    assert not (out / "runs.json").exists()  # killed before the end

    # Resumed (from step 4), then preempted while the round to step 12
    # computes. Meanwhile the sweep's folder and each run's folder are locked
    # against another process (this one).
    def refused_here(pid):
        for folder in (out, out / "iid-nosync-lr0.05-seed1"):
            assert folder.is_dir()
            with pytest.raises(folder_lock.LockError, match=f"process {pid}, "):
                with folder_lock.hold(str(folder)):
                    pass
        one = config.make(
            **{**CONFIG.flat(), "overwrite": True, "out": str(out / "iid-sync8-lr0.05-seed0")}
        )
        with pytest.raises(folder_lock.LockError, match=f"is in use by another run .process {pid}"):
            sweep.run(one, log=lambda line: None)

    command = sigterm_in_second_round(
        "experiments.sweep",
        [*flags, f"--out={out}", "--resume", "--checkpoint_every=100"],
        tmp_path,
        refused_here,
    )
    assert checkpoint_steps(out / "checkpoints") == [4, 12]
    assert not (out / "runs.json").exists()
    resumed = run_command(command)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from the checkpoint at step 12" in resumed.stdout
    runs = json.loads((out / "runs.json").read_text())
    assert [(r["seed"], r["protocol"], r["sync_period"]) for r in runs] == order
    for r, cfg in zip(runs, whole):
        with (
            open(os.path.join(r["out"], "metrics.jsonl"), "rb") as a,
            open(os.path.join(cfg.out, "metrics.jsonl"), "rb") as b,
        ):
            assert a.read() == b.read(), r["name"]
