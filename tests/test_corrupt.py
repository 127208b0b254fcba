"""Corruptions with ground truth (harness/data/corrupt.py): each mask against what was done to the rows, the
selection audit against hand-computed values, and a trial end to end: exact_dedup removes the planted copies."""

import dataclasses

import numpy as np
import pytest

from harness.config import CorruptionConfig
from harness.data.base import Dataset, make_dataset
from harness.data.corrupt import (
    add_label_noise,
    check_corruption,
    corrupt,
    long_tail_counts,
    selection_audit,
)
from harness.data.npy import NPY
from harness.errors import UserError
from tests.conftest import run_cli, runs_of


def toy(n=1000, classes=10, features=3):
    rng = np.random.default_rng(0)
    return make_dataset("toy", rng.normal(size=(n, features)), rng.integers(0, classes, n),
                        rng.normal(size=(10, features)), rng.integers(0, classes, 10), num_classes=classes)


def balanced(per_class=100, classes=10, features=40):
    """`per_class` rows of each class, classes interleaved, nonzero features (cosines defined)."""
    rng = np.random.default_rng(1)
    n = per_class * classes
    return make_dataset("balanced", rng.normal(size=(n, features)) + 0.5, np.arange(n) % classes,
                        rng.normal(size=(5, features)), np.arange(5) % classes, num_classes=classes)


def cosine(a, b):
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


ALL = CorruptionConfig(label_noise=0.2, label_noise_kind="pair", exact_duplicates=0.1, near_duplicates=0.1,
                       outliers=0.05, outlier_kind="shuffled", imbalance_rho=5)


@pytest.mark.parametrize("noise", [0.2, 0.4])
def test_label_noise_flips_exactly_that_fraction_to_other_classes(noise):
    clean = toy()
    noisy = add_label_noise(clean, noise, seed=1)
    changed = noisy.y_train != clean.y_train
    assert changed.sum() == round(noise * 1000)
    assert np.array_equal(changed, noisy.noisy)  # the ground truth marks exactly the changed labels
    assert np.array_equal(noisy.noisy, noisy.corruptions["label_noise"])
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


def test_symmetric_label_noise_through_corrupt_is_the_noise_runs_recorded_before_it_had():
    # the stream "corruption" is kept: a recorded label-noise run gets the same labels and fingerprint again
    clean = toy()
    old, new = add_label_noise(clean, 0.3, seed=4), corrupt(clean, CorruptionConfig(label_noise=0.3), seed=4)
    assert np.array_equal(old.y_train, new.y_train) and old.fingerprint == new.fingerprint
    assert np.array_equal(new.duplicate_of, np.full(1000, -1))


def test_pair_noise_moves_class_c_to_c_plus_1_exactly_on_the_masked_rows():
    clean = toy()
    noisy = corrupt(clean, CorruptionConfig(label_noise=0.3, label_noise_kind="pair"), seed=2)
    mask = noisy.corruptions["label_noise"]
    assert mask.sum() == 300 and np.array_equal(mask, noisy.noisy)
    assert np.array_equal(noisy.y_train[mask], (clean.y_train[mask] + 1) % 10)
    assert np.array_equal(noisy.y_train[~mask], clean.y_train[~mask])
    # the same rows as symmetric noise of that seed flips: the two kinds compare on equal footing
    symmetric = corrupt(clean, CorruptionConfig(label_noise=0.3), seed=2)
    assert np.array_equal(symmetric.corruptions["label_noise"], mask)


def test_exact_duplicates_are_byte_copies_of_distinct_sources_appended_with_their_labels():
    clean = toy()
    dup = corrupt(clean, CorruptionConfig(exact_duplicates=0.1), seed=0)
    mask = dup.corruptions["exact_duplicates"]
    assert len(dup.y_train) == 1100 and np.array_equal(mask, np.arange(1100) >= 1000)
    assert np.array_equal(dup.x_train[:1000], clean.x_train) and np.array_equal(dup.y_train[:1000], clean.y_train)
    src = dup.duplicate_of[mask]
    assert len(set(src.tolist())) == 100 and src.max() < 1000 and (dup.duplicate_of[~mask] == -1).all()
    assert dup.x_train[mask].tobytes() == clean.x_train[src].tobytes()
    assert np.array_equal(dup.y_train[mask], clean.y_train[src])
    assert list(dup.corruptions) == ["exact_duplicates"] and dup.noisy is None


