"""EDGE in plain numpy, written from docs/estimators.md ("EDGE reference
mode, step by step"), independently of `fedjax_mi.mi.edge`: float64, Python
dictionaries for the bucket counts and a Python loop over the samples, as
the EDGE author's reference code computes it.

Two users: `tests/test_mi_edge.py` checks reference mode against it (the
independent ground truth for parity), and `benchmarks/torch_baseline.py`
times it as the estimator half of the PyTorch-plus-reference-EDGE baseline
(docs/performance.md, "Against a PyTorch baseline"), since its cost has the
reference's structure: a dictionary update per sample and ensemble member.

>>> import numpy as np
>>> rs = np.random.RandomState(0)
>>> x = rs.standard_normal((2000, 1))
>>> bits = numpy_edge(x, x + rs.standard_normal((2000, 1)))
>>> 0.2 < bits < 1.5
True
"""

import math

import numpy as np


def numpy_edge(
    x,
    y,
    version="4.2.0",
    U=10.0,
    gamma=(1.0, 1.0),
    epsilon=(0.0, 0.0),
    epsilon_vector=None,
    eps_range_factor=0.1,
    normalize_epsilon=True,
    ensemble_estimation="median",
    L_ensemble=None,
    hashing="p-stable",
):
    newer = version != "4.2.0"
    epsilon_vector = epsilon_vector or ("range" if newer else "fixed")
    L = L_ensemble or (10 if newer else 5)
    s = {"4.2.0": 1.0, "4.3.1": 0.9, "4.4.1": 0.4}[version]
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    y = np.asarray(y, np.float64).reshape(len(y), -1)
    n, dx = x.shape
    dy = y.shape[1]
    if hashing == "floor" or (version == "4.4.1" and dx <= 6 and dy <= 6):
        p, q = x, y
    else:
        kx = min(dx, math.floor(math.log2(n / 10)))
        ky = min(dy, math.floor(math.log2(n / 10)))
        rs = np.random.RandomState(3334)
        g, v = rs.standard_normal((dx, kx)), rs.standard_normal((dy, ky))

        def scale(a):
            sd = a.std(axis=0)
            sd[sd < 1e-4] = 1.0
            return 1.0 / (sd * math.sqrt(a.shape[1]))

        p, q = x @ (g * scale(x)[:, None]), y @ (v * scale(y)[:, None])

    def constant(a, d, factor):
        c = factor * a.shape[1]
        return c / max(1 + math.log(d), 1) if version == "4.4.1" else c

    def knn_widths(a):
        kk = a.shape[1]
        order = math.floor(
            0.43 * n ** (2 / 3 + 0.17 * kk / (kk + 1)) * math.exp(-1 / max(10000, kk**4))
        )
        rows = np.random.RandomState(3334).randint(0, n, 500)
        out = []
        for c in range(kk):
            col = a[:, c]
            out.append(np.mean([np.sort(np.abs(col - col[r]))[order - 1] for r in rows]) + 1e-4)
        return np.array(out)

    if epsilon[0] == 0:
        rx, ry = knn_widths(p), knn_widths(q)
        cx, cy = (
            constant(p, dx, 18 if version == "4.4.1" else 3),
            constant(q, dy, 18 if version == "4.4.1" else 3),
        )
    else:
        rx, ry = np.full(p.shape[1], epsilon[0]), np.full(q.shape[1], epsilon[1])
        cx, cy = (
            constant(p, dx, 15 if version == "4.4.1" else 3),
            constant(q, dy, 15 if version == "4.4.1" else 3),
        )
    mult = np.ones(L) if epsilon_vector == "fixed" else np.linspace(1, 1 + eps_range_factor, L)

    def one_pass(gx, gy):
        estimates = []
        for j in range(L):
            ex, ey = rx * cx * gx * mult[j], ry * cy * gy * mult[j]
            bx, by = j / L * ex, j / L * ey
            ka = [tuple(np.floor((p[i] + bx) / ex)) for i in range(n)]
            kb = [tuple(np.floor((q[i] + by) / ey)) for i in range(n)]
            ca, cb, cab = {}, {}, {}
            for a, b in zip(ka, kb):
                ca[a] = ca.get(a, 0) + 1
                cb[b] = cb.get(b, 0) + 1
                cab[a, b] = cab.get((a, b), 0) + 1
            terms = [
                min(max(math.log2(n * cab[a, b] / (ca[a] * cb[b])), 0.001), U)
                for a, b in zip(ka, kb)
            ]
            estimates.append(np.mean(terms))
        return float(
            np.median(estimates) if ensemble_estimation == "median" else np.mean(estimates)
        )

    gx, gy = gamma[0] * s, gamma[1] * s
    first = one_pass(gx, gy)
    if not normalize_epsilon:
        return first
    f = 2 ** (-math.sqrt(2 * first) + 0.5 / first) * s
    return one_pass(gx * f, gy * f)
