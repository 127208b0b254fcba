"""Seeded label corruption with its ground truth kept, for noise-robustness experiments."""

from __future__ import annotations

import dataclasses

import numpy as np

from harness.data.base import Dataset, fingerprint
from harness.errors import UserError
from harness.seeding import numpy_rng


def add_label_noise(data: Dataset, label_noise: float, seed: int) -> Dataset:
    """Symmetric noise: a `label_noise` fraction of training labels, chosen uniformly, each moved to a
    uniformly drawn *other* class (so exactly that fraction is wrong). Test labels are never touched.
    """
    if not 0 <= label_noise < 1:
        raise UserError(f"corruption.label_noise={label_noise}: expected a number in [0, 1)")
    if label_noise == 0:
        return data
    rng = numpy_rng(seed, "corruption")
    n = len(data.y_train)
    flip = rng.choice(n, size=int(round(label_noise * n)), replace=False)
    y = data.y_train.copy()
    shift = rng.integers(1, data.num_classes, size=len(flip))  # 1..C-1: never the true class
    y[flip] = (y[flip] + shift) % data.num_classes
    noisy = np.zeros(n, dtype=bool)
    noisy[flip] = True
    # A new fingerprint: the signal cache and the run's dataset_fingerprint tag must tell noisy labels from clean.
    return dataclasses.replace(data, y_train=y, noisy=noisy, y_train_clean=data.y_train,
                               fingerprint=fingerprint(data.x_train, y, data.x_test, data.y_test))
