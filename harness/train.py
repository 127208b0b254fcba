"""Training on a Selection with the whole dataset resident on the device (the airbench pattern).

One loop serves one process and data-parallel workers (harness/parallel.py): every rank draws the same global
batches from the same seeded generator and trains on its shard of each. Batches are slices of `torch.randperm` on
the device; no DataLoader workers for in-memory data. With a curriculum (order + pacing) each batch is drawn from
the first g(t)*n samples of the order. With a dynamic stage (strategies/dynamic.py) each epoch trains on the
samples the stage plans from the per-sample losses training recorded, or backpropagates only the samples of each
forwarded batch the stage keeps. Rows left in their file (the `npy` source, for sets larger than memory) stay on the
host and each batch is read and copied to the device (harness/host_rows.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from harness.augment import build_augment
from harness.build import build_optimizer, build_scheduler
from harness.data import Dataset
from harness.host_rows import HostRows, on_device
from harness.last_layer import snapshot
from harness.parallel import Local
from harness.seeding import numpy_rng, torch_generator
from strategies import Selection
from strategies.dynamic import DynamicStage, EpochContext

if TYPE_CHECKING:
    from harness.meters import Meter

BUDGET_UNITS = ("epochs", "steps", "samples")


@dataclass
class TrainOutcome:
    """What training produced: per-epoch curves, the final accuracy, the budget spent and the time spent
    evaluating and selecting inside the loop."""

    steps: int
    epochs: int
    final_test_accuracy: float
    train_loss: list[tuple[int, float]] = field(default_factory=list)  # (epoch, mean loss)
    test_accuracy: list[tuple[int, float]] = field(default_factory=list)  # (epoch, accuracy)
    eval_s: float = 0.0  # evaluation inside the training loop, to be booked as eval, not train
    # Time-to-accuracy (trainer.target_accuracy): at the end of the first epoch whose evaluation reached it,
    # training wall time since train() began (evaluation excluded, as in train_s), steps, and the meter's energy
    # over the same span (evaluation's time share taken out). NaN when never reached.
    tta_s: float = math.nan
    tta_steps: float = math.nan
    tta_energy_j: float = math.nan
    samples_seen: int = 0  # samples drawn from the data and forwarded (once per visit)
    samples_forwarded: int = 0  # forward passes per sample, all of them (Selective-Backprop forwards kept ones twice)
    samples_backpropagated: int = 0
    dynamic_selection_s: float = 0.0  # inside the loop: planning epochs and filtering batches (a dynamic stage)
    epoch_selected_fraction: list[tuple[int, float]] = field(default_factory=list)  # backpropagated / training set
    epoch_selection_s: list[tuple[int, float]] = field(default_factory=list)
    # Each selection round (a `plan_epoch` call, every select_every epochs): its seconds, last-layer forward
    # included, and the samples it planned; keyed by the epoch it starts.
    round_selection_s: list[tuple[int, float]] = field(default_factory=list)
    round_selected: list[tuple[int, float]] = field(default_factory=list)
    # At each evaluation: training time since train() began, evaluation excluded, and the meter's energy over it.
    eval_train_s: list[tuple[int, float]] = field(default_factory=list)
    eval_train_energy_j: list[tuple[int, float]] = field(default_factory=list)


@dataclass(frozen=True)
class Budget:
    """How long to train: `epochs` passes over each epoch's samples, `steps` optimizer steps, or `samples` seen."""

    unit: str
    amount: int

    @classmethod
    def of(cls, cfg: DictConfig) -> Budget:
        given = [u for u in BUDGET_UNITS if cfg.get(u) is not None]
        if len(given) != 1:
            raise ValueError(f"expected exactly one of trainer.{', trainer.'.join(BUDGET_UNITS)}; got {given}")
        return cls(given[0], int(cfg[given[0]]))

    def nominal_steps(self, n: int, batch_size: int) -> int:
        """Optimizer steps of static training on n samples: the horizon of lr schedules and curriculum pacing."""
        per_epoch = math.ceil(n / batch_size)
        return {"epochs": self.amount * per_epoch, "steps": self.amount,
                "samples": math.ceil(self.amount / batch_size)}[self.unit]


