"""Per-sample signals: each score against a reference written here; the probe and its on-disk cache."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from harness.config import ProbeConfig, TrainerConfig
from harness.data.base import make_dataset
from harness.signals import scores
from harness.signals.compute import compute_signals, probe_key, probe_plan
from harness.signals.plan import plan_probe
from harness.signals.probe import _Forgetting, grand_full, probe_subset


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
        "probe": OmegaConf.structured(ProbeConfig(epochs=epochs, runs=2, score_at=2 / 3, projection_dim=5)),
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
    cpu = torch.device("cpu")
    plan = probe_plan(needs, cfg, data)
    other_seed, _ = tiny_setup(tmp_path, seed=1)
    other_epochs, _ = tiny_setup(tmp_path, epochs=4)
    smoothed = cfg.copy()
    smoothed.trainer.label_smoothing = 0.1
    keys = {probe_key(c, data, probe_plan(needs, c, data), cpu) for c in (cfg, other_seed, other_epochs, smoothed)}
    # the device type and bf16 autocast change the numbers: a CUDA probe (amp on by default) is another entry
    keys.add(probe_key(cfg, data, plan, torch.device("cuda")))
    no_amp = cfg.copy()
    no_amp.trainer.amp = False
    keys.add(probe_key(no_amp, data, plan, torch.device("cuda")))
    assert len(keys) == 6
    assert probe_key(no_amp, data, plan, cpu) == probe_key(cfg, data, plan, cpu)  # amp is CUDA only: no change
    other = other_seed.copy()
    other.cache_dir = "/elsewhere"  # where the cache lives is not part of what it holds
    assert probe_key(other, data, plan, cpu) == probe_key(other_seed, data, plan, cpu)


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


def _probe_cfg(**kw):
    return OmegaConf.structured(ProbeConfig(**kw))


def test_probe_plan_follows_the_papers_and_the_trials_budget():
    trainer = OmegaConf.structured(TrainerConfig())  # 150 epochs
    el2n = plan_probe(_probe_cfg(), trainer, {"el2n"}, 4000)
    # Paul et al.: EL2N 10% into training (epoch 20 of 200), 10 runs; the probe stops there
    assert (el2n.epochs, el2n.runs, el2n.score_epoch, el2n.stop_epoch) == (150, 10, 15, 15)
    assert el2n.trained_epochs == 150  # 10 runs x 15 epochs: one full training's worth
    grand = plan_probe(_probe_cfg(), trainer, {"grand"}, 4000)
    assert (grand.grand_epoch, grand.stop_epoch, grand.runs, grand.full_grand) == (0, 0, 10, True)  # at init
    forgetting = plan_probe(_probe_cfg(), trainer, {"forgetting", "el2n"}, 4000)
    assert (forgetting.runs, forgetting.stop_epoch, forgetting.per_epoch) == (1, 150, False)
    assert plan_probe(_probe_cfg(), trainer, {"loss"}, 4000).per_epoch
    steps = OmegaConf.merge(trainer, {"epochs": None, "steps": 6000})  # 6,000 x 100 / 4,000 = 150 epochs
    assert plan_probe(_probe_cfg(), steps, {"el2n"}, 4000).epochs == 150
    assert plan_probe(_probe_cfg(), steps, {"el2n"}, 3000).epochs == 200
    short = plan_probe(_probe_cfg(epochs=15, runs=2, score_at=0.05, subset=0.25), trainer, {"el2n"}, 4000)
    assert (short.epochs, short.runs, short.score_epoch, short.trained_epochs) == (15, 2, 1, 0.5)
    assert plan_probe(_probe_cfg(), trainer, {"embeddings_early"}, 4000).runs == 1  # run 0's features alone
    assert plan_probe(_probe_cfg(), trainer, {"embeddings_early", "el2n"}, 4000).runs == 10
    sub = plan_probe(_probe_cfg(subset=0.5), trainer, {"forgetting"}, 4000)
    assert sub.per_epoch  # samples outside the subset are never presented: counted on end-of-epoch predictions


def test_early_probe_stops_at_the_score_epoch_and_scores_as_the_full_length_probe_does(tmp_path):
    # EL2N at epoch 2 of a 3-epoch schedule: the early probe trains 2 epochs and gives the same scores as a probe
    # that trains on to the end (same seeds, same schedule); a third of the steps fewer
    cfg, data = tiny_setup(tmp_path)
    early, rec_early = compute_signals(frozenset({"el2n", "embeddings_early"}), cfg, data, torch.device("cpu"))
    full, rec_full = compute_signals(frozenset({"el2n", "embeddings_early", "embeddings", "forgetting"}), cfg, data,
                                     torch.device("cpu"))
    assert (rec_early.plan.stop_epoch, rec_full.plan.stop_epoch) == (2, 3)
    assert rec_early.cache_path != rec_full.cache_path
    assert np.allclose(early["el2n"], full["el2n"], rtol=1e-6, atol=1e-7)
    # the early embeddings (for duplicate finding before features collapse) are epoch 2's, not the last epoch's
    assert np.allclose(early["embeddings_early"], full["embeddings_early"], rtol=1e-5, atol=1e-6)
    assert not np.allclose(full["embeddings_early"], full["embeddings"])
    assert rec_early.flops == pytest.approx(rec_full.flops * 2 / 3)


def test_forgetting_events_counted_per_presentation_on_a_scripted_sequence():
    # 4 samples, presentations in scripted batches; reference: Toneva et al.'s count over each sample's own
    # sequence of presentation accuracies (1 -> 0 transitions), unlearned samples get their presentation count
    script = [([0, 1, 2], [1, 0, 0]), ([3, 0], [0, 0]), ([1, 2, 0], [1, 0, 1]), ([3, 1], [0, 0]),
              ([0, 1, 2], [0, 1, 0]), ([0], [1])]
    tracker = _Forgetting(4, torch.device("cpu"))
    seq: dict[int, list[int]] = {i: [] for i in range(4)}
    for idx, ok in script:
        tracker.update(torch.tensor(idx), torch.tensor(ok, dtype=torch.bool))
        for i, o in zip(idx, ok):
            seq[i].append(o)
    ref = []
    for i in range(4):
        a = np.array(seq[i])
        ref.append(float(len(a)) if not a.any() else float(((a[:-1] == 1) & (a[1:] == 0)).sum()))
    assert tracker.counts().tolist() == ref == [2.0, 1.0, 3.0, 2.0]  # sample 2 and 3: never learned


def test_training_reports_each_presentations_correctness_before_the_update():
    # lr 0: the model never changes, so every presentation's correctness is the initial model's prediction, and
    # each sample is presented once per epoch
    from harness.build import build_model
    from harness.train import train
    from strategies import Selection

    cfg, data = tiny_setup(None)
    torch.manual_seed(0)
    model = build_model(cfg.model, data.input_shape, data.num_classes)
    with torch.no_grad():
        expected = (model(torch.from_numpy(data.x_train)).argmax(1) == torch.from_numpy(data.y_train))
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    tcfg = OmegaConf.merge(cfg.trainer, {"epochs": 2, "optimizer": {"lr": 0.0}})
    train(model, data, Selection(np.arange(len(data.y_train))), tcfg, 0, torch.device("cpu"),
          on_batch=lambda pos, ok: seen.append((pos.clone(), ok.clone())))
    pos = torch.cat([p for p, _ in seen])
    ok = torch.cat([o for _, o in seen])
    assert torch.bincount(pos, minlength=len(data.y_train)).tolist() == [2] * len(data.y_train)
    assert torch.equal(ok, expected[pos])


def test_grand_over_all_parameters_equals_per_sample_autograd():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x, y = torch.randn(13, 6), torch.randint(0, 3, (13,))
    ref = []
    for i in range(13):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        ref.append(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters())).item())
    assert np.allclose(grand_full(model, x, y, chunk=5), ref, rtol=1e-5)


def test_grand_at_initialisation_trains_nothing_and_averages_the_runs(tmp_path):
    cfg, data = tiny_setup(tmp_path)
    cfg.probe.grand_at = 0.0
    sig, rec = compute_signals(frozenset({"grand"}), cfg, data, torch.device("cpu"))
    assert rec.plan.stop_epoch == 0 and rec.flops == 0
    from harness.build import build_model
    from harness.seeding import derive_seed

    ref = []
    for r in range(2):
        torch.manual_seed(derive_seed(cfg.seed, f"probe_init/{r}"))
        m = build_model(cfg.model, data.input_shape, data.num_classes)
        ref.append(grand_full(m, torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)))
    assert np.allclose(sig["grand"], np.mean(ref, axis=0))


def test_probe_subset_is_stratified_and_the_signals_cover_every_sample(tmp_path):
    labels = np.repeat(np.arange(4), [40, 20, 10, 2])
    sub = probe_subset(labels, 0.25, seed=3)
    assert np.bincount(labels[sub]).tolist() == [10, 5, 2, 1]  # at least one of each class
    assert np.array_equal(sub, probe_subset(labels, 0.25, seed=3))
    cfg, data = tiny_setup(tmp_path)
    cfg.probe.subset = 0.5
    sig, rec = compute_signals(frozenset({"forgetting", "el2n"}), cfg, data, torch.device("cpu"))
    whole, rec_whole = compute_signals(frozenset({"forgetting", "el2n"}), tiny_setup(tmp_path)[0], data,
                                       torch.device("cpu"))
    assert sig["forgetting"].shape == sig["el2n"].shape == (120,) and np.isfinite(sig["forgetting"]).all()
    assert rec.flops == pytest.approx(rec_whole.flops / 2)  # half the rows: half the steps


_LOCKED_PROBE = """
import json, sys
import numpy as np, torch
sys.path.insert(0, {tests!r})
from test_signals import tiny_setup
from harness.signals.compute import compute_signals, signals_lock
cfg, data = tiny_setup(__import__("pathlib").Path({cache!r}))
needs = frozenset({{"el2n", "forgetting"}})
with signals_lock(needs, cfg, data, torch.device("cpu")):
    sig, rec = compute_signals(needs, cfg, data, torch.device("cpu"))
