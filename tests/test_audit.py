"""Contamination audit (harness/audit.py) and the decontaminate stage against planted ground truth and a brute-force
reference: every planted exact and near copy of a test row is found and told apart, nothing else is, and the FAISS
search equals the full cosine matrix whatever the chunking."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from harness.audit import contamination, exact_pairs, space_vectors, train_max_cosine
from harness.data import Dataset
from harness.errors import UserError
from harness.signals.compute import data_signal
from strategies.base import SelectionContext, SelectionError, l2_normalise
from strategies.decontaminate import DEFAULT_THRESHOLD_COS, Decontaminate, nearest_by_cosine
from tests.conftest import run_cli

THRESHOLD = DEFAULT_THRESHOLD_COS


@dataclass
class Planted:
    x_train: np.ndarray
    x_test: np.ndarray
    exact: set[tuple[int, int]]  # (test row, training row): byte-identical copies
    near: dict[tuple[int, int], float]  # (test row, training row) -> planted cosine, >= THRESHOLD
    below: set[tuple[int, int]]  # copies planted at cosine 0.95: must not be found


def copy_at_cosine(x: np.ndarray, cos: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rows at exactly cosine `cos` to the rows of x, same norm: x's direction plus an orthogonal random one."""
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    w = rng.standard_normal(x.shape)
    w -= np.sum(w * u, axis=1, keepdims=True) * u
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    return np.linalg.norm(x, axis=1, keepdims=True) * (cos[:, None] * u + np.sqrt(1 - cos[:, None] ** 2) * w)


def plant(n_train: int = 2000, n_test: int = 300, d: int = 64, n_exact: int = 20, n_near: int = 30,
          n_below: int = 10, seed: int = 0) -> Planted:
    """Independent Gaussian float32 rows, then copies of distinct test rows written over distinct training rows:
    n_exact byte-identical, n_near at cosines in [0.985, 0.999], n_below at 0.95."""
    rng = np.random.default_rng(seed)
    x_train = rng.standard_normal((n_train, d)).astype(np.float32)
    x_test = rng.standard_normal((n_test, d)).astype(np.float32)
    src = rng.choice(n_test, n_exact + n_near + n_below, replace=False)
    dst = rng.choice(n_train, len(src), replace=False)
    e, n = n_exact, n_exact + n_near
    x_train[dst[:e]] = x_test[src[:e]]
    near_cos = rng.uniform(0.985, 0.999, n_near)
    x_train[dst[e:n]] = copy_at_cosine(x_test[src[e:n]].astype(np.float64), near_cos, rng)
    x_train[dst[n:]] = copy_at_cosine(x_test[src[n:]].astype(np.float64), np.full(n_below, 0.95), rng)
    return Planted(x_train, x_test, set(zip(src[:e].tolist(), dst[:e].tolist())),
                   dict(zip(zip(src[e:n].tolist(), dst[e:n].tolist()), near_cos.tolist())),
                   set(zip(src[n:].tolist(), dst[n:].tolist())))


def pairs(report, exact: bool) -> set[tuple[int, int]]:
    m = report.exact == exact
    return set(zip(report.test_index[m].tolist(), report.train_index[m].tolist()))


def brute_force(x_train: np.ndarray, x_test: np.ndarray, threshold: float, k: int):
    """Reference: the full test x train cosine matrix in float64, each row's top k at >= threshold, plus every
    byte-identical pair by comparing all pairs."""
    q, v = l2_normalise(x_test).astype(np.float64), l2_normalise(x_train).astype(np.float64)
    sim = q @ v.T
    top = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    knn = {(t, int(j)): sim[t, j] for t in range(len(q)) for j in top[t] if sim[t, j] >= threshold}
    exact = {(t, j) for t in range(len(x_test)) for j in range(len(x_train)) if np.array_equal(x_test[t], x_train[j])}
    return knn, exact, sim


def test_audit_finds_every_planted_pair_and_tells_exact_from_near():
    p = plant()
    report = contamination(p.x_train, p.x_test, THRESHOLD)
    assert pairs(report, exact=True) == p.exact
    assert pairs(report, exact=False) == set(p.near)
    assert (report.n_exact, report.n_near, report.n_contaminated) == (20, 30, 50)
    assert report.fraction_contaminated == pytest.approx(50 / 300)
    assert report.flagged
    found = {(t, j): c for t, j, c, ex in zip(report.test_index, report.train_index, report.cosine, report.exact)
             if not ex}
    assert all(found[key] == pytest.approx(cos, abs=1e-5) for key, cos in p.near.items())
    assert not pairs(report, exact=False) & p.below  # the 0.95 copies stay under the threshold


