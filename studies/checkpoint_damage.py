"""Which damage to one checkpoint file does a restore notice?

Answer: every damage either fails the restore (the resume then skips that
checkpoint) or leaves the arrays exactly as saved (a file the restore does
not need); none gives other numbers. Figures: docs/reliability.md,
"Damaged checkpoints".

    python -m studies.checkpoint_damage

Trains the tiny digits run of tests/test_checkpoint.py (eval points 0, 4, 8,
a checkpoint at 4 and 8) into a temporary folder, then for every file of
checkpoint 8 and each damage (truncated to half, overwritten by random bytes
of the same size, deleted) restores a damaged copy and prints whether the
restore failed (the resume then skips that checkpoint) or returned exactly
the saved arrays. A line saying "DIFFERENT" would be a damage that resumes
silently with other numbers. Results: docs/reliability.md.
"""

import os
import shutil
import tempfile

import jax
import numpy as np

from fedjax_mi import checkpoint, config, sweep

DAMAGES = ("truncated", "random bytes", "deleted")


def damage(path: str, kind: str) -> None:
    if kind == "truncated":
        with open(path, "r+b") as fh:
            fh.truncate(os.path.getsize(path) // 2)
    elif kind == "random bytes":
        size = os.path.getsize(path)
        with open(path, "wb") as fh:
            fh.write(np.random.default_rng(0).bytes(size))
    else:
        os.remove(path)


def leaves(states) -> list[np.ndarray]:
    return [np.asarray(leaf) for leaf in jax.tree.leaves(checkpoint._to_saveable(states))]


def main() -> None:
    root = tempfile.mkdtemp()
    cfg = config.make(
        dataset="digits",
        per_worker=64,
        batch_size=16,
        epochs=2,
        eval_period=4,
        lr=0.05,
        protocol="sync",
        sync_period=8,
        checkpoint_every=1,
        mi="kde",
        out=os.path.join(root, "run"),
    )
    sweep.run(cfg, log=lambda line: None)
    template = sweep.prepare_sweep([cfg], sweep.load_sweep_data([cfg])).states
    source = os.path.join(cfg.out, "checkpoints")
    mgr = checkpoint.manager(source)
    saved = leaves(checkpoint.restore_step(mgr, 8, template)[0])
    checkpoint.close(mgr)
    files = sorted(
        os.path.relpath(os.path.join(d, f), os.path.join(source, "8"))
        for d, _, names in os.walk(os.path.join(source, "8"))
        for f in names
    )
    counts = {"restore failed": 0, "same arrays": 0, "DIFFERENT": 0}
    for kind in DAMAGES:
        for name in files:
            copy = os.path.join(root, "damaged")
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(source, copy)
            damage(os.path.join(copy, "8", name), kind)
            mgr = checkpoint.manager(copy)
            try:
                states, _ = checkpoint.restore_step(mgr, 8, template)
                same = all(np.array_equal(a, b) for a, b in zip(leaves(states), saved))
                result = "same arrays" if same else "DIFFERENT"
            except checkpoint.CheckpointError:
                result = "restore failed"
            finally:
                checkpoint.close(mgr)
            counts[result] += 1
            print(f"{kind:13s} {name:55s} {result}", flush=True)
    print(f"{sum(counts.values())} cases: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    shutil.rmtree(root)


if __name__ == "__main__":
    main()
