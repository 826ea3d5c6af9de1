"""One federated experiment with mutual-information measurements.

    python -m experiments.run --out runs/quick                       # embedded digits
    python -m experiments.run --config=fig1 --cifar_dir DIR --out runs/fig1

Writes OUT/metrics.jsonl (one record per eval point, model and dataset),
OUT/config.json (settings, package versions, device) and OUT/figures/*.png.
"""

from absl import app, flags

from experiments import flags as run_flags
from experiments import progress
from fedjax_mi import config, folder_lock, plotting, sweep

flags.adopt_module_key_flags(run_flags)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")

    def go():
        if run_flags.FLAGS.devices != 1:
            raise config.ConfigError(
                "devices",
                "splits the runs of a sweep (experiments.sweep, reproduce); a run has one",
            )
        cfg = run_flags.config_from_flags()
        config.check_sweep([cfg])  # every setting, before the folder is made
        with folder_lock.hold(cfg.out):  # also while the figures are drawn
            sweep.run(cfg, progress=progress.Printer())
            for path in plotting.plot_run(cfg.out):
                print(f"[run] wrote {path}")

    run_flags.main_guard(go)


if __name__ == "__main__":
    app.run(main)
