"""A dataset card: what data a trial trained on, as one deterministic JSON-serialisable dict (issue 15).

Two cards of the same data and config are equal, key for key: nothing in a card depends on when or where it was
made, so `card_json(a) == card_json(b)` is a provenance check. Where a time is wanted, keep it outside the card.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from harness.data.base import Dataset

CARD_VERSION = 1  # bump when a field changes meaning, so readers can tell old cards from new
# Keys of conf/dataset/*.yaml that name files or folders (npz: path; npy: x_/y_ files; cifar: root; image_folder).
PATH_KEYS = ("path", "root", "train_dir", "test_dir", "x_train", "y_train", "x_test", "y_test")
# Keys that label the config group rather than describe the source (harness/build.py LABEL_KEYS, plus _target_).
_LABEL_KEYS = ("_target_", "name", "val_fraction")


def dataset_card(cfg: DictConfig, data: Dataset, source: Any = None, audit: dict | None = None) -> dict:
    """The card of `data` as the trial uses it: after the validation split and the corruptions, so its
    `fingerprint` equals the run's `dataset_fingerprint` tag.

    `source`: the built source (harness.build.build_dataset), whose class names the kind when given; else the
    kind is the last part of `cfg.dataset._target_`. `audit`: the data audit's results, copied in as given.
    """
    ds = OmegaConf.to_container(cfg.dataset, resolve=True)
    target = str(ds.get("_target_", ""))
    card: dict[str, Any] = {
        "card_version": CARD_VERSION,
        "name": data.name,
        "source": {
            "kind": type(source).__name__ if source is not None else target.rsplit(".", 1)[-1],
            "target": target,
            "paths": {k: ds[k] for k in PATH_KEYS if ds.get(k) is not None},
            "settings": {k: v for k, v in ds.items() if k not in PATH_KEYS and k not in _LABEL_KEYS},
            "val_fraction": ds.get("val_fraction"),
        },
        "fingerprint": data.fingerprint,
        "sizes": {"n_train": len(data.y_train), "n_test": len(data.y_test)},
        "input_shape": list(data.input_shape),
        "num_classes": int(data.num_classes),
        # lists indexed by class: a dict keyed "0".."10" would sort "10" before "2"
        "class_counts": {"train": _counts(data.y_train, data.num_classes),
                         "test": _counts(data.y_test, data.num_classes)},
        "corruption": _corruption(cfg, data),
    }
    if skipped := getattr(source, "skipped", None):  # unreadable files the source left out (image folders)
        card["source"]["skipped_unreadable"] = list(skipped)
    if data.val_indices is not None:
        card["sizes"]["n_val"] = len(data.val_indices)
    if data.y_val is not None:
        card["class_counts"]["val"] = _counts(data.y_val, data.num_classes)
    if audit is not None:
        card["audit"] = audit
    return _jsonable(card)


def card_json(card: dict) -> str:
    """The card as canonical text (sorted keys): the form to log (`dataset_card.json`) and to compare."""
    return json.dumps(card, sort_keys=True, indent=2) + "\n"


def _counts(labels: np.ndarray, num_classes: int) -> list[int]:
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).tolist()


def _corruption(cfg: DictConfig, data: Dataset) -> dict:
    """cfg.corruption's values, the seed, and per kind the seeded stream it drew from and the training rows it marks
    (harness/data/corrupt.py).

    Masks come from `Dataset.corruptions` ({kind: bool mask over y_train}), else from the older `noisy` field (label
    noise alone). Imbalance removes rows rather than marking them: its entry counts the rows dropped.
    """
    masks: dict[str, np.ndarray] = dict(getattr(data, "corruptions", None) or {})
    if data.noisy is not None and "label_noise" not in masks:
        masks["label_noise"] = data.noisy
    n = len(data.y_train)
    kinds: dict[str, dict] = {}
    for kind, mask in masks.items():
        count = int(np.count_nonzero(mask))
        kinds[kind] = {"stream": corruption_stream(kind), "count": count, "fraction": count / n if n else 0.0}
    dropped = getattr(data, "imbalance_dropped", None)
    if dropped is not None:
        per_class = getattr(data, "imbalance_dropped_per_class", None)
        kinds["imbalance_rho"] = {"stream": corruption_stream("imbalance_rho"), "dropped": len(dropped),
                                  "dropped_per_class": None if per_class is None else np.asarray(per_class).tolist()}
    out: dict[str, Any] = {
        "config": OmegaConf.to_container(cfg.corruption, resolve=True) if "corruption" in cfg else {},
        "seed": int(cfg.seed),
        "kinds": kinds,
    }
    duplicate_of = getattr(data, "duplicate_of", None)
    if duplicate_of is not None:  # the source row of each appended copy (exact or near duplicate), -1 elsewhere
        out["n_copies"] = int(np.count_nonzero(np.asarray(duplicate_of) >= 0))
    return out


def corruption_stream(kind: str) -> str:
    """The `numpy_rng(seed, stream)` a corruption kind draws from. Label noise keeps the plain "corruption" stream
    it had before the other kinds existed, so older runs keep their noise (harness/data/corrupt.py)."""
    return "corruption" if kind == "label_noise" else f"corruption/{kind}"


def _jsonable(x: Any) -> Any:
    """numpy scalars and arrays (an audit's results) as plain Python, so json.dumps takes the card as is."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, np.generic):
        return x.item()
    return x
