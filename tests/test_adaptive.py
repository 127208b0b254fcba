"""Gradient-matching stages in training (strategies/adaptive.py): CORDS's schedule, the validation split they select
against, the last-layer snapshot they select from, CORDS's per-batch weighted loss, and a trial of each.

The kernels (facility location, OMP, GLISTER's greedy) are checked against references in tests/test_gradients.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from harness.build import build_model
from harness.config import TrainerConfig
from harness.data.base import make_dataset
from harness.data.corrupt import add_label_noise
from harness.data.sources import Digits
from harness.data.validation import split_validation
from harness.errors import UserError
from harness.last_layer import output_layer, snapshot
from harness.parallel import Local
from harness.train import _Loop, train
from strategies import Selection
from strategies.adaptive import Craig, Glister, GradientRounds, GradMatch, GradMatchPB, _apportion
from strategies.dynamic import EpochContext, LastLayer
from strategies.gradients import facility_location, grad_proxies, omp_nonneg

CPU = torch.device("cpu")


def trainer_cfg(**kw):
    return OmegaConf.merge(OmegaConf.structured(TrainerConfig),
                           {"epochs": 6, "batch_size": 50, "device": "cpu", "amp": False, **kw})


def digits(n_train=400, val_fraction=None, seed=0):
    d = Digits().load("unused")
    data = make_dataset("digits-small", d.x_train[:n_train], d.y_train[:n_train], d.x_test, d.y_test, 10)
    return split_validation(data, val_fraction, seed)


def mlp(data, seed=0):
    torch.manual_seed(seed)
    cfg = OmegaConf.create({"_target_": "harness.models.MLP", "hidden": 32})
    return build_model(cfg, data.input_shape, data.num_classes)


# -- the validation split -------------------------------------------------------------------------------------------

def test_the_validation_split_is_stratified_disjoint_from_training_and_fixed_by_the_seed():
    full = digits(val_fraction=None)
    a, b, other = digits(val_fraction=0.2, seed=3), digits(val_fraction=0.2, seed=3), digits(val_fraction=0.2, seed=4)
    assert np.array_equal(a.val_indices, b.val_indices) and not np.array_equal(a.val_indices, other.val_indices)
    train_rows = np.setdiff1d(np.arange(len(full.y_train)), a.val_indices)
    # the training set is every other original row, in order; the held-out rows are the validation set
    assert np.array_equal(a.x_train, full.x_train[train_rows]) and np.array_equal(a.y_train, full.y_train[train_rows])
    assert np.array_equal(a.x_val, full.x_train[a.val_indices]) and np.array_equal(a.y_val, full.y_train[a.val_indices])
    for c in range(10):
        assert (a.y_val == c).sum() == round(0.2 * (full.y_train == c).sum())
    assert a.fingerprint != full.fingerprint  # a probe trained on all rows is not served to the smaller set


def test_label_noise_after_the_split_leaves_the_validation_labels_clean():
    data = add_label_noise(digits(val_fraction=0.25, seed=1), 0.4, seed=1)
    full = digits()
    assert np.array_equal(data.y_val, full.y_train[data.val_indices])
    assert data.noisy.sum() == round(0.4 * len(data.y_train))


# -- the last-layer snapshot ----------------------------------------------------------------------------------------

def test_the_snapshot_holds_each_samples_output_layer_input_and_softmax_minus_onehot():
    data = digits(200, val_fraction=0.1)
    model = mlp(data)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    last = snapshot(model, x, y, torch.from_numpy(data.x_val), torch.from_numpy(data.y_val), batch_size=37)
    with torch.no_grad():
        h = model.features(x)
        p = torch.softmax(model.head(h), 1)
        h_val = model.features(torch.from_numpy(data.x_val))
    assert np.allclose(last.feats, h.numpy(), atol=1e-6)
    assert np.allclose(last.err, (p - F.one_hot(y, 10)).numpy(), atol=1e-6)
    assert np.allclose(last.val_feats, h_val.numpy(), atol=1e-6) and np.array_equal(last.val_labels, data.y_val)
    assert np.array_equal(last.weight, model.head.weight.detach().numpy())
    assert model.training  # the eval-mode forward leaves the model as it found it


def test_a_model_whose_output_is_not_a_linear_layer_is_refused_in_one_line():
    model = torch.nn.Sequential(torch.nn.Linear(64, 10), torch.nn.LogSoftmax(dim=1))
    with pytest.raises(UserError, match=r"^model=Sequential: gradient-matching strategies .* torch.nn.Linear"):
        output_layer(model, torch.zeros(2, 64))


@pytest.mark.parametrize("seed", range(30))
def test_per_class_budgets_are_proportional_and_sum_to_the_target(seed):
    rng = np.random.default_rng(seed)
    sizes = [int(s) for s in rng.integers(1, 60, size=rng.integers(1, 12))]
    k = int(rng.integers(1, sum(sizes) + 1))
    counts = _apportion(sizes, k)
    assert sum(counts) == k and all(0 <= c <= s for c, s in zip(counts, sizes))
    assert all(abs(c - k * s / sum(sizes)) < 1 or c == s for c, s in zip(counts, sizes))


# -- CORDS's schedule -----------------------------------------------------------------------------------------------

class Scripted(GradientRounds):
    """A gradient-matching stage whose round takes the first n_target positions (and records the rounds)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.rounds: list[int] = []

    def choose(self, ctx, last):
        self.rounds.append(ctx.epoch)
        return np.arange(ctx.n_target), np.full(ctx.n_target, 2.0)


