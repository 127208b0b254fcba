"""The `image_folder` source (harness/data/images.py) on small folders of PNGs written here.

Every image is one solid grey level, unique per file, so a loaded row names the file it came from: the tests read
which files were kept, in which order, under which label.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from harness.data import images
from harness.data.images import ImageFolder
from harness.errors import UserError

CLASSES = ("cat", "dog", "emu")  # written in another order below: labels must follow the sorted names


def write_folder(root: Path, per_class: int = 4, start: int = 10, corrupt: bool = False) -> dict[str, int]:
    """`per_class` PNGs of odd sizes in each class folder; returns {relative path: grey level}."""
    levels = {}
    level = start
    for c in reversed(CLASSES):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            rel = f"{c}/img{i}.png"
            Image.fromarray(np.full((12 + i, 17, 3), level, np.uint8)).save(root / rel)
            levels[rel] = level
            level += 5
    if corrupt:
        (root / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    (root / "cat" / "notes.txt").write_text("not an image, ignored")
    return levels


def grey(x: np.ndarray) -> list[int]:
    """The grey level of each loaded row (its first pixel, back in 0..255)."""
    return [int(v) for v in np.round(x[:, 0, 0, 0] * 255)]


def expected_rows(levels: dict[str, int]) -> tuple[list[int], list[int]]:
    """Grey levels and labels in the order the source promises: class folders sorted, then file paths."""
    rels = sorted(levels, key=lambda r: (CLASSES.index(r.split("/")[0]), r))
    return [levels[r] for r in rels], [CLASSES.index(r.split("/")[0]) for r in rels]


def test_two_folders_give_train_and_test_in_class_then_file_order(tmp_path):
    train = write_folder(tmp_path / "train")
    test = write_folder(tmp_path / "test", per_class=2, start=150)
    src = ImageFolder(str(tmp_path / "train"), test_dir=str(tmp_path / "test"), image_size=[8, 6])
    d = src.load(tmp_path / "cache")
    assert d.x_train.shape == (12, 3, 8, 6) and d.x_test.shape == (6, 3, 8, 6)  # channels first, as ResNet18 takes
    assert d.x_train.dtype == np.float32 and 0 <= d.x_train.min() and d.x_train.max() <= 1
    assert d.num_classes == 3 and d.name == "image_folder"
    levels, labels = expected_rows(train)
    assert grey(d.x_train) == levels and d.y_train.tolist() == labels
    levels, labels = expected_rows(test)
    assert grey(d.x_test) == levels and d.y_test.tolist() == labels
    assert np.ptp(d.x_train, axis=(2, 3)).max() == 0  # a solid image stays solid through crop and resize


def test_colour_and_grayscale_pixels(tmp_path):
    root = tmp_path / "images"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        Image.fromarray(np.full((9, 9, 3), (255, 0, 51), np.uint8)).save(root / c / "red.png")
        Image.fromarray(np.full((9, 9, 3), 255, np.uint8)).save(root / c / "white.png")
    rgb = ImageFolder(str(root), test_fraction=0.5, image_size=[4, 4]).load(tmp_path / "cache")
    x = np.concatenate([rgb.x_train, rgb.x_test])
    assert sorted(tuple(np.round(r[:, 0, 0], 3)) for r in x) == [(1.0, 0.0, 0.2)] * 2 + [(1.0, 1.0, 1.0)] * 2
    gray = ImageFolder(str(root), test_fraction=0.5, image_size=[4, 4], channels=1).load(tmp_path / "cache")
    assert gray.x_train.shape == (2, 1, 4, 4)


def test_seeded_split_is_disjoint_complete_and_in_file_order(tmp_path):
    levels = write_folder(tmp_path / "train", per_class=5)

    def load(split_seed: int):
        src = ImageFolder(str(tmp_path / "train"), test_fraction=0.2, split_seed=split_seed, image_size=[4, 4])
        return src.load(tmp_path / "cache")

    d = load(3)
    assert len(d.y_test) == 3 and len(d.y_train) == 12
    assert sorted(grey(d.x_train) + grey(d.x_test)) == sorted(levels.values())
    order, _ = expected_rows(levels)
    for part in (grey(d.x_train), grey(d.x_test)):
        assert part == [v for v in order if v in part]  # rows keep the file order (embeddings files rely on it)
    assert grey(load(3).x_test) == grey(d.x_test) and grey(load(4).x_test) != grey(d.x_test)


def test_corrupt_file_skipped_is_listed_and_left_out(tmp_path, caplog):
    levels = write_folder(tmp_path / "train", corrupt=True)
    src = ImageFolder(str(tmp_path / "train"), test_dir=str(tmp_path / "train"), image_size=[4, 4],
                      on_unreadable="skip")
    with caplog.at_level(logging.WARNING, logger="harness.data.images"):
        d = src.load(tmp_path / "cache")
    assert grey(d.x_train) == expected_rows(levels)[0]  # all the readable ones, nothing in place of the broken one
    assert [s.split(" (")[0] for s in src.skipped] == ["train_dir:dog/broken.png", "test_dir:dog/broken.png"]
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING][0]
    assert "skipped 1 unreadable image: dog/broken.png" in warning


def test_corrupt_file_fails_with_one_line_naming_it(tmp_path):
    write_folder(tmp_path / "train", corrupt=True)
    src = ImageFolder(str(tmp_path / "train"), test_fraction=0.25, image_size=[4, 4])
    with pytest.raises(UserError) as e:
        src.load(tmp_path / "cache")
    msg = str(e.value)
    assert "\n" not in msg and f"dataset.train_dir={tmp_path / 'train'}: 1 unreadable image: dog/broken.png" in msg
    assert "dataset.on_unreadable=skip" in msg


def test_cache_reused_then_refreshed_when_a_file_changes(tmp_path, monkeypatch):
    write_folder(tmp_path / "train")
    make = lambda: ImageFolder(str(tmp_path / "train"), test_fraction=0.25, image_size=[4, 4])  # noqa: E731
    first = make()
    assert first.prepare(tmp_path / "cache") is True  # decoded
    before = first.load(tmp_path / "cache")

    def no_decoding(*args):
        raise AssertionError("decoded again")

    with monkeypatch.context() as m:  # a second load reads the cache: nothing is decoded
        m.setattr(images, "decode", no_decoding)
        assert make().prepare(tmp_path / "cache") is False
        again = make().load(tmp_path / "cache")
    assert again.fingerprint == before.fingerprint

    changed = tmp_path / "train" / "dog" / "img1.png"  # same size on disk, new pixels and modification time
    Image.fromarray(np.full((13, 17, 3), 250, np.uint8)).save(changed)
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    assert make().prepare(tmp_path / "cache") is True
    after = make().load(tmp_path / "cache")
    assert 250 in grey(after.x_train) + grey(after.x_test) and after.fingerprint != before.fingerprint
    assert len(list((tmp_path / "cache" / "image_folder").glob("*.npz"))) == 2  # one entry per content


def test_peek_and_train_rows_without_decoding(tmp_path, monkeypatch):
    write_folder(tmp_path / "train", corrupt=True)
    monkeypatch.setattr(images, "decode", lambda *a: pytest.fail("decoded"))
    fail = ImageFolder(str(tmp_path / "train"), test_fraction=0.25, image_size=[16, 8])
    assert fail.peek() == ((3, 16, 8), 3)
    assert fail.train_rows(tmp_path / "cache") == 13 - 3  # 13 files (the corrupt one would fail the load)
    skip = ImageFolder(str(tmp_path / "train"), test_fraction=0.25, image_size=[16, 8], on_unreadable="skip")
    assert skip.train_rows(tmp_path / "cache") is None  # unknown until decoded
    assert not (tmp_path / "cache").exists()


def test_train_rows_from_the_cache_equal_the_loaded_rows(tmp_path):
    write_folder(tmp_path / "train", corrupt=True)
    skip = ImageFolder(str(tmp_path / "train"), test_fraction=0.25, image_size=[4, 4], on_unreadable="skip")
    d = skip.load(tmp_path / "cache")
    assert skip.train_rows(tmp_path / "cache") == len(d.y_train) == 9


@pytest.mark.parametrize("setup, kwargs, message", [
    (None, {}, "dataset.train_dir={train}: folder not found"),
    ("one-class", {}, "dataset.train_dir={train}: 1 class folder (cat); expected at least 2"),
    ("empty-class", {}, "dataset.train_dir={train}: class folder emu/ has no images"),
    ("ok", {"test_fraction": None}, "dataset.test_dir, dataset.test_fraction: neither set; expected exactly one"),
    ("ok", {"test_dir": "{train}"}, "dataset.test_dir, dataset.test_fraction: both set"),
    ("ok", {"test_fraction": 1.5}, "dataset.test_fraction=1.5: expected a number in (0, 1)"),
    ("ok", {"image_size": [32]}, "dataset.image_size=[32]: expected [height, width]"),
    ("ok", {"on_unreadable": "ignore"}, "dataset.on_unreadable=ignore: expected one of fail, skip"),
    ("extra-test-class", {"test_dir": "{test}", "test_fraction": None},
     "dataset.test_dir={test}: class folder zebra/ is not in dataset.train_dir"),
])
def test_check_names_the_folder_in_one_line(tmp_path, setup, kwargs, message):
    train, test = tmp_path / "train", tmp_path / "test"
    if setup == "one-class":
        write_folder(train, per_class=1)
        for c in ("dog", "emu"):
            for f in (train / c).iterdir():
                f.unlink()
            (train / c).rmdir()
    elif setup is not None:
        write_folder(train, per_class=1)
    if setup == "empty-class":
        (train / "emu" / "img0.png").unlink()
    if setup == "extra-test-class":
        write_folder(test, per_class=1)
        (test / "zebra").mkdir()
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(test / "zebra" / "z.png")
    args = {"test_fraction": 0.25, "image_size": [4, 4],
            **{k: v.format(train=train, test=test) if isinstance(v, str) else v for k, v in kwargs.items()}}
    with pytest.raises(UserError) as e:
        ImageFolder(str(train), **args).check()
    assert message.format(train=train, test=test) in str(e.value) and "\n" not in str(e.value)


def test_config_composes_and_resnet18_takes_the_images(tmp_path, compose_cfg):
    from harness.build import build_dataset
    from harness.config import validate

    write_folder(tmp_path / "train", per_class=2)
    cfg = compose_cfg("dataset=image_folder", f"dataset.train_dir={tmp_path / 'train'}", "dataset.test_fraction=0.5",
                      "dataset.image_size=[8,8]", "model=resnet18", "model.width=4", f"cache_dir={tmp_path / 'c'}")
    validate(cfg)  # the preflight: files checked, one forward of the model on (3, 8, 8) samples
    data = build_dataset(cfg).load(cfg.cache_dir)
    assert data.input_shape == (3, 8, 8) and len(data.y_train) == 3


@pytest.mark.slow
def test_a_trial_trains_resnet18_on_the_folder(tmp_path, store):
    from tests.conftest import run_cli, runs_of

    write_folder(tmp_path / "train", corrupt=True)
    res = run_cli("dataset=image_folder", f"dataset.train_dir={tmp_path / 'train'}", "dataset.test_fraction=0.25",
                  "dataset.on_unreadable=skip", "dataset.image_size=[8,8]", "model=resnet18", "model.width=4",
                  "trainer.epochs=2", f"tracking.uri={store}", f"cache_dir={tmp_path / 'cache'}",
                  f"hydra.run.dir={tmp_path / 'out'}")
    assert res.returncode == 0, res.stderr
    assert "skipped 1 unreadable image: dog/broken.png" in res.stdout + res.stderr
    run = runs_of(store).iloc[0]
    assert run["status"] == "FINISHED" and run["tags.dataset"] == "image_folder" and run["metrics.n_train"] == 9
    # the record says what was left out: a count to filter on, the files in the dataset card
    assert run["metrics.n_unreadable_skipped"] == 1
    card = json.loads(Path(MlflowClient(store).download_artifacts(run["run_id"], "dataset_card.json", str(tmp_path)))
                      .read_text())
    assert [s.split(" (")[0] for s in card["source"]["skipped_unreadable"]] == ["train_dir:dog/broken.png"]
