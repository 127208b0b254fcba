"""Dataset sources, each built from its `_target_` in conf/dataset/*.yaml.

Every source has `check()` (cheap: files exist, values sane; run before any compute), `peek()` (cheap: the shape of
one sample and the number of classes, for the preflight's model check), `prepare(cache_dir)`
(one-time work such as generating the data into a cache; a sweep's driver runs it before the trials so no trial
is charged for it) and `load(cache_dir)` returning a `Dataset`. Errors a user can cause raise `UserError` naming
the key or file.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np

from harness.data.base import Dataset, atomic_save_npz, make_dataset
from harness.errors import UserError, first_line


class Source:
    """The contract of a dataset source (see the module docstring); `prepare` does nothing by default."""

    peek_reads_files = False  # True: `peek` opens the user's file, so it waits until files are checked

    def check(self) -> None:
        pass

    def peek(self) -> tuple[tuple[int, ...], int | None] | None:
        """(shape of one input sample, number of classes or None) without loading or generating the data; None
        when that cannot be known cheaply."""
        return None

    def train_rows(self, cache_dir: str | Path) -> int | None:  # noqa: ARG002 (image folders read their cache)
        """Rows of the training set (before `dataset.val_fraction`) without loading or generating the data, for the
        preflight's embeddings-file check; None when that cannot be known cheaply (the check then runs at load)."""
        return None

    def prepare(self, cache_dir: str | Path) -> bool:
        """Do the one-time work `load` would otherwise do; True when there was work to do."""
        return False

    def load(self, cache_dir: str | Path) -> Dataset:
        raise NotImplementedError