def test_rounds_start_random_then_select_every_r_epochs():
    n, k = 400, 100
    stage = Scripted(select_every=3)
    out = train(mlp(digits()), digits(), Selection(np.arange(n)), trainer_cfg(epochs=10), 0, CPU, dynamic=stage,
                epoch_target=k)
    assert [e for e, _ in out.round_selected] == [1, 4, 7, 10]
    assert stage.rounds == [4, 7, 10]  # epoch 1 is CORDS's random subset, no model-based round
    assert all(count == k for _, count in out.round_selected)
    assert out.samples_backpropagated == 10 * k


def test_a_warm_start_trains_on_all_data_then_skips_to_kappa_of_the_epochs_as_cords():
    n, k, epochs, kappa = 400, 100, 20, 0.5  # f = 1/4: ceil(0.5 x 20 x 0.25) = 3 full epochs, skip to epoch 10
    stage = Scripted(select_every=4, kappa=kappa)
    out = train(mlp(digits()), digits(), Selection(np.arange(n)), trainer_cfg(epochs=epochs), 0, CPU,
                dynamic=stage, epoch_target=k)
    per_epoch = [round(f * n) for _, f in out.epoch_selected_fraction]
    assert per_epoch == [n] * 3 + [0] * 7 + [k] * 10
    assert stage.rounds == [11, 15, 19]  # selection from the warm model at once, then every 4 epochs
    warm_cost, subset_cost = 3 * n, math.ceil(kappa * epochs) * k  # what the warm start costs vs its epochs
    assert abs(warm_cost - subset_cost) <= n  # within one full epoch (the ceil)


@pytest.mark.parametrize("budget, kappa, warm_samples", [
    ({"samples": 4000}, 0.3, 1200),  # three whole epochs of 400
    ({"samples": 2000}, 0.5, 1000),  # two whole epochs and 200 samples of a third
    ({"steps": 6}, 0.5, 150),        # three steps of 50: less than one epoch
])
def test_a_warm_start_under_a_steps_or_samples_budget_spends_exactly_kappa_of_it_on_all_data(budget, kappa,
                                                                                             warm_samples):
    n, k = 400, 100
    stage = Scripted(select_every=2, kappa=kappa)
    out = train(mlp(digits()), digits(), Selection(np.arange(n)), trainer_cfg(epochs=None, **budget), 0, CPU,
                dynamic=stage, epoch_target=k)
    per_epoch = [round(f * n) for _, f in out.epoch_selected_fraction]
    full, rest = divmod(warm_samples, n)
    assert per_epoch[:full] == [n] * full
    assert per_epoch[full] == (rest if rest else k)  # the warm start ends inside an epoch: what is left of it
    first_subset_epoch = full + (2 if rest else 1)
    assert stage.rounds and stage.rounds[0] == first_subset_epoch  # selection starts from the warm model


def test_per_batch_weights_make_each_step_descend_the_weighted_batch_mean():
    """CORDS's loss: sum(w * loss) / sum(w) over the batch, so the weights' scale does not change the step."""
    data = digits(120)
    model = torch.nn.Linear(64, 10)
    sgd = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 1.0}
    stage = Scripted(select_every=1)
    loop = _Loop(model, data, Selection(np.arange(120)), trainer_cfg(optimizer=sgd), 0, CPU, stage, 60, Local())
    loop.plan_epoch(1)  # random
    stage.choose = lambda ctx, last: (np.arange(60), np.linspace(0.5, 7.0, 60))
    loop.plan_epoch(2)
    batch = loop.plan[:25]
    x, y = torch.from_numpy(data.x_train[batch.numpy()]), torch.from_numpy(data.y_train[batch.numpy()])
    w = torch.linspace(0.5, 7.0, 60)[batch]
    expected = (w * F.cross_entropy(model(x), y, reduction="none")).sum() / w.sum()
    grads = torch.autograd.grad(expected, list(model.parameters()))
    before = [p.detach().clone() for p in model.parameters()]
    loop.step(batch)
    for p, b, g in zip(model.parameters(), before, grads, strict=True):
        assert torch.allclose(b - p.detach(), g, atol=1e-5)


