"""Measure the newest checkpoint of a run or sweep again, with other estimators.

    python -m experiments.remeasure runs/paper/fig1 runs/paper/fig3 \
        --mi=kde --noise_vars=1,3,10,30,100 --out=runs/paper/remeasure

Restores the newest checkpoint that the runs (the folders given, written by
one `experiments.run`, `sweep` or `reproduce` command) share, and measures
their models there exactly as the run would (same samples, same eval-point
key) with `--mi` once per KDE noise variance in `--noise_vars` (one
measurement if `--mi` has no `kde`). Training is not touched. Writes
OUT/remeasure.json (every field per run, noise, model and local dataset)
and, with `kde`, OUT/kde_noise_final.png: I(X;Z+e) and I(Z+e;Y) against s^2
for every model on local dataset 0, one panel pair per run.
"""

import dataclasses
import json
import os

import jax
from absl import app, flags

from experiments import flags as run_flags
from fedjax_mi import checkpoint, config, measure, metrics_io, models, outputs, sweep

flags.adopt_module_key_flags(run_flags)
flags.DEFINE_list("noise_vars", ["10"], "KDE noise variances (with --mi containing kde)")
FLAGS = flags.FLAGS


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = sorted({r["run"] for r in results})
    fig, axes = plt.subplots(len(runs), 2, figsize=(11, 3.6 * len(runs)), squeeze=False)
    for row, run in zip(axes, runs):
        sel = [r for r in results if r["run"] == run and r["dataset"] == "local0"]
        for model in sorted({r["model"] for r in sel}):
            pts = sorted((r["noise_var"], r) for r in sel if r["model"] == model)
            s2 = [p[0] for p in pts]
            for ax, key in zip(row, ("mi_xz_kde", "mi_zy_kde")):
                (line,) = ax.plot(s2, [p[1][key] for p in pts], "o-", label=f"{model} (KL)")
                ax.plot(
                    s2,
                    [p[1][f"{key}_lower"] for p in pts],
                    "o:",
                    color=line.get_color(),
                    label=f"{model} (Bhattacharyya)",
                )
        for ax, label in zip(row, ("I(X; Z+e)", "I(Z+e; Y)")):
            ax.set_xscale("log")
            ax.set_xlabel("relative noise variance s^2")
            ax.set_ylabel(f"{label} [bits], {run}")
            ax.grid(alpha=0.3)
        row[1].legend(fontsize=7)
    fig.suptitle("KDE at the final models, on local dataset 0, against the noise variance")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv):
    run_dirs = argv[1:]
    if not run_dirs:
        raise app.UsageError("give the run folders to measure again")

    def go():
        cfgs = [outputs.read_config(d) for d in run_dirs]
        out = (
            FLAGS.out
            if FLAGS["out"].present
            else os.path.join(os.path.dirname(os.path.abspath(run_dirs[0])), "remeasure")
        )
        os.makedirs(out, exist_ok=True)
        data = sweep.load_sweep_data(cfgs)
        prepared = sweep.prepare_sweep(cfgs, data)
        mgr = checkpoint.manager(outputs.default_checkpoint_dir(cfgs))
        restored = checkpoint.restore_latest(mgr, prepared.states)
        mgr.close()
        if restored is None:
            raise config.ConfigError("runs", f"no checkpoint for {run_dirs}")
        step, states, _ = restored
        local_x, local_y, test_x, test_y = sweep.eval_subsets(cfgs[0], data)
        keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(prepared.edge_keys, step)
        eval_model = models.LeNet(
            num_classes=data.num_classes,
            conv_impl=models.measure_conv_impl(),
            input_scale=cfgs[0].training.input_scale,
        )
        noise_vars = [float(v) for v in FLAGS.noise_vars] if "kde" in FLAGS.mi else [None]
        results = []
        for s2 in noise_vars:
            study = dataclasses.replace(
                cfgs[0].measurement.study,
                mi=FLAGS.mi,
                **({} if s2 is None else {"kde_noise_var": s2}),
            )
            fn = measure.make_sweep_measure(
                eval_model,
                measure.study_estimators(study, data.num_classes),
                chunk=measure.forward_chunk(cfgs[0].measurement.eval_chunk),
            )
            m = jax.device_get(
                fn(keys, states.params, local_x, local_y, prepared.groups, test_x, test_y)
            )
            for r, cfg in enumerate(cfgs):
                for rec in outputs.to_records(step, 0.0, jax.tree.map(lambda a: a[r], m), None):
                    if rec["dataset"] != "test":
                        results.append(dict(run=os.path.basename(cfg.out), noise_var=s2, **rec))
            print(f"[remeasure] step {step}, s2 = {s2}: done", flush=True)
        metrics_io.write_atomic(os.path.join(out, "remeasure.json"), json.dumps(results, indent=1))
        print(f"[remeasure] wrote {out}/remeasure.json")
        if "kde" in FLAGS.mi:
            plot(results, os.path.join(out, "kde_noise_final.png"))
            print(f"[remeasure] wrote {out}/kde_noise_final.png")

    run_flags.main_guard(go)


if __name__ == "__main__":
    app.run(main)
