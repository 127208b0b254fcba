"""Dynamic selection: RS2, InfoBatch and Selective-Backprop (strategies/dynamic.py) and the loop that runs them
(harness/train.py, harness/parallel.py).

Each stage is checked against a few-line reference written here from its paper and reference code, drawing from
its own generator what the reference draws; the loop is checked for what a user reads off a run: which samples an
epoch trained on, with which weights, and what the budget and the sample counters say.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from harness.build import build_model, build_strategy
from harness.config import TrainerConfig
from harness.data.base import make_dataset
from harness.data.sources import Digits
from harness.errors import UserError
from harness.parallel import Distributed, Local, shard
from harness.seeding import numpy_rng
from harness.train import _Loop, train
from strategies import Selection
from strategies.adaptive import Craig
from strategies.base import SelectionError
from strategies.dynamic import RS2, EpochContext, InfoBatch, SelectiveBackprop

CPU = torch.device("cpu")


def epoch_ctx(losses, rng, epoch=2, progress=0.0, n_target=None) -> EpochContext:
    losses = np.asarray(losses, dtype=np.float32)
    n = len(losses)
    return EpochContext(epoch, progress, losses, np.zeros(n, np.int64), n if n_target is None else n_target, rng)


# -- references ---------------------------------------------------------------------------------------------------

def infobatch_reference(losses, prune_ratio, rng):
    """InfoBatch's prune step (NUS-HPC-AI-Lab/InfoBatch): scores start at 3; "well learned" = score below the
    mean score; a uniform int(keep * count) of them is kept without replacement, weight 1/keep; the rest weight 1."""
    scores = np.where(np.isnan(losses), 3.0, losses)
    well = np.flatnonzero(scores < scores.mean())
    keep = 1 - prune_ratio
    kept = set(rng.choice(well, int(keep * len(well)), replace=False).tolist())
    positions = sorted((set(range(len(losses))) - set(well.tolist())) | kept)
    return np.array(positions), np.array([1 / keep if p in kept else 1.0 for p in positions])


def rs2_reference(n, k, epochs, replacement, rng):
    """RS2 (Okanovic et al. 2023), k dividing n: without replacement, one permutation per n/k epochs walked in
    consecutive chunks of k; with replacement, each epoch an independent uniform k of n."""
    plans = []
    for e in range(epochs):
        if replacement:
            plans.append(np.sort(rng.choice(n, k, replace=False)))
            continue
        if e % (n // k) == 0:
            perm = rng.permutation(n)
        chunk = e % (n // k)
        plans.append(np.sort(perm[chunk * k:(chunk + 1) * k]))
    return plans


def selective_backprop_reference(batches, beta, history, rng):
    """Selective-Backprop (angelajiang/SelectiveBackprop): epoch 1 primes (keeps all, history untouched); later the
    batch joins the last `history` losses first, P = (share of the history strictly below the loss)^beta, and a
    sample is kept iff a uniform draw is below P."""
    past, masks = [], []
    for epoch, losses in batches:
        if epoch == 1:
            masks.append(np.ones(len(losses), dtype=bool))
            continue
        past = (past + list(losses))[-history:]
        percentile = np.array([sum(h < v for h in past) / len(past) for v in losses])
        masks.append(rng.random(len(losses)) < percentile ** beta)
    return masks


# -- 1. each stage equals its reference -----------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("prune_ratio", [0.3, 0.5, 0.9])
def test_infobatch_plans_equal_the_reference_draw_for_draw(seed, prune_ratio):
    gen = np.random.default_rng(100 + seed)
    stage, rng, ref_rng = InfoBatch(prune_ratio=prune_ratio), np.random.default_rng(seed), np.random.default_rng(seed)
    for epoch in range(2, 6):  # one generator across epochs: the plans stay in step with the reference's draws
        losses = gen.exponential(size=97).astype(np.float32)
        if epoch == 2:
            losses[gen.choice(97, 10, replace=False)] = np.nan  # not seen yet: score 3, as the reference starts
        plan = stage.plan_epoch(epoch_ctx(losses, rng, epoch=epoch, progress=0.1 * epoch))
        positions, weights = infobatch_reference(losses, prune_ratio, ref_rng)
        assert np.array_equal(plan.positions, positions)
        assert plan.weights is not None and np.allclose(plan.weights, weights, rtol=1e-6)
        assert 0 < len(positions) < 97


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(("n", "k"), [(60, 6), (60, 15), (60, 20), (60, 60)])
@pytest.mark.parametrize("replacement", [False, True])
def test_rs2_plans_equal_the_reference_draw_for_draw(seed, n, k, replacement):
    stage, rng = RS2(replacement=replacement), np.random.default_rng(seed)
    plans = [stage.plan_epoch(epoch_ctx(np.full(n, np.nan), rng, epoch=e, n_target=k)) for e in range(1, 13)]
    for plan, ref in zip(plans, rs2_reference(n, k, 12, replacement, np.random.default_rng(seed)), strict=True):
        assert np.array_equal(plan.positions, ref) and plan.weights is None


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("beta", "history"), [(3.0, 1024), (1.0, 7), (2.5, 40)])
def test_selective_backprop_masks_equal_the_reference_draw_for_draw(seed, beta, history):
    gen = np.random.default_rng(200 + seed)
    # few distinct values: ties show "strictly below"; batches of awkward sizes across three epochs
    batches = [(epoch, gen.integers(0, 6, size).astype(np.float64))
               for epoch in (1, 2, 3) for size in (13, 1, 32, 7)]
    stage, rng = SelectiveBackprop(beta=beta, history=history), np.random.default_rng(seed)
    masks = [stage.filter_batch(losses, epoch, rng) for epoch, losses in batches]
    refs = selective_backprop_reference(batches, beta, history, np.random.default_rng(seed))
    for mask, ref in zip(masks, refs, strict=True):
        assert mask.dtype == bool and np.array_equal(mask, ref)
    assert all(m.all() for m in masks[:4])  # epoch 1 backpropagates everything
    later = np.concatenate(masks[4:])
    assert 0 < later.sum() < len(later)


def test_selective_backprop_never_keeps_the_lowest_loss_of_its_history():
    stage, rng = SelectiveBackprop(beta=1.0, history=8), np.random.default_rng(0)
    losses = np.array([5.0, 5.0, 5.0, 0.1])
    for _ in range(50):
        assert not stage.filter_batch(losses, 2, rng)[3]  # nothing in the history is strictly below 0.1


# -- 2. RS2 coverage --------------------------------------------------------------------------------------------------

def rs2_plans(n, k, epochs, replacement=False, seed=0):
    stage, rng = RS2(replacement=replacement), np.random.default_rng(seed)
    return [stage.plan_epoch(epoch_ctx(np.full(n, np.nan), rng, epoch=e, n_target=k)).positions
            for e in range(1, epochs + 1)]


@pytest.mark.parametrize("k", [6, 12, 15, 20, 30, 60])
def test_rs2_without_replacement_visits_every_sample_once_per_n_over_k_epochs(k):
    n, m = 60, 60 // k  # k = n * fraction divides n: ceil(1/fraction) = n/k epochs per pass
    plans = rs2_plans(n, k, 4 * m)
    for p in range(4):
        counts = np.bincount(np.concatenate(plans[p * m:(p + 1) * m]), minlength=n)
        assert (counts == 1).all(), f"pass {p}: counts {np.bincount(counts)}"
    if k < n:  # a fresh permutation each pass
        assert not all(np.array_equal(plans[0], plans[m * p]) for p in range(1, 4))


NOT_DIVIDING = [(103, 10), (103, 25), (103, 40), (103, 50), (103, 102), (10, 4), (7, 3)]


@pytest.mark.parametrize(("n", "k"), NOT_DIVIDING)
@pytest.mark.parametrize("seed", range(3))
def test_rs2_without_replacement_with_k_not_dividing_n_draws_k_distinct_samples_and_starts_with_a_full_pass(
        n, k, seed):
    m = math.ceil(n / k)
    plans = rs2_plans(n, k, 40, seed=seed)
    for plan in plans:  # the last chunk of a pass wraps round its permutation: no repeat inside an epoch
        assert len(plan) == k and len(np.unique(plan)) == k and plan.min() >= 0 and plan.max() < n
    assert len(np.unique(np.concatenate(plans[:m]))) == n
    assert len(np.unique(np.concatenate(plans))) == n


def test_rs2_without_replacement_with_k_not_dividing_n_visits_every_sample_in_each_window_of_ceil_n_over_k():
    """RS2's reference (PatrikOkanovic/RS2, UniformNoReplacement) walks one permutation per window of ceil(n/k)
    epochs, the last chunk wrapping around to its start: every sample is visited in each such window."""
    failures = []
    for n, k in NOT_DIVIDING:
        m = math.ceil(n / k)
        for seed in range(3):
            plans = rs2_plans(n, k, 8 * m, seed=seed)
            for w in range(8):
                missing = set(range(n)) - set(np.concatenate(plans[w * m:(w + 1) * m]).tolist())
                if missing:
                    failures.append((n, k, seed, f"epochs {w * m + 1}-{(w + 1) * m}", sorted(missing)))
    assert not failures, failures[:5]


@pytest.mark.parametrize(("n", "k"), [(60, 15), (103, 25)])
def test_rs2_with_replacement_draws_each_epoch_independently_and_uniformly(n, k):
    epochs = 600
    plans = rs2_plans(n, k, epochs, replacement=True, seed=1)
    for plan in plans:
        assert len(plan) == k and len(np.unique(plan)) == k
    assert len(np.unique(np.concatenate(plans[:60]))) == n  # covers everything
    # uniform: each sample is in an epoch with probability k/n, independently across epochs
    counts = np.bincount(np.concatenate(plans), minlength=n)
    p = k / n
    assert np.abs(counts - epochs * p).max() < 5 * math.sqrt(epochs * p * (1 - p))
    # independent: two consecutive epochs share k^2/n samples on average (a walk without replacement shares none)
    overlaps = [len(np.intersect1d(a, b)) for a, b in zip(plans, plans[1:])]
    sd = np.std(overlaps) / math.sqrt(len(overlaps))
    assert abs(np.mean(overlaps) - k * k / n) < 5 * sd


# -- 3. InfoBatch: unbiased gradient, annealing, first epoch --------------------------------------------------------

def logistic_problem(n=50, d=3, seed=0):
    """A logistic regression at a fixed point: per-sample losses as a function of the parameters."""
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, d, generator=gen), torch.randint(0, 2, (n,), generator=gen).float()
    theta = torch.randn(d + 1, generator=gen, requires_grad=True)
    return lambda: F.binary_cross_entropy_with_logits(x @ theta[:d] + theta[d], y, reduction="none"), theta


@pytest.mark.parametrize("prune_ratio", [0.5, 0.75])
def test_infobatch_rescaled_gradient_is_unbiased_for_the_full_data_gradient(prune_ratio):
    n = 50
    per_sample_loss, theta = logistic_problem(n)
    full = torch.autograd.grad(per_sample_loss().sum(), theta)[0].numpy()
    # fixed recorded losses: 20 well learned (below the mean), so keep * 20 samples are kept exactly
    gen = np.random.default_rng(0)
    recorded = gen.permutation(np.concatenate([gen.uniform(0.0, 0.5, 20), gen.uniform(2.0, 3.0, 30)]))
    stage, draws = InfoBatch(prune_ratio=prune_ratio), 2000
    weighted, unweighted = np.empty((draws, len(full))), np.empty((draws, len(full)))
    for r in range(draws):
        plan = stage.plan_epoch(epoch_ctx(recorded, np.random.default_rng(r)))
        losses = per_sample_loss()[torch.as_tensor(plan.positions)]
        w = torch.as_tensor(plan.weights, dtype=torch.float32)
        weighted[r] = torch.autograd.grad((w * losses).sum(), theta, retain_graph=True)[0].numpy()
        unweighted[r] = torch.autograd.grad(losses.sum(), theta)[0].numpy()
        assert len(plan.positions) == 30 + int((1 - prune_ratio) * 20)
    se = weighted.std(axis=0, ddof=1) / math.sqrt(draws)
    assert (se > 0).all()
    assert (np.abs(weighted.mean(axis=0) - full) < 4 * se).all(), (weighted.mean(axis=0), full, se)
    # the test can tell: without the 1/keep weights the mean gradient is many standard errors off
    se_u = unweighted.std(axis=0, ddof=1) / math.sqrt(draws)
    assert (np.abs(unweighted.mean(axis=0) - full) / se_u).max() > 10


def test_infobatch_anneals_to_the_full_data_after_delta_and_starts_full():
    losses = np.random.default_rng(0).exponential(size=40)
    stage = InfoBatch(prune_ratio=0.5, delta=0.875)
    for progress in (0.876, 0.95, 0.999):
        plan = stage.plan_epoch(epoch_ctx(losses, np.random.default_rng(0), epoch=9, progress=progress))
        assert np.array_equal(plan.positions, np.arange(40))
        assert plan.weights is None or (np.asarray(plan.weights) == 1).all()
    # at exactly delta it still prunes (the reference stops once epoch > delta * epochs)
    assert len(stage.plan_epoch(epoch_ctx(losses, np.random.default_rng(0), progress=0.875)).positions) < 40
    first = stage.plan_epoch(epoch_ctx(np.full(40, np.nan), np.random.default_rng(0), epoch=1, progress=0.0))
    assert np.array_equal(first.positions, np.arange(40))
    assert first.weights is None or (np.asarray(first.weights) == 1).all()


# -- 4. the loop: shards, weights, counters -------------------------------------------------------------------------

def trainer_cfg(**kw):
    return OmegaConf.merge(OmegaConf.structured(TrainerConfig), {"epochs": 6, "batch_size": 64, "device": "cpu",
                                                                 **kw})


def small_digits(n_train=400):
    d = Digits().load("unused")
    return make_dataset("digits-small", d.x_train[:n_train], d.y_train[:n_train], d.x_test, d.y_test, 10)


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("size", [0, 1, 2, 3, 5, 7, 64, 100, 101])
def test_shards_partition_every_batch_in_order(world, size):
    batch = torch.randperm(1000, generator=torch.Generator().manual_seed(size))[:size]
    shards = [shard(batch, r, world) for r in range(world)]
    assert torch.equal(torch.cat(shards), batch)  # disjoint, union the batch, in batch order
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1
    # what Distributed.gather assumes each rank holds
    assert sizes == [len(s) for s in torch.arange(size).tensor_split(world)]


def test_every_shard_of_every_batch_of_an_epoch_plan_partitions_the_plan():
    data = small_digits(203)
    loop = _Loop(torch.nn.Linear(64, 10), data, Selection(np.arange(203)), trainer_cfg(batch_size=17), 0, CPU,
                 InfoBatch(), None, Local())
    loop.losses = torch.as_tensor(np.random.default_rng(0).exponential(size=203), dtype=torch.float32)
    loop.plan_epoch(2)
    plan = loop.plan.numpy()
    assert 0 < len(plan) < 203
    for world in (1, 2, 3, 4):
        parts = [shard(b, r, world).numpy() for b in loop.epoch_batches() for r in range(world)]
        together = np.concatenate(parts)
        assert len(together) == len(plan) and np.array_equal(np.sort(together), plan)


def test_a_weighted_step_descends_the_batch_mean_of_weight_times_loss():
    """InfoBatch's weights multiply each planned sample's loss; the step's loss is their mean over the batch
    (no renormalisation by the weights' sum)."""
    data = small_digits(120)
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 10)
    sgd = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 1.0}
    loop = _Loop(model, data, Selection(np.arange(120)), trainer_cfg(optimizer=sgd, amp=False), 0, CPU,
                 InfoBatch(prune_ratio=0.75), None, Local())
    loop.losses = torch.as_tensor(np.random.default_rng(1).exponential(size=120), dtype=torch.float32)
    loop.plan_epoch(2)
    weights = loop.w[loop.plan]
    assert set(np.round(weights.numpy(), 6)) == {1.0, 4.0}
    batch = loop.plan[:40]
    before = [p.detach().clone() for p in model.parameters()]
    x, y = torch.from_numpy(data.x_train[batch.numpy()]), torch.from_numpy(data.y_train[batch.numpy()])
    expected = (loop.w[batch] * F.cross_entropy(model(x), y, reduction="none")).mean()
    grads = torch.autograd.grad(expected, list(model.parameters()))
    loop.step(batch)
    for p, b, g in zip(model.parameters(), before, grads, strict=True):
        assert torch.allclose(b - p.detach(), g, atol=1e-6)


