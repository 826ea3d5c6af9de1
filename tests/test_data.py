"""Tests for fedjax_mi.data: loaders, partitions, stacking, and bad inputs."""

import os
import pickle

import numpy as np
import pytest

from fedjax_mi import config, data, sweep
from helpers.shared import TINY

KS = (1, 2, 3, 5)


def _labels(n=1000, num_classes=10, seed=123):
    return np.random.default_rng(seed).integers(0, num_classes, n).astype(np.int32)


def _indexed_dataset(n=1000, num_classes=10, seed=123):
    """A Dataset whose image i encodes i in two pixels, so stacks can be traced back."""
    x = np.zeros((n, 2, 2, 1), np.uint8)
    x[:, 0, 0, 0] = np.arange(n) // 256
    x[:, 0, 1, 0] = np.arange(n) % 256
    y = _labels(n, num_classes, seed)
    return data.Dataset(x, y, x[:7], y[:7], num_classes, "indexed")


def _decode(x):
    return x[..., 0, 0, 0].astype(np.int64) * 256 + x[..., 0, 1, 0]


# --------------------------------------------------------------------------- partitions


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("split,alpha", [("iid", None), ("classes", None), ("dirichlet", 0.5)])
def test_partition_disjoint_and_complete(split, alpha, k):
    labels = _labels()
    shares = data.partition(0, labels, k, split, num_classes=10, alpha=alpha)
    assert len(shares) == k
    joined = np.concatenate(shares)
    # Every split assigns every example exactly once.
    np.testing.assert_array_equal(np.sort(joined), np.arange(len(labels)))
    assert all(len(s) > 0 for s in shares)


