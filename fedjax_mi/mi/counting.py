"""Sort and hash primitives of the EDGE estimators (docs/estimators.md, "EDGE").

Integer bucket vectors become 32-bit keys (a murmur3-style mixer; 1-D codes
are their own keys); bucket sizes come from one integer sort and a running
count. XLA:CPU sorts plain integer arrays several times faster than
key/value pairs or floats, which is why floats are sorted through an
order-preserving integer map and permutations are drawn by one integer sort.
Everything takes and returns arrays of static shape, so it vmaps.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax


def sort_floats(v: jax.Array) -> jax.Array:
    """Sorts float columns along the last axis through an order-preserving int map.

    XLA:CPU sorts plain integers several times faster than floats; the map is
    exact for finite values, so the result equals jnp.sort(v).
    """
    ibits = {jnp.dtype(jnp.float32): jnp.int32, jnp.dtype(jnp.float64): jnp.int64}[v.dtype]
    nbits = jnp.iinfo(ibits).bits
    i = lax.bitcast_convert_type(v, ibits)
    flip = lambda a: a ^ ((a >> (nbits - 1)) & jnp.asarray(jnp.iinfo(ibits).max, ibits))
    return lax.bitcast_convert_type(flip(jnp.sort(flip(i), axis=-1)), v.dtype)


def kth_neighbour_distance(column: jax.Array, queries: jax.Array, k: int) -> jax.Array:
    """Distance from each query to its k-th nearest value of a 1-D column.

    column: (N,), queries: (Q,) values taken from the column (each counts as
    its own first neighbour). The k nearest values form a window s[l:l+k] of
    the sorted column; the radius max(q - s[l], s[l+k-1] - q) is unimodal in l
    and minimal where s[l] + s[l+k-1] crosses 2q, found by a binary search.
    Returns (Q,).
    """
    s = sort_floats(column)
    lo, hi = s[: s.shape[0] - k + 1], s[k - 1 :]
    pos = jnp.searchsorted(lo + hi, 2.0 * queries)

    def radius(l):
        l = jnp.clip(l, 0, lo.shape[0] - 1)
        return jnp.maximum(queries - lo[l], hi[l] - queries)

    return jnp.minimum(jnp.minimum(radius(pos - 1), radius(pos)), radius(pos + 1))


def mix32(h: jax.Array) -> jax.Array:
    """murmur3's 32-bit finaliser: a bijective avalanche mix of uint32 values."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def bucket_keys(codes: jax.Array) -> jax.Array:
    """(..., N, k) int32 bucket vectors -> (..., N) uint32 keys (exact if k == 1)."""
    u = lax.bitcast_convert_type(codes, jnp.uint32)
    if codes.shape[-1] == 1:
        return u[..., 0]
    h = jnp.full(codes.shape[:-1], 0x9747B28C, jnp.uint32)
    for c in range(codes.shape[-1]):  # Static, k <= ~14 columns.
        h = mix32(mix32(h ^ u[..., c]) + jnp.uint32(0x9E3779B9 * (c + 1) & 0xFFFFFFFF))
    return h


def joint_keys(kx: jax.Array, ky: jax.Array) -> jax.Array:
    return mix32(mix32(kx + jnp.uint32(0x27D4EB2F)) ^ (ky * jnp.uint32(0x165667B1)))


