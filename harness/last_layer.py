"""The model's output layer and what it sees, captured for the gradient-matching stages (CRAIG, GradMatch,
GLISTER): they compute each sample's last-layer gradient in closed form from it, as CORDS does, so no
per-sample backward pass is needed.

The output layer is the model's last `torch.nn.Linear` whose output is the model's output (checked on a forward:
a model ending in anything else cannot give these proxies).
"""

from __future__ import annotations

import torch
from torch import nn

from harness.errors import UserError
from harness.host_rows import HostRows
from harness.parallel import Local
from strategies.dynamic import LastLayer


def output_layer(model: nn.Module, x: torch.Tensor) -> nn.Linear:
    """The Linear layer that produces the model's output on `x`. Raises UserError when there is none."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if linears:
        seen: list[torch.Tensor] = []
        handle = linears[-1].register_forward_hook(lambda _m, _i, out: seen.append(out))
        try:
            with torch.no_grad():
                out = model(x)
        finally:
            handle.remove()
        if seen and seen[-1] is out:
            return linears[-1]
    raise UserError(f"model={type(model).__name__}: gradient-matching strategies (craig, gradmatch, glister) need "
                    "the model's output to come from a torch.nn.Linear layer; expected one as its last layer")


@torch.no_grad()
def _features(model: nn.Module, layer: nn.Linear, x: torch.Tensor | HostRows, y: torch.Tensor, rows: torch.Tensor,
              batch_size: int, amp: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(penultimate activations, softmax - onehot) of `rows` of x, in float32, in batches (indexed per batch: rows
    left in their file are read a batch at a time)."""
    feats, errs = [], []
    captured: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0]))
    try:
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(x[batch])
            feats.append(captured.pop().float().flatten(1))
            err = torch.softmax(logits.float(), dim=1)
            err[torch.arange(len(err), device=err.device), y[batch]] -= 1.0
            errs.append(err)
    finally:
        handle.remove()
    return torch.cat(feats), torch.cat(errs)


def snapshot(model: nn.Module, x: torch.Tensor | HostRows, y: torch.Tensor, x_val: torch.Tensor | HostRows | None,
             y_val: torch.Tensor | None, workers: Local | None = None, batch_size: int = 1024,
             amp: bool = False) -> LastLayer:
    """The output layer's parameters and, for every training sample (and validation sample), its penultimate
    activations and softmax - onehot, from an eval-mode forward of the current model on its device.

    Data-parallel ranks each forward their share of the rows and all-gather the rest, so every rank plans from the
    same arrays (the gradient-matching stages then pick the same samples on every rank)."""
    workers = workers if workers is not None else Local()
    was_training = model.training
    model.eval()
    try:
        layer = output_layer(model, x[:2])

        def rows(xs: torch.Tensor | HostRows, ys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            mine = workers.shard(torch.arange(len(xs), device=xs.device))
            feats, err = _features(model, layer, xs, ys, mine, batch_size, amp)
            return workers.gather(feats, len(xs)).cpu(), workers.gather(err, len(xs)).cpu()

        feats, err = rows(x, y)
        val_feats = val_labels = None
        if x_val is not None and y_val is not None:
            val_feats, _ = rows(x_val, y_val)
            val_labels = y_val.cpu().numpy()
    finally:
        model.train(was_training)
    return LastLayer(feats=feats.numpy(), err=err.numpy(), weight=layer.weight.detach().float().cpu().numpy(),
                     bias=(layer.bias.detach().float().cpu().numpy() if layer.bias is not None
                           else torch.zeros(layer.out_features).numpy()),
                     val_feats=None if val_feats is None else val_feats.numpy(), val_labels=val_labels)
