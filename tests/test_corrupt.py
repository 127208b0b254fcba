import numpy as np
import pytest

from harness.data.base import make_dataset
from harness.data.corrupt import add_label_noise
from harness.errors import UserError


def toy(n=1000, classes=10):
    rng = np.random.default_rng(0)
    return make_dataset("toy", rng.normal(size=(n, 3)), rng.integers(0, classes, n), rng.normal(size=(10, 3)),
                        rng.integers(0, classes, 10), num_classes=classes)


@pytest.mark.parametrize("noise", [0.2, 0.4])
def test_label_noise_flips_exactly_that_fraction_to_other_classes(noise):
    clean = toy()
    noisy = add_label_noise(clean, noise, seed=1)
    changed = noisy.y_train != clean.y_train
    assert changed.sum() == round(noise * 1000)
    assert np.array_equal(changed, noisy.noisy)  # the ground truth marks exactly the changed labels
    assert np.array_equal(noisy.y_train_clean, clean.y_train)
    assert np.array_equal(noisy.y_test, clean.y_test)
    assert noisy.y_train.max() < 10 and noisy.y_train.min() >= 0


def test_label_noise_is_seeded_and_zero_is_identity():
    clean = toy()
    assert add_label_noise(clean, 0.0, seed=1) is clean
    a, b, c = (add_label_noise(clean, 0.3, seed=s) for s in (1, 1, 2))
    assert np.array_equal(a.y_train, b.y_train) and not np.array_equal(a.y_train, c.y_train)


def test_noisy_labels_are_another_dataset_to_the_signal_cache():
    clean = toy()
    a, b, c = add_label_noise(clean, 0.3, seed=1), add_label_noise(clean, 0.3, seed=1), add_label_noise(clean, 0.2, 1)
    assert a.fingerprint == b.fingerprint
    assert len({clean.fingerprint, a.fingerprint, c.fingerprint}) == 3


def test_label_noise_out_of_range_is_a_user_error():
    with pytest.raises(UserError, match=r"corruption.label_noise=1.0: expected a number in \[0, 1\)"):
        add_label_noise(toy(), 1.0, seed=0)