@pytest.mark.parametrize("k", KS)
def test_iid_sizes(k):
    sizes = [len(s) for s in data.partition(0, _labels(), k, "iid", num_classes=10)]
    assert set(sizes) <= {1000 // k, -(-1000 // k)}


@pytest.mark.parametrize(
    "k,groups",
    [
        (1, [range(10)]),
        (2, [range(0, 5), range(5, 10)]),
        (3, [range(0, 4), range(4, 7), range(7, 10)]),
        (5, [range(0, 2), range(2, 4), range(4, 6), range(6, 8), range(8, 10)]),
    ],
)
def test_class_groups(k, groups):
    labels = _labels()
    shares = data.partition(0, labels, k, "classes", num_classes=10)
    for share, group in zip(shares, groups):
        assert set(labels[share].tolist()) == set(group)
        assert len(share) == np.isin(labels, list(group)).sum()


@pytest.mark.parametrize("alpha", [0.1, 1.0, 100.0])
def test_dirichlet_concentration_matches_expectation(alpha):
    # Per class, the worker fractions p ~ Dir(alpha * 1_K) give an exact
    # E[sum_k p_k^2] = (alpha + 1) / (K alpha + 1). 200 classes x 500 examples;
    # tolerance 5 standard errors of the mean over classes, plus 0.01 for
    # rounding counts to whole examples.
    k, num_classes, per_class = 5, 200, 500
    labels = np.repeat(np.arange(num_classes), per_class)
    shares = data.partition(7, labels, k, "dirichlet", num_classes=num_classes, alpha=alpha)
    counts = np.stack([np.bincount(labels[s], minlength=num_classes) for s in shares], 1)
    frac = counts / per_class
    simpson = (frac**2).sum(1)
    expected = (alpha + 1) / (k * alpha + 1)
    se = simpson.std() / np.sqrt(num_classes)
    assert abs(simpson.mean() - expected) < 5 * se + 0.01, (simpson.mean(), expected)


def test_dirichlet_large_alpha_near_equal():
    labels = np.repeat(np.arange(10), 1000)
    shares = data.partition(0, labels, 4, "dirichlet", num_classes=10, alpha=1e4)
    counts = np.stack([np.bincount(labels[s], minlength=10) for s in shares])
    # Dir(1e4 * 1_4) has per-coordinate std ~0.002: shares within 2% of 1/4.
    assert np.abs(counts / 1000 - 0.25).max() < 0.02


@pytest.mark.parametrize("split,alpha", [("iid", None), ("dirichlet", 0.3)])
def test_partition_seeded(split, alpha):
    labels = _labels()
    a = data.partition(3, labels, 3, split, num_classes=10, alpha=alpha)
    b = data.partition(3, labels, 3, split, num_classes=10, alpha=alpha)
    c = data.partition(4, labels, 3, split, num_classes=10, alpha=alpha)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_partition_functions_take_explicit_rng():
    labels = _labels()
    a = data.partition_iid(np.random.default_rng(1), labels, 2)
    b = data.partition_iid(np.random.default_rng(1), labels, 2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    d = data.partition_dirichlet(np.random.default_rng(1), labels, 2, 1.0, 10)
    assert sum(map(len, d)) == len(labels)


# --------------------------------------------------------------------------- federate


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("split,alpha", [("iid", None), ("classes", None), ("dirichlet", 1.0)])
def test_federate_shapes_and_dropped(split, alpha, k):
    ds = _indexed_dataset()
    fed = data.federate(ds, k, split, seed=0, alpha=alpha)
    shares = data.partition(0, ds.train_y, k, split, num_classes=10, alpha=alpha)
    n = min(map(len, shares))
    assert fed.train_x.shape == (k, n, 2, 2, 1) and fed.train_x.dtype == np.uint8
    assert fed.train_y.shape == (k, n) and fed.train_y.dtype == np.int32
    assert fed.dropped == len(ds.train_y) - k * n
    assert fed.num_classes == 10 and fed.test_x is ds.test_x
    idx = _decode(fed.train_x)
    # Each stacked row is a subset of the same seed's partition, labels follow images.
    for row, share in zip(idx, shares):
        assert set(row.tolist()) <= set(share.tolist())
    assert len(np.unique(idx)) == idx.size
    np.testing.assert_array_equal(fed.train_y, ds.train_y[idx])


def test_federate_iid_uneven_and_per_worker():
    ds = _indexed_dataset(n=1000)
    fed = data.federate(ds, 3, "iid", seed=0)  # shares 334, 333, 333
    assert fed.train_x.shape[1] == 333 and fed.dropped == 1
    fed = data.federate(ds, 3, "iid", seed=0, per_worker=100)
    assert fed.train_x.shape[:2] == (3, 100) and fed.dropped == 700


def test_federate_random_order_and_deterministic():
    ds = _indexed_dataset()
    a = data.federate(ds, 2, "classes", seed=5)
    b = data.federate(ds, 2, "classes", seed=5)
    c = data.federate(ds, 2, "classes", seed=6)
    np.testing.assert_array_equal(a.train_x, b.train_x)
    assert not np.array_equal(a.train_x, c.train_x)
    idx = _decode(a.train_x[0])
    assert not np.all(np.diff(idx) > 0)  # shuffled, not in index order


def test_federate_digits_paper_split():
    fed = data.federate(data.load_digits(), 2, "classes", seed=0)
    assert set(fed.train_y[0].tolist()) == set(range(5))
    assert set(fed.train_y[1].tolist()) == set(range(5, 10))
    assert fed.train_x.shape[2:] == (32, 32, 1)


# --------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(num_workers=2, split="bogus"), "unknown split 'bogus'"),
        (dict(num_workers=0, split="iid"), "num_workers must be an integer >= 1, got 0"),
        (dict(num_workers=-1, split="classes"), "got -1"),
        (dict(num_workers=2.0, split="iid"), "got 2.0"),
        (dict(num_workers=11, split="classes"), "empty class group"),
        (dict(num_workers=2000, split="iid"), "empty share"),
        (dict(num_workers=2, split="dirichlet"), "needs alpha"),
        (dict(num_workers=2, split="dirichlet", alpha=0.0), "alpha must be .* > 0, got 0.0"),
        (dict(num_workers=2, split="dirichlet", alpha=-1.0), "got -1.0"),
        (dict(num_workers=2, split="dirichlet", alpha=float("nan")), "got nan"),
        (dict(num_workers=2, split="iid", alpha=1.0), "alpha=1.0 given for split 'iid'"),
        (dict(num_workers=2, split="classes", alpha=1.0), "only to 'dirichlet'"),
        (dict(num_workers=20, split="dirichlet", alpha=1e-4), "larger alpha"),
    ],
)
def test_partition_errors(kwargs, match):
    with pytest.raises(data.DataError, match=match):
        data.partition(0, _labels(), num_classes=10, **kwargs)


