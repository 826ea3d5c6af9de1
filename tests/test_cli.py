"""The command-line programs (experiments/): `run` (bad flags, --config, the
same flags twice), `sweep`, `reproduce` on tiny data and with --seeds,
`plot`, and the Python configs of experiments/configs."""

import importlib
import json
import os
import re
import subprocess
import sys

import pytest

from fedjax_mi import config, metrics_io, sweep
from helpers.shared import FLAGS, ROOT, TINY_FLAGS, assert_records_close, cli


def start(out, *extra):
    return subprocess.Popen(
        [sys.executable, "-m", "experiments.run", *FLAGS, f"--out={out}", *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc):
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    return stdout


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
        out = (
            []
            if any(a.startswith("--out=") for a in args)
            else [f"--out={tmp_path_factory.mktemp('out')}"]
        )
        arg_lists.append([*TINY_FLAGS, *out, *args])
    forks = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "tests", "helpers", "cli_forks.py"),
            "experiments.run",
            results,
            json.dumps(arg_lists),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert forks.returncode == 0, forks.stderr[-3000:]
    read = lambda i, ext: open(os.path.join(results, f"{i}.{ext}")).read()
    return [(int(read(i, "status")), read(i, "err")) for i in range(len(BAD_FLAGS))]


@pytest.mark.slow
@pytest.mark.parametrize(
    "case", range(len(BAD_FLAGS)), ids=[f"{flag}:{' '.join(args)}" for args, flag in BAD_FLAGS]
)
def test_bad_flags_exit_nonzero_with_one_line(case, bad_flag_runs):
    flag = BAD_FLAGS[case][1]
    returncode, stderr = bad_flag_runs[case]
    assert returncode != 0
    message = stderr.strip().splitlines()
    assert len(message) == 1, stderr[-2000:]
    assert message[0].startswith(f"error: --{flag}"), message


@pytest.mark.slow
def test_cli_bad_delta_is_one_line_exit_2(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.run",
            "--protocol=dynamic",
            "--check_every=2",
            "--delta=-1",
            f"--out={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: --delta")


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


# The paper's settings, as its text describes them (Adilova, Rosenzweig, Kamp):
# two workers, iid or classes 0-4 / 5-9, never synced or synced every 1,000
# (fig 2) or 100 (fig 4) local batches of 32, 20 epochs of CIFAR-10.
PAPER = {
    "fig1": ("iid", "nosync", None),
    "fig2": ("iid", "sync", 1000),
    "fig3": ("classes", "nosync", None),
    "fig4": ("classes", "sync", 100),
}


@pytest.mark.parametrize("figure", sorted(PAPER))
def test_python_configs_hold_the_papers_settings(figure):
    from experiments import configs

    cfg = configs.load(figure)
    cfg.validate()
    assert (cfg.data.split, cfg.protocol.protocol, cfg.protocol.sync_period) == PAPER[figure]
    assert (cfg.data.dataset, cfg.data.workers, cfg.training.batch_size, cfg.training.epochs) == (
        "cifar10",
        2,
        32,
        20.0,
    )
    doc = importlib.import_module(f"experiments.configs.{figure}").__doc__
    assert f"python -m experiments.run --config={figure}" in doc and "Paper:" in doc
    quick = configs.load(f"{figure}:quick")
    assert (quick.data.dataset, quick.data.split) == ("digits", PAPER[figure][0])


@pytest.mark.slow
@pytest.mark.portability
def test_same_flags_give_byte_identical_metrics(tmp_path, uninterrupted):
    # A second process (the killed-and-resumed run above is a third).
    out = tmp_path / "again"
    finish(start(out, "--checkpoint_every=0"))
    with open(out / "metrics.jsonl", "rb") as fh:
        assert fh.read() == uninterrupted