@pytest.mark.parametrize("target", [0.99, 0.9])
def test_near_duplicates_sit_at_the_configured_mean_cosine_to_their_source(target):
    clean = balanced(per_class=400)  # 4,000 rows of 40 features, as MNIST-1D's training set
    near = corrupt(clean, CorruptionConfig(near_duplicates=1.0, near_duplicate_cosine=target), seed=0)
    mask = near.corruptions["near_duplicates"]
    src = near.duplicate_of[mask]
    assert mask.sum() == 4000 and np.array_equal(np.sort(src), np.arange(4000))
    cos = cosine(near.x_train[mask], clean.x_train[src])
    assert abs(cos.mean() - target) < 0.005, cos.mean()
    assert (cos < 1).all()  # none is an exact copy
    assert np.array_equal(near.y_train[mask], clean.y_train[src])


def test_noise_outliers_follow_the_datas_per_feature_mean_and_std_with_uniform_labels():
    clean = balanced(per_class=400, features=5)
    clean = dataclasses.replace(clean, x_train=clean.x_train * np.arange(1, 6, dtype=np.float32))  # unequal spreads
    out = corrupt(clean, CorruptionConfig(outliers=1.0, outlier_kind="noise"), seed=0)
    mask = out.corruptions["outliers"]
    x = out.x_train[mask]
    assert mask.sum() == 4000 and (out.duplicate_of == -1).all()
    np.testing.assert_allclose(x.mean(0), clean.x_train.mean(0), atol=0.1)
    np.testing.assert_allclose(x.std(0), clean.x_train.std(0), rtol=0.05)
    counts = np.bincount(out.y_train[mask], minlength=10)
    assert counts.min() > 300 and counts.max() < 500  # uniform: 400 expected per class


def test_shuffled_outliers_are_original_rows_with_their_features_permuted():
    clean = balanced(per_class=20)
    out = corrupt(clean, CorruptionConfig(outliers=0.5, outlier_kind="shuffled"), seed=3)
    x = out.x_train[out.corruptions["outliers"]]
    originals = {tuple(np.sort(r)) for r in clean.x_train}
    assert len(x) == 100 and all(tuple(np.sort(r)) in originals for r in x)  # the values of some original row
    assert not ({r.tobytes() for r in x} & {r.tobytes() for r in clean.x_train})  # in another order


def test_long_tail_counts_follow_cao_et_al():
    # hand-computed: int(100 * 10^(-c/9)) for c = 0..9
    assert long_tail_counts(np.full(10, 100), 10).tolist() == [100, 77, 59, 46, 35, 27, 21, 16, 12, 10]
    assert long_tail_counts(np.array([50, 100, 100]), 4).tolist() == [50, 50, 25]  # never more than a class has
    assert long_tail_counts(np.full(10, 100), 1).tolist() == [100] * 10


def test_imbalance_removes_rows_to_the_long_tail_and_records_which():
    clean = balanced()
    lt = corrupt(clean, CorruptionConfig(imbalance_rho=10), seed=0)
    assert np.bincount(lt.y_train, minlength=10).tolist() == [100, 77, 59, 46, 35, 27, 21, 16, 12, 10]
    dropped = lt.imbalance_dropped
    assert lt.imbalance_dropped_per_class.tolist() == [0, 23, 41, 54, 65, 73, 79, 84, 88, 90]
    assert np.array_equal(np.bincount(clean.y_train[dropped], minlength=10), lt.imbalance_dropped_per_class)
    kept = np.setdiff1d(np.arange(1000), dropped)
    assert np.array_equal(lt.x_train, clean.x_train[kept]) and np.array_equal(lt.y_train, clean.y_train[kept])
    assert lt.corruptions == {} and np.array_equal(lt.duplicate_of, np.full(len(kept), -1))