@pytest.mark.parametrize(
    "labels,match",
    [
        (np.zeros((4, 2), np.int32), "1-D integer"),
        (np.zeros(4, np.float32), "1-D integer"),
        (np.array([0, 1, 10]), r"0\.\.9, got min 0 max 10"),
        (np.array([-1, 1]), "got min -1"),
    ],
)
def test_partition_bad_labels(labels, match):
    with pytest.raises(data.DataError, match=match):
        data.partition(0, labels, 2, "iid", num_classes=10)


@pytest.mark.parametrize("per_worker", [0, -3, 501, 2.5])
def test_federate_bad_per_worker(per_worker):
    with pytest.raises(data.DataError, match=r"per_worker must be an integer in 1\.\."):
        data.federate(_indexed_dataset(), 2, "iid", seed=0, per_worker=per_worker)


def test_unknown_dataset():
    with pytest.raises(data.DataError, match="unknown dataset 'mnist'"):
        data.load_dataset("mnist")


def test_data_error_is_value_error():
    assert issubclass(data.DataError, ValueError)


# --------------------------------------------------------------------------- digits


def test_digits():
    from sklearn import datasets

    ds = data.load_dataset("digits")
    assert ds.name == "digits" and ds.num_classes == 10
    assert ds.train_x.shape == (1500, 32, 32, 1) and ds.test_x.shape == (297, 32, 32, 1)
    assert ds.train_x.dtype == ds.test_x.dtype == np.uint8
    assert ds.train_y.dtype == ds.test_y.dtype == np.int32
    x = np.concatenate([ds.train_x, ds.test_x])[..., 0]
    y = np.concatenate([ds.train_y, ds.test_y])
    assert x.min() == 0 and x.max() == 255
    # Every 4x4 block repeats one pixel.
    small = x[:, ::4, ::4]
    np.testing.assert_array_equal(x, small.repeat(4, 1).repeat(4, 2))
    # Train + test is exactly the source, each pixel v in 0..16 mapped to round(v * 255 / 16).
    src = datasets.load_digits()
    expected = np.rint(src.images * 255 / 16).astype(np.uint8)

    def key(imgs, labels):
        return sorted(zip(map(bytes, imgs.reshape(len(imgs), -1)), labels.tolist()))

    assert key(small, y) == key(expected, src.target)
    np.testing.assert_array_equal(data.load_digits().test_y, ds.test_y)  # fixed split


# --------------------------------------------------------------------------- CIFAR folder


def _write_batch(path, x, y, protocol):
    """Writes one batch as make_cifar10_batches.py and the official files do."""
    flat = x.transpose(0, 3, 1, 2).reshape(len(x), 3072)
    with open(path, "wb") as fh:
        pickle.dump(
            {
                b"batch_label": b"test",
                b"labels": list(map(int, y)),
                b"data": flat,
                b"filenames": [b"f"] * len(x),
            },
            fh,
            protocol=protocol,
        )


def _write_folder(root, protocol=4, n=3, seed=0):
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder)
    xs, ys = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        y = rng.integers(0, 10, n)
        _write_batch(os.path.join(folder, name), x, y, protocol)
        xs.append(x)
        ys.append(y)
    return folder, np.concatenate(xs[:5]), np.concatenate(ys[:5]), xs[5], ys[5]


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("inner", [True, False])
def test_cifar_folder_roundtrip(tmp_path, protocol, inner):
    folder, tx, ty, vx, vy = _write_folder(str(tmp_path), protocol)
    ds = data.load_dataset("cifar10", cifar_dir=folder if inner else str(tmp_path))
    np.testing.assert_array_equal(ds.train_x, tx)
    np.testing.assert_array_equal(ds.train_y, ty)
    np.testing.assert_array_equal(ds.test_x, vx)
    np.testing.assert_array_equal(ds.test_y, vy)
    assert ds.train_x.dtype == np.uint8 and ds.train_y.dtype == np.int32
    assert ds.num_classes == 10 and ds.name == "cifar10"


