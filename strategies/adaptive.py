"""Gradient-matching selection during training, as CORDS (decile-team/cords) runs it: every `select_every` epochs a
new subset is chosen from a forward of the current model, using each sample's last-layer gradient in closed form
(strategies/gradients.py), and training runs on it with per-sample weights, each batch's loss being
sum(w * loss) / sum(w) as in CORDS's training loop.

- `craig` (Mirzasoleiman et al., ICML 2020): per class, facility location on gradient distances (lazy greedy);
  a chosen sample's weight is the number of class samples it represents.
- `gradmatch` (Killamsetty et al., ICML 2021): per class, orthogonal matching pursuit with non-negative, L2-
  regularised weights matching the class's summed training (or validation) gradient; `gradmatch_pb` matches with
  whole mini-batches as the units.
- `glister` (Killamsetty et al., AAAI 2021): greedy picks by the Taylor-approximated gain in validation
  log-likelihood, the validation gradient updated after each pick; unit weights.

The schedule is CORDS's: the first subset is random (there is no trained model to select with yet) and a new one
is chosen every `select_every` epochs. With warm start (`kappa` > 0) the first ceil(int(kappa x epochs) x fraction)
epochs train on all data and the epochs up to kappa x epochs are skipped, so the warm start costs what kappa x
epochs of subset training would; selection then starts at once from the warm model (CORDS keeps a random subset
until the next multiple of select_every). With a steps or samples budget the warm start is exactly the first
kappa of it, its last epoch a random part of the data.
"""

from __future__ import annotations

import math

import numpy as np

from strategies.base import SelectionError
from strategies.dynamic import DynamicBase, EpochContext, EpochPlan, LastLayer
from strategies.gradients import (
    craig_similarity,
    facility_location,
    glister_greedy,
    grad_proxies,
    omp_nonneg,
    omp_nonneg_gram,
    proxy_gram,
    representation_counts,
)


def _class_rows(labels: np.ndarray) -> dict[int, np.ndarray]:
    """Each class's positions in the pool."""
    return {int(c): np.flatnonzero(labels == c) for c in np.unique(labels)}


def _apportion(sizes: list[int], k: int) -> list[int]:
    """Per-part budgets proportional to `sizes` that sum to exactly k (largest remainders; ties to the first part).
    CORDS takes ceil(k x size / n) per class, up to one sample per class more than k: with batches of 100 that
    is one more, smaller step per epoch than the fraction pays for, so Winnow keeps the budget exact."""
    total = sum(sizes)
    quotas = [k * s / total for s in sizes]
    counts = [min(s, math.floor(q)) for s, q in zip(sizes, quotas)]
    by_remainder = sorted(range(len(sizes)), key=lambda i: (-(quotas[i] - counts[i]), i))
    short = k - sum(counts)
    for i in by_remainder:
        if short == 0:
            break
        if counts[i] < sizes[i]:
            counts[i] += 1
            short -= 1
    return counts


def _parts(rows: np.ndarray, bytes_needed: float, max_bytes: int, exponent: int,
           rng: np.random.Generator) -> list[np.ndarray]:
    """`rows` in random parts small enough that each part's work array (bytes growing with the part's size to the
    power `exponent`) fits `max_bytes`; one part when it fits whole."""
    p = math.ceil((bytes_needed / max_bytes) ** (1 / exponent))
    if p <= 1:
        return [rows]
    return [np.sort(part) for part in np.array_split(rng.permutation(rows), p)]


