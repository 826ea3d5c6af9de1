"""The reproduction summary: final accuracies, final I(Z;Y) of every
recorded estimator against its floor and the head's bounds, and the
verdicts of the paper's claims (`fedjax_mi.claims`: the drop rule per
estimator, the accuracy claims, over seeds)."""

import types
from typing import Any, Mapping, Optional

from fedjax_mi import claims
from fedjax_mi.config import RunConfig


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


def summary_markdown(
    runs: Mapping[str, list[dict[str, Any]]], configs: Mapping[str, RunConfig]
) -> str:
    """Markdown per run: final accuracies, final I(Z;Y) with its floor, the
    drop rule per estimator, then the paper's claims ("shown in 1 of 1
    seeds": `fedjax_mi.claims`)."""
    lines = [
        "# Reproduction summary",
        "",
        "Final accuracy of every model on every dataset, final I(Z;Y) on every local "
        "dataset with the estimator's floor (the same estimate with the labels "
        "shuffled) in brackets, the drop rule per estimator (fedjax_mi/claims.py: the "
        "average's floor-corrected I(Z;Y) below "
        f"{claims.DROP_RATIO:g} x the local model's own, worker d on local dataset d, on "
        f"every local dataset for {claims.PERSIST_POINTS} eval points or to the end), and "
        "the paper's claims judged by the same rules, on the local data and on the test split.",
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
        lines += [claims.drop_line(records, key) for key in claims.estimators(records)]
        lines.append("")
    seeds = [configs[name].training.seed for name in runs]
    claim_runs = {name: [records] for name, records in runs.items()}
    period = _eval_period(configs.values())
    return "\n".join(
        lines + claims.claim_lines(claim_runs, seeds[:1], period) + _digits_note(configs.values())
    )


# What the digits preset cannot show, over 5 seeds and two instruction sets
# (docs/reproduction.md, "The claim rules").
DIGITS_NOTE = (
    "On the embedded digits the quick preset cannot show fig 1's average far below its "
    "locals (the never-synced workers stay close: the average keeps most of their skill) "
    "nor the falls of the average's I(Z;Y) in figs 1 and 3 with the probe or KDE (its "
    'representation keeps the labels): docs/reproduction.md, "The claim rules".'
)


def _digits_note(cfgs) -> list[str]:
    return [DIGITS_NOTE, ""] if all(c.data.dataset == "digits" for c in cfgs) else []


def _eval_period(cfgs) -> Optional[int]:
    """The eval period the runs share (None if they differ)."""
    periods = {c.measurement.eval_period for c in cfgs}
    return periods.pop() if len(periods) == 1 else None


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
    average's I(Z;Y) falls below the local model's by the drop rule, then
    the paper's claims, each "shown in s of S seeds" (`fedjax_mi.claims`).

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
        lines += [
            "",
            "Does the average's I(Z;Y) fall below the local models'? (per seed; the drop "
            "rule of fedjax_mi/claims.py, persistent ratio in brackets)",
            "",
        ]
        for key in claims.estimators([r for records in seed_records for r in records]):
            drops = [claims.drop(records, key) for records in seed_records]
            lines.append(
                f"- {claims.label(key)}: "
                + "; ".join(
                    f"seed {c.seed}: "
                    + ("never" if d.step is None else f"from step {d.step}")
                    + ("" if d.level is None else f" ({d.level:.2f})")
                    for c, d in zip(cfgs, drops)
                )
                + "."
            )
        lines.append("")
    seeds = [c.training.seed for c in next(iter(configs.values()))]
    every = [c for cs in configs.values() for c in cs]
    return "\n".join(
        lines + claims.claim_lines(runs, seeds, _eval_period(every)) + _digits_note(every)
    )


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
