"""Speed of the jitted EDGE estimator at the study's eval-point shapes.

Run:  python benchmarks/edge_speed.py   (or  python -m benchmarks.edge_speed)
      add --accuracy to also print the correlated-Gaussian error tables.

Times one call after compilation at N = 25,000 for I(X; Z) (X 3,072-dim
images, Z the 84-dim representation) and I(Z; Y) (10-class labels), in
reference 4.2.0 mode with the settings the reference's own CNN analysis used
(docs/estimators.md, EDGE step 5) and in the project default; then the whole eval-point
batch (3 models x 2 local datasets x 2 MI values) vmapped. The reference
implementation takes about 13 s and 4.5 s per call on a 2-core machine
(docs/estimators.md, EDGE step 6). The last line printed is one JSON record with the
seconds per call.

Z comes from a randomly initialised LeNet-like network (conv 6@5x5, max pool,
conv 16@5x5, max pool, dense 120, dense 84, ReLU) on CIFAR-like inputs
(random class templates plus noise), so the default's I(Z; Y) is also shown
next to H(Y) (it must be clearly below: not saturated).
"""

from __future__ import annotations

import argparse
import json
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_mi.mi import edge

N = 25_000
CLASSES = 10
MODELS, DATASETS = 3, 2

# docs/estimators.md, EDGE step 5: the reference's information_plane_CNN/main.py settings.
REF_XZ = edge.EdgeConfig.reference("4.2.0", U=20, L_ensemble=10, gamma=(0.2, 1.4),
                                   epsilon_vector="range")
REF_ZY = edge.EdgeConfig.reference("4.2.0", U=10, L_ensemble=10, gamma=(1e-4, 0.52),
                                   epsilon=(0.2, 0.2), epsilon_vector="range")
DEFAULT = edge.EdgeConfig()


def cifar_like(key: jax.Array, n: int, signal: float = 0.15):
  """(n, 32, 32, 3) float32 images in [0, 1] and (n,) int32 labels.

  Each class has a smooth random template; an image is its class template
  times `signal` plus uniform noise, so labels are only weakly recoverable.
  """
  k_lab, k_tmp, k_noise = jax.random.split(key, 3)
  labels = jax.random.randint(k_lab, (n,), 0, CLASSES)
  coarse = jax.random.uniform(k_tmp, (CLASSES, 4, 4, 3))
  templates = jax.image.resize(coarse, (CLASSES, 32, 32, 3), "linear")
  noise = jax.random.uniform(k_noise, (n, 32, 32, 3))
  return (1 - signal) * noise + signal * templates[labels], labels


def random_lenet(key: jax.Array):
  """Parameters of a LeNet-like network at a He-style random init."""
  shapes = [(5, 5, 3, 6), (5, 5, 6, 16), (400, 120), (120, 84)]
  keys = jax.random.split(key, len(shapes))
  return [jax.random.normal(k, s) * math.sqrt(2.0 / math.prod(s[:-1])) for k, s in zip(keys, shapes)]