def _fill(chosen: np.ndarray, weights: np.ndarray, n: int, k: int,
          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A short selection topped up to k with random other samples of weight 1 (CORDS's GradMatch; Winnow's CRAIG
    too, after leaving out picks of weight 0)."""
    short = k - len(chosen)
    if short <= 0:
        return chosen, weights
    rest = np.setdiff1d(np.arange(n), chosen)
    extra = rng.choice(rest, size=min(short, len(rest)), replace=False)
    return np.concatenate([chosen, extra]), np.concatenate([weights, np.ones(len(extra))])


class GradientRounds(DynamicBase):
    """The schedule shared by the gradient-matching stages; `choose` is each method's selection round.

    select_every: epochs between two selection rounds (CORDS's default 20).
    kappa:        warm start, the fraction of the budget spent on all data first (0: none).
    linear_layer: true: gradients of the last layer's weights and bias (err outer [h, 1]); false: of its bias
                  only (err), as CORDS's `linear_layer: False`.
    max_bytes:    the most any per-class work array (CRAIG's similarities, GradMatch's Gram) may take; a larger
                  class is split into random parts, each selecting its share of the class's budget.
    """

    reaches_target = True
    keeps_all = False
    uses_last_layer = True
    needs_validation = False

    def __init__(self, select_every: int = 20, kappa: float = 0.0, linear_layer: bool = True,
                 max_bytes: int = 1 << 30) -> None:
        super().__init__(select_every)
        if isinstance(kappa, bool) or not isinstance(kappa, int | float) or not 0 <= kappa < 1:
            raise SelectionError(f"kappa={kappa}: expected a number in [0, 1)")
        if not isinstance(linear_layer, bool):
            raise SelectionError(f"linear_layer={linear_layer}: expected true or false")
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1 << 20:
            raise SelectionError(f"max_bytes={max_bytes}: expected an integer >= 1048576 (1 MiB)")
        self.kappa, self.linear_layer, self.max_bytes = float(kappa), linear_layer, max_bytes
        # (unit, amount, subset fraction of the pool, batch size), from the first epoch's context
        self._budget: tuple[str, int, float, int] | None = None
        self._phase: str | None = None  # warm | skip | select: the phase of the last round
        self._select_start = 1  # the epoch of the first selection round

    # -- the schedule ---------------------------------------------------------------------------------------
    def _warm_left(self, progress: float) -> int:
        """Samples of a steps or samples budget still to spend on all data (whole steps for a steps budget)."""
        unit, amount, _, batch = self._budget
        left = math.floor(max(0.0, self.kappa - progress) * amount + 1e-9)
        return left * batch if unit == "steps" else left

    def _phase_at(self, epoch: int, progress: float) -> str:
        if self.kappa == 0 or self._budget is None:
            return "select"
        unit, amount, f, _ = self._budget
        if unit == "epochs":  # CORDS: ceil(int(kappa E) f) full epochs, then nothing until epoch int(kappa E)
            select_after = int(self.kappa * amount)
            if epoch <= math.ceil(select_after * f):
                return "warm"
            return "skip" if epoch <= select_after else "select"
        return "warm" if self._warm_left(progress) >= 1 else "select"

    def due(self, epoch: int, progress: float) -> bool:
        phase = self._phase_at(epoch, progress)
        if phase == "warm":  # free to plan, and the last warm epoch of a steps/samples budget is a partial one
            return True
        return phase != self._phase or (phase == "select" and (epoch - self._select_start) % self.select_every == 0)

    def plan_epoch(self, ctx: EpochContext) -> EpochPlan:
        if self._budget is None:
            self._budget = (ctx.budget_unit, ctx.budget, ctx.n_target / ctx.n, ctx.batch_size)
        phase, previous = self._phase_at(ctx.epoch, ctx.progress), self._phase
        self._phase = phase
        if phase == "warm":
            left = ctx.n if ctx.budget_unit == "epochs" else self._warm_left(ctx.progress)
            if left >= ctx.n:
                return EpochPlan(np.arange(ctx.n))
            # the warm start ends inside this epoch: a random part of the data, exactly what is left of it
            return EpochPlan(np.sort(ctx.rng.choice(ctx.n, size=left, replace=False)))
        if phase == "skip":
            return EpochPlan(np.empty(0, dtype=np.int64))
        if previous != "select":
            self._select_start = ctx.epoch
            if previous is None:  # CORDS starts from a random subset: the model has not been trained yet
                return EpochPlan(np.sort(ctx.rng.choice(ctx.n, size=ctx.n_target, replace=False)))
        if ctx.last_layer is None:
            raise SelectionError(f"{type(self).__name__} needs the model's last layer (EpochContext.last_layer)")
        positions, weights = self.choose(ctx, ctx.last_layer())
        order = np.argsort(positions)
        return EpochPlan(positions[order], np.asarray(weights, dtype=np.float64)[order], per_batch_mean=True)

    def choose(self, ctx: EpochContext, last: LastLayer) -> tuple[np.ndarray, np.ndarray]:
        """One selection round: positions into the pool and their weights."""
        raise NotImplementedError

    # -- shared pieces --------------------------------------------------------------------------------------
    def _feats(self, feats: np.ndarray) -> np.ndarray:
        """The feature side of the proxies: [h] with the weights' gradient; nothing (an empty column set) without."""
        return feats if self.linear_layer else feats[:, :0]

    def _units(self, ctx: EpochContext, bytes_per, exponent: int) -> list[tuple[np.ndarray, int]]:
        """(positions, budget) of each selection unit: the classes, each split into random parts when its work
        array (`bytes_per(size)` bytes) would exceed max_bytes; budgets proportional to size, summing to n_target.
        Classes (parts) with a budget of 0 are left out."""
        classes = list(_class_rows(ctx.labels).items())
        units: list[tuple[int, np.ndarray, int]] = []
        for (c, rows), k_class in zip(classes, _apportion([len(r) for _, r in classes], ctx.n_target)):
            parts = _parts(rows, bytes_per(len(rows)), self.max_bytes, exponent, ctx.rng)
            units += [(c, part, k) for part, k in zip(parts, _apportion([len(p) for p in parts], k_class))]
        return [(part, k) for _, part, k in units if k > 0]


class Craig(GradientRounds):
    """CRAIG per class (CORDS's `PerClass`): similarity max(d) - d on squared Euclidean distances d between
    gradient proxies, lazy greedy facility location for the class's share of k, weights = samples represented."""

    def choose(self, ctx: EpochContext, last: LastLayer) -> tuple[np.ndarray, np.ndarray]:
        chosen, weights = [], []
        for rows, k in self._units(ctx, bytes_per=lambda m: 8.0 * m**2, exponent=2):
            err, feats = last.err[rows], self._feats(last.feats[rows])
            sim = craig_similarity(proxy_gram(err, feats, err, feats))
            picks, _ = facility_location(sim, k)
            counts = representation_counts(sim, picks)
            # a pick that represents no sample (a tie with an earlier pick: duplicate gradients) has weight 0 and
            # would only cost compute (and make an all-zero batch's weighted mean 0/0): left out and topped up below
            chosen.append(rows[picks][counts > 0])
            weights.append(counts[counts > 0])
        return _fill(np.concatenate(chosen), np.concatenate(weights), ctx.n, ctx.n_target, ctx.rng)


class GradMatch(GradientRounds):
    """GradMatch per class and per gradient (CORDS's default `PerClassPerGradient`): for class c the atoms are the
    samples' gradients of the output row c (err[:, c] outer [h, 1]); OMP matches their sum (or, `valid: true`, the
    class's summed validation gradient) with at most the class's share of k non-negative weights, L2 penalty
    `lam`; a short selection is topped up with random samples of weight 1.

    lam: the L2 penalty (CORDS: 0.5). eps: OMP stops when residual / target norm falls below it (CORDS: 1e-100,
    i.e. never early). valid: match the validation gradient (needs `dataset.val_fraction`).
    """

    def __init__(self, lam: float = 0.5, eps: float = 1e-100, valid: bool = False, **schedule) -> None:
        super().__init__(**schedule)
        if isinstance(lam, bool) or not isinstance(lam, int | float) or lam < 0:
            raise SelectionError(f"lam={lam}: expected a number >= 0")
        if isinstance(eps, bool) or not isinstance(eps, int | float) or eps < 0:
            raise SelectionError(f"eps={eps}: expected a number >= 0")
        if not isinstance(valid, bool):
            raise SelectionError(f"valid={valid}: expected true or false")
        self.lam, self.eps, self.valid = float(lam), float(eps), valid
        self.needs_validation = valid

    def _block(self, err: np.ndarray, feats: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
        """The (err, feats) factors of the gradients of output row c: err[:, c] outer [h, 1]."""
        return err[:, c : c + 1], self._feats(feats)

    def choose(self, ctx: EpochContext, last: LastLayer) -> tuple[np.ndarray, np.ndarray]:
        val_err = _val_err(last) if self.valid else None
        chosen, weights = [], []
        # OMP works on the atoms' Gram (n_c^2 float32, from the factors: the gradients are never materialised) and
        # keeps the support's Gram columns (up to n_c^2 more) and proxy_gram's row chunks (1,024 x n_c)
        for rows, k in self._units(ctx, bytes_per=lambda m: 8.0 * m**2 + 4096.0 * m, exponent=2):
            c = int(ctx.labels[rows[0]])
            e, h = self._block(last.err[rows], last.feats[rows], c)
            gram = proxy_gram(e, h, e, h)
            if val_err is None:  # target: the sum of the unit's own gradients
                atoms_target, target_sq = gram.sum(1, dtype=np.float64), float(gram.sum(dtype=np.float64))
            else:  # the class's summed validation gradient, a part's share of it
                vrows = last.val_labels == c
                ve, vh = self._block(val_err[vrows], last.val_feats[vrows], c)
                share = len(rows) / int((ctx.labels == c).sum())
                atoms_target = share * proxy_gram(e, h, ve, vh).sum(1, dtype=np.float64)
                target_sq = share**2 * float(proxy_gram(ve, vh, ve, vh).sum(dtype=np.float64))
            picks, w = omp_nonneg_gram(gram, atoms_target, target_sq, k, self.lam, self.eps)
            chosen.append(rows[picks])
            weights.append(w)
        return _fill(np.concatenate(chosen), np.concatenate(weights), ctx.n, ctx.n_target, ctx.rng)


class GradMatchPB(GradMatch):
    """GradMatch per batch (CORDS's `PerBatch`): the units are the pool in consecutive mini-batches of the trainer's
    batch size (its order, as CORDS's unshuffled loader), each atom the batch's mean gradient (all output rows);
    OMP picks ceil(k / batch) of them to match the summed gradient, every sample of a batch taking its weight."""

    def __init__(self, lam: float = 0.0, **kwargs) -> None:
        super().__init__(lam=lam, **kwargs)

    def _batch_atoms(self, err: np.ndarray, feats: np.ndarray, batch: int) -> np.ndarray:
        """Mean gradient of each consecutive batch, one batch at a time (batch x C x (H + 1) floats at most)."""
        feats = self._feats(feats)
        starts = range(0, len(err), batch)
        atoms = np.empty((len(starts), err.shape[1] * (feats.shape[1] + 1)), dtype=np.float32)
        for j, s in enumerate(starts):
            atoms[j] = grad_proxies(err[s : s + batch], feats[s : s + batch]).mean(0)
        return atoms

    def choose(self, ctx: EpochContext, last: LastLayer) -> tuple[np.ndarray, np.ndarray]:
        atoms = self._batch_atoms(last.err, last.feats, ctx.batch_size)
        if self.valid:  # CORDS: the sum of the validation batches' mean gradients, on the same scale as atoms.sum
            target = self._batch_atoms(_val_err(last), last.val_feats, ctx.batch_size).sum(0)
        else:
            target = atoms.sum(0)  # CORDS sums the per-batch gradients (means) as the target
        k = min(len(atoms), math.ceil(ctx.n_target / ctx.batch_size))
        picks, w = omp_nonneg(atoms, target, k, self.lam, self.eps)
        rows = [np.arange(b * ctx.batch_size, min(ctx.n, (b + 1) * ctx.batch_size)) for b in picks]
        chosen = np.concatenate(rows) if rows else np.empty(0, dtype=np.int64)
        weights = np.concatenate([np.full(len(r), wb) for r, wb in zip(rows, w)]) if rows else np.empty(0)
        return _fill(chosen, weights, ctx.n, ctx.n_target, ctx.rng)


class Glister(GradientRounds):
    """GLISTER-ONLINE over the whole pool (CORDS's `Supervised`): k greedy picks by eta <g_i, g_val>, the validation
    gradient recomputed for the last layer after each pick; unit weights. Needs `dataset.val_fraction`.

    eta: the step size of the Taylor approximation (CORDS uses the optimizer's learning rate).
    greedy: `stochastic` (each pick from a random (n/k) log(1/eps) candidates, CORDS's default) or `naive`.
    """

    needs_validation = True

    def __init__(self, eta: float = 0.01, greedy: str = "stochastic", eps: float = 0.01, **schedule) -> None:
        super().__init__(**schedule)
        if isinstance(eta, bool) or not isinstance(eta, int | float) or eta <= 0:
            raise SelectionError(f"eta={eta}: expected a number > 0")
        if greedy not in ("stochastic", "naive"):
            raise SelectionError(f"greedy={greedy}: expected stochastic or naive")
        if isinstance(eps, bool) or not isinstance(eps, int | float) or not 0 < eps < 1:
            raise SelectionError(f"eps={eps}: expected a number in (0, 1)")
        self.eta, self.greedy, self.eps = float(eta), greedy, float(eps)

    def choose(self, ctx: EpochContext, last: LastLayer) -> tuple[np.ndarray, np.ndarray]:
        if last.val_feats is None:
            raise SelectionError("glister needs a validation split: set dataset.val_fraction in (0, 0.5]")
        rng = ctx.rng if self.greedy == "stochastic" else None
        picks, _ = glister_greedy(last.feats, last.err, last.val_feats, last.val_labels, last.weight, last.bias,
                                  ctx.n_target, self.eta, rng=rng, eps=self.eps, bias_only=not self.linear_layer)
        return np.asarray(picks, dtype=np.int64), np.ones(len(picks))


def _val_err(last: LastLayer) -> np.ndarray:
    """softmax - onehot of the validation samples at the current last layer."""
    if last.val_feats is None:
        raise SelectionError("valid: true needs a validation split: set dataset.val_fraction in (0, 0.5]")
    logits = last.val_feats @ last.weight.T + last.bias
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(p)), last.val_labels] -= 1.0
    return p.astype(np.float32)

