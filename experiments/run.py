"""One federated experiment with mutual-information measurements.

    python -m experiments.run --out runs/quick                       # embedded digits
    python -m experiments.run --flagfile experiments/configs/fig1.flags --cifar_dir DIR

Writes OUT/metrics.jsonl (one record per eval point, model and dataset),
OUT/config.json (flags, package versions, device) and OUT/figures/*.png.
"""

from absl import app

from experiments import flags as run_flags
from fedjax_mi import experiment, folder_lock, plotting


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")

    def go():
        if run_flags.FLAGS.devices != 1:
            raise experiment.ConfigError("--devices: splits the runs of a sweep "
                                         "(experiments.sweep, reproduce); a run has one")
        cfg = run_flags.config_from_flags()
        experiment.check_sweep([cfg])  # every setting, before the folder is made
        with folder_lock.hold(cfg.out):  # also while the figures are drawn
            experiment.run(cfg)
            for path in plotting.plot_run(cfg.out):
                print(f"[run] wrote {path}")

    run_flags.main_guard(go)


if __name__ == "__main__":
    app.run(main)