# -- a round equals the kernels on materialised gradients ----------------------------------------------------------

def synthetic_last_layer(n=90, n_val=30, classes=3, hidden=5, seed=0):
    rng = np.random.default_rng(seed)
    labels, val_labels = rng.integers(0, classes, n), rng.integers(0, classes, n_val)
    feats, val_feats = rng.normal(size=(n, hidden)).astype(np.float32), rng.normal(size=(n_val, hidden))
    weight, bias = rng.normal(size=(classes, hidden)).astype(np.float32), rng.normal(size=classes).astype(np.float32)
    logits = feats @ weight.T + bias
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    err = (p - np.eye(classes)[labels]).astype(np.float32)
    last = LastLayer(feats, err, weight, bias, val_feats.astype(np.float32), val_labels)
    return labels, last


def round_ctx(labels, last, n_target, seed=0):
    return EpochContext(21, 0.5, np.full(len(labels), np.nan, np.float32), labels, n_target,
                        np.random.default_rng(seed), last_layer=lambda: last)


def test_a_craig_round_is_facility_location_on_each_class_of_materialised_gradients():
    labels, last = synthetic_last_layer()
    positions, weights = Craig().choose(round_ctx(labels, last, 30), last)
    g = grad_proxies(last.err, last.feats)
    expected_pos, expected_w = [], []
    for rows, k in zip([np.flatnonzero(labels == c) for c in range(3)], _apportion([(labels == c).sum()
                                                                                    for c in range(3)], 30)):
        d = ((g[rows][:, None, :] - g[rows][None, :, :]) ** 2).sum(-1)
        picks, _ = facility_location(d.max() - d, k)
        expected_pos.append(rows[picks])
        expected_w.append(np.bincount((d.max() - d)[picks].argmax(0), minlength=k))
    assert np.array_equal(positions, np.concatenate(expected_pos))
    assert np.array_equal(weights, np.concatenate(expected_w))


@pytest.mark.parametrize("valid", [False, True])
def test_a_gradmatch_round_is_omp_on_each_class_row_of_materialised_gradients(valid):
    labels, last = synthetic_last_layer()
    stage = GradMatch(lam=0.5, valid=valid)
    positions, weights = stage.choose(round_ctx(labels, last, 30), last)
    if valid:  # the validation samples' softmax - onehot at the same layer
        logits = last.val_feats @ last.weight.T + last.bias
        p = np.exp(logits - logits.max(1, keepdims=True))
        val_err = p / p.sum(1, keepdims=True) - np.eye(3)[last.val_labels]
    expected_pos, expected_w = [], []
    for c, k in zip(range(3), _apportion([(labels == c).sum() for c in range(3)], 30)):
        rows = np.flatnonzero(labels == c)
        atoms = grad_proxies(last.err[rows][:, [c]], last.feats[rows]).astype(np.float64)
        vrows = last.val_labels == c
        target = (grad_proxies(val_err[vrows][:, [c]], last.val_feats[vrows]).sum(0) if valid else atoms.sum(0))
        picks, w = omp_nonneg(atoms, target, k, 0.5)
        expected_pos.append(rows[picks])
        expected_w.append(w)
    chosen = np.concatenate(expected_pos)
    assert np.array_equal(positions[: len(chosen)], chosen)
    assert np.allclose(weights[: len(chosen)], np.concatenate(expected_w), rtol=1e-3, atol=1e-4)
    assert len(positions) == 30 and np.all(weights[len(chosen):] == 1)  # the random top-up


def test_craig_leaves_out_picks_that_represent_nobody_and_tops_up_to_the_budget():
    """Duplicate gradients tie: greedy then picks copies that represent no sample (weight 0)."""
    labels, last = synthetic_last_layer(n=60, classes=2)
    dup = np.repeat(np.arange(6), 10)  # 6 distinct samples, 10 copies each
    last = LastLayer(last.feats[dup], last.err[dup], last.weight, last.bias)
    labels = labels[dup]
    positions, weights = Craig().choose(round_ctx(labels, last, 20), last)
    assert len(positions) == 20 and len(set(positions)) == 20
    assert np.all(weights > 0)


