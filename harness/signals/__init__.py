"""Per-sample signals for selection: their names. Computing them is `harness.signals.compute`.

    signals, probe = compute_signals(needs, cfg, data, device)   # harness/signals/compute.py

Probe signals come from a proxy model trained a few times (harness/signals/probe.py) and are cached on disk,
content-addressed; the others come straight from the data, or from an embeddings file (`file`, read by
`harness.signals.embeddings_file`). This module stays import-light: the preflight checks a strategy's `needs`
against these names before any compute.
"""

# Signals the probe computes (harness/signals/probe.py). Early scores are taken part-way into the probe's training
# (`probe.score_at`; GraNd over all parameters at `probe.grand_at`, 0 = at initialisation): a probe asked for these
# alone stops training there. The others need the probe's whole length (harness/signals/plan.py).
EARLY_SIGNALS = ("el2n", "grand", "grand_last_layer", "embeddings_early")
PROBE_SIGNALS = EARLY_SIGNALS + ("embeddings", "losses", "loss", "forgetting", "least_confidence", "margin",
                                 "entropy")
# Signals that need no probe: the samples themselves ("inputs", for exact dedup), the flattened inputs scaled
# to unit norm ("raw"), and a seeded Gaussian random projection of them, unit norm ("projection").
# Also per training sample its largest cosine to any test sample in raw input space ("test_similarity", for the
# decontaminate stage; FAISS exact search, strategies/decontaminate.py).
DATA_SIGNALS = ("inputs", "raw", "projection", "test_similarity")
# Embeddings computed elsewhere, read from `embeddings.path` (harness/signals/embeddings_file.py): no probe either.
FILE_SIGNAL = "file"
ALL_SIGNALS = PROBE_SIGNALS + DATA_SIGNALS + (FILE_SIGNAL,)
# Data signals that are every training row in memory: not for rows left in their file (`dataset.in_memory=false`).
IN_MEMORY_SIGNALS = ("inputs", "raw", "test_similarity")


def rows_in_file_message(signal: str) -> str:
    return (f"dataset.in_memory=false: signal {signal} is every training row in memory; expected dataset.in_memory=true"
            " (when they fit), or strategy.embedding=projection or file where the strategy takes it")
