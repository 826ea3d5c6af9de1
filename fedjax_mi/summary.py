"""The reproduction summary: final accuracies, final I(Z;Y) of every
recorded estimator against its floor and the head's bounds, and when the
average's I(Z;Y) first falls clearly below the local models', read with
each estimator."""

import types
from typing import Any, Mapping, Optional

from fedjax_mi.config import RunConfig

# "Clearly below": under this fraction of the local model's own I(Z;Y)
# (worker d on local dataset d, the model trained on that data).
DROP_FRACTION = 0.8


def final_accuracies(records: list[dict[str, Any]]) -> dict[tuple[str, str], float]:
    """{(model, dataset): accuracy} at the last eval point."""
    last = max(r["step"] for r in records)
    return {(r["model"], r["dataset"]): r["acc"] for r in records if r["step"] == last}


# Bounds from the model's own head, recorded with every estimator choice.
HEAD_BOUNDS = {"mi_zy_head": "head (Barber-Agakov)", "mi_zy_fano": "Fano"}


def zy_fields(records: list[dict[str, Any]]) -> dict[str, str]:
    """{record field: label} of every I(Z;Y) estimator in the records, then
    the head's bounds; the plain `mi_zy` for records of older runs."""
    names = sorted(
        {
            k
            for r in records
            for k in r
            if k.startswith("mi_zy_")
            and not k.endswith(("_floor", "_lower"))
            and k not in HEAD_BOUNDS
        }
    )
    fields = {k: k[len("mi_zy_") :] for k in names} or {"mi_zy": "I(Z;Y)"}
    fields.update({k: v for k, v in HEAD_BOUNDS.items() if any(k in r for r in records)})
    return fields


def final_mi_table(
    records: list[dict[str, Any]],
    models: list[str],
    datasets: list[str],
    key: str = "mi_zy",
    label: str = "I(Z;Y)",
) -> list[str]:
    """Markdown rows of `key` at the last eval point, "value (floor)" per
    model and local dataset; the floor (`key`_floor, the estimate with the
    labels shuffled) is left out for records that have none."""
    last = max(r["step"] for r in records)
    at = {(r["model"], r["dataset"]): r for r in records if r["step"] == last}
    has_floor = any(r.get(f"{key}_floor") is not None for r in records)
    rows = [
        f"| {label} [bits]{' (floor)' if has_floor else ''} | " + " | ".join(datasets) + " |",
        "| --- |" + " --- |" * len(datasets),
    ]
    for m in models:
        cells = []
        for d in datasets:
            r = at.get((m, d), {})
            value, floor = r.get(key), r.get(f"{key}_floor")
            cells.append(
                "-"
                if value is None
                else f"{value:.3f}" + ("" if floor is None else f" ({floor:.3f})")
            )
        rows.append(f"| {m} | " + " | ".join(cells) + " |")
    return rows


def first_drop(
    records: list[dict[str, Any]], fraction: float = DROP_FRACTION, key: str = "mi_zy"
) -> Optional[tuple[int, float, str]]:
    """(step, epoch, dataset) of the first eval point where, on some local
    dataset d, the average's I(Z;Y) < fraction x worker d's I(Z;Y); None if never."""
    by_key = {(r["step"], r["model"], r["dataset"]): r for r in records}
    for step in sorted({r["step"] for r in records}):
        for (s, model, dataset), r in sorted(by_key.items()):
            if s != step or model != "average" or not dataset.startswith("local"):
                continue
            own = by_key.get((step, f"worker{dataset[len('local') :]}", dataset))
            if own is None or r.get(key) is None or own.get(key) is None or own[key] <= 0:
                continue  # a bound at or below 0 (e.g. the head at initialisation) says nothing
            if r[key] < fraction * own[key]:
                return step, r["epoch"], dataset
    return None


# "Clearly below" for accuracies: the average at least this much under the
# mean of the local models on their own data; "with them": within it.
ACC_GAP = 0.05


def own_and_average(records: list[dict[str, Any]]) -> tuple[float, float]:
    """(mean accuracy of worker d on local d, mean accuracy of the average on
    the local datasets) at the last eval point."""
    acc = final_accuracies(records)
    locals_ = [d for _, d in acc if d.startswith("local")]
    own = [acc[(f"worker{d[5:]}", d)] for d in set(locals_) if (f"worker{d[5:]}", d) in acc]
    avg = [acc[("average", d)] for d in set(locals_) if ("average", d) in acc]
    return sum(own) / len(own), sum(avg) / len(avg)


