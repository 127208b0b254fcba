"""The report, built from a tracking store of synthetic runs with known metrics (no training)."""

from __future__ import annotations

import itertools
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient

from harness.report import load_runs, summarise
from harness.report.cli import build
from harness.report.stats import pareto_mask, sign_flip_p
from tests.conftest import HANG_S, REPO

EXPERIMENT = "synth"
SEEDS = range(6)
rng = np.random.default_rng(123)
# Known accuracies and costs per (dataset, model, strategy, fraction) and seed.
FULL_ACC = 0.90 + rng.normal(0, 0.01, 6)
RANDOM_ACC = {0.3: 0.80 + rng.normal(0, 0.01, 6), 0.5: 0.85 + rng.normal(0, 0.01, 6)}
# el2n beats random at 0.5 on every seed (a paired gain of 1 to 3 points); at 0.3 it is mixed
EL2N_ACC = {0.5: RANDOM_ACC[0.5] + rng.uniform(0.01, 0.03, 6), 0.3: RANDOM_ACC[0.3] + rng.normal(0, 0.01, 6)}
# el2n at 0.3 has a slow selection: dominated by random 0.5 (cheaper and more accurate)
TOTAL_S = {("full", 1.0): 100.0, ("random", 0.3): 30.0, ("random", 0.5): 50.0, ("el2n", 0.3): 60.0,
           ("el2n", 0.5): 55.0}
ENERGY_J_PER_S = 200.0  # d1 runs log total_energy_j = 200 W x total_s (+ a per-seed wobble)


def _log(client: MlflowClient, exp_id: str, tags: dict, metrics: dict, status: str = "FINISHED",
         start_ms: int = 0, curves: dict[str, dict[int, float]] | None = None) -> str:
    """`curves`: per-epoch histories {metric: {epoch: value}}, logged with step = epoch as a trial does."""
    run = client.create_run(exp_id, tags={k: str(v) for k, v in tags.items()}, start_time=start_ms)
    rid = run.info.run_id
    history = [Metric(k, float(v), 0, step) for k, pts in (curves or {}).items() for step, v in pts.items()]
    client.log_batch(rid, metrics=[Metric(k, float(v), 0, 0) for k, v in metrics.items()] + history,
                     tags=[RunTag(k, str(v)) for k, v in tags.items()])
    client.set_terminated(rid, status=status)
    return rid


def _tags(dataset, model, strategy, fraction, seed):
    return {"dataset": dataset, "model": model, "strategy": strategy, "fraction": fraction, "seed": seed}


def _d1_metrics(acc, total_s, seed):
    return {"test_accuracy": acc, "total_s": total_s + seed, "selection_s": 1.0,
            "total_energy_j": ENERGY_J_PER_S * (total_s + seed)}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    uri = f"sqlite:///{tmp_path_factory.mktemp('report') / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment(EXPERIMENT)
    t = 1_000_000
    for s in SEEDS:
        _log(client, exp, _tags("d1", "m1", "full", 1.0, s), _d1_metrics(FULL_ACC[s], 100.0, s), start_ms=t + s)
        for f in (0.3, 0.5):
            _log(client, exp, _tags("d1", "m1", "random", f, s), _d1_metrics(RANDOM_ACC[f][s], TOTAL_S["random", f], s),
                 start_ms=t + s)
            if not (f == 0.3 and s == 5):  # el2n 0.3 seed 5 crashed
                _log(client, exp, _tags("d1", "m1", "el2n", f, s), _d1_metrics(EL2N_ACC[f][s], TOTAL_S["el2n", f], s),
                     start_ms=t + s)
    _log(client, exp, {**_tags("d1", "m1", "el2n", 0.3, 5), "error": "RuntimeError: CUDA out of memory"}, {},
         status="FAILED", start_ms=t)
    # an earlier run of el2n 0.5 seed 0 with another accuracy: the later one must win
    _log(client, exp, _tags("d1", "m1", "el2n", 0.5, 0), _d1_metrics(0.10, 55.0, 0), start_ms=t - 1000)
    # a reproduction of a full run must not count as a second seed-0 run
    _log(client, exp, {**_tags("d1", "m1", "full", 1.0, 0), "reproduction_of": "abc"}, _d1_metrics(0.2, 1.0, 0),
         start_ms=t + 100)
    # a second dataset with one random seed, no baseline and no energy meter
    _log(client, exp, _tags("d2", "m2", "random", 0.5, 0), {"test_accuracy": 0.5, "total_s": 7.0}, start_ms=t)
    return uri


@pytest.fixture(scope="module")
def report(store):
    return summarise(load_runs(store, EXPERIMENT), EXPERIMENT)


def row(report, dataset="d1", model="m1", strategy="random", fraction=0.5) -> pd.Series:
    s = report.summary
    hit = s[(s.dataset == dataset) & (s.model == model) & (s.strategy == strategy) & np.isclose(s.fraction, fraction)]
    assert len(hit) == 1
    return hit.iloc[0]


def reference_bootstrap(values, resamples=10_000, seed=0):
    """Percentile bootstrap of the mean, one resample at a time."""
    values = np.asarray(values)
    gen = np.random.default_rng(seed)
    means = [values[gen.integers(0, len(values), size=len(values))].mean() for _ in range(resamples)]
    return np.percentile(means, 2.5), np.percentile(means, 97.5)


@pytest.mark.parametrize("strategy, fraction, values", [
    ("full", 1.0, FULL_ACC), ("random", 0.3, RANDOM_ACC[0.3]), ("el2n", 0.5, EL2N_ACC[0.5]),
    ("el2n", 0.3, EL2N_ACC[0.3][:5]),
])
def test_mean_and_ci_match_a_direct_bootstrap(report, strategy, fraction, values):
    r = row(report, strategy=strategy, fraction=fraction)
    assert r["n"] == len(values)
    assert r["accuracy"] == pytest.approx(np.mean(values), abs=1e-12)
    lo, hi = reference_bootstrap(values)
    assert (r["accuracy_lo"], r["accuracy_hi"]) == pytest.approx((lo, hi), abs=1e-12)
    assert lo < np.mean(values) < hi