@jax.jit
def lenet_features(params, images):
  """(n, 32, 32, 3) -> (n, 84) post-ReLU activations of the fc-84 layer."""
  def conv_pool(h, w):
    h = jax.lax.conv_general_dilated(h, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    h = jax.nn.relu(h)
    return jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
  h = conv_pool(conv_pool(images, params[0]), params[1]).reshape(images.shape[0], -1)
  h = jax.nn.relu(h @ params[2])
  return jax.nn.relu(h @ params[3])


def features_in_chunks(params, images, chunk=5_000):
  return jnp.concatenate([lenet_features(params, images[i:i + chunk])
                          for i in range(0, images.shape[0], chunk)])


def time_call(fn, *args, repeats=5):
  """Median seconds of fn(*args) after one compiling call."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return float(np.median(times)), fn(*args)


def speed():
  key = jax.random.key(0)
  images, labels = [], []
  for k in jax.random.split(key, DATASETS):
    im, lab = cifar_like(k, N)
    images.append(im)
    labels.append(lab)
  zs = []
  for m in range(MODELS):
    params = random_lenet(jax.random.key(100 + m))
    zs.append(jnp.stack([features_in_chunks(params, im) for im in images]))
  z = jnp.stack(zs)  # (models, datasets, N, 84)
  x = jnp.stack([im.reshape(N, -1) for im in images])  # (datasets, N, 3072)
  y = jnp.stack(labels)  # (datasets, N)

  mi = edge.mutual_information
  k = jax.random.key(1)
  out = {}
  for name, cfg_xz, cfg_zy in (("reference_4.2.0", REF_XZ, REF_ZY), ("default", DEFAULT, DEFAULT)):
    t_xz, v_xz = time_call(lambda a, b: mi(k, a, b, cfg_xz), x[0], z[0, 0])
    if name == "default":
      t_zy, v_zy = time_call(lambda a, b: mi(k, a, b, cfg_zy), z[0, 0], y[0])
    else:  # docs/estimators.md, EDGE step 5: the author calls EDGE(labels, T, ...).
      t_zy, v_zy = time_call(lambda a, b: mi(k, a, b, cfg_zy), y[0], z[0, 0])

    @jax.jit
    def batch(x, z, y):
      xz = jax.vmap(jax.vmap(lambda a, b: mi(k, a, b, cfg_xz), (0, 0)), (None, 0))(x, z)
      if name == "default":
        zy = jax.vmap(jax.vmap(lambda a, b: mi(k, a, b, cfg_zy), (0, 0)), (0, None))(z, y)
      else:
        zy = jax.vmap(jax.vmap(lambda a, b: mi(k, a, b, cfg_zy), (0, 0)), (None, 0))(y, z)
      return xz, zy
    t_batch, (b_xz, b_zy) = time_call(batch, x, z, y, repeats=2)
    # The estimator's floor on the same inputs: y (here Z or the labels) shuffled.
    floor_xz = edge.shuffle_baseline(k, x[0], z[0, 0], cfg_xz, n=2)
    floor_zy = (edge.shuffle_baseline(k, z[0, 0], y[0], cfg_zy, n=2) if name == "default"
                else edge.shuffle_baseline(k, y[0], z[0, 0], cfg_zy, n=2))
    out[name] = dict(xz_s=t_xz, zy_s=t_zy, batch_s=t_batch,
                     i_xz_bits=float(v_xz), i_zy_bits=float(v_zy),
                     shuffled_xz_bits=float(floor_xz), shuffled_zy_bits=float(floor_zy),
                     batch_i_zy_bits=np.asarray(b_zy).round(4).tolist())
    print(f"{name:16s} I(X;Z) {t_xz * 1e3:8.1f} ms ({float(v_xz):.3f} bits, shuffled "
          f"{float(floor_xz):.3f})  I(Z;Y) {t_zy * 1e3:8.1f} ms ({float(v_zy):.3f} bits, shuffled "
          f"{float(floor_zy):.3f}, H(Y) = {math.log2(CLASSES):.3f})  "
          f"batch of {MODELS * DATASETS * 2}: {t_batch:.3f} s", flush=True)
  return out


def gaussian_pair(key, n, d, rho):
  """d independent pairs with correlation rho; I = -d/2 log2(1 - rho^2) bits."""
  kx, kn = jax.random.split(key)
  x = jax.random.normal(kx, (n, d))
  return x, rho * x + math.sqrt(1 - rho ** 2) * jax.random.normal(kn, (n, d))


def accuracy(seeds=1):
  """Error table of both modes on the correlated-Gaussian grid of the tests."""
  configs = {"reference_4.2.0": edge.EdgeConfig.reference("4.2.0"), "default": DEFAULT}
  rows = []
  print(f"{'N':>6} {'d':>3} {'rho':>4} {'true':>7} " + " ".join(f"{c:>16}" for c in configs))
  for n in (2_000, 25_000):
    for d in (1, 2, 10):
      for rho in (0.0, 0.5, 0.9):
        true = -d / 2 * math.log2(1 - rho ** 2)
        est = {c: [] for c in configs}
        for s in range(seeds):
          x, y = gaussian_pair(jax.random.key(1000 * d + int(10 * rho) + 7919 * s), n, d, rho)
          for c, cfg in configs.items():
            est[c].append(float(edge.mutual_information(jax.random.key(s), x, y, cfg)))
        rows.append(dict(n=n, d=d, rho=rho, true=true, **{c: float(np.mean(v)) for c, v in est.items()}))
        print(f"{n:6d} {d:3d} {rho:4.1f} {true:7.3f} " + " ".join(f"{rows[-1][c]:16.3f}" for c in configs),
              flush=True)
  mae = {c: float(np.mean([abs(r[c] - r["true"]) for r in rows])) for c in configs}
  low = {c: float(np.mean([abs(r[c] - r["true"]) for r in rows if r["d"] <= 2])) for c in configs}
  print("mean absolute error, all 18 cases:", {c: round(v, 3) for c, v in mae.items()})
  print("mean absolute error, d <= 2:      ", {c: round(v, 3) for c, v in low.items()})
  return dict(mae=mae, mae_d_le_2=low)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--accuracy", action="store_true", help="also print the Gaussian error tables")
  args = parser.parse_args()
  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}, N = {N}")
  record = dict(n=N, device=jax.devices()[0].device_kind, **speed())
  if args.accuracy:
    record["accuracy"] = accuracy()
  print(json.dumps(record))


if __name__ == "__main__":
  main()
