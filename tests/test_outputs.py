"""fedjax_mi.outputs: the metrics file's records, config.json, and the refusal
to write into a folder that holds results."""

import json
import os

import pytest

from fedjax_mi import config, metrics_io, sweep
from helpers.shared import CONFIG


@pytest.mark.slow
def test_metrics_file_has_one_record_per_point_model_dataset(tiny_run):
    cfg, records, _ = tiny_run
    path = os.path.join(cfg.out, "metrics.jsonl")
    with open(path) as fh:
        parsed = [json.loads(line) for line in fh]
    assert parsed == records
    keys = [(r["step"], r["model"], r["dataset"]) for r in parsed]
    assert len(keys) == len(set(keys))
    steps = [0, 4, 8, 10]
    models = ["worker0", "worker1", "average"]
    datasets = ["local0", "local1", "test"]
    assert sorted(keys) == sorted((s, m, d) for s in steps for m in models for d in datasets)
    for r in parsed:
        for field in metrics_io.FIELDS:
            assert field in r
        assert 0.0 <= r["acc"] <= 1.0
        # The head's bounds on I(Z;Y) are recorded on every dataset; Fano's
        # lies in [0, log2 10] with 10 classes; the head's is <= H(Y) <= log2 10.
        assert 0.0 <= r["mi_zy_fano"] <= 3.33 and r["mi_zy_head"] <= 3.33
        estimator_fields = [
            k
            for k in r
            if k.startswith(("mi_xz_", "mi_zy_"))
            and k not in ("mi_xz_floor", "mi_zy_floor", "mi_zy_head", "mi_zy_fano")
        ]
        assert sorted(estimator_fields) == [
            "mi_xz_kde",
            "mi_xz_kde_lower",
            "mi_zy_kde",
            "mi_zy_kde_floor",
            "mi_zy_kde_lower",
            "mi_zy_knn",
            "mi_zy_knn_floor",
        ]
        if r["dataset"] == "test":
            # On the test split: the I(Z;Y) estimates (on the test samples), no I(X;Z).
            assert all(r[k] is None for k in estimator_fields if k.startswith("mi_xz_"))
            assert all(r[k] is not None for k in estimator_fields if k.startswith("mi_zy_"))
            assert r["mi_xz"] is None and r["mi_xz_floor"] is None
            assert (r["mi_zy"], r["mi_zy_floor"]) == (r["mi_zy_knn"], r["mi_zy_knn_floor"])
        else:
            # --mi=knn,kde: KDE's I(X;Z+e) (no pairing to shuffle, so no
            # floor) is capped at log2 N = 6 bits for 64 samples; the first
            # estimator defining I(Z;Y), the kNN, fills mi_zy.
            assert (r["mi_xz"], r["mi_xz_floor"]) == (r["mi_xz_kde"], None)
            assert (r["mi_zy"], r["mi_zy_floor"]) == (r["mi_zy_knn"], r["mi_zy_knn_floor"])
            assert 0.0 <= r["mi_xz_kde_lower"] <= r["mi_xz_kde"] <= 6.0 + 1e-6
            for key in ("mi_zy_knn", "mi_zy_knn_floor", "mi_zy_kde", "mi_zy_kde_floor"):
                assert r[key] <= 3.4
    assert {r["epoch"] for r in parsed} == {0.0, 1.0, 2.0, 2.5}


@pytest.mark.slow
def test_config_json_and_progress(tiny_run):
    cfg, _, lines = tiny_run
    with open(os.path.join(cfg.out, "config.json")) as fh:
        info = json.load(fh)
    assert info["config"]["sync_period"] == 4
    assert "jax" in info["environment"]["packages"]
    assert info["environment"]["device"]
    assert any("ETA" in line for line in lines)


@pytest.mark.slow
def test_overwrite_starts_over(tmp_path):
    cfg = config.make(**{**CONFIG.flat(), "epochs": 2, "out": str(tmp_path)})
    first = sweep.run(cfg, log=lambda line: None)
    with pytest.raises(config.ConfigError, match="out: .* already holds results"):
        sweep.run(cfg, log=lambda line: None)
    again = sweep.run(config.make(**{**cfg.flat(), "overwrite": True}), log=lambda line: None)
    assert again == first
