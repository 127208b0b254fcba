"""Seeded corruptions of the training rows with their ground truth kept: label noise, exact and near duplicates,
outliers and long-tail imbalance, so a run can say what a selection strategy did to each (docs/data-audits.md).

Order of application (`corrupt`): imbalance removes rows first; label noise then flips labels of the remaining
original rows; exact duplicates, near duplicates and outliers are then appended, in that order, at the end of the
training rows, each drawn from the original rows (never from another appended row), a copy taking its source's
current (possibly flipped) label. Test and validation rows are never touched.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from harness.data.base import Dataset, fingerprint
from harness.data.rows import FileRows
from harness.errors import UserError
from harness.seeding import numpy_rng

LABEL_NOISE_KINDS = ("symmetric", "pair")
OUTLIER_KINDS = ("noise", "shuffled")
APPENDED = ("exact_duplicates", "near_duplicates", "outliers")  # kinds that append rows, in the order appended
DUPLICATE_KINDS = ("exact_duplicates", "near_duplicates")  # whose appended rows are surplus copies of a source row
NEW_FEATURES = ("near_duplicates", "outliers")  # kinds that compute new feature rows (need them in memory)


def _check_number(key: str, value: object, ok: Callable[[float], bool], expected: str) -> None:
    """`ok(value)` holds for a number (a bool is not one), else a UserError naming `corruption.<key>`."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not ok(value):
        raise UserError(f"corruption.{key}={value}: expected {expected}")


def check_corruption(c: Any, rows_in_file: bool = False) -> None:
    """Every `corruption.*` value, before any compute: one-line UserError naming the key and what it takes.
    `rows_in_file`: the training features stay in their file (`dataset.in_memory=false`); rows can be removed or
    repeated there, but not computed."""
    def number(key: str, ok: Callable[[float], bool], expected: str) -> None:
        _check_number(key, getattr(c, key), ok, expected)

    number("label_noise", lambda v: 0 <= v < 1, "a number in [0, 1)")
    for key in APPENDED:
        number(key, lambda v: 0 <= v <= 1, "a fraction of the training rows in [0, 1]")
    number("near_duplicate_cosine", lambda v: 0 < v < 1, "a cosine similarity in (0, 1) (1 is an exact duplicate)")
    number("imbalance_rho", lambda v: v >= 1, "a ratio of largest to smallest class >= 1 (1: off)")
    if c.label_noise_kind not in LABEL_NOISE_KINDS:
        raise UserError(f"corruption.label_noise_kind={c.label_noise_kind}: expected one of "
                        f"{', '.join(LABEL_NOISE_KINDS)}")
    if c.outlier_kind not in OUTLIER_KINDS:
        raise UserError(f"corruption.outlier_kind={c.outlier_kind}: expected one of {', '.join(OUTLIER_KINDS)}")
    if rows_in_file:
        for key in NEW_FEATURES:
            if getattr(c, key) > 0:
                raise UserError(f"corruption.{key}={getattr(c, key)}: computes new feature rows, but "
                                "dataset.in_memory=false keeps the features in their file; expected "
                                f"dataset.in_memory=true or corruption.{key}=0")


def rows_changed_by(c: Any) -> str | None:
    """The first `corruption.<key>=<value>` that adds or removes training rows, or None."""
    for key in APPENDED:
        if getattr(c, key) > 0:
            return f"corruption.{key}={getattr(c, key)}"
    return f"corruption.imbalance_rho={c.imbalance_rho}" if c.imbalance_rho > 1 else None


def corrupt(data: Dataset, c: Any, seed: int) -> Dataset:
    """Apply every corruption `c` asks for, in the module's order, each from its own seeded stream; the fingerprint
    is recomputed once at the end (the signal cache and the run's tag must tell corrupted data from clean). With
    nothing asked, `data` itself comes back."""
    check_corruption(c, rows_in_file=isinstance(data.x_train, FileRows))
    out = _imbalance(data, c.imbalance_rho, seed)
    out = _label_noise(out, c.label_noise, seed, c.label_noise_kind)
    n_original = len(out.y_train)  # appended rows are drawn from these, and sized as a fraction of them
    out = _exact_duplicates(out, c.exact_duplicates, n_original, seed)
    out = _near_duplicates(out, c.near_duplicates, c.near_duplicate_cosine, n_original, seed)
    out = _outliers(out, c.outliers, c.outlier_kind, n_original, seed)
    if out is data:
        return data
    if out.duplicate_of is None:
        out = dataclasses.replace(out, duplicate_of=np.full(len(out.y_train), -1, dtype=np.int64))
    return _refingerprint(out)


