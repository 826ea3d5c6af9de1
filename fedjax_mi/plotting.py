"""Figures of one run, made from its `metrics.jsonl` alone.

* `mi.png`: one row of panels per recorded estimator, I(X;Z) (left) and
  I(Z;Y) (right) against the step, one line per model per local dataset (as
  the paper's figures 1-4) and, for I(Z;Y), on the test split, over a grey
  band: the estimator's floor (the same estimates with the pairing
  shuffled); KDE's Bhattacharyya value shades below its KL value; every
  I(Z;Y) panel also draws the head's Barber–Agakov bound (thin dotted lines;
  the axis spans the estimates, and a bound beyond it is marked at its edge),
  and panels share their axes;
* `accuracy.png`: accuracy of every model on every local dataset and the test
  split; beside it, where recorded, the loss barrier and max_barrier on the
  linear path between local models 0 and 1 (every dataset, test included)
  and their relative weight distance;
* `info_plane.png`: I(X;Z) against I(Z;Y), one panel per model, points coloured by step.
"""

import functools
import os
from collections import defaultdict
from typing import Any

import numpy as np

from fedjax_mi import metrics_io


@functools.cache
def _pyplot():
    """matplotlib.pyplot on the Agg backend, imported at the first figure:
    the import costs 0.3-0.6 s, which a run would otherwise pay before its
    first training step (docs/performance.md, "Compilation cache")."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


LINESTYLES = ["-", "--", ":", "-."]


def _series(records, key, dataset_filter=lambda d: d != "test"):
    """{(model, dataset): (steps, values)} for records with a value for key."""
    out = defaultdict(lambda: ([], []))
    for r in records:
        if dataset_filter(r["dataset"]) and r.get(key) is not None:
            steps, values = out[(r["model"], r["dataset"])]
            steps.append(r["step"])
            values.append(r[key])
    return dict(out)


def _model_colors(models):
    plt = _pyplot()
    cmap = plt.get_cmap("tab10")
    workers = sorted(m for m in models if m != "average")
    colors = {m: cmap(i % 10) for i, m in enumerate(workers)}
    colors["average"] = "black"
    return colors


def _datasets(series):
    return sorted({d for _, d in series}, key=lambda d: (d == "test", d))


def _lines(ax, series, colors):
    datasets = _datasets(series)
    for (model, dataset), (steps, values) in sorted(series.items()):
        style = LINESTYLES[datasets.index(dataset) % len(LINESTYLES)]
        ax.plot(
            steps,
            values,
            style,
            color=colors[model],
            lw=1.6 if model == "average" else 1.1,
            label=f"{model} on {dataset}",
        )


def _floor_band(ax, records, key):
    """Grey band from the lowest to the highest floor of all models and
    datasets at each step (records of older runs have none: no band)."""
    by_step = defaultdict(list)
    for r in records:
        if r.get(key) is not None:
            by_step[r["step"]].append(r[key])
    if by_step:
        steps = sorted(by_step)
        ax.fill_between(
            steps,
            [min(by_step[s]) for s in steps],
            [max(by_step[s]) for s in steps],
            color="grey",
            alpha=0.3,
            lw=0,
            label="estimator floor (pairing shuffled)",
        )


def estimator_rows(records: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(label, I(X;Z) field, I(Z;Y) field) per estimator in the records, in
    the order of their fields; the plain mi_xz / mi_zy for older runs."""
    names = []
    for r in records:
        for k in r:
            for prefix in ("mi_xz_", "mi_zy_"):
                name = k[len(prefix) :] if k.startswith(prefix) else None
                if (
                    name
                    and not name.endswith(("_floor", "_lower"))
                    and name not in ("head", "fano", "floor")
                    and name not in names
                ):
                    names.append(name)
    if not names:
        return [("EDGE", "mi_xz", "mi_zy")]
    return [(name, f"mi_xz_{name}", f"mi_zy_{name}") for name in names]