def test_exact_pairs_are_found_whatever_k_and_however_many_copies():
    p = plant(n_exact=5, n_near=0, n_below=0)
    t, j = next(iter(p.exact))
    x_train = np.concatenate([p.x_train, p.x_test[[t, t, t]]])  # three more copies of one test row
    report = contamination(x_train, p.x_test, THRESHOLD, k=1)
    expected = p.exact | {(t, len(p.x_train) + i) for i in range(3)}
    assert pairs(report, exact=True) == expected
    assert set(zip(*exact_pairs(x_train, p.x_test))) == expected
    assert report.n_exact == 5  # test samples, not pairs


def test_no_false_pair_on_independent_gaussian_data():
    p = plant(n_train=5000, n_test=1000, n_exact=0, n_near=0, n_below=0, seed=3)
    report = contamination(p.x_train, p.x_test, THRESHOLD, k=5)
    assert (report.n_exact, report.n_near, len(report.test_index)) == (0, 0, 0)
    assert not report.flagged
    assert report.fraction_contaminated == 0.0


@pytest.mark.parametrize("k", [1, 3])
def test_audit_equals_brute_force_reference(k):
    p = plant(n_train=400, n_test=120, d=16, n_exact=6, n_near=8, n_below=4, seed=1)
    threshold = 0.6  # low, so that many independent pairs count as near too
    knn, exact, sim = brute_force(p.x_train, p.x_test, threshold, k)
    top = -np.sort(-sim, axis=1)[:, : k + 1]
    assert np.min(np.abs(top[:, :k] - threshold)) > 1e-4  # none on the boundary, where float32 and 64 could differ
    assert np.min(top[:, k - 1] - top[:, k]) > 1e-5  # and no tie for the k-th place
    report = contamination(p.x_train, p.x_test, threshold, k=k)
    assert pairs(report, exact=True) == exact == p.exact
    assert pairs(report, exact=False) == set(knn) - exact
    assert len(pairs(report, exact=False)) > 20
    for t, j, c in zip(report.test_index, report.train_index, report.cosine):
        assert c == pytest.approx(sim[t, j], abs=1e-5)
    v_train, v_test = space_vectors(p.x_train, p.x_test, "raw")
    cos, nbr = nearest_by_cosine(v_test, v_train, k)  # the kernel, whatever the threshold: top k of each row
    assert np.array_equal(nbr, np.argsort(-sim, axis=1, kind="stable")[:, :k])
    assert np.allclose(cos, top[:, :k], atol=1e-5)


def test_chunked_search_equals_unchunked():
    p = plant(seed=2)
    whole = contamination(p.x_train, p.x_test, 0.5, k=4, chunk_rows=10_000)
    chunked = contamination(p.x_train, p.x_test, 0.5, k=4, chunk_rows=7)
    for name in ("test_index", "train_index", "exact"):
        assert np.array_equal(getattr(whole, name), getattr(chunked, name))
    # cosines to the last bit or so: FAISS computes fewer than 20 queries with its own dot products, more with BLAS
    assert np.allclose(whole.cosine, chunked.cosine, rtol=0, atol=1e-6)
    assert np.allclose(train_max_cosine(p.x_train, p.x_test, chunk_rows=13), train_max_cosine(p.x_train, p.x_test),
                       rtol=0, atol=1e-6)


def test_train_max_cosine_equals_the_column_max_of_the_full_matrix():
    p = plant(n_train=500, n_test=100, d=32, n_exact=4, n_near=5, n_below=3, seed=4)
    _, _, sim = brute_force(p.x_train, p.x_test, 1.0, 1)
    per_train = train_max_cosine(p.x_train, p.x_test)
    assert np.allclose(per_train, sim.max(axis=0), atol=1e-5)
    planted_rows = {j for _, j in p.exact} | {j for _, j in p.near}
    assert set(np.flatnonzero(per_train >= THRESHOLD).tolist()) == planted_rows