def bucket_sizes(keys: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-sample bucket sizes and the number of occupied buckets.

    keys: (N,) uint32. Returns (N,) int32 counts and an int32 scalar.
    """
    n = keys.shape[0]
    s = jnp.sort(keys)
    last = jnp.append(s[1:] != s[:-1], True)  # position i ends a run of equal keys
    run_end = lax.cummin(jnp.where(last, jnp.arange(1, n + 1), n), reverse=True)
    first = jnp.searchsorted(s, keys, side="left")
    occupied = jnp.sum(last)
    return (run_end[first] - first).astype(jnp.int32), occupied.astype(jnp.int32)


# Joint keys rank_a * N + rank_b must fit in int32.
MAX_EXACT_JOINT_N = 46_340


def dense_ranks(keys: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Bucket of each sample as a dense rank among the distinct keys.

    keys: (N,) uint32. Returns the (N,) int32 ranks in [0, K), the (N,) int32
    bucket sizes by rank (zero past K) and K.
    """
    n = keys.shape[0]
    s = jnp.sort(keys)
    new = jnp.concatenate([jnp.ones(1, bool), s[1:] != s[:-1]])
    dense = jnp.cumsum(new, dtype=jnp.int32) - 1  # rank at each sorted position
    ranks = dense[jnp.searchsorted(s, keys)]
    return ranks, jnp.bincount(dense, length=n).astype(jnp.int32), jnp.sum(new, dtype=jnp.int32)


def joint_counts(ra: jax.Array, rb: jax.Array, size_a: jax.Array, size_b: jax.Array):
    """(N_ab, N_a, M_b) of every sample, listed in joint-bucket order, and K_ab.

    ra, rb: (N,) dense ranks of the two sides (paired by position); size_a,
    size_b: bucket sizes by rank. The joint key ra * N + rb is exact; one
    integer sort groups the joint buckets, and its digits give back the ranks
    of both sides, so nothing is mapped back to sample positions.
    """
    n = ra.shape[0]
    s = jnp.sort(ra * n + rb)
    new = jnp.concatenate([jnp.ones(1, bool), s[1:] != s[:-1]])
    segment = jnp.cumsum(new, dtype=jnp.int32) - 1
    nab = jnp.bincount(segment, length=n).astype(jnp.int32)[segment]
    return nab, size_a[s // n], size_b[s % n], jnp.sum(new, dtype=jnp.int32)


def sum_log_sizes(keys: jax.Array) -> jax.Array:
    """Sum over samples of log2(size of the sample's bucket), float32 scalar.

    keys: (N,) uint32 bucket keys. Equals sum over buckets of c log2 c, so one
    integer sort, a running count and a bincount suffice: nothing is mapped
    back to samples.
    """
    n = keys.shape[0]
    s = jnp.sort(keys)
    new = jnp.concatenate([jnp.ones(1, bool), s[1:] != s[:-1]])
    sizes = jnp.bincount(jnp.cumsum(new, dtype=jnp.int32) - 1, length=n).astype(jnp.float32)
    return jnp.sum(sizes * jnp.log2(jnp.maximum(sizes, 1.0)))


def grid_counts(hx: jax.Array, hy: jax.Array, perm: jax.Array | None = None):
    """Per-sample (N_ab, N_a, M_b) for bucket keys hx, hy: (N,) uint32 each.

    Also the numbers of occupied buckets (K_a, K_b, K_ab), and with `perm` the
    counts of the pairing (hx, hy[perm]) as a second (N_ab, N_a, M_b).
    Samples are listed in an order of the counts' choosing (sums over samples
    only). Exact for N <= 46,340; beyond, joint buckets are 32-bit hashes.
    """
    n = hx.shape[0]
    if n > MAX_EXACT_JOINT_N:
        joints = [joint_keys(hx, hy)] + ([] if perm is None else [joint_keys(hx, hy[perm])])
        counts, occupied = jax.vmap(bucket_sizes)(jnp.stack([hx, hy] + joints))
        na, mb = counts[0], counts[1]
        out = [(counts[2], na, mb)] + ([] if perm is None else [(counts[3], na, mb[perm])])
        return out, (occupied[0], occupied[1], occupied[2])
    (rx, ry), (size_x, size_y), (ka, kb) = jax.vmap(dense_ranks)(jnp.stack([hx, hy]))
    pairings = jnp.stack([ry] if perm is None else [ry, ry[perm]])
    nab, na, mb, kab = jax.vmap(joint_counts, in_axes=(None, 0, None, None))(
        rx, pairings, size_x, size_y
    )
    out = [(nab[i], na[i], mb[i]) for i in range(pairings.shape[0])]
    return out, (ka, kb, kab[0])


class LabelClasses(NamedTuple):
    """The distinct values of a 1-D labels coordinate, found once per call.

    sorted_column: `sorted_column` of the coordinate; of_sample: (N,) int32
    index of each sample's value among the distinct values (ascending);
    first: (N,) int32 sorted position where each distinct value begins
    (padded); bits: uint32 scalar, bits that hold any value index.
    """

    sorted_column: tuple[jax.Array, jax.Array]
    of_sample: jax.Array
    first: jax.Array
    bits: jax.Array


def label_classes(sorted_column: tuple[jax.Array, jax.Array]) -> LabelClasses:
    s, pos = sorted_column
    n = s.shape[0]
    new = jnp.concatenate([jnp.ones(1, bool), s[1:] != s[:-1]])
    run = jnp.cumsum(new, dtype=jnp.int32) - 1
    first = jnp.nonzero(new, size=n, fill_value=n - 1)[0].astype(jnp.int32)
    bits = (32 - lax.clz(run[-1].astype(jnp.uint32))).astype(jnp.uint32)
    return LabelClasses(sorted_column, run[pos], first, bits)


def labelled_grid_counts(codes: jax.Array, classes: LabelClasses, shift, width):
    """(N_ab, N_a, M_b) of every sample from ONE sort, for a labels side.

    codes: (N, k') int32 bucket codes of the other side; `classes` the labels
    coordinate's distinct values, `shift` and `width` (1,) its grid. Each
    sample becomes the uint32 word (t << b) | c: c its value index (b bits),
    t its bucket of the other side, exact (a mixed-radix number over each
    coordinate's span of codes) when the spans fit in 32 - b bits, else the
    bucket's 32-bit hash shifted right by b, which merges distinct buckets
    whose hashes agree in their top 32 - b bits (about K^2 2^b / 2^33 pairs per
    grid for K occupied buckets). Sorted words group the other side's buckets
    (top bits), and within them the label values in ascending order, hence
    the label buckets (the floor is monotone). Samples come in sorted order.
    The per-sample words hold no per-grid gather: a gathered operand keeps
    XLA:CPU from vectorising the hash (measured 2x slower per grid).
    """
    n = codes.shape[0]
    b = classes.bits
    low = jnp.min(codes, axis=0)
    span = jnp.max(codes, axis=0) - low + 1
    fits = jnp.sum(jnp.log2(span.astype(jnp.float32))) <= (32 - b).astype(jnp.float32) - 0.01
    radix = jnp.cumprod(jnp.concatenate([jnp.ones(1, jnp.uint32), span[:-1].astype(jnp.uint32)]))
    exact = jnp.sum((codes - low).astype(jnp.uint32) * radix, axis=1, dtype=jnp.uint32)
    t = jnp.where(fits, exact, bucket_keys(codes) >> b)
    words = jnp.sort((t << b) | classes.of_sample.astype(jnp.uint32))
    # Label bucket of every value index, and the bucket sizes (docs/estimators.md, EDGE step 3).
    ranks, sizes, _ = side_ranks(None, shift, width, classes.sorted_column, sorted_order=True)
    label = ranks[classes.first][(words & ((jnp.uint32(1) << b) - 1)).astype(jnp.int32)]
    first = jnp.ones(1, bool)

    def run_sizes(new):
        run = jnp.cumsum(jnp.concatenate([first, new]), dtype=jnp.int32) - 1
        return jnp.bincount(run, length=n).astype(jnp.int32)[run]

    new_other = (words[1:] >> b) != (words[:-1] >> b)
    nab = run_sizes(new_other | (label[1:] != label[:-1]))
    return nab, run_sizes(new_other), sizes[label]


def bucket_codes(p: jax.Array, shift: jax.Array, width: jax.Array) -> jax.Array:
    """floor((p + shift) / width) as int32 (docs/estimators.md, EDGE step 3), saturating."""
    z = jnp.floor((p + shift) / width)
    bound = 2.0**30  # Codes beyond it only arise for widths ~1e-9 of the data.
    return jnp.clip(z, -bound, bound).astype(jnp.int32)


def log_ratio(nab, na, mb, n: int, dtype) -> jax.Array:
    """log2(N N_ab / (N_a M_b)) per sample, from (N,) integer counts.

    Products of counts in floating point (no integer overflow); a constant
    side (N_ab = N_a and M_b = N, or N_a = N and N_ab = M_b) makes numerator
    and denominator the same product, so the ratio is exactly 1 and the term
    exactly 0 whatever XLA's log2.
    """
    f = lambda c: jnp.asarray(c, dtype)
    return jnp.log2((f(nab) * f(n)) / (f(na) * f(mb)))


def sorted_column(p: jax.Array) -> tuple[jax.Array, jax.Array]:
    """A 1-D hash coordinate p (N, 1) sorted, and each sample's position in it."""
    s = sort_floats(p[:, 0])
    return s, jnp.searchsorted(s, p[:, 0])


def side_ranks(p, shift, width, sorted_column=None, sorted_order=False):
    """Dense bucket ranks (N,), bucket sizes by rank (N,) and K of one side.

    With `sorted_column` (from `sorted_column`, for a 1-D coordinate shared by
    every grid): floor((p + b) / w) is nondecreasing in p, so in sorted order
    equal buckets are neighbours and a running count ranks them; no sort or
    search per grid (saves ~1.3 ms per grid at N = 25,000). `sorted_order`:
    the ranks of the sorted positions, not of the samples (p unused).
    """
    if sorted_column is None:
        return dense_ranks(bucket_keys(bucket_codes(p, shift, width)))
    s, pos = sorted_column
    codes = bucket_codes(s[:, None], shift, width)[:, 0]
    new = jnp.concatenate([jnp.ones(1, bool), codes[1:] != codes[:-1]])
    dense = jnp.cumsum(new, dtype=jnp.int32) - 1
    n = s.shape[0]
    sizes = jnp.bincount(dense, length=n).astype(jnp.int32)
    return (dense if sorted_order else dense[pos]), sizes, dense[-1] + 1


def random_permutation(key: jax.Array, n: int) -> jax.Array:
    """A random permutation of range(n) from one single-operand integer sort.

    Each index gets random high bits above its own bits; sorting the packed
    words orders the indices by the random bits (ties, among >= 2^8 values,
    by index). XLA:CPU sorts single integer arrays several times faster than
    the key/value sorts of jax.random.permutation (measured 0.8 ms vs ~10 ms at
    N = 25,000), and the shuffle only has to break the pairing of x and y.
    """
    index_bits = max(1, (n - 1).bit_length())
    if index_bits > 24:
        return jax.random.permutation(key, n)
    high = jax.random.bits(key, (n,), jnp.uint32) >> index_bits << index_bits
    packed = high | jnp.arange(n, dtype=jnp.uint32)
    return (jnp.sort(packed) & jnp.uint32((1 << index_bits) - 1)).astype(jnp.int32)
