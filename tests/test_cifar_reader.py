"""The CIFAR-10/100 reader (harness/data/sources.py CIFAR) on tiny data sets in torchvision's on-disk layout, written
here: no download. The real files are Python 2 pickles whose keys come back as bytes; a batch re-saved by Python 3
has str keys. The reader must take both, as torchvision does."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from harness.data.sources import CIFAR
from harness.errors import UserError

# The published per-channel statistics of each training set.
MEAN = {10: (0.4914, 0.4822, 0.4465), 100: (0.5071, 0.4865, 0.4409)}
STD = {10: (0.2470, 0.2435, 0.2616), 100: (0.2673, 0.2564, 0.2762)}


def write_cifar(root: Path, num_classes: int, n_per_file: int = 7, str_keys: bool = False) -> dict[str, np.ndarray]:
    """A tiny CIFAR-10 (data_batch_1..5, test_batch, batches.meta) or CIFAR-100 (train, test, meta) under `root`;
    returns the pixels and labels written, train and test."""
    rng = np.random.default_rng(num_classes)
    key = str if str_keys else str.encode
    if num_classes == 10:
        folder, train_files, test_file = root / "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], \
            "test_batch"
        meta = ("batches.meta", {key("label_names"): [f"class{i}" for i in range(10)],
                                 key("num_cases_per_batch"): n_per_file, key("num_vis"): 3072})
    else:
        folder, train_files, test_file = root / "cifar-100-python", ["train"], "test"
        meta = ("meta", {key("fine_label_names"): [f"fine{i}" for i in range(100)],
                         key("coarse_label_names"): [f"coarse{i}" for i in range(20)]})
    folder.mkdir(parents=True)
    written: dict[str, list[np.ndarray]] = {"x_train": [], "y_train": [], "x_test": [], "y_test": []}
    for name in [*train_files, test_file]:
        split = "test" if name == test_file else "train"
        data = rng.integers(0, 256, (n_per_file, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, num_classes, n_per_file)]  # a list of ints, as in the real files
        batch = {key("batch_label"): f"{name} of 1", key("data"): data,
                 key("filenames"): [f"img{i}.png" for i in range(n_per_file)]}
        if num_classes == 10:
            batch[key("labels")] = labels
        else:  # the coarse labels must not be read as the classes
            batch[key("fine_labels")] = labels
            batch[key("coarse_labels")] = [v // 5 for v in labels]
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
        written[f"x_{split}"].append(data)
        written[f"y_{split}"].append(np.array(labels))
    with open(folder / meta[0], "wb") as f:
        pickle.dump(meta[1], f, protocol=2)
    return {k: np.concatenate(v) for k, v in written.items()}


@pytest.mark.parametrize("str_keys", [False, True], ids=["bytes-keys", "str-keys"])
@pytest.mark.parametrize("num_classes", [10, 100])
def test_reader_shapes_labels_counts_and_pixels(tmp_path, num_classes, str_keys):
    raw = write_cifar(tmp_path, num_classes, str_keys=str_keys)
    d = CIFAR(str(tmp_path), num_classes=num_classes).load(tmp_path / "cache")
    n_train = 35 if num_classes == 10 else 7  # five batches of 7, or one file
    assert d.x_train.shape == (n_train, 3, 32, 32) and d.x_test.shape == (7, 3, 32, 32)
    assert d.name == f"cifar{num_classes}" and d.num_classes == num_classes
    assert d.y_train.tolist() == raw["y_train"].tolist() and d.y_test.tolist() == raw["y_test"].tolist()
    assert np.array_equal(np.bincount(d.y_train, minlength=num_classes),
                          np.bincount(raw["y_train"], minlength=num_classes))
    # a row is 1024 red, then green, then blue values, each 32 rows of 32: channel 1, row 2, column 3 is 1024+67
    mean, std = MEAN[num_classes][1], STD[num_classes][1]
    assert d.x_train[0, 1, 2, 3] == pytest.approx((raw["x_train"][0, 1024 + 2 * 32 + 3] / 255 - mean) / std, abs=1e-5)
    assert d.x_test[-1, 2, 31, 31] == pytest.approx((raw["x_test"][-1, 3071] / 255 - MEAN[num_classes][2])
                                                    / STD[num_classes][2], abs=1e-5)


@pytest.mark.parametrize("num_classes, folder", [(10, "cifar-10-batches-py"), (100, "cifar-100-python")])
def test_missing_folder_is_one_line_naming_it(tmp_path, num_classes, folder):
    with pytest.raises(UserError) as e:
        CIFAR(str(tmp_path / "data"), num_classes=num_classes).check()
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"dataset.root={tmp_path / 'data'}: CIFAR-{num_classes} not found")
    assert f"{tmp_path / 'data' / folder}/" in msg


def test_missing_batch_is_named(tmp_path):
    write_cifar(tmp_path, 10)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(UserError, match="CIFAR-10 not found; expected .* with data_batch_3 "):
        CIFAR(str(tmp_path)).check()


@pytest.mark.parametrize("content, message", [
    (b"\x80\x02not a pickle", "not a CIFAR-10 batch"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}), "not a CIFAR-10 batch (KeyError: 'labels')"),
    (pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}), "data of shape (2, 100)"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}), "labels outside 0..9"),
])
def test_malformed_batch_is_one_line_naming_the_file(tmp_path, content, message):
    write_cifar(tmp_path, 10)
    bad = tmp_path / "cifar-10-batches-py" / "test_batch"
    bad.write_bytes(content)
    with pytest.raises(UserError) as e:
        CIFAR(str(tmp_path)).load(tmp_path / "cache")
    assert str(e.value).startswith(f"{bad}: ") and message in str(e.value) and "\n" not in str(e.value)


def test_config_reads_the_fixture(tmp_path, compose_cfg):
    from harness.build import build_dataset
    from harness.config import validate

    write_cifar(tmp_path, 100)
    cfg = compose_cfg("dataset=cifar100", f"dataset.root={tmp_path}", "model=resnet18", "model.width=4")
    validate(cfg)  # preflight: files present, ResNet18 takes (3, 32, 32) and has 100 outputs
    assert build_dataset(cfg).load(tmp_path / "cache").num_classes == 100