def test_exact_copies_are_exact_in_every_space_and_projection_is_the_signals_map():
    p = plant(n_near=0, n_below=0, seed=5)
    for space in ("raw", "projection"):
        report = contamination(p.x_train, p.x_test, THRESHOLD, space=space, seed=7)
        assert pairs(report, exact=True) == p.exact
        assert np.all(report.cosine[report.exact] > 0.9999)
    # test rows go through the projection signal's own matrix: as if they were training rows of one dataset
    both = np.concatenate([p.x_train, p.x_test])
    ds = Dataset("d", both, np.zeros(len(both), np.int64), both[:1], np.zeros(1, np.int64), 1, "")
    expected = data_signal("projection", ds, 7, 128)
    v_train, v_test = space_vectors(p.x_train, p.x_test, "projection", seed=7)
    assert np.allclose(np.concatenate([v_train, v_test]), expected, atol=1e-6)


def test_embedding_space_searches_the_given_embeddings():
    p = plant(seed=6)
    as_raw = contamination(p.x_train, p.x_test, THRESHOLD)
    same = contamination(p.x_train, p.x_test, THRESHOLD, space="embedding", embeddings=(p.x_train, p.x_test))
    assert np.array_equal(as_raw.test_index, same.test_index) and np.array_equal(as_raw.exact, same.exact)
    # embeddings in which nothing is near: only the byte-identical pairs remain
    rng = np.random.default_rng(0)
    noise = (rng.standard_normal((len(p.x_train), 8)), rng.standard_normal((len(p.x_test), 8)))
    other = contamination(p.x_train, p.x_test, THRESHOLD, space="embedding", embeddings=noise)
    assert pairs(other, exact=False) == set() and pairs(other, exact=True) == p.exact
    with pytest.raises(UserError, match="expected one per sample"):
        contamination(p.x_train, p.x_test, space="embedding", embeddings=(p.x_train[:-1], p.x_test))


@pytest.mark.parametrize("kwargs, message", [({"threshold_cos": 0.0}, "threshold=0.0"),
                                             ({"threshold_cos": 1.5}, "threshold=1.5"),
                                             ({"k": 0}, "k=0"), ({"space": "pixels"}, "space=pixels"),
                                             ({"chunk_rows": 0}, "chunk_rows=0")])
def test_bad_settings_raise_one_line(kwargs, message):
    x = np.zeros((4, 3), np.float32)
    with pytest.raises(UserError, match=message):
        contamination(x, x, **kwargs)


def context(n: int, signal: np.ndarray, candidates: np.ndarray | None = None) -> SelectionContext:
    cand = np.arange(n) if candidates is None else candidates
    return SelectionContext(cand, np.zeros(n, np.int64), 1, 1.0, np.random.default_rng(0),
                            {"test_similarity": signal})


def test_decontaminate_removes_exactly_the_planted_copies():
    p = plant(seed=8)
    signal = train_max_cosine(p.x_train, p.x_test)  # what the harness's test_similarity signal computes
    stage = Decontaminate(THRESHOLD)
    kept = stage.select(context(len(p.x_train), signal)).indices
    dropped = set(range(len(p.x_train))) - set(kept.tolist())
    assert dropped == {j for _, j in p.exact} | {j for _, j in p.near}
    assert {j for _, j in p.below} <= set(kept.tolist())
    assert stage.info["n_dropped"] == 50
    assert not stage.reaches_target and stage.needs == frozenset({"test_similarity"})


def test_decontaminate_thresholds_a_synthetic_signal_over_the_candidates():
    signal = np.array([0.1, 0.98, 0.979, 1.0, 0.5, 0.99], np.float32)
    cand = np.array([0, 1, 2, 4, 5])
    kept = Decontaminate(0.98).select(context(6, signal, cand)).indices
    assert kept.tolist() == [0, 2, 4]  # 1 (== threshold) and 5 dropped; 3 was no candidate
    assert Decontaminate(1.0).select(context(6, signal)).indices.tolist() == [0, 1, 2, 4, 5]
    # exact copies whose float32 cosine rounds a few ulps below 1 are still copies at threshold 1
    p = plant(seed=8)
    exact = train_max_cosine(p.x_train, p.x_test)
    kept = set(Decontaminate(1.0).select(context(len(p.x_train), exact)).indices.tolist())
    assert not kept & {j for _, j in p.exact}
    for bad in (0.0, 1.01, True):
        with pytest.raises(SelectionError, match="threshold_cos"):
            Decontaminate(bad)


