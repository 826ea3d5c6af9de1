"""Datasets as host numpy arrays, split across workers and stacked per worker.

Three sources give the same `Dataset` of uint8 images (N, H, W, C) and int32 labels:

* `load_digits`: scikit-learn's bundled 8x8 digits, upsampled to 32x32x1 so the
    LeNet built for 32x32 inputs runs on it. Needs no download: the offline default.
* `load_cifar_folder`: an existing `cifar-10-batches-py` folder (the official
    "python version" layout), read with a restricted unpickler.
* `load_tfds`: a dataset already prepared by tensorflow-datasets, read with
    `tfds.data_source` (no TensorFlow needed to read).

`partition` splits the training labels across K workers (iid, by class groups,
or Dirichlet), and `federate` cuts the shares to one length and stacks them as
`(K, n, ...)` arrays, the layout in which the training loop keeps them on device.
All randomness comes from `np.random.default_rng(seed)`; nothing seeds globally.

Example:
    >>> data = federate(load_digits(), num_workers=2, split="classes", seed=0)
    >>> data.train_x.shape[0], data.train_x.shape[2:], data.train_x.dtype
    (2, (32, 32, 1), dtype('uint8'))
"""

from __future__ import annotations

import codecs
import os
import pickle
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

DATASETS = ("digits", "cifar10")
SPLITS = ("iid", "classes", "dirichlet")


class DataError(ValueError):
    """Bad data input; message names the cause."""


class Dataset(NamedTuple):
    """A labelled train/test dataset on the host.

    Attributes:
        train_x: (N, H, W, C) uint8 images.
        train_y: (N,) int32 labels in [0, num_classes).
        test_x: (M, H, W, C) uint8 images.
        test_y: (M,) int32 labels.
        num_classes: number of classes.
        name: dataset name ("digits", "cifar10", ...).
    """

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int
    name: str


class FederatedData(NamedTuple):
    """Local training sets of K workers stacked on a leading axis, plus the test set.

    Attributes:
        train_x: (K, n, H, W, C) uint8; train_x[k] is worker k's local dataset.
        train_y: (K, n) int32.
        test_x: (M, H, W, C) uint8 (shared, not split).
        test_y: (M,) int32.
        num_classes: number of classes.
        dropped: training examples in no worker's stack: N - K * n (shares cut to the
            smallest one, and to `per_worker` if given).
    """

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int
    dropped: int


def load_dataset(
    name: str, *, cifar_dir: str | None = None, tfds_data_dir: str | None = None
) -> Dataset:
    """Loads a dataset by name (one of `DATASETS`).

    "digits" is the embedded offline default (`load_digits`; the directory
    arguments are ignored). "cifar10" reads `cifar_dir` (`load_cifar_folder`) if
    given, else the TFDS-prepared copy in `tfds_data_dir` (`load_tfds`).
    """
    if name == "digits":
        return load_digits()
    if name == "cifar10":
        if cifar_dir is not None:
            return load_cifar_folder(cifar_dir)
        return load_tfds("cifar10", data_dir=tfds_data_dir)
    raise DataError(f"unknown dataset {name!r}; expected one of {DATASETS}")


# ---------------------------------------------------------------------------
# Embedded digits.

# Fixed split of the 1,797 digits: a permutation from this seed, last 297 as the
# test set (1,500 train), so every run and every machine sees the same split.
_DIGITS_SPLIT_SEED = 0
_DIGITS_NUM_TEST = 297
_DIGITS_UPSAMPLE = 4  # 8x8 -> 32x32, the input size LeNet is built for.
_DIGITS_MAX_VALUE = 16  # sklearn digits pixels are counts 0..16.


