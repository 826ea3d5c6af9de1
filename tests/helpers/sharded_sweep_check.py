"""Run by tests/test_sharding.py in a subprocess with 4 fake CPU devices:
a four-run sweep (periodic, nosync, dynamic, triggered) on one device, split over 2 and over 4 devices, and one
checkpointed on 2 devices and resumed on 4. Prints one JSON line: each
variant's records and the device-count errors."""

import json
import os
import shutil
import sys

import jax

from fedjax_mi import config, sweep

TINY = dict(
    dataset="digits",
    per_worker=48,
    batch_size=16,
    epochs=2.0,
    eval_period=3,
    lr=0.05,
    mi_samples=40,
    test_samples=40,
    checkpoint_every=0,
    mi="kde",
)


def main(root: str):
    assert len(jax.devices()) == 4, jax.devices()
    # Every protocol (docs/protocols.md): the triggered run's pending sync
    # and the counters must also survive the checkpoint and the resume.
    cfgs = [
        config.make(**TINY, seed=seed, **protocol)
        for seed, protocol in zip(
            (0, 0, 1, 1),
            (
                dict(protocol="sync", sync_period=3),
                dict(protocol="nosync"),
                dict(protocol="dynamic", check_every=2, delta=0.02),
                dict(protocol="triggered", trigger_ratio=0.9),
            ),
        )
    ]
    out = {}
    for devices in (1, 2, 4):
        run = [
            config.make(**{**c.flat(), "out": os.path.join(root, f"d{devices}", str(i))})
            for i, c in enumerate(cfgs)
        ]
        out[f"records_d{devices}"] = sweep.run_sweep(run, log=lambda line: None, devices=devices)
    # Checkpointed on 2 devices, the newest checkpoint removed, resumed on 4.
    resumable = [
        config.make(**{**c.flat(), "checkpoint_every": 1, "out": os.path.join(root, "r", str(i))})
        for i, c in enumerate(cfgs)
    ]
    sweep.run_sweep(resumable, log=lambda line: None, devices=2)
    ckpts = os.path.join(root, "r", "checkpoints")
    shutil.rmtree(os.path.join(ckpts, max((d for d in os.listdir(ckpts) if d.isdigit()), key=int)))
    lines = []
    out["records_resumed_d4"] = sweep.run_sweep(
        [config.make(**{**c.flat(), "resume": True}) for c in resumable],
        log=lines.append,
        devices=4,
    )
    out["resumed"] = any("resumed from the checkpoint" in line for line in lines)
    for devices, runs in ((3, 4), (8, 4)):  # uneven split; more devices than jax sees
        try:
            sweep.run_sweep(
                [
                    config.make(**{**c.flat(), "out": os.path.join(root, f"bad{devices}", str(i))})
                    for i, c in enumerate(cfgs[:runs])
                ],
                log=lambda line: None,
                devices=devices,
            )
            out[f"error_d{devices}"] = None
        except config.ConfigError as e:
            out[f"error_d{devices}"] = str(e)
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