def test_a_gradmatch_pb_round_matches_the_validation_batches_summed_mean_gradients():
    labels, last = synthetic_last_layer(n=90, n_val=40)
    ctx = EpochContext(21, 0.5, np.full(90, np.nan, np.float32), labels, 30, np.random.default_rng(0),
                       batch_size=10, last_layer=lambda: last)
    positions, weights = GradMatchPB(valid=True).choose(ctx, last)
    atoms = np.stack([grad_proxies(last.err[s:s + 10], last.feats[s:s + 10]).mean(0) for s in range(0, 90, 10)])
    logits = last.val_feats @ last.weight.T + last.bias
    p = np.exp(logits - logits.max(1, keepdims=True))
    val_err = p / p.sum(1, keepdims=True) - np.eye(3)[last.val_labels]
    target = sum(grad_proxies(val_err[s:s + 10], last.val_feats[s:s + 10]).mean(0) for s in range(0, 40, 10))
    picks, w = omp_nonneg(atoms.astype(np.float64), target, 3, 0.0)
    expected = np.concatenate([np.arange(b * 10, b * 10 + 10) for b in picks])
    assert np.array_equal(positions[: len(expected)], expected)
    assert np.allclose(weights[: len(expected)], np.repeat(w, 10), rtol=1e-3)


def test_rounds_count_their_forward_passes_and_only_glister_forwards_the_validation_split():
    data = digits(400, val_fraction=0.1)
    n = len(data.y_train)
    for stage, val in ((Craig(select_every=2), 0), (Glister(select_every=2), len(data.y_val))):
        out = train(mlp(data), data, Selection(np.arange(n)), trainer_cfg(epochs=4), 0, CPU, dynamic=stage,
                    epoch_target=90)
        # rounds at epochs 1 (random: no forward) and 3
        assert out.samples_forwarded == out.samples_backpropagated + n + val


# -- each stage in training -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("stage", [Craig(select_every=10), GradMatch(select_every=10),
                                   GradMatchPB(select_every=10), Glister(select_every=10, eta=0.01)],
                         ids=lambda s: type(s).__name__)
def test_each_stage_trains_on_its_rounds_within_budget_and_learns(stage):
    data = digits(400, val_fraction=0.1)
    n, k = len(data.y_train), 90
    out = train(mlp(data), data, Selection(np.arange(n)), trainer_cfg(epochs=30), 0, CPU, dynamic=stage,
                epoch_target=k)
    assert [e for e, _ in out.round_selected] == [1, 11, 21]
    counts = [c for _, c in out.round_selected]
    # per-class budgets sum to k (GradMatch tops a short selection up); GradMatch-PB picks whole batches of 50
    assert all(k <= c < k + 50 if isinstance(stage, GradMatchPB) else c == k for c in counts)
    assert out.samples_backpropagated == 10 * sum(counts)
    assert out.final_test_accuracy > 0.5  # digits, 10 classes: chance is 0.1


def test_glister_without_a_validation_split_stops_with_one_line(compose_cfg):
    from harness.config import validate

    with pytest.raises(UserError, match=r"^strategy=glister selects against a validation split; expected "
                                        r"dataset.val_fraction in \(0, 0.5\]$"):
        validate(compose_cfg("strategy=glister"), check_files=False)
    validate(compose_cfg("strategy=glister", "dataset.val_fraction=0.1"), check_files=False)


def test_a_round_that_is_not_due_reuses_the_last_plan_without_a_forward():
    stage = Scripted(select_every=5)
    calls = []

    def last_layer():
        calls.append(1)
        return None

    ctx = EpochContext(1, 0.0, np.full(50, np.nan, np.float32), np.zeros(50, np.int64), 10,
                       np.random.default_rng(0), last_layer=last_layer)
    plan = stage.plan_epoch(ctx)
    assert len(plan.positions) == 10 and not calls  # the random first round needs no forward
    assert [stage.due(e, 0.0) for e in range(2, 8)] == [False, False, False, False, True, False]


@pytest.mark.parametrize("make, message", [
    (lambda: Craig(max_bytes=1000), r"max_bytes=1000: expected an integer >= 1048576"),
    (lambda: GradMatch(kappa=-0.1), r"kappa=-0.1: expected a number in \[0, 1\)"),
    (lambda: GradMatch(valid="yes"), r"valid=yes: expected true or false"),
    (lambda: Glister(greedy="lazy"), r"greedy=lazy: expected stochastic or naive"),
    (lambda: Glister(eta=0), r"eta=0: expected a number > 0"),
])
def test_bad_stage_arguments_name_the_key(make, message):
    from strategies.base import SelectionError

    with pytest.raises(SelectionError, match=message):
        make()