def add_label_noise(data: Dataset, label_noise: float, seed: int, kind: str = "symmetric") -> Dataset:
    """Label noise alone (see `_label_noise`), with the fingerprint recomputed."""
    _check_number("label_noise", label_noise, lambda v: 0 <= v < 1, "a number in [0, 1)")
    out = _label_noise(data, label_noise, seed, kind)
    return data if out is data else _refingerprint(out)


def _refingerprint(data: Dataset) -> Dataset:
    return dataclasses.replace(data, fingerprint=fingerprint(data.x_train, data.y_train, data.x_test, data.y_test))


def _label_noise(data: Dataset, label_noise: float, seed: int, kind: str) -> Dataset:
    """A `label_noise` fraction of the training labels, chosen uniformly, each moved to another class, so exactly
    that fraction is wrong. symmetric: to a uniformly drawn other class; pair (Han et al. 2018, co-teaching's pair
    flip): class c to (c + 1) mod C.

    Draws from the stream "corruption" (not "corruption/label_noise"): runs recorded before the other kinds existed
    keep their noise. Both kinds flip the same rows for a seed.
    """
    if label_noise == 0:
        return data
    if kind not in LABEL_NOISE_KINDS:
        raise UserError(f"corruption.label_noise_kind={kind}: expected one of {', '.join(LABEL_NOISE_KINDS)}")
    rng = numpy_rng(seed, "corruption")
    n = len(data.y_train)
    flip = rng.choice(n, size=int(round(label_noise * n)), replace=False)
    y = data.y_train.copy()
    if kind == "symmetric":
        shift = rng.integers(1, data.num_classes, size=len(flip))  # 1..C-1: never the true class
    else:
        shift = np.ones(len(flip), dtype=np.int64)
    y[flip] = (y[flip] + shift) % data.num_classes
    noisy = np.zeros(n, dtype=bool)
    noisy[flip] = True
    return dataclasses.replace(data, y_train=y, noisy=noisy, y_train_clean=data.y_train,
                               corruptions={**data.corruptions, "label_noise": noisy})


def long_tail_counts(class_counts: np.ndarray, rho: float) -> np.ndarray:
    """Cao et al. 2019 (LDAM-DRW, CIFAR-LT): class c keeps int(n_max * rho^(-c / (C - 1))) samples, n_max the largest
    class's count, and never more than it has. rho = n_max / n_min; 1 keeps every row."""
    counts = np.asarray(class_counts, dtype=np.int64)
    if len(counts) < 2 or rho == 1:
        return counts.copy()
    target = counts.max() * float(rho) ** (-np.arange(len(counts)) / (len(counts) - 1))
    return np.minimum(counts, target.astype(np.int64))  # truncation, as the reference's int()


def _imbalance(data: Dataset, rho: float, seed: int) -> Dataset:
    """Remove rows until class c has `long_tail_counts`: a seeded uniform choice within each class, kept rows in
    their order. The removed rows (indices before removal) and per-class counts are the ground truth."""
    if rho == 1:
        return data
    rng = numpy_rng(seed, "corruption/imbalance_rho")
    y = data.y_train
    counts = np.bincount(y, minlength=data.num_classes)
    keep_counts = long_tail_counts(counts, rho)
    keep = np.zeros(len(y), dtype=bool)
    for c in range(data.num_classes):
        rows = np.flatnonzero(y == c)
        keep[rng.choice(rows, size=keep_counts[c], replace=False)] = True
    kept = np.flatnonzero(keep)
    x = data.x_train.subset(kept) if isinstance(data.x_train, FileRows) else data.x_train[kept]
    return dataclasses.replace(data, x_train=x, y_train=y[kept], imbalance_dropped=np.flatnonzero(~keep),
                               imbalance_dropped_per_class=(counts - keep_counts).astype(np.int64))