def claim_lines(runs: Mapping[str, list[dict[str, Any]]]) -> list[str]:
    """Which of the paper's accuracy and I(Z;Y) claims these runs show (for
    the figures present): fig 1's average clearly below its locals and its
    I(Z;Y) falling; fig 2's average with its locals; fig 3's I(Z;Y) falling."""
    lines = [
        "## Which of the paper's claims these runs show",
        "",
        f'Accuracies: mean over the local datasets at the last eval point; "clearly '
        f'below" = at least {ACC_GAP:g} under the local models on their own data. '
        f"I(Z;Y): the primary estimator's, the rule above.",
        "",
    ]
    for fig, claim in (("fig1", "below"), ("fig2", "with"), ("fig4", "with")):
        if fig in runs:
            own, avg = own_and_average(runs[fig])
            shown = (own - avg >= ACC_GAP) if claim == "below" else (own - avg < ACC_GAP)
            paper = {
                "fig1": "the average (36%) far below the locals (> 75%)",
                "fig2": "the average (> 73%) with the locals",
                "fig4": "the average (~60%) working",
            }[fig]
            lines.append(
                f"- {fig}, {paper}: {'shown' if shown else 'not shown'} "
                f"(locals {own:.3f}, average {avg:.3f})."
            )
    for fig in ("fig1", "fig3"):
        if fig in runs:
            drop = first_drop(runs[fig])
            lines.append(
                f"- {fig}, the average's I(Z;Y) falls below the locals': "
                + (
                    "not shown (never clearly below, or no estimator recorded)."
                    if drop is None
                    else f"shown (first at step {drop[0]})."
                )
            )
    return lines + [""]


def summary_markdown(
    runs: Mapping[str, list[dict[str, Any]]], configs: Mapping[str, RunConfig]
) -> str:
    """Markdown per run: final accuracies, final I(Z;Y) with its floor, and
    the I(Z;Y)-drop line."""
    lines = [
        "# Reproduction summary",
        "",
        f"Final accuracy of every model on every dataset, final I(Z;Y) on every local "
        f"dataset with the estimator's floor (the same estimate with the labels "
        f"shuffled) in brackets, and the first eval point at which the average's I(Z;Y) "
        f"falls below {DROP_FRACTION:g} x the local model's own (worker d on local "
        f"dataset d).",
        "",
    ]
    for name, records in runs.items():
        cfg = _settings(configs[name])
        acc = final_accuracies(records)
        datasets = sorted({d for _, d in acc}, key=lambda d: (d == "test", d))
        models = sorted({m for m, _ in acc}, key=lambda m: (m == "average", m))
        sync = "" if cfg.protocol == "nosync" else f", sync every {cfg.sync_period}"
        lines += [
            f"## {name}: {cfg.dataset}, {cfg.split}, {cfg.protocol}{sync}",
            "",
            f"{cfg.workers} workers, {cfg.epochs:g} epochs, batch {cfg.batch_size}, "
            f"lr {cfg.lr:g}, eval every {cfg.eval_period} steps, estimators {cfg.mi!r}"
            + "".join(
                f"; {name} {getattr(cfg, name)!r}"
                for name in ("edge_xz", "edge_zy")
                if getattr(cfg, name)
            )
            + ".",
            "",
            "| model | " + " | ".join(datasets) + " |",
            "| --- |" + " --- |" * len(datasets),
        ]
        for m in models:
            cells = [("-" if acc.get((m, d)) is None else f"{acc[(m, d)]:.3f}") for d in datasets]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        local = [d for d in datasets if d != "test"]
        for key, label in zy_fields(records).items():
            lines += [""] + final_mi_table(records, models, local, key, f"I(Z;Y) {label}")
        lines += ["", "Does the average's I(Z;Y) fall below the local models'?", ""]
        for key, label in zy_fields(records).items():
            drop = first_drop(records, key=key)
            lines.append(
                f"- {label}: "
                + (
                    "never clearly below."
                    if drop is None
                    else f"first clearly below at step {drop[0]} (epoch {drop[1]:g}) on {drop[2]}."
                )
            )
        lines.append("")
    return "\n".join(lines + claim_lines(runs))