def _lower_shading(ax, records, key, colors):
    """Shade from the `key`_lower value up to `key` (KDE's two values)."""
    lower = _series(records, f"{key}_lower")
    upper = _series(records, key)
    for series_key, (steps, values) in lower.items():
        top = dict(zip(*upper.get(series_key, ([], []))))
        pairs = [(s, v, top[s]) for s, v in zip(steps, values) if s in top]
        if pairs:
            ax.fill_between(
                [p[0] for p in pairs],
                [p[1] for p in pairs],
                [p[2] for p in pairs],
                color=colors[series_key[0]],
                alpha=0.12,
                lw=0,
            )


def _zy_range(records, rows) -> tuple[float, float] | None:
    """(low, high) of the I(Z;Y) axis: the estimates and their floors of every
    row, and 0, with a margin of 5%; None without an estimate. The head's bound
    is left out: a foreign model's reads tens of bits below zero and would
    stretch the axis until the estimates are flat lines."""
    values = [
        r[k]
        for r in records
        for _, _, key in rows
        for k in (key, f"{key}_floor", f"{key}_lower")
        if r.get(k) is not None
    ]
    if not values:
        return None
    low, high = min(min(values), 0.0), max(values)
    pad = 0.05 * max(high - low, 1e-3)
    return low - pad, high + pad


def _head_lines(ax, head, colors, limits):
    """The head's bound as thin dotted lines inside `limits`; where it falls
    outside, the line stops at the axis's edge, a triangle marks each point
    beyond it, and a note gives the bound's extreme (never a stretched axis)."""
    outside = []
    for (model, dataset), (steps, values) in sorted(head.items()):
        values = np.asarray(values, float)
        if limits is None:
            ax.plot(steps, values, ":", color=colors[model], lw=0.8)
            continue
        low, high = limits
        ax.plot(steps, np.clip(values, low, high), ":", color=colors[model], lw=0.8)
        for edge, mask, marker in ((low, values < low, "v"), (high, values > high, "^")):
            if mask.any():
                ax.plot(
                    np.asarray(steps)[mask],
                    np.full(mask.sum(), edge),
                    marker,
                    color=colors[model],
                    ms=4,
                    clip_on=False,
                )
                outside += values[mask].tolist()
    if limits is not None:
        ax.set_ylim(*limits)
        if outside:
            lo, hi = min(outside), max(outside)
            span = f"{lo:.1f}" if lo == hi else f"{lo:.1f} to {hi:.1f}"
            ax.text(
                0.99,
                0.02,
                f"head bound off the axis at the triangles: {span} bits",
                ha="right",
                va="bottom",
                transform=ax.transAxes,
                fontsize=7,
                color="grey",
            )


def plot_mi(records: list[dict[str, Any]], path: str, title: str = "") -> None:
    fig = mi_figure(records, title)
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)


def mi_figure(records: list[dict[str, Any]], title: str = ""):
    """The matplotlib figure that `plot_mi` writes (axes[row][0] I(X;Z), [1] I(Z;Y))."""
    plt = _pyplot()
    rows = estimator_rows(records)
    fig, axes = plt.subplots(
        len(rows), 2, figsize=(12, 3.6 * len(rows) + 0.6), squeeze=False, sharex=True, sharey="col"
    )
    head = _series(records, "mi_zy_head")
    for row, (name, xz_key, zy_key) in zip(axes, rows):
        for ax, key, label in zip(row, (xz_key, zy_key), ("I(X;Z)", "I(Z;Y)")):
            # I(Z;Y) on the test split too (unseen data); I(X;Z) is local only.
            series = _series(records, key, lambda d: label == "I(Z;Y)" or d != "test")
            colors = _model_colors({m for m, _ in series} | {m for m, _ in head})
            _floor_band(ax, records, f"{key}_floor")
            _lower_shading(ax, records, key, colors)
            _lines(ax, series, colors)
            if label == "I(Z;Y)" and head:
                _head_lines(ax, head, colors, _zy_range(records, rows))
            if not series:
                ax.text(
                    0.5,
                    0.5,
                    f"{name} does not define {label}\n(see docs/estimators.md)",
                    ha="center",
                    va="center",
                    transform=ax.transAxes,
                    color="grey",
                )
            ax.set_ylabel(f"{label} [bits], {name}")
            ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("local step")
    handles, labels = axes[0][1].get_legend_handles_labels()
    if head:
        handles.append(plt.Line2D([], [], ls=":", color="grey"))
        labels.append("head bound (Barber-Agakov)")
    if handles:
        axes[0][1].legend(handles, labels, fontsize=7, ncol=2)
    fig.suptitle(title or "mutual information at every eval point")
    fig.tight_layout()
    return fig


