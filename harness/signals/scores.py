"""Per-sample scores from a model's outputs: pure array functions, each checked against a reference in tests.

All are oriented "higher = harder / more uncertain", so a coreset's `keep: hard` takes the highest.
"""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def el2n(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """EL2N (Paul et al. 2021): ||softmax(f(x)) - onehot(y)||_2."""
    err = probs.astype(np.float64).copy()
    err[np.arange(len(labels)), labels] -= 1.0
    return np.linalg.norm(err, axis=1)


def grand_last_layer(probs: np.ndarray, labels: np.ndarray, features: np.ndarray, bias: bool = True) -> np.ndarray:
    """GraNd restricted to the last linear layer, in closed form.

    For logits = W h + c and cross-entropy, dL/dW = (p - y) h^T and dL/dc = p - y, so the gradient's norm is
    ||p - y|| * sqrt(||h||^2 + 1) (without the +1 when the layer has no bias). Paul et al. take the norm over
    all parameters; the last layer is the usual cheap stand-in (and ranks like EL2N scaled by the feature norm).
    """
    h2 = np.einsum("ij,ij->i", features.astype(np.float64), features.astype(np.float64))
    return el2n(probs, labels) * np.sqrt(h2 + (1.0 if bias else 0.0))


def forgetting_counts(correct: np.ndarray) -> np.ndarray:
    """Forgetting events (Toneva et al. 2019) from `correct` of shape (epochs, n): count of correct -> incorrect
    transitions between consecutive epochs. Never-learned samples (never correct) get `epochs`, more than any
    learned sample can reach (at most epochs // 2), since the paper ranks them as most forgettable."""
    c = correct.astype(bool)
    events = (c[:-1] & ~c[1:]).sum(0).astype(np.float64)
    events[~c.any(0)] = c.shape[0]
    return events


def least_confidence(probs: np.ndarray) -> np.ndarray:
    """1 - max_c p_c."""
    return 1.0 - probs.max(1).astype(np.float64)


def margin(probs: np.ndarray) -> np.ndarray:
    """1 - (p_top1 - p_top2): near 1 when the two top classes tie (uncertain), near 0 when one dominates."""
    top2 = np.sort(probs, axis=1)[:, -2:].astype(np.float64)
    return 1.0 - (top2[:, 1] - top2[:, 0])


def entropy(probs: np.ndarray) -> np.ndarray:
    """-sum_c p_c log p_c (nats)."""
    p = probs.astype(np.float64)
    return -(p * np.log(np.clip(p, 1e-30, None))).sum(1)