def resolve_device(name: str) -> torch.device:
    """`auto` means the first visible CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor | HostRows, y: torch.Tensor, batch_size: int = 4096,
             amp: bool = False) -> float:
    """Top-1 accuracy of `model` on (x, y)."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    for start in range(0, len(x), batch_size):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x[start : start + batch_size])
        correct += (logits.argmax(1) == y[start : start + batch_size]).sum()
    model.train(was_training)
    return correct.item() / len(x)


def _batches(
    n: int, batch_size: int, order: torch.Tensor | None, pacing: Callable[[float], float] | None,
    step: int, total_steps: int, gen: torch.Generator, device: torch.device,
) -> Iterator[torch.Tensor]:
    """Positions (into the selected samples) of each batch of one epoch."""
    if order is None:  # standard training: a fresh random order each epoch
        yield from torch.randperm(n, generator=gen, device=device).split(batch_size)
    elif pacing is None:  # a fixed order, followed as given every epoch
        yield from order.split(batch_size)
    else:  # curriculum: each batch uniformly from the first g(t)*n of the order
        for s in range(step, step + math.ceil(n / batch_size)):
            available = min(n, max(batch_size, math.ceil(pacing(s / total_steps) * n)))
            pick = torch.randperm(available, generator=gen, device=device)[:batch_size]
            yield order[pick]


