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
