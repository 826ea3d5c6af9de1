"""fedjax_mi.config: every bad setting is refused, naming it, before any work
(docs/reliability.md, "Bad inputs"); runs that cannot share one program are
refused as a sweep; the protocols' settings (docs/protocols.md)."""

import pytest

from fedjax_mi import config, sweep
from helpers.shared import TINY


# Every bad setting of the table of docs/reliability.md, "Bad inputs", in-process:
# (overrides of the tiny config, flag named first in the message).
BAD_SETTINGS = [
    (dict(split="halves"), "split"),
    (dict(workers=0), "workers"),
    (dict(eval_period=0), "eval_period"),
    (dict(eval_period=1000), "eval_period"),
    (dict(protocol="sync"), "sync_period"),
    (dict(protocol="sync", sync_period=-5), "sync_period"),
    (dict(sync_period=10), "sync_period"),
    (dict(split="dirichlet"), "alpha"),
    (dict(alpha=0.5), "alpha"),
    (dict(split="dirichlet", alpha=0.0), "alpha"),
    (dict(lr=-1.0), "lr"),
    (dict(lr=float("nan")), "lr"),
    (dict(momentum=1.0), "momentum"),
    (dict(epochs=0.0), "epochs"),
    (dict(batch_size=100), "batch_size"),
    (dict(mi_samples=1000), "mi_samples"),
    (dict(dataset="mnist"), "dataset"),
    (dict(cifar_dir="/tmp"), "cifar_dir"),
    (dict(opt_sync="merge"), "opt_sync"),
    (dict(mi="exact"), "mi"),
    (dict(mi="kde,kde"), "mi"),
    (dict(resume=True, overwrite=True), "resume"),
    (dict(checkpoint_every=-1), "checkpoint_every"),
    (dict(protocol="sync", sync_period=1000), "sync_period"),
    (dict(edge_zy="L=3"), "edge_zy"),
    (dict(edge_xz="gamma"), "edge_xz"),
    (dict(edge_xz="U=abc"), "edge_xz"),
    (dict(edge_xz="L_ensemble=0"), "edge_xz"),
    (dict(edge_version="5.0"), "edge_version"),
    (dict(kde_noise_var=0.0), "kde_noise_var"),
    (dict(kde_noise_var=-1.0), "kde_noise_var"),
    (dict(kde_queries=1), "kde_queries"),
]


@pytest.mark.parametrize("overrides, flag", BAD_SETTINGS)
def test_every_bad_setting_is_refused_before_any_work(overrides, flag, tmp_path):
    out = tmp_path / "out"
    cfg = config.make(**{**TINY, **overrides, "out": str(out)})
    with pytest.raises(config.ConfigError, match=f"^{flag}: "):
        sweep.run(cfg, log=lambda line: None)
    # Nothing written: no metrics, no config, no checkpoint.
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints").exists()
    assert not (out / "config.json").exists()


def test_sweep_refuses_runs_that_cannot_share_a_program(tmp_path):
    cfgs = [
        config.make(**TINY, out=str(tmp_path / "a")),
        config.make(**{**TINY, "batch_size": 8}, out=str(tmp_path / "b")),
    ]
    with pytest.raises(config.ConfigError, match="batch_size: must be the same"):
        sweep.run_sweep(cfgs)
    with pytest.raises(config.ConfigError, match="out"):
        sweep.run_sweep([config.make(**TINY, out=str(tmp_path / "a"))] * 2)


@pytest.mark.parametrize(
    "settings, flag",
    [
        (dict(protocol="dynamic", check_every=2, delta=-0.1), "delta"),
        (dict(protocol="dynamic", delta=1.0), "check_every"),
        (dict(protocol="periodic", sync_period=2, aggregate="median"), "aggregate"),  # K = 2
        (dict(protocol="nosync", aggregate="weighted"), "aggregate"),
        (dict(protocol="periodic", sync_period=2, trigger_ratio=0.9), "trigger_ratio"),
        (dict(protocol="nosync", trigger_metric="acc"), "trigger_metric"),
        (dict(protocol="nosync", delta=1.0), "delta"),
        (dict(protocol="triggered", trigger_ratio=1.0, trigger_metric="loss"), "trigger_metric"),
    ],
)
def test_bad_protocol_settings_are_refused(settings, flag):
    with pytest.raises(config.ConfigError, match=f"^{flag}: "):
        config.make(**settings).validate()
