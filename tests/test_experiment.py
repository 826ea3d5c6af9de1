"""The study end to end on tiny data: metrics file, figures, reproduce, bad flags."""

import importlib
import json
import os
import re
import subprocess
import sys

import pytest

from experiments import progress
from fedjax_mi import config, measure, metrics_io, outputs, plotting, summary, sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Tiny: 64 digits per worker, batch 16 -> 4 steps per epoch, 10 steps, eval every 4
# (eval points 0, 4, 8, 10: the last round is a shorter one).
# The mixed kNN and KDE measure (both cheap to compile); the default
# estimators (probe, kde) run end to end in the reproduce test.
TINY = dict(dataset="digits", per_worker=64, batch_size=16, epochs=2.5, eval_period=4, lr=0.05,
            mi="knn,kde")
TINY_FLAGS = ["--per_worker=64", "--batch_size=16", "--epochs=2.5", "--eval_period=4", "--lr=0.05",
              "--mi=knn,kde"]


def cli(module, *args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("run"))
    cfg = config.make(**TINY, protocol="sync", sync_period=4, out=out)
    lines = []
    records = sweep.run(cfg, log=lines.append, progress=progress.Printer(lines.append))
    return cfg, records, lines


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
        estimator_fields = [k for k in r if k.startswith(("mi_xz_", "mi_zy_"))
                            and k not in ("mi_xz_floor", "mi_zy_floor", "mi_zy_head", "mi_zy_fano")]
        assert sorted(estimator_fields) == ["mi_xz_kde", "mi_xz_kde_lower", "mi_zy_kde",
                                            "mi_zy_kde_floor", "mi_zy_kde_lower", "mi_zy_knn",
                                            "mi_zy_knn_floor"]
        if r["dataset"] == "test":
            assert all(r[k] is None for k in estimator_fields)
            assert r["mi_xz"] is None and r["mi_zy"] is None
            assert r["mi_xz_floor"] is None and r["mi_zy_floor"] is None
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
def test_plot_from_metrics_file(tiny_run):
    cfg, _, _ = tiny_run
    paths = plotting.plot_run(cfg.out)
    assert [os.path.basename(p) for p in paths] == ["mi.png", "accuracy.png", "info_plane.png"]
    for p in paths:
        with open(p, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_plot_cli(tiny_run):
    cfg, _, _ = tiny_run
    result = cli("experiments.plot", cfg.out)
    assert result.returncode == 0, result.stderr
    assert "mi.png" in result.stdout


def test_plots_of_records_without_floors(tmp_path):
    # metrics.jsonl of runs made before the floors were measured still plot.
    records = [dict(step=s, epoch=s / 10, model=m, dataset=d, mi_xz=1.0 + s / 10,
                    mi_zy=0.5, acc=0.5, loss=None)
               for s in (0, 10) for m in ("worker0", "average") for d in ("local0", "test")]
    for r in records:
        if r["dataset"] == "test":
            r["mi_xz"] = r["mi_zy"] = None
    metrics_io.write_records(str(tmp_path / "metrics.jsonl"), records)
    paths = plotting.plot_run(str(tmp_path))
    assert all(os.path.getsize(p) > 1000 for p in paths)


def test_final_mi_table_on_hand_made_records():
    records = [dict(step=s, model=m, dataset="local0", mi_zy=v, mi_zy_floor=f)
               for s, m, v, f in [(0, "worker0", 9.0, 9.0), (10, "worker0", 1.25, 0.0625),
                                  (10, "average", 0.5, None)]]
    rows = summary.final_mi_table(records, ["worker0", "average", "worker1"], ["local0"])
    assert rows[2:] == ["| worker0 | 1.250 (0.062) |", "| average | 0.500 |", "| worker1 | - |"]


def test_first_drop_on_hand_made_records():
    def rec(step, model, dataset, zy):
        return dict(step=step, epoch=step / 10, model=model, dataset=dataset, mi_xz=1.0,
                    mi_zy=zy, acc=0.5)
    records = []
    for step, own, avg in [(0, 1.0, 1.0), (10, 2.0, 1.7), (20, 2.0, 1.5), (30, 2.0, 0.2)]:
        records += [rec(step, "worker0", "local0", own), rec(step, "worker1", "local1", own),
                    rec(step, "worker1", "local0", 0.1), rec(step, "average", "local0", avg),
                    rec(step, "average", "local1", own)]
    # 1.7 >= 0.8 * 2.0 = 1.6 is not clearly below; 1.5 is.
    assert summary.first_drop(records) == (20, 2.0, "local0")
    assert summary.first_drop(records[:10]) is None


@pytest.mark.slow
def test_reproduce_on_tiny_data_writes_summary(tmp_path):
    out = str(tmp_path / "repro")
    result = cli("experiments.reproduce", *TINY_FLAGS[:-1], "--fig2_sync_period=8",
                 "--fig4_sync_period=4", f"--out={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(out, "summary.md")) as fh:
        text = fh.read()
    for fig in ("fig1", "fig2", "fig3", "fig4"):
        assert f"## {fig}" in text
        assert os.path.exists(os.path.join(out, fig, "figures", "mi.png"))
    # Per figure: an accuracy row of the average, and one per I(Z;Y) table:
    # the default estimators (probe, kde, each with its floor) and the
    # head's two bounds.
    assert text.count("| average |") == 4 * 5
    assert text.count("| I(Z;Y) probe [bits] (floor) |") == 4
    assert text.count("| I(Z;Y) Fano [bits] |") == 4
    assert re.search(r"\| average \| -?\d+\.\d{3} \(-?\d+\.\d{3}\) \|", text)
    assert text.count("- probe: ") == 4


# The paper's settings, as its text describes them (Adilova, Rosenzweig, Kamp):
# two workers, iid or classes 0-4 / 5-9, never synced or synced every 1,000
# (fig 2) or 100 (fig 4) local batches of 32, 20 epochs of CIFAR-10.
PAPER = {"fig1": ("iid", "nosync", None), "fig2": ("iid", "sync", 1000),
         "fig3": ("classes", "nosync", None), "fig4": ("classes", "sync", 100)}


@pytest.mark.parametrize("figure", sorted(PAPER))
def test_python_configs_hold_the_papers_settings(figure):
    from experiments import configs
    cfg = configs.load(figure)
    cfg.validate()
    assert (cfg.data.split, cfg.protocol.protocol, cfg.protocol.sync_period) == PAPER[figure]
    assert (cfg.data.dataset, cfg.data.workers, cfg.training.batch_size, cfg.training.epochs) == (
        "cifar10", 2, 32, 20.0)
    doc = importlib.import_module(f"experiments.configs.{figure}").__doc__
    assert f"python -m experiments.run --config={figure}" in doc and "Paper:" in doc
    quick = configs.load(f"{figure}:quick")
    assert (quick.data.dataset, quick.data.split) == ("digits", PAPER[figure][0])


def test_config_flag_then_explicit_flags():
    from absl import flags
    from absl.testing import flagsaver
    from experiments import flags as run_flags
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["prog", "--config=fig2:quick", "--lr=0.125", "--epochs=3"])
        cfg = run_flags.config_from_flags()
    assert (cfg.protocol.sync_period, cfg.training.lr, cfg.training.epochs) == (50, 0.125, 3.0)
    assert cfg.measurement.eval_period == 10  # from the config, not the flag's default (100)


BAD_FLAGS = [
    (["--split=halves"], "split"),
    (["--eval_period=0"], "eval_period"),
    (["--protocol=sync", "--sync_period=-5"], "sync_period"),
    (["--protocol=nosync", "--sync_period=10"], "sync_period"),
    (["--eval_period=1000"], "eval_period"),
    (["--workers=0"], "workers"),
    (["--out=/proc/fedjax_mi_not_writable"], "out"),
    (["--split=dirichlet"], "alpha"),
    (["--lr=-1"], "lr"),
    (["--devices=2"], "devices"),
]


@pytest.fixture(scope="module")
def bad_flag_runs(tmp_path_factory):
    """`python -m experiments.run` with each of BAD_FLAGS, each in a process
    of its own, forked after the imports (tests/helpers/cli_forks.py):
    (exit status, stderr) per entry."""
    results = str(tmp_path_factory.mktemp("bad_flags"))
    arg_lists = []
    for args, _ in BAD_FLAGS:
        out = [] if any(a.startswith("--out=") for a in args) else [
            f"--out={tmp_path_factory.mktemp('out')}"]
        arg_lists.append([*TINY_FLAGS, *out, *args])
    forks = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "helpers", "cli_forks.py"),
                            "experiments.run", results, json.dumps(arg_lists)], cwd=ROOT,
                           capture_output=True, text=True, timeout=600)
    assert forks.returncode == 0, forks.stderr[-3000:]
    read = lambda i, ext: open(os.path.join(results, f"{i}.{ext}")).read()
    return [(int(read(i, "status")), read(i, "err")) for i in range(len(BAD_FLAGS))]


