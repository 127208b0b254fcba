"""The probe: train a proxy model a few times and record per-sample signals over the whole training set.

What it trains and when it scores is a `ProbePlan` (harness/signals/plan.py). Per run r (own initialisation and
data order, derived from the trial's seed):
- at `score_epoch`: EL2N, last-layer GraNd and (run 0) the penultimate features (`embeddings_early`);
- at `grand_epoch`: GraNd, the norm of each sample's loss gradient over all parameters (torch.func);
- every training step: whether each presented sample was classified correctly by the step's own forward, before
  the update; a forgetting event is a correct presentation followed by an incorrect one (Toneva et al. 2019); a
  probe on a subset counts every row on end-of-epoch predictions instead (rows outside it are never presented);
- at the end (L epochs): softmax (uncertainty) and, from run 0, the penultimate features (`embeddings`);
- after every epoch, only when asked (`per_epoch`): every sample's loss (`losses`, `loss`) and correctness.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from harness.build import build_model
from harness.data import Dataset
from harness.errors import UserError
from harness.flops import step_flops
from harness.host_rows import HostRows, on_device
from harness.seeding import derive_seed, numpy_rng
from harness.signals import scores
from harness.signals.plan import ProbePlan
from harness.train import evaluate, train
from strategies import Selection


@torch.no_grad()
def _outputs(model: nn.Module, x: torch.Tensor | HostRows, batch_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """(penultimate features, logits) for all of x, float32, in eval mode; features are the head's input."""
    feats: list[torch.Tensor] = []
    hook = model.head.register_forward_hook(lambda _m, inp, _out: feats.append(inp[0].float()))
    was_training = model.training
    model.eval()
    try:
        logits = torch.cat([model(x[i : i + batch_size]).float() for i in range(0, len(x), batch_size)])
    finally:
        hook.remove()
        model.train(was_training)
    return torch.cat(feats), logits


def grand_full(model: nn.Module, x: torch.Tensor | HostRows, y: torch.Tensor, chunk: int = 256) -> np.ndarray:
    """GraNd (Paul et al. 2021): ||d loss(x_i, y_i) / d theta|| over all parameters, per sample, in eval mode.

    Per-sample gradients with torch.func (vmap over grad), `chunk` samples at a time, so memory is chunk x params.
    """
    from torch.func import functional_call, grad, vmap

    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def loss(p: dict, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
        return F.cross_entropy(out.float(), yi.unsqueeze(0))

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))
    was_training = model.training
    model.eval()
    norms = []
    try:
        for i in range(0, len(y), chunk):
            g = per_sample(params, x[i : i + chunk], y[i : i + chunk])
            norms.append(torch.sqrt(sum(v.reshape(len(v), -1).double().pow(2).sum(1) for v in g.values())))
    finally:
        model.train(was_training)
    return torch.cat(norms).cpu().numpy()