def load_digits() -> Dataset:
    """scikit-learn's 8x8 digits as a 32x32x1 uint8 dataset (no download).

    Pixels 0..16 are scaled by 255/16 and rounded to uint8 0..255, then each
    pixel is repeated 4x4. Returns train (1500, 32, 32, 1) and test
    (297, 32, 32, 1) uint8 images, int32 labels, 10 classes.
    """
    from sklearn import datasets  # pylint: disable=g-import-not-at-top

    bunch = datasets.load_digits()
    small = np.rint(bunch.images * (255.0 / _DIGITS_MAX_VALUE)).astype(np.uint8)
    big = small.repeat(_DIGITS_UPSAMPLE, axis=1).repeat(_DIGITS_UPSAMPLE, axis=2)
    x = big[..., None]
    y = bunch.target.astype(np.int32)
    order = np.random.default_rng(_DIGITS_SPLIT_SEED).permutation(len(y))
    train, test = order[:-_DIGITS_NUM_TEST], order[-_DIGITS_NUM_TEST:]
    return Dataset(x[train], y[train], x[test], y[test], 10, "digits")


# ---------------------------------------------------------------------------
# cifar-10-batches-py folder.

_CIFAR_FOLDER = "cifar-10-batches-py"
_CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST_FILE = "test_batch"
_CIFAR_NUM_CLASSES = 10
_CIFAR_SHAPE_CHW = (3, 32, 32)  # b'data' rows are channel-major R, G, B planes.