def test_cli_prints_counts_and_writes_pairs(write_npz, tmp_path: Path, cache_dir: str):
    p = plant(n_train=300, n_test=80, d=16, n_exact=3, n_near=4, n_below=2, seed=9)
    rng = np.random.default_rng(0)
    path = write_npz(X_train=p.x_train, X_test=p.x_test, y_train=rng.integers(0, 3, 300),
                     y_test=rng.integers(0, 3, 80))
    out = tmp_path / "audit"
    res = run_cli("dataset=npz", f"dataset.path={path}", f"cache_dir={cache_dir}", "--space", "raw",
                  "--threshold", "0.98", "--out", str(out), module="harness.audit")
    assert res.returncode == 0, res.stderr
    row = next(ln.split() for ln in res.stdout.splitlines() if ln.startswith("raw "))
    assert row[:5] == ["raw", "3", "4", "7", f"{7 / 80:.4f}"]
    assert row[5] == "7"  # training rows at >= threshold: what decontaminate would drop
    summary = json.loads((out / "summary.json").read_text())["spaces"]["raw"]
    assert (summary["n_exact"], summary["n_near"], summary["flagged"]) == (3, 4, True)
    with np.load(out / "pairs_raw.npz") as f:
        got = set(zip(f["test_index"].tolist(), f["train_index"].tolist()))
        assert set(zip(f["test_index"][f["exact"]].tolist(), f["train_index"][f["exact"]].tolist())) == p.exact
    assert got == p.exact | set(p.near)
    csv = (out / "pairs_raw.csv").read_text().splitlines()
    assert csv[0] == "test_index,train_index,cosine,exact" and len(csv) == 1 + 7


@pytest.mark.parametrize("args, message", [
    (["--space", "pixels"], "space=pixels: expected one of raw, projection, embedding"),
    # each a subprocess of about 2 s: one in the quick loop, the rest in the full suite
    *[pytest.param(*case, marks=pytest.mark.slow) for case in (
        (["--threshold", "1.5"], "threshold=1.5: expected a cosine in (0, 1]"),
        (["--threshold", "0"], "threshold=0.0: expected a cosine in (0, 1]"),
        (["--k", "0"], "k=0: expected a positive integer"),
        (["--space", "embedding", "--embeddings", "/nonexistent/a.npy", "/nonexistent/b.npy"],
         "--embeddings /nonexistent/a.npy: file not found"),
        (["dataset=npz", "dataset.path=/nonexistent/data.npz"], "dataset.path=/nonexistent/data.npz: file not found"),
    )],
])
def test_cli_bad_input_is_one_line_before_any_compute(args, message, tmp_path: Path):
    out = tmp_path / "audit"
    res = run_cli(*args, "--out", str(out), module="harness.audit")
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("winnow-audit: error: ") and message in lines[0], res.stderr
    assert res.stdout == "" and not out.exists()


@pytest.mark.slow
def test_trial_audits_and_decontaminates_the_planted_copies(write_npz, store: str, cache_dir: str):
    from tests.conftest import runs_of

    p = plant(n_train=300, n_test=80, d=16, n_exact=3, n_near=4, n_below=2, seed=9)
    rng = np.random.default_rng(0)
    path = write_npz(X_train=p.x_train, X_test=p.x_test, y_train=rng.integers(0, 3, 300),
                     y_test=rng.integers(0, 3, 80))
    res = run_cli("dataset=npz", f"dataset.path={path}", "model=logistic", "strategy=decontaminate",
                  "audit.contamination=true", "trainer.steps=20", "trainer.epochs=null", f"tracking.uri={store}",
                  f"cache_dir={cache_dir}")
    assert res.returncode == 0, res.stderr
    run = runs_of(store).iloc[0]
    assert (run["metrics.audit_n_exact"], run["metrics.audit_n_near"]) == (3, 4)
    assert run["metrics.n_selected"] == 300 - 7  # the seven planted copies, and nothing else
    assert run["tags.audit_flagged"] == "true" and "contamination:" in res.stderr + res.stdout  # the warning
