"""How does the KDE noise variance s^2 change the MI curves of one run?

Answer: at small s^2 (relative noise below about 3) every noisy point is
isolated and the estimates read log2 N and H(Y) whatever the network
learned; from 10 on they move with training, at a level that falls as s^2
grows, so only trends at one s^2 can be read. Figures: docs/estimators.md,
"KDE" (the noise table, and the trained CIFAR-10 models measured again at
s^2 = 1-100 by `experiments.remeasure`).

    python -m studies.kde_noise --out=runs/kde_noise             # digits, relative s^2
    python -m studies.kde_noise --nokde_relative --noise_vars=0.1,1,10,100

Trains the same run (same flags and seed, so the same weights at every eval
point: the measurement does not touch training) once per s^2 with `--mi=kde`
and draws I(X;Z+e) and I(Z+e;Y) of worker 0 and of the average on local
dataset 0 against the step, one line per s^2, with log2 N (where I(X;Z+e)
saturates: every noisy point isolated) dotted. Every flag of `experiments.run` passes
through. Writes OUT/noise_<s2>/ (each run's files) and OUT/kde_noise.png.
"""

import json
import math
import os

from absl import app, flags

from experiments import flags as run_flags
from fedjax_mi import config, sweep

flags.adopt_module_key_flags(run_flags)
flags.DEFINE_list(
    "noise_vars",
    ["1", "3", "10", "30", "100"],
    "KDE noise variances to compare (relative to Z's scale unless --nokde_relative)",
)
FLAGS = flags.FLAGS


def plot(runs: dict[float, list[dict]], path: str, relative: bool, measured: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    cmap = plt.get_cmap("viridis")
    for i, (s2, records) in enumerate(sorted(runs.items())):
        color = cmap(i / max(1, len(runs) - 1))
        for model, style in (("worker0", "-"), ("average", "--")):
            sel = [r for r in records if r["model"] == model and r["dataset"] == "local0"]
            for ax, key in zip(axes, ("mi_xz_kde", "mi_zy_kde")):
                ax.plot(
                    [r["step"] for r in sel],
                    [r[key] for r in sel],
                    style,
                    color=color,
                    label=f"s2={s2:g} {model}",
                )
    axes[0].axhline(math.log2(measured), color="grey", ls=":", label="log2 N (saturated)")
    axes[0].set_ylabel("I(X; Z+e) [bits]")
    axes[1].set_ylabel("I(Z+e; Y) [bits]")
    for ax in axes:
        ax.set_xlabel("local step")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, ncol=2)
    kind = "relative to Z's mean per-dimension variance" if relative else "absolute"
    fig.suptitle(
        f"KDE noise variance s^2 ({kind}): worker 0 (solid) and average (dashed) on local dataset 0"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")

    def go():
        out = FLAGS.out if FLAGS["out"].present else "runs/kde_noise"
        noise_vars = [float(v) for v in FLAGS.noise_vars]
        if not all(v > 0 and math.isfinite(v) for v in noise_vars):
            raise config.ConfigError("noise_vars", f"must be > 0, got {FLAGS.noise_vars}")
        runs = {}
        for s2 in noise_vars:
            cfg = run_flags.config_from_flags(
                mi="kde", kde_noise_var=s2, out=os.path.join(out, f"noise_{s2:g}")
            )
            print(f"[kde_noise] s2 = {s2:g} -> {cfg.out}")
            runs[s2] = sweep.run(cfg, log=lambda line: None)
        path = os.path.join(out, "kde_noise.png")
        with open(os.path.join(cfg.out, "config.json")) as fh:
            measured = json.load(fh)["data"]["measured_local"]
        plot(runs, path, cfg.measurement.kde_relative, measured)
        print(f"[kde_noise] wrote {path}")

    run_flags.main_guard(go)


if __name__ == "__main__":
    app.run(main)