# The only globals a CIFAR batch pickle needs: numpy array and dtype rebuilding
# (module path numpy.core under numpy 1, numpy._core under numpy 2; _frombuffer
# for protocol 5), and _codecs.encode, which protocol-2 pickles written by
# Python 3 use to rebuild bytes objects. The callables are taken from numpy
# itself so that no numpy.core import (deprecated in numpy 2) is needed.
_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]
_FROMBUFFER = np.ndarray.__reduce_ex__(np.zeros(1), 5)[0]
_PICKLE_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals in `_PICKLE_ALLOWED`.

    `pickle.load` would import and call anything a file names; a CIFAR batch
    file from elsewhere is untrusted input, so every other global is refused
    before it can be called.
    """

    def __init__(self, fh, filename: str):
        # encoding="bytes": the official files are Python 2 pickles whose str keys
        # and array buffers must come back as bytes.
        super().__init__(fh, encoding="bytes")
        self._filename = filename

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _PICKLE_ALLOWED[(module, name)]
        except KeyError:
            raise DataError(
                f"{self._filename}: refused to unpickle global {module}.{name}; a "
                "CIFAR batch file needs only numpy array globals (file is not a "
                "genuine CIFAR-10 batch, or is malicious)"
            ) from None


def _find_cifar_dir(path: str) -> str:
    """Returns the folder that holds the batch files: `path` or `path`/cifar-10-batches-py."""
    if not os.path.isdir(path):
        raise DataError(f"CIFAR-10 folder {path!r} does not exist or is not a folder")
    for candidate in (path, os.path.join(path, _CIFAR_FOLDER)):
        if os.path.isfile(os.path.join(candidate, _CIFAR_TEST_FILE)) or os.path.isfile(
            os.path.join(candidate, _CIFAR_TRAIN_FILES[0])
        ):
            return candidate
    raise DataError(
        f"{path!r} holds no CIFAR-10 batch files: expected {_CIFAR_TEST_FILE} and "
        f"data_batch_1..5 in it or in {os.path.join(path, _CIFAR_FOLDER)!r}"
    )


def _unpickle_batch(filename: str) -> Any:
    """Unpickles one batch file with the restricted unpickler; errors are DataError."""
    if not os.path.isfile(filename):
        raise DataError(f"CIFAR-10 batch file {filename!r} is missing")
    try:
        with open(filename, "rb") as fh:
            return _RestrictedUnpickler(fh, filename).load()
    except DataError:
        raise
    except Exception as e:  # pylint: disable=broad-except
        # Truncated or corrupt pickles fail in many ways (EOFError, UnpicklingError,
        # ValueError from numpy's setstate, ...); all mean the same to the user.
        raise DataError(f"{filename}: truncated or corrupt pickle ({type(e).__name__}: {e})") from e


def _read_cifar_batch(filename: str) -> tuple[np.ndarray, np.ndarray]:
    """Reads one batch file into (n, 32, 32, 3) uint8 images and (n,) int32 labels."""
    batch = _unpickle_batch(filename)
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataError(
            f"{filename}: not a CIFAR-10 batch (expected a dict with "
            f"b'data' and b'labels', got {type(batch).__name__})"
        )
    data, labels = batch[b"data"], batch[b"labels"]
    row = int(np.prod(_CIFAR_SHAPE_CHW))
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != row
    ):
        raise DataError(
            f"{filename}: b'data' must be a uint8 array of shape (n, {row}), "
            f"got {type(data).__name__} {getattr(data, 'dtype', '')} "
            f"{getattr(data, 'shape', '')}"
        )
    labels = np.asarray(labels)
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{filename}: b'labels' must be {len(data)} integers, got "
            f"dtype {labels.dtype} shape {labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= _CIFAR_NUM_CLASSES):
        raise DataError(
            f"{filename}: labels outside 0..{_CIFAR_NUM_CLASSES - 1} "
            f"(min {labels.min()}, max {labels.max()})"
        )
    images = data.reshape((len(data),) + _CIFAR_SHAPE_CHW).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int32)


def load_cifar_folder(path: str) -> Dataset:
    """Reads CIFAR-10 from the official python layout (`cifar-10-batches-py`).

    `path` is that folder or a folder containing it. Returns train (50000, 32,
    32, 3) and test (10000, 32, 32, 3) uint8 HWC images with int32 labels (for
    the official files; sizes follow the files). Raises DataError naming the file
    for a missing folder or file, a corrupt or truncated pickle, a pickle that
    names any global outside numpy array rebuilding, or a wrong structure.
    """
    folder = _find_cifar_dir(path)
    parts = [_read_cifar_batch(os.path.join(folder, f)) for f in _CIFAR_TRAIN_FILES]
    test_x, test_y = _read_cifar_batch(os.path.join(folder, _CIFAR_TEST_FILE))
    train_x = np.concatenate([x for x, _ in parts])
    train_y = np.concatenate([y for _, y in parts])
    return Dataset(train_x, train_y, test_x, test_y, _CIFAR_NUM_CLASSES, "cifar10")


# ---------------------------------------------------------------------------
# tensorflow-datasets.

_TFDS_CHUNK = 2048  # Records fetched per __getitems__ call.
_TFDS_HINT = (
    "Reading with tfds.data_source needs no TensorFlow, but preparing the "
    "dataset does: pip install 'fedjax_mi[tfds-build]', then "
    "tfds.builder('{name}', data_dir={data_dir!r}).download_and_prepare("
    "file_format='array_record') (random access needs array_record or parquet, "
    "not the default tfrecord). Or pass a cifar-10-batches-py folder "
    "(--cifar_dir)."
)


def load_tfds(name: str = "cifar10", data_dir: str | None = None) -> Dataset:
    """Reads a TFDS dataset that is already prepared, through `tfds.data_source`.

    Records must have "image" (H, W, C) uint8 and "label". Returns the "train" and
    "test" splits as uint8 image and int32 label arrays. Never downloads or
    prepares: if the dataset is not prepared (in a random-access format), raises
    DataError saying how to prepare it.
    """
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    try:
        sources = tfds.data_source(name, split=["train", "test"], data_dir=data_dir, download=False)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise DataError(f"TFDS has no dataset named {name!r}") from e
    except Exception as e:  # pylint: disable=broad-except
        raise DataError(
            f"TFDS dataset {name!r} is not readable in data_dir={data_dir!r} "
            f"(not prepared, or prepared as tfrecord): {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}. "
            + _TFDS_HINT.format(name=name, data_dir=data_dir)
        ) from e
    (train_x, train_y), (test_x, test_y) = (_read_source(s, name) for s in sources)
    return Dataset(train_x, train_y, test_x, test_y, _tfds_num_classes(sources[0], train_y), name)


def _tfds_num_classes(source: Any, labels: np.ndarray) -> int:
    """Class count from the dataset's label feature, else from the labels seen."""
    try:
        return int(source.dataset_info.features["label"].num_classes)
    except (AttributeError, KeyError, TypeError):
        return int(labels.max()) + 1 if labels.size else 0