def test_combined_kinds_keep_every_mask_aligned_with_its_rows():
    clean = balanced()
    data = corrupt(clean, ALL, seed=0)
    lt = corrupt(clean, CorruptionConfig(imbalance_rho=5), seed=0)  # imbalance first, from its own stream
    n = len(lt.y_train)
    n_dup, n_near, n_out = round(0.1 * n), round(0.1 * n), round(0.05 * n)
    assert len(data.y_train) == len(data.x_train) == n + n_dup + n_near + n_out
    assert all(len(m) == len(data.y_train) for m in data.corruptions.values())
    assert np.array_equal(data.x_train[:n], lt.x_train)
    ex, near, out, noisy = (data.corruptions[k] for k in ("exact_duplicates", "near_duplicates", "outliers",
                                                          "label_noise"))
    # appended in order: exact copies, near copies, outliers
    assert np.array_equal(np.flatnonzero(ex), np.arange(n, n + n_dup))
    assert np.array_equal(np.flatnonzero(near), np.arange(n + n_dup, n + n_dup + n_near))
    assert np.array_equal(np.flatnonzero(out), np.arange(n + n_dup + n_near, len(data.y_train)))
    src = data.duplicate_of
    assert (src[ex | near] < n).all() and (src[ex | near] >= 0).all() and (src[~(ex | near)] == -1).all()
    assert data.x_train[ex].tobytes() == data.x_train[src[ex]].tobytes()
    assert abs(cosine(data.x_train[near], data.x_train[src[near]]).mean() - 0.99) < 0.005
    # pair noise on the originals; a copy carries its source's current label, and is marked noisy with it
    assert noisy[:n].sum() == round(0.2 * n)
    assert np.array_equal(data.y_train[:n][noisy[:n]], (lt.y_train[noisy[:n]] + 1) % 10)
    assert np.array_equal(data.y_train[ex | near], data.y_train[src[ex | near]])
    assert np.array_equal(noisy[ex | near], noisy[src[ex | near]]) and not noisy[out].any()
    assert np.array_equal(noisy, data.y_train != data.y_train_clean) and np.array_equal(noisy, data.noisy)


def test_corruptions_are_seeded_and_each_kind_changes_the_fingerprint():
    clean = balanced()
    a, b, c = corrupt(clean, ALL, seed=1), corrupt(clean, ALL, seed=1), corrupt(clean, ALL, seed=2)
    assert a.fingerprint == b.fingerprint and np.array_equal(a.x_train, b.x_train)
    assert all(np.array_equal(a.corruptions[k], b.corruptions[k]) for k in a.corruptions)
    assert np.array_equal(a.duplicate_of, b.duplicate_of)
    assert a.fingerprint != c.fingerprint and not np.array_equal(a.duplicate_of, c.duplicate_of)
    assert corrupt(clean, CorruptionConfig(), seed=1) is clean
    kinds = [{"label_noise": 0.1}, {"label_noise": 0.1, "label_noise_kind": "pair"}, {"exact_duplicates": 0.1},
             {"near_duplicates": 0.1}, {"outliers": 0.1}, {"outliers": 0.1, "outlier_kind": "shuffled"},
             {"imbalance_rho": 2}]
    prints = {corrupt(clean, CorruptionConfig(**k), seed=1).fingerprint for k in kinds}
    assert len(prints | {clean.fingerprint}) == len(kinds) + 1


def test_selection_audit_against_hand_computed_values():
    # 10 rows: 0-5 originals, 6-7 exact copies of 0 and 1, 8 a near copy of 2, 9 an outlier; labels of 3, 4 flipped
    x = np.zeros((10, 2), np.float32)
    masks = {"label_noise": np.isin(np.arange(10), [3, 4]), "exact_duplicates": np.isin(np.arange(10), [6, 7]),
             "near_duplicates": np.arange(10) == 8, "outliers": np.arange(10) == 9}
    data = Dataset("hand", x, np.zeros(10, np.int64), x, np.zeros(10, np.int64), 2, "fp", corruptions=masks,
                   duplicate_of=np.array([-1] * 6 + [0, 1, 2, -1]))
    got = selection_audit(data, np.array([0, 1, 2, 3, 6, 8]))  # removed: 4, 5, 7, 9
    assert got["kept_label_noise_fraction"] == 0.5 and got["kept_outliers_fraction"] == 0
    assert got["kept_exact_duplicates_fraction"] == 0.5 and got["kept_near_duplicates_fraction"] == 1
    assert got["precision_exact_duplicates_removal"] == 0.25 and got["recall_exact_duplicates_removal"] == 0.5
    assert got["precision_near_duplicates_removal"] == 0 and got["recall_near_duplicates_removal"] == 0
    assert set(got) == {"kept_label_noise_fraction", "kept_exact_duplicates_fraction", "kept_near_duplicates_fraction",
                        "kept_outliers_fraction", "precision_exact_duplicates_removal",
                        "recall_exact_duplicates_removal", "precision_near_duplicates_removal",
                        "recall_near_duplicates_removal"}
    everything = selection_audit(data, np.arange(10))  # nothing removed: removal precision undefined
    assert np.isnan(everything["precision_exact_duplicates_removal"])
    assert everything["recall_exact_duplicates_removal"] == 0
    no_copies = dataclasses.replace(data, corruptions={"exact_duplicates": np.zeros(10, bool)})
    assert np.isnan(selection_audit(no_copies, np.arange(5))["recall_exact_duplicates_removal"])
    # removing every surplus copy of both kinds and nothing else is perfect for each kind, and so is dropping the
    # sources and keeping the copies (a dedup stage may keep either member of a group)
    for keep in ([0, 1, 2, 3, 4, 5, 9], [3, 4, 5, 6, 7, 8, 9]):
        perfect = selection_audit(data, np.array(keep))
        for kind in ("exact_duplicates", "near_duplicates"):
            assert perfect[f"precision_{kind}_removal"] == perfect[f"recall_{kind}_removal"] == 1, (keep, kind)
    # removing a whole group (source and copy) removes one row too many: a wrong removal
    whole = selection_audit(data, np.array([1, 2, 3, 4, 5, 7, 8, 9]))  # removed: 0, 6
    assert whole["recall_exact_duplicates_removal"] == 0.5 and whole["precision_exact_duplicates_removal"] == 0.5