def recording(cls):
    """`cls` that keeps what the loop asked it and what it answered."""

    class Recording(cls):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.plans, self.masks = [], []

        def plan_epoch(self, ctx):
            plan = super().plan_epoch(ctx)
            self.plans.append((ctx.epoch, ctx.progress, ctx.losses.copy(), ctx.n_target, plan))
            return plan

        def filter_batch(self, losses, epoch, rng):
            keep = super().filter_batch(losses, epoch, rng)
            self.masks.append((epoch, np.array(losses), keep))
            return keep

    return Recording


def fit(stage, compose_cfg, n_train=400, epoch_target=None, seed=0, **trainer):
    data = small_digits(n_train)
    torch.manual_seed(seed)
    model = build_model(compose_cfg("model=mlp").model, data.input_shape, data.num_classes)
    out = train(model, data, Selection(np.arange(n_train)), trainer_cfg(**trainer), seed, CPU, dynamic=stage,
                epoch_target=epoch_target)
    return out


def test_infobatch_in_training_backpropagates_its_plans_from_the_seeded_stream(compose_cfg):
    n, epochs = 400, 6
    stage = recording(InfoBatch)(prune_ratio=0.5, delta=0.5)
    out = fit(stage, compose_cfg, n, epochs=epochs)
    assert [e for e, *_ in stage.plans] == list(range(1, epochs + 1))
    # recompute every plan from the losses the loop recorded, with the harness's seeded stream
    ref_rng = numpy_rng(0, "dynamic_selection")
    sizes = []
    for epoch, progress, losses, _, plan in stage.plans:
        assert progress == pytest.approx((epoch - 1) / epochs)
        if epoch == 1 or progress > 0.5:
            positions, weights = np.arange(n), np.ones(n)
            assert epoch == 1 or not np.isnan(losses).any()
        else:
            positions, weights = infobatch_reference(losses, 0.5, ref_rng)
        assert np.array_equal(plan.positions, positions)
        assert plan.weights is None or np.allclose(plan.weights, weights)
        sizes.append(len(positions))
    assert out.samples_backpropagated == out.samples_seen == out.samples_forwarded == sum(sizes)
    fractions = [f for _, f in out.epoch_selected_fraction]
    assert fractions == [s / n for s in sizes]
    assert fractions[0] == 1.0 and fractions[-2:] == [1.0, 1.0]  # epochs 5, 6: progress 4/6, 5/6 > delta
    assert all(f < 1.0 for f in fractions[1:4])
    assert out.epochs == epochs and out.steps == sum(math.ceil(s / 64) for s in sizes)