@pytest.mark.slow
@pytest.mark.parametrize("case", range(len(BAD_FLAGS)),
                         ids=[f"{flag}:{' '.join(args)}" for args, flag in BAD_FLAGS])
def test_bad_flags_exit_nonzero_with_one_line(case, bad_flag_runs):
    flag = BAD_FLAGS[case][1]
    returncode, stderr = bad_flag_runs[case]
    assert returncode != 0
    message = stderr.strip().splitlines()
    assert len(message) == 1, stderr[-2000:]
    assert message[0].startswith(f"error: --{flag}"), message


def assert_same_run(a, b):
    """Records of one run computed twice, once inside a sweep: training
    (accuracy, loss) bit for bit; the estimates to float32 rounding, which
    XLA orders differently in the sweep's program (KDE differs by ~1e-6 bits,
    the probe's L-BFGS carries it to ~1e-4; 2e-3 bits is far below any
    difference the study reads)."""
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for k, va in ra.items():
            if k.startswith("mi_") and va is not None and rb[k] is not None:
                assert va == pytest.approx(rb[k], abs=2e-3), (ra["step"], ra["model"], k)
            elif k == "drift" and va is not None and rb[k] is not None:
                # max_k ||w_k - r||^2 magnifies the parameters' last-bit
                # differences (docs/protocols.md): to float32 rounding.
                assert va == pytest.approx(rb[k], rel=1e-4), (ra["step"], ra["model"], k)
            elif (k.startswith("interp_loss") or k in ("barrier", "weight_distance")) \
                    and va is not None:  # float32 means over the local data
                assert va == pytest.approx(rb[k], abs=1e-5), (ra["step"], ra["model"], k)
            else:
                assert va == rb[k], (ra["step"], ra["model"], ra["dataset"], k)