np.save({out!r}, sig["forgetting"] + 1000 * sig["el2n"])
print(json.dumps({{"hit": rec.cache_hit}}))
"""


def test_concurrent_trials_of_one_key_train_the_probe_once(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    tests = str(Path(__file__).parent)
    procs = [subprocess.Popen([sys.executable, "-c", _LOCKED_PROBE.format(tests=tests, cache=str(tmp_path / "c"),
                                                                          out=str(tmp_path / f"{i}.npy"))],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), results
    hits = sorted(json.loads(out.strip().splitlines()[-1])["hit"] for out, _ in results)
    assert hits == [False, True]  # one trained, the other waited and read its cache
    assert np.array_equal(np.load(tmp_path / "0.npy"), np.load(tmp_path / "1.npy"))


class _StageMeter:
    """What ProbeRecord.charge reads of a Meter: the probe stage's seconds and energy."""

    def __init__(self, seconds: float, energy_j: dict[str, float]) -> None:
        self.seconds, self.energy_j, self.charged = {"probe": seconds}, energy_j, []

    def stage_energy_j(self, name: str) -> dict[str, float]:
        return dict(self.energy_j)

    def charge(self, name: str, seconds: float, energy_j: dict[str, float]) -> None:
        self.charged.append((name, seconds, energy_j))


def test_the_cached_cost_is_the_probes_own_not_the_whole_signal_stage(tmp_path):
    # the stage took 3 s (the probe 1 s, a data signal such as test_similarity 2 s): a trial reading the cache is
    # charged the probe's second and its share of the energy, and computes its data signals itself
    from harness.signals.compute import ProbeRecord

    trained = ProbeRecord(False, tmp_path / "k.npz", 0.9, 1.0, None)
    trained.charge(_StageMeter(3.0, {"cpu": 30.0}))
    hit = ProbeRecord(True, tmp_path / "k.npz", 0.9, 1.0, None)
    meter = _StageMeter(0.01, {})
    hit.charge(meter)
    assert meter.charged == [("probe_cached", 1.0, {"cpu": 10.0})]