def _append(data: Dataset, kind: str, x_new: np.ndarray | None, source: np.ndarray, y_new: np.ndarray,
            y_clean_new: np.ndarray) -> Dataset:
    """`x_new` (None: exact copies of `source`, which rows left in a file can do) with labels `y_new` at the end of
    the training rows; every mask grows, `kind`'s marks the new rows; `source` = -1 where a row copies nothing."""
    n_old, n_new = len(data.y_train), len(y_new)
    if x_new is None:
        if isinstance(data.x_train, FileRows):
            x = data.x_train.subset(np.concatenate([np.arange(n_old), source]))
        else:
            x = np.concatenate([data.x_train, data.x_train[source]])
    else:
        x = np.concatenate([data.x_train, x_new.astype(data.x_train.dtype, copy=False)])
    y = np.concatenate([data.y_train, y_new])
    masks = {k: np.concatenate([m, np.zeros(n_new, dtype=bool)]) for k, m in data.corruptions.items()}
    masks[kind] = np.concatenate([np.zeros(n_old, dtype=bool), np.ones(n_new, dtype=bool)])
    noisy, y_clean = None, None
    if data.y_train_clean is not None:
        # a copy of a flipped row carries the wrong label too: label_noise marks every row whose label is not its own
        y_clean = np.concatenate([data.y_train_clean, y_clean_new])
        noisy = y != y_clean
        masks["label_noise"] = noisy
    before = data.duplicate_of if data.duplicate_of is not None else np.full(n_old, -1, dtype=np.int64)
    duplicate_of = np.concatenate([before, np.asarray(source, dtype=np.int64)])
    return dataclasses.replace(data, x_train=x, y_train=y, noisy=noisy, y_train_clean=y_clean, corruptions=masks,
                               duplicate_of=duplicate_of)