@pytest.mark.slow
def test_sweep_run_equals_that_run_alone(tmp_path, tiny_run):
    """Run r of a sweep (vmapped over runs that differ in seed, lr, split and
    protocol) writes the same metrics as that run alone (`assert_same_run`)."""
    alone_cfg, alone_records, _ = tiny_run
    base = dict(TINY)
    cfgs = [config.make(**{**base, "lr": 0.02}, protocol="nosync", seed=1,
                                 out=str(tmp_path / "a")),
            config.make(**base, protocol="sync", sync_period=4, out=str(tmp_path / "b")),
            config.make(**base, split="classes", protocol="sync", sync_period=8, seed=2,
                                 out=str(tmp_path / "c"))]
    swept = sweep.run_sweep(cfgs, log=lambda line: None)
    assert_same_run(swept[1], alone_records)  # cfgs[1] is the tiny_run's config
    assert metrics_io.read_records(os.path.join(cfgs[1].out, "metrics.jsonl")) == swept[1]
    # The other runs really differ (different seed / lr / split).
    acc = lambda records: [r["acc"] for r in records]
    assert acc(swept[0]) != acc(swept[1]) and acc(swept[2]) != acc(swept[1])
    alone_c = config.make(**{**cfgs[2].flat(), "out": str(tmp_path / "c_alone")})
    assert_same_run(sweep.run(alone_c, log=lambda line: None), swept[2])


def test_sweep_refuses_runs_that_cannot_share_a_program(tmp_path):
    cfgs = [config.make(**TINY, out=str(tmp_path / "a")),
            config.make(**{**TINY, "batch_size": 8}, out=str(tmp_path / "b"))]
    with pytest.raises(config.ConfigError, match="batch_size: must be the same"):
        sweep.run_sweep(cfgs)
    with pytest.raises(config.ConfigError, match="out"):
        sweep.run_sweep([config.make(**TINY, out=str(tmp_path / "a"))] * 2)


