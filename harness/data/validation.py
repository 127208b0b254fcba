"""A validation split carved out of the training set (`dataset.val_fraction`), for strategies that select against
held-out data (GLISTER; GradMatch with `valid: true`). The test set is never used for selection."""

from __future__ import annotations

import dataclasses

import numpy as np

from harness.data.base import Dataset, fingerprint
from harness.data.rows import FileRows
from harness.errors import UserError
from harness.seeding import numpy_rng

MAX_VAL_FRACTION = 0.5


def check_val_fraction(value: object) -> None:
    """`dataset.val_fraction` is null or a number in (0, 0.5]."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= MAX_VAL_FRACTION:
        raise UserError(f"dataset.val_fraction={value}: expected a number in (0, {MAX_VAL_FRACTION}] or null")


def val_positions(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted rows of a stratified split: round(fraction x count) of each class, drawn with the trial seed's
    `validation_split` stream (so every strategy of one seed holds out the same samples)."""
    rng = numpy_rng(seed, "validation_split")
    picks = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        picks.append(rng.choice(rows, size=int(round(fraction * len(rows))), replace=False))
    return np.sort(np.concatenate(picks))


def split_validation(data: Dataset, fraction: float | None, seed: int) -> Dataset:
    """`data` with a stratified `fraction` of its training set moved to x_val/y_val (none: unchanged). The training
    set keeps the other rows in their order; the fingerprint is recomputed, so signals cached for the whole
    training set are not served to the smaller one."""
    check_val_fraction(fraction)
    if fraction is None:
        return data
    val = val_positions(data.y_train, fraction, seed)
    if len(val) == 0:
        raise UserError(f"dataset.val_fraction={fraction}: leaves no validation sample of {len(data.y_train)} "
                        "training samples; expected a larger fraction")
    keep = np.ones(len(data.y_train), dtype=bool)
    keep[val] = False
    y = data.y_train[keep]
    if isinstance(data.x_train, FileRows):  # rows left in their file: views of it (indexing would read them all)
        x, x_val = data.x_train.subset(np.flatnonzero(keep)), data.x_train.subset(val)
    else:
        x, x_val = data.x_train[keep], data.x_train[val]
    return dataclasses.replace(data, x_train=x, y_train=y, x_val=x_val, y_val=data.y_train[val],
                               val_indices=val, fingerprint=fingerprint(x, y, data.x_test, data.y_test))