def _copy_labels(data: Dataset, source: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    clean = data.y_train_clean if data.y_train_clean is not None else data.y_train
    return data.y_train[source], clean[source]


def _exact_duplicates(data: Dataset, fraction: float, n_original: int, seed: int) -> Dataset:
    """Append round(fraction * n) byte-identical copies of distinct original rows, chosen uniformly, with their
    labels."""
    if fraction == 0:
        return data
    rng = numpy_rng(seed, "corruption/exact_duplicates")
    source = rng.choice(n_original, size=int(round(fraction * n_original)), replace=False)
    return _append(data, "exact_duplicates", None, source, *_copy_labels(data, source))


def near_duplicate_noise_std(x_flat: np.ndarray, cosine: float) -> np.ndarray:
    """Per row, the std of isotropic Gaussian noise that puts a noisy copy at cosine similarity `cosine` to its row.

    With noise n ~ N(0, s^2 I_d) on a row x (flattened, d features), write n = a x/|x| + n_perp: a ~ N(0, s^2) and
    |n_perp|^2 ~ s^2 chi^2_{d-1}. Then cos(x, x + n) = (|x| + a) / sqrt((|x| + a)^2 + |n_perp|^2). Setting
    E|n_perp|^2 = s^2 (d - 1) = |x|^2 (1/cosine^2 - 1) makes cos = cosine at a = 0 and |n_perp|^2 at its mean;
    the mean over the noise differs from it only at second order, O((1/cosine^2 - 1)^2 / d).
    """
    d = max(x_flat.shape[1] - 1, 1)
    return np.linalg.norm(x_flat, axis=1) * np.sqrt((1 / cosine**2 - 1) / d)


def _near_duplicates(data: Dataset, fraction: float, cosine: float, n_original: int, seed: int) -> Dataset:
    """Append round(fraction * n) copies of distinct original rows plus Gaussian noise at expected cosine similarity
    `cosine` to their source (`near_duplicate_noise_std`), with the source's label. A row of zeros stays zeros."""
    if fraction == 0:
        return data
    rng = numpy_rng(seed, "corruption/near_duplicates")
    source = rng.choice(n_original, size=int(round(fraction * n_original)), replace=False)
    x = np.asarray(data.x_train[source], dtype=np.float64).reshape(len(source), -1)
    std = near_duplicate_noise_std(x, cosine)
    x_new = (x + std[:, None] * rng.standard_normal(x.shape)).reshape(len(source), *data.input_shape)
    return _append(data, "near_duplicates", x_new, source, *_copy_labels(data, source))


def _outliers(data: Dataset, fraction: float, kind: str, n_original: int, seed: int) -> Dataset:
    """Append round(fraction * n) samples from another distribution, each with a uniformly drawn label. noise:
    Gaussian with the original rows' per-feature mean and std; shuffled: a distinct original row with its features
    in a random order of its own. They copy no row (duplicate_of -1); their only label is the drawn one."""
    if fraction == 0:
        return data
    rng = numpy_rng(seed, "corruption/outliers")
    k = int(round(fraction * n_original))
    x = data.x_train[:n_original].reshape(n_original, -1)  # a view: no float64 copy of the whole set
    if kind == "noise":
        mean, std = x.mean(axis=0, dtype=np.float64), x.std(axis=0, dtype=np.float64)
        x_new = mean + std * rng.standard_normal((k, x.shape[1]))
    else:
        x_new = rng.permuted(x[rng.choice(n_original, size=k, replace=False)], axis=1)
    y_new = rng.integers(0, data.num_classes, size=k)
    return _append(data, "outliers", x_new.reshape(k, *data.input_shape), np.full(k, -1), y_new, y_new)


def ground_truth_counts(data: Dataset) -> dict[str, float]:
    """`n_<kind>`: rows each corruption marks, and `n_imbalance_dropped`: rows imbalance removed."""
    out = {f"n_{kind}": float(np.count_nonzero(mask)) for kind, mask in data.corruptions.items()}
    if data.imbalance_dropped is not None:
        out["n_imbalance_dropped"] = float(len(data.imbalance_dropped))
    return out


def ground_truth_arrays(data: Dataset) -> dict[str, np.ndarray]:
    """What `corruption_ground_truth.npz` holds: each kind's mask over the training rows, duplicate_of, and for
    imbalance the removed rows (indices into the training set before corruption) and their count per class."""
    out: dict[str, np.ndarray] = dict(data.corruptions)
    if data.duplicate_of is not None:
        out["duplicate_of"] = data.duplicate_of
    if data.imbalance_dropped is not None:
        out["imbalance_dropped"] = data.imbalance_dropped
        out["imbalance_dropped_per_class"] = data.imbalance_dropped_per_class
    return out


def _ratio(num: int, den: int) -> float:
    return num / den if den else float("nan")


def selection_audit(data: Dataset, indices: np.ndarray) -> dict[str, float]:
    """What a selection (`indices` into the corrupted training rows) did to each corruption present.

    kept_<kind>_fraction: corrupted rows kept / corrupted rows. For the duplicate kinds, removal of surplus copies,
    scored per group (a source row and its copies, removed = rows not selected): a group of g rows has g - 1 surplus
    rows, and removing any of its members counts, up to g - 1, whichever member a dedup stage keeps.
      recall_<kind>_removal = correct removals in the source + <kind>-copies groups / <kind> copies;
      precision_<kind>_removal = those correct removals / (them + wrong removals), a wrong removal being a removed
      row that is surplus in no group (the other duplicate kind's correct removals count as neither).
    NaN where a denominator is 0.
    """
    n = len(data.y_train)
    selected = np.zeros(n, dtype=bool)
    selected[np.asarray(indices, dtype=np.int64)] = True
    removed = ~selected
    out = {}
    dup = data.duplicate_of if data.duplicate_of is not None else np.full(n, -1, dtype=np.int64)
    copies = {k: data.corruptions[k] & (dup >= 0) for k in DUPLICATE_KINDS if k in data.corruptions}

    def correct(copy_mask: np.ndarray) -> int:
        """Sum over groups (each source with its copies in `copy_mask`) of min(removed members, copies)."""
        src = dup[copy_mask]
        if not len(src):
            return 0
        n_copies = np.bincount(src, minlength=n)
        n_removed = np.bincount(src, weights=removed[copy_mask], minlength=n) + (n_copies > 0) * removed
        return int(np.minimum(n_removed, n_copies).sum())

    any_copy = np.zeros(n, dtype=bool)
    for mask in copies.values():
        any_copy |= mask
    wrong = int(np.count_nonzero(removed)) - correct(any_copy)
    for kind, mask in data.corruptions.items():
        n_kind = int(np.count_nonzero(mask))
        out[f"kept_{kind}_fraction"] = _ratio(int(np.count_nonzero(mask & selected)), n_kind)
        if kind in copies:
            hit = correct(copies[kind])
            out[f"precision_{kind}_removal"] = _ratio(hit, hit + wrong)
            out[f"recall_{kind}_removal"] = _ratio(hit, int(np.count_nonzero(copies[kind])))
    return out