@pytest.mark.parametrize("override, message", [
    ({"label_noise_kind": "asymmetric"}, "corruption.label_noise_kind=asymmetric: expected one of symmetric, pair"),
    ({"exact_duplicates": 1.5}, "corruption.exact_duplicates=1.5: expected a fraction of the training rows in [0, 1]"),
    ({"near_duplicates": -0.1}, "corruption.near_duplicates=-0.1: expected a fraction of the training rows in [0, 1]"),
    ({"near_duplicate_cosine": 1.0}, "corruption.near_duplicate_cosine=1.0: expected a cosine similarity in (0, 1)"),
    ({"outliers": True}, "corruption.outliers=True: expected a fraction"),
    ({"outlier_kind": "uniform"}, "corruption.outlier_kind=uniform: expected one of noise, shuffled"),
    ({"imbalance_rho": 0.5}, "corruption.imbalance_rho=0.5: expected a ratio of largest to smallest class >= 1"),
    ({"label_noise": float("nan")}, "corruption.label_noise=nan: expected a number in [0, 1)"),
])
def test_bad_values_are_one_line_user_errors_naming_the_key(override, message):
    with pytest.raises(UserError) as err:
        check_corruption(CorruptionConfig(**override))
    assert message in str(err.value) and "\n" not in str(err.value)


def write_npy(tmp_path, data):
    paths = {}
    for key, array in (("x_train", data.x_train), ("y_train", data.y_train), ("x_test", data.x_test),
                       ("y_test", data.y_test)):
        paths[key] = str(tmp_path / f"{key}.npy")
        np.save(paths[key], array)
    return paths


def test_rows_left_in_their_file_can_be_removed_and_repeated_but_not_computed(tmp_path):
    clean = balanced()
    paths = write_npy(tmp_path, clean)
    in_file = NPY(**paths).load(tmp_path / "cache")
    c = CorruptionConfig(imbalance_rho=5, exact_duplicates=0.1, label_noise=0.1)
    from_file, from_memory = corrupt(in_file, c, seed=0), corrupt(clean, c, seed=0)
    assert np.array_equal(from_file.x_train.take(slice(None)), from_memory.x_train)  # the same rows, never loaded
    assert np.array_equal(from_file.y_train, from_memory.y_train)
    assert from_file.fingerprint != in_file.fingerprint
    for key in ("near_duplicates", "outliers"):
        with pytest.raises(UserError, match=rf"corruption.{key}=0.1: computes new feature rows, but "
                                            "dataset.in_memory=false"):
            corrupt(in_file, CorruptionConfig(**{key: 0.1}), seed=0)


def test_exact_dedup_removes_exactly_the_planted_copies_of_mnist1d(tmp_path):
    from harness.data.sources import MNIST1D
    from strategies.base import SelectionContext
    from strategies.dedup import ExactDedup

    clean = MNIST1D().load(tmp_path)
    data = corrupt(clean, CorruptionConfig(exact_duplicates=0.1), seed=0)
    copies = data.corruptions["exact_duplicates"]
    assert copies.sum() == 400
    # surplus rows MNIST-1D itself repeats (none at the time of writing) are not planted and stay out of the check
    _, first = np.unique(clean.x_train.reshape(len(clean.x_train), -1), axis=0, return_index=True)
    natural = np.setdiff1d(np.arange(len(clean.y_train)), first)
    ctx = SelectionContext(candidates=np.arange(len(data.y_train)), labels=data.y_train, num_classes=10,
                           fraction=1.0, rng=np.random.default_rng(0), signals={"inputs": data.x_train})
    kept = ExactDedup().select(ctx).indices
    audit = selection_audit(data, np.union1d(kept, natural))
    assert audit["precision_exact_duplicates_removal"] == 1 and audit["recall_exact_duplicates_removal"] == 1
    assert audit["kept_exact_duplicates_fraction"] == 0