class MNIST1D(Source):
    """MNIST-1D generated offline by the `mnist1d` package (Greydanus 2020), cached as .npz.

    Defaults are the paper's: 5,000 samples, 80/20 split (4,000 train / 1,000 test), data seed 42.
    """

    def __init__(self, num_samples: int = 5000, train_split: float = 0.8, data_seed: int = 42) -> None:
        self.num_samples = num_samples
        self.train_split = train_split
        self.data_seed = data_seed

    def check(self) -> None:
        if self.num_samples < 20:
            raise UserError(f"dataset.num_samples={self.num_samples}: expected an integer >= 20")
        if not 0 < self.train_split < 1:
            raise UserError(f"dataset.train_split={self.train_split}: expected a number in (0, 1)")

    def peek(self) -> tuple[tuple[int, ...], int | None] | None:
        # the generator's own output length (its args, not the data: generating takes seconds); load() says 10
        return (self._args().final_seq_length,), 10

    def train_rows(self, cache_dir: str | Path) -> int | None:  # noqa: ARG002
        # mnist1d's make_dataset: num_samples // 10 per class (10 templates), then int(n * train_split) for training
        return int((self.num_samples // 10) * 10 * self.train_split)

    def _args(self):
        from mnist1d.data import get_dataset_args

        args = get_dataset_args()
        args.num_samples, args.train_split, args.seed = self.num_samples, self.train_split, self.data_seed
        return args

    def _path(self, cache_dir: str | Path) -> Path:
        args = self._args()
        key_src = json.dumps({k: v for k, v in vars(args).items() if k != "url"}, sort_keys=True, default=str)
        return Path(cache_dir) / "mnist1d" / (hashlib.sha256(key_src.encode()).hexdigest()[:16] + ".npz")

    def prepare(self, cache_dir: str | Path) -> bool:
        """Generate the data set into the cache (about 4 s for 5,000 samples, 30 s for 50,000)."""
        path = self._path(cache_dir)
        if path.exists():
            return False
        from mnist1d.data import make_dataset as generate

        d = generate(self._args())  # seeds numpy's global generator itself (args.seed)
        atomic_save_npz(path, x=d["x"], y=d["y"], x_test=d["x_test"], y_test=d["y_test"])
        return True

    def load(self, cache_dir: str | Path) -> Dataset:
        self.prepare(cache_dir)
        with np.load(self._path(cache_dir)) as z:
            return make_dataset("mnist1d", z["x"], z["y"], z["x_test"], z["y_test"], num_classes=10)


DIGITS_ROWS = 1797  # scikit-learn's load_digits


class Digits(Source):
    """scikit-learn's 8x8 handwritten digits (1,797 samples, shipped with the package), flattened to 64."""

    def __init__(self, test_fraction: float = 0.2, split_seed: int = 0) -> None:
        self.test_fraction = test_fraction
        self.split_seed = split_seed

    def check(self) -> None:
        if not 0 < self.test_fraction < 1:
            raise UserError(f"dataset.test_fraction={self.test_fraction}: expected a number in (0, 1)")

    def peek(self) -> tuple[tuple[int, ...], int | None] | None:
        return (64,), 10  # 8x8 images, flattened by load()

    def train_rows(self, cache_dir: str | Path) -> int | None:  # noqa: ARG002
        return DIGITS_ROWS - int(round(self.test_fraction * DIGITS_ROWS))

    def load(self, cache_dir: str | Path) -> Dataset:
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        perm = np.random.default_rng(self.split_seed).permutation(len(y))
        n_test = int(round(self.test_fraction * len(y)))  # as train_rows (len(y) == DIGITS_ROWS)
        test, train = perm[:n_test], perm[n_test:]
        x = x / 16.0
        return make_dataset("digits", x[train], y[train], x[test], y[test], num_classes=10)


class NPZ(Source):
    """A user's .npz file with arrays X_train, y_train, X_test, y_test."""

    KEYS = ("X_train", "y_train", "X_test", "y_test")
    peek_reads_files = True

    def __init__(self, path: str, name: str = "npz") -> None:
        self.path = path
        self.name = name

    def check(self) -> None:
        if not self.path:
            raise UserError("dataset.path is empty: expected the path of an .npz file")
        if not Path(self.path).is_file():
            raise UserError(f"dataset.path={self.path}: file not found; expected an .npz with {', '.join(self.KEYS)}")

    def peek(self) -> tuple[tuple[int, ...], int | None] | None:
        """X_train's sample shape from its .npy header inside the zip (X is not read), and the classes from the labels
        when they are non-negative integers (small next to X), else None; None when X_train's header cannot be read
        (not a zip, no X_train): `load` then says why, naming the file."""
        if not self.path or not Path(self.path).is_file():
            return None
        try:
            with zipfile.ZipFile(self.path) as zf:
                header = _npy_header(zf, "X_train")
                if header is None or len(header[0]) < 1:
                    return None
                classes = [_label_count(zf, k) for k in ("y_train", "y_test")]
        except Exception:  # not a zip, a damaged member: load() reports it
            return None
        return header[0][1:], (None if None in classes else max(classes))

    def train_rows(self, cache_dir: str | Path) -> int | None:  # noqa: ARG002
        """X_train's row count from its header inside the zip; None when unreadable (`load` says why)."""
        if not self.path or not Path(self.path).is_file():
            return None
        try:
            with zipfile.ZipFile(self.path) as zf:
                header = _npy_header(zf, "X_train")
        except Exception:  # not a zip, a damaged member: load() reports it
            return None
        return header[0][0] if header is not None and len(header[0]) >= 1 else None

    def load(self, cache_dir: str | Path) -> Dataset:
        self.check()
        try:
            z = np.load(self.path, allow_pickle=False)
        except Exception as e:
            raise UserError(f"dataset.path={self.path}: not a readable .npz file ({e})") from None
        with z:
            missing = [k for k in self.KEYS if k not in z.files]
            if missing:
                raise UserError(f"{self.path}: missing arrays {', '.join(missing)}; expected {', '.join(self.KEYS)}")
            arrays = {k: z[k] for k in self.KEYS}
        for split in ("train", "test"):
            x, y = arrays[f"X_{split}"], arrays[f"y_{split}"]
            if len(x) != len(y):
                raise UserError(f"{self.path}: X_{split} has {len(x)} rows but y_{split} has {len(y)}; expected equal")
            if len(x) == 0:
                raise UserError(f"{self.path}: X_{split} is empty; expected at least one row")
            if not np.issubdtype(x.dtype, np.number) or not np.isfinite(x).all():
                raise UserError(f"{self.path}: X_{split} has NaN, infinite or non-numeric values; expected finite")
            if not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
                raise UserError(f"{self.path}: y_{split} must hold non-negative integer class labels")
        if arrays["X_train"].shape[1:] != arrays["X_test"].shape[1:]:
            raise UserError(f"{self.path}: X_train and X_test have different feature shapes")
        return make_dataset(self.name, *(arrays[k] for k in self.KEYS))


# Labels up to this many values are read by NPZ.peek to count the classes (80 MB of int64 at most).
_PEEK_MAX_LABELS = 10_000_000


def _npy_header(zf: zipfile.ZipFile, key: str) -> tuple[tuple[int, ...], np.dtype] | None:
    """(shape, dtype) of `key`.npy in an .npz, from its header only; None when absent or of an unknown version."""
    if f"{key}.npy" not in zf.namelist():
        return None
    with zf.open(f"{key}.npy") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            return None
    return tuple(shape), dtype


def _label_count(zf: zipfile.ZipFile, key: str) -> int | None:
    """max + 1 of the labels `key` (as `make_dataset` counts classes); None unless non-negative integers, few enough."""
    header = _npy_header(zf, key)
    if header is None or not np.issubdtype(header[1], np.integer) or not 0 < np.prod(header[0]) <= _PEEK_MAX_LABELS:
        return None
    with zf.open(f"{key}.npy") as f:
        y = np.lib.format.read_array(f, allow_pickle=False)
    return int(y.max()) + 1 if y.min() >= 0 else None


class CIFAR(Source):
    """CIFAR-10/100 in torchvision's on-disk format under `root`; never downloads (no network here)."""

    LAYOUT = {
        10: ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch", "labels"),
        100: ("cifar-100-python", ["train"], "test", "fine_labels"),
    }
    # Per-channel mean and std of each training set, the usual normalisation (CIFAR-100's own, not CIFAR-10's).
    MEAN = {10: np.array([0.4914, 0.4822, 0.4465], dtype=np.float32),
            100: np.array([0.5071, 0.4865, 0.4409], dtype=np.float32)}
    STD = {10: np.array([0.2470, 0.2435, 0.2616], dtype=np.float32),
           100: np.array([0.2673, 0.2564, 0.2762], dtype=np.float32)}

    def __init__(self, root: str, num_classes: int = 10, download: bool = False) -> None:
        self.root = root
        self.num_classes = num_classes
        self.download = download

    def _folder(self) -> Path:
        return Path(self.root) / self.LAYOUT[self.num_classes][0]

    def check(self) -> None:
        if self.num_classes not in self.LAYOUT:
            raise UserError(f"dataset.num_classes={self.num_classes}: expected 10 or 100")
        if self.download:
            raise UserError("dataset.download=true: downloading is not supported; place the files under dataset.root")
        folder = self._folder()
        _, train_files, test_file, _ = self.LAYOUT[self.num_classes]
        missing = [f for f in [*train_files, test_file] if not (folder / f).is_file()]
        if missing:
            raise UserError(
                f"dataset.root={self.root}: CIFAR-{self.num_classes} not found; expected {folder}/ with "
                f"{', '.join(missing[:3])}{'...' if len(missing) > 3 else ''} (torchvision format)"
            )

    def peek(self) -> tuple[tuple[int, ...], int | None] | None:
        return ((3, 32, 32), self.num_classes) if self.num_classes in self.LAYOUT else None

    def _read(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """One batch file: data (n, 3072) uint8 and labels (n,). The files are Python 2 pickles; latin1 (as
        torchvision reads them) gives str keys for those and keeps the bytes keys of a batch re-saved by Python 3."""
        label_key = self.LAYOUT[self.num_classes][3]
        path = self._folder() / name
        try:
            with open(path, "rb") as f:
                batch = {k.decode() if isinstance(k, bytes) else k: v
                         for k, v in pickle.load(f, encoding="latin1").items()}
            x, y = np.asarray(batch["data"], dtype=np.uint8), np.asarray(batch[label_key], dtype=np.int64)
        except Exception as e:  # truncated, not a pickle, not a dict, keys missing
            raise UserError(f"{path}: not a CIFAR-{self.num_classes} batch ({type(e).__name__}: {first_line(e)}); "
                            f"expected torchvision's pickle with data and {label_key}") from None
        if x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or y.shape != (len(x),):
            raise UserError(f"{path}: data of shape {x.shape} with {y.size} labels; expected (n, 3072) and n labels")
        if len(y) and not 0 <= y.min() <= y.max() < self.num_classes:
            raise UserError(f"{path}: labels outside 0..{self.num_classes - 1}")
        return x, y

    def load(self, cache_dir: str | Path) -> Dataset:
        self.check()
        _, train_files, test_file, _ = self.LAYOUT[self.num_classes]
        parts = [self._read(f) for f in train_files]
        x_train, y_train = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        x_test, y_test = self._read(test_file)

        def to_float(x: np.ndarray) -> np.ndarray:
            x = x.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0
            mean, std = self.MEAN[self.num_classes], self.STD[self.num_classes]
            return (x - mean[:, None, None]) / std[:, None, None]

        return make_dataset(f"cifar{self.num_classes}", to_float(x_train), y_train, to_float(x_test), y_test,
                            num_classes=self.num_classes)
