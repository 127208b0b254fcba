"""Winnow harness: config, data, training, measurement, tracking around the strategies."""