def _mean_sd_text(values: list[Optional[float]]) -> str:
    """'mean ± sd' (sample sd, ddof 1; '± 0' for one value) of the non-null values."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    mean, sd = _mean_sd(values)
    return f"{mean:.3f} ± {sd:.3f}"


def seeds_markdown(
    runs: Mapping[str, list[list[dict[str, Any]]]], configs: Mapping[str, list[RunConfig]]
) -> str:
    """Markdown per figure over its seeds: mean ± sd (over seeds) of every
    final accuracy, every estimator's final I(Z;Y), the average's barrier and
    the weight distance, and per seed the first eval point at which the
    average's I(Z;Y) falls clearly below the local model's.

    runs: {figure: [records of each seed]}; configs: {figure: [RunConfig of each seed]}.
    """
    lines = [
        "# Reproduction summary over seeds",
        "",
        "Every number is the mean ± sample standard deviation over the seeds of the figure "
        "(each seed draws its own initial weights, data order and partition), at the last "
        "eval point.",
        "",
    ]
    for name, seed_records in runs.items():
        cfgs = [_settings(c) for c in configs[name]]
        cfg = cfgs[0]
        finals = [
            {
                (r["model"], r["dataset"]): r
                for r in records
                if r["step"] == max(x["step"] for x in records)
            }
            for records in seed_records
        ]
        datasets = sorted({d for f in finals for _, d in f}, key=lambda d: (d == "test", d))
        models = sorted({m for f in finals for m, _ in f}, key=lambda m: (m == "average", m))
        sync = "" if cfg.protocol == "nosync" else f", sync every {cfg.sync_period}"
        lines += [
            f"## {name}: {cfg.dataset}, {cfg.split}, {cfg.protocol}{sync}",
            "",
            f"seeds {', '.join(str(c.seed) for c in cfgs)}; {cfg.workers} workers, "
            f"{cfg.epochs:g} epochs, batch {cfg.batch_size}, lr {cfg.lr:g}, momentum "
            f"{cfg.momentum:g}, init {cfg.init}, input scale {cfg.input_scale}, "
            f"estimators {cfg.mi!r}.",
            "",
            "| accuracy | " + " | ".join(datasets) + " |",
            "| --- |" + " --- |" * len(datasets),
        ]
        cell = lambda m, d, key: _mean_sd_text([f.get((m, d), {}).get(key) for f in finals])
        for m in models:
            lines.append(f"| {m} | " + " | ".join(cell(m, d, "acc") for d in datasets) + " |")
        local = [d for d in datasets if d != "test"]
        for key, label in zy_fields([r for records in seed_records for r in records]).items():
            lines += [
                "",
                f"| I(Z;Y) {label} [bits] | " + " | ".join(local) + " |",
                "| --- |" + " --- |" * len(local),
            ]
            for m in models:
                lines.append(f"| {m} | " + " | ".join(cell(m, d, key) for d in local) + " |")
        if any(f.get(("average", d), {}).get("barrier") is not None for f in finals for d in local):
            lines += [
                "",
                "| average | " + " | ".join(local) + " |",
                "| --- |" + " --- |" * len(local),
                "| barrier [nats] | "
                + " | ".join(cell("average", d, "barrier") for d in local)
                + " |",
                "| weight distance | "
                + " | ".join(cell("average", d, "weight_distance") for d in local)
                + " |",
            ]
        lines += ["", "Does the average's I(Z;Y) fall below the local models'? (per seed)", ""]
        for key, label in zy_fields([r for records in seed_records for r in records]).items():
            drops = [first_drop(records, key=key) for records in seed_records]
            lines.append(
                f"- {label}: "
                + "; ".join(
                    f"seed {c.seed}: " + ("never" if d is None else f"step {d[0]}")
                    for c, d in zip(cfgs, drops)
                )
                + "."
            )
        lines.append("")
    return "\n".join(lines)


def final_point(records: list[dict[str, Any]]) -> dict[str, Any]:
    """A run's end on the accuracy-communication plane: the average model's
    test accuracy, its I(Z;Y) (primary estimator) averaged over the local
    datasets (None without one), and the communication counters."""
    last = max(r["step"] for r in records)
    at = [r for r in records if r["step"] == last]
    test = next(r for r in at if r["model"] == "average" and r["dataset"] == "test")
    zy = [
        r["mi_zy"]
        for r in at
        if r["model"] == "average" and r["dataset"] != "test" and r.get("mi_zy") is not None
    ]
    return dict(
        acc=test["acc"],
        mi_zy=sum(zy) / len(zy) if zy else None,
        syncs=test.get("syncs", 0),
        models_sent=test.get("models_sent", 0),
        bytes_sent=test.get("bytes_sent", 0),
    )


def _settings(cfg: RunConfig) -> types.SimpleNamespace:
    """A config's settings by their flat names (cfg.lr rather than cfg.training.lr)."""
    return types.SimpleNamespace(**cfg.flat())


def _mean_sd(values: list[float]) -> tuple[float, float]:
    """(mean, sample sd with ddof 1; 0 for one value) of non-empty values."""
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, var**0.5


def tradeoff_table(
    runs: Mapping[str, list[dict[str, Any]]], configs: Mapping[str, RunConfig]
) -> list[str]:
    """Markdown rows: one per (split, protocol setting) over its seeds: final
    test accuracy of the average (mean ± sd over seeds, in %), its I(Z;Y),
    syncs and MB sent (means), and the number of seeds."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for name, records in runs.items():
        cfg = configs[name]
        groups.setdefault((cfg.data.split, cfg.protocol.label), []).append(final_point(records))
    rows = [
        "| split | protocol | avg test acc [%] (mean ± sd) | avg I(Z;Y) [bits] | syncs | "
        "MB sent | seeds |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (split, proto), points in groups.items():
        acc = _mean_sd([100 * p["acc"] for p in points])
        zy = [p["mi_zy"] for p in points if p["mi_zy"] is not None]
        rows.append(
            f"| {split} | {proto} | {acc[0]:.1f} ± {acc[1]:.1f} | "
            + (f"{sum(zy) / len(zy):.3f}" if zy else "-")
            + f" | {sum(p['syncs'] for p in points) / len(points):.1f}"
            f" | {sum(p['bytes_sent'] for p in points) / len(points) / 1e6:.2f}"
            f" | {len(points)} |"
        )
    return rows
