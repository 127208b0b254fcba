"""`trainer.workers=2`: one trial trained on two Ray Train workers (DDP over gloo on the CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from harness.build import build_model
from harness.data.sources import Digits
from harness.seeding import derive_seed
from harness.train import train
from strategies import Selection
from tests.conftest import run_cli, runs_of

pytestmark = pytest.mark.slow  # every test here trains in subprocesses or on Ray (tens of seconds)


RECIPE = ("dataset=digits", "model=mlp", "trainer.epochs=10")


def one_worker_accuracy(seed: int, data, cfg) -> float:
    torch.manual_seed(derive_seed(seed, "init"))
    model = build_model(cfg.model, data.input_shape, data.num_classes)
    out = train(model, data, Selection(np.arange(len(data.y_train))), cfg.trainer, seed, torch.device("cpu"))
    return out.final_test_accuracy


def test_two_gloo_workers_reach_one_workers_accuracy_within_the_seed_spread(store, cache_dir, compose_cfg):
    res = run_cli(*RECIPE, "trainer.workers=2", "seed=0", f"tracking.uri={store}", f"cache_dir={cache_dir}")
    assert res.returncode == 0, res.stderr
    run = runs_of(store).iloc[0]
    assert run["status"] == "FINISHED" and run["params.trainer.workers"] == "2"

    cfg = compose_cfg(*RECIPE)
    data = Digits().load(cache_dir)
    single = [one_worker_accuracy(s, data, cfg) for s in range(4)]
    spread = max(single) - min(single)
    ddp_acc = run["metrics.test_accuracy"]
    assert abs(ddp_acc - single[0]) <= spread, (ddp_acc, single)
    assert ddp_acc > 0.9  # digits with an MLP: a real result, not two equally broken ones
    # Same budget as one worker: the global batch is split, not multiplied.
    assert run["metrics.steps"] == 10 * int(np.ceil(len(data.y_train) / 100))
    assert len(MlflowClient(store).get_metric_history(run.run_id, "epoch_test_accuracy")) == 10


def test_two_workers_share_the_loop_stop_at_target_and_metric_keys(store, cache_dir):
    """The data-parallel trial runs harness/train.py's loop: it stops at the target like one worker does, and logs
    the same metrics (time-to-accuracy, samples seen, anytime curves)."""
    stop = ("trainer.target_accuracy=0.5", "trainer.stop_at_target=true", f"tracking.uri={store}",
            f"cache_dir={cache_dir}", "seed=0")
    for workers in (1, 2):
        res = run_cli(*RECIPE, f"trainer.workers={workers}", *stop)
        assert res.returncode == 0, res.stderr
    runs = runs_of(store).set_index("params.trainer.workers")
    one, two = runs.loc["1"], runs.loc["2"]
    for run in (one, two):
        assert run["status"] == "FINISHED"
        assert run["metrics.epochs"] < 10  # digits passes 50% test accuracy within a few epochs of 10
        assert run["metrics.epoch_test_accuracy"] >= 0.5 and run["metrics.tta_steps"] == run["metrics.steps"]
    client = MlflowClient(store)
    one_keys, two_keys = (set(client.get_run(r.run_id).data.metrics) for r in (one, two))
    assert one_keys == two_keys
    for run_id in runs["run_id"]:
        names = {"epoch_test_accuracy", "eval_cum_s", "epoch_selected_fraction"}
        assert all(client.get_metric_history(run_id, m) for m in names)


def test_two_workers_run_infobatch_on_the_same_epoch_plans(store, cache_dir):
    """A dynamic stage under DDP: losses are gathered, so every rank plans the same epoch (a mismatch would hang
    DDP or differ in steps); the first epoch is full and the annealed last one too."""
    res = run_cli(*RECIPE, "trainer.workers=2", "strategy=infobatch", f"tracking.uri={store}",
                  f"cache_dir={cache_dir}", "seed=0")
    assert res.returncode == 0, res.stderr
    run = runs_of(store).iloc[0]
    assert run["status"] == "FINISHED"
    fractions = [m.value for m in sorted(MlflowClient(store).get_metric_history(run.run_id, "epoch_selected_fraction"),
                                         key=lambda m: m.step)]
    assert len(fractions) == 10 and fractions[0] == 1.0 and fractions[-1] == 1.0
    assert min(fractions[1:-1]) < 0.95  # pruned in between
    n_train = run["metrics.n_train"]
    assert run["metrics.samples_backpropagated"] == round(sum(fractions) * n_train)
    assert run["metrics.samples_seen"] == run["metrics.samples_backpropagated"]
