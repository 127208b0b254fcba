"""The probe: train a proxy model a few times and record per-sample signals over the whole training set."""

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
from harness.seeding import derive_seed
from harness.signals import scores
from harness.train import train
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


def run_probe(cfg: DictConfig, data: Dataset, device: torch.device) -> dict[str, np.ndarray]:
    """Train `cfg.probe.runs` proxies for `cfg.probe.epochs` each on all training data, with the trial's trainer.

    Per run and epoch: per-sample loss and correctness (forgetting); at `score_epoch`: EL2N and GraNd; at the
    end: softmax (uncertainty) and, from run 0, the penultimate embeddings. Run r has its own init and data
    order, derived from the trial's seed.
    """

    probe = cfg.probe
    model_cfg = probe.model if probe.model is not None else cfg.model
    trainer_cfg = OmegaConf.merge(cfg.trainer, {"epochs": probe.epochs, "steps": None, "samples": None, "workers": 1,
                                                "eval_every_epochs": probe.epochs, "target_accuracy": None,
                                                "stop_at_target": False})
    x = on_device(data.x_train, device)  # rows in a file are read a batch at a time
    y_np = data.y_train
    n, epochs = len(y_np), probe.epochs
    y = torch.from_numpy(y_np).to(device)
    losses = np.zeros((probe.runs, epochs, n), np.float32)
    correct = np.zeros((probe.runs, epochs, n), bool)
    el2n, grand, probs_end, test_acc, embeddings = [], [], [], [], []
    flops = 0  # training FLOPs of all runs: steps x one step's forward + backward (harness/flops.py)

    for r in range(probe.runs):
        torch.manual_seed(derive_seed(cfg.seed, f"probe_init/{r}"))
        model = build_model(model_cfg, data.input_shape, data.num_classes)
        if not isinstance(getattr(model, "head", None), nn.Linear):
            raise UserError(f"probe.model={model_cfg._target_}: expected a model with a linear `head` (its input "
                            "is the embedding; GraNd is taken over it)")

        def record(epoch: int, m: nn.Module, r: int = r) -> None:
            feats, logits = _outputs(m, x)
            losses[r, epoch - 1] = F.cross_entropy(logits, y, reduction="none").cpu().numpy()
            correct[r, epoch - 1] = (logits.argmax(1) == y).cpu().numpy()
            if epoch == probe.score_epoch or epoch == epochs:
                p = torch.softmax(logits, 1).cpu().numpy()
                if epoch == probe.score_epoch:
                    el2n.append(scores.el2n(p, y_np))
                    grand.append(scores.grand_last_layer(p, y_np, feats.cpu().numpy(), m.head.bias is not None))
                if epoch == epochs:
                    probs_end.append(p)
                    if r == 0:
                        embeddings.append(feats.cpu().numpy())

        outcome = train(model, data, Selection(np.arange(n)), trainer_cfg, derive_seed(cfg.seed, f"probe/{r}"),
                        device, on_epoch_end=record)
        test_acc.append(outcome.final_test_accuracy)
        bs = trainer_cfg.batch_size
        flops += step_flops(model, x[:bs], y[:bs]) * outcome.steps

    p_mean = np.mean(probs_end, axis=0)  # uncertainty of the ensemble of runs
    return {
        "embeddings": embeddings[0].astype(np.float32),
        "losses": losses.mean(0).T.copy(),  # (n, epochs)
        "loss": losses.mean((0, 1)).astype(np.float64),  # area under each sample's loss curve, per epoch
        "el2n": np.mean(el2n, axis=0),
        "grand": np.mean(grand, axis=0),
        "forgetting": np.mean([scores.forgetting_counts(correct[r]) for r in range(probe.runs)], axis=0),
        "least_confidence": scores.least_confidence(p_mean),
        "margin": scores.margin(p_mean),
        "entropy": scores.entropy(p_mean),
        "probe_test_accuracy": np.array(float(np.mean(test_acc))),
        "probe_flops": np.array(float(flops)),
    }