class _Loop:
    """The state of one training run; `train` is its only user."""

    def __init__(self, model: nn.Module, data: Dataset, selection: Selection, cfg: DictConfig, seed: int,
                 device: torch.device, dynamic: DynamicStage | None, epoch_target: int | None,
                 workers: Local, on_batch: Callable[[torch.Tensor, torch.Tensor], None] | None = None) -> None:
        if dynamic is not None and selection.order is not None:
            raise ValueError("a dynamic stage cannot follow a curriculum (an order over the samples)")
        self.device, self.dynamic, self.workers, self.on_batch = device, dynamic, workers, on_batch
        self.x = on_device(data.x_train, device, selection.indices)  # rows in a file: read a batch at a time
        self.y = torch.from_numpy(data.y_train[selection.indices]).to(device)
        self.labels = data.y_train[selection.indices]
        self.n, self.n_train, self.batch_size = len(self.x), len(data.y_train), cfg.batch_size
        self.static_w = None
        if selection.weights is not None:  # mean 1, so the loss scale (and the lr) match unweighted training
            w = np.asarray(selection.weights, dtype=np.float32)
            self.static_w = torch.from_numpy(w / w.mean()).to(device)
        self.w = self.static_w
        self.order = None if selection.order is None else torch.as_tensor(selection.order, device=device)
        self.pacing = selection.pacing
        self.epoch_target = epoch_target if epoch_target is not None else self.n
        self.budget = Budget.of(cfg)
        self.nominal_steps = self.budget.nominal_steps(self.n, self.batch_size)
        self.amp = cfg.amp and device.type == "cuda"  # bf16 autocast only where it pays (tensor cores)

        self.model = model.to(device).train()
        step_model = workers.wrap(self.model)
        self.step_model = torch.compile(step_model) if cfg.compile and device.type == "cuda" else step_model
        self.optimizer = build_optimizer(cfg, self.model.parameters())
        self.scheduler = build_scheduler(cfg, self.optimizer, self.nominal_steps)
        self.scheduled = 0  # scheduler steps taken: follows the budget's progress (see `_advance_schedule`)
        self.gen = torch_generator(seed, "data_order", device)
        # training batches only; its draws come from the data-order stream, so the seed still fixes the run
        self.augment = build_augment(cfg.get("augment"), cfg.get("crop_padding", 4), self.gen)
        self.label_smoothing = cfg.get("label_smoothing", 0.0)
        self.rng = numpy_rng(seed, "dynamic_selection")
        record = dynamic is not None and dynamic.uses_losses
        # the gradient-matching stages forward the pool (and the validation split) at each round
        self.last_layer = dynamic is not None and dynamic.uses_last_layer
        self.x_val = self.y_val = None  # forwarded at each round only for a stage that selects against them
        if self.last_layer and getattr(dynamic, "needs_validation", False) and data.x_val is not None:
            self.x_val, self.y_val = on_device(data.x_val, device), torch.from_numpy(data.y_val).to(device)
        self.losses = torch.full((self.n,), math.nan, device=device) if record else None
        self.plan: torch.Tensor | None = None  # the current epoch plan's positions (None: every sample)
        self.per_batch_mean = False  # the plan's weights normalised per batch (EpochPlan.per_batch_mean)
        self.queue = torch.empty(0, dtype=torch.int64, device=device)  # forwarded, kept, not yet backpropagated
        self.out = TrainOutcome(steps=0, epochs=0, final_test_accuracy=float("nan"))
        self.loss_sum, self.loss_batches = torch.zeros((), device=device), 0

    # -- budget ---------------------------------------------------------------------------------------------
    def progress(self, epoch: int, within_epoch: float) -> float:
        """Fraction of the budget spent, in [0, 1]."""
        b, out = self.budget, self.out
        spent = {"epochs": epoch - 1 + within_epoch, "steps": out.steps, "samples": out.samples_seen}[b.unit]
        return min(1.0, spent / b.amount)

    def exhausted(self) -> bool:
        """Steps or samples budget reached (an epochs budget ends with its last epoch)."""
        return self.steps_spent() or (self.budget.unit == "samples" and self.out.samples_seen >= self.budget.amount)

    def steps_spent(self) -> bool:
        return self.budget.unit == "steps" and self.out.steps >= self.budget.amount

    def _advance_schedule(self, progress: float) -> None:
        """Step the lr scheduler to where static training would be at this progress: a dynamic epoch with fewer
        steps compresses the schedule instead of cutting its end off (what InfoBatch's and RS2's code do)."""
        if self.scheduler is None:
            return
        target = round(progress * self.nominal_steps)
        while self.scheduled < target:
            self.scheduler.step()
            self.scheduled += 1

    # -- one step -------------------------------------------------------------------------------------------
    def step(self, batch: torch.Tensor) -> None:
        """Forward, backward and optimizer step on a global batch of positions (this rank's shard of it)."""
        workers = self.workers
        mine = workers.shard(batch)
        x = self.x[mine]
        if self.augment is not None:
            x = self.augment(x, len(batch), workers.shard(torch.arange(len(batch), device=self.device)))
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            logits = self.step_model(x)
        losses = F.cross_entropy(logits.float(), self.y[mine], reduction="none", label_smoothing=self.label_smoothing)
        if self.on_batch is not None:  # each presentation's correctness, before this step's update (forgetting)
            self.on_batch(batch, workers.gather((logits.detach().argmax(1) == self.y[mine]), len(batch)))
        if self.losses is not None and not self.dynamic.per_batch:  # recorded from the training forward itself
            self.losses[batch] = workers.gather(losses.detach(), len(batch))
        if self.w is not None:
            losses = losses * self.w[mine]
        # sum x world / global batch: DDP's mean over ranks is then the whole batch's mean loss gradient (one
        # process: the mean itself, one op instead of three); per_batch_mean: the batch's weighted mean
        if self.per_batch_mean and self.w is not None:  # (an all-zero batch of weights: a zero loss, not 0/0)
            loss = losses.sum() * (workers.world / self.w[batch].sum().clamp_min(1e-12))
        elif workers.world == 1:
            loss = losses.mean()
        else:
            loss = losses.sum() * (workers.world / len(batch))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.loss_sum += loss.detach() / workers.world
        self.loss_batches += 1
        self.out.steps += 1
        self.out.samples_forwarded += len(batch)
        self.out.samples_backpropagated += len(batch)

    @torch.no_grad()
    def forward_losses(self, batch: torch.Tensor) -> torch.Tensor:
        """Per-sample losses of a global batch in eval mode, no gradient (Selective-Backprop's selection pass)."""
        mine = self.workers.shard(batch)
        self.model.eval()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            logits = self.model(self.x[mine])
        self.model.train()
        self.out.samples_forwarded += len(batch)
        return self.workers.gather(F.cross_entropy(logits.float(), self.y[mine], reduction="none"), len(batch))

    # -- one epoch ------------------------------------------------------------------------------------------
    def plan_epoch(self, epoch: int) -> float:
        """Ask the dynamic stage for this epoch's samples and weights (a selection round); returns the seconds it
        took, the last-layer forward included, and records the round."""
        start = time.perf_counter()
        losses = self.losses.cpu().numpy() if self.losses is not None else np.full(self.n, np.nan, np.float32)
        memo: list = []

        def last_layer():  # the forward only when the stage asks for it (not in a random or warm-start round)
            if not memo:
                memo.append(snapshot(self.model, self.x, self.y, self.x_val, self.y_val, self.workers, amp=self.amp))
                # the round's forward passes count as forwarded samples (and so in train_flops)
                self.out.samples_forwarded += self.n + (0 if self.x_val is None else len(self.x_val))
            return memo[0]

        ctx = EpochContext(epoch, self.progress(epoch, 0.0), losses, self.labels, min(self.epoch_target, self.n),
                           self.rng, self.budget.unit, self.budget.amount, self.batch_size,
                           last_layer if self.last_layer else None)
        plan = self.dynamic.plan_epoch(ctx)
        self.plan = torch.as_tensor(plan.positions, device=self.device)
        self.per_batch_mean = plan.per_batch_mean
        self.w = self.static_w
        if plan.weights is not None and not np.all(plan.weights == 1):  # all ones (annealed): no multiply per step
            self.w = self.static_w.clone() if self.static_w is not None else torch.ones(self.n, device=self.device)
            self.w[self.plan] *= torch.as_tensor(plan.weights, dtype=torch.float32, device=self.device)
        seconds = time.perf_counter() - start
        self.out.round_selection_s.append((epoch, seconds))
        self.out.round_selected.append((epoch, float(len(plan.positions))))
        return seconds

    def epoch_batches(self) -> Iterator[torch.Tensor]:
        if self.plan is None:
            return _batches(self.n, self.batch_size, self.order, self.pacing, self.out.steps, self.nominal_steps,
                            self.gen, self.device)
        if len(self.plan) == 0:  # a skipped epoch (CORDS's warm start): split() would yield one empty batch
            return iter(())
        return iter(self.plan[torch.randperm(len(self.plan), generator=self.gen, device=self.device)]
                    .split(self.batch_size))

    def run_epoch(self, epoch: int) -> float:
        """Train one epoch; returns the seconds spent selecting inside it."""
        dyn, bs = self.dynamic, self.batch_size
        selection_s = 0.0
        if dyn is not None and (epoch == 1 or dyn.due(epoch, self.progress(epoch, 0.0))):
            selection_s += self.plan_epoch(epoch)
        size = self.n if self.plan is None else len(self.plan)
        n_batches = math.ceil(size / bs)  # a curriculum epoch too: ceil(n / batch) batches drawn from its pacing
        for i, batch in enumerate(self.epoch_batches()):
            self.out.samples_seen += len(batch)
            if dyn is not None and dyn.per_batch:
                losses = self.forward_losses(batch)
                if self.losses is not None:
                    self.losses[batch] = losses
                losses_np = losses.cpu().numpy()  # waits for the forward: training's time, not selection's
                start = time.perf_counter()
                keep = dyn.filter_batch(losses_np, epoch, self.rng)
                selection_s += time.perf_counter() - start
                self.queue = torch.cat([self.queue, batch[torch.as_tensor(keep, device=self.device)]])
                while len(self.queue) >= bs and not self.steps_spent():
                    self.step(self.queue[:bs])
                    self.queue = self.queue[bs:]
                within = min(1.0, (i + 1) * bs / size)
            else:
                self.step(batch)
                within = (i + 1) / n_batches
            self._advance_schedule(self.progress(epoch, within))
            if self.exhausted():
                break
        if len(self.queue) and not self.steps_spent():  # the epoch's last kept samples, as a smaller batch
            self.step(self.queue)  # (Selective-Backprop's reference flushes its queue at the end of every epoch)
        self.queue = self.queue[:0]
        return selection_s


