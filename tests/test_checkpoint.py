"""fedjax_mi.checkpoint: a damaged newest checkpoint is skipped, none intact is
one line, orbax's leftover read errors stay quiet, a full disk while saving
keeps the previous files (docs/reliability.md)."""

import errno
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fedjax_mi import checkpoint, config, metrics_io, sweep
from helpers.shared import CONFIG, FLAGS, ROOT, checkpoint_steps, fails_on_full_disk


def damage(ckpt, kind):
    """Damage checkpoint folder `ckpt` as a failing disk or a stray command
    would: truncate its array files, overwrite its largest file with random
    bytes, or delete its array manifest."""
    files = sorted(
        (p for p in (ckpt / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size
    )
    if kind == "truncated":
        for path in files:
            with open(path, "r+b") as fh:
                fh.truncate(path.stat().st_size // 2)
    elif kind == "random bytes":
        files[-1].write_bytes(np.random.default_rng(0).bytes(files[-1].stat().st_size))
    else:
        (ckpt / "state" / "manifest.ocdbt").unlink()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["truncated", "random bytes", "missing file"])
def test_resume_skips_a_damaged_newest_checkpoint(tmp_path, kind):
    # Eval points 0, 4, 8; checkpoints at 4 and 8.
    cfg = config.make(**{**CONFIG.flat(), "epochs": 2, "out": str(tmp_path)})
    sweep.run(cfg, log=lambda line: None)
    whole = (tmp_path / "metrics.jsonl").read_bytes()
    assert checkpoint_steps(tmp_path / "checkpoints") == [4, 8]
    damage(tmp_path / "checkpoints" / "8", kind)
    # Records after the checkpoint used must be dropped: mark step 8's.
    records = metrics_io.read_records(str(tmp_path / "metrics.jsonl"))
    metrics_io.write_records(
        str(tmp_path / "metrics.jsonl"),
        [{**r, "acc": -1.0} if r["step"] == 8 else r for r in records],
    )
    lines = []
    sweep.run(config.make(**{**cfg.flat(), "resume": True}), log=lines.append)
    warnings = [line for line in lines if line.startswith("warning")]
    assert len(warnings) == 1 and warnings[0].startswith(
        f"warning: skipped the damaged checkpoint {tmp_path}/checkpoints/8 ("
    )
    assert warnings[0].endswith("; using the one at step 4") and "\n" not in warnings[0]
    assert any("resumed from the checkpoint at step 4 " in line for line in lines)
    assert (tmp_path / "metrics.jsonl").read_bytes() == whole
    # The damaged one was replaced by a checkpoint that reads back.
    mgr = checkpoint.manager(str(tmp_path / "checkpoints"))
    try:
        assert mgr.all_steps() == [4, 8]
        checkpoint.restore_step(
            mgr, 8, sweep.prepare_sweep([cfg], sweep.load_sweep_data([cfg])).states
        )
    finally:
        checkpoint.close(mgr)


@pytest.mark.slow
def test_no_intact_checkpoint_exits_2_with_one_line(tmp_path):
    cfg = config.make(**{**CONFIG.flat(), "epochs": 2, "out": str(tmp_path)})
    sweep.run(cfg, log=lambda line: None)
    damage(tmp_path / "checkpoints" / "8", "missing file")
    damage(tmp_path / "checkpoints" / "4", "truncated")
    # In a process of its own: orbax's abandoned reads used to print
    # "Event loop is closed" tracebacks as the process ended.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.run",
            *FLAGS,
            "--epochs=2",
            f"--out={tmp_path}",
            "--resume",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [result.stderr.strip()], result.stderr[-3000:]
    assert result.stderr.startswith(
        f"error: no intact checkpoint in {tmp_path}/checkpoints (step 8: "
    )
    assert "; step 4: " in result.stderr
    assert checkpoint_steps(tmp_path / "checkpoints") == [4, 8]  # nothing deleted


def test_leftover_orbax_read_errors_are_not_printed(caplog):
    """A failed restore leaves orbax read tasks whose errors nobody
    retrieves; asyncio reports them when they are collected, which printed
    tracebacks after the one-line error. Only those reports are dropped."""
    import asyncio
    import gc

    fake = {}  # a coroutine function whose code lives in an ".../orbax/..." file
    exec(
        compile(
            "async def read():\n    raise ValueError('NOT_FOUND: damaged')\n",
            os.path.join(os.sep, "site-packages", "orbax", "fake.py"),
            "exec",
        ),
        fake,
    )

    async def other():
        raise ValueError("an error of our own")

    async def tensorstore_read():  # a read task with no orbax frame
        raise ValueError("NOT_FOUND: Error opening \"zarr\" driver [tensorstore_spec='{}']")

    def abandon(coroutine_fn):
        loop = asyncio.new_event_loop()
        task = loop.create_task(coroutine_fn())
        loop.run_until_complete(asyncio.sleep(0))  # the task runs and fails
        loop.close()
        del task
        gc.collect()

    reported = lambda: [str(r.exc_info[1]) for r in caplog.records if r.exc_info]
    checkpoint._ignore_abandoned_reads()
    abandon(fake["read"])
    abandon(tensorstore_read)
    assert reported() == []
    abandon(other)  # anything else is still reported
    assert reported() == ["an error of our own"]


@pytest.mark.slow
def test_full_disk_while_saving_a_checkpoint_keeps_the_previous_files(
    tmp_path, monkeypatch, uninterrupted
):
    from orbax.checkpoint._src.path import async_path

    out = tmp_path / "run"
    cfg = config.make(**{**CONFIG.flat(), "out": str(out)})
    rename = async_path.rename

    async def full_disk_rename(src, dst):  # committing step 8's checkpoint fails
        if os.path.basename(str(dst)) == "8":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return await rename(src, dst)

    monkeypatch.setattr(async_path, "rename", full_disk_rename)
    fails_on_full_disk(
        lambda: sweep.run(cfg, log=lambda line: None), out, out / "checkpoints" / "8"
    )
    monkeypatch.undo()
    assert checkpoint_steps(out / "checkpoints") == [4]
    kept = (out / "metrics.jsonl").read_bytes()  # step 8's records were written before
    assert {r["step"] for r in map(json.loads, kept.splitlines())} == {0, 4, 8}
    assert uninterrupted.startswith(kept)
    sweep.run(config.make(**{**cfg.flat(), "resume": True}), log=lambda line: None)
    assert (out / "metrics.jsonl").read_bytes() == uninterrupted
