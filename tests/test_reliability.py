"""Nothing lost, same numbers every time: kill-and-resume, determinism,
refusal to overwrite, divergence, damaged checkpoints."""

import json
import os
import select
import signal
import subprocess
import sys

import pytest

from fedjax_mi import experiment, metrics_io

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 13 eval points (0, 4, ..., 48, 50), a checkpoint after every one. KDE
# alone measures (what is tested here does not depend on the estimator, and
# each subprocess compiles its measurement anew: the probe's would dominate).
FLAGS = ["--per_worker=64", "--batch_size=16", "--epochs=12.5", "--eval_period=4", "--lr=0.05",
         "--protocol=sync", "--sync_period=8", "--checkpoint_every=1", "--mi=kde"]
# The same run as a config (in-process runs share the compiled programs).
CONFIG = experiment.RunConfig(dataset="digits", per_worker=64, batch_size=16, epochs=12.5,
                              eval_period=4, lr=0.05, protocol="sync", sync_period=8,
                              checkpoint_every=1, mi="kde")


def start(out, *extra):
    return subprocess.Popen([sys.executable, "-m", "experiments.run", *FLAGS, f"--out={out}",
                             *extra], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finish(proc):
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    return stdout


# Runs module argv[2] with arguments argv[3:], with `checkpoint.save` wrapped:
# its second call (one checkpoint complete, the next eval point's records
# written but not yet checkpointed) writes one byte to the pipe fd argv[1]
# and then blocks until the process is killed.
_PAUSED = """
import os, runpy, sys, threading
from fedjax_mi import checkpoint
fd, module = int(sys.argv[1]), sys.argv[2]
save, calls = checkpoint.save, []
def paused_save(*args, **kwargs):
    calls.append(None)
    if len(calls) == 2:
        os.write(fd, b"!")
        threading.Event().wait()
    return save(*args, **kwargs)
checkpoint.save = paused_save
sys.argv = [module] + sys.argv[3:]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def kill_at_second_checkpoint(module, args, log_dir):
    """Run `python -m module args` until it starts its second checkpoint, then
    SIGKILL it. The child announces that moment on a pipe and waits there, so
    the kill always lands mid-run, after a checkpoint and after records that
    the resumed run must drop, however fast the machine is."""
    read_fd, write_fd = os.pipe()
    with open(log_dir / "killed.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-c", _PAUSED, str(write_fd), module, *args],
                                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                pass_fds=(write_fd,))
    os.close(write_fd)
    try:
        ready, _, _ = select.select([read_fd], [], [], 300)
        signalled = os.read(read_fd, 1) if ready else b""
    finally:
        os.close(read_fd)
    if signalled != b"!":  # it ended (EOF) or hung before its second checkpoint
        proc.kill()
        proc.wait()
        pytest.fail("never reached its second checkpoint:\n"
                    + (log_dir / "killed.log").read_text()[-3000:])
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def checkpoint_steps(ckpts):
    return sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    experiment.run(experiment.RunConfig(**{**CONFIG.__dict__, "out": str(out)}),
                   log=lambda line: None)
    with open(out / "metrics.jsonl", "rb") as fh:
        return fh.read()


def test_sigkill_then_resume_gives_the_uninterrupted_metrics(tmp_path, uninterrupted):
    out = tmp_path / "killed"
    kill_at_second_checkpoint("experiments.run", [*FLAGS, f"--out={out}"], tmp_path)
    assert checkpoint_steps(out / "checkpoints") == [4]
    with open(out / "metrics.jsonl") as fh:  # whatever was there is complete lines
        partial = [json.loads(line) for line in fh]
    # The eval point at step 8 is written but not checkpointed: --resume must
    # drop and recompute it.
    assert {r["step"] for r in partial} == {0, 4, 8}
    assert 0 < len(partial) < len(uninterrupted.splitlines())
    refused = subprocess.run([sys.executable, "-m", "experiments.run", *FLAGS, f"--out={out}"],
                             cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    stdout = finish(start(out, "--resume"))
    assert "resumed from the checkpoint at step" in stdout
    with open(out / "metrics.jsonl", "rb") as fh:
        assert fh.read() == uninterrupted


def test_same_flags_give_byte_identical_metrics(tmp_path, uninterrupted):
    # A second process (the killed-and-resumed run above is a third).
    out = tmp_path / "again"
    finish(start(out, "--checkpoint_every=0"))
    with open(out / "metrics.jsonl", "rb") as fh:
        assert fh.read() == uninterrupted


def test_overwrite_starts_over(tmp_path):
    cfg = experiment.RunConfig(**{**CONFIG.__dict__, "epochs": 2, "out": str(tmp_path)})
    first = experiment.run(cfg, log=lambda line: None)
    with pytest.raises(experiment.ConfigError, match="--out: .* already holds results"):
        experiment.run(cfg, log=lambda line: None)
    again = experiment.run(experiment.RunConfig(**{**cfg.__dict__, "overwrite": True}),
                           log=lambda line: None)
    assert again == first


def test_resume_refuses_other_settings(tmp_path):
    cfg = experiment.RunConfig(**{**CONFIG.__dict__, "epochs": 2, "out": str(tmp_path)})
    experiment.run(cfg, log=lambda line: None)
    changed = experiment.RunConfig(**{**cfg.__dict__, "lr": 0.2, "resume": True})
    with pytest.raises(experiment.ConfigError, match="--resume: .*differing: lr"):
        experiment.run(changed, log=lambda line: None)


def test_damaged_checkpoint_is_a_clear_error(tmp_path):
    cfg = experiment.RunConfig(**{**CONFIG.__dict__, "epochs": 2, "out": str(tmp_path)})
    experiment.run(cfg, log=lambda line: None)
    latest = max((p for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()),
                 key=lambda p: int(p.name))
    for path in (latest / "state").rglob("*"):
        if path.is_file() and path.stat().st_size > 0:
            with open(path, "r+b") as fh:
                fh.truncate(path.stat().st_size // 2)
    from fedjax_mi import checkpoint
    with pytest.raises(checkpoint.CheckpointError, match="unreadable"):
        experiment.run(experiment.RunConfig(**{**cfg.__dict__, "resume": True}),
                       log=lambda line: None)


def test_divergence_stops_with_step_and_worker_after_writing_metrics(tmp_path):
    cfg = experiment.RunConfig(**{**CONFIG.__dict__, "epochs": 3, "lr": 1e6, "out": str(tmp_path)})
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step \d+ on worker \d"):
        experiment.run(cfg, log=lambda line: None)
    records = metrics_io.read_records(str(tmp_path / "metrics.jsonl"))
    assert {r["step"] for r in records} >= {0, 4}
    lines = []
    cont = experiment.RunConfig(**{**cfg.__dict__, "continue_on_divergence": True,
                                   "overwrite": True})
    records = experiment.run(cont, log=lines.append)
    assert max(r["step"] for r in records) == 12
    assert any(line.startswith("warning: training diverged") for line in lines)


def test_sigkill_then_resume_a_sweep_gives_each_runs_uninterrupted_metrics(tmp_path):
    # Two seeds x two protocols in one program, one checkpoint for all four
    # runs under OUT/checkpoints; 9 eval points.
    flags = FLAGS[:3] + ["--epochs=8", "--eval_period=4", "--lr=0.05", "--checkpoint_every=1", "--mi=kde",
                         "--seeds=0,1", "--protocols=sync,nosync", "--sync_periods=8"]
    out = tmp_path / "sweep"

    def sweep(*extra):
        return subprocess.Popen([sys.executable, "-m", "experiments.sweep", *flags,
                                 f"--out={out}", *extra], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    kill_at_second_checkpoint("experiments.sweep", [*flags, f"--out={out}"], tmp_path)
    assert checkpoint_steps(out / "checkpoints") == [4]
    assert not (out / "runs.json").exists()  # killed before the end
    assert "resumed from the checkpoint at step" in finish(sweep("--resume"))
    runs = json.loads((out / "runs.json").read_text())
    assert len(runs) == 4
    # The same four runs uninterrupted, in-process, as one sweep.
    whole = [experiment.RunConfig(**{**CONFIG.__dict__, "epochs": 8.0, "checkpoint_every": 0,
                                     "seed": r["seed"], "protocol": r["protocol"],
                                     "sync_period": r["sync_period"],
                                     "out": str(tmp_path / "whole" / os.path.basename(r["out"]))})
             for r in runs]
    experiment.run_sweep(whole, log=lambda line: None)
    for r, cfg in zip(runs, whole):
        with open(os.path.join(r["out"], "metrics.jsonl"), "rb") as a, \
                open(os.path.join(cfg.out, "metrics.jsonl"), "rb") as b:
            assert a.read() == b.read(), r["name"]
