"""The `image_folder` dataset source: one sub-folder per class (torchvision's ImageFolder layout), decoded once.

Images are decoded with Pillow, centre-cropped to the configured aspect ratio and resized (`ImageOps.fit`), and
stored as uint8 (N, C, H, W) in `cache_dir/image_folder/<key>.npz`, one file per folder. The key hashes the file
list with sizes and modification times, the class names and the configured shape, so a changed file gets a fresh
cache and an unchanged folder is never decoded twice. `load` scales the pixels to [0, 1] float32 (no per-channel
normalisation: models with batch norm do not need it).

Training rows are in class order (folders sorted by name), then by file path, minus any unreadable files skipped
and the rows of a `test_fraction` split: that is the order an embeddings file (`embeddings.path`) must follow. The
cache holds the file of every row (`files`), so that order can be read back.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from harness.data.base import Dataset, atomic_save_npz, make_dataset
from harness.data.sources import Source
from harness.errors import UserError, first_line

log = logging.getLogger(__name__)

# torchvision's IMG_EXTENSIONS (case-insensitive); other files in a class folder are ignored, as there.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
CACHE_VERSION = 1  # bump when decoding changes, so old caches are not read
ON_UNREADABLE = ("fail", "skip")


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def class_names(folder: Path) -> list[str]:
    """Sub-folders of `folder`, sorted by name. Hidden ones (.ipynb_checkpoints) are not classes: torchvision's
    ImageFolder counts them, a classic source of an extra empty class."""
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _walk_images(folder: Path):
    """Image files under `folder` (recursively), as paths relative to it, in sorted order."""
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):  # as torchvision
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if _is_image(name):
                yield Path(dirpath, name).relative_to(folder)


def decode(path: Path, size: tuple[int, int], channels: int) -> np.ndarray:
    """One image as uint8 (channels, height, width): centre-cropped to the aspect ratio of `size`, then resized."""
    from PIL import Image, ImageOps

    height, width = size
    mode = "RGB" if channels == 3 else "L"
    with Image.open(path) as img:
        img.draft(mode, (width, height))  # JPEG: decode at a reduced scale still >= size (much faster); else no-op
        img = ImageOps.fit(img.convert(mode), (width, height), method=Image.Resampling.BILINEAR)
        pixels = np.asarray(img, dtype=np.uint8)
    return pixels.transpose(2, 0, 1) if channels == 3 else pixels[None]


class ImageFolder(Source):
    """Images in `train_dir/<class>/...`; the test set from `test_dir` (same class names) or a seeded
    `test_fraction` of `train_dir`. Unreadable files fail the load (`on_unreadable: fail`, naming them) or are left
    out with a warning that lists them (`skip`; also in `skipped` after `load`)."""

    peek_reads_files = True

    def __init__(self, train_dir: str, test_dir: str | None = None, test_fraction: float | None = None,
                 split_seed: int = 0, image_size: Sequence[int] = (32, 32), channels: int = 3,
                 on_unreadable: str = "fail") -> None:
        self.train_dir, self.test_dir = train_dir, test_dir
        self.test_fraction, self.split_seed = test_fraction, split_seed
        self.image_size, self.channels, self.on_unreadable = image_size, channels, on_unreadable
        self.skipped: list[str] = []  # files left out by the last `load` (on_unreadable: skip), as key:relative path
        self._listings: dict[str, tuple[list[str], list[int], str]] = {}

    # --- checks -----------------------------------------------------------------------------------------------

    def _size(self) -> tuple[int, int]:
        size = list(self.image_size) if isinstance(self.image_size, Sequence | np.ndarray) else None
        if (size is None or len(size) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
            raise UserError(f"dataset.image_size={self.image_size}: expected [height, width], two positive integers")
        return size[0], size[1]

    def _check_folder(self, key: str, folder: str | None) -> list[str]:
        """The class folders of `folder` after checking it exists, has at least 2 classes and an image in each."""
        if not folder:
            raise UserError(f"dataset.{key} is empty: expected a folder with one sub-folder per class")
        path = Path(folder)
        if not path.is_dir():
            raise UserError(f"dataset.{key}={folder}: folder not found; expected one sub-folder per class")
        classes = class_names(path)
        if len(classes) < 2:
            found = f" ({classes[0]})" if classes else ""
            raise UserError(f"dataset.{key}={folder}: {len(classes)} class folder{found}; expected at least 2 "
                            "sub-folders, one per class")
        for c in classes:
            if next(_walk_images(path / c), None) is None:
                raise UserError(f"dataset.{key}={folder}: class folder {c}/ has no images; expected at least one "
                                f"of {', '.join(IMAGE_EXTENSIONS)}")
        return classes

    def check(self) -> None:
        self._size()
        if self.channels not in (1, 3):
            raise UserError(f"dataset.channels={self.channels}: expected 3 (RGB) or 1 (grayscale)")
        if self.on_unreadable not in ON_UNREADABLE:
            raise UserError(f"dataset.on_unreadable={self.on_unreadable}: expected one of {', '.join(ON_UNREADABLE)}")
        if (self.test_dir is None) == (self.test_fraction is None):
            given = "both" if self.test_dir is not None else "neither"
            raise UserError(f"dataset.test_dir, dataset.test_fraction: {given} set; expected exactly one (a folder "
                            "of test images, or the fraction of train_dir to hold out)")
        tf = self.test_fraction
        if tf is not None and (isinstance(tf, bool) or not isinstance(tf, int | float) or not 0 < tf < 1):
            raise UserError(f"dataset.test_fraction={tf}: expected a number in (0, 1)")
        classes = self._check_folder("train_dir", self.train_dir)
        if self.test_dir is not None:
            unknown = sorted(set(self._check_folder("test_dir", self.test_dir)) - set(classes))
            if unknown:
                raise UserError(f"dataset.test_dir={self.test_dir}: class folder {unknown[0]}/ is not in "
                                f"dataset.train_dir={self.train_dir}; expected the training set's class names")

    def peek(self) -> tuple[tuple[int, ...], int | None] | None:
        """(channels, height, width) from the config and the number of class folders: nothing is decoded."""
        try:
            height, width = self._size()
            return (self.channels, height, width), len(class_names(Path(self.train_dir)))
        except (UserError, OSError):
            return None  # check() names the problem

    def train_rows(self, cache_dir: str | Path) -> int | None:
        """Rows of the training set (before `dataset.val_fraction`) when known without decoding: from the cache, or
        the file count where an unreadable file fails the load anyway (`on_unreadable: fail`); else None."""
        try:
            files, _, digest = self._listing("train_dir", self.train_dir, class_names(Path(self.train_dir)))
        except (UserError, OSError):
            return None  # check() names the problem
        n = len(files)
        if self.on_unreadable == "skip":
            cache = Path(cache_dir) / "image_folder" / f"{digest}.npz"
            if not cache.exists():
                return None
            with np.load(cache) as z:
                n = len(z["y"])
        if self.test_dir is not None:
            return n
        n_test = int(round(self.test_fraction * n))
        return n - n_test if 0 < n_test < n else None

    # --- listing, decoding, cache -----------------------------------------------------------------------------

    def _listing(self, key: str, folder: str, classes: list[str]) -> tuple[list[str], list[int], str]:
        """(relative paths, labels, cache key) of the images in `folder`, labels by `classes`' order."""
        if key not in self._listings:
            root = Path(folder)
            files, labels, stats = [], [], []
            for label, c in enumerate(classes):
                if not (root / c).is_dir():
                    continue  # a test folder may lack a class
                for rel in _walk_images(root / c):
                    st = (root / c / rel).stat()
                    files.append(str(Path(c, rel)))
                    labels.append(label)
                    stats.append([st.st_size, st.st_mtime_ns])
            ident = {"v": CACHE_VERSION, "size": list(self._size()), "channels": self.channels, "classes": classes,
                     "files": [[f, s, m] for f, (s, m) in zip(files, stats)], "labels": labels}
            digest = hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:20]
            self._listings[key] = (files, labels, digest)
        return self._listings[key]

    def _folders(self) -> list[tuple[str, str]]:
        return [("train_dir", self.train_dir)] + ([("test_dir", self.test_dir)] if self.test_dir is not None else [])

    def prepare(self, cache_dir: str | Path) -> bool:
        """Decode every folder not yet in the cache (unreadable files are recorded in it, not raised: `load` decides
        by `on_unreadable`, so switching it never decodes again). True when something was decoded."""
        classes = class_names(Path(self.train_dir))
        size = self._size()
        did = False
        for key, folder in self._folders():
            files, labels, digest = self._listing(key, folder, classes)
            path = Path(cache_dir) / "image_folder" / f"{digest}.npz"
            if path.exists():
                continue
            x = np.empty((len(files), self.channels, *size), dtype=np.uint8)
            ok = np.zeros(len(files), dtype=bool)
            skipped: list[str] = []
            for i, rel in enumerate(files):
                file = Path(folder) / rel
                try:
                    x[i] = decode(file, size, self.channels)
                    ok[i] = True
                except Exception as e:  # Pillow's plugins raise many types for damaged files
                    skipped.append(f"{rel} ({first_line(e).replace(f' {str(file)!r}', '')})")
            atomic_save_npz(path, x=x if ok.all() else x[ok], y=np.asarray(labels, dtype=np.int64)[ok],
                            files=np.asarray(files, dtype=str)[ok], skipped=np.asarray(skipped, dtype=str),
                            classes=np.asarray(classes, dtype=str))
            did = True
        return did

    def _read(self, cache_dir: str | Path, key: str, folder: str, classes: list[str]) -> tuple[np.ndarray, ...]:
        """(x uint8, y) of one folder from the cache, after applying `on_unreadable` to its unreadable files."""
        _, _, digest = self._listing(key, folder, classes)
        with np.load(Path(cache_dir) / "image_folder" / f"{digest}.npz") as z:
            x, y, skipped = z["x"], z["y"], [str(s) for s in z["skipped"]]
        if skipped:
            listed = "; ".join(skipped[:3]) + (f"; and {len(skipped) - 3} more" if len(skipped) > 3 else "")
            if self.on_unreadable == "fail":
                raise UserError(f"dataset.{key}={folder}: {len(skipped)} unreadable image{'s' * (len(skipped) > 1)}: "
                                f"{listed}; expected images Pillow can read, or dataset.on_unreadable=skip")
            log.warning("dataset.%s=%s: skipped %d unreadable image%s: %s", key, folder, len(skipped),
                        "s" * (len(skipped) > 1), listed)
            self.skipped += [f"{key}:{s}" for s in skipped]
        if len(y) == 0:
            raise UserError(f"dataset.{key}={folder}: no readable images; expected at least one")
        return x, y

    def _n_test(self, n: int) -> int:
        n_test = int(round(self.test_fraction * n))
        if not 0 < n_test < n:
            raise UserError(f"dataset.test_fraction={self.test_fraction}: holds out {n_test} of {n} images; expected "
                            "at least one image in each of the training and test sets")
        return n_test

    def load(self, cache_dir: str | Path) -> Dataset:
        self.check()
        self.prepare(cache_dir)
        self.skipped = []
        classes = class_names(Path(self.train_dir))
        x, y = self._read(cache_dir, "train_dir", self.train_dir, classes)
        if self.test_dir is not None:
            x_test, y_test = self._read(cache_dir, "test_dir", self.test_dir, classes)
        else:  # a seeded split; both parts keep the file order (sorted), so rows stay aligned with files
            perm = np.random.default_rng(self.split_seed).permutation(len(y))
            test = np.sort(perm[: self._n_test(len(y))])
            keep = np.ones(len(y), dtype=bool)
            keep[test] = False
            x, y, x_test, y_test = x[keep], y[keep], x[test], y[test]
        scale = np.float32(1 / 255)
        return make_dataset("image_folder", x * scale, y, x_test * scale, y_test, num_classes=len(classes))