def test_rs2_in_training_trains_each_epoch_on_its_target(compose_cfg):
    n, k, epochs = 400, 100, 6
    stage = recording(RS2)()
    out = fit(stage, compose_cfg, n, epoch_target=k, epochs=epochs)
    assert [len(plan.positions) for *_, plan in stage.plans] == [k] * epochs
    assert all(n_target == k for *_, n_target, _ in stage.plans)
    assert out.samples_seen == out.samples_backpropagated == out.samples_forwarded == epochs * k
    assert [f for _, f in out.epoch_selected_fraction] == [k / n] * epochs
    # one pass of n / k = 4 epochs visits each sample once
    assert np.array_equal(np.sort(np.concatenate([p.positions for *_, p in stage.plans[:4]])), np.arange(n))


def test_selective_backprop_in_training_forwards_everything_and_backpropagates_what_it_keeps(compose_cfg):
    n, epochs = 400, 4
    stage = recording(SelectiveBackprop)(beta=2.0, history=256)
    out = fit(stage, compose_cfg, n, epochs=epochs)
    kept = sum(int(keep.sum()) for *_, keep in stage.masks)
    assert out.samples_seen == epochs * n
    assert out.samples_backpropagated == kept < out.samples_seen  # each epoch's last partial batch is flushed
    assert out.samples_forwarded == out.samples_seen + out.samples_backpropagated  # kept ones go forward twice
    assert all(keep.all() for epoch, _, keep in stage.masks if epoch == 1)  # the priming epoch keeps everything
    # kept samples wait for a full batch; what is left at the end of an epoch goes as one smaller batch (the
    # reference's final batch), so each epoch backpropagates exactly what it kept
    fractions = [f for _, f in out.epoch_selected_fraction]
    assert fractions[0] == 1.0 and all(f < 1.0 for f in fractions[1:])
    for epoch, f in out.epoch_selected_fraction:
        assert f == sum(int(keep.sum()) for e, _, keep in stage.masks if e == epoch) / n
    assert sum(fractions) == pytest.approx(kept / n)
    # each mask equals the reference on the losses the loop forwarded, with the harness's seeded stream
    batches = [(epoch, losses.astype(np.float64)) for epoch, losses, _ in stage.masks]
    refs = selective_backprop_reference(batches, 2.0, 256, numpy_rng(0, "dynamic_selection"))
    assert all(np.array_equal(keep, ref) for (*_, keep), ref in zip(stage.masks, refs, strict=True))