def _read_source(source: Sequence[Any], name: str) -> tuple[np.ndarray, np.ndarray]:
    """Reads every record of a data source into (n, H, W, C) uint8 and (n,) int32."""
    n = len(source)
    if n == 0:
        raise DataError(f"TFDS dataset {name!r} has an empty split")
    get_many = _batch_getter(source)
    images, labels = [], []
    for start in range(0, n, _TFDS_CHUNK):
        for record in get_many(list(range(start, min(start + _TFDS_CHUNK, n)))):
            if "image" not in record or "label" not in record:
                raise DataError(
                    f"TFDS dataset {name!r}: records need 'image' and "
                    f"'label', got keys {sorted(record)}"
                )
            images.append(np.asarray(record["image"], dtype=np.uint8))
            labels.append(record["label"])
    return np.stack(images), np.asarray(labels, dtype=np.int32)


def _batch_getter(source: Any) -> Callable[[list[int]], Sequence[Any]]:
    """`source.__getitems__` (batched reads) if it works, else one `source[i]` at a time.

    tfds 4.9.10's `mock_data` installs `__getitems__` on the mock without binding
    it (TypeError on call), so the probe falls back to indexing there.
    """
    try:
        source.__getitems__([0])
        return source.__getitems__
    except (AttributeError, TypeError):
        return lambda keys: [source[i] for i in keys]


# ---------------------------------------------------------------------------
# Partitions.


def partition(
    seed: int,
    labels: np.ndarray,
    num_workers: int,
    split: str,
    *,
    num_classes: int,
    alpha: float | None = None,
) -> list[np.ndarray]:
    """Splits example indices across workers.

    Args:
        seed: seed of the `np.random.default_rng` that draws the split.
        labels: (N,) integer labels in [0, num_classes).
        num_workers: K >= 1.
        split: "iid" (random near-equal shares), "classes" (contiguous class
            groups, `np.array_split(arange(num_classes), K)`), or "dirichlet"
            (per-class proportions ~ Dirichlet(alpha * ones(K))).
        num_classes: number of classes.
        alpha: Dirichlet concentration; required for "dirichlet", else None.

    Returns:
        K disjoint int64 index arrays into `labels`, each non-empty.
    """
    return _partition(
        np.random.default_rng(seed),
        labels,
        num_workers,
        split,
        num_classes=num_classes,
        alpha=alpha,
    )


def _partition(
    rng: np.random.Generator,
    labels: np.ndarray,
    num_workers: int,
    split: str,
    *,
    num_classes: int,
    alpha: float | None,
) -> list[np.ndarray]:
    """`partition` drawing from a given generator (so `federate` can continue it)."""
    labels = _check_labels(labels, num_classes)
    _check_split_args(num_workers, split, alpha)
    if split == "iid":
        return partition_iid(rng, labels, num_workers)
    if split == "classes":
        return partition_classes(labels, num_workers, num_classes)
    return partition_dirichlet(rng, labels, num_workers, alpha, num_classes)


def _check_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"labels must be a 1-D integer array, got dtype {labels.dtype} shape {labels.shape}"
        )
    if num_classes < 1:
        raise DataError(f"num_classes must be >= 1, got {num_classes}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"labels must lie in 0..{num_classes - 1}, got min {labels.min()} max {labels.max()}"
        )
    return labels


def _check_split_args(num_workers: int, split: str, alpha: float | None) -> None:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {SPLITS}")
    if not isinstance(num_workers, (int, np.integer)) or num_workers < 1:
        raise DataError(f"num_workers must be an integer >= 1, got {num_workers!r}")
    if split == "dirichlet":
        if alpha is None:
            raise DataError("split 'dirichlet' needs alpha (> 0)")
        if not alpha > 0 or not np.isfinite(alpha):
            raise DataError(f"Dirichlet alpha must be a finite number > 0, got {alpha!r}")
    elif alpha is not None:
        raise DataError(
            f"alpha={alpha!r} given for split {split!r}; alpha applies only to 'dirichlet'"
        )


def _check_nonempty(shares: list[np.ndarray], why: str) -> list[np.ndarray]:
    empty = [k for k, s in enumerate(shares) if len(s) == 0]
    if empty:
        raise DataError(f"worker(s) {empty} would get an empty share: {why}")
    return shares


