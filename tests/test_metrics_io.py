"""fedjax_mi.metrics_io: a full disk while writing the metrics keeps the
previous files (docs/reliability.md)."""

import errno
import json
import os

import pytest

from fedjax_mi import config, sweep
from helpers.shared import CONFIG, checkpoint_steps, fails_on_full_disk


@pytest.mark.slow
def test_full_disk_while_writing_metrics_keeps_the_previous_files(
    tmp_path, monkeypatch, uninterrupted
):
    out = tmp_path / "run"
    cfg = config.make(**{**CONFIG.flat(), "out": str(out)})
    fsync, writes = os.fsync, []

    def full_disk_fsync(fd):  # the third metrics write (step 8's records) finds the disk full
        if os.readlink(f"/proc/self/fd/{fd}").endswith("metrics.jsonl.tmp"):
            writes.append(fd)
            if len(writes) == 3:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return fsync(fd)

    monkeypatch.setattr(os, "fsync", full_disk_fsync)
    fails_on_full_disk(lambda: sweep.run(cfg, log=lambda line: None), out, out / "metrics.jsonl")
    monkeypatch.undo()
    assert not (out / "metrics.jsonl.tmp").exists()
    kept = (out / "metrics.jsonl").read_bytes()
    assert {r["step"] for r in map(json.loads, kept.splitlines())} == {0, 4}
    assert uninterrupted.startswith(kept)
    assert checkpoint_steps(out / "checkpoints") == [4]
    sweep.run(config.make(**{**cfg.flat(), "resume": True}), log=lambda line: None)
    assert (out / "metrics.jsonl").read_bytes() == uninterrupted
