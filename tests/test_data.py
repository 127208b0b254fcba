import pickle
from pathlib import Path

import numpy as np
import pytest

from harness.data.base import fingerprint
from harness.data.sources import CIFAR, MNIST1D, NPZ, Digits
from harness.errors import UserError


def test_mnist1d_default_split_and_cache_reuse(tmp_path):
    a = MNIST1D().load(tmp_path)
    assert a.x_train.shape == (4000, 40) and a.x_test.shape == (1000, 40)
    assert a.num_classes == 10 and a.x_train.dtype == np.float32
    cached = list((tmp_path / "mnist1d").glob("*.npz"))
    assert len(cached) == 1 and not list((tmp_path / "mnist1d").glob("*.tmp*"))
    b = MNIST1D().load(tmp_path)  # from the cache: same content, same fingerprint
    assert a.fingerprint == b.fingerprint
    c = MNIST1D(num_samples=1000).load(tmp_path)  # other arguments, other cache entry
    assert c.x_train.shape == (800, 40) and c.fingerprint != a.fingerprint


def test_fingerprint_changes_with_one_value():
    x = np.zeros((4, 3), np.float32)
    y = x.copy()
    y[2, 1] = 1e-6
    assert fingerprint(x) != fingerprint(y)
    assert fingerprint(x) == fingerprint(x.copy())


def test_npz_loads_user_arrays(tmp_path, write_npz):
    d = NPZ(write_npz(n_train=20, n_test=10, features=5)).load(tmp_path)
    assert d.x_train.shape == (20, 5) and d.num_classes <= 3 and len(d.y_test) == 10


@pytest.mark.parametrize(
    "override, message",
    [
        ({"y_train": np.zeros(19, int)}, "X_train has 20 rows but y_train has 19"),
        ({"X_test": np.full((10, 5), np.nan)}, "X_test has NaN"),
        ({"y_train": np.full(20, -1)}, "non-negative integer"),
    ],
)
def test_npz_bad_content_names_file_and_problem(tmp_path, write_npz, override, message):
    path = write_npz("bad.npz", n_train=20, n_test=10, features=5, **override)
    with pytest.raises(UserError, match=message) as e:
        NPZ(str(path)).load(tmp_path)
    assert str(path) in str(e.value)


def test_npz_missing_file(tmp_path):
    with pytest.raises(UserError, match="dataset.path=.*file not found"):
        NPZ(str(tmp_path / "nope.npz")).check()


def write_fake_cifar10(root: Path, n_per_batch=4):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                 b"labels": list(rng.integers(0, 10, n_per_batch))}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)


def test_cifar10_reads_torchvision_format(tmp_path):
    write_fake_cifar10(tmp_path)
    d = CIFAR(str(tmp_path)).load(tmp_path)
    assert d.x_train.shape == (20, 3, 32, 32) and d.x_test.shape == (4, 3, 32, 32)
    assert d.num_classes == 10 and d.name == "cifar10"


def test_cifar_missing_root_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="dataset.root=.*CIFAR-10 not found"):
        CIFAR(str(tmp_path / "none")).check()


def test_digits_split():
    d = Digits().load("unused")
    assert len(d.y_train) + len(d.y_test) == 1797 and d.input_shape == (64,)
