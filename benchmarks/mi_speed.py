"""Seconds per call of every MI estimator at the study's shapes (docs/estimators.md, "Speed").

Run:  python -m benchmarks.mi_speed                  # N = 25,000 and 5,000
      python -m benchmarks.mi_speed --n 5000 --repeats 2

Shapes are the study's eval point: X (N, 3072) float32 inputs, labels (N,)
int32 with 10 classes, Z (N, 84) float32 = relu of a random linear map of X
(X carries a weak class template, so Z and the labels are dependent). Each
estimator is timed

  single:  one jitted call (`mi.estimate_traced` under `jax.jit`, config
           static), median of --repeats calls after a compiling call;
  batched: the study's form, one jitted call vmapped over 3 models x 2
           datasets (Z (3, 2, N, 84); X and labels shared across models),
           median of --batch_repeats calls after a compiling call.

I(X;Z) estimators: EdgeReference.paper_xz() and EdgeQuantile on (X, Z);
KDE (relative noise 0.1) needs only Z, with all N query rows and with a
query subsample. I(Z;Y): MixedKNN, Probe, EdgeReference.paper_zy(),
EdgeQuantile, KDE. KSG (k = 3, and the continuous default: normal scores,
k = 1) is timed on two 84-dim representations (Z of two models on the same
inputs): the kNN cost at the study's width. (KSG with the LNC correction is
not: at 84 + 84 dims it needs k > 168 neighbours and a 168 x 168
eigendecomposition per sample; studies/mi_accuracy.py times it at 10 + 10.) The
"eval point" column adds an estimator's batched I(X;Z) and I(Z;Y) times:
one whole eval-point measurement with it.

The per-call time excludes the host-side NaN check that `mi.estimate` does on
concrete inputs (the study runs the traced form inside its own jit). Prints a
markdown table and, as the last line, one JSON object.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import timing
from fedjax_mi import mi

MODELS, DATASETS, CLASSES, D_X, D_Z = 3, 2, 10, 3072, 84


def study_shapes(key: jax.Array, n: int):
    """X (datasets, n, 3072), labels (datasets, n), Z (models, datasets, n, 84).

    X = 0.3 * template[label] + N(0, 1) per pixel; Z = relu(X W_m / sqrt(3072) + b_m)
    with a random W_m (3072, 84) per model.
    """
    k_t, k_y, k_x, k_w = jax.random.split(key, 4)
    templates = jax.random.normal(k_t, (CLASSES, D_X))
    labels = jax.random.randint(k_y, (DATASETS, n), 0, CLASSES)
    x = 0.3 * templates[labels] + jax.random.normal(k_x, (DATASETS, n, D_X))
    zs = []
    for km in jax.random.split(k_w, MODELS):
        kw, kb = jax.random.split(km)
        w = jax.random.normal(kw, (D_X, D_Z)) / math.sqrt(D_X)
        b = 0.1 * jax.random.normal(kb, (D_Z,))
        zs.append(jax.nn.relu(x @ w + b))
    return x.astype(jnp.float32), labels.astype(jnp.int32), jnp.stack(zs).astype(jnp.float32)


def cases(queries: tuple[int, ...]) -> list[tuple[str, str, object, str]]:
    """(estimator, quantity, config, argument order) for every timed call.

    order: "xz" -> (X, Z), "yz" -> (labels, Z), "zz" -> (Z, Z'), "zy" -> (Z, labels).
    """
    probe = mi.Probe(num_classes=CLASSES)  # static C: needed under jit and vmap
    return [
        ("EdgeRef paper", "I(X;Z)", mi.EdgeReference.paper_xz(), "xz"),
        ("EdgeRef paper", "I(Z;Y)", mi.EdgeReference.paper_zy(), "yz"),
        ("EdgeQuantile", "I(X;Z)", mi.EdgeQuantile(), "xz"),
        ("EdgeQuantile", "I(Z;Y)", mi.EdgeQuantile(), "zy"),
        ("KDE all queries", "I(X;Z)", mi.KDE(), "xz"),
        ("KDE all queries", "I(Z;Y)", mi.KDE(), "yz"),
        *[
            (f"KDE queries={q}", quantity, mi.KDE(queries=q), order)
            for q in queries
            for quantity, order in (("I(X;Z)", "xz"), ("I(Z;Y)", "yz"))
        ],
        ("MixedKNN k=3", "I(Z;Y)", mi.MixedKNN(k=3), "yz"),
        ("Probe", "I(Z;Y)", probe, "yz"),
        ("KSG k=3", "I(Z;Z')", mi.KSG(k=3), "zz"),
        ("KSG copula k=1 (default)", "I(Z;Z')", mi.KSG(k=1, copula=True), "zz"),
    ]


def pair(order: str, x, labels, z, z2):
    return {"xz": (x, z), "yz": (labels, z), "zy": (z, labels), "zz": (z, z2)}[order]


def run(n: int, repeats: int, batch_repeats: int, queries: int, batch: bool, only) -> dict:
    x, labels, z = study_shapes(jax.random.key(0), n)
    key = jax.random.key(1)
    out = {}
    for est, quantity, config, order in cases(queries):
        if only and not any(o in est for o in only):
            continue
        name = f"{est} {quantity}"
        single = jax.jit(functools.partial(mi.estimate_traced, config=config))
        args = pair(order, x[0], labels[0], z[0, 0], z[1, 0])
        st = timing.time_calls(single, key, *args, repeats=repeats)
        t, first, value, times = st.median_s, st.first_s, st.value, st.times
        rec = dict(
            estimator=est,
            quantity=quantity,
            single_s=t,
            single_first_s=first,
            value_bits=float(value),
        )
        print(
            f"  N={n} {name}: {t:.3f} s/call (first {first:.1f} s; {[round(s, 3) for s in times]}), "
            f"{float(value):.3f} bits",
            file=sys.stderr,
            flush=True,
        )
        if batch:
            # Models outer, datasets inner; X and labels are per dataset, shared by models.
            per_dataset = jax.vmap(lambda a, b: mi.estimate_traced(key, a, b, config))
            if order == "zz":
                # Z of model m vs model (m + 1) % 3 on the same dataset.
                fn = jax.jit(lambda z: jax.vmap(per_dataset)(z, jnp.roll(z, 1, axis=0)))
                bargs = (z,)
            else:
                side = {"xz": x, "yz": labels, "zy": labels}[order]
                if order == "zy":
                    fn = jax.jit(jax.vmap(per_dataset, in_axes=(0, None)))
                    bargs = (z, side)
                else:
                    fn = jax.jit(jax.vmap(per_dataset, in_axes=(None, 0)))
                    bargs = (side, z)
            bt = timing.time_calls(fn, *bargs, repeats=batch_repeats)
            tb, firstb, vb, timesb = bt.median_s, bt.first_s, bt.value, bt.times
            rec.update(
                batch_s=tb, batch_first_s=firstb, batch_values_bits=np.asarray(vb).round(4).tolist()
            )
            print(
                f"  N={n} {name} vmapped 3 x 2: {tb:.3f} s (first {firstb:.1f} s; "
                f"{[round(s, 3) for s in timesb]})",
                file=sys.stderr,
                flush=True,
            )
        out[name] = rec
    return out


def table(results: dict) -> str:
    """Markdown: one row per estimator and quantity, columns per N."""
    sizes = list(results)
    names = list(dict.fromkeys(k for r in results.values() for k in r))
    head = (
        "| estimator | quantity | "
        + " | ".join(f"s/call N={s} | vmapped 3x2 N={s} | vmapped / 6 calls N={s}" for s in sizes)
        + " | bits (N="
        + sizes[0]
        + ") |"
    )
    rows = [head, "|---|---|" + "---|---|---|" * len(sizes) + "---|"]
    for name in names:
        first = next(r[name] for r in results.values() if name in r)
        cells = []
        for s in sizes:
            r = results[s].get(name, {})
            cells.append(f"{r['single_s']:.3f}" if "single_s" in r else "-")
            cells.append(f"{r['batch_s']:.3f}" if "batch_s" in r else "-")
            # > 1: the vmapped call is slower than 6 separate calls.
            cells.append(f"{r['batch_s'] / (6 * r['single_s']):.2f}" if "batch_s" in r else "-")
        rows.append(
            f"| {first['estimator']} | {first['quantity']} | "
            + " | ".join(cells)
            + f" | {results[sizes[0]].get(name, {}).get('value_bits', float('nan')):.3f} |"
        )
    return "\n".join(rows)


def eval_point(results: dict) -> dict:
    """Seconds of one eval point (3 models x 2 datasets, vmapped calls):
    per estimator, its I(X;Z) + I(Z;Y); and every study estimator together
    (EDGE reference, quantile, MixedKNN, Probe and one KDE setting), once per
    KDE query setting timed. KSG's I(Z;Z') is not a study quantity."""
    out = {}
    for size, res in results.items():
        per = {}
        for r in res.values():
            if "batch_s" in r and r["quantity"] in ("I(X;Z)", "I(Z;Y)"):
                per.setdefault(r["estimator"], {})[r["quantity"]] = r["batch_s"]
        kdes = [e for e in per if e.startswith("KDE")]
        base = sum(sum(v.values()) for e, v in per.items() if e not in kdes)
        out[size] = {e: sum(v.values()) for e, v in per.items() if len(v) == 2}
        for e in kdes:
            out[size][f"all study estimators, {e}"] = base + sum(per[e].values())
    return out


def print_report(record: dict, repeats: int, batch_repeats: int) -> None:
    """The markdown tables and goal lines of a record (also for --from_json)."""
    results = record["results"]
    print(
        f"\n### seconds per call (jitted, after compile; single: median of {repeats}, "
        f"vmapped: median of {batch_repeats})\n"
    )
    print(table(results))
    ep = eval_point(results)
    if any(ep.values()):
        print("\n### one eval point (vmapped I(X;Z) + I(Z;Y), 3 models x 2 datasets), seconds\n")
        print("| estimator | " + " | ".join(f"N={s}" for s in ep) + " |")
        print("|---|" + "---|" * len(ep))
        for e in dict.fromkeys(k for v in ep.values() for k in v):
            print(f"| {e} | " + " | ".join(f"{ep[s].get(e, float('nan')):.3f}" for s in ep) + " |")
    record["eval_point_s"] = ep
    goals = {}
    for name, r in results.get("25000", {}).items():
        if r["estimator"].startswith("KDE queries"):
            goals[f"{name} <= 1 s"] = r["single_s"] <= 1.0
        if r["estimator"].startswith(("MixedKNN", "KSG")):
            goals[f"{name} <= 5 s"] = r["single_s"] <= 5.0
    if goals:
        print("\n### goals at N = 25,000 (this machine)\n")
        for g, met in goals.items():
            print(f"- {g}: {'met' if met else 'NOT met'}")
    record["goals"] = goals


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[25_000, 5_000], help="sample sizes")
    parser.add_argument("--repeats", type=int, default=3, help="timed single calls (median)")
    parser.add_argument("--batch_repeats", type=int, default=1, help="timed vmapped calls (median)")
    parser.add_argument(
        "--queries", type=int, nargs="+", default=[1000, 5000], help="KDE query subsample sizes M"
    )
    parser.add_argument("--no_batch", action="store_true", help="skip the vmapped 3 x 2 calls")
    parser.add_argument("--only", nargs="*", default=None, help="estimator name substrings to time")
    parser.add_argument(
        "--from_json",
        default=None,
        help="reprint the tables of a saved run (its output file; the last line is read)",
    )
    args = parser.parse_args(argv)
    t_start = time.perf_counter()
    print(
        f"# MI estimator speed: jax {jax.__version__} on {jax.devices()[0].device_kind} "
        f"({jax.device_count()} device), {MODELS} models x {DATASETS} datasets"
    )
    if args.from_json:
        with open(args.from_json) as f:
            record = json.loads(f.read().strip().splitlines()[-1])
        print(
            f"# reprinted from {args.from_json} (measured {record['device']}, code {record.get('code')})"
        )
        print_report(record, args.repeats, args.batch_repeats)
        return 0
    results = {
        str(n): run(
            n, args.repeats, args.batch_repeats, tuple(args.queries), not args.no_batch, args.only
        )
        for n in args.n
    }
    record = dict(
        device=jax.devices()[0].device_kind,
        models=MODELS,
        datasets=DATASETS,
        code=timing.code_version(),
        results=results,
    )
    print_report(record, args.repeats, args.batch_repeats)
    record["wall_s"] = round(time.perf_counter() - t_start, 1)
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
