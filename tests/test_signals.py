"""Per-sample signals: each score against a reference written here; the probe and its on-disk cache."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from harness.config import ProbeConfig, TrainerConfig
from harness.data.base import make_dataset
from harness.signals import scores
from harness.signals.compute import compute_signals, probe_key


@pytest.mark.parametrize("seed", range(3))
def test_el2n_and_uncertainty_equal_reference(seed):
    rng = np.random.default_rng(seed)
    p = scores.softmax(rng.normal(size=(40, 5)) * 3)
    y = rng.integers(0, 5, 40)
    for i in range(40):
        onehot = np.eye(5)[y[i]]
        assert scores.el2n(p, y)[i] == pytest.approx(np.sqrt(((p[i] - onehot) ** 2).sum()))
        top = sorted(p[i])[::-1]
        assert scores.least_confidence(p)[i] == pytest.approx(1 - top[0])
        assert scores.margin(p)[i] == pytest.approx(1 - (top[0] - top[1]))
        assert scores.entropy(p)[i] == pytest.approx(-sum(q * np.log(q) for q in p[i]))


@pytest.mark.parametrize("bias", [True, False])
def test_grand_closed_form_equals_autograd_norm_over_the_head(bias):
    torch.manual_seed(0)
    head = torch.nn.Linear(6, 4, bias=bias).double()
    h, y = torch.randn(10, 6, dtype=torch.float64), torch.randint(0, 4, (10,))
    ref = []
    for i in range(10):
        head.zero_grad()
        torch.nn.functional.cross_entropy(head(h[i : i + 1]), y[i : i + 1]).backward()
        ref.append(torch.sqrt(sum((p.grad**2).sum() for p in head.parameters())).item())
    p = torch.softmax(head(h), 1).detach().numpy()
    assert np.allclose(scores.grand_last_layer(p, y.numpy(), h.numpy(), bias), ref, rtol=1e-10)


def test_forgetting_counts_equal_reference_and_never_learned_rank_highest():
    correct = np.random.default_rng(0).random((9, 50)) < 0.6
    correct[:, 3] = False  # never learned
    correct[:, 4] = True  # learned at once, never forgotten
    ref = [sum(correct[e - 1, i] and not correct[e, i] for e in range(1, 9)) for i in range(50)]
    ref[3] = 9
    got = scores.forgetting_counts(correct)
    assert got.tolist() == ref and got[3] > got[np.arange(50) != 3].max() and got[4] == 0


def tiny_setup(tmp_path, seed=0, epochs=3):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(120, 12)), rng.integers(0, 3, 120)
    x[:, 0] += 2 * y  # learnable
    data = make_dataset("tiny", x, y, x[:30], y[:30])
    cfg = OmegaConf.create({
        "model": {"_target_": "harness.models.MLP", "name": "mlp", "hidden": 16},
        "trainer": OmegaConf.structured(TrainerConfig(batch_size=20)),
        "probe": OmegaConf.structured(ProbeConfig(epochs=epochs, runs=2, score_epoch=2, projection_dim=5)),
        "seed": seed, "cache_dir": str(tmp_path),
    })
    return cfg, data


def test_probe_signals_are_cached_content_addressed(tmp_path):
    cfg, data = tiny_setup(tmp_path)
    needs = frozenset({"el2n", "forgetting", "embeddings", "losses", "raw", "projection"})
    first, info1 = compute_signals(needs, cfg, data, torch.device("cpu"))
    again, info2 = compute_signals(needs, cfg, data, torch.device("cpu"))
    assert not info1.cache_hit and info2.cache_hit
    assert info1.train_s == info2.train_s > 0  # the original cost travels with the cache
    for k in needs:
        assert np.array_equal(first[k], again[k]), k
    assert first["embeddings"].shape == (120, 16) and first["losses"].shape == (120, 3)
    assert np.allclose(np.linalg.norm(first["raw"], axis=1), 1, atol=1e-5)
    assert first["projection"].shape == (120, 5)
    assert len(list((tmp_path / "signals").glob("*.npz"))) == 1  # written once, no temp files left
    other_seed, _ = tiny_setup(tmp_path, seed=1)
    other_epochs, _ = tiny_setup(tmp_path, epochs=4)
    keys = {probe_key(c, data) for c in (cfg, other_seed, other_epochs)}
    assert len(keys) == 3
    other = other_seed.copy()
    other.cache_dir = "/elsewhere"  # where the cache lives is not part of what it holds
    assert probe_key(other, data) == probe_key(other_seed, data)


def test_probe_el2n_is_mean_over_runs_at_score_epoch(tmp_path):
    cfg, data = tiny_setup(tmp_path)
    sig, _ = compute_signals(frozenset({"el2n", "loss"}), cfg, data, torch.device("cpu"))
    assert sig["el2n"].shape == (120,) and (sig["el2n"] >= 0).all() and (sig["el2n"] <= np.sqrt(2)).all()
    # hard samples by EL2N have a larger loss on average: the signal carries the probe's information
    hard = sig["el2n"] > np.median(sig["el2n"])
    assert sig["loss"][hard].mean() > sig["loss"][~hard].mean()


def test_probe_trains_its_own_epochs_whatever_the_trials_budget(tmp_path):
    # a trial budgeted in samples seen (or steps) still gets a probe of probe.epochs epochs: the probe replaces
    # the trial's budget instead of adding a second one
    cfg, data = tiny_setup(tmp_path)
    cfg.trainer.epochs, cfg.trainer.samples = None, 50
    by_samples, _ = compute_signals(frozenset({"loss"}), cfg, data, torch.device("cpu"))
    cfg.trainer.epochs, cfg.trainer.samples = 7, None
    by_epochs, info = compute_signals(frozenset({"loss"}), cfg, data, torch.device("cpu"))
    assert info.cache_hit  # the trial's budget is not part of the probe's identity either
    assert np.array_equal(by_samples["loss"], by_epochs["loss"])
