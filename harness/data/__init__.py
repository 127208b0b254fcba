"""Datasets as in-memory arrays plus a content fingerprint."""

from harness.data.base import Dataset, atomic_save_npz, atomic_write_text, fingerprint

__all__ = ["Dataset", "atomic_save_npz", "atomic_write_text", "fingerprint"]