def test_cifar_channel_order(tmp_path):
    # Official rows are R plane, G plane, B plane: pixel (0, 1) red is byte 1,
    # green byte 1024 + 1, blue byte 2048 + 1.
    folder, *_ = _write_folder(str(tmp_path))
    row = np.zeros((1, 3072), np.uint8)
    row[0, [1, 1025, 2049]] = [10, 20, 30]
    with open(os.path.join(folder, "test_batch"), "wb") as fh:
        pickle.dump({b"data": row, b"labels": [3]}, fh, protocol=2)
    ds = data.load_cifar_folder(folder)
    np.testing.assert_array_equal(ds.test_x[0, 0, 1], [10, 20, 30])


def test_cifar_numpy1_global_name(tmp_path):
    # Files written under numpy 1 (like the official ones) name numpy.core.multiarray.
    folder, _, _, vx, _ = _write_folder(str(tmp_path), protocol=2)
    path = os.path.join(folder, "test_batch")
    raw = open(path, "rb").read()
    assert b"numpy._core.multiarray" in raw
    open(path, "wb").write(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    np.testing.assert_array_equal(data.load_cifar_folder(folder).test_x, vx)


class _Evil:
    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return (self.fn, (self.arg,))


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("where", ["top", "labels"])
# Protocol 2 names builtins as __builtin__ (Python 2 compatible names).
@pytest.mark.parametrize(
    "fn,refused", [(os.system, "system"), (exec, r"(__builtin__|builtins)\.exec")]
)
def test_cifar_malicious_pickle_refused(tmp_path, monkeypatch, protocol, where, fn, refused):
    folder, *_ = _write_folder(str(tmp_path))
    sentinel = tmp_path / "SENTINEL"
    monkeypatch.chdir(tmp_path)
    arg = "touch SENTINEL" if fn is os.system else "open('SENTINEL', 'w').close()"
    evil = _Evil(fn, arg)
    payload = evil if where == "top" else {b"data": np.zeros((1, 3072), np.uint8), b"labels": evil}
    path = os.path.join(folder, "data_batch_2")
    with open(path, "wb") as fh:
        pickle.dump(payload, fh, protocol=protocol)
    with pytest.raises(data.DataError, match=f"data_batch_2: refused .*{refused}"):
        data.load_cifar_folder(folder)
    assert not sentinel.exists()
    # Control: the payload is live, a plain pickle.load runs it.
    with open(path, "rb") as fh:
        pickle.load(fh)
    assert sentinel.exists()


class _Call:
    """Pickles as the call fn(*args)."""

    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


# numpy's test helper that exec()s a string (a private module: skipped where absent).
_RUNSTRING = getattr(__import__("numpy.testing._private.utils", fromlist=["_"]), "runstring", None)


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize(
    "fn,args,made",
    [
        # numpy functions that write a file or run a string as code: a global is
        # not safe because it comes from numpy; only the array-rebuilding ones are.
        (np.save, ("SENTINEL", 0), "SENTINEL.npy"),
        pytest.param(
            _RUNSTRING,
            ("open('SENTINEL', 'w').close()", {}),
            "SENTINEL",
            marks=pytest.mark.skipif(_RUNSTRING is None, reason="no numpy runstring"),
        ),
    ],
)
def test_cifar_other_numpy_globals_refused(tmp_path, monkeypatch, protocol, fn, args, made):
    folder, *_ = _write_folder(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    path = os.path.join(folder, "data_batch_3")
    with open(path, "wb") as fh:
        pickle.dump(
            {b"data": np.zeros((1, 3072), np.uint8), b"labels": _Call(fn, args)},
            fh,
            protocol=protocol,
        )
    with pytest.raises(data.DataError, match=f"data_batch_3: refused .*numpy.*{fn.__name__}"):
        data.load_cifar_folder(folder)
    assert not (tmp_path / made).exists()
    # Control: the payload is live, a plain pickle.load runs it.
    with open(path, "rb") as fh:
        pickle.load(fh)
    assert (tmp_path / made).exists()


def test_cifar_truncated(tmp_path):
    folder, *_ = _write_folder(str(tmp_path))
    path = os.path.join(folder, "data_batch_4")
    raw = open(path, "rb").read()
    open(path, "wb").write(raw[: len(raw) // 2])
    with pytest.raises(data.DataError, match="data_batch_4: truncated or corrupt"):
        data.load_cifar_folder(folder)


def test_cifar_garbage(tmp_path):
    folder, *_ = _write_folder(str(tmp_path))
    open(os.path.join(folder, "test_batch"), "wb").write(b"not a pickle at all")
    with pytest.raises(data.DataError, match="test_batch: truncated or corrupt"):
        data.load_cifar_folder(folder)


def test_cifar_missing_file(tmp_path):
    folder, *_ = _write_folder(str(tmp_path))
    os.remove(os.path.join(folder, "data_batch_3"))
    with pytest.raises(data.DataError, match="data_batch_3.* is missing"):
        data.load_cifar_folder(folder)


def test_cifar_missing_folder(tmp_path):
    with pytest.raises(data.DataError, match="does not exist"):
        data.load_cifar_folder(str(tmp_path / "nope"))
    with pytest.raises(data.DataError, match="holds no CIFAR-10 batch files"):
        data.load_cifar_folder(str(tmp_path))


@pytest.mark.parametrize(
    "payload,match",
    [
        ([1, 2], "not a CIFAR-10 batch .*got list"),
        ({b"data": np.zeros((2, 3072), np.uint8)}, "not a CIFAR-10 batch"),
        ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "uint8 array"),
        ({b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]}, r"shape \(n, 3072\)"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "must be 2 integers"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0.5, 1.0]}, "must be 2 integers"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, r"outside 0\.\.9"),
    ],
)
def test_cifar_bad_structure(tmp_path, payload, match):
    folder, *_ = _write_folder(str(tmp_path))
    with open(os.path.join(folder, "data_batch_5"), "wb") as fh:
        pickle.dump(payload, fh, protocol=4)
    with pytest.raises(data.DataError, match="data_batch_5: .*" + match):
        data.load_cifar_folder(folder)