@pytest.mark.slow
def test_sweep_cli_writes_one_folder_per_run(tmp_path):
    result = cli("experiments.sweep", *TINY_FLAGS, "--seeds=0,1", "--protocols=sync,nosync",
                 "--sync_periods=4", f"--out={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "runs.json") as fh:
        runs = json.load(fh)
    assert sorted(r["name"] for r in runs) == sorted(
        ["iid-sync4-lr0.05-seed0", "iid-sync4-lr0.05-seed1",
         "iid-nosync-lr0.05-seed0", "iid-nosync-lr0.05-seed1"])
    for r in runs:
        assert metrics_io.read_records(os.path.join(r["out"], "metrics.jsonl"))
        assert os.path.exists(os.path.join(r["out"], "figures", "mi.png"))
    # The trade-off table: one row per (split, protocol), sync and nosync
    # over 2 seeds each; nosync sends nothing.
    table = (tmp_path / "summary.md").read_text()
    assert os.path.exists(tmp_path / "tradeoff.png")
    assert "| iid | sync every 4 |" in table and "| iid | nosync |" in table
    assert re.search(r"\| iid \| nosync \| [^|]+\| [^|]+\| 0\.0 \| 0\.00 \| 2 \|", table), table


# Every bad setting of the table of docs/reliability.md, "Bad inputs", in-process:
# (overrides of the tiny config, flag named first in the message).
BAD_SETTINGS = [
    (dict(split="halves"), "split"), (dict(workers=0), "workers"),
    (dict(eval_period=0), "eval_period"), (dict(eval_period=1000), "eval_period"),
    (dict(protocol="sync"), "sync_period"), (dict(protocol="sync", sync_period=-5), "sync_period"),
    (dict(sync_period=10), "sync_period"), (dict(split="dirichlet"), "alpha"),
    (dict(alpha=0.5), "alpha"), (dict(split="dirichlet", alpha=0.0), "alpha"),
    (dict(lr=-1.0), "lr"), (dict(lr=float("nan")), "lr"), (dict(momentum=1.0), "momentum"),
    (dict(epochs=0.0), "epochs"), (dict(batch_size=100), "batch_size"),
    (dict(mi_samples=1000), "mi_samples"), (dict(dataset="mnist"), "dataset"),
    (dict(cifar_dir="/tmp"), "cifar_dir"), (dict(opt_sync="merge"), "opt_sync"),
    (dict(mi="exact"), "mi"), (dict(mi="kde,kde"), "mi"), (dict(resume=True, overwrite=True), "resume"),
    (dict(checkpoint_every=-1), "checkpoint_every"),
    (dict(protocol="sync", sync_period=1000), "sync_period"),
    (dict(edge_zy="L=3"), "edge_zy"), (dict(edge_xz="gamma"), "edge_xz"),
    (dict(edge_xz="U=abc"), "edge_xz"), (dict(edge_xz="L_ensemble=0"), "edge_xz"),
    (dict(edge_version="5.0"), "edge_version"), (dict(kde_noise_var=0.0), "kde_noise_var"),
    (dict(kde_noise_var=-1.0), "kde_noise_var"), (dict(kde_queries=1), "kde_queries"),
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


def test_edge_options_parse_and_replace_the_paper_settings():
    assert measure.parse_edge_options(" U=30; gamma=(0.2, 2);epsilon_vector=fixed; ") == (
        ("U", 30), ("gamma", (0.2, 2)), ("epsilon_vector", "fixed"))
    assert measure.parse_edge_options("") == ()
    xz, zy = measure.paper_edge_configs("4.2.0", (("U", 30),),
                                        (("L_ensemble", 3), ("gamma", (1e-4, 0.6))))
    # Named options replace the author's settings for the last hidden layer;
    # the others stay.
    xz, zy = xz.settings(), zy.settings()
    assert (xz.upper_clip, xz.ensemble_size, xz.gamma) == (30.0, 10, (0.2, 1.4))
    assert (zy.upper_clip, zy.ensemble_size, zy.gamma, zy.epsilon) == (10.0, 3, (1e-4, 0.6),
                                                                       (0.2, 0.2))


def test_mi_flag_selects_estimators_in_order():
    assert measure.parse_mi("none") == () and measure.parse_mi("") == ()
    settings = measure.StudySettings(mi="probe, edge_reference,kde")
    ests = measure.study_estimators(settings, num_classes=10)
    assert [e.name for e in ests] == ["probe", "edge_reference", "kde"]
    # The probe defines no I(X;Z): the first estimator that does fills mi_xz.
    assert measure.primary(ests, "xz") == "edge_reference"
    assert measure.primary(ests, "zy") == "probe"
    assert ests[0].zy.num_classes == 10 and ests[2].xz.noise_var == settings.kde_noise_var


def test_bad_data_inputs_are_named(tmp_path):
    from fedjax_mi import data as data_lib
    bad = tmp_path / "cifar-10-batches-py"
    bad.mkdir()
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                 "data_batch_5", "test_batch"]:
        (bad / name).write_bytes(b"\x80\x04garbage")
    for overrides, pattern in [(dict(split="classes", workers=11), "empty class group"),
                               (dict(dataset="cifar10", cifar_dir="/nonexistent"), "/nonexistent"),
                               (dict(dataset="cifar10", cifar_dir=str(tmp_path)), "data_batch_1")]:
        cfg = config.make(**{**TINY, **overrides, "out": str(tmp_path / "o")})
        with pytest.raises(data_lib.DataError, match=pattern):
            sweep.run(cfg, log=lambda line: None)
