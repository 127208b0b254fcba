"""The strategy library through the real entry point: a tiny sweep, its records, and one-line errors."""

import pytest

from tests.conftest import run_cli, runs_of

TINY = ("trainer.epochs=1", "probe.epochs=2", "probe.score_at=0.5", "probe.runs=1")


@pytest.mark.slow
def test_sweep_shares_one_probe_and_costs_it(store, cache_dir, tmp_path):
    sig_cache = str(tmp_path / "cache")  # own signal cache, so the first run must train the probe
    res = run_cli("-m", "strategy=el2n,semdedup,pipeline", "strategy.fraction=0.5", *TINY,
                  f"tracking.uri={store}", f"cache_dir={sig_cache}")
    assert res.returncode == 0, res.stderr
    runs = runs_of(store).set_index("tags.strategy")
    assert (runs["status"] == "FINISHED").all()
    # EL2N alone stops its probe at the score epoch (1 of 2); semdedup's embeddings need the whole probe, and the
    # pipeline (EL2N and embeddings) reads that one from the cache: the basic launcher runs jobs in order
    assert runs.loc["el2n", "metrics.probe_epochs"] == 1 and runs.loc["semdedup", "metrics.probe_epochs"] == 2
    assert runs.loc["el2n", "tags.cache_hit"] == "False" and runs.loc["semdedup", "tags.cache_hit"] == "False"
    assert runs.loc["pipeline", "tags.cache_hit"] == "True"
    parts = ["data_s", "probe_s", "selection_s", "train_s", "eval_s"]
    for name, run in runs.iterrows():
        charged = run["metrics.probe_cached_s"] if name == "pipeline" else 0.0
        assert sum(run[f"metrics.{p}"] for p in parts) + charged == pytest.approx(run["metrics.total_s"], rel=1e-6)
    # the run that read the cache is charged the probe's own cost, time and its share of the stage's energy:
    # savings never overstated
    trained = runs.loc["semdedup"]
    share = trained["metrics.probe_train_s"] / trained["metrics.probe_s"]
    assert runs.loc["pipeline", "metrics.probe_cached_s"] == pytest.approx(trained["metrics.probe_train_s"])
    assert runs.loc["pipeline", "metrics.probe_cached_energy_j"] == pytest.approx(
        trained["metrics.probe_energy_j"] * share, rel=1e-6)
    assert runs.loc["el2n", "metrics.n_selected"] == 2000 and runs.loc["semdedup", "metrics.n_selected"] == 2000
    assert runs.loc["semdedup", "metrics.stage1_semdedup_removed"] == 2000
    assert 0 < runs.loc["semdedup", "metrics.stage1_semdedup_eps"] < 1
    p = runs.loc["pipeline"]
    assert p["metrics.stage1_exact_dedup_removed"] == 0  # MNIST-1D has no byte-identical samples
    removed = p["metrics.stage1_exact_dedup_removed"] + p["metrics.stage2_semdedup_removed"] + \
        p["metrics.stage3_el2n_removed"]
    assert 4000 - removed == p["metrics.n_selected"] <= 2000
    assert p["metrics.stage2_semdedup_s"] > 0


@pytest.mark.slow  # a CLI trial that computes signals (~10 s)
def test_more_clusters_than_samples_fails_before_training(store, cache_dir):
    res = run_cli("strategy=semdedup", "strategy.embedding=raw", "strategy.n_clusters=5000", "trainer.epochs=1",
                  f"tracking.uri={store}", f"cache_dir={cache_dir}")
    assert res.returncode == 2
    assert "strategy: n_clusters=5000: expected between 1 and the number of candidates (4000)" in res.stderr
    run = runs_of(store).iloc[0]
    assert run["status"] == "FAILED" and "metrics.train_s" not in run.index  # stopped before training