# --------------------------------------------------------------------------- TFDS


def test_tfds_mock(monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    monkeypatch.setattr(data, "_TFDS_CHUNK", 5)  # several chunks, a ragged last one
    with tfds.testing.mock_data(num_examples=12):
        ds = data.load_dataset("cifar10")
        again = data.load_tfds("cifar10")
    assert ds.train_x.shape == (12, 32, 32, 3) and ds.test_x.shape == (12, 32, 32, 3)
    assert ds.train_x.dtype == np.uint8 and ds.train_y.dtype == np.int32
    assert ds.num_classes == 10 and ds.name == "cifar10"
    assert ds.train_y.min() >= 0 and ds.train_y.max() < 10
    np.testing.assert_array_equal(ds.train_x, again.train_x)  # mock records are seeded
    fed = data.federate(ds, 2, "iid", seed=0)
    assert fed.train_x.shape == (2, 6, 32, 32, 3)


def test_tfds_batch_getter_prefers_getitems():
    class Source(list):
        calls = 0

        def __getitems__(self, keys):
            Source.calls += 1
            return [self[i] for i in keys]

    rec = {"image": np.ones((2, 2, 1), np.uint8), "label": 3}
    x, y = data._read_source(Source([rec] * 5), "fake")
    assert x.shape == (5, 2, 2, 1) and y.tolist() == [3] * 5
    assert Source.calls == 2  # the probe and one chunk


def test_tfds_not_prepared(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(data.DataError, match=r"not readable.*tfds-build.*cifar_dir"):
        data.load_dataset("cifar10", tfds_data_dir=str(tmp_path))


def test_tfds_unknown_name(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(data.DataError, match="no dataset named 'no_such_dataset_xyz'"):
        data.load_tfds("no_such_dataset_xyz", data_dir=str(tmp_path))


def test_bad_data_inputs_are_named(tmp_path):
    from fedjax_mi import data as data_lib

    bad = tmp_path / "cifar-10-batches-py"
    bad.mkdir()
    for name in [
        "data_batch_1",
        "data_batch_2",
        "data_batch_3",
        "data_batch_4",
        "data_batch_5",
        "test_batch",
    ]:
        (bad / name).write_bytes(b"\x80\x04garbage")
    for overrides, pattern in [
        (dict(split="classes", workers=11), "empty class group"),
        (dict(dataset="cifar10", cifar_dir="/nonexistent"), "/nonexistent"),
        (dict(dataset="cifar10", cifar_dir=str(tmp_path)), "data_batch_1"),
    ]:
        cfg = config.make(**{**TINY, **overrides, "out": str(tmp_path / "o")})
        with pytest.raises(data_lib.DataError, match=pattern):
            sweep.run(cfg, log=lambda line: None)