def _barrier_panel(ax, records):
    """The average's barrier and max_barrier per dataset, test included (left
    axis), and the weight distance (right axis) against the step."""
    for key, color, what in (
        ("barrier", "tab:red", "L(0.5) - (L(0) + L(1))/2"),
        ("max_barrier", "tab:purple", "max_a L(a) - chord"),
    ):
        series = _series(records, key, dataset_filter=lambda d: True)
        datasets = _datasets(series)
        for (_, dataset), (steps, values) in sorted(series.items()):
            ax.plot(
                steps,
                values,
                LINESTYLES[datasets.index(dataset) % len(LINESTYLES)],
                color=color,
                label=f"{what} on {dataset}",
            )
    ax.axhline(0, color="grey", lw=0.6)
    ax.set_xlabel("local step")
    ax.set_ylabel("loss barrier [nats]", fontsize=8)
    ax.grid(alpha=0.3)
    twin = ax.twinx()
    dist = _series(records, "weight_distance", dataset_filter=lambda d: d == "test")
    for (_, _), (steps, values) in dist.items():
        twin.plot(steps, values, color="tab:blue", lw=1.2, label="||w0 - w1|| / ||w0||")
    twin.set_ylabel("weight distance ||w0 - w1|| / ||w0||", color="tab:blue", fontsize=8)
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=7)
    ax.set_title("linear path between local models 0 and 1")