# -- 5. budgets ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["infobatch", "rs2", "selective_backprop", "none"])
def test_a_samples_budget_stops_within_one_batch_of_it(name, compose_cfg):
    stage = {"infobatch": InfoBatch(), "rs2": RS2(), "selective_backprop": SelectiveBackprop(),
             "none": None}[name]
    budget = 1000  # 2.5 epochs of 400, not a multiple of the batch
    out = fit(stage, compose_cfg, 400, epoch_target=200, epochs=None, samples=budget)
    assert budget <= out.samples_seen < budget + 64, out.samples_seen


def test_selective_backprop_under_a_samples_budget_backpropagates_everything_it_kept(compose_cfg):
    # the budget is reached in the middle of a batch's selection: its kept samples and the queue still train
    stage = recording(SelectiveBackprop)(beta=1.0)
    out = fit(stage, compose_cfg, 400, epochs=None, samples=1000)
    assert out.samples_backpropagated == sum(int(keep.sum()) for *_, keep in stage.masks)


class KeepsNothing(SelectiveBackprop):
    def filter_batch(self, losses, epoch, rng):
        return np.zeros(len(losses), dtype=bool)  # what non-finite losses make Selective-Backprop do


def test_a_steps_budget_no_epoch_can_advance_fails_instead_of_looping_forever(compose_cfg):
    with pytest.raises(RuntimeError, match=r"epoch 1 made no optimizer step.*trainer.steps=23 cannot be reached"):
        fit(KeepsNothing(), compose_cfg, 400, epochs=None, steps=23)