def partition_iid(
    rng: np.random.Generator, labels: np.ndarray, num_workers: int
) -> list[np.ndarray]:
    """Random shares of a permutation of range(N); sizes differ by at most one.

    >>> shares = partition_iid(np.random.default_rng(0), np.zeros(10, int), 3)
    >>> [len(s) for s in shares], sorted(np.concatenate(shares).tolist()) == list(range(10))
    ([4, 3, 3], True)
    """
    n = len(labels)
    shares = np.array_split(rng.permutation(n), num_workers)
    return _check_nonempty(shares, f"{num_workers} workers for {n} examples")


def partition_classes(labels: np.ndarray, num_workers: int, num_classes: int) -> list[np.ndarray]:
    """Worker k gets every example of the k-th contiguous class group.

    Groups are `np.array_split(arange(num_classes), K)`: for CIFAR-10 and K=2,
    worker 0 has classes 0-4 and worker 1 classes 5-9 (the paper's non-iid split).
    Shares are sorted indices.

    >>> labels = np.array([0, 3, 1, 2, 0, 3])
    >>> [s.tolist() for s in partition_classes(labels, 2, num_classes=4)]  # classes 0-1, 2-3
    [[0, 2, 4], [1, 3, 5]]
    """
    if num_workers > num_classes:
        raise DataError(
            f"split 'classes' with {num_workers} workers > {num_classes} "
            "classes would leave an empty class group"
        )
    groups = np.array_split(np.arange(num_classes), num_workers)
    shares = [np.flatnonzero(np.isin(labels, g)) for g in groups]
    return _check_nonempty(shares, f"no examples of its classes {[g.tolist() for g in groups]}")


def partition_dirichlet(
    rng: np.random.Generator, labels: np.ndarray, num_workers: int, alpha: float, num_classes: int
) -> list[np.ndarray]:
    """Per class, splits its shuffled examples by proportions ~ Dir(alpha * ones(K)).

    Large alpha gives near-equal per-class shares (close to iid); small alpha
    gives each class to few workers. Every example is assigned.
    """
    parts: list[list[np.ndarray]] = [[] for _ in range(num_workers)]
    for c in range(num_classes):
        idx = rng.permutation(np.flatnonzero(labels == c))
        p = rng.dirichlet(np.full(num_workers, float(alpha)))
        if not np.all(np.isfinite(p)):
            raise DataError(
                f"Dirichlet alpha={alpha!r} too small: proportions are not "
                "finite; use a larger alpha"
            )
        cuts = np.rint(np.cumsum(p)[:-1] * len(idx)).astype(np.int64)
        for k, piece in enumerate(np.split(idx, cuts)):
            parts[k].append(piece)
    shares = [np.sort(np.concatenate(p)) for p in parts]
    return _check_nonempty(
        shares,
        f"Dirichlet alpha={alpha!r} concentrated every class on other workers; use a larger alpha",
    )


# ---------------------------------------------------------------------------
# Stacking.


def federate(
    dataset: Dataset,
    num_workers: int,
    split: str,
    *,
    seed: int,
    alpha: float | None = None,
    per_worker: int | None = None,
) -> FederatedData:
    """Partitions the training set and stacks equal local datasets.

    Every share is cut to the smallest one's size n (or to `per_worker` if
    given) by a random subset in random order, drawn from the same generator
    that drew the partition, so the same seed gives the same `partition(seed,
    ...)` and the same stacks.

    Returns:
        FederatedData with train_x (K, n, H, W, C) uint8, train_y (K, n) int32, the
        unsplit test set, and `dropped` = N - K * n.
    """
    rng = np.random.default_rng(seed)
    shares = _partition(
        rng, dataset.train_y, num_workers, split, num_classes=dataset.num_classes, alpha=alpha
    )
    n = min(len(s) for s in shares)
    if per_worker is not None:
        if not isinstance(per_worker, (int, np.integer)) or not 1 <= per_worker <= n:
            raise DataError(
                f"per_worker must be an integer in 1..{n} (the smallest share), got {per_worker!r}"
            )
        n = int(per_worker)
    chosen = np.stack([rng.permutation(s)[:n] for s in shares])
    return FederatedData(
        train_x=dataset.train_x[chosen],
        train_y=dataset.train_y[chosen].astype(np.int32),
        test_x=dataset.test_x,
        test_y=dataset.test_y.astype(np.int32),
        num_classes=dataset.num_classes,
        dropped=int(len(dataset.train_y) - num_workers * n),
    )