@pytest.mark.slow
def test_sweep_cli_writes_one_folder_per_run(tmp_path):
    # KDE alone measures: the four runs' programs are then those of the sweep
    # in tests/test_preemption.py (the same shapes and settings), compiled once
    # a session (tests/conftest.py).
    result = cli(
        "experiments.sweep",
        *TINY_FLAGS[:-1],
        "--mi=kde",
        "--seeds=0,1",
        "--protocols=sync,nosync",
        "--sync_periods=4",
        f"--out={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "runs.json") as fh:
        runs = json.load(fh)
    assert sorted(r["name"] for r in runs) == sorted(
        [
            "iid-sync4-lr0.05-seed0",
            "iid-sync4-lr0.05-seed1",
            "iid-nosync-lr0.05-seed0",
            "iid-nosync-lr0.05-seed1",
        ]
    )
    for r in runs:
        assert metrics_io.read_records(os.path.join(r["out"], "metrics.jsonl"))
        assert os.path.exists(os.path.join(r["out"], "figures", "mi.png"))
    # The trade-off table: one row per (split, protocol), sync and nosync
    # over 2 seeds each; nosync sends nothing.
    table = (tmp_path / "summary.md").read_text()
    assert os.path.exists(tmp_path / "tradeoff.png")
    assert "| iid | sync every 4 |" in table and "| iid | nosync |" in table
    assert re.search(r"\| iid \| nosync \| [^|]+\| [^|]+\| 0\.0 \| 0\.00 \| 2 \|", table), table


@pytest.mark.slow
def test_reproduce_on_tiny_data_writes_summary(tmp_path):
    out = str(tmp_path / "repro")
    result = cli(
        "experiments.reproduce",
        *TINY_FLAGS[:-1],
        "--fig2_sync_period=8",
        "--fig4_sync_period=4",
        f"--out={out}",
    )
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


@pytest.mark.slow
@pytest.mark.portability
def test_reproduce_seeds_sweep_writes_what_each_run_writes_alone(tmp_path):
    """`reproduce --seeds=2`: seed 1's metrics, written inside the sweep of
    both seeds, are those that run writes alone, to the tolerances of two
    programs. KDE alone measures, at the shapes of `helpers.shared.CONFIG`:
    the run alone reuses that run's compiled programs, and the protocol study
    below this sweep's."""
    import json
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "rep"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.reproduce",
            "--per_worker=64",
            "--batch_size=16",
            "--epochs=2.5",
            "--eval_period=4",
            "--mi=kde",
            "--figures=fig1",
            "--seeds=2",
            "--checkpoint_every=0",
            f"--out={out}",
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    swept = {s: (out / "fig1" / f"seed{s}" / "metrics.jsonl").read_bytes() for s in (0, 1)}
    assert swept[0] != swept[1]
    assert (out / "fig1" / "seeds.png").exists()
    assert "± " in (out / "summary.md").read_text()
    with open(out / "fig1" / "seed1" / "config.json") as fh:
        saved = json.load(fh)["config"]
    assert saved["seed"] == 1 and saved["init"] == "flax" and saved["input_scale"] == "unit"
    alone = config.make(**{**saved, "out": str(tmp_path / "alone")})
    sweep.run(alone, log=lambda line: None)
    # Two programs (a sweep of two runs, one run alone): the tolerances of
    # docs/reliability.md, "Determinism" (measured: a few float32 means differ in
    # the 6th decimal; README "Sweeps").
    alone_records = metrics_io.read_records(str(tmp_path / "alone" / "metrics.jsonl"))
    swept_records = metrics_io.read_records(str(out / "fig1" / "seed1" / "metrics.jsonl"))
    assert_records_close(alone_records, swept_records)


@pytest.mark.slow
def test_plot_cli(tiny_run):
    cfg, _, _ = tiny_run
    result = cli("experiments.plot", cfg.out)
    assert result.returncode == 0, result.stderr
    assert "mi.png" in result.stdout


def test_study_runs_selects_runs_of_a_protocol_study_by_name():
    from experiments.configs import protocols

    every = protocols.get_configs("protocols_digits")
    chosen = protocols.get_configs("protocols_digits", ["classes-periodic8-*", "iid-nosync-seed1"])
    assert sorted(chosen) == [
        "classes-periodic8-seed0",
        "classes-periodic8-seed1",
        "classes-periodic8-seed2",
        "iid-nosync-seed1",
    ]
    assert all(chosen[n] == every[n] for n in chosen)
    with pytest.raises(config.ConfigError, match="study_runs"):
        protocols.get_configs("protocols_digits", ["classes-periodic9*"])


@pytest.mark.slow
def test_reproduce_runs_part_of_a_protocol_study(tmp_path):
    """`--study_runs` runs just the matching runs of the digits study and
    tabulates them; with a figures preset it is refused in one line. At 64
    samples a worker, measured every 4 steps: the shapes of the two-seed sweep
    above, whose compiled programs it reuses (two data seeds, KDE)."""
    out = tmp_path / "study"
    result = cli(
        "experiments.reproduce",
        "--preset=protocols_digits",
        "--study_runs=classes-periodic8-seed0,classes-dynamic4-d0.9-seed1",
        "--epochs=2",
        "--per_worker=64",
        "--eval_period=4",
        f"--out={out}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir() if p.is_dir() and p.name != "checkpoints") == [
        "classes-dynamic4-d0.9-seed1",
        "classes-periodic8-seed0",
    ]
    table = (out / "summary.md").read_text()
    assert "seeds [0, 1]" in table and (out / "tradeoff.png").exists()
    assert (
        "| classes | periodic every 8 |" in table and "| classes | dynamic b=4 delta=0.9 |" in table
    )
    assert table.count("| classes |") == 2 and "| iid |" not in table
    refused = cli("experiments.reproduce", "--study_runs=iid-*", f"--out={tmp_path / 'q'}")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [refused.stderr.strip()]
    assert refused.stderr.startswith("error: --study_runs")