def test_an_epoch_without_a_step_logs_no_training_loss(compose_cfg):
    out = fit(KeepsNothing(), compose_cfg, 400, epochs=2)
    assert out.steps == 0 and all(math.isnan(loss) for _, loss in out.train_loss)


@pytest.mark.parametrize("name", ["infobatch", "selective_backprop"])
def test_a_steps_budget_takes_exactly_that_many_steps(name, compose_cfg):
    stage = InfoBatch() if name == "infobatch" else SelectiveBackprop()
    out = fit(stage, compose_cfg, 400, epochs=None, steps=23)
    assert out.steps == 23
    assert out.samples_backpropagated <= 23 * 64


# -- data-parallel: every rank plans the same epochs --------------------------------------------------------------

def _rank_main(rank: int, world: int, store: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        gen = np.random.default_rng(0)  # a learnable problem without loading a data set in each rank
        x, x_test = gen.normal(size=(203, 64)), gen.normal(size=(50, 64))
        w = gen.normal(size=(64, 10))
        data = make_dataset("linear", x, (x @ w).argmax(1), x_test, (x_test @ w).argmax(1), 10)
        results = {}
        for name, stage in (("infobatch", recording(InfoBatch)(delta=0.7)),
                            ("selective_backprop", recording(SelectiveBackprop)(history=128)),
                            ("craig", recording(Craig)(select_every=2))):
            torch.manual_seed(0)
            model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
            out = train(model, data, Selection(np.arange(203)), trainer_cfg(epochs=4, batch_size=31), 0, CPU,
                        dynamic=stage, workers=Distributed(rank, world, CPU), epoch_target=60)
            results[name] = {"plans": [(p.positions, p.weights) for *_, p in stage.plans],
                             "masks": [keep for *_, keep in stage.masks],
                             "backpropagated": out.samples_backpropagated, "seen": out.samples_seen}
        Path(out_dir, f"rank{rank}.pkl").write_bytes(pickle.dumps(results))
        # both ranks tear gloo down together: a rank that destroys its group while its peer still talks to it
        # aborts now and then (SIGABRT, "terminate called without an active exception")
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow  # spawns two gloo processes (~4 s)
def test_data_parallel_ranks_plan_and_filter_identically(tmp_path):
    """Two gloo ranks (batches of 31 and 203 samples: uneven shards) gather the per-sample losses (and CRAIG's
    last-layer snapshot), so each plans the same epochs and keeps the same samples of each batch."""
    world = 2
    torch.multiprocessing.spawn(_rank_main, args=(world, str(tmp_path / "store"), str(tmp_path)), nprocs=world)
    ranks = [pickle.loads((tmp_path / f"rank{r}.pkl").read_bytes()) for r in range(world)]
    ib, sb = ranks[0]["infobatch"], ranks[0]["selective_backprop"]
    assert len(ranks[0]["craig"]["plans"]) == 2 and ranks[0]["craig"]["plans"][1][1] is not None  # rounds 1, 3
    assert len(ib["plans"]) == 4 and any(len(pos) < 203 for pos, _ in ib["plans"])
    assert ib["backpropagated"] == sum(len(pos) for pos, _ in ib["plans"])
    assert sb["backpropagated"] == sum(int(m.sum()) for m in sb["masks"]) < sb["seen"] == 4 * 203
    for other in ranks[1:]:
        for a, b in zip(ib["plans"], other["infobatch"]["plans"], strict=True):
            assert np.array_equal(a[0], b[0]) and (a[1] is None) == (b[1] is None)
            assert a[1] is None or np.array_equal(a[1], b[1])
        for a, b in zip(sb["masks"], other["selective_backprop"]["masks"], strict=True):
            assert np.array_equal(a, b)
        for a, b in zip(ranks[0]["craig"]["plans"], other["craig"]["plans"], strict=True):
            assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
        assert other["infobatch"]["backpropagated"] == ib["backpropagated"]
        assert other["selective_backprop"]["backpropagated"] == sb["backpropagated"]


# -- configuration errors that need no training ----------------------------------------------------------------------

def test_rs2_replacement_must_be_a_boolean():
    # a quoted 'false' in a pipeline mapping is a string: bool('false') would silently mean with replacement
    with pytest.raises(SelectionError, match=r"replacement=false: expected true or false"):
        RS2(replacement="false")


def test_two_dynamic_stages_name_the_second_one(compose_cfg):
    cfg = compose_cfg("strategy=pipeline", "strategy.pipeline=[rs2,infobatch]", "strategy.fraction=0.5")
    with pytest.raises(UserError, match=r"strategy.pipeline\[1\]=infobatch: a second dynamic stage after rs2"):
        build_strategy(cfg)