def test_one_seed_has_no_interval_and_no_baseline_gives_na(report):
    r = row(report, dataset="d2", model="m2")
    assert r["n"] == 1 and r["accuracy"] == 0.5
    assert np.isnan(r["accuracy_lo"]) and np.isnan(r["delta_accuracy"]) and np.isnan(r["speedup"])
    assert np.isnan(r["total_energy_j"])  # never logged: n/a, not 0


def test_baseline_is_full_of_the_same_dataset_and_model(report):
    r = row(report, strategy="random", fraction=0.3)
    assert r["delta_accuracy"] == pytest.approx(RANDOM_ACC[0.3].mean() - FULL_ACC.mean(), abs=1e-12)
    full_s = np.mean([100.0 + s for s in SEEDS])
    random_s = np.mean([30.0 + s for s in SEEDS])
    assert r["total_s"] == pytest.approx(random_s)
    assert r["speedup"] == pytest.approx(full_s / random_s)
    assert r["savings_time"] == pytest.approx(1 - random_s / full_s)
    assert r["savings_energy"] == pytest.approx(1 - random_s / full_s)  # energy is proportional to time here
    # the delta interval resamples both groups independently; it must contain the point estimate
    assert r["delta_lo"] < r["delta_accuracy"] < r["delta_hi"] < 0
    full = row(report, strategy="full", fraction=1.0)
    assert full["delta_accuracy"] == 0 and full["speedup"] == 1
    assert full["n"] == 6  # the reproduction run is not a seventh seed


def test_repeated_seed_keeps_the_latest_run(report):
    r = row(report, strategy="el2n", fraction=0.5)
    assert r["n"] == 6 and r["accuracy"] == pytest.approx(EL2N_ACC[0.5].mean(), abs=1e-12)
    assert len(report.repeated) == 1 and report.repeated.iloc[0]["seed"] == 0


def brute_sign_flip_p(d):
    d = np.asarray(d)
    obs = abs(d.mean())
    hits = [abs(np.mean(np.array(signs) * d)) >= obs - 1e-12 for signs in itertools.product([1, -1], repeat=len(d))]
    return sum(hits) / len(hits)


def test_paired_comparison_against_random_by_seed(report):
    gain = row(report, strategy="el2n", fraction=0.5)
    d = EL2N_ACC[0.5] - RANDOM_ACC[0.5]
    assert gain["vs_reference_n"] == 6
    assert gain["vs_reference_diff"] == pytest.approx(d.mean(), abs=1e-12)
    assert gain["vs_reference_p"] == pytest.approx(2 / 64)  # all six differences positive: only +/- all-same as extreme
    assert gain["vs_reference_significant"]
    assert 0 < gain["vs_reference_lo"] < gain["vs_reference_diff"] < gain["vs_reference_hi"]

    mixed = row(report, strategy="el2n", fraction=0.3)  # five shared seeds: seed 5 failed
    d = EL2N_ACC[0.3][:5] - RANDOM_ACC[0.3][:5]
    assert mixed["vs_reference_n"] == 5
    assert mixed["vs_reference_p"] == pytest.approx(brute_sign_flip_p(d))
    assert not mixed["vs_reference_significant"]  # 5 pairs: p >= 2/32 whatever the data
    assert pd.isna(row(report, strategy="random")["vs_reference_significant"])


@pytest.mark.parametrize("n", [3, 7, pytest.param(20, marks=pytest.mark.slow)])  # 2^20 sign patterns: ~6 s
def test_sign_flip_p_matches_enumeration(n):
    d = np.random.default_rng(n).normal(0.3, 1, n)
    if n <= 16:
        assert sign_flip_p(d) == pytest.approx(brute_sign_flip_p(d))
    else:  # sampled beyond 16 pairs: within Monte Carlo error of the exact value over 2**20 patterns
        assert sign_flip_p(d) == pytest.approx(brute_sign_flip_p(d), abs=0.01)


def brute_pareto(cost, acc):
    n = len(cost)
    return np.array([not any(cost[j] <= cost[i] and acc[j] >= acc[i] and (cost[j] < cost[i] or acc[j] > acc[i])
                             for j in range(n)) for i in range(n)])


@pytest.mark.parametrize("seed", range(20))
def test_pareto_mask_matches_brute_force_dominance(seed):
    gen = np.random.default_rng(seed)
    cost = gen.integers(0, 8, 25).astype(float)  # small integer grids force ties on both axes
    acc = gen.integers(0, 8, 25).astype(float)
    assert (pareto_mask(cost, acc) == brute_pareto(cost, acc)).all()


def test_report_pareto_column_matches_brute_force(report):
    s = report.summary[report.summary.dataset == "d1"]
    expected = brute_pareto(s["total_s"].to_numpy(), s["accuracy"].to_numpy())
    assert (s["pareto"].to_numpy() == expected).all()
    assert s["pareto"].any() and not s["pareto"].all()


def test_missing_seeds_and_failed_runs(report):
    missing = report.missing.set_index(["dataset", "strategy", "fraction"])
    assert missing.loc[("d1", "el2n", 0.3), "missing_seeds"] == "5"
    assert missing.loc[("d2", "random", 0.5), "missing_seeds"] == "1 2 3 4 5"
    assert len(missing) == 2
    assert len(report.failed) == 1
    failed = report.failed.iloc[0]
    assert failed["status"] == "FAILED" and failed["error"] == "RuntimeError: CUDA out of memory"
    assert (failed["strategy"], failed["fraction"], failed["seed"]) == ("el2n", 0.3, 5)