def probe_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted positions of a seeded, class-stratified `fraction` of the training set (Coleman et al.'s proxy data);
    at least one sample of each class."""
    rng = numpy_rng(seed, "probe_subset")
    keep = []
    for c in np.unique(labels):
        pos = np.flatnonzero(labels == c)
        keep.append(rng.choice(pos, max(1, round(fraction * len(pos))), replace=False))
    return np.sort(np.concatenate(keep))


class _Forgetting:
    """Toneva et al.'s forgetting events over the presentations of each sample in training batches, on the device.

    A sample never classified correctly in any presentation gets its number of presentations, more than any learned
    sample can reach (at most half of them), as the paper ranks unlearned samples most forgettable."""

    def __init__(self, n: int, device: torch.device) -> None:
        self.prev = torch.zeros(n, dtype=torch.bool, device=device)  # its last presentation was correct
        self.learned = torch.zeros(n, dtype=torch.bool, device=device)
        self.events = torch.zeros(n, dtype=torch.int64, device=device)
        self.presented = torch.zeros(n, dtype=torch.int64, device=device)

    def update(self, idx: torch.Tensor, correct: torch.Tensor) -> None:
        self.events[idx] += (self.prev[idx] & ~correct).long()
        self.prev[idx] = correct
        self.learned[idx] |= correct
        self.presented[idx] += 1

    def counts(self) -> np.ndarray:
        out = self.events.double()
        never = ~self.learned
        out[never] = self.presented[never].double()
        return out.cpu().numpy()


def run_probe(cfg: DictConfig, data: Dataset, device: torch.device, plan: ProbePlan) -> dict[str, np.ndarray]:
    """Train `plan.runs` proxies on the probe's rows with the trial's trainer and record the signals of `plan`.

    Every early and end-of-training signal of the plan's length is computed (each is one forward); GraNd over all
    parameters and per-epoch losses only when the plan asks for them.
    """
    model_cfg = cfg.probe.model if cfg.probe.model is not None else cfg.model
    trainer_cfg = OmegaConf.merge(cfg.trainer, {"epochs": plan.epochs, "steps": None, "samples": None, "workers": 1,
                                                "eval_every_epochs": plan.epochs, "target_accuracy": None,
                                                "stop_at_target": False})
    x = on_device(data.x_train, device)  # rows in a file are read a batch at a time
    y_np = data.y_train
    n = len(y_np)
    y = torch.from_numpy(y_np).to(device)
    rows = np.arange(n) if plan.subset >= 1 else probe_subset(y_np, plan.subset, cfg.seed)
    rows_t = torch.from_numpy(rows).to(device)
    outside = np.ones(n, dtype=bool)
    outside[rows] = False  # never presented: forgetting is then counted on end-of-epoch predictions for every row
    ended = plan.stop_epoch == plan.epochs
    early: dict[str, list[np.ndarray]] = {"el2n": [], "grand_last_layer": [], "grand": []}
    losses = np.zeros((plan.runs, plan.stop_epoch, n), np.float32) if plan.per_epoch else None
    correct = np.zeros((plan.runs, plan.stop_epoch, n), bool) if plan.per_epoch else None
    forgetting, probs_end, test_acc, out = [], [], [], {}
    flops = 0  # training FLOPs of all runs: steps x one step's forward + backward (harness/flops.py)

    for r in range(plan.runs):
        torch.manual_seed(derive_seed(cfg.seed, f"probe_init/{r}"))
        model = build_model(model_cfg, data.input_shape, data.num_classes).to(device)
        if not isinstance(getattr(model, "head", None), nn.Linear):
            raise UserError(f"probe.model={model_cfg._target_}: expected a model with a linear `head` (its input "
                            "is the embedding; last-layer GraNd is taken over it)")
        tracker = _Forgetting(n, device)

        def record(epoch: int, m: nn.Module, r: int = r) -> bool:
            if epoch == plan.grand_epoch and plan.full_grand:
                early["grand"].append(grand_full(m, x, y))
            if epoch == plan.score_epoch or epoch == plan.epochs or (plan.per_epoch and epoch >= 1):
                feats, logits = _outputs(m, x)
                if plan.per_epoch and epoch >= 1:
                    losses[r, epoch - 1] = F.cross_entropy(logits, y, reduction="none").cpu().numpy()
                    correct[r, epoch - 1] = (logits.argmax(1) == y).cpu().numpy()
                p = torch.softmax(logits, 1).cpu().numpy()
                if epoch == plan.score_epoch:
                    early["el2n"].append(scores.el2n(p, y_np))
                    early["grand_last_layer"].append(scores.grand_last_layer(p, y_np, feats.cpu().numpy(),
                                                                              m.head.bias is not None))
                    if r == 0:
                        out["embeddings_early"] = feats.cpu().numpy().astype(np.float32)
                if epoch == plan.epochs:
                    probs_end.append(p)
                    if r == 0:
                        out["embeddings"] = feats.cpu().numpy().astype(np.float32)
            return epoch >= plan.stop_epoch

        record(0, model)  # scores at initialisation, when the plan asks for them there
        if plan.stop_epoch == 0:
            test_acc.append(evaluate(model, on_device(data.x_test, device), torch.from_numpy(data.y_test).to(device)))
            continue
        outcome = train(model, data, Selection(rows), trainer_cfg, derive_seed(cfg.seed, f"probe/{r}"), device,
                        on_epoch_end=record, on_batch=lambda pos, ok, t=tracker: t.update(rows_t[pos], ok))
        test_acc.append(outcome.final_test_accuracy)
        bs = trainer_cfg.batch_size
        flops += step_flops(model, x[:bs], y[:bs]) * outcome.steps
        if ended and (correct is not None or not outside.any()):
            # On a subset, rows outside it are never presented, so every row is counted on the same end-of-epoch
            # predictions (one measure for all; mixing it with per-presentation counts biased the ranking by subset)
            forgetting.append(tracker.counts() if not outside.any() else scores.forgetting_counts(correct[r]))

    out.update({k: np.mean(v, axis=0) for k, v in early.items() if v})
    if losses is not None:
        out["losses"] = losses.mean(0).T.copy()  # (n, epochs)
        out["loss"] = losses.mean((0, 1)).astype(np.float64)  # area under each sample's loss curve, per epoch
    if ended:
        p_mean = np.mean(probs_end, axis=0)  # uncertainty of the ensemble of runs
        if forgetting:
            out["forgetting"] = np.mean(forgetting, axis=0)
        out.update(least_confidence=scores.least_confidence(p_mean),
                   margin=scores.margin(p_mean), entropy=scores.entropy(p_mean))
    out["probe_test_accuracy"] = np.array(float(np.mean(test_acc)))
    out["probe_flops"] = np.array(float(flops))
    return out
