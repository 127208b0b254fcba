"""Decontamination: drop training samples that (nearly) copy a test sample, by FAISS exact cosine search.

The kernel `nearest_by_cosine` is shared with the contamination audit (`python -m harness.audit`), which reports the
same pairs from the test side.
"""

from __future__ import annotations

import numpy as np

from strategies.base import BaseStage, Selection, SelectionContext, SelectionError, rows

# Query rows searched per FAISS call: bounds the result arrays (chunk x k) and lets a caller see progress; FAISS
# blocks its own similarity matrix (4,096 queries x 1,024 base rows at a time), so memory does not grow with it.
CHUNK_ROWS = 16_384
# Why 0.98: a near copy (re-encoded, resized, lightly noised) of a sample stays above it in raw input space, while
# independent samples in d dimensions sit near 0 +- 1/sqrt(d) (about 0.05 at d=384), and distinct samples of one
# dataset sit below it too: on MNIST-1D (4,000 / 1,000) every test row's nearest training row is at cosine <= 0.952
# in raw space (median 0.80). Look-alike images that are not copies can exceed it in raw pixel space; the audit
# reports the pairs so a user can look before dropping.
DEFAULT_THRESHOLD_COS = 0.98
COSINE_TOLERANCE = 1e-5  # float32 rounding of unit-vector inner products (measured: identical rows >= 0.9999994)


def check_threshold(threshold_cos: float) -> None:
    if isinstance(threshold_cos, bool) or not isinstance(threshold_cos, int | float) or not 0 < threshold_cos <= 1:
        raise SelectionError(f"threshold_cos={threshold_cos}: expected a number in (0, 1]")


def nearest_by_cosine(queries: np.ndarray, base: np.ndarray, k: int = 1,
                      chunk_rows: int = CHUNK_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """For each unit row of `queries`, its k nearest unit rows of `base` by inner product (= cosine): FAISS exact
    search (IndexFlatIP), queries `chunk_rows` at a time.

    Returns (cosine float32, base index int64), both (len(queries), min(k, len(base))), nearest first.
    """
    import faiss

    if chunk_rows < 1:
        raise SelectionError(f"chunk_rows={chunk_rows}: expected a positive integer")
    q = np.ascontiguousarray(queries, dtype=np.float32)
    b = np.ascontiguousarray(base, dtype=np.float32)
    kk = min(k, len(b))
    cos = np.empty((len(q), kk), np.float32)
    idx = np.empty((len(q), kk), np.int64)
    if kk == 0 or len(q) == 0:
        return cos, idx
    index = faiss.IndexFlatIP(b.shape[1])
    index.add(b)
    for s in range(0, len(q), chunk_rows):
        cos[s : s + chunk_rows], idx[s : s + chunk_rows] = index.search(q[s : s + chunk_rows], kk)
    return cos, idx


def max_cosine_to(queries: np.ndarray, base: np.ndarray, chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
    """Per unit row of `queries`, its largest cosine to any unit row of `base` (float32; -inf when base is empty).

    With queries = training rows and base = test rows this is the `test_similarity` signal `Decontaminate` reads.
    """
    if len(base) == 0:
        return np.full(len(queries), -np.inf, np.float32)
    return nearest_by_cosine(queries, base, 1, chunk_rows)[0][:, 0]


class Decontaminate(BaseStage):
    """Drop every candidate whose largest cosine similarity to any test sample is >= `threshold_cos`.

    Reads the per-training-sample signal `test_similarity` (`max_cosine_to(train rows, test rows)`, unit rows of the
    space the harness chose). Removes by its own rule, so it never cuts to `fraction`: follow it with a coreset stage
    in a pipeline for that.
    """

    reaches_target = False

    def __init__(self, threshold_cos: float, signal: str = "test_similarity") -> None:
        check_threshold(threshold_cos)
        self.threshold_cos, self.signal = float(threshold_cos), signal
        self.needs = frozenset({signal})
        self.info: dict[str, float] = {}

    def select(self, ctx: SelectionContext) -> Selection:
        sim = np.asarray(rows(ctx.signals[self.signal], ctx.candidates))
        if sim.shape != (len(ctx.candidates),):
            raise SelectionError(f"signal {self.signal}: expected one value per training sample, got shape {sim.shape}")
        # float32 cosines of byte-identical rows can fall a few ulps below 1: a threshold of 1 must still catch them
        drop = sim >= self.threshold_cos - COSINE_TOLERANCE
        self.info["n_dropped"] = float(np.sum(drop))
        return Selection(np.sort(ctx.candidates[~drop]))