def train(model: nn.Module, data: Dataset, selection: Selection, cfg: DictConfig, seed: int,
          device: torch.device, on_epoch_end: Callable[[int, nn.Module], bool | None] | None = None,
          meter: Meter | None = None, dynamic: DynamicStage | None = None, epoch_target: int | None = None,
          workers: Local | None = None,
          on_batch: Callable[[torch.Tensor, torch.Tensor], None] | None = None) -> TrainOutcome:
    """Train `model` in place on the selected samples for the budget in `cfg`; evaluate every few epochs.

    `on_epoch_end(epoch, model)` runs after each epoch's steps (the signal probe records per-epoch outputs there);
    when it returns True, that epoch is the last (evaluated, then training ends: a probe that only needs early
    scores stops there, its lr schedule still the full length's). `on_batch(positions, correct)` sees each
    training batch's positions and whether each sample was classified correctly by the step's own forward, before
    the update (Toneva et al.'s per-presentation forgetting).
    `meter` (optional) gives the energy for time-to-accuracy and the anytime curve. `dynamic` plans each epoch
    (or filters each batch) over the selected samples, `epoch_target` being the samples per epoch the strategy's
    fraction asks for. `workers`: this process's rank in data-parallel training (default: the only one).
    """
    start_s = time.perf_counter()
    start_j = meter.energy_j() if meter is not None else math.nan
    target = cfg.get("target_accuracy")
    workers = workers if workers is not None else Local()
    loop = _Loop(model, data, selection, cfg, seed, device, dynamic, epoch_target, workers, on_batch)
    out = loop.out
    x_test, y_test = on_device(data.x_test, device), torch.from_numpy(data.y_test).to(device)
    epoch = 0
    while True:
        epoch += 1
        backpropagated, steps = out.samples_backpropagated, out.steps
        selection_s = loop.run_epoch(epoch)
        if loop.budget.unit == "steps" and out.steps == steps:  # else the loop would never end
            raise RuntimeError(f"epoch {epoch} made no optimizer step (a dynamic stage kept no sample; non-finite "
                               f"losses?): trainer.steps={loop.budget.amount} cannot be reached")
        last = loop.exhausted() or (loop.budget.unit == "epochs" and epoch >= loop.budget.amount)
        out.epochs = epoch
        out.dynamic_selection_s += selection_s
        out.epoch_selection_s.append((epoch, selection_s))
        out.epoch_selected_fraction.append((epoch, (out.samples_backpropagated - backpropagated) / loop.n_train))
        if on_epoch_end is not None and on_epoch_end(epoch, model):
            last = True
        mean_loss = workers.sum(loop.loss_sum).item() / loop.loss_batches if loop.loss_batches else math.nan
        out.train_loss.append((epoch, mean_loss))
        loop.loss_sum, loop.loss_batches = torch.zeros((), device=device), 0
        if epoch % cfg.eval_every_epochs == 0 or last:
            start = time.perf_counter()
            acc = workers.agree(evaluate(model, x_test, y_test, amp=loop.amp))
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            out.eval_s += time.perf_counter() - start
            out.test_accuracy.append((epoch, acc))
            out.final_test_accuracy = acc
            wall_s = time.perf_counter() - start_s
            train_s = wall_s - out.eval_s
            energy_j = (meter.energy_j() - start_j) * train_s / wall_s if meter is not None else math.nan
            out.eval_train_s.append((epoch, train_s))
            out.eval_train_energy_j.append((epoch, energy_j))
            if target is not None and acc >= target and math.isnan(out.tta_s):
                out.tta_s, out.tta_steps, out.tta_energy_j = train_s, out.steps, energy_j
                if cfg.get("stop_at_target"):
                    break
        if last:
            break
    return out