def plot_accuracy(records: list[dict[str, Any]], path: str, title: str = "") -> None:
    plt = _pyplot()
    series = _series(records, "acc", dataset_filter=lambda d: True)
    has_barrier = any(r.get("barrier") is not None for r in records)
    fig, axes = plt.subplots(
        1, 2 if has_barrier else 1, figsize=(13 if has_barrier else 7, 4.2), squeeze=False
    )
    ax = axes[0][0]
    if has_barrier:
        _barrier_panel(axes[0][1], records)
    _lines(ax, series, _model_colors({m for m, _ in series}))
    ax.set_xlabel("local step")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(title or "accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_info_plane(records: list[dict[str, Any]], path: str, title: str = "") -> None:
    plt = _pyplot()
    points = [r for r in records if r.get("mi_xz") is not None and r.get("mi_zy") is not None]
    models = sorted({r["model"] for r in points}, key=lambda m: (m == "average", m))
    fig, axes = plt.subplots(
        1,
        max(len(models), 1),
        figsize=(4 * max(len(models), 1), 3.8),
        squeeze=False,
        sharex=True,
        sharey=True,
    )
    datasets = sorted({r["dataset"] for r in points})
    markers = ["o", "^", "s", "D", "v", "P"]
    last = max((r["step"] for r in points), default=1) or 1
    for ax, model in zip(axes[0], models):
        for j, dataset in enumerate(datasets):
            sel = [r for r in points if r["model"] == model and r["dataset"] == dataset]
            sc = ax.scatter(
                [r["mi_xz"] for r in sel],
                [r["mi_zy"] for r in sel],
                c=[r["step"] for r in sel],
                cmap="viridis",
                vmin=0,
                vmax=last,
                marker=markers[j % len(markers)],
                s=14,
                label=dataset,
            )
        ax.set_title(model)
        ax.set_xlabel("I(X;Z) [bits]")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("I(Z;Y) [bits]")
    axes[0][0].legend(fontsize=7)
    if points:
        fig.colorbar(sc, ax=axes[0].tolist(), label="local step")
    fig.suptitle(title or "information plane")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _mean_band(ax, runs, key, dataset_filter, colors):
    """Mean over runs of each (model, dataset) series of `key`, over a band
    from the runs' minimum to their maximum at each step."""
    per_run = [_series(records, key, dataset_filter) for records in runs]
    keys = sorted(set().union(*per_run))
    datasets = _datasets({k: None for k in keys})
    for model, dataset in keys:
        by_step = defaultdict(list)
        for series in per_run:
            for step, value in zip(*series.get((model, dataset), ([], []))):
                by_step[step].append(value)
        steps = sorted(by_step)
        values = [by_step[s] for s in steps]
        style = LINESTYLES[datasets.index(dataset) % len(LINESTYLES)]
        color = colors.get(model, "tab:red")
        ax.plot(
            steps,
            [sum(v) / len(v) for v in values],
            style,
            color=color,
            lw=1.6 if model == "average" else 1.1,
            label=f"{model} on {dataset}",
        )
        ax.fill_between(
            steps, [min(v) for v in values], [max(v) for v in values], color=color, alpha=0.15, lw=0
        )
    return bool(keys)


def plot_seeds(runs: list[list[dict[str, Any]]], path: str, title: str = "") -> None:
    """One run's figures over several seeds: accuracy, the primary I(X;Z) and
    I(Z;Y), and the barrier between local models 0 and 1, each the mean over
    the seeds (line) within the seeds' minimum-maximum band."""
    plt = _pyplot()
    panels = [("acc", "accuracy", lambda d: True)]
    for key, label in (("mi_xz", "I(X;Z) [bits]"), ("mi_zy", "I(Z;Y) [bits]")):
        if any(r.get(key) is not None for records in runs for r in records):
            panels.append((key, label, lambda d: d != "test"))
    if any(r.get("barrier") is not None for records in runs for r in records):
        panels.append(("barrier", "loss barrier [nats]", lambda d: d != "test"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
    models = {r["model"] for records in runs for r in records}
    colors = _model_colors(models)
    for ax, (key, label, keep) in zip(axes[0], panels):
        _mean_band(ax, runs, key, keep, colors)
        ax.set_xlabel("local step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylim(0, 1)
    axes[0][0].legend(fontsize=7, ncol=2)
    fig.suptitle((title + ": " if title else "") + f"mean of {len(runs)} seeds, band min to max")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_run(run_dir: str, title: str = "") -> list[str]:
    """Write the three figures of `run_dir/metrics.jsonl` into `run_dir/figures`."""
    records = metrics_io.read_records(os.path.join(run_dir, "metrics.jsonl"))
    if not records:
        raise ValueError(f"{run_dir}/metrics.jsonl holds no records")
    fig_dir = os.path.join(run_dir, "figures")
    os.makedirs(fig_dir, exist_ok=True)
    paths = []
    for name, fn in (("mi", plot_mi), ("accuracy", plot_accuracy), ("info_plane", plot_info_plane)):
        paths.append(os.path.join(fig_dir, f"{name}.png"))
        fn(records, paths[-1], title)
    return paths


def plot_tradeoff(points: list[dict[str, Any]], path: str, title: str = "") -> str:
    """The accuracy-communication trade-off: one marker per run, the
    average's final test accuracy (left) and I(Z;Y) (right) against the
    bytes it sent (symlog x: nosync sits at 0). points: dicts with `acc`,
    `mi_zy` (or None), `bytes_sent`, `protocol` (legend label) and `split`
    (marker); without any I(Z;Y) (`--mi=none`) the accuracy panel alone.
    Writes `path` (a .png) and returns it."""
    plt = _pyplot()
    panels = [("acc", "average's final test accuracy")]
    if any(p.get("mi_zy") is not None for p in points):
        panels.append(("mi_zy", "average's final I(Z;Y) [bits]"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    axes = axes[0]
    protocols = list(dict.fromkeys(p["protocol"] for p in points))
    splits = list(dict.fromkeys(p["split"] for p in points))
    cmap = plt.get_cmap("tab10")
    markers = ["o", "s", "^", "D"]
    for ax, (key, ylabel) in zip(axes, panels):
        for i, proto in enumerate(protocols):
            for j, split in enumerate(splits):
                sel = [
                    p
                    for p in points
                    if p["protocol"] == proto and p["split"] == split and p.get(key) is not None
                ]
                if sel:
                    ax.scatter(
                        [p["bytes_sent"] / 1e6 for p in sel],
                        [p[key] for p in sel],
                        color=cmap(i % 10),
                        marker=markers[j % len(markers)],
                        alpha=0.8,
                        label=f"{proto}, {split}" if key == "acc" else None,
                    )
        ax.set_xscale("symlog", linthresh=0.1)
        ax.set_xlabel("MB communicated (symlog)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6, ncol=2)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