def test_all_output_files_are_written(store, tmp_path):
    out = tmp_path / "rep"
    paths = build(EXPERIMENT, store, out)
    names = {p.name for p in out.iterdir()}
    assert {"report.md", "report.tex", "summary.csv", "report.html", "failed_runs.csv", "missing_seeds.csv"} <= names
    for stem in ("accuracy_vs_total_s_d1_m1", "accuracy_vs_total_energy_j_d1_m1", "accuracy_vs_fraction_d1_m1",
                 "accuracy_vs_total_s_d2_m2", "accuracy_by_strategy_d2_m2"):  # d2: one fraction
        assert (out / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "<svg" in (out / f"{stem}.svg").read_text()
    assert not (out / "accuracy_vs_total_energy_j_d2_m2.png").exists()  # d2 logged no energy
    assert not list(out.glob("anytime_*"))  # these runs logged no per-epoch histories: no curves, no error

    csv = pd.read_csv(paths["csv"], na_values=["n/a"])
    r = csv[(csv.strategy == "random") & (csv.fraction == 0.3)].iloc[0]
    assert r["accuracy"] == pytest.approx(RANDOM_ACC[0.3].mean(), rel=1e-9)
    assert csv[csv.dataset == "d2"]["total_energy_j"].isna().all()

    md = paths["md"].read_text()
    el2n_05 = next(line for line in md.splitlines() if line.startswith("| el2n | 0.5 |"))
    assert f"{EL2N_ACC[0.5].mean() * 100:.2f}" in el2n_05 and "p=0.031 n=6 *" in el2n_05
    assert "RuntimeError: CUDA out of memory" in md and "| 1 2 3 4 5 |" in md

    tex = paths["tex"].read_text()
    assert tex.count(r"\toprule") == 2 and r"\bottomrule" in tex and r"el2n & 0.5 & 6" in tex

    page = paths["html"].read_text()
    assert page.count("<svg") == 5 and "<img" not in page and "http" not in page.split("<svg")[0]
    assert "CUDA out of memory" in page


@pytest.mark.slow
def test_cli_prints_the_table_and_rejects_an_unknown_experiment(store, tmp_path):
    res = subprocess.run([sys.executable, "-m", "harness.report", EXPERIMENT, "--tracking-uri", store,
                          "--out", str(tmp_path / "r")], cwd=REPO, capture_output=True, text=True, timeout=HANG_S)
    assert res.returncode == 0, res.stderr
    assert "| full | 1 | 6 |" in res.stdout and (tmp_path / "r" / "report.html").is_file()
    res = subprocess.run([sys.executable, "-m", "harness.report", "nosuch", "--tracking-uri", store],
                         cwd=REPO, capture_output=True, text=True, timeout=HANG_S)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [f"winnow-report: error: experiment=nosuch: not found in {store}; "
                                               "expected one of: Default, synth"]


# ---- panels split by config params (--by), with another baseline and reference --------------------------------

CURRIC_ACC = {  # (label noise, strategy) -> accuracy per seed; the curriculum gains only under noise
    (0.0, "standard"): 0.90 + rng.normal(0, 0.005, 6), (0.0, "curriculum-linear"): 0.90 + rng.normal(0, 0.005, 6),
    (0.4, "standard"): 0.60 + rng.normal(0, 0.005, 6), (0.4, "curriculum-linear"): 0.70 + rng.normal(0, 0.005, 6),
}


@pytest.fixture(scope="module")
def curric_store(tmp_path_factory) -> str:
    from mlflow.entities import Param

    uri = f"sqlite:///{tmp_path_factory.mktemp('curric') / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("curric")
    for (noise, strategy), accs in CURRIC_ACC.items():
        for s, acc in enumerate(accs):
            metrics = {"test_accuracy": acc, "total_s": 10.0, "gpu_hours": 0.0}
            rid = _log(client, exp, _tags("d1", "m1", strategy, 1.0, s), metrics)
            client.log_batch(rid, params=[Param("corruption.label_noise", str(noise)), Param("trainer.epochs", "15")])
    return uri


def test_by_params_split_panels_each_with_its_own_baseline_and_reference(curric_store, tmp_path):
    runs = load_runs(curric_store, "curric", by=["corruption.label_noise"])
    rep = summarise(runs, "curric", by=["corruption.label_noise"], baseline="standard", reference="standard")
    s = rep.summary.set_index(["corruption.label_noise", "strategy"])
    assert len(s) == 4
    for noise in (0.0, 0.4):
        cur, std = CURRIC_ACC[noise, "curriculum-linear"], CURRIC_ACC[noise, "standard"]
        r = s.loc[(noise, "curriculum-linear")]
        assert r["delta_accuracy"] == pytest.approx(cur.mean() - std.mean(), abs=1e-12)
        assert r["vs_reference_diff"] == pytest.approx((cur - std).mean(), abs=1e-12)  # paired with standard
        assert s.loc[(noise, "standard"), "delta_accuracy"] == 0.0
    assert s.loc[(0.4, "curriculum-linear"), "vs_reference_significant"]  # +10 points on all 6 seeds

    paths = build("curric", curric_store, tmp_path, by=["corruption.label_noise"], baseline="standard",
                  reference="standard")
    md = paths["md"].read_text()
    assert "## d1 / m1 / corruption.label_noise=0" in md and "## d1 / m1 / corruption.label_noise=0.4" in md
    assert "Δ vs standard pp" in md and "the standard runs of the same dataset and model and corruption" in md
    assert (tmp_path / "accuracy_by_strategy_d1_m1_corruption.label_noise_0.4.png").exists()
    assert not list(tmp_path.glob("accuracy_vs_gpu_hours_*"))  # CPU runs: 0 GPU-hours everywhere, no figure


def test_by_an_unlogged_param_is_a_one_line_error(curric_store):
    proc = subprocess.run([sys.executable, "-m", "harness.report", "curric", "--tracking-uri", curric_store,
                           "--by", "trainer.epoch"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "winnow-report: error: --by trainer.epoch: no run of experiment curric logged this parameter; expected a "
        "config key such as trainer.epochs or corruption.label_noise"]


def test_selection_share_is_the_mean_cost_of_choosing_data_over_the_mean_total(report):
    # d1 runs log selection_s = 1 s and no probe: share = 1 / mean total_s of the group
    r = row(report, strategy="el2n", fraction=0.5)
    assert r["selection_share"] == pytest.approx(1.0 / r["total_s"])
    assert np.isnan(row(report, dataset="d2", model="m2")["selection_share"])  # d2 logged no selection cost


def test_every_cost_a_trial_logs_has_a_report_column():
    from harness.meters import cost_figures
    from harness.report.summary import COSTS

    logged = cost_figures({"total_s": 10.0, "total_energy_j": 100.0}, 1, 475.0, 2.5, 0.04, cpu_cores=2)
    assert set(logged) <= set(COSTS)


# ---- anytime curves: per-epoch accuracy against cost so far, from metric histories ------------------------------

# (dataset, strategy, fraction, seed) -> {epoch: (accuracy, eval_cum_s)}; energy is 100 J/s where metered
ANYTIME = {
    ("d1", "full", 1.0, 0): {1: (0.50, 10.0), 2: (0.70, 20.0), 3: (0.80, 30.0)},
    ("d1", "full", 1.0, 1): {1: (0.60, 12.0), 2: (0.80, 22.0), 3: (0.90, 32.0)},
    ("d1", "full", 1.0, 2): {1: (0.40, 14.0), 2: (0.60, 24.0), 3: (0.70, 34.0)},
    ("d1", "random", 0.5, 0): {1: (0.30, 3.0), 2: (0.50, 6.0), 3: (0.60, 9.0)},
    ("d1", "random", 0.5, 1): {1: (0.40, 5.0), 2: (0.60, 8.0)},  # never evaluated epoch 3
    ("d2", "random", 0.5, 0): {1: (0.20, 1.0), 2: (0.30, 2.0)},  # d2: data-parallel, no energy (NaN)
    ("d2", "random", 0.5, 1): {1: (0.40, 3.0), 2: (0.50, 4.0)},
}


@pytest.fixture(scope="module")
def anytime_store(tmp_path_factory) -> str:
    uri = f"sqlite:///{tmp_path_factory.mktemp('anytime') / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("anytime")
    t = 1_000_000
    for (dataset, strategy, fraction, seed), pts in ANYTIME.items():
        energy = {e: c * 100 if dataset == "d1" else float("nan") for e, (_, c) in pts.items()}
        curves = {"epoch_test_accuracy": {e: a for e, (a, _) in pts.items()},
                  "eval_cum_s": {e: c for e, (_, c) in pts.items()}, "eval_cum_energy_j": energy}
        last = max(pts)
        _log(client, exp, _tags(dataset, "m1", strategy, fraction, seed),
             {"test_accuracy": pts[last][0], "total_s": pts[last][1] + 1}, start_ms=t, curves=curves)
    bogus = {"epoch_test_accuracy": {1: 0.01, 2: 0.01, 3: 0.01}, "eval_cum_s": {1: 1e3, 2: 2e3, 3: 3e3}}
    # an earlier run of random 0.5 seed 0 (the later one is used) and a failed seed 3: both out of the curves
    _log(client, exp, _tags("d1", "m1", "random", 0.5, 0), {"test_accuracy": 0.01, "total_s": 1.0}, start_ms=t - 1,
         curves=bogus)
    _log(client, exp, _tags("d1", "m1", "random", 0.5, 3), {}, status="FAILED", start_ms=t, curves=bogus)
    # runs logged before eval_cum_s existed: accuracy history only; d3 has nothing else
    old = {"epoch_test_accuracy": {1: 0.9, 2: 0.9, 3: 0.9}}
    for dataset, seed in (("d1", 2), ("d3", 0), ("d3", 1)):
        _log(client, exp, _tags(dataset, "m1", "random", 0.5, seed), {"test_accuracy": 0.9, "total_s": 5.0},
             start_ms=t, curves=old)
    return uri


def test_bootstrap_columns_match_one_bootstrap_per_column():
    from harness.report.stats import bootstrap_mean_ci, bootstrap_mean_ci_columns

    x = np.random.default_rng(7).normal(0.8, 0.05, (5, 4))
    lo, hi = bootstrap_mean_ci_columns(x)
    for j in range(x.shape[1]):
        assert (lo[j], hi[j]) == pytest.approx(bootstrap_mean_ci(x[:, j]), abs=1e-12)
    assert np.isnan(bootstrap_mean_ci_columns(x[:1])[0]).all()  # one seed: no interval


def test_anytime_curves_are_means_over_the_used_seeds(anytime_store, monkeypatch):
    from harness.report.curves import load_curves, mean_curves
    from harness.report.stats import bootstrap_mean_ci

    rep = summarise(load_runs(anytime_store, "anytime"), "anytime")
    called = []
    real = MlflowClient.get_metric_history
    monkeypatch.setattr(MlflowClient, "get_metric_history",
                        lambda self, rid, key: called.append(rid) or real(self, rid, key))
    tidy = load_curves(anytime_store, rep.runs_used, rep.panel)
    # old runs (no eval_cum_s), the superseded and the failed run are skipped, the old ones without a history call
    assert set(tidy["run_id"]) == set(called)
    assert sorted(set(zip(tidy.dataset, tidy.strategy, tidy.seed))) == sorted((k[0], k[1], k[3]) for k in ANYTIME)
    assert tidy[tidy.dataset == "d2"]["cum_energy_j"].isna().all()

    c = mean_curves(tidy, rep.panel).set_index(["dataset", "strategy", "epoch"])
    full = c.loc[("d1", "full")]
    assert list(full.index) == [1, 2, 3] and (full["n"] == 3).all()
    assert full["accuracy"].to_numpy() == pytest.approx([0.50, 0.70, 0.80])
    assert full["cum_s"].to_numpy() == pytest.approx([12.0, 22.0, 32.0])
    assert full["cum_energy_j"].to_numpy() == pytest.approx([1200.0, 2200.0, 3200.0])
    assert (full.loc[2, "accuracy_lo"], full.loc[2, "accuracy_hi"]) == pytest.approx(
        bootstrap_mean_ci([0.70, 0.80, 0.60]), abs=1e-12)
    rand = c.loc[("d1", "random")]  # seeds 0 and 1; epoch 3 only seed 0 evaluated: dropped
    assert list(rand.index) == [1, 2] and (rand["n"] == 2).all()
    assert rand["accuracy"].to_numpy() == pytest.approx([0.35, 0.55])
    assert rand["cum_s"].to_numpy() == pytest.approx([4.0, 7.0])
    assert rand["cum_energy_j"].to_numpy() == pytest.approx([400.0, 700.0])
    d2 = c.loc[("d2", "random")]
    assert d2["accuracy"].to_numpy() == pytest.approx([0.30, 0.40]) and d2["cum_energy_j"].isna().all()
    assert "d3" not in c.index.get_level_values("dataset")


def test_report_draws_anytime_figures(anytime_store, tmp_path):
    paths = build("anytime", anytime_store, tmp_path)
    for stem in ("anytime_cum_s_d1_m1", "anytime_cum_energy_j_d1_m1", "anytime_cum_s_d2_m1"):
        assert (tmp_path / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "<svg" in (tmp_path / f"{stem}.svg").read_text()
        assert f"({stem}.png)" in paths["md"].read_text()
    assert not (tmp_path / "anytime_cum_energy_j_d2_m1.png").exists()  # d2 metered no energy
    assert not list(tmp_path.glob("anytime_*d3*"))  # d3's runs predate eval_cum_s
    md, page = paths["md"].read_text(), paths["html"].read_text()
    assert "evaluation excluded" in md and "evaluation excluded" in page
    assert "d1 / m1: anytime accuracy vs time so far" in page
    assert page.count("<svg") == len(list(tmp_path.glob("*.svg")))


# ---- amortised cost: break-even trainings k*, reuse over K trainings, rows kept apart by probe config -----------

# (strategy, fraction, probe.epochs) -> per seed: (probe s, probe J, cached probe s, cached probe J, static selection
# s, J, recurring s); recurring = data + training + in-training selection + evaluation; energy recurs at 10 J/s.
# el2n's seeds 1 and 2 read the probe from the cache: 1 s to read it, charged its original 30 s / 600 J (probe_cached).
AMORT = {
    ("full", 1.0, 20): [(0, 0, 0, 0, 0.5, 5, 100.0 + s) for s in range(3)],
    ("random", 0.5, 20): [(0, 0, 0, 0, 0.5, 5, 50.0 + s) for s in range(3)],
    ("rs2", 0.5, 20): [(0, 0, 0, 0, 0.0, 0, 60.0 + s) for s in range(3)],  # selects during training only
    ("el2n", 0.5, 20): [(30, 600, 0, 0, 2, 40, 50.0), (1, 20, 30, 600, 2, 40, 51.0), (1, 20, 30, 600, 2, 40, 52.0)],
    ("el2n", 0.5, 5): [(8, 150, 0, 0, 2, 40, 50.0 + s) for s in range(3)],  # same strategy, a 5-epoch probe
    ("grand", 0.9, 20): [(40, 800, 0, 0, 2, 40, 101.0 + s) for s in range(3)],  # recurs more than full's 101 s
}


@pytest.fixture(scope="module")
def amort_store(tmp_path_factory) -> str:
    from mlflow.entities import Param

    uri = f"sqlite:///{tmp_path_factory.mktemp('amort') / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("amort")
    for (strategy, fraction, epochs), seeds in AMORT.items():
        for s, (probe_s, probe_j, cached_s, cached_j, sel_s, sel_j, rec_s) in enumerate(seeds):
            m = {"test_accuracy": 0.8 + 0.01 * s, "selection_s": sel_s, "selection_energy_j": sel_j,
                 "total_s": probe_s + cached_s + sel_s + rec_s,
                 "total_energy_j": probe_j + cached_j + sel_j + 10 * rec_s}
            if probe_s:  # a probe trained or read: what the trial logs (stage `probe`, ProbeRecord.metrics)
                m.update(probe_s=probe_s, probe_energy_j=probe_j, probe_train_s=28.0)
            if cached_s:
                m.update(probe_cached_s=cached_s, probe_cached_energy_j=cached_j)
            rid = _log(client, exp, _tags("d1", "m1", strategy, fraction, s), m, start_ms=1_000_000 + s)
            # every trial logs its whole config: strategies without a probe carry the default probe params too
            client.log_batch(rid, params=[Param("probe.epochs", str(epochs)), Param("probe.runs", "2"),
                                          Param("probe.model", "None"), Param("probe.projection_dim", "128")])
    return uri


@pytest.fixture(scope="module")
def amort(amort_store):
    return summarise(load_runs(amort_store, "amort"), "amort", reuse=10)


def amort_row(report, strategy, probe=""):
    s = report.summary
    hit = s[(s.strategy == strategy) & (s.probe == probe)]
    assert len(hit) == 1
    return hit.iloc[0]


def test_rows_that_differ_only_in_probe_config_stay_apart(amort):
    assert amort.probe_keys == ("probe.epochs",)  # runs, model and projection_dim never differ
    assert len(amort.repeated) == 0  # the 5-epoch probe's seeds are not read as repeats of the 20-epoch ones
    assert sorted(zip(amort.summary.strategy, amort.summary.probe)) == [
        ("el2n", "epochs=20"), ("el2n", "epochs=5"), ("full", ""), ("grand", "epochs=20"), ("random", ""),
        ("rs2", "")]
    long, short = amort_row(amort, "el2n", "epochs=20"), amort_row(amort, "el2n", "epochs=5")
    assert (long["n"], short["n"]) == (3, 3)
    assert long["probe_s"] == pytest.approx(np.mean([30, 31, 31]))  # a cached probe at its original cost, + the read
    assert short["probe_s"] == 8 and short["probe.epochs"] == "5"


def test_break_even_trainings_match_a_hand_computation(amort):
    # full's per-training cost is its whole total, its 0.5 s / 5 J selection included: it chooses nothing to reuse
    full_s, full_j = np.mean([100.5, 101.5, 102.5]), np.mean([1005, 1015, 1025])
    el2n = amort_row(amort, "el2n", "epochs=20")
    once_s = np.mean([30 + 2, 1 + 30 + 2, 1 + 30 + 2])  # probe (+ cached charge) + static selection
    assert el2n["one_time_s"] == pytest.approx(once_s)
    assert el2n["per_training_s"] == pytest.approx(np.mean([50, 51, 52]))
    assert el2n["breakeven_trainings"] == pytest.approx(once_s / (full_s - 51))
    once_j = np.mean([600 + 40, 20 + 600 + 40, 20 + 600 + 40])
    assert el2n["breakeven_trainings_energy"] == pytest.approx(once_j / (full_j - 510))
    short = amort_row(amort, "el2n", "epochs=5")
    assert short["breakeven_trainings"] == pytest.approx((8 + 2) / (full_s - 51))
    assert short["breakeven_trainings_energy"] == pytest.approx((150 + 40) / (full_j - 510))
    assert amort_row(amort, "random")["breakeven_trainings"] == pytest.approx(0.5 / (full_s - 51))
    assert amort_row(amort, "rs2")["breakeven_trainings"] == 0  # nothing paid once: saves from the first training
    full = amort_row(amort, "full")
    assert (full["one_time_s"], full["per_training_s"]) == (0, pytest.approx(full_s))
    assert np.isnan(full["breakeven_trainings"])


def test_break_even_is_infinite_when_a_training_costs_no_less_than_full(amort):
    grand = amort_row(amort, "grand", "epochs=20")
    assert grand["per_training_s"] == pytest.approx(102) and grand["per_training_energy_j"] == pytest.approx(1020)
    assert grand["breakeven_trainings"] == np.inf and grand["breakeven_trainings_energy"] == np.inf


def test_reuse_over_k_trainings_saves_k_per_training_savings_less_the_one_time_cost(amort):
    assert amort.reuse == 10
    full_s, full_j = np.mean([100.5, 101.5, 102.5]), np.mean([1005, 1015, 1025])
    el2n = amort_row(amort, "el2n", "epochs=20")
    saved = 10 * (full_s - 51) - np.mean([32, 33, 33])
    assert el2n["reuse_saved_s"] == pytest.approx(saved)
    assert el2n["reuse_saved_share"] == pytest.approx(saved / (10 * full_s))
    j = 10 * (full_j - 510) - np.mean([640, 660, 660])
    assert el2n["reuse_saved_energy_j"] == pytest.approx(j)
    assert el2n["reuse_saved_energy_share"] == pytest.approx(j / (10 * full_j))
    grand = amort_row(amort, "grand", "epochs=20")
    assert grand["reuse_saved_s"] == pytest.approx(10 * (full_s - 102) - 42) and grand["reuse_saved_s"] < 0
    assert amort_row(amort, "full")["reuse_saved_s"] == 0
    no_k = summarise(amort.runs_used, "amort")  # without K: break-even only
    assert "reuse_saved_s" not in no_k.summary and "breakeven_trainings" in no_k.summary


def test_report_tables_show_probe_break_even_and_reuse_columns(amort_store, tmp_path):
    from harness.errors import UserError

    paths = build("amort", amort_store, tmp_path, reuse=10)
    md = paths["md"].read_text()
    header = next(line for line in md.splitlines() if line.startswith("| strategy |"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert cols[:3] == ["strategy", "probe", "fraction"]
    for c in ("probe s", "selection s", "break-even k*", "break-even k* (energy)", "saved over K=10 s",
              "saved over K=10", "energy saved over K=10"):
        assert c in cols
    cells = {line.split("|")[1].strip() + " " + line.split("|")[2].strip(): [c.strip() for c in line.split("|")[1:-1]]
             for line in md.splitlines() if line.startswith("| ") and not line.startswith("| strategy")}
    assert [line.split("|")[2].strip() for line in md.splitlines() if line.startswith("| el2n |")] == [
        "epochs=5", "epochs=20"]  # in the probe's order, not the label's
    el2n = dict(zip(cols, cells["el2n epochs=5"]))
    # full: 101.5 s per training; el2n with a 5-epoch probe: 10 s once, 51 s per training
    assert el2n["probe s"] == "8.0" and el2n["break-even k*"] == f"{10 / 50.5:.3g}"
    assert el2n["saved over K=10 s"] == f"{10 * 50.5 - 10:.3g}" and el2n["saved over K=10"] == f"{495 / 1015:.1%}"
    grand = dict(zip(cols, cells["grand epochs=20"]))
    assert grand["break-even k*"] == "never" and grand["break-even k* (energy)"] == "never"
    assert grand["saved over K=10"].startswith("-")
    assert dict(zip(cols, cells["full "]))["break-even k*"] == "(baseline)"
    assert "Break-even k*" in md and "el2n & epochs=5 & 0.5" in paths["tex"].read_text()
    csv = pd.read_csv(paths["csv"], na_values=["n/a"])
    assert (csv.loc[csv.strategy == "grand", "breakeven_trainings"] == np.inf).all()
    with pytest.raises(UserError, match="--reuse 0"):
        build("amort", amort_store, tmp_path, reuse=0)


def test_by_a_probe_param_splits_panels_instead(amort_store):
    # --by probe.epochs: one panel per probe length; full logged only the default (20), so the 5-epoch panel has
    # no baseline: n/a there, which is why rows (not panels) keep probe configs apart by default
    rep = summarise(load_runs(amort_store, "amort", by=["probe.epochs"]), "amort", by=["probe.epochs"])
    assert rep.probe_keys == () and "probe" not in rep.summary
    s = rep.summary.set_index(["probe.epochs", "strategy"])
    assert s.loc[(20, "el2n"), "breakeven_trainings"] == pytest.approx(np.mean([32, 33, 33]) / 50.5)
    assert np.isnan(s.loc[(5, "el2n"), "breakeven_trainings"])


def test_probe_label_names_the_config_as_written():
    from harness.report.summary import probe_label

    run = pd.Series({"probe.epochs": "None", "probe.model._target_": "harness.models.SmallCNN", "probe.subset": "0.5",
                     "probe.runs": None})  # runs: not logged by this (older) run
    assert probe_label(run, sorted(run.index)) == "epochs=null, model=SmallCNN, subset=0.5"


# ---- data audits: what a selection kept of planted corruptions, and the contamination audit ---------------------

KINDS = ("label_noise", "exact_duplicates", "near_duplicates", "outliers")
audit_rng = np.random.default_rng(99)
# (strategy, fraction) -> per seed: kept fraction per kind, and precision / recall of removing each kind of copy
KEPT_BY_SEED = {
    ("full", 1.0): {k: np.ones(3) for k in KINDS},
    ("exact_dedup", 1.0): {"label_noise": np.array([0.91, 0.92, 0.90]), "exact_duplicates": np.zeros(3),
                           "near_duplicates": np.ones(3), "outliers": np.ones(3)},
    ("random", 0.5): {k: 0.5 + audit_rng.normal(0, 0.02, 3) for k in KINDS},
}
REMOVAL_BY_SEED = {  # (precision, recall) per seed; full removes nothing: its precision is undefined (NaN)
    ("full", 1.0): {"exact_duplicates": ([np.nan] * 3, [0.0] * 3), "near_duplicates": ([np.nan] * 3, [0.0] * 3)},
    ("exact_dedup", 1.0): {"exact_duplicates": ([1.0] * 3, [1.0] * 3), "near_duplicates": ([0.0] * 3, [0.0] * 3)},
    ("random", 0.5): {"exact_duplicates": ([0.08, 0.07, 0.09], [0.47, 0.52, 0.50]),
                      "near_duplicates": ([0.05, 0.04, 0.05], [0.55, 0.45, 0.50])},
}


@pytest.fixture(scope="module")
def audit_store(tmp_path_factory) -> str:
    """d1: corrupted training set, audit flagged (3 exact, 5 near test copies); d2: audit ran and found nothing, no
    corruption (a failed run tagged flagged does not count); d3: neither, as runs logged before either existed."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('audit') / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("audit")
    for (strategy, fraction), kept in KEPT_BY_SEED.items():
        for s in range(3):
            m = {"test_accuracy": 0.8, "total_s": 10.0, "noisy_selected_fraction": 0.2 + 0.01 * s,
                 "n_label_noise": 911, "n_exact_duplicates": 400, "n_near_duplicates": 200, "n_outliers": 200,
                 "audit_n_exact": 3, "audit_n_near": 5, "audit_fraction_contaminated": 0.008, "audit_s": 0.1}
            m.update({f"kept_{k}_fraction": kept[k][s] for k in KINDS})
            for kind, (p, r) in REMOVAL_BY_SEED[strategy, fraction].items():
                m.update({f"precision_{kind}_removal": p[s], f"recall_{kind}_removal": r[s]})
            _log(client, exp, {**_tags("d1", "m1", strategy, fraction, s), "audit_flagged": "true"}, m)
            clean = {"test_accuracy": 0.8, "total_s": 10.0, "audit_n_exact": 0, "audit_n_near": 0,
                     "audit_fraction_contaminated": 0.0, "audit_s": 0.1}
            _log(client, exp, {**_tags("d2", "m1", strategy, fraction, s), "audit_flagged": "false"}, clean)
            _log(client, exp, _tags("d3", "m1", strategy, fraction, s), {"test_accuracy": 0.8, "total_s": 10.0})
    _log(client, exp, {**_tags("d2", "m1", "random", 0.5, 3), "audit_flagged": "true"},
         {"audit_n_exact": 1, "audit_n_near": 0}, status="FAILED")
    return uri


@pytest.fixture(scope="module")
def audit_report(audit_store):
    return summarise(load_runs(audit_store, "audit"), "audit")


def audit_row(report, dataset, strategy, fraction):
    s = report.summary
    hit = s[(s.dataset == dataset) & (s.strategy == strategy) & np.isclose(s.fraction, fraction)]
    assert len(hit) == 1
    return hit.iloc[0]


@pytest.mark.parametrize("strategy, fraction", list(KEPT_BY_SEED))
def test_kept_fractions_are_means_over_seeds_with_the_accuracy_bootstrap(audit_report, strategy, fraction):
    r = audit_row(audit_report, "d1", strategy, fraction)
    for kind in KINDS:
        values = KEPT_BY_SEED[strategy, fraction][kind]
        m = f"kept_{kind}_fraction"
        assert r[m] == pytest.approx(values.mean(), abs=1e-12)
        assert (r[f"{m}_lo"], r[f"{m}_hi"]) == pytest.approx(reference_bootstrap(values), abs=1e-12)
    for kind, (p, rc) in REMOVAL_BY_SEED[strategy, fraction].items():
        assert r[f"recall_{kind}_removal"] == pytest.approx(np.mean(rc), abs=1e-12)
        if strategy == "full":  # nothing removed: precision undefined on every seed, n/a and not 0
            assert np.isnan(r[f"precision_{kind}_removal"])
        else:
            assert r[f"precision_{kind}_removal"] == pytest.approx(np.mean(p), abs=1e-12)
    assert r["noisy_selected_fraction"] == pytest.approx(0.21)
    assert (r["n_exact_duplicates"], r["audit_n_exact"], r["audit_n_near"], r["audit_flagged_runs"]) == (400, 3, 5, 3)


def test_data_audit_columns_exist_only_where_runs_logged_them(audit_report, report):
    d2, d3 = audit_row(audit_report, "d2", "random", 0.5), audit_row(audit_report, "d3", "random", 0.5)
    assert np.isnan(d2["kept_label_noise_fraction"]) and d2["audit_n_exact"] == 0 and d2["audit_flagged_runs"] == 0
    assert np.isnan(d3["audit_n_exact"]) and np.isnan(d3["audit_flagged_runs"])  # not audited: n/a, not 0
    # an experiment whose runs logged none of them has no such column at all
    assert not [c for c in report.summary if c.startswith(("kept_", "precision_", "recall_", "audit_", "n_"))]
    assert "noisy_selected_fraction" not in report.summary


def _md_tables(md: str) -> dict[str, list[dict[str, str]]]:
    """{panel title: rows as {header: cell}} of a report.md."""
    out, title, header = {}, None, None
    for line in md.splitlines():
        if line.startswith("## "):
            title, header = line[3:], None
        elif line.startswith("| ") and title is not None:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if header is None:
                header = cells
                out[title] = []
            else:
                out[title].append(dict(zip(header, cells)))
    return out


def test_report_shows_data_audit_columns_and_flags_the_contaminated_panel(audit_store, tmp_path):
    paths = build("audit", audit_store, tmp_path)
    md = paths["md"].read_text()
    tables = _md_tables(md)
    d1 = {r["strategy"]: r for r in tables["d1 / m1"]}
    headers = list(d1["random"])
    assert headers[:6] == ["strategy", "fraction", "n", "accuracy % [95% CI]", "Δ vs full pp [95% CI]",
                           "kept label noise %"]
    kept = KEPT_BY_SEED["random", 0.5]["exact_duplicates"]
    lo, hi = reference_bootstrap(kept)
    assert d1["random"]["kept exact dups %"] == f"{kept.mean() * 100:.2f} [{lo * 100:.2f}, {hi * 100:.2f}]"
    assert d1["exact_dedup"]["kept exact dups %"] == "0.00 [0.00, 0.00]"
    assert d1["exact_dedup"]["exact dup removal P / R"] == "1.00 / 1.00"
    assert d1["exact_dedup"]["near dup removal P / R"] == "0.00 / 0.00"
    assert d1["full"]["exact dup removal P / R"] == "n/a / 0.00"
    assert d1["random"]["near dup removal P / R"] == f"{np.mean([0.05, 0.04, 0.05]):.2f} / 0.50"
    assert d1["random"]["noisy in subset %"] == "21.00"
    assert d1["random"]["test copies exact / near"] == "3 / 5"
    # d2: audited and clean: the audit column, no corruption columns; d3: neither
    assert [h for h in tables["d2 / m1"][0] if h.startswith(("kept", "exact dup", "near dup", "noisy", "test"))] == [
        "test copies exact / near"]
    assert tables["d2 / m1"][0]["test copies exact / near"] == "0 / 0"
    assert not [h for h in tables["d3 / m1"][0] if h.startswith(("kept", "exact dup", "near dup", "noisy", "test"))]

    flag = "test set overlaps training: 3 exact, 5 near copies (audit)"
    sections = md.split("\n## ")
    assert [s.split("\n")[0] for s in sections if flag in s] == ["d1 / m1"]  # d2's flagged run failed: not counted
    assert "9 of 9 audited runs flagged" in md and "Data audits (docs/data-audits.md)" in md
    page = paths["html"].read_text()
    assert page.count(flag) == 1 and page.index(flag) < page.index("<h2>d2 / m1</h2>")
    assert "kept exact dups %" in page and paths["tex"].read_text().count("test set overlaps training") == 1

    csv = pd.read_csv(paths["csv"], na_values=["n/a"]).set_index(["dataset", "strategy"])
    assert csv.loc[("d1", "random"), "kept_outliers_fraction"] == pytest.approx(
        KEPT_BY_SEED["random", 0.5]["outliers"].mean(), rel=1e-9)
    assert csv.loc[("d1", "exact_dedup"), "recall_exact_duplicates_removal"] == 1.0
    assert csv.loc[("d1", "full"), "audit_flagged_runs"] == 3 and csv.loc[("d2", "full"), "audit_flagged_runs"] == 0
    assert np.isnan(csv.loc[("d3", "full"), "audit_n_exact"])


def test_a_report_without_audited_runs_has_no_flag_and_no_audit_columns(store, tmp_path):
    md = build(EXPERIMENT, store, tmp_path)["md"].read_text()
    assert "Contamination" not in md and "kept " not in md and "test copies" not in md and "Data audits" not in md


def test_flag_line_gives_the_range_when_runs_disagree():
    from harness.report.render import overlap_line
    from harness.report.summary import Overlap

    line = overlap_line(Overlap(n_exact=(2.0, 2.0), n_near=(4.0, 6.0), flagged=2, audited=3))
    assert line.startswith("test set overlaps training: 2 exact, 4 to 6 near copies (audit). 2 of 3 audited runs")


def test_every_data_audit_metric_a_trial_logs_has_a_report_column():
    from harness.config import CorruptionConfig
    from harness.data import Dataset
    from harness.data.corrupt import corrupt, ground_truth_counts, selection_audit
    from harness.report.summary import DATA_AUDIT, KEPT

    gen = np.random.default_rng(0)
    clean = Dataset("hand", gen.normal(size=(200, 8)).astype(np.float32), gen.integers(0, 3, 200),
                    gen.normal(size=(20, 8)).astype(np.float32), gen.integers(0, 3, 20), 3, "fp")
    cfg = CorruptionConfig(label_noise=0.2, exact_duplicates=0.1, near_duplicates=0.1, outliers=0.1, imbalance_rho=2.0)
    data = corrupt(clean, cfg, seed=0)
    logged = {**selection_audit(data, np.arange(0, len(data.y_train), 2)), **ground_truth_counts(data)}
    assert {f"kept_{k}_fraction" for k in KINDS} <= set(logged)
    assert set(logged) <= {*KEPT, *DATA_AUDIT}