@pytest.mark.slow  # a CLI trial (~15 s)
def test_a_trial_logs_the_ground_truth_and_what_exact_dedup_did_to_it(store, cache_dir):
    res = run_cli("strategy=exact_dedup", "trainer.epochs=1", "corruption.exact_duplicates=0.1",
                  "corruption.near_duplicates=0.05", "corruption.outliers=0.05", "corruption.label_noise=0.2",
                  "corruption.label_noise_kind=pair", "corruption.imbalance_rho=2", f"tracking.uri={store}",
                  f"cache_dir={cache_dir}")
    assert res.returncode == 0, res.stderr
    run = runs_of(store).iloc[0]
    import mlflow

    path = mlflow.artifacts.download_artifacts(run_id=run["run_id"], artifact_path="corruption_ground_truth.npz",
                                               tracking_uri=store)
    with np.load(path) as z:
        gt = {k: z[k] for k in z.files}
    assert set(gt) == {"label_noise", "exact_duplicates", "near_duplicates", "outliers", "duplicate_of",
                       "imbalance_dropped", "imbalance_dropped_per_class"}
    n_train = run["metrics.n_train"]
    assert all(len(gt[k]) == n_train for k in ("label_noise", "exact_duplicates", "near_duplicates", "outliers"))
    for kind in ("label_noise", "exact_duplicates", "near_duplicates", "outliers"):
        assert run[f"metrics.n_{kind}"] == gt[kind].sum()
    assert run["metrics.n_imbalance_dropped"] == len(gt["imbalance_dropped"]) == gt["imbalance_dropped_per_class"].sum()
    # THE check: exact_dedup removes every planted surplus copy and nothing else
    assert run["metrics.precision_exact_duplicates_removal"] == 1
    assert run["metrics.recall_exact_duplicates_removal"] == 1
    assert run["metrics.n_selected"] == n_train - gt["exact_duplicates"].sum()
    assert run["metrics.kept_exact_duplicates_fraction"] == 0
    assert run["metrics.kept_near_duplicates_fraction"] == 1 and run["metrics.kept_outliers_fraction"] == 1
    # nothing near removed and nothing removed wrongly: near precision is undefined, its recall 0
    assert np.isnan(run["metrics.precision_near_duplicates_removal"])
    assert run["metrics.recall_near_duplicates_removal"] == 0
    # noisy rows removed are exactly the copies of noisy rows
    noisy = gt["label_noise"]
    expected_kept = 1 - (noisy & gt["exact_duplicates"]).sum() / noisy.sum()
    assert run["metrics.kept_label_noise_fraction"] == pytest.approx(expected_kept)
    assert run["metrics.noisy_selected_fraction"] == pytest.approx((noisy & ~gt["exact_duplicates"]).sum()
                                                                   / run["metrics.n_selected"])


def test_new_corruption_keys_unset_leave_trial_identities_as_they_were(compose_cfg):
    from omegaconf import OmegaConf

    from harness.config import config_hash

    cfg = compose_cfg("strategy=random")
    before = OmegaConf.merge(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "corruption"]),
                             {"corruption": {"label_noise": 0.0}})
    assert config_hash(cfg) == config_hash(before)
    assert config_hash(compose_cfg("strategy=random", "corruption.outlier_kind=shuffled")) == config_hash(cfg)
    assert config_hash(compose_cfg("strategy=random", "corruption.outliers=0.1")) != config_hash(cfg)
    assert len({config_hash(compose_cfg("strategy=random", "corruption.outliers=0.1", f"corruption.outlier_kind={k}"))
                for k in ("noise", "shuffled")}) == 2


def test_validate_stops_bad_corruption_values_and_file_embeddings_with_changed_rows(compose_cfg):
    from harness.config import validate

    with pytest.raises(UserError, match=r"corruption.imbalance_rho=0.5: expected a ratio"):
        validate(compose_cfg("corruption.imbalance_rho=0.5"), check_files=False)
    with pytest.raises(UserError, match=r"corruption.exact_duplicates=0.1 adds or removes training rows"):
        validate(compose_cfg("strategy=kcenter", "strategy.embedding=file", "embeddings.path=/x/e.npy",
                             "corruption.exact_duplicates=0.1"), check_files=False)
